//! `gpuctl up PLAN`: check, record, launch, serve, evaluate, then stop and prove it.
//!
//! Each state is committed before its side effect. Whatever happens after the session is
//! recorded (an error, Ctrl+C, the deadline), the stop path runs and writes its proof.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use gpuctl_protocol::{
    evidence_files, AgentConfig, ModelConfig, Runtime, StopAction, PROTOCOL_VERSION,
};
use gpuctl_providers::ProviderKind;

use super::handle::AgentHandle;
use super::host::Host;
use super::local_host::{find_agent, LocalAgent};
use super::remote_host::{Connected, RemoteAgent};
use super::{new_session_id, SessionState};
use crate::db::{Db, NewSession};
use crate::eval::{self, AgentClient, CaseResult};
use crate::evidence::{sha256_hex, Bundle};
use crate::exit::Exit;
use crate::plan::{self, Plan, Route};
use crate::progress::Reporter;

/// The prompt of `first_run.md`, from the lesson's own serving check.
const FIRST_RUN_PROMPT: &str = "Give one deployment rule for a rented GPU.";
const FIRST_RUN_TOKENS: u32 = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

pub struct UpOptions {
    pub plan_path: PathBuf,
    pub agent_bin: Option<PathBuf>,
    pub allow_public_ports: bool,
    /// Record a first-seen SSH host key in known_hosts instead of refusing it.
    pub accept_new_host_key: bool,
    /// When no provider has capacity and the plan's fallback route is local_cpu, run it now.
    pub fallback: bool,
    /// Run a cloud session whose billing depends on this machine alone.
    pub laptop_only: bool,
}

/// Why the serving phase ended.
#[derive(Debug, Clone)]
pub(super) enum Ending {
    AfterEval,
    Deadline,
    Interrupted,
    AgentExited(String),
    Failed(String),
    /// `gpuctl down`, or the daemon for a reason it names.
    Requested(String),
    /// `stop.idle`: the agent saw no API request for this long and stopped.
    Idle(Duration),
}

impl Ending {
    pub(super) fn reason(&self) -> String {
        match self {
            Ending::AfterEval => "after_eval: the fixed eval set has run".into(),
            Ending::Deadline => "deadline reached".into(),
            Ending::Interrupted => "interrupted (Ctrl+C or SIGTERM)".into(),
            Ending::AgentExited(s) => format!("the agent exited on its own: {s}"),
            Ending::Failed(s) => format!("failed: {s}"),
            Ending::Requested(s) => s.clone(),
            Ending::Idle(d) => format!(
                "idle: no API request for {} (stop.idle)",
                humantime::format_duration(*d)
            ),
        }
    }
}

