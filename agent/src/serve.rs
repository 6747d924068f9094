//! `gpuctl-agent serve --config FILE`: load the model (or start the runtime's server),
//! serve the API on 127.0.0.1, and stop at the deadline on its own, whatever the
//! controller does (layer 1 of the stop).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use gpuctl_protocol::{evidence_files, AgentConfig, FinalRecord, Runtime, StopAction, StopReason};
use tokio::sync::watch;

use crate::api::{self, AppState, Upstream};
use crate::engine::{self, EngineHandle};
use crate::supervise::Server;
use crate::{config, envreport, metrics};

/// How long in-flight responses get to finish once the stop begins; the port closes after it.
const DRAIN: Duration = Duration::from_millis(300);
const METRICS_EVERY: Duration = Duration::from_secs(1);

type StopRx = watch::Receiver<Option<StopReason>>;
type StopTx = watch::Sender<Option<StopReason>>;
/// The deadline in force (the controller's clock): the config's, until `gpuctl extend`.
pub type SharedDeadline = Arc<std::sync::Mutex<chrono::DateTime<Utc>>>;

fn deadline_of(d: &SharedDeadline) -> chrono::DateTime<Utc> {
    *d.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the final record says about the end.
struct Ending {
    reason: StopReason,
    stopped: Vec<String>,
    failure: Option<String>,
    out_of_memory: bool,
}

impl Ending {
    fn new(reason: StopReason, stopped: Vec<String>) -> Ending {
        Ending {
            reason,
            stopped,
            failure: None,
            out_of_memory: false,
        }
    }
}

/// The evidence side of the agent: the GPU sampler and the final record.
struct Closer {
    cfg: AgentConfig,
    deadline: SharedDeadline,
    /// The agent's own folder (where the controller's heartbeat lands).
    dir: std::path::PathBuf,
    /// The instance's own key, when the provider gave one (layer 1 ends billing).
    scoped: Option<crate::billing::ScopedKey>,
    server_pid: Option<u32>,
    evidence: std::path::PathBuf,
    sampler_stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    // Signals first, so a stop during start-up still ends with a final record.
    let (stop_tx, mut stop_rx) = watch::channel::<Option<StopReason>>(None);
    spawn_signal_handler(stop_tx.clone());
    let loaded = config::load(config_path)?;
    let mut cfg = loaded.config.clone();
    // The hub token: read from its 0600 file into this process's environment (the
    // runtime inherits it; it never appears in an argv), and the file removed at once.
    let hf_token = cfg.hf_token_file.as_ref().and_then(|f| {
        let t = std::fs::read_to_string(f).ok();
        let _ = std::fs::remove_file(f);
        t.map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
    });
    if let Some(t) = &hf_token {
        std::env::set_var("HF_TOKEN", t);
    }
    // Placement: before anything touches CUDA, and inherited by a supervised server.
    if let Some(devices) = &cfg.cuda_visible_devices {
        std::env::set_var("CUDA_VISIBLE_DEVICES", devices);
        tracing::info!(CUDA_VISIBLE_DEVICES = %devices, "GPUs placed");
    }
    let evidence = loaded.evidence_dir.clone();
    tracing::info!(
        session = %cfg.session_id,
        model = %cfg.model.id,
        deadline = %cfg.deadline.to_rfc3339(),
        agent = env!("CARGO_PKG_VERSION"),
        "starting"
    );

    // Arm the watchdog before anything slow: the deadline holds even during model load.
    // Absolute: a remote agent is started as `--config agent.json` in its folder, and
    // `[setup]`'s environments live two levels above it.
    let dir = std::path::absolute(config_path)
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_default();
    let deadline = Arc::new(std::sync::Mutex::new(cfg.deadline));
    spawn_watchdog(&cfg, dir.clone(), deadline.clone(), stop_tx.clone());

    let mut report = envreport::report(&evidence);
    report.push_str(&clock_lines(&cfg));
    std::fs::write(evidence.join(evidence_files::ENVIRONMENT_REPORT), report)
        .context("writing the environment report")?;
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = metrics::spawn_sampler(
        evidence.join(evidence_files::GPU_METRICS),
        METRICS_EVERY,
        sampler_stop.clone(),
    );
    let scoped = cfg
        .self_terminate
        .as_ref()
        .and_then(|t| crate::billing::ScopedKey::discover(&t.provider));
    let ends_billing = cfg.self_terminate.as_ref().map(|t| match &scoped {
        Some(k) => format!(
            "holds {}: terminates the instance at the deadline when no controller is there",
            k.describe()
        ),
        None => format!(
            "no instance-scoped {} key on this host (looked in PID 1's environment and GPUCTL_INSTANCE_ENV): at the deadline it only stops serving, and looks again",
            t.provider
        ),
    });
    if let Some(e) = &ends_billing {
        tracing::info!("layer 1: {e}");
    }
    let mut closer = Closer {
        cfg: cfg.clone(),
        deadline: deadline.clone(),
        dir,
        scoped,
        server_pid: None,
        evidence: evidence.clone(),
        sampler_stop,
        sampler,
    };

    if let Some(setup) = cfg.setup.clone() {
        let interrupted = Arc::new(AtomicBool::new(false));
        let (dir, log_path, flag) = (
            closer.dir.clone(),
            evidence.join(evidence_files::SETUP_LOG),
            interrupted.clone(),
        );
        let mut job =
            tokio::task::spawn_blocking(move || crate::setup::run(&setup, &dir, &log_path, flag));
        let result = tokio::select! {
            r = &mut job => r.unwrap_or_else(|e| Err(anyhow::anyhow!("setup ended abnormally: {e}"))),
            reason = wait_stop(&mut stop_rx) => {
                interrupted.store(true, Ordering::SeqCst);
                let _ = job.await;
                return closer
                    .finish(Ending::new(reason, vec!["setup (interrupted)".into()]))
                    .await;
            }
        };
        match result {
            Ok(ready) => {
                // The versions actually installed, beside the rest of the environment.
                let report = evidence.join(evidence_files::ENVIRONMENT_REPORT);
                let mut text = std::fs::read_to_string(&report).unwrap_or_default();
                text.push_str(&format!(
                    "\n[setup] environment {}\n{}\n",
                    ready.venv.display(),
                    ready.versions
                ));
                if let Err(e) = std::fs::write(&report, text) {
                    tracing::warn!(
                        "cannot add the setup's versions to the environment report: {e}"
                    );
                }
                crate::setup::activate_here(&ready.venv);
            }
            Err(e) => return closer.failed_before_serving("[setup]", e).await,
        }
    }

    if let Some(f) = cfg.model.fetch.clone() {
        let fetched = tokio::select! {
            r = crate::fetch::fetch(&f, &closer.dir, hf_token.as_deref()) => r,
            reason = wait_stop(&mut stop_rx) => {
                return closer
                    .finish(Ending::new(reason, vec!["model fetch (interrupted)".into()]))
                    .await;
            }
        };
        match fetched {
            Ok(path) => cfg.model.path = Some(path.display().to_string()),
            Err(e) => return closer.failed_before_serving("model fetch", e).await,
        }
    }

    let request_log = crate::reqlog::RequestLog::create(
        &evidence.join(evidence_files::REQUESTS),
        loaded.token.clone(),
    )
    .context("opening requests.jsonl")?;
    let started = std::time::Instant::now();
    let (engine, server) = if cfg.model.runtime == Runtime::Candle {
        match load_candle(&cfg, &mut stop_rx).await? {
            Some(engine) => (Some(engine), None),
            None => {
                return closer
                    .finish(Ending::new(
                        current(&stop_rx),
                        vec!["model load (interrupted)".into()],
                    ))
                    .await
            }
        }
    } else {
        let server = Arc::new(Server::start(&cfg.model, cfg.gpus)?);
        closer.server_pid = Some(server.pid);
        // Where the controller finds the group if this agent is killed before it stops it.
        if let Err(e) = std::fs::write(
            evidence.join(evidence_files::SERVER_PGID),
            server.pid.to_string(),
        ) {
            tracing::warn!("cannot record the server's process group: {e}");
        }
        tokio::select! {
            ready = server.wait_ready() => {
                if let Err(e) = ready {
                    let mut ending = Ending::new(StopReason::ServerFailed, vec![server.stop()]);
                    ending.out_of_memory = server.oom.load(Ordering::SeqCst);
                    ending.failure = Some(format!("{e:#}"));
                    closer.finish(ending).await?;
                    return Err(e);
                }
            }
            reason = wait_stop(&mut stop_rx) => {
                return closer.finish(Ending::new(reason, vec![server.stop()])).await;
            }
        }
        spawn_server_watch(server.clone(), stop_tx.clone());
        (None, Some(server))
    };
    tracing::info!("model ready in {} ms", started.elapsed().as_millis());
    let upstream = match &server {
        Some(s) => Some(Upstream {
            base: format!("http://127.0.0.1:{}", s.port),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .context("http client")?,
            server: s.clone(),
        }),
        None => None,
    };
    let state = Arc::new(AppState {
        engine,
        upstream,
        token: loaded.token,
        model_id: cfg.model.id.clone(),
        session_id: cfg.session_id.clone(),
        deadline: deadline.clone(),
        started_at: Utc::now(),
        activity: crate::api::Activity::new(),
        log: request_log,
        stopping: AtomicBool::new(false),
        ends_billing,
    });

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], cfg.listen_port));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr}: is another server using port {}?",
            cfg.listen_port
        )
    })?;
    tracing::info!("serving on http://{addr}");

    let (drain_tx, drain_rx) = watch::channel(false);
    let server_task =
        axum::serve(listener, api::app(state.clone())).with_graceful_shutdown(async move {
            let mut rx = drain_rx;
            let _ = rx.wait_for(|d| *d).await;
        });
    let server_task = tokio::spawn(async move { server_task.await });
    if let Some(idle) = cfg.idle_secs {
        spawn_idle_watch(state.clone(), Duration::from_secs(idle), stop_tx.clone());
    }

    let reason = wait_stop(&mut stop_rx).await;
    state.stopping.store(true, Ordering::SeqCst);
    let _ = drain_tx.send(true);
    // Graceful for in-flight requests, but never past DRAIN: the port must close on time.
    let _ = tokio::time::timeout(DRAIN, server_task).await;
    state.log.flush();
    let mut ending = Ending::new(reason, vec![format!("api server on {addr}")]);
    match &server {
        Some(s) => {
            ending
                .stopped
                .push(tokio::task::block_in_place(|| s.stop()));
            ending.out_of_memory = s.oom.load(Ordering::SeqCst);
            if reason == StopReason::ServerFailed {
                ending.failure = Some(format!(
                    "while serving, {}",
                    s.death_report()
                        .unwrap_or_else(|| "the model server stopped answering".into())
                ));
            }
        }
        None => {
            if let Some(engine) = &state.engine {
                engine.shutdown(Duration::from_secs(3)).await;
            }
            ending.stopped.push("engine (model freed)".into());
        }
    }
    closer.finish(ending).await
}

