//! Provider `local`: the agent as a child process of `up`, in its own process group (so
//! a Ctrl+C in the terminal reaches `up`, which stops it in order), proven stopped by its
//! exit status and a refused connection on its port.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::eval::AgentClient;
use crate::evidence::Check;

/// After SIGTERM, how long the agent gets before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(gpuctl_protocol::AGENT_TERM_SECS);

pub struct LocalAgent {
    /// None when the agent was adopted from a controller that is gone (`gpuctl daemon`,
    /// `gpuctl down`): it is then watched through /proc instead of waited for.
    child: Option<Child>,
    pub pid: u32,
    pub port: u16,
    pub argv: Vec<String>,
    log_path: PathBuf,
    exit: Option<std::process::ExitStatus>,
}

/// The agent binary: `--agent-bin`, else `$GPUCTL_AGENT_BIN`, else next to this executable.
pub fn find_agent(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--agent-bin {} does not exist", p.display());
    }
    if let Some(p) = &crate::settings::settings().agent_bin {
        if p.is_file() {
            return Ok(p.clone());
        }
        bail!("GPUCTL_AGENT_BIN={} does not exist", p.display());
    }
    let exe = std::env::current_exe().context("cannot find the gpuctl executable")?;
    let beside = exe.with_file_name("gpuctl-agent");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "gpuctl-agent was not found next to {} (build it with `cargo build --release --workspace`, or pass --agent-bin)",
        exe.display()
    )
}

