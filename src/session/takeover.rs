//! Stopping a session from a process other than the `up` that started it: the daemon at a
//! deadline, `gpuctl down`, or a retry of an unconfirmed stop. Everything needed is in the
//! session row (the plan text, the deadline, the agent handle), so this works after any
//! crash of `up`, of the daemon, or of both.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::handle::AgentHandle;
use super::up::{Ending, Session};
use crate::db::{Claim, Controller, Db, SessionRecord};
use crate::evidence::{Bundle, Check};
use crate::exit::Exit;
use crate::progress::Reporter;

/// What a takeover did.
#[derive(Debug)]
pub enum Outcome {
    /// This process ran the stop; the exit status says how it ended.
    Stopped(Exit),
    /// Nothing to do: already stopped (a second `down`, a stop that raced ours).
    AlreadyFinal,
    /// Another live process drives the session.
    Held(Controller),
}

/// Claim the session for `me` and run the stop with `reason`. Safe to call any number of
/// times, from any number of processes: the claim lets one through, and a stop of an agent
/// that is already gone proves it gone.
pub async fn stop_recorded(
    home: &Path,
    id: &str,
    me: Controller,
    reason: &str,
) -> anyhow::Result<Outcome> {
    let db = Db::open(home)?;
    match db.claim(id, me, crate::procs::gone, chrono::Utc::now())? {
        Claim::Final(_) => return Ok(Outcome::AlreadyFinal),
        Claim::Held(c) => return Ok(Outcome::Held(c)),
        Claim::Taken { .. } => {}
    }
    // Held for as long as the stop runs: a daemon sharing the store (on this machine or
    // another) sees a live controller and never starts a second stop.
    let _lease = super::up::Heartbeat::start(home, id, me);
    let record = db.get_session(id)?;
    let mut rep = Reporter::for_session(id);
    let mut session = resume(db, home, &record).await?;
    let ending = if reason == "deadline" {
        Ending::Deadline
    } else {
        Ending::Requested(reason.to_string())
    };
    rep.info(&format!("stopping: {}", ending.reason()));
    let stopped = session.finish(&mut rep, ending, Instant::now()).await;
    let exit = session.publish(&mut rep, stopped).await?;
    Ok(Outcome::Stopped(exit))
}

/// Rebuild what `finish` needs from the database row.
async fn resume(db: Db, home: &Path, record: &SessionRecord) -> anyhow::Result<Session> {
    // Read as recorded, not as today's rules would have it: a stricter gpuctl must still
    // stop what an older one started.
    let (plan, problems) =
        crate::plan::read_lenient(&record.plan_name, &record.plan_text, record.created_at);
    let plan = plan.with_context(|| {
        let first = problems
            .iter()
            .find(|p| p.is_error())
            .map(|p| p.message.clone())
            .unwrap_or_default();
        format!(
            "the plan recorded with session {} cannot be read at all ({first})",
            record.id
        )
    })?;
    let bundle_dir = record
        .evidence_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join("evidence").join(&record.id));
    // An evidence folder that cannot be made (an unmounted disk) must not hold the stop:
    // the bundle goes under GPUCTL_HOME instead, and says so.
    let bundle = match Bundle::create(bundle_dir.clone()) {
        Ok(b) => b,
        Err(e) => {
            let fallback = home.join("evidence").join(&record.id);
            crate::warning!(
                "cannot create {} ({e:#}); the evidence of {} goes to {}",
                bundle_dir.display(),
                record.id,
                fallback.display()
            );
            Bundle::create(fallback)?
        }
    };
    // A handle that cannot be read must not keep a cloud instance billing: the stop goes on
    // without the agent, and says so.
    let mut stop_blocker = None;
    let handle = match record.handle.as_deref().map(AgentHandle::from_json) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            stop_blocker = Some(Check::new(
                "host_reachable",
                false,
                format!("the recorded agent handle cannot be read: {e:#}"),
            ));
            None
        }
    };
    let agent_bin = match &handle {
        Some(AgentHandle::Local { agent_bin, .. }) => agent_bin.clone(),
        _ => super::find_agent(None).unwrap_or_else(|_| PathBuf::from("gpuctl-agent")),
    };
    let work = handle
        .as_ref()
        .and_then(|h| h.work().map(Path::to_path_buf))
        .unwrap_or_else(|| home.join("run").join(&record.id));
    let host = match &handle {
        // A local `up` killed between starting its agent and recording the handle leaves
        // an agent nobody named: found by its config path in its command line.
        None if record.provider == "local" => {
            let config = work.join("agent.json");
            crate::procs::with_cmdline(&config.display().to_string())
                .first()
                .map(|pid| super::host::Host::Local {
                    agent: Box::new(super::local_host::LocalAgent::adopt(
                        *pid,
                        plan.api_port().map_or(0, |p| p.remote),
                        &config,
                        &work.join("agent.log"),
                    )),
                    work: work.clone(),
                })
        }
        None => None,
        Some(h) => match tokio::time::timeout(Duration::from_secs(30), h.reattach()).await {
            Ok(Ok(host)) => Some(host),
            Ok(Err(e)) => {
                stop_blocker = Some(Check::new(
                    "host_reachable",
                    false,
                    format!("cannot reach the host to stop the agent: {e:#}"),
                ));
                None
            }
            Err(_) => {
                stop_blocker = Some(Check::new(
                    "host_reachable",
                    false,
                    "the host did not answer within 30 s",
                ));
                None
            }
        },
    };
    // A cloud instance is stopped through the provider, whatever the host says.
    let kind: Option<gpuctl_providers::ProviderKind> = record.provider.parse().ok();
    let cloud = match kind.filter(|k| k.is_cloud()) {
        Some(k) => match gpuctl_providers::Cloud::connect(k) {
            Ok(c) => Some(c),
            Err(e) => {
                stop_blocker.get_or_insert(Check::new(
                    "provider_terminated",
                    false,
                    format!("cannot ask {k}: {e}"),
                ));
                None
            }
        },
        None => None,
    };
    Ok(Session {
        cloud,
        target: None,
        no_capacity: false,
        pending_launch: None,
        db,
        id: record.id.clone(),
        plan,
        bundle,
        work,
        deadline: record.deadline,
        host,
        agent_bin,
        timings: Vec::new(),
        stop_blocker,
    })
}

impl From<Outcome> for Exit {
    fn from(o: Outcome) -> Exit {
        match o {
            Outcome::Stopped(e) => e,
            Outcome::AlreadyFinal => Exit::Done,
            Outcome::Held(_) => Exit::Failed,
        }
    }
}