pub async fn up(opts: UpOptions) -> anyhow::Result<Exit> {
    // Take SIGINT and SIGTERM now: from here on they mean "stop in order", never "die".
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    // A closed terminal must not end a session without its stop (`up --detach` relies on it).
    let _sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut rep = Reporter::new();
    let now = Utc::now();
    let Preflight {
        plan,
        source,
        agent_bin,
        placement,
        catalog_price,
        laptop_bound,
    } = match preflight(&opts, now) {
        Ok(p) => p,
        Err(exit) => return Ok(exit),
    };
    // Record the session before anything is launched: max_duration counts from here.
    let home = crate::home::gpuctl_home()?;
    let db = Db::open(&home)?;
    let id = new_session_id(now);
    // Who ends billing if this process dies or the laptop sleeps: said before renting. A
    // daemon on another machine sharing the store (team mode) is the always-on enforcer.
    let watchers = crate::daemon::watching(&db, now);
    let elsewhere = watchers
        .iter()
        .find(|d| d.machine != crate::db::this_machine());
    if plan.instance.provider.is_cloud() && watchers.is_empty() {
        rep.warn("no gpuctl daemon watches this session store: if this `up` dies or the machine sleeps, the agent stops serving at the deadline but nothing here terminates the instance until `up`, `down` or a daemon runs again (start one: `gpuctl daemon`, or `gpuctl up --detach`; in team mode, on an always-on host)");
    }
    // A cloud whose billing would depend on this machine alone (no instance-scoped key for
    // the agent, no daemon elsewhere) is refused unless the user says so.
    let laptop_bound = if elsewhere.is_some() {
        Vec::new()
    } else {
        laptop_bound
    };
    if !laptop_bound.is_empty() && !opts.laptop_only {
        crate::error_line!(
            "{}: on {} only this machine can end billing (the agent has no instance-scoped key there, and no daemon on another host watches this session store): if it sleeps or `up` dies, the instance bills until something here runs again. Run `gpuctl daemon` on an always-on host that shares the session store (team mode, see README), or run it anyway with `gpuctl up --laptop-only` (recorded, shown by audit); nothing was started",
            opts.plan_path.display(),
            laptop_bound.join(", ")
        );
        return Ok(Exit::Refused);
    }
    // Clouds: the catalog price until the provider quotes one at launch. A price nobody
    // knows is never 0 (that would disable the budget stop): the hourly budget stands in.
    let price = match plan.declared_price().or(catalog_price) {
        Some(p) => p,
        None => {
            let assumed = plan.budget.hourly_usd.unwrap_or(0.0);
            rep.warn(&format!(
                "no price is known for {} on {} (not in the catalog, none in the plan): budget.hourly_usd ${assumed:.2}/h is used as its price until the provider quotes one",
                plan.instance.instance_type.as_deref().unwrap_or("this instance"),
                plan.instance.provider
            ));
            assumed
        }
    };
    let (deadline, cause) = plan
        .effective_stop(now, Some(price))
        .context("the plan has no hard stop")?;
    // Recorded absolute: a daemon in another working directory finds the same folder.
    let bundle_dir = absolute(&match &plan.evidence.dir {
        Some(d) => PathBuf::from(d).join(&id),
        None => home.join("evidence").join(&id),
    });
    let git = plan::provenance(&opts.plan_path);
    let me = crate::procs::me(crate::db::ControllerKind::Up);
    let new = NewSession {
        id: id.clone(),
        plan_name: plan.name.clone(),
        plan_sha256: sha256_hex(source.text.as_bytes()),
        plan_text: source.text.clone(),
        plan_path: Some(absolute(&opts.plan_path).display().to_string()),
        plan_git_commit: git.as_ref().map(|g| g.commit.clone()),
        plan_git_dirty: git.as_ref().map(|g| g.dirty),
        owner: plan.owner.clone(),
        route: plan.route.as_str().into(),
        provider: plan.instance.provider.as_str().into(),
        instance_type: plan.instance.instance_type.clone(),
        region: plan.instance.region.clone(),
        price_usd_per_hour: Some(price),
        catalog_price_usd_per_hour: catalog_price,
        hourly_budget_usd: plan.budget.hourly_usd,
        max_total_usd: plan.budget.max_total_usd,
        created_at: now,
        deadline,
        stop_cause: format!("{cause:?}").to_lowercase(),
        controller: Some(me),
        evidence_dir: Some(bundle_dir.display().to_string()),
    };
    if let Some(exit) = record_within_caps(&db, &new, &plan, &opts.plan_path, now)? {
        return Ok(exit);
    }
    if let Some(d) = elsewhere {
        db.add_event(
            &id,
            "watched",
            &format!(
                "gpuctl daemon (pid {}) on {} watches this store (seen {}): it ends the session at its deadline if this `up` cannot",
                d.pid,
                d.hostname,
                d.seen_at.format("%H:%M:%S UTC")
            ),
            now,
        )?;
    }
    if !laptop_bound.is_empty() {
        db.record_laptop_only(&id)?;
        let msg = format!(
            "--laptop-only: on {} only this machine ends billing (no instance-scoped key for the agent)",
            laptop_bound.join(", ")
        );
        rep.warn(&msg);
        db.add_event(&id, "laptop_only", &msg, now)?;
    }
    rep.event(
        "session",
        serde_json::json!({ "session_id": id, "deadline": deadline, "stop_cause": cause.describe(), "bundle": bundle_dir }),
    );
    rep.info(&format!(
        "session {id}: deadline {} ({})",
        deadline.format("%H:%M:%S UTC"),
        cause.describe()
    ));

    let bundle = Bundle::create(bundle_dir)?;
    bundle.write("plan.toml", &source.text)?;
    let mut card = plan::route_card(&plan, now);
    if !laptop_bound.is_empty() {
        card.push_str(&format!(
            "\nRun with `--laptop-only`: on {} only the machine that ran `up` could end billing.\n",
            laptop_bound.join(", ")
        ));
    }
    bundle.write("gpu_plan.md", card)?;

    let work = home.join("run").join(&id);
    std::fs::create_dir_all(work.join("evidence"))
        .with_context(|| format!("creating {}", work.display()))?;
    let mut session = Session {
        db,
        id: id.clone(),
        plan,
        bundle,
        work,
        deadline,
        host: None,
        agent_bin,
        timings: Vec::new(),
        stop_blocker: None,
        cloud: None,
        target: None,
        no_capacity: false,
        pending_launch: None,
    };

    let alerts = session.alerter();
    if let Some(problem) = alerts.problem() {
        rep.warn(&problem);
    }
    let heartbeat = Heartbeat::start(&home, &id, me);
    let started = Instant::now();
    let meter = budget_warning(
        home.clone(),
        id.clone(),
        price,
        session.plan.budget.max_total_usd,
        now,
        alerts,
    );
    let ending = {
        let run = session.run(&mut rep, opts.accept_new_host_key, placement);
        tokio::pin!(run);
        tokio::select! {
            ending = &mut run => ending,
            _ = sigint.recv() => Ending::Interrupted,
            _ = sigterm.recv() => Ending::Interrupted,
            _ = deadline_passes(&home, &id, deadline) => Ending::Deadline,
            _ = heartbeat.lost() => Ending::Interrupted,
        }
    };
    // Stopped (Ctrl+Z, SIGSTOP, a frozen VM) long enough for a daemon to take the session
    // over: this `up` no longer drives it, and a second stop would only race the first.
    if let Ok(row) = session.db.get_session(&id) {
        if let Some(other) = row.controller().filter(|c| *c != me) {
            let msg = format!(
                "this `up` was not running for a while (stopped or frozen); gpuctl {} (pid {}) took the session over and stops it; nothing more is done here. `gpuctl status {id}` shows the outcome",
                other.kind.as_str(),
                other.pid
            );
            rep.warn(&msg);
            let _ = session.db.add_event(&id, "superseded", &msg, Utc::now());
            return Ok(Exit::Failed);
        }
    }
    // A SIGTERM from `gpuctl down` is a request, and is recorded as one.
    let ending = match ending {
        Ending::Interrupted
            if session
                .db
                .get_session(&id)
                .is_ok_and(|s| s.stop_requested_at.is_some()) =>
        {
            Ending::Requested("stopped by gpuctl down".into())
        }
        other => other,
    };
    if matches!(ending, Ending::Interrupted) {
        rep.warn("interrupted: stopping the session (evidence, stop, proof)");
    }
    let stopped = session.finish(&mut rep, ending, started).await;
    let exit = session.publish(&mut rep, stopped).await;
    meter.abort();
    // Alerts of the stop still in flight get a bounded moment (the stop is already done).
    crate::notify::flush(Duration::from_secs(6));
    if session.no_capacity && session.plan.fallback.route == Some(Route::LocalCpu) {
        if !opts.fallback {
            rep.warn("no capacity: the plan's fallback route is local_cpu; `gpuctl up --fallback` runs it at once");
        } else {
            let cases = session.eval_cases().unwrap_or_default();
            let path = session.work.join("fallback-local-cpu.toml");
            std::fs::write(&path, local_cpu_plan(&session.plan, &cases, &id))?;
            let msg = format!(
                "no capacity: running the plan's fallback route, local_cpu, with the bundled model ({})",
                path.display()
            );
            rep.warn(&msg);
            session.db.add_event(&id, "fallback", &msg, Utc::now())?;
            session.alerter().send("fallback", &msg);
            drop(session);
            return Box::pin(up(UpOptions {
                plan_path: path,
                fallback: false,
                ..opts
            }))
            .await;
        }
    }
    exit
}