impl LocalAgent {
    pub fn start(
        agent: &Path,
        config: &Path,
        log_path: &Path,
        port: u16,
    ) -> anyhow::Result<LocalAgent> {
        let log = std::fs::File::create(log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone()?;
        let argv = vec![
            agent.display().to_string(),
            "serve".into(),
            "--config".into(),
            config.display().to_string(),
        ];
        let child = Command::new(agent)
            .args(&argv[1..])
            // No cloud key or passphrase reaches the agent, nor the server it starts.
            .env_clear()
            .envs(gpuctl_protocol::child_env::filtered())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", agent.display()))?;
        let pid = child.id().context("the agent exited at once")?;
        Ok(LocalAgent {
            child: Some(child),
            pid,
            port,
            argv,
            log_path: log_path.to_path_buf(),
            exit: None,
        })
    }

    /// Take over an agent started by another `gpuctl` process. Refused when the PID is no
    /// longer this session's agent (PIDs are reused).
    pub fn adopt(pid: u32, port: u16, config: &Path, log_path: &Path) -> LocalAgent {
        let config = config.display().to_string();
        let exit = if crate::procs::cmdline_contains(pid, &config) {
            None
        } else {
            // Gone (or another program now): there is nothing of the session to signal.
            Some(std::process::ExitStatus::default())
        };
        LocalAgent {
            child: None,
            pid,
            port,
            argv: vec![
                "gpuctl-agent".into(),
                "serve".into(),
                "--config".into(),
                config,
            ],
            log_path: log_path.to_path_buf(),
            exit,
        }
    }

    /// Wait for the agent to end, up to `limit` (None: for ever).
    async fn wait_for(&mut self, limit: Option<Duration>) -> Option<std::process::ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let waited = match self.child.as_mut() {
            Some(child) => match limit {
                Some(l) => tokio::time::timeout(l, child.wait())
                    .await
                    .ok()
                    .and_then(|r| r.ok()),
                None => child.wait().await.ok(),
            },
            None => {
                let start = std::time::Instant::now();
                loop {
                    if crate::procs::exited(self.pid) {
                        break Some(std::process::ExitStatus::default());
                    }
                    if limit.is_some_and(|l| start.elapsed() >= l) {
                        break None;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.exit = waited;
        self.exit
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n    ")
    }

    /// Poll /health until it answers; fail at once if the agent exits.
    pub async fn wait_healthy(&mut self, client: &AgentClient) -> anyhow::Result<()> {
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "the agent exited before it was ready ({status}); agent.log ends with:\n    {}",
                    self.log_tail()
                );
            }
            if client.health().await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the agent has exited on its own (its watchdog, or a crash).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.exit.is_none() {
            self.exit = match self.child.as_mut() {
                Some(child) => child.try_wait().ok().flatten(),
                None => crate::procs::exited(self.pid).then(std::process::ExitStatus::default),
            };
        }
        self.exit
    }

    pub async fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.wait_for(None).await
    }

    /// Stop the agent and prove it: SIGTERM to its group, SIGKILL after a grace, then
    /// check the exit status and that the port refuses connections.
    pub async fn stop(&mut self) -> Vec<Check> {
        let mut checks = Vec::new();
        let pgid = Pid::from_raw(self.pid as i32);
        let was_running = self.exited().is_none();
        if was_running {
            let _ = killpg(pgid, Signal::SIGTERM);
            if self.wait_for(Some(TERM_GRACE)).await.is_none() {
                let _ = killpg(pgid, Signal::SIGKILL);
                self.wait_for(Some(TERM_GRACE)).await;
                checks.push(Check::new(
                    "sigkill",
                    true,
                    format!("the agent ignored SIGTERM for {TERM_GRACE:?}; sent SIGKILL"),
                ));
            }
        }
        // Anything left in its process group is stopped too (only while it is ours: an
        // adopted agent that was already gone may have left its group id to another process).
        if self.child.is_some() || was_running {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        checks.push(match self.exit {
            Some(_) if self.child.is_none() => Check::new(
                "process_exited",
                true,
                format!(
                    "pid {} is gone (/proc/{}/stat: no such process, or a zombie)",
                    self.pid, self.pid
                ),
            ),
            Some(status) => Check::new(
                "process_exited",
                true,
                format!("pid {} exited: {status}", self.pid),
            ),
            None => Check::new(
                "process_exited",
                false,
                format!("pid {}: no exit status could be read", self.pid),
            ),
        });
        checks.push(port_closed(self.port).await);
        checks
    }
}

/// Passes only when a connection to 127.0.0.1:port is refused.
pub async fn port_closed(port: u16) -> Check {
    match tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Check::new(
            "port_closed",
            true,
            format!("127.0.0.1:{port}: connection refused"),
        ),
        Ok(Err(e)) => Check::new("port_closed", true, format!("127.0.0.1:{port}: {e}")),
        Ok(Ok(_)) => Check::new(
            "port_closed",
            false,
            format!("127.0.0.1:{port} still accepts connections"),
        ),
        Err(_) => Check::new(
            "port_closed",
            false,
            format!("127.0.0.1:{port}: connect timed out"),
        ),
    }
}

/// Peak resident memory of a live process, from /proc (Linux).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// After the stop: NVML must list no compute process of the session on any GPU. Asked of
/// the agent binary (`gpu-procs`), which carries the NVML code; polled briefly, since the
/// driver frees a context a moment after its process exits.
/// With a placement, every compute process on the placed GPUs counts (a runtime's engine
/// and tensor-parallel workers are PIDs the session never saw).
pub async fn gpu_released(agent_bin: &Path, session_pids: &[u32], placed: Option<&[u32]>) -> Check {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(agent_bin).arg("gpu-procs").output().await;
        let answer: Option<gpuctl_protocol::GpuProcesses> = out
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok());
        let Some(answer) = answer else {
            return Check::new(
                "gpu_released",
                false,
                "could not ask NVML (gpuctl-agent gpu-procs failed)",
            );
        };
        let Some(gpus) = answer.gpus else {
            return Check::new(
                "gpu_released",
                true,
                answer
                    .note
                    .unwrap_or_else(|| "no NVIDIA GPU visible".into()),
            );
        };
        let ours: Vec<_> = answer
            .processes
            .iter()
            .filter(|p| session_pids.contains(&p.pid) || placed.is_some_and(|g| g.contains(&p.gpu)))
            .collect();
        if ours.is_empty() {
            return Check::new(
                "gpu_released",
                true,
                format!(
                    "NVML lists {} compute process(es) on {gpus} GPU(s), none of the session's (pids {session_pids:?}) and none on its GPUs ({})",
                    answer.processes.len(),
                    placed.map(|g| format!("{g:?}")).unwrap_or_else(|| "not placed".into())
                ),
            );
        }
        if std::time::Instant::now() > deadline {
            let list: Vec<String> = ours
                .iter()
                .map(|p| {
                    format!(
                        "pid {} on gpu {} ({:?} MiB)",
                        p.pid, p.gpu, p.used_memory_mib
                    )
                })
                .collect();
            return Check::new(
                "gpu_released",
                false,
                format!("still on the GPU after the stop: {}", list.join(", ")),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which GPUs a session of `wanted` GPUs gets on this host, as `CUDA_VISIBLE_DEVICES`: the
/// idle ones first, so that two sessions side by side land on different GPUs. `Err` says
/// what the host has when it cannot satisfy the plan.
pub fn place_gpus(agent_bin: &Path, wanted: u32) -> Result<Option<String>, String> {
    let out = std::process::Command::new(agent_bin)
        .arg("gpu-procs")
        .output()
        .map_err(|e| format!("cannot ask {} for the GPUs: {e}", agent_bin.display()))?;
    let answer: gpuctl_protocol::GpuProcesses = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("gpuctl-agent gpu-procs answered badly: {e}"))?;
    let Some(count) = answer.gpus else {
        return if wanted == 0 {
            Ok(None)
        } else {
            Err(format!(
                "the plan asks for {wanted} GPU(s) (instance.gpus), but this host has none: {}; set gpus = 0 to run on the CPU",
                answer.note.unwrap_or_else(|| "no NVIDIA GPU visible".into())
            ))
        };
    };
    if wanted == 0 {
        return Ok(Some(String::new()));
    }
    if wanted > count {
        return Err(format!("the plan asks for {wanted} GPU(s) (instance.gpus), but this host has {count}; lower instance.gpus or use a larger host"));
    }
    let mut gpus: Vec<(usize, u32)> = (0..count)
        .map(|i| (answer.processes.iter().filter(|p| p.gpu == i).count(), i))
        .collect();
    gpus.sort();
    let mut chosen: Vec<u32> = gpus
        .into_iter()
        .take(wanted as usize)
        .map(|(_, i)| i)
        .collect();
    chosen.sort();
    Ok(Some(
        chosen
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    ))
}
