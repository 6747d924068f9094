//! Provider `ssh`: the agent on a host reached by SSH. Deployed over SFTP (skipped when the
//! same binary is already there), started detached so it outlives the connection, reached
//! through the localhost tunnel, stopped and proven stopped by asking the host itself.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gpuctl_protocol::{evidence_files, AgentConfig};
use tokio::sync::{mpsc, Mutex, RwLock};

use crate::eval::AgentClient;
use crate::evidence::Check;
use crate::ssh::{self, sh_quote, Download, Session, Shared, SshEndpoint, Tunnel};

const EXEC: Duration = Duration::from_secs(30);
/// How long the stop waits for the host to answer at all.
const PROBE: Duration = Duration::from_secs(10);
/// Evidence files larger than this are cut (and recorded as cut).
pub const COPY_CAP: u64 = 64 * 1024 * 1024;
/// `host_unreachable` passes only after this long without a TCP answer on the SSH port...
const UNREACHABLE_FOR: Duration = Duration::from_secs(10);
/// ...seen within this window after the stop command.
const UNREACHABLE_WINDOW: Duration = Duration::from_secs(120);

/// The proof of `shutdown_proof = "host_unreachable"`: the host's SSH port gives no TCP
/// answer (no accept, no refusal: the machine is off) for `UNREACHABLE_FOR` in a row.
pub async fn probe_unreachable(host: &str, port: u16) -> Check {
    let start = std::time::Instant::now();
    let mut silent_since: Option<std::time::Instant> = None;
    let mut last = String::from("not probed");
    while start.elapsed() < UNREACHABLE_WINDOW {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((host, port)),
        )
        .await;
        let silent = match &answer {
            Ok(Ok(_)) => {
                last = "accepts connections".into();
                false
            }
            // A refusal is an answer: the machine is up, only sshd is gone.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = "refuses connections (the machine still answers)".into();
                false
            }
            Ok(Err(e)) => {
                last = format!("no answer ({e})");
                true
            }
            Err(_) => {
                last = "no answer within 2 s".into();
                true
            }
        };
        match (silent, silent_since) {
            (true, Some(t)) if t.elapsed() >= UNREACHABLE_FOR => {
                return Check::new(
                    "host_unreachable",
                    true,
                    format!(
                        "{host}:{port} gave no TCP answer for {} s ({last})",
                        t.elapsed().as_secs()
                    ),
                )
            }
            (true, None) => silent_since = Some(std::time::Instant::now()),
            (false, _) => silent_since = None,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Check::new(
        "host_unreachable",
        false,
        format!(
            "{host}:{port} still answered within {} s of the stop command: {last}",
            UNREACHABLE_WINDOW.as_secs()
        ),
    )
}

/// The status of a file that was not a regular file on the host, and was not copied.
pub const REFUSED: &str = "refused";
/// After SIGTERM, how long the agent gets before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(gpuctl_protocol::AGENT_TERM_SECS);

/// A verified, authenticated connection, before anything is deployed.
#[derive(Clone)]
pub struct Connected {
    shared: Shared,
    /// Pinned to the key this connection trusted: every later connection must see it.
    target: SshEndpoint,
    pub fingerprint: String,
}

/// The host's wall clock against this machine's, measured over SSH.
#[derive(Debug, Clone, Copy)]
pub struct ClockOffset {
    /// Host minus controller, in milliseconds.
    pub offset_ms: i64,
    pub rtt_ms: u64,
}

impl Connected {
    /// One command on the host; its standard output.
    pub async fn exec(&self, cmd: &str) -> anyhow::Result<String> {
        let session = self.shared.read().await.clone();
        let out = session.exec(cmd, EXEC).await?;
        if !out.ok() {
            anyhow::bail!("`{cmd}` failed on the host: {}", out.stderr.trim());
        }
        Ok(out.stdout)
    }