/// Preflight: everything `up` checks before the session is recorded. A refusal has said
/// why on stderr and started nothing.
struct Preflight {
    plan: Plan,
    source: plan::Source,
    agent_bin: PathBuf,
    /// `CUDA_VISIBLE_DEVICES` for a local agent (None: leave the host's).
    placement: Option<String>,
    catalog_price: Option<f64>,
    /// The candidates on which only this machine can end billing (`--laptop-only`).
    laptop_bound: Vec<String>,
}

/// A preflight refusal: said on stderr, naming the plan; nothing was started.
fn refuse(opts: &UpOptions, why: impl std::fmt::Display) -> Exit {
    crate::error_line!("{}: {why}; nothing was started", opts.plan_path.display());
    Exit::Refused
}

fn preflight(opts: &UpOptions, now: DateTime<Utc>) -> Result<Preflight, Exit> {
    let checked = plan::check_file(&opts.plan_path, now);
    for p in &checked.problems {
        crate::note!("{p}");
    }
    let (Some(plan), Some(source)) = (checked.plan, checked.source) else {
        crate::note!("{}: refused; nothing was started", opts.plan_path.display());
        return Err(Exit::Refused);
    };
    if let Some(reason) = unsupported(&plan, opts) {
        return Err(refuse(opts, reason));
    }
    let agent_bin = match find_agent(opts.agent_bin.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            crate::error_line!("{e:#}; nothing was started");
            return Err(Exit::Refused);
        }
    };
    let is_ssh = plan.instance.provider.uses_ssh();
    // GPUs are placed on this machine only; a host's GPUs are its runtime's to use.
    let placement = if is_ssh {
        None
    } else {
        super::local_host::place_gpus(&agent_bin, plan.instance.gpus)
            .map_err(|e| refuse(opts, e))?
    };
    let Some(api) = plan.api_port() else {
        return Err(refuse(opts, "the plan forwards no port"));
    };
    // Here the agent listens on the remote port itself; over SSH the tunnel takes the local one.
    let here = if is_ssh { api.local } else { api.remote };
    if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", here)) {
        crate::error_line!(
            "port 127.0.0.1:{here} is already in use ({e}); stop what uses it or change access.ports in the plan; nothing was started"
        );
        return Err(Exit::Refused);
    }

    let catalog_price = if plan.instance.provider.is_cloud() {
        super::cloud::precheck(&plan).map_err(|e| refuse(opts, e))?
    } else {
        None
    };
    // A cloud whose billing would depend on this machine alone (no instance-scoped key for
    // the agent) is refused unless the user says so: said before anything is rented.
    let laptop_bound: Vec<String> = super::cloud::candidates(&plan)
        .into_iter()
        .filter(|(k, _, _)| *k == ProviderKind::Lambda)
        .map(|(k, t, _)| format!("{k} {t}"))
        .collect();
    Ok(Preflight {
        plan,
        source,
        agent_bin,
        placement,
        catalog_price,
        laptop_bound,
    })
}

/// Record the session; under a team policy with monthly caps, only if this session's most
/// could still fit them (checked and recorded in one transaction, so two racing `up`s
/// cannot both take the last dollars). Returns the refusal's exit when it does not fit.
fn record_within_caps(
    db: &Db,
    new: &NewSession,
    plan: &Plan,
    plan_path: &Path,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<Exit>> {
    let policy = match crate::policy::for_plan(plan_path) {
        Ok(Some(p)) if !p.caps.is_empty() => p,
        Ok(_) => {
            db.insert_session(new)?;
            return Ok(None);
        }
        Err(e) => {
            crate::error_line!("{e}; nothing was started");
            return Ok(Some(Exit::Refused));
        }
    };
    let owner = plan.owner.as_deref();
    let caps = crate::db::Caps {
        since: crate::policy::month_start(now),
        owner_usd: policy.caps.owner_cap(owner),
        team_usd: policy.caps.team_monthly_usd,
        this_plan_usd: crate::policy::plan_ceiling_usd(plan).unwrap_or(f64::INFINITY),
    };
    let (spend, recorded) = db.insert_session_within(new, &caps)?;
    if recorded {
        return Ok(None);
    }
    let (who, spent, cap) = match caps.owner_usd {
        Some(cap) if spend.owner_usd + caps.this_plan_usd > cap => (
            format!("owner {}", owner.unwrap_or("-")),
            spend.owner_usd,
            cap,
        ),
        _ => (
            "the team".to_string(),
            spend.team_usd,
            caps.team_usd.unwrap_or_default(),
        ),
    };
    crate::error_line!(
        "{}: refused by the team policy {}: {who}'s monthly cap is ${cap:.2}; ${spent:.2} is spent or committed this month (since {}; live sessions count at their max_total_usd), and this plan could spend ${:.2} more. Lower budget.max_total_usd, wait for next month, or ask the policy's owner; nothing was started",
        plan_path.display(),
        policy.path.display(),
        caps.since.format("%Y-%m-%d"),
        caps.this_plan_usd
    );
    Ok(Some(Exit::Refused))
}

/// The local_cpu run of a rented_gpu plan that found no capacity: the bundled model on
/// this machine, the same eval set, the same evidence folder, a stop no later than the plan's.
fn local_cpu_plan(plan: &Plan, cases: &[plan::EvalCase], failed: &str) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut t = format!(
        "# Written by `gpuctl up --fallback` after session {failed} found no capacity.\nschema = 1\n\n[plan]\nname = {}\ngoal = {}\nroute = \"local_cpu\"\nprivacy_level = \"{}\"\n",
        quote(&format!("{}-local-cpu", plan.name)),
        quote(&format!("fallback of {}: {}", plan.name, plan.goal)),
        match plan.privacy_level {
            crate::plan::PrivacyLevel::Public => "public",
            crate::plan::PrivacyLevel::Internal => "internal",
            crate::plan::PrivacyLevel::Private => "private",
        }
    );
    if let Some(o) = &plan.owner {
        t.push_str(&format!("owner = {}\n", quote(o)));
    }
    let model = std::env::current_dir()
        .map(|d| d.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .unwrap_or_default();
    t.push_str(&format!(
        "\n[model]\nid = \"HuggingFaceTB/SmolLM2-135M-Instruct\"\nruntime = \"candle\"\npath = {}\n\n[instance]\nprovider = \"local\"\n\n[stop]\nmax_duration = \"{}s\"\ngrace = \"{}s\"\nafter_eval = true\n\n[fallback]\nroute = \"none\"\n\n[access]\nports = [{{ local = {p}, remote = {p} }}]\n\n[evidence]\ncopy_back = [\"environment_report.txt\", \"first_run.md\", \"eval_results.csv\", \"requests.jsonl\"]\nshutdown_proof = \"process_exited\"\n",
        quote(&model.display().to_string()),
        plan.stop.max_duration.map(|d| d.as_secs()).unwrap_or(1800).max(60),
        plan.stop.grace.as_secs(),
        p = plan.api_port().map(|p| p.local).unwrap_or(8000),
    ));
    if let Some(d) = &plan.evidence.dir {
        t.push_str(&format!("dir = {}\n", quote(d)));
    }
    for c in cases {
        t.push_str(&format!(
            "\n[[eval.case]]\nid = {}\nprompt = {}\nmax_tokens = {}\n",
            quote(&c.id),
            quote(&c.prompt),
            c.max_tokens
        ));
        match &c.expect {
            plan::Expectation::Contains(x) => {
                t.push_str(&format!("expect_contains = {}\n", quote(x)))
            }
            plan::Expectation::Regex(x) => t.push_str(&format!("expect_regex = {}\n", quote(x))),
        }
        if let Some(ms) = c.max_latency_ms {
            t.push_str(&format!("max_latency_ms = {ms}\n"));
        }
    }
    t
}

/// The budget meter's 80 % warning, from `up` itself (the daemon gives it too, once).
fn budget_warning(
    home: PathBuf,
    id: String,
    price: f64,
    max_total: Option<f64>,
    launched: DateTime<Utc>,
    alerts: crate::notify::Alerter,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(at) = max_total.and_then(|m| super::budget::warn_at(price, m, launched)) else {
            return;
        };
        tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await;
        let Ok(db) = Db::open(&home) else { return };
        if let Ok(true) = db.mark_budget_warned(&id, Utc::now()) {
            let msg = format!(
                "budget: 80 % of max_total_usd ${:.2} spent at ${price:.2}/h; the session stops before the rest is spent",
                max_total.unwrap_or_default()
            );
            let _ = db.add_event(&id, "budget", &msg, Utc::now());
            alerts.send("budget", &msg);
            crate::progress::Reporter::new().warn(&msg);
        }
    })
}