/// Load the GGUF model off the runtime; `None` when a stop came first.
async fn load_candle(
    cfg: &AgentConfig,
    stop_rx: &mut StopRx,
) -> anyhow::Result<Option<EngineHandle>> {
    let model_path = cfg
        .model
        .path
        .clone()
        .context("the config names no model path")?;
    tracing::info!("loading {model_path}");
    let load = tokio::task::spawn_blocking(move || {
        use engine::Backend;
        let mut model = engine::load(Path::new(&model_path))?;
        model.warm_up();
        Ok::<_, anyhow::Error>(model)
    });
    tokio::select! {
        res = load => Ok(Some(engine::spawn(res.context("the model loader panicked")??))),
        _ = wait_stop(stop_rx) => Ok(None),
    }
}

fn current(rx: &StopRx) -> StopReason {
    rx.borrow().unwrap_or(StopReason::Requested)
}

async fn wait_stop(rx: &mut StopRx) -> StopReason {
    match rx.wait_for(|r| r.is_some()).await {
        Ok(r) => r.unwrap_or(StopReason::Requested),
        Err(_) => StopReason::Requested,
    }
}

/// When the deadline comes, by two clocks: the host's wall clock corrected by the offset the
/// controller measured (`deadline + offset` in host time), and a monotonic countdown
/// started now from that same remaining time (and never later than the controller's own
/// count of what remained). The earlier wins; the wall clock is read again every second,
/// so a host clock stepped while serving moves the stop at most that much.
struct DeadlineClock {
    wall: chrono::DateTime<Utc>,
    monotonic: std::time::Instant,
}

