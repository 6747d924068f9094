//! Serving with a third-party OpenAI-compatible server (vLLM, SGLang, or the plan's own
//! command): started in its own process group on an inner 127.0.0.1 port, watched for
//! out-of-memory failures, and stopped at the deadline. The agent's API stays in front of
//! it, so the token check and `requests.jsonl` are the same as with candle.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use gpuctl_protocol::{ModelConfig, Runtime};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long the server gets after SIGTERM before SIGKILL (the controller waits longer).
const TERM_GRACE: Duration = Duration::from_secs(gpuctl_protocol::SERVER_TERM_SECS);

/// Output lines that mean the runtime ran out of memory (PyTorch, vLLM, SGLang, llama.cpp).
const OOM_PATTERNS: &[&str] = &[
    "CUDA out of memory",
    "OutOfMemoryError",
    "out of memory",
    "cudaErrorMemoryAllocation",
    "CUDA_ERROR_OUT_OF_MEMORY",
    "No available memory for the cache blocks",
    "Not enough memory",
    "insufficient memory",
    "std::bad_alloc",
    "Cannot allocate memory",
    "failed to allocate",
];

pub fn is_oom_line(line: &str) -> bool {
    let lower = line.to_lowercase();
    OOM_PATTERNS
        .iter()
        .any(|p| lower.contains(&p.to_lowercase()))
}

/// The exact argv for a runtime. The plan's args come after gpuctl's own (for `command`,
/// after the command), so `fallback.if_oom` can change them for every runtime; `plan check`
/// refuses `--host` and `--port` among them. SGLang takes the inner API key on its command
/// line (vLLM reads it from `VLLM_API_KEY`, kept out of argv).
pub fn server_argv(
    model: &ModelConfig,
    port: u16,
    gpus: u32,
    api_key: &str,
) -> anyhow::Result<Vec<String>> {
    let port_s = port.to_string();
    // A file fetched on the host (`model.url`) is served from where it was put.
    let model_ref = match (&model.fetch, &model.path) {
        (Some(_), Some(p)) => p.clone(),
        _ => model.id.clone(),
    };
    let mut argv: Vec<String> = match model.runtime {
        Runtime::Vllm => [
            "vllm",
            "serve",
            &model_ref,
            "--host",
            "127.0.0.1",
            "--port",
            &port_s,
        ]
        .map(String::from)
        .to_vec(),
        Runtime::Sglang => [
            "python3",
            "-m",
            "sglang.launch_server",
            "--model-path",
            &model_ref,
            "--host",
            "127.0.0.1",
            "--port",
            &port_s,
        ]
        .map(String::from)
        .to_vec(),
        Runtime::Command => {
            if model.command.is_empty() {
                bail!("runtime = \"command\" needs a command");
            }
            model
                .command
                .iter()
                .map(|a| {
                    a.replace("{port}", &port_s)
                        .replace("{host}", "127.0.0.1")
                        .replace("{model}", &model_ref)
                })
                .collect()
        }
        Runtime::Candle => bail!("candle is served in-process, not supervised"),
    };
    // Several GPUs reach the runtime as tensor parallelism, unless the plan's args say otherwise.
    let tp_flags = ["--tensor-parallel-size", "-tp", "--tp", "--tp-size"];
    let has_tp = model.args.iter().any(|a| {
        tp_flags
            .iter()
            .any(|f| a == f || a.starts_with(&format!("{f}=")))
    });
    if gpus > 1 && !has_tp {
        let flag = if model.runtime == Runtime::Vllm {
            "--tensor-parallel-size"
        } else {
            "--tp-size"
        };
        argv.extend([flag.to_string(), gpus.to_string()]);
    }
    if model.runtime == Runtime::Sglang {
        argv.extend(["--api-key".to_string(), api_key.to_string()]);
    }
    argv.extend(model.args.iter().cloned());
    Ok(argv)
}

/// A fresh key for the server's own port: vLLM and SGLang then refuse any request that does
/// not come through the agent, even from another process on 127.0.0.1.
fn inner_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// An exit status in words: "exited with status 1", "was killed by signal 11 (SIGSEGV)".
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(n) => {
            let name = Signal::try_from(n)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| "unknown signal".into());
            let core = if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            };
            format!("was killed by signal {n} ({name}{core})")
        }
        None => format!("ended: {status}"),
    }
}

/// How long a listener of another process may hold the inner port before the start fails.
const FOREIGN_LISTENER: Duration = Duration::from_secs(30);

/// Who listens on 127.0.0.1:port.
enum Listener {
    None,
    Ours,
    Foreign,
}

/// The inode of the socket listening on 127.0.0.1:`port` (/proc/net/tcp, state 0A).
fn listening_inode(port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(1) == Some(&local.as_str()) && cols.get(3) == Some(&"0A"))
            .then(|| cols.get(9).map(|i| i.to_string()))
            .flatten()
    })
}