/// What this build cannot run yet, as a refusal (nothing is started).
fn unsupported(plan: &Plan, opts: &UpOptions) -> Option<String> {
    if !plan.access.public_ports.is_empty() && !opts.allow_public_ports {
        return Some(
            "the plan opens public ports; pass --allow-public-ports if that is really intended"
                .into(),
        );
    }
    if plan.route == Route::FreeColab {
        return Some("the free_colab route runs in a notebook, not through `up`".into());
    }
    // The model of an ssh session is on the host; only this machine's file can be checked here.
    if plan.model.runtime != Runtime::Candle
        || plan.instance.provider.uses_ssh()
        || plan.model.url.is_some()
    {
        return None;
    }
    let path = plan.model.path.as_deref().unwrap_or_default();
    match std::fs::File::open(path) {
        Err(e) => Some(format!(
            "the model file {path} cannot be read ({e}); fetch the default model with `scripts/fetch-model.sh`, or fix model.path"
        )),
        Ok(mut f) => {
            let mut magic = [0u8; 4];
            let is_gguf = std::io::Read::read_exact(&mut f, &mut magic).is_ok() && &magic == b"GGUF";
            (!is_gguf && !Path::new(path).is_dir()).then(|| {
                format!("{path} is not a GGUF file (bad magic); fetch it again with `scripts/fetch-model.sh`")
            })
        }
    }
}

/// A session as its stop sees it: what it is, and whatever it holds that must be released
/// (an instance, a launch in flight, an agent). `up` fills the holdings as it acquires them,
/// so that a stop after any interruption finds them; a takeover fills them from the row.
/// What only `up`'s next step needs travels as the phase values below, not here.
pub(super) struct Session {
    pub(super) db: Db,
    pub(super) id: String,
    pub(super) plan: Plan,
    pub(super) bundle: Bundle,
    pub(super) work: PathBuf,
    pub(super) deadline: DateTime<Utc>,
    /// Where the agent runs, once started (or reattached by a takeover).
    pub(super) host: Option<Host>,
    pub(super) agent_bin: PathBuf,
    pub(super) timings: Vec<(String, u64)>,
    /// Why the agent cannot be reached for its stop (a takeover whose host does not answer).
    pub(super) stop_blocker: Option<crate::evidence::Check>,
    /// The cloud client (Lambda, RunPod, Vast) once an instance may exist.
    pub(super) cloud: Option<gpuctl_providers::Cloud>,
    /// Where the host is reached over SSH (provider ssh, or the cloud instance).
    pub(super) target: Option<crate::ssh::SshEndpoint>,
    /// No provider the plan allows had capacity (`up --fallback` then runs local_cpu).
    pub(super) no_capacity: bool,
    /// A launch request sent and not yet answered: the stop waits for it, never drops it.
    pub(super) pending_launch: Option<super::cloud::PendingLaunch>,
}

// The phases of `up`, each the value one step hands the next (preflight and the session row
// come first, in `up` itself). A later step cannot run without what the one before it
// established; what the stop needs is not here but in `Session`, from the moment it exists.

/// The host exists: where to reach it over SSH (None: this machine).
struct Launched {
    ssh: Option<crate::ssh::SshEndpoint>,
}

/// The host is reached: its SSH connection, host key checked (None: this machine).
struct Reached {
    connection: Option<Connected>,
}

/// The agent is healthy with the model loaded.
struct Serving {
    client: AgentClient,
    /// The model actually served (the plan's, or its `fallback.if_oom`).
    served: plan::ModelSpec,
}

