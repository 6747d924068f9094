//! Where the agent runs: this machine (provider `local`) or a host reached by SSH. `up`
//! drives both through this one interface.

use std::path::Path;
use std::time::Duration;

use gpuctl_protocol::{evidence_files, FinalRecord};

use super::local_host::{gpu_released, peak_rss_kib, LocalAgent};
use super::remote_host::RemoteAgent;
use crate::eval::AgentClient;
use crate::evidence::{Bundle, Check};

/// The GPUs the session was placed on (physical indices), from the agent's config.
fn placed_gpus(config: &Path) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(config).ok()?;
    let cfg: gpuctl_protocol::AgentConfig = serde_json::from_str(&text).ok()?;
    let devices = cfg.cuda_visible_devices?;
    Some(
        devices
            .split(',')
            .filter_map(|d| d.trim().parse().ok())
            .collect(),
    )
}

/// SIGKILL to whatever is left of the supervised server's process group once the agent is
/// gone (vLLM's engine and workers are other processes of that group). Returns the check
/// (None when the session had no supervised server) and the PIDs that were in the group.
async fn stop_server_group(evidence: &Path) -> (Option<Check>, Vec<u32>) {
    let Some(pgid) = std::fs::read_to_string(evidence.join(evidence_files::SERVER_PGID))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    else {
        return (None, Vec::new());
    };
    let members = crate::procs::group_members(pgid);
    let pids: Vec<u32> = members.iter().map(|m| m.0).collect();
    if members.is_empty() {
        let msg = format!("the server's process group {pgid} has no process left");
        return (Some(Check::new("server_stopped", true, msg)), pids);
    }
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !crate::procs::group_members(pgid).is_empty() && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = crate::procs::group_members(pgid);
    let named: Vec<String> = members
        .iter()
        .map(|(pid, cmd)| format!("pid {pid} `{cmd}`"))
        .collect();
    let check = Check::new(
        "server_stopped",
        left.is_empty(),
        format!(
            "SIGKILL to the server's process group {pgid}, which the agent left behind: {}{}",
            named.join(", "),
            if left.is_empty() {
                String::new()
            } else {
                format!("; still running: {left:?}")
            }
        ),
    );
    (Some(check), pids)
}

pub enum Host {
    Local {
        agent: Box<LocalAgent>,
        work: std::path::PathBuf,
    },
    Remote(Box<RemoteAgent>),
}

impl Host {
    pub fn pid(&self) -> u32 {
        match self {
            Host::Local { agent, .. } => agent.pid,
            Host::Remote(r) => r.pid,
        }
    }

    pub fn argv(&self) -> Vec<String> {
        match self {
            Host::Local { agent, .. } => agent.argv.clone(),
            Host::Remote(r) => r.argv.clone(),
        }
    }