/// Whether a process of the group `pgid` holds the socket `inode`.
fn group_holds(pgid: u32, inode: &str) -> bool {
    let wanted = format!("socket:[{inode}]");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|st| {
                    let rest = &st[st.rfind(')')? + 1..];
                    rest.split_whitespace().nth(2)?.parse::<u32>().ok()
                })
                == Some(pgid)
        })
        .any(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|fds| {
                    fds.filter_map(|f| std::fs::read_link(f.ok()?.path()).ok())
                        .any(|l| l.to_string_lossy() == wanted)
                })
                .unwrap_or(false)
        })
}

fn listener_owner(port: u16, pgid: u32) -> Listener {
    match listening_inode(port) {
        None => Listener::None,
        Some(inode) if group_holds(pgid, &inode) => Listener::Ours,
        Some(_) => Listener::Foreign,
    }
}

pub struct Server {
    child: Mutex<Child>,
    pub pid: u32,
    /// The bearer key the server's own port wants (vLLM, SGLang; harmless to others).
    pub key: String,
    pub port: u16,
    pub argv: Vec<String>,
    pub oom: Arc<AtomicBool>,
    last_lines: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(model: &ModelConfig, gpus: u32) -> anyhow::Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let key = inner_key().context("making the server's API key")?;
        let argv = server_argv(model, port, gpus, &key)?;
        tracing::info!("starting {}", argv.join(" ").replace(&key, "<inner key>"));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            // Code the plan names gets no secret of the agent's environment.
            .env_clear()
            .envs(gpuctl_protocol::child_env::filtered());
        if model.runtime == Runtime::Vllm {
            cmd.env("VLLM_API_KEY", &key);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| {
                format!("cannot start `{}` (is it installed on this host?)", argv[0])
            })?;
        let pid = child.id();
        let oom = Arc::new(AtomicBool::new(false));
        let last_lines = Arc::new(Mutex::new(Vec::new()));
        for (name, pipe) in [
            (
                "stdout",
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            ),
            (
                "stderr",
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            ),
        ] {
            let Some(pipe) = pipe else { continue };
            let (oom, last, key) = (oom.clone(), last_lines.clone(), key.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    // Runtimes print their arguments at start-up (SGLang's server_args): the
                    // inner key never reaches agent.log or a failure message.
                    let line = line.replace(&key, "<inner key>");
                    if is_oom_line(&line) {
                        oom.store(true, Ordering::SeqCst);
                    }
                    tracing::info!("[server {name}] {line}");
                    if let Ok(mut l) = last.lock() {
                        l.push(line);
                        let excess = l.len().saturating_sub(20);
                        l.drain(..excess);
                    }
                }
            });
        }
        Ok(Server {
            child: Mutex::new(child),
            pid,
            key,
            port,
            argv,
            oom,
            last_lines,
        })
    }

    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().ok()?.try_wait().ok().flatten()
    }

    /// Why the server is gone, when it is: its exit status or signal and the last lines of
    /// its output. What a user debugging a crashed vLLM needs instead of a bare 502.
    pub fn death_report(&self) -> Option<String> {
        let status = self.exited()?;
        let what = if self.oom.load(Ordering::SeqCst) {
            format!("ran out of memory and {}", describe_exit(status))
        } else {
            describe_exit(status)
        };
        Some(format!(
            "the model server (pid {}, `{}`) {what}; its output ends with:\n{}",
            self.pid,
            self.argv[0],
            self.tail()
        ))
    }

    pub fn tail(&self) -> String {
        self.last_lines
            .lock()
            .map(|l| l.join("\n"))
            .unwrap_or_default()
    }

    /// Wait until `/v1/models` answers, or fail when the server exits.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let url = format!("http://127.0.0.1:{}/v1/models", self.port);
        let mut foreign_since: Option<std::time::Instant> = None;
        loop {
            if let Some(status) = self.exited() {
                // Give the output readers a moment to see the last lines.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let what = if self.oom.load(Ordering::SeqCst) {
                    "ran out of memory"
                } else {
                    "exited"
                };
                bail!(
                    "the server {what} before it was ready: it {}; its output ends with:\n{}",
                    describe_exit(status),
                    self.tail()
                );
            }
            // The port was free when it was picked; another process could have taken it
            // since. Only a listener of the server's own process group is asked (and trusted).
            match listener_owner(self.port, self.pid) {
                Listener::Ours => {
                    foreign_since = None;
                    if let Ok(resp) = client.get(&url).bearer_auth(&self.key).send().await {
                        if resp.status().is_success() {
                            return Ok(());
                        }
                    }
                }
                Listener::Foreign => {
                    let since = *foreign_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > FOREIGN_LISTENER {
                        bail!(
                            "127.0.0.1:{} is held by a process outside the server's process group; the server never got its port (start the session again: a new port is picked)",
                            self.port
                        );
                    }
                }
                Listener::None => foreign_since = None,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGTERM to the server's process group, SIGKILL after a grace; returns what happened.
    pub fn stop(&self) -> String {
        let pgid = Pid::from_raw(self.pid as i32);
        if let Some(status) = self.exited() {
            let _ = killpg(pgid, Signal::SIGKILL);
            return format!(
                "server pid {} had already exited: it {}",
                self.pid,
                describe_exit(status)
            );
        }
        let _ = killpg(pgid, Signal::SIGTERM);
        let start = std::time::Instant::now();
        while start.elapsed() < TERM_GRACE {
            if let Some(status) = self.exited() {
                let _ = killpg(pgid, Signal::SIGKILL);
                return format!(
                    "server pid {} ({}) stopped: it {}",
                    self.pid,
                    self.argv[0],
                    describe_exit(status)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let status = self.child.lock().ok().and_then(|mut c| c.wait().ok());
        format!(
            "server pid {} ignored SIGTERM; killed: {status:?}",
            self.pid
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(runtime: Runtime, args: &[&str], command: &[&str]) -> ModelConfig {
        ModelConfig {
            id: "Qwen/Qwen2.5-0.5B-Instruct".into(),
            runtime,
            path: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            command: command.iter().map(|s| s.to_string()).collect(),
            fetch: None,
        }
    }

    fn argv(
        runtime: Runtime,
        args: &[&str],
        command: &[&str],
        port: u16,
        gpus: u32,
    ) -> Vec<String> {
        server_argv(&model(runtime, args, command), port, gpus, "k").expect("argv")
    }

    #[test]
    fn vllm_argv() {
        let base = [
            "vllm",
            "serve",
            "Qwen/Qwen2.5-0.5B-Instruct",
            "--host",
            "127.0.0.1",
            "--port",
            "9001",
        ];
        let a = argv(Runtime::Vllm, &["--max-model-len", "4096"], &[], 9001, 1);
        assert_eq!(a, [&base[..], &["--max-model-len", "4096"]].concat());
        // Several GPUs become tensor parallelism...
        assert_eq!(
            argv(Runtime::Vllm, &[], &[], 9001, 2),
            [&base[..], &["--tensor-parallel-size", "2"]].concat()
        );
        // ...unless the plan's args already say how.
        let own = argv(
            Runtime::Vllm,
            &["--tensor-parallel-size", "1"],
            &[],
            9001,
            2,
        );
        assert_eq!(own, [&base[..], &["--tensor-parallel-size", "1"]].concat());
    }

    #[test]
    fn sglang_argv() {
        let base = [
            "python3",
            "-m",
            "sglang.launch_server",
            "--model-path",
            "Qwen/Qwen2.5-0.5B-Instruct",
            "--host",
            "127.0.0.1",
            "--port",
            "9002",
        ];
        let a = argv(
            Runtime::Sglang,
            &["--mem-fraction-static", "0.8"],
            &[],
            9002,
            1,
        );
        assert_eq!(
            a,
            [
                &base[..],
                &["--api-key", "k", "--mem-fraction-static", "0.8"]
            ]
            .concat()
        );
        assert_eq!(
            argv(Runtime::Sglang, &[], &[], 9002, 4),
            [&base[..], &["--tp-size", "4", "--api-key", "k"]].concat()
        );
    }

    #[test]
    fn command_placeholders() {
        let cmd = [
            "python3",
            "-m",
            "llama_cpp.server",
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--model_alias",
            "{model}",
        ];
        let a = argv(Runtime::Command, &["--n_ctx", "2048"], &cmd, 9003, 1);
        let want = [
            "python3",
            "-m",
            "llama_cpp.server",
            "--host",
            "127.0.0.1",
            "--port",
            "9003",
            "--model_alias",
            "Qwen/Qwen2.5-0.5B-Instruct",
            "--n_ctx",
            "2048",
        ];
        assert_eq!(a, want);
    }

    #[test]
    fn the_inner_ports_listener_is_told_apart_by_process_group() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let inode = listening_inode(port).expect("listed in /proc/net/tcp");
        let me = nix::unistd::getpgrp().as_raw() as u32;
        assert!(group_holds(me, &inode), "this process group holds it");
        assert!(matches!(listener_owner(port, me), Listener::Ours));
        // Any other group (pid 1's, here) does not.
        assert!(matches!(listener_owner(port, 1), Listener::Foreign));
        drop(l);
        assert!(matches!(listener_owner(port, me), Listener::None));
    }

    #[test]
    fn exits_in_words() {
        use std::os::unix::process::ExitStatusExt;
        let st = std::process::ExitStatus::from_raw;
        assert_eq!(describe_exit(st(1 << 8)), "exited with status 1");
        assert_eq!(describe_exit(st(11)), "was killed by signal 11 (SIGSEGV)");
        assert_eq!(
            describe_exit(st(11 | 0x80)),
            "was killed by signal 11 (SIGSEGV, core dumped)"
        );
    }

    #[test]
    fn oom_lines() {
        assert!(is_oom_line(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
        ));
        assert!(is_oom_line("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`"));
        assert!(!is_oom_line(
            "INFO: Uvicorn running on http://127.0.0.1:8000"
        ));
    }
}
