//! A hermetic context per test: its own temp HOME, XDG dirs and GPUCTL_HOME, and the
//! real `gpuctl` binary run as a user would run it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod emulator;
pub mod postgres;
pub mod sshd;

pub struct Ctx {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Ctx {
    pub fn new() -> Ctx {
        Ctx {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("gpuctl-home")
    }

    /// Point this context's gpuctl at a session store by its config file
    /// (`$XDG_CONFIG_HOME/gpuctl/config.toml`, `database_url`), as a team member would.
    pub fn use_database(&self, url: &str) {
        self.write(
            "xdg-config/gpuctl/config.toml",
            format!("database_url = \"{url}\"\n"),
        );
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuctl"));
        cmd.current_dir(repo_root())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("XDG_DATA_HOME", self.dir.path().join("xdg-data"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg-config"))
            .env("GPUCTL_HOME", self.home())
            .env("NO_COLOR", "1");
        cmd
    }

    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Run::from(self.command().args(args).output().expect("run gpuctl"))
    }

    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, contents).expect("write");
        p
    }
}

pub fn assert_no_panic(run: &Run) {
    assert!(
        !run.stderr.contains("panicked"),
        "gpuctl panicked:\n{}",
        run.stderr
    );
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// The agent binary built beside gpuctl (scripts/test.sh builds the workspace first).
pub fn agent_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_gpuctl")).with_file_name("gpuctl-agent");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests (scripts/test.sh does)",
        p.display()
    );
    p
}

/// The default model, fetched by scripts/fetch-model.sh (a missing model fails the test, it is not skipped).
pub fn model_path() -> PathBuf {
    let p = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-model.sh",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn port_refuses(port: u16) -> bool {
    matches!(std::net::TcpStream::connect(("127.0.0.1", port)), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// A local_cpu plan on the bundled model, on `port`, with its evidence under the context's dir.
pub fn local_plan(ctx: &Ctx, port: u16, extra_stop: &str) -> PathBuf {
    let text = format!(
        r#"schema = 1
[plan]
name = "test-local"
goal = "prove the loop in a test"
route = "local_cpu"
[model]
id = "HuggingFaceTB/SmolLM2-135M-Instruct"
runtime = "candle"
path = "{model}"
[instance]
provider = "local"
[stop]
max_duration = "10m"
grace = "5s"
{extra_stop}
[fallback]
route = "none"
[access]
ports = [{{ local = {port}, remote = {port} }}]
[evidence]
copy_back = ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl"]
shutdown_proof = "process_exited"
dir = "{evidence}"
[[eval.case]]
id = "digits"
prompt = "What is 2 + 2?"
expect_regex = "\\d"
max_tokens = 8
"#,
        model = model_path().display(),
        evidence = ctx.path("bundles").display(),
    );
    ctx.write("plan.toml", text)
}

/// Start gpuctl-agent directly (no controller) with a config for `port` and `deadline`.
pub struct AgentProc {
    pub child: std::process::Child,
    pub port: u16,
    pub token: String,
    pub evidence: PathBuf,
}

impl AgentProc {
    pub fn start(ctx: &Ctx, port: u16, deadline: chrono::DateTime<chrono::Utc>) -> AgentProc {
        let mut agent = AgentProc::spawn(ctx, port, deadline);
        agent.wait_ready();
        agent
    }

    /// Start without waiting for it to serve.
    pub fn spawn(ctx: &Ctx, port: u16, deadline: chrono::DateTime<chrono::Utc>) -> AgentProc {
        let token = "test-token-0123456789abcdef0123456789".to_string();
        let token_file = ctx.write("agent-token", &token);
        let evidence = ctx.path("agent-evidence");
        let config = serde_json::json!({
            "protocol": gpuctl_protocol::PROTOCOL_VERSION,
            "session_id": "test-session",
            "deadline": deadline,
            "grace_secs": 1,
            "listen_port": port,
            "token_file": token_file,
            "evidence_dir": evidence,
            "model": { "id": "smollm2", "runtime": "candle", "path": model_path() },
        });
        let config_path = ctx.write("agent.json", config.to_string());
        let log = std::fs::File::create(ctx.path("agent.log")).expect("log");
        let child = Command::new(agent_bin())
            .args(["serve", "--config"])
            .arg(&config_path)
            .stderr(log)
            .spawn()
            .expect("start agent");
        AgentProc {
            child,
            port,
            token,
            evidence,
        }
    }

    fn wait_ready(&mut self) {
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the agent exited before it was ready: {status}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the agent did not listen within 60 s");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `result` event of `gpuctl up --json`.
pub fn result_event(stdout: &str) -> serde_json::Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "result")
        .unwrap_or_else(|| panic!("no result event in:\n{stdout}"))
}

/// The first session `gpuctl ls` shows as serving (polled; panics after `limit`).
pub fn wait_serving(ctx: &Ctx, limit: std::time::Duration) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let ls = ctx.run(["ls", "--json"]).json();
        if let Some(s) = ls
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["state"] == "serving")
        {
            return s.clone();
        }
        assert!(start.elapsed() < limit, "not serving: {ls}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `gpuctl up --json PLAN` in the background (output dropped), returned once it serves:
/// the process and the session as `ls` shows it.
pub fn up_serving(ctx: &Ctx, plan: &Path) -> (std::process::Child, serde_json::Value) {
    let up = ctx
        .command()
        .args(["up", "--json"])
        .arg(plan)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("up");
    (up, wait_serving(ctx, std::time::Duration::from_secs(60)))
}

/// Run `cmd` (a `gpuctl` command with its environment, to which `up --json PLAN` is
/// added) in the background, returned once it serves: (process, session id). Its output
/// keeps being drained so it never blocks on a full pipe.
pub fn up_until_serving(
    mut cmd: std::process::Command,
    plan: &Path,
) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = cmd
        .args(["up", "--json"])
        .arg(plan)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn up");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut id = None;
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        seen.push(line.clone());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["event"] == "session" {
            id = v["session_id"].as_str().map(String::from);
        }
        if v["event"] == "step" && v["step"] == "serve" {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let id = id.unwrap_or_else(|| panic!("no session event before serving:\n{}", seen.join("\n")));
    (child, id)
}