    /// Peak memory of the agent (known on this machine only).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        match self {
            Host::Local { agent, .. } => peak_rss_kib(agent.pid),
            Host::Remote(_) => None,
        }
    }

    pub async fn wait_healthy(&mut self, client: &AgentClient) -> anyhow::Result<()> {
        match self {
            Host::Local { agent, .. } => agent.wait_healthy(client).await,
            Host::Remote(r) => r.wait_healthy(client).await,
        }
    }

    /// Serve until the agent ends by itself (its deadline, or a failure); returns how it ended.
    pub async fn wait_exit(&mut self, report: &mut dyn FnMut(&str)) -> String {
        match self {
            Host::Local { agent, .. } => agent
                .wait_exit()
                .await
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown status".into()),
            Host::Remote(r) => loop {
                tokio::select! {
                    Some(event) = r.events_rx.recv() => report(&event),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {
                        if let Ok(false) = r.is_alive().await {
                            return "the agent's process is gone on the host".into();
                        }
                    }
                }
            },
        }
    }

    pub async fn final_record(&self) -> Option<FinalRecord> {
        match self {
            Host::Local { work, .. } => {
                let text = std::fs::read_to_string(
                    work.join("evidence").join(evidence_files::FINAL_RECORD),
                )
                .ok()?;
                serde_json::from_str(&text).ok()
            }
            Host::Remote(r) => r.read_final_record().await,
        }
    }

    /// Stop the agent and prove it; every check, GPUs included (`whole_host`: a rented
    /// instance, whose every GPU process is the session's).
    pub async fn stop(&mut self, agent_bin: &Path, whole_host: bool) -> Vec<Check> {
        match self {
            Host::Local { agent, work } => {
                let mut checks = agent.stop().await;
                let evidence = work.join("evidence");
                // What the agent could not stop (it was killed first): its server's group.
                let (group_check, group_pids) = stop_server_group(&evidence).await;
                checks.extend(group_check);
                let placed = placed_gpus(&work.join("agent.json"));
                let mut pids = self
                    .final_record()
                    .await
                    .map(|r| r.pids)
                    .unwrap_or_default();
                pids.push(self.pid());
                pids.extend(group_pids);
                checks.push(gpu_released(agent_bin, &pids, placed.as_deref()).await);
                checks
            }
            Host::Remote(r) => r.stop(whole_host).await,
        }
    }

    /// The plan's `stop_command` (on_stop = "command"), run where the agent ran, after the
    /// evidence is collected (it may power the host off).
    pub async fn run_stop_command(&self, argv: &[String]) -> Check {
        match self {
            Host::Local { .. } => {
                let Some((cmd, args)) = argv.split_first() else {
                    return Check::new("stop_command", false, "empty stop_command");
                };
                match tokio::process::Command::new(cmd).args(args).status().await {
                    Ok(s) => Check::new(
                        "stop_command",
                        s.success(),
                        format!("`{}` exited {s}", argv.join(" ")),
                    ),
                    Err(e) => Check::new(
                        "stop_command",
                        false,
                        format!("`{}` could not run: {e}", argv.join(" ")),
                    ),
                }
            }
            Host::Remote(r) => r.run_stop_command(argv).await,
        }
    }

    /// A copy of the evidence taken while the agent still serves (the grace period); the
    /// stop takes the final one. Nothing on the host is cleaned up.
    pub async fn collect_snapshot(
        &self,
        bundle: &Bundle,
        copy_back: &[String],
    ) -> anyhow::Result<()> {
        match self {
            Host::Local { .. } => self.collect(bundle, copy_back).await.map(|_| ()),
            Host::Remote(r) => r.pull(&bundle.dir, copy_back).await.map(|_| ()),
        }
    }

    /// Bring the agent's evidence (and the plan's other files) into the bundle.
    pub async fn collect(
        &self,
        bundle: &Bundle,
        copy_back: &[String],
    ) -> anyhow::Result<Vec<(String, String)>> {
        match self {
            Host::Local { work, .. } => {
                let mut out = Vec::new();
                let ev = work.join("evidence");
                for name in [
                    evidence_files::ENVIRONMENT_REPORT,
                    evidence_files::REQUESTS,
                    evidence_files::GPU_METRICS,
                    evidence_files::FINAL_RECORD,
                    "final_record-oom-attempt.json",
                ] {
                    let present = bundle.copy_in(&ev.join(name), name)?;
                    out.push((
                        name.to_string(),
                        if present { "present" } else { "missing" }.to_string(),
                    ));
                }
                bundle.copy_in(&work.join("agent.log"), evidence_files::AGENT_LOG)?;
                bundle.copy_in(
                    &ev.join(evidence_files::SETUP_LOG),
                    evidence_files::SETUP_LOG,
                )?;
                bundle.copy_in(&work.join("agent-oom-attempt.log"), "agent-oom-attempt.log")?;
                let _ = copy_back;
                Ok(out)
            }
            Host::Remote(r) => {
                let pulled = r.pull(&bundle.dir, copy_back).await?;
                r.cleanup().await;
                Ok(pulled)
            }
        }
    }
}