impl DeadlineClock {
    fn new(cfg: &AgentConfig) -> DeadlineClock {
        let wall = cfg.deadline + chrono::Duration::milliseconds(cfg.clock_offset_ms.unwrap_or(0));
        let left = (wall - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let left = match cfg.remaining_ms {
            Some(r) => left.min(Duration::from_millis(r)),
            None => left,
        };
        DeadlineClock {
            wall,
            monotonic: std::time::Instant::now() + left,
        }
    }

    /// `gpuctl extend`: the deadline moves later by `by` on both clocks.
    fn extend(&mut self, by: chrono::Duration) {
        self.wall += by;
        self.monotonic += by.to_std().unwrap_or_default();
    }

    /// Time left until `before` ahead of the deadline, by the earlier clock.
    fn left(&self, before: Duration) -> Duration {
        let wall = (self.wall - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let mono = self
            .monotonic
            .saturating_duration_since(std::time::Instant::now());
        wall.min(mono).saturating_sub(before)
    }
}

fn spawn_watchdog(
    cfg: &AgentConfig,
    dir: std::path::PathBuf,
    deadline: SharedDeadline,
    stop: StopTx,
) {
    let mut clock = DeadlineClock::new(cfg);
    let grace = Duration::from_secs(cfg.grace_secs);
    tokio::spawn(async move {
        let mut graced = false;
        loop {
            if let Some(new) = take_deadline_request(&dir) {
                let current = deadline_of(&deadline);
                if new > current {
                    // Both clocks move by the same amount: the monotonic one still guards
                    // against a host clock stepped later.
                    clock.extend(new - current);
                    *deadline.lock().unwrap_or_else(|p| p.into_inner()) = new;
                    graced = false;
                    tracing::info!(
                        from = %current.to_rfc3339(),
                        to = %new.to_rfc3339(),
                        "deadline extended"
                    );
                } else {
                    tracing::info!(
                        "deadline request {} ignored: not after {}",
                        new.to_rfc3339(),
                        current.to_rfc3339()
                    );
                }
                let applied = dir.join(gpuctl_protocol::DEADLINE_APPLIED);
                let tmp = dir.join(format!("{}.tmp", gpuctl_protocol::DEADLINE_APPLIED));
                let written = std::fs::write(&tmp, deadline_of(&deadline).to_rfc3339())
                    .and_then(|_| std::fs::rename(&tmp, &applied));
                if let Err(e) = written {
                    tracing::warn!("cannot answer the deadline request: {e}");
                }
            }
            if !graced && clock.left(grace).is_zero() {
                graced = true;
                tracing::info!(
                    "grace period: the deadline is {}",
                    deadline_of(&deadline).to_rfc3339()
                );
            }
            let left = clock.left(Duration::ZERO);
            if left.is_zero() {
                tracing::info!(
                    deadline = %deadline_of(&deadline).to_rfc3339(),
                    "deadline reached: stopping"
                );
                let _ = stop.send(Some(StopReason::Deadline));
                return;
            }
            let next = if graced {
                left
            } else {
                clock.left(grace).max(Duration::from_millis(1))
            };
            tokio::time::sleep(next.min(Duration::from_secs(1))).await;
        }
    });
}

/// A deadline `gpuctl extend` left in the agent's folder (read once, then removed).
fn take_deadline_request(dir: &Path) -> Option<chrono::DateTime<Utc>> {
    let path = dir.join(gpuctl_protocol::DEADLINE_REQUEST);
    let text = std::fs::read_to_string(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    match chrono::DateTime::parse_from_rfc3339(text.trim()) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(e) => {
            tracing::warn!("deadline request {:?} ignored: {e}", text.trim());
            None
        }
    }
}

/// `stop.idle`: stop once no API request has come for `idle` (counted from when serving
/// began, then from each request).
fn spawn_idle_watch(state: Arc<AppState>, idle: Duration, stop: StopTx) {
    tokio::spawn(async move {
        loop {
            let quiet = state.activity.quiet_for();
            if quiet >= idle {
                tracing::info!(
                    "idle: no API request for {} s (stop.idle): stopping",
                    quiet.as_secs()
                );
                let _ = stop.send(Some(StopReason::Idle));
                return;
            }
            tokio::time::sleep((idle - quiet).min(Duration::from_secs(1))).await;
        }
    });
}

fn spawn_signal_handler(stop: StopTx) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot install signal handlers; the deadline still applies");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        let _ = stop.send(Some(StopReason::Signal));
    });
}

