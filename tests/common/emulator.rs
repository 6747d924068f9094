//! The cloud emulator (providers/emulator, a test tool) started for one test, with its
//! instances pointing at the test's real sshd. Steered over plain HTTP on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::sshd::Sshd;
use super::{free_port, model_path, Ctx, Run};

pub struct Emulator {
    child: Child,
    pub url: String,
    pub key: String,
}

pub fn emulator_bin() -> PathBuf {
    let p =
        std::path::Path::new(env!("CARGO_BIN_EXE_gpuctl")).with_file_name("gpuctl-cloud-emulator");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests (scripts/test.sh does)",
        p.display()
    );
    p
}

impl Emulator {
    pub fn start(ssh_port: u16, extra: &[&str]) -> Emulator {
        let mut child = Command::new(emulator_bin())
            .args([
                "--ssh-port",
                &ssh_port.to_string(),
                "--boot-ms",
                "800",
                "--terminate-ms",
                "500",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the emulator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("address");
        Emulator {
            child,
            url: line.trim().to_string(),
            key: "emulator-key".into(),
        }
    }

    /// The environment a gpuctl command needs to use the emulated clouds.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("GPUCTL_LAMBDA_API", format!("{}/lambda/api/v1", self.url))
            .env("GPUCTL_RUNPOD_API", format!("{}/runpod/graphql", self.url))
            .env("GPUCTL_VAST_API", format!("{}/vast/api/v0", self.url))
            .env("LAMBDA_API_KEY", &self.key)
            .env("RUNPOD_API_KEY", &self.key)
            .env("VAST_API_KEY", &self.key);
    }

    /// One HTTP/1.1 request to the emulator; the JSON answer.
    pub fn call(&self, method: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let addr = self.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the emulator");
        let body = body.to_string();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        let json = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null)
    }

    /// One request to a provider API of the emulator with the key, as a client would send
    /// it: the status and the raw body (429s answer plain text).
    pub fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let addr = self.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the emulator");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.key,
            body.len()
        )
        .expect("write");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        (code, body)
    }

    /// The contract violations the emulator saw, and how many requests it throttled.
    pub fn violations(&self) -> Vec<String> {
        self.call("GET", "/_emulator/violations", &serde_json::Value::Null)["violations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    }

    pub fn fault(&self, provider: &str, op: &str, mode: &str, times: u32) {
        self.call(
            "POST",
            "/_emulator/faults",
            &serde_json::json!({ "provider": provider, "op": op, "mode": mode, "times": times }),
        );
    }

    pub fn instances(&self) -> Vec<serde_json::Value> {
        self.call("GET", "/_emulator/instances", &serde_json::Value::Null)["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cloud plan for the tests: the bundled model over SSH to the test's sshd.
pub struct Cloud<'a> {
    pub provider: &'a str,
    pub instance_type: &'a str,
    pub region: Option<&'a str>,
    pub fallbacks: &'a [&'a str],
    pub hourly: f64,
    pub stop: &'a str,
    /// plan.name (default: cloud-<provider>)
    pub name: Option<&'a str>,
    /// stop.max_duration (default 10m)
    pub max_duration: &'a str,
}

pub fn plan(ctx: &Ctx, sshd: &Sshd, c: &Cloud, port: u16) -> std::path::PathBuf {
    let region = c
        .region
        .map(|r| format!("region = \"{r}\""))
        .unwrap_or_default();
    let fallbacks = c
        .fallbacks
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"schema = 1
[plan]
name = "{name}"
owner = "research"
goal = "prove the {provider} route against the emulator"
route = "rented_gpu"
why = "I need a rented instance reached by SSH within a small budget"
can_prove = "launch, deployment, evidence, terminate and its read-back"
cannot_prove = "GPU serving (the emulated instance is this machine)"
[model]
id = "smollm2"
runtime = "candle"
path = "{model}"
[instance]
provider = "{provider}"
instance_type = "{itype}"
{region}
user = "{user}"
gpus = 0
[budget]
hourly_usd = {hourly}
max_total_usd = 2.00
[stop]
max_duration = "{max_duration}"
grace = "5s"
{stop}
[fallback]
route = "local_cpu"
if_no_capacity = [{fallbacks}]
[access]
method = "ssh_key"
identity_file = "{key}"
ports = [{{ local = {port}, remote = {remote} }}]
[evidence]
copy_back = ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl"]
shutdown_proof = "provider_terminated"
dir = "{evidence}"
[[eval.case]]
id = "digits"
prompt = "What is 2 + 2?"
expect_regex = "\\d"
max_tokens = 8
"#,
        provider = c.provider,
        name = c
            .name
            .map(String::from)
            .unwrap_or_else(|| format!("cloud-{}", c.provider)),
        itype = c.instance_type,
        max_duration = c.max_duration,
        user = sshd.user,
        hourly = c.hourly,
        stop = c.stop,
        model = model_path().display(),
        key = sshd.client_key.display(),
        remote = free_port(),
        evidence = ctx.path("bundles").display(),
    );
    ctx.write(&format!("{}-{port}.toml", c.provider), text)
}

pub fn gpuctl(ctx: &Ctx, emu: &Emulator, args: &[&str]) -> Run {
    let mut cmd = ctx.command();
    emu.env(&mut cmd);
    cmd.env("GPUCTL_STOP_CONFIRM_WINDOW", "6s");
    Run::from(cmd.args(up_args(args)).output().expect("gpuctl"))
}

/// No daemon watches these sessions from another host: `up` of a Lambda plan needs
/// `--laptop-only` (the flag changes nothing for the other providers). The refusal
/// without it is tested on its own.
pub fn up_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    if all.first() == Some(&"up") {
        all.insert(1, "--laptop-only");
    }
    all
}

pub fn after_eval<'a>(
    provider: &'a str,
    instance_type: &'a str,
    region: Option<&'a str>,
) -> Cloud<'a> {
    Cloud {
        provider,
        instance_type,
        region,
        fallbacks: &[],
        hourly: 1.5,
        stop: "after_eval = true",
        name: None,
        max_duration: "10m",
    }
}

/// The requests an emulator wrote to its `--request-log` (violations left out).
pub fn request_log(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("method").is_some())
        .collect()
}