/// What one start of the agent is given.
struct AgentStart<'a> {
    model: &'a plan::ModelSpec,
    token_file: &'a Path,
    token: &'a str,
    ports: crate::plan::PortForward,
    /// `CUDA_VISIBLE_DEVICES` for the agent (None: leave the host's).
    placement: Option<String>,
}

fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Whether `HF_TOKEN` may be sent with a download from `url`: to Hugging Face's hosts, or
/// to the one `HF_ENDPOINT` names (a mirror), over https or to this machine; never
/// elsewhere.
pub(super) fn hub_token_may_go_to(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    if u.scheme() != "https" && !gpuctl_providers::is_loopback(url) {
        return false;
    }
    let host = u.host_str().unwrap_or("").to_ascii_lowercase();
    let mirror = crate::settings::settings()
        .hf_endpoint
        .as_deref()
        .and_then(|e| reqwest::Url::parse(e).ok())
        .is_some_and(|e| {
            e.host_str() == u.host_str() && e.port_or_known_default() == u.port_or_known_default()
        });
    host == "huggingface.co" || host.ends_with(".huggingface.co") || host == "hf.co" || mirror
}

impl Session {
    /// The controller's `HF_TOKEN` for the host, when the session needs it (a vLLM or
    /// SGLang hub model, or a download from the hub): a 0600 file in the run folder that the
    /// agent reads and deletes (over SFTP to the host's session folder for a remote one).
    fn hf_token_file(&self, model: &plan::ModelSpec) -> anyhow::Result<Option<PathBuf>> {
        let needed = matches!(model.runtime, Runtime::Vllm | Runtime::Sglang)
            || model.url.as_deref().is_some_and(hub_token_may_go_to);
        let token = crate::settings::secret("HF_TOKEN");
        match (needed, token) {
            (true, Some(t)) => {
                let f = self.work.join("hf_token");
                write_private(&f, t.trim())?;
                Ok(Some(f))
            }
            _ => Ok(None),
        }
    }

    /// Alerts about this session (the plan's `[notify]`).
    pub(super) fn alerter(&self) -> crate::notify::Alerter {
        crate::notify::Alerter::for_plan(&self.plan, &self.id)
    }

    pub(super) fn transition(&mut self, state: SessionState, message: &str) -> anyhow::Result<()> {
        self.db.transition(&self.id, state, message, Utc::now())?;
        Ok(())
    }

    pub(super) fn time(&mut self, step: &str, since: Instant) {
        self.timings
            .push((step.to_string(), since.elapsed().as_millis() as u64));
    }

    /// Launch, deploy, serve and evaluate: one phase after the other, each handing the next
    /// what it established. Returns why serving ended; never skips the stop.
    async fn run(
        &mut self,
        rep: &mut Reporter,
        accept_new_host_key: bool,
        placement: Option<String>,
    ) -> Ending {
        let phases = async {
            let launched = self.launch(rep, accept_new_host_key).await?;
            let reached = self.reach(rep, launched).await?;
            let serving = self.deploy(rep, reached, placement).await?;
            self.serve(rep, serving).await
        };
        match phases.await {
            Ok(ending) => ending,
            Err(e) => Ending::Failed(format!("{e:#}")),
        }
    }

    /// Provisioning: the host exists (a cloud instance launched and booted, the plan's SSH
    /// host, or this machine).
    async fn launch(
        &mut self,
        rep: &mut Reporter,
        accept_new_host_key: bool,
    ) -> anyhow::Result<Launched> {
        let provider = self.plan.instance.provider;
        let ssh = if provider.is_cloud() {
            self.transition(
                SessionState::Provisioning,
                &format!("launching on {provider}"),
            )?;
            Some(self.provision(rep).await?)
        } else if provider.uses_ssh() {
            self.transition(
                SessionState::Provisioning,
                "provider ssh: the host is rented by its owner; nothing to launch",
            )?;
            Some(self.ssh_target(accept_new_host_key)?)
        } else {
            self.transition(
                SessionState::Provisioning,
                "provider local: this machine, nothing to rent",
            )?;
            None
        };
        self.target = ssh.clone();
        Ok(Launched { ssh })
    }