/// A supervised server that dies while serving stops the session (reported, not hidden).
fn spawn_server_watch(server: Arc<Server>, stop: StopTx) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Some(status) = server.exited() {
                tracing::info!(
                    "the model server died while serving: it {}",
                    crate::supervise::describe_exit(status)
                );
                let _ = stop.send(Some(StopReason::ServerFailed));
                return;
            }
        }
    });
}

impl Closer {
    /// The agent's last acts: final NVML sample, final record, the stop action, then, at
    /// the deadline with no controller watching, the end of its instance's billing.
    async fn finish(&mut self, ending: Ending) -> anyhow::Result<()> {
        self.sampler_stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        let stop_action = match &self.cfg.stop_action {
            StopAction::Exit => None,
            StopAction::Command(argv) if ending.reason.is_own() => Some(run_stop_action(argv)),
            StopAction::Command(_) => Some("not run: the stop was not the deadline".to_string()),
        };
        let mut record = FinalRecord {
            session_id: self.cfg.session_id.clone(),
            stopped_at: Utc::now(),
            deadline: deadline_of(&self.deadline),
            reason: ending.reason,
            stopped: ending.stopped,
            stop_action,
            failure: ending.failure,
            out_of_memory: ending.out_of_memory,
            pids: std::iter::once(std::process::id())
                .chain(self.server_pid)
                .collect(),
            self_terminate: None,
        };
        self.write_record(&record)?;
        if record.reason.is_own() {
            if let Some(answer) = self.end_billing().await {
                record.self_terminate = Some(answer);
                self.write_record(&record)?;
            }
        }
        tracing::info!(
            "stopped ({:?}{})",
            record.reason,
            if record.out_of_memory {
                ", out of memory"
            } else {
                ""
            }
        );
        Ok(())
    }
}