    /// Read the host's clock three times (`date +%s%N`) and keep the reading with the
    /// shortest round trip, taken as read at its midpoint. None when the host will not say.
    pub async fn clock_offset(&self) -> Option<ClockOffset> {
        let session = self.shared.read().await.clone();
        let mut best: Option<ClockOffset> = None;
        for _ in 0..3 {
            let sent = chrono::Utc::now();
            let out = session.exec("date +%s%N", EXEC).await.ok()?;
            let back = chrono::Utc::now();
            let host_ns: i128 = out.stdout.trim().parse().ok()?;
            let rtt = back - sent;
            let mid = sent + rtt / 2;
            let mid_ns = i128::from(mid.timestamp_nanos_opt()?);
            let reading = ClockOffset {
                offset_ms: i64::try_from((host_ns - mid_ns) / 1_000_000).ok()?,
                rtt_ms: u64::try_from(rtt.num_milliseconds()).unwrap_or(0),
            };
            if best.is_none_or(|b| reading.rtt_ms < b.rtt_ms) {
                best = Some(reading);
            }
        }
        best
    }
}

pub struct RemoteAgent {
    shared: Shared,
    target: SshEndpoint,
    lock: Arc<Mutex<()>>,
    events: mpsc::UnboundedSender<String>,
    pub events_rx: mpsc::UnboundedReceiver<String>,
    pub pid: u32,
    /// The session's folder on the host (absolute).
    pub dir: String,
    pub bin: String,
    pub port: u16,
    pub argv: Vec<String>,
    pub fingerprint: String,
    pub uploaded: bool,
    tunnel: Option<Tunnel>,
    /// The plan's other `access.ports`, forwarded the same way.
    others: Vec<Tunnel>,
    /// Touches the agent's `controller.alive` every few seconds while this controller
    /// watches: at the deadline the agent leaves the terminate to a controller that is
    /// there, and ends billing itself otherwise.
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for RemoteAgent {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

/// The highest `GLIBC_2.N` symbol version a binary needs (scanned from the file's bytes).
pub fn glibc_needed(binary: &[u8]) -> Option<(u32, u32)> {
    let needle = b"GLIBC_2.";
    let mut best: Option<(u32, u32)> = None;
    let mut i = 0;
    while let Some(pos) = binary[i..].windows(needle.len()).position(|w| w == needle) {
        let start = i + pos + needle.len();
        let digits: String = binary[start..]
            .iter()
            .take(4)
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        if let Ok(minor) = digits.parse::<u32>() {
            best = best.max(Some((2, minor)));
        }
        i = start;
    }
    best
}

fn parse_glibc(text: &str) -> Option<(u32, u32)> {
    // `getconf GNU_LIBC_VERSION` prints "glibc 2.35".
    let v = text.split_whitespace().last()?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl RemoteAgent {
    async fn session(&self) -> Result<Arc<Session>, ssh::SshError> {
        ssh::live(&self.shared, &self.target, &self.lock, &self.events).await
    }

    /// Connect and verify the host key (nothing is sent to a host whose key is refused).
    pub async fn connect(target: &SshEndpoint) -> Result<Connected, ssh::SshError> {
        let session = ssh::connect(target).await?;
        let fingerprint = session.fingerprint.clone();
        Ok(Connected {
            shared: Arc::new(RwLock::new(Arc::new(session))),
            target: target.pinned_to(&fingerprint),
            fingerprint,
        })
    }

    /// NVML on the host, asked through the agent binary, polled briefly (a GPU's memory is
    /// released a moment after its process dies).
    async fn gpu_released(&self, session: &Session, pids: &[u32], whole_host: bool) -> Check {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = match session
                .exec(&format!("{} gpu-procs", sh_quote(&self.bin)), EXEC)
                .await
            {
                Ok(out) => serde_json::from_str::<gpuctl_protocol::GpuProcesses>(&out.stdout)
                    .map_err(|e| format!("gpu-procs answered badly: {e}")),
                Err(e) => Err(format!("could not ask NVML on the host: {e}")),
            };
            let a = match answer {
                Ok(a) => a,
                Err(e) => return Check::new("gpu_released", false, e),
            };
            if a.gpus.is_none() {
                return Check::new(
                    "gpu_released",
                    true,
                    a.note.unwrap_or_else(|| "no NVIDIA GPU visible".into()),
                );
            }
            let ours: Vec<String> = a
                .processes
                .iter()
                .filter(|p| whole_host || pids.contains(&p.pid))
                .map(|p| format!("pid {} on gpu {}", p.pid, p.gpu))
                .collect();
            let scope = if whole_host {
                "any process on the instance's GPUs counts"
            } else {
                "the session's processes count"
            };
            if ours.is_empty() || Instant::now() > deadline {
                return Check::new(
                    "gpu_released",
                    ours.is_empty(),
                    format!(
                        "NVML lists {} compute process(es); {scope}: {}",
                        a.processes.len(),
                        if ours.is_empty() {
                            "none".to_string()
                        } else {
                            ours.join(", ")
                        }
                    ),
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Where this agent's host is, pinned to the key the session trusted (what the
    /// session's handle stores).
    pub fn endpoint(&self) -> &SshEndpoint {
        &self.target
    }

    /// Check the host can run the agent, upload it if needed, start it, and open a tunnel
    /// for the API (`local_port` to the agent's port) and for each of `other_ports`.
    pub async fn deploy(
        connected: Connected,
        agent_bin: &Path,
        facts: &super::agent_binary::AgentFacts,
        config: &AgentConfig,
        token: &str,
        local_port: u16,
        other_ports: &[(u16, u16)],
    ) -> anyhow::Result<RemoteAgent> {
        let Connected {
            shared,
            target,
            fingerprint,
        } = connected;
        let target = &target;
        let (events, events_rx) = mpsc::unbounded_channel();
        let session = shared.read().await.clone();

        // One round trip: can the agent run there (checked before sending anything large),
        // the session's folders, and whether this very binary is already there. Its name is
        // its sha256 and an upload lands by rename, so a file of that name and size is it.
        let sha = &facts.sha256;
        let rel_bin = format!(".gpuctl/bin/gpuctl-agent-{sha}");
        let rel_dir = format!(".gpuctl/sessions/{}", config.session_id);
        let probe = session
            .exec(
                &format!(
                    "echo \"arch=$(uname -m)\"; \
                     echo \"glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null || ldd --version 2>&1 | head -1)\"; \
                     echo \"home=$HOME\"; \
                     mkdir -p \"$HOME\"/.gpuctl/bin \"$HOME\"/{dir}/evidence && chmod 700 \"$HOME\"/.gpuctl; \
                     echo \"mkdir=$?\"; \
                     echo \"size=$(stat -c %s \"$HOME\"/{bin} 2>/dev/null)\"",
                    dir = sh_quote(&rel_dir),
                    bin = sh_quote(&rel_bin),
                ),
                EXEC,
            )
            .await?;
        let field = |name: &str| {
            probe
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let arch = field("arch");
        let glibc = parse_glibc(&field("glibc"));
        let home = field("home");
        if arch != std::env::consts::ARCH {
            bail!("the host is {arch}, but this gpuctl-agent is built for {}; build the agent for {arch} and pass --agent-bin", std::env::consts::ARCH);
        }
        if let (Some(need), Some(have)) = (facts.glibc, glibc) {
            if need > have {
                bail!(
                    "the host has glibc {}.{}, but {} needs glibc {}.{}; build the agent for an older glibc (cargo-zigbuild --target x86_64-unknown-linux-gnu.2.31) and pass --agent-bin",
                    have.0, have.1, agent_bin.display(), need.0, need.1
                );
            }
        }
        if home.is_empty() {
            bail!("cannot find the home folder of {} on the host", target.user);
        }

        let bin = format!("{home}/{rel_bin}");
        let dir = format!("{home}/{rel_dir}");
        if field("mkdir") != "0" {
            bail!("cannot create {dir} on the host: {}", probe.stderr.trim());
        }
        // Content-addressed: the same binary is uploaded once per host.
        let uploaded = field("size") != facts.size.to_string();
        let sftp = session.sftp().await?;
        if uploaded {
            session.upload(&sftp, agent_bin, &bin, 0o755).await?;
        }
        // The plan's GPUs must exist on the host (the agent binary carries the NVML code).
        if config.gpus > 0 {
            let answer = session
                .exec(&format!("{} gpu-procs", sh_quote(&bin)), EXEC)
                .await?;
            let gpus: Option<gpuctl_protocol::GpuProcesses> =
                serde_json::from_str(&answer.stdout).ok();
            let have = gpus.as_ref().and_then(|g| g.gpus).unwrap_or(0);
            if have < config.gpus {
                bail!(
                    "the plan asks for {} GPU(s) (instance.gpus), but the host has {have}{}; lower instance.gpus or rent a larger host",
                    config.gpus,
                    gpus.and_then(|g| g.note).map(|n| format!(" ({n})")).unwrap_or_default()
                );
            }
        }
        let mut remote_config = config.clone();
        remote_config.token_file = format!("{dir}/token");
        remote_config.evidence_dir = format!("{dir}/evidence");
        session
            .write_file(&sftp, &remote_config.token_file, token.as_bytes(), 0o600)
            .await?;
        // The hub token: to the session's folder on the host (0600), never an argv; the
        // local copy goes at once.
        if let Some(local) = &config.hf_token_file {
            let hf = std::fs::read(local).context("reading the hub token file")?;
            let _ = std::fs::remove_file(local);
            let remote = format!("{dir}/hf_token");
            session.write_file(&sftp, &remote, &hf, 0o600).await?;
            remote_config.hf_token_file = Some(remote);
        }
        session
            .write_file(
                &sftp,
                &format!("{dir}/agent.json"),
                serde_json::to_string_pretty(&remote_config)?.as_bytes(),
                0o600,
            )
            .await?;
        drop(sftp);

        // Detached: setsid, no terminal, output to a file; `echo $!` names the agent's pid.
        let start = format!(
            "cd {d} && {{ setsid {b} serve --config agent.json > agent.log 2>&1 < /dev/null & echo $!; }}",
            d = sh_quote(&dir),
            b = sh_quote(&bin)
        );
        let started = session.exec(&start, EXEC).await?;
        let pid: u32 = started.stdout.trim().parse().with_context(|| {
            format!(
                "the agent did not start: {}{}",
                started.stdout, started.stderr
            )
        })?;
        let tunnel = Tunnel::open(
            shared.clone(),
            target.clone(),
            local_port,
            config.listen_port,
            events.clone(),
        )
        .await?;
        let mut others = Vec::new();
        for (local, remote) in other_ports {
            others.push(
                Tunnel::open(
                    shared.clone(),
                    target.clone(),
                    *local,
                    *remote,
                    events.clone(),
                )
                .await?,
            );
        }
        Ok(RemoteAgent {
            shared,
            target: target.clone(),
            lock: Arc::new(Mutex::new(())),
            events,
            events_rx,
            pid,
            dir,
            argv: vec![
                bin.clone(),
                "serve".into(),
                "--config".into(),
                "agent.json".into(),
            ],
            bin,
            port: config.listen_port,
            fingerprint,
            uploaded,
            tunnel: Some(tunnel),
            others,
            heartbeat: None,
        }
        .with_heartbeat())
    }

    /// Start touching the heartbeat file (bounded: each touch has the exec timeout; the
    /// task ends with this value or at the stop).
    fn with_heartbeat(mut self) -> RemoteAgent {
        let (shared, target, lock, events) = (
            self.shared.clone(),
            self.target.clone(),
            self.lock.clone(),
            self.events.clone(),
        );
        let file = format!("{}/{}", self.dir, gpuctl_protocol::CONTROLLER_HEARTBEAT);
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                if let Ok(s) = ssh::live(&shared, &target, &lock, &events).await {
                    let _ = s.exec(&format!("touch {}", sh_quote(&file)), EXEC).await;
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }));
        self
    }

    /// Take over an agent another `gpuctl` process deployed (no tunnel: only the stop,
    /// its proof and the evidence are needed).
    pub fn attach(
        connected: Connected,
        pid: u32,
        dir: String,
        bin: String,
        port: u16,
    ) -> RemoteAgent {
        let (events, events_rx) = mpsc::unbounded_channel();
        RemoteAgent {
            shared: connected.shared,
            target: connected.target,
            lock: Arc::new(Mutex::new(())),
            events,
            events_rx,
            pid,
            argv: vec![
                bin.clone(),
                "serve".into(),
                "--config".into(),
                "agent.json".into(),
            ],
            dir,
            bin,
            port,
            fingerprint: connected.fingerprint,
            uploaded: false,
            tunnel: None,
            others: Vec::new(),
            heartbeat: None,
        }
    }

    pub async fn is_alive(&self) -> Result<bool, ssh::SshError> {
        let s = self.session().await?;
        Ok(s.exec(&format!("kill -0 {} 2>/dev/null", self.pid), EXEC)
            .await?
            .ok())
    }

    async fn log_tail(&self) -> String {
        match self.session().await {
            Ok(s) => s
                .exec(
                    &format!("tail -n 5 {}/agent.log", sh_quote(&self.dir)),
                    EXEC,
                )
                .await
                .map(|e| e.stdout)
                .unwrap_or_default(),
            Err(e) => format!("(cannot read agent.log: {e})"),
        }
    }

    /// Poll /health through the tunnel; fail when the agent has exited.
    pub async fn wait_healthy(&mut self, client: &AgentClient) -> anyhow::Result<()> {
        let mut polls = 0u32;
        loop {
            if client.health().await.is_ok() {
                // Polls that found the agent not yet listening are not news.
                while self.events_rx.try_recv().is_ok() {}
                return Ok(());
            }
            polls += 1;
            if polls % 10 == 0 && !self.is_alive().await? {
                bail!("the agent exited on the host before it was ready; agent.log ends with:\n    {}", self.log_tail().await.trim().replace('\n', "\n    "));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn read_final_record(&self) -> Option<gpuctl_protocol::FinalRecord> {
        let s = self.session().await.ok()?;
        let out = s
            .exec(
                &format!(
                    "cat {}/evidence/{}",
                    sh_quote(&self.dir),
                    evidence_files::FINAL_RECORD
                ),
                EXEC,
            )
            .await
            .ok()?;
        serde_json::from_str(&out.stdout).ok()
    }

    /// Ask the agent to stop, then prove it on the host: its process gone, its port
    /// refusing, no process of the session on a GPU. An unreachable host proves nothing.
    /// `whole_host`: the host is the session's alone (a rented instance), so any compute
    /// process on its GPUs is the session's (a runtime's engine and tensor-parallel workers
    /// are other PIDs); on a shared host only the session's own processes count.
    pub async fn stop(&mut self, whole_host: bool) -> Vec<Check> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        self.tunnel = None;
        self.others.clear();
        let session = match self.session().await {
            Ok(s) => s,
            Err(e) => {
                return vec![Check::new(
                    "host_reachable",
                    false,
                    format!("cannot reach the host to stop the agent: {e}"),
                )]
            }
        };
        // A link that is down but not yet declared dead would make every check wait: ask first.
        if let Err(e) = session.exec("true", PROBE).await {
            return vec![Check::new(
                "host_reachable",
                false,
                format!(
                    "the host does not answer: {e}; the agent's own deadline is the only stop left"
                ),
            )];
        }
        let mut checks = vec![Check::new(
            "host_reachable",
            true,
            format!("{} (host key {})", self.target.addr(), self.fingerprint),
        )];
        let pid = self.pid;
        // The PID is signalled only while it is still this session's agent (started in the
        // session's folder, `serve` in its command line): a retry days later must not kill
        // whatever process reused the number.
        let ours = |action: &str| {
            format!(
                "if [ \"$(readlink /proc/{pid}/cwd 2>/dev/null)\" = \"$(cd {} 2>/dev/null && pwd -P)\" ] && grep -qaF serve /proc/{pid}/cmdline 2>/dev/null; then {action}; echo ours; else echo gone; fi",
                sh_quote(&self.dir)
            )
        };
        let is_ours = |e: &ssh::Exec| e.stdout.trim() == "ours";
        let mut gone = match session
            .exec(&ours(&format!("kill -TERM {pid}")), EXEC)
            .await
        {
            Ok(e) => !is_ours(&e),
            Err(_) => false,
        };
        let start = std::time::Instant::now();
        while !gone && start.elapsed() < TERM_GRACE {
            match session.exec(&ours("true"), EXEC).await {
                Ok(e) if !is_ours(&e) => gone = true,
                Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(_) => break,
            }
        }
        if !gone {
            let _ = session
                .exec(&ours(&format!("kill -KILL {pid}")), EXEC)
                .await;
            checks.push(Check::new(
                "sigkill",
                true,
                format!("the agent ignored SIGTERM for {TERM_GRACE:?}; sent SIGKILL"),
            ));
            gone = session
                .exec(&format!("sleep 0.2; {}", ours("true")), EXEC)
                .await
                .is_ok_and(|e| !is_ours(&e));
        }
        checks.push(Check::new(
            "process_exited",
            gone,
            if gone {
                format!("pid {pid} is gone on the host (no process of that number runs this session's agent)")
            } else {
                format!("pid {pid} still runs on the host")
            },
        ));
        let port = self.port;
        let probe = format!("if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo open; else echo closed; fi");
        let closed = session
            .exec(&format!("bash -c {}", sh_quote(&probe)), EXEC)
            .await
            .map(|e| e.stdout.trim() == "closed");
        checks.push(match closed {
            Ok(true) => Check::new(
                "port_closed",
                true,
                format!("127.0.0.1:{port} on the host: connection refused"),
            ),
            Ok(false) => Check::new(
                "port_closed",
                false,
                format!("127.0.0.1:{port} on the host still accepts connections"),
            ),
            Err(e) => Check::new("port_closed", false, format!("could not check: {e}")),
        });
        let (group_check, group_pids) = self.stop_server_group(&session).await;
        checks.extend(group_check);
        let mut pids = self
            .read_final_record()
            .await
            .map(|r| r.pids)
            .unwrap_or_default();
        pids.push(pid);
        pids.extend(group_pids);
        checks.push(self.gpu_released(&session, &pids, whole_host).await);
        checks
    }

    /// SIGKILL to what is left of the supervised server's process group on the host (the
    /// agent was killed before it could stop it). Returns the check, when there was a
    /// server, and the PIDs that were in the group.
    async fn stop_server_group(&self, session: &Session) -> (Option<Check>, Vec<u32>) {
        let file = format!("{}/evidence/{}", self.dir, evidence_files::SERVER_PGID);
        let script = format!(
            "pg=$(cat {} 2>/dev/null) || exit 0; case \"$pg\" in ''|*[!0-9]*|0|1) exit 0;; esac; echo \"group $pg\"; for p in $(pgrep -g \"$pg\"); do printf 'pid %s %s\\n' \"$p\" \"$(tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null)\"; done; kill -KILL -- -\"$pg\" 2>/dev/null; sleep 0.5; if pgrep -g \"$pg\" >/dev/null; then echo left; fi",
            sh_quote(&file)
        );
        let out = match session.exec(&script, EXEC).await {
            Ok(o) => o.stdout,
            Err(e) => {
                let msg = format!("could not stop the server's process group: {e}");
                return (Some(Check::new("server_stopped", false, msg)), Vec::new());
            }
        };
        let Some(group) = out.lines().find_map(|l| l.strip_prefix("group ")) else {
            return (None, Vec::new());
        };
        let members: Vec<&str> = out.lines().filter(|l| l.starts_with("pid ")).collect();
        let pids = members
            .iter()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect();
        let left = out.lines().any(|l| l == "left");
        let msg = if members.is_empty() {
            format!("the server's process group {group} has no process left")
        } else {
            format!(
                "SIGKILL to the server's process group {group}, which the agent left behind: {}{}",
                members.join("; "),
                if left { "; some still run" } else { "" }
            )
        };
        (Some(Check::new("server_stopped", !left, msg)), pids)
    }

    /// The plan's `stop_command` (on_stop = "command"), run on the host; its answer is recorded.
    /// A command that powers the host off may cut the connection: that is not a failure.
    pub async fn run_stop_command(&self, argv: &[String]) -> Check {
        let cmd = argv
            .iter()
            .map(|a| sh_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        match self.session().await {
            Err(e) => Check::new(
                "stop_command",
                false,
                format!("cannot reach the host to run `{}`: {e}", argv.join(" ")),
            ),
            Ok(s) => match s.exec(&cmd, EXEC).await {
                Ok(out) if out.ok() => Check::new(
                    "stop_command",
                    true,
                    format!("`{}` exited 0", argv.join(" ")),
                ),
                Ok(out) if out.status.is_none() => Check::new(
                    "stop_command",
                    true,
                    format!(
                        "`{}` ran; the connection closed (host going down)",
                        argv.join(" ")
                    ),
                ),
                Ok(out) => Check::new(
                    "stop_command",
                    false,
                    format!(
                        "`{}` exited {:?}: {}",
                        argv.join(" "),
                        out.status,
                        out.stderr.trim()
                    ),
                ),
                // A broken connection proves nothing by itself: with shutdown_proof =
                // "host_unreachable" the probe that follows decides.
                Err(e) => Check::new(
                    "stop_command",
                    false,
                    format!(
                        "`{}`: the connection ended before it answered ({e})",
                        argv.join(" ")
                    ),
                ),
            },
        }
    }

    /// Pull the agent's evidence and the plan's extra files into `dest`, each capped.
    /// Returns (name, status): "present", "missing", or "cut at N bytes".
    pub async fn pull(
        &self,
        dest: &Path,
        extra: &[String],
    ) -> anyhow::Result<Vec<(String, String)>> {
        let session = self.session().await?;
        let sftp = session.sftp().await?;
        let mut wanted: Vec<(String, String)> = [
            evidence_files::ENVIRONMENT_REPORT,
            evidence_files::REQUESTS,
            evidence_files::GPU_METRICS,
            evidence_files::FINAL_RECORD,
            "final_record-oom-attempt.json",
        ]
        .iter()
        .map(|n| (format!("{}/evidence/{n}", self.dir), n.to_string()))
        .collect();
        wanted.push((
            format!("{}/agent.log", self.dir),
            evidence_files::AGENT_LOG.to_string(),
        ));
        // Only sessions with a [setup] have it: not being there is not news.
        let optional = [evidence_files::SETUP_LOG];
        wanted.push((
            format!("{}/evidence/{}", self.dir, evidence_files::SETUP_LOG),
            evidence_files::SETUP_LOG.to_string(),
        ));
        for e in extra {
            let name = Path::new(e)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| e.clone());
            if dest.join(&name).exists() || wanted.iter().any(|(_, n)| n == &name) {
                continue;
            }
            let remote = if e.starts_with('/') {
                e.clone()
            } else {
                format!("{}/evidence/{e}", self.dir)
            };
            wanted.push((remote, name));
        }
        let mut out = Vec::new();
        for (remote, name) in wanted {
            let status = match session
                .download(&sftp, &remote, &dest.join(&name), COPY_CAP)
                .await?
            {
                Download::Missing => "missing".to_string(),
                Download::Refused(what) => format!("{REFUSED}: {what}"),
                Download::Copied { cut: false, .. } => "present".to_string(),
                Download::Copied { bytes, cut: true } => format!("cut at {bytes} bytes"),
            };
            if status == "missing" && optional.contains(&name.as_str()) {
                continue;
            }
            out.push((name, status));
        }
        Ok(out)
    }

    /// Remove the session's token from the host (the binary stays, for the next session).
    pub async fn cleanup(&self) {
        if let Ok(s) = self.session().await {
            let _ = s
                .exec(&format!("rm -f {}/token", sh_quote(&self.dir)), EXEC)
                .await;
        }
    }

    pub fn tunnel_port(&self) -> Option<u16> {
        self.tunnel.as_ref().map(|t| t.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_versions() {
        assert_eq!(
            glibc_needed(b"xx GLIBC_2.17\0GLIBC_2.34\0GLIBC_2.2.5\0"),
            Some((2, 34))
        );
        assert_eq!(glibc_needed(b"no versions"), None);
        assert_eq!(parse_glibc("glibc 2.31"), Some((2, 31)));
    }
}