    /// Connecting: an SSH connection to the host with its key checked (none for this machine).
    async fn reach(&mut self, rep: &mut Reporter, launched: Launched) -> anyhow::Result<Reached> {
        let Some(target) = launched.ssh else {
            self.transition(
                SessionState::Connecting,
                "provider local: no connection needed",
            )?;
            return Ok(Reached { connection: None });
        };
        let to = format!("{}@{}", target.user, target.addr());
        self.transition(SessionState::Connecting, &format!("connecting to {to}"))?;
        rep.step("connect", &format!("connecting to {to}"));
        // A cloud instance that just turned "running" may not run sshd yet: retry briefly.
        let patience = if self.plan.instance.provider.is_cloud() {
            60
        } else {
            0
        };
        let started = Instant::now();
        let connected = loop {
            match RemoteAgent::connect(&target).await {
                Ok(c) => break c,
                Err(e) if started.elapsed().as_secs() < patience && e.is_transient() => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.db.record_host_key(&self.id, &connected.fingerprint)?;
        rep.done(&format!("host key {}", connected.fingerprint));
        Ok(Reached {
            connection: Some(connected),
        })
    }

    /// Deploying: the agent started and healthy with the model loaded (the plan's, or its
    /// `fallback.if_oom` after an out-of-memory load).
    async fn deploy(
        &mut self,
        rep: &mut Reporter,
        reached: Reached,
        placement: Option<String>,
    ) -> anyhow::Result<Serving> {
        self.transition(SessionState::Deploying, "starting gpuctl-agent")?;
        let api = self.plan.api_port().context("no API port")?;
        let token = random_token()?;
        let token_file = self.work.join("token");
        write_private(&token_file, &token)?;
        let mut model = self.plan.model.clone();
        let mut oom_fallback = self.plan.fallback.if_oom.clone();
        let (t, client) = loop {
            rep.step("deploy", "starting gpuctl-agent");
            let start = AgentStart {
                model: &model,
                token_file: &token_file,
                token: &token,
                ports: api,
                placement: placement.clone(),
            };
            let client = self.start_agent(&reached, start).await?;
            rep.step(
                "load",
                &format!(
                    "loading {} ({})",
                    model.id,
                    model.path.as_deref().unwrap_or(model.runtime.as_str())
                ),
            );
            let t_load = Instant::now();
            let agent = self.host.as_mut().context("agent")?;
            let Err(e) = agent.wait_healthy(&client).await else {
                break (t_load, client);
            };
            let record = match &self.host {
                Some(host) => host.final_record().await,
                None => None,
            };
            let oom = record.as_ref().is_some_and(|r| r.out_of_memory);
            match (oom, oom_fallback.take()) {
                (true, Some(fallback)) => {
                    self.keep_oom_attempt();
                    let msg = format!(
                        "out of memory at model load with {} {}; restarting with fallback.if_oom: {} {}",
                        model.id,
                        model.args.join(" "),
                        fallback.model,
                        fallback.args.join(" ")
                    );
                    rep.warn(&msg);
                    self.db.add_event(&self.id, "fallback", &msg, Utc::now())?;
                    self.alerter().send("fallback", &msg);
                    model.id = fallback.model;
                    model.args = fallback.args;
                }
                (true, None) => {
                    let next = self
                        .plan
                        .fallback
                        .route
                        .map(|r| format!("the plan's fallback route is {r}"))
                        .unwrap_or_else(|| "the plan has no fallback route".into());
                    bail!("out of memory at model load, and the plan has no fallback.if_oom ({next}): {e:#}");
                }
                (false, _) => return Err(e),
            }
        };
        self.time("model_load_to_healthy", t);
        self.say_who_ends_billing(rep, &client).await?;
        self.transition(
            SessionState::Serving,
            &format!("agent healthy on 127.0.0.1:{}", api.remote),
        )?;
        rep.done(&format!("serving on http://127.0.0.1:{}", api.remote));
        Ok(Serving {
            client,
            served: model,
        })
    }

    /// The failed attempt's log and final record, kept beside the final ones.
    fn keep_oom_attempt(&self) {
        let _ = std::fs::rename(
            self.work.join("agent.log"),
            self.work.join("agent-oom-attempt.log"),
        );
        let ev = self.work.join("evidence");
        let _ = std::fs::rename(
            ev.join(evidence_files::FINAL_RECORD),
            ev.join("final_record-oom-attempt.json"),
        );
    }

    /// Serving: the first run, the fixed eval set, then serve until the deadline (or stop
    /// after the eval). Returns why serving ended.
    async fn serve(&mut self, rep: &mut Reporter, serving: Serving) -> anyhow::Result<Ending> {
        rep.step("first_run", "first run");
        let t = Instant::now();
        let first = self.first_run(&serving).await?;
        self.time("first_run", t);
        rep.done(&first);
        self.run_eval(rep, &serving.client).await?;
        if self.plan.stop.after_eval {
            return Ok(Ending::AfterEval);
        }
        rep.step(
            "serve",
            &format!(
                "serving until {} (Ctrl+C stops earlier)",
                self.deadline.format("%H:%M:%S UTC")
            ),
        );
        // At deadline - grace, a first copy of the evidence comes back while the agent still
        // serves: whatever happens at the stop, the bundle already holds it.
        let grace_at =
            self.deadline - chrono::Duration::from_std(self.plan.stop.grace).unwrap_or_default();
        let wait = (grace_at - Utc::now()).to_std().unwrap_or_default();
        if !wait.is_zero() {
            let host = self.host.as_mut().context("agent")?;
            let mut report = |event: &str| rep.info(event);
            tokio::select! {
                status = host.wait_exit(&mut report) => return Ok(Ending::AgentExited(status)),
                _ = tokio::time::sleep(wait) => {}
            }
            rep.info("grace period: collecting a first copy of the evidence");
            self.db.add_event(
                &self.id,
                "grace",
                "grace period: evidence collected before the stop",
                Utc::now(),
            )?;
            if let Some(host) = &self.host {
                if let Ok(Err(e)) = tokio::time::timeout(
                    self.plan.stop.grace,
                    host.collect_snapshot(&self.bundle, &self.plan.evidence.copy_back),
                )
                .await
                {
                    rep.warn(&format!("the grace-period evidence copy failed: {e:#}"));
                }
            }
        }
        let host = self.host.as_mut().context("agent")?;
        let status = host.wait_exit(&mut |event| rep.info(event)).await;
        Ok(Ending::AgentExited(status))
    }

    /// The plan's fixed eval set against the served model; the results go to the bundle.
    async fn run_eval(&mut self, rep: &mut Reporter, client: &AgentClient) -> anyhow::Result<()> {
        let cases = self.eval_cases()?;
        if cases.is_empty() {
            return Ok(());
        }
        rep.step(
            "eval",
            &format!("running the fixed eval set ({} cases)", cases.len()),
        );
        let t = Instant::now();
        let mut results: Vec<CaseResult> = Vec::new();
        for case in &cases {
            let r = eval::run_case(client, case).await;
            rep.info(&format!(
                "{} {}: {} ({} ms)",
                if r.pass { "pass" } else { "FAIL" },
                r.id,
                r.reason,
                r.latency_ms
            ));
            results.push(r);
        }
        self.time("eval", t);
        self.bundle
            .write("eval_results.csv", eval::to_csv(&results))?;
        let passed = results.iter().filter(|r| r.pass).count();
        self.db.add_event(
            &self.id,
            "eval",
            &format!("{passed}/{} cases passed", results.len()),
            Utc::now(),
        )?;
        rep.done(&format!("{passed}/{} passed", results.len()));
        Ok(())
    }

    /// Over SSH: the host's wall clock against ours, recorded (an event and, through the
    /// agent, environment_report.txt) and handed to the agent so that its deadline is the
    /// true one whatever its own clock says.
    async fn measure_host_clock(
        &mut self,
        reached: &Reached,
    ) -> anyhow::Result<Option<super::remote_host::ClockOffset>> {
        let Some(connected) = &reached.connection else {
            return Ok(None);
        };
        let clock = connected.clock_offset().await;
        let msg = match clock {
            Some(c) => format!(
                "the host's clock is {} ms {} this machine's (round trip {} ms): the agent's deadline is corrected by it",
                c.offset_ms.abs(),
                if c.offset_ms < 0 { "behind" } else { "ahead of" },
                c.rtt_ms
            ),
            None => "the host's clock could not be read (`date +%s%N`): the agent trusts its own".into(),
        };
        self.db.add_event(&self.id, "clock", &msg, Utc::now())?;
        Ok(clock)
    }

    /// Who can end billing at the deadline when this `up` is gone, as the agent itself
    /// reports it (whether it holds the instance's own key): said and recorded.
    async fn say_who_ends_billing(
        &mut self,
        rep: &mut Reporter,
        client: &AgentClient,
    ) -> anyhow::Result<()> {
        let layer1 = match client.health().await.ok().and_then(|h| h.ends_billing) {
            Some(e) => format!("the agent {e}"),
            None if self.plan.instance.provider.is_cloud() => {
                "the agent stops serving at the deadline; this provider gives it no instance-scoped key, so billing ends only when `up`, the daemon or `down` terminates the instance".into()
            }
            None => return Ok(()),
        };
        rep.info(&format!("layer 1: {layer1}"));
        self.db.add_event(&self.id, "layer1", &layer1, Utc::now())?;
        Ok(())
    }

    /// Layer 1 on the clouds whose instances carry a key scoped to themselves (RunPod,
    /// Vast): which provider (the one actually launched on) and its API base. Lambda has no
    /// such key; provider ssh's layer 1 is `on_stop = "command"`.
    fn self_terminate(&self) -> Option<gpuctl_protocol::SelfTerminate> {
        let kind = self.cloud.as_ref().map(gpuctl_providers::Provider::kind)?;
        if !matches!(kind, ProviderKind::Runpod | ProviderKind::Vast) {
            return None;
        }
        Some(gpuctl_protocol::SelfTerminate {
            provider: kind.to_string(),
            api_base: gpuctl_providers::api_base(kind)?,
        })
    }

    /// Provider ssh: the plan's host, trusted by its pinned `host_key`, else the user's
    /// known_hosts (`--accept-new-host-key` records a first-seen key there).
    fn ssh_target(&self, accept_new: bool) -> anyhow::Result<crate::ssh::SshEndpoint> {
        let i = &self.plan.instance;
        Ok(crate::ssh::SshEndpoint {
            host: i.host.clone().context("the plan names no host")?,
            port: i.port,
            user: i.user.clone().context("the plan names no user")?,
            identity_file: self
                .plan
                .access
                .identity_file
                .as_ref()
                .map(|p| absolute(Path::new(p))),
            host_key: match &i.host_key {
                Some(fingerprint) => crate::ssh::HostKeyPolicy::Pinned {
                    fingerprint: fingerprint.clone(),
                },
                None => crate::ssh::HostKeyPolicy::KnownHosts { accept_new },
            },
        })
    }

    /// Write the agent's config and start it; the session row records what was launched,
    /// and the session holds the agent (for its stop) from here on.
    async fn start_agent(
        &mut self,
        reached: &Reached,
        start: AgentStart<'_>,
    ) -> anyhow::Result<AgentClient> {
        let AgentStart {
            model,
            token_file,
            token,
            ports,
            placement,
        } = start;
        let t = Instant::now();
        let local = self.plan.instance.provider == ProviderKind::Local;
        let clock = self.measure_host_clock(reached).await?;
        let config = AgentConfig {
            protocol: PROTOCOL_VERSION,
            session_id: self.id.clone(),
            deadline: self.deadline,
            grace_secs: self.plan.stop.grace.as_secs(),
            listen_port: ports.remote,
            token_file: token_file.display().to_string(),
            evidence_dir: self.work.join("evidence").display().to_string(),
            model: ModelConfig {
                id: model.id.clone(),
                runtime: model.runtime,
                // On this machine a relative path is the user's; on a host it is the host's.
                path: model.path.as_ref().map(|p| {
                    if local {
                        absolute(Path::new(p)).display().to_string()
                    } else {
                        p.clone()
                    }
                }),
                args: model.args.clone(),
                command: model.command.clone(),
                fetch: match (&model.url, &model.sha256) {
                    (Some(url), Some(sha)) => Some(gpuctl_protocol::ModelFetch {
                        url: url.clone(),
                        sha256: sha.clone(),
                        send_token: hub_token_may_go_to(url),
                    }),
                    _ => None,
                },
            },
            // At its deadline the agent runs the plan's stop command itself (no network needed).
            stop_action: if self.plan.stop.on_stop == crate::plan::OnStop::Command {
                StopAction::Command(self.plan.stop.stop_command.clone())
            } else {
                StopAction::Exit
            },
            gpus: self.plan.instance.gpus,
            cuda_visible_devices: placement,
            self_terminate: self.self_terminate(),
            clock_offset_ms: clock.map(|c| c.offset_ms),
            clock_rtt_ms: clock.map(|c| c.rtt_ms),
            remaining_ms: (self.deadline - Utc::now())
                .to_std()
                .ok()
                .and_then(|d| u64::try_from(d.as_millis()).ok()),
            idle_secs: self.plan.stop.idle.map(|d| d.as_secs().max(1)),
            hf_token_file: self.hf_token_file(model)?.map(|f| f.display().to_string()),
            setup: self
                .plan
                .setup
                .as_ref()
                .map(|s| gpuctl_protocol::SetupConfig {
                    key: s.key(),
                    python: s.python.clone(),
                    pip: s.pip.clone(),
                    commands: s.commands.clone(),
                }),
        };
        let (host, url_port, instance) = match reached.connection.clone() {
            None => {
                let config_path = self.work.join("agent.json");
                std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
                let agent = LocalAgent::start(
                    &self.agent_bin,
                    &config_path,
                    &self.work.join("agent.log"),
                    ports.remote,
                )?;
                let instance = format!("pid:{}", agent.pid);
                let handle = AgentHandle::Local {
                    pid: agent.pid,
                    port: ports.remote,
                    config: absolute(&config_path),
                    work: absolute(&self.work),
                    agent_bin: absolute(&self.agent_bin),
                };
                self.db.record_handle(&self.id, &handle.to_json())?;
                (
                    Host::Local {
                        agent: Box::new(agent),
                        work: self.work.clone(),
                    },
                    ports.remote,
                    instance,
                )
            }
            Some(connected) => {
                let remote = {
                    let others: Vec<(u16, u16)> = self
                        .plan
                        .access
                        .ports
                        .iter()
                        .skip(1)
                        .map(|p| (p.local, p.remote))
                        .collect();
                    let facts =
                        super::agent_binary::facts(&crate::home::gpuctl_home()?, &self.agent_bin)?;
                    RemoteAgent::deploy(
                        connected,
                        &self.agent_bin,
                        &facts,
                        &config,
                        token,
                        ports.local,
                        &others,
                    )
                    .await?
                };
                let instance = format!("pid:{} on {}", remote.pid, remote.dir);
                // Stored as is: the host, and the key trusted at the start, pinned.
                let handle = AgentHandle::Remote {
                    pid: remote.pid,
                    dir: remote.dir.clone(),
                    bin: remote.bin.clone(),
                    port: remote.port,
                    ssh: remote.endpoint().clone(),
                };
                self.db.record_handle(&self.id, &handle.to_json())?;
                let port = remote.tunnel_port().unwrap_or(ports.local);
                (Host::Remote(Box::new(remote)), port, instance)
            }
        };
        let host_name = self
            .plan
            .instance
            .host
            .clone()
            .unwrap_or_else(|| "127.0.0.1".into());
        // A cloud session's instance and billing start were recorded at launch.
        if !self.plan.instance.provider.is_cloud() {
            self.db
                .record_launch(&self.id, &instance, Some(&host_name), Utc::now())?;
        }
        let client = AgentClient::new(
            &format!("http://127.0.0.1:{url_port}"),
            token,
            &model.id,
            REQUEST_TIMEOUT,
        )?;
        self.time("controller_start_agent", t);
        self.host = Some(host);
        Ok(client)
    }

    pub(super) fn eval_cases(&self) -> anyhow::Result<Vec<plan::EvalCase>> {
        let mut cases = Vec::new();
        if let Some(file) = &self.plan.eval.cases_file {
            let dir = self.plan_dir();
            let loaded =
                plan::read_cases_file(&Path::new(&dir).join(file)).map_err(|problems| {
                    anyhow::anyhow!(problems
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"))
                })?;
            cases.extend(loaded);
        }
        cases.extend(self.plan.eval.cases.iter().cloned());
        Ok(cases)
    }

    fn plan_dir(&self) -> String {
        // The plan was copied into the bundle; cases files are relative to the original.
        let path = self
            .db
            .get_session(&self.id)
            .ok()
            .and_then(|s| s.plan_path)
            .unwrap_or_default();
        Path::new(&path)
            .parent()
            .map(|p| p.display().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| ".".into())
    }

    async fn first_run(&mut self, serving: &Serving) -> anyhow::Result<String> {
        let Serving { client, served } = serving;
        let agent = self.host.as_ref().context("agent")?;
        let t = Instant::now();
        let answer = client.chat(FIRST_RUN_PROMPT, FIRST_RUN_TOKENS, 0.0).await?;
        let ms = t.elapsed().as_millis() as u64;
        let rss = agent.peak_rss_kib();
        let tps = if ms > 0 {
            answer.completion_tokens as f64 / (ms as f64 / 1000.0)
        } else {
            0.0
        };
        let md = format!(
            "# First run\n\n- session: {}\n- model: {} (runtime {})\n- weights: {}\n- server args: {}\n- command: `{}`\n- endpoint: POST /v1/chat/completions (temperature 0, max_tokens {FIRST_RUN_TOKENS})\n- latency: {ms} ms\n- tokens: {} prompt, {} completion ({tps:.1} tokens/s including prompt processing)\n- agent peak memory (VmHWM): {}\n\n## Prompt\n\n{FIRST_RUN_PROMPT}\n\n## Output\n\n{}\n",
            self.id,
            served.id,
            served.runtime.as_str(),
            served.path.as_deref().unwrap_or("-"),
            if served.runtime == Runtime::Candle { "(in-process)".to_string() } else { served.command.iter().chain(&served.args).cloned().collect::<Vec<_>>().join(" ") },
            agent.argv().join(" "),
            answer.prompt_tokens,
            answer.completion_tokens,
            rss.map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or_else(|| "unknown".into()),
            answer.content.trim(),
        );
        self.bundle.write("first_run.md", md)?;
        Ok(format!("{} tokens in {ms} ms", answer.completion_tokens))
    }
}

/// How often `up` says it is alive in the session row, and how old that may get before a
/// daemon takes the session over although the PID still exists.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(15);

/// `up`'s heartbeat, written every 2 s from a thread of its own for as long as `up` runs
/// (its stop included, so that a daemon never takes over a long stop); it stops, and says
/// so, when the row names another controller (a daemon took over while this process was
/// stopped).
pub(super) struct Heartbeat {
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
}

impl Heartbeat {
    pub(super) fn start(home: &Path, id: &str, me: crate::db::Controller) -> Heartbeat {
        let (stop, lost) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (home, id) = (home.to_path_buf(), id.to_string());
        let (stop2, lost2) = (stop.clone(), lost.clone());
        std::thread::spawn(move || {
            let Ok(db) = Db::open(&home) else { return };
            while !stop2.load(Ordering::SeqCst) {
                if let Ok(false) = db.heartbeat(&id, me, Utc::now()) {
                    lost2.store(true, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(HEARTBEAT_EVERY);
            }
        });
        Heartbeat { stop, lost }
    }

    /// Returns once another controller holds the session.
    async fn lost(&self) {
        while !self.lost.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Returns once the session's deadline has passed by the wall clock, looking every second
/// (a laptop that slept past it stops within a second of waking: a monotonic timer would
/// not count the sleep) and reading the deadline again from the session row each time (a
/// quote at launch may have brought it earlier).
async fn deadline_passes(home: &Path, id: &str, initial: chrono::DateTime<Utc>) {
    let db = Db::open(home).ok();
    let mut deadline = initial;
    loop {
        if let Some(d) = db.as_ref().and_then(|db| db.get_session(id).ok()) {
            deadline = d.deadline;
        }
        let left = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
}

pub(super) fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