impl Closer {
    /// A step before serving (`[setup]`, the model fetch) failed: the session ends failed,
    /// with its final record, and the agent exits with the error.
    async fn failed_before_serving(&mut self, what: &str, e: anyhow::Error) -> anyhow::Result<()> {
        tracing::warn!("{what} failed: {e:#}");
        let mut ending = Ending::new(StopReason::ServerFailed, vec![what.into()]);
        ending.failure = Some(format!("{what} failed: {e:#}"));
        self.finish(ending).await?;
        Err(e)
    }

    fn write_record(&self, record: &FinalRecord) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(record)?;
        std::fs::write(self.evidence.join(evidence_files::FINAL_RECORD), json)
            .context("writing the final record")
    }

    /// Layer 1 at the deadline: a controller that is watching (its heartbeat is fresh)
    /// collects the evidence and terminates; otherwise the agent does, with the
    /// instance's own key (looked for again now if it was missing at start).
    async fn end_billing(&mut self) -> Option<String> {
        let target = self.cfg.self_terminate.clone()?;
        if crate::billing::controller_present(&self.dir) {
            let note =
                "a controller is watching: it collects the evidence and terminates the instance";
            tracing::info!("layer 1: {note}");
            return Some(note.into());
        }
        if self.scoped.is_none() {
            self.scoped = crate::billing::ScopedKey::discover(&target.provider);
        }
        match &self.scoped {
            Some(key) => {
                tracing::info!(
                    "layer 1: no controller is watching; terminating with {}",
                    key.describe()
                );
                Some(key.terminate(&target).await)
            }
            None => {
                let note = format!(
                    "no instance-scoped {} key on this host: serving stopped, but the instance bills until the controller, the daemon or `gpuctl down` terminates it",
                    target.provider
                );
                tracing::info!("layer 1: {note}");
                Some(note)
            }
        }
    }
}

/// The clock part of environment_report.txt: what the controller measured, and the
/// deadline in this host's time.
fn clock_lines(cfg: &AgentConfig) -> String {
    let offset = cfg.clock_offset_ms.unwrap_or(0);
    let measured = match (cfg.clock_offset_ms, cfg.clock_rtt_ms) {
        (Some(o), Some(rtt)) => format!(
            "clock offset: {o} ms (this host's wall clock minus the controller's, measured over SSH at deploy, round trip {rtt} ms)"
        ),
        _ => "clock offset: not measured (the agent runs beside its controller)".into(),
    };
    format!(
        "\n{measured}\ndeadline: {} (controller's clock) = {} on this host's clock; host clock now {}\n",
        cfg.deadline.to_rfc3339(),
        (cfg.deadline + chrono::Duration::milliseconds(offset)).to_rfc3339(),
        Utc::now().to_rfc3339(),
    )
}

fn run_stop_action(argv: &[String]) -> String {
    let Some((cmd, args)) = argv.split_first() else {
        return "empty stop command".into();
    };
    match std::process::Command::new(cmd).args(args).status() {
        Ok(s) => format!("`{}` exited with {s}", argv.join(" ")),
        Err(e) => format!("`{}` could not run: {e}", argv.join(" ")),
    }
}
