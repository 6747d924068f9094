//! A day on a session: `extend` moves the hard stop (the agent keeps the new one with
//! nobody else watching; past the budget it is refused), `stop.idle` ends a session nobody
//! uses, and the shell completions and man page are there. Real local sessions on the
//! bundled model, and a cloud one on the emulator reached over the test's sshd.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::emulator::{after_eval, plan, Cloud, Emulator};
use common::sshd::Sshd;
use common::{free_port, local_plan, port_refuses, Ctx};

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `up --json` in the background (with the emulator's environment if any), returned once
/// it serves: (process, id).
fn up_until_serving(ctx: &Ctx, plan: &std::path::Path, emu: Option<&Emulator>) -> (Guard, String) {
    let mut cmd = ctx.command();
    if let Some(e) = emu {
        e.env(&mut cmd);
        cmd.env("GPUCTL_STOP_CONFIRM_WINDOW", "6s");
    }
    let (child, id) = common::up_until_serving(cmd, plan);
    (Guard(child), id)
}

fn status(ctx: &Ctx, id: &str) -> serde_json::Value {
    ctx.run(["status", id, "--json"]).json()
}

fn wait_for(
    ctx: &Ctx,
    id: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let s = status(ctx, id);
        if pred(&s) {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}:\n{s:#}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn deadline_of(s: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s["session"]["deadline"].as_str().expect("deadline"))
        .expect("time")
        .with_timezone(&Utc)
}

fn bundle_file(s: &serde_json::Value, name: &str) -> String {
    let dir = s["session"]["evidence_dir"].as_str().expect("evidence dir");
    std::fs::read_to_string(std::path::Path::new(dir).join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// How `up --json` to its end went.
struct Ended {
    code: i32,
    status: serde_json::Value,
    stdout: String,
    stderr: String,
}

/// `up --json PLAN` to its end (`flags` before `up`, such as -vv; `env` added), then the
/// session's status.
fn up_to_the_end(ctx: &Ctx, plan: &std::path::Path, flags: &[&str], env: &[(&str, &str)]) -> Ended {
    let out = ctx
        .command()
        .envs(env.iter().copied())
        .args(flags)
        .args(["up", "--json"])
        .arg(plan)
        .output()
        .expect("up");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let id = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "session")
        .and_then(|v| v["session_id"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("no session:\n{stdout}\n{stderr}"));
    Ended {
        code: out.status.code().unwrap_or(-1),
        status: status(ctx, &id),
        stdout,
        stderr,
    }
}

/// The time stamp of the agent log's first line containing `needle`.
fn logged_at(log: &str, needle: &str) -> DateTime<Utc> {
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in the agent log:\n{log}"));
    let stamp = line.split_whitespace().next().unwrap_or_default();
    DateTime::parse_from_rfc3339(stamp)
        .expect("time stamp")
        .with_timezone(&Utc)
}

#[test]
fn extend_moves_the_agents_own_stop_with_nobody_else_watching() {
    let ctx = Ctx::new();
    let port = free_port();
    let at = Utc::now() + chrono::Duration::seconds(30);
    let plan = local_plan(
        &ctx,
        port,
        &format!(
            "hard_stop_time = \"{}\"",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    );
    let (mut up, id) = up_until_serving(&ctx, &plan, None);
    let old = deadline_of(&status(&ctx, &id));
    let out = ctx.run(["extend", &id, "--by", "15s", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let answer = out.json();
    assert_eq!(answer["extended"], true, "{answer}");
    let s = status(&ctx, &id);
    let new = deadline_of(&s);
    assert_eq!(
        new,
        old + chrono::Duration::seconds(15),
        "the database has the new deadline"
    );
    let events: Vec<&str> = s["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "extend")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(events.len(), 1, "one extend event: {events:?}");
    assert!(
        events[0].contains(&old.to_rfc3339()) && events[0].contains(&new.to_rfc3339()),
        "old and new: {events:?}"
    );
    // Shortening is `down`'s job, and says so.
    let back = ctx.run(["extend", &id, "--to", &old.to_rfc3339()]);
    assert_eq!(back.code, 2, "{}", back.stderr);
    assert!(back.stderr.contains("gpuctl down"), "{}", back.stderr);

    // Only the agent is left: it must keep the new deadline, not the old one.
    let _ = up.0.kill();
    let _ = up.0.wait();
    let start = Instant::now();
    while !port_refuses(port) {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the agent kept serving"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        Utc::now() >= new - chrono::Duration::milliseconds(1500),
        "served to the new deadline, not the old one"
    );
    // A daemon confirms the stop and brings the evidence back.
    let log = std::fs::File::create(ctx.path("daemon.log")).expect("log");
    let _daemon = Guard(
        ctx.command()
            .args(["daemon", "--json"])
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("daemon"),
    );
    let s = wait_for(
        &ctx,
        &id,
        Duration::from_secs(90),
        "confirmed by the daemon",
        |s| s["session"]["state"] == "stopped",
    );
    let agent_log = bundle_file(&s, "agent.log");
    assert!(agent_log.contains("deadline extended"), "{agent_log}");
    let stopped = logged_at(&agent_log, "deadline reached");
    let off = (stopped - new).num_milliseconds().abs();
    assert!(
        off <= 1500,
        "the agent stopped {off} ms from the new deadline ({stopped} vs {new})"
    );
    let proof: serde_json::Value =
        serde_json::from_str(&bundle_file(&s, "shutdown_proof.json")).expect("proof");
    assert_eq!(
        proof["agent_final_record"]["reason"], "deadline",
        "{proof:#}"
    );
    assert_eq!(
        proof["agent_final_record"]["deadline"]
            .as_str()
            .map(|t| DateTime::parse_from_rfc3339(t)
                .expect("t")
                .with_timezone(&Utc)),
        Some(new)
    );
    let audit = ctx.run(["audit", "--format", "json"]).json();
    assert_eq!(audit["totals"]["extended"], 1, "{audit:#}");
}

#[test]
fn extend_reaches_a_remote_agent_and_is_refused_past_the_budget() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    let c = Cloud {
        stop: "after_eval = false",
        max_duration: "5m",
        ..after_eval("vast", "RTX_3090", None)
    };
    let p = plan(&ctx, &sshd, &c, free_port());
    let (_up, id) = up_until_serving(&ctx, &p, Some(&emu));
    let old = deadline_of(&status(&ctx, &id));
    // Past budget.max_total_usd ($2.00) at the launch price: refused, nothing moves.
    let far = ctx.run(["extend", &id, "--by", "30days"]);
    assert_eq!(far.code, 2, "{}", far.stderr);
    assert!(
        far.stderr.contains("budget.max_total_usd"),
        "names the budget: {}",
        far.stderr
    );
    assert!(
        far.stderr.contains("the latest the budget allows"),
        "{}",
        far.stderr
    );
    assert_eq!(deadline_of(&status(&ctx, &id)), old);
    // Within it: the agent on the host takes it (over SSH, its host key pinned).
    let ok = ctx.run(["extend", &id, "--by", "1m"]);
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    assert_eq!(
        deadline_of(&status(&ctx, &id)),
        old + chrono::Duration::minutes(1)
    );
    let mut down = ctx.command();
    emu.env(&mut down);
    let down = down
        .env("GPUCTL_STOP_CONFIRM_WINDOW", "6s")
        .args(["down", &id])
        .output()
        .expect("down");
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let s = status(&ctx, &id);
    assert!(bundle_file(&s, "agent.log").contains("deadline extended"));
    let ended = ctx.run(["extend", &id, "--by", "1m"]);
    assert_eq!(ended.code, 2);
    assert!(ended.stderr.contains("has ended"), "{}", ended.stderr);
}

#[test]
fn stop_idle_ends_a_session_nobody_uses_with_reason_idle() {
    let ctx = Ctx::new();
    let port = free_port();
    let plan = local_plan(&ctx, port, "idle = \"6s\"");
    let ended = up_to_the_end(&ctx, &plan, &[], &[]);
    assert_eq!(ended.code, 0, "{}\n{}", ended.stdout, ended.stderr);
    let s = ended.status;
    assert_eq!(s["session"]["state"], "stopped", "{s:#}");
    let reason = s["session"]["stop_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("idle"), "reason idle: {reason}");
    let proof: serde_json::Value =
        serde_json::from_str(&bundle_file(&s, "shutdown_proof.json")).expect("proof");
    assert_eq!(proof["agent_final_record"]["reason"], "idle", "{proof:#}");
    assert!(deadline_of(&s) > Utc::now(), "well before the hard stop");
    // A plan with a zero idle window is refused, naming the field.
    let zero = local_plan(&ctx, free_port(), "idle = \"0s\"");
    let check = ctx.run(
        ["plan", "check"]
            .iter()
            .map(std::ffi::OsStr::new)
            .chain([zero.as_os_str()]),
    );
    assert_eq!(check.code, 2, "{}", check.stdout);
    assert!(format!("{}{}", check.stdout, check.stderr).contains("stop.idle"));
}

#[test]
fn completions_and_the_man_page_cover_the_commands() {
    let ctx = Ctx::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = ctx.run(["completions", shell]);
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(
            out.stdout.contains("extend") && out.stdout.contains("audit"),
            "{shell}"
        );
    }
    let man = ctx.run(["man"]);
    assert_eq!(man.code, 0, "{}", man.stderr);
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH"),
        "roff"
    );
    assert!(man.stdout.contains("extend"));
    let bad = ctx.run(["completions", "tcsh"]);
    assert_eq!(bad.code, 2);
}

/// A webhook receiver on 127.0.0.1: records each JSON body; with `hold`, it reads the
/// request and keeps the connection open without answering until `release` is set.
struct Hook {
    port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    release: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Hook {
    fn start(hold: bool) -> Hook {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, r) = (bodies.clone(), release.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().take(50) {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let Ok(n) = conn.read(&mut chunk) else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if rest.len() >= len {
                            break Some(rest[..len].to_string());
                        }
                    }
                };
                if let Some(body) = body {
                    if let Ok(v) = serde_json::from_str(&body) {
                        b.lock().expect("lock").push(v);
                    }
                }
                if hold {
                    // Bounded: at most a minute per connection.
                    let start = Instant::now();
                    while !r.load(std::sync::atomic::Ordering::SeqCst)
                        && start.elapsed() < Duration::from_secs(60)
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Hook {
            port,
            bodies,
            release,
        }
    }

    /// A URL with a secret in it, as a Slack webhook has.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/services/T000/B000/{SECRET}", self.port)
    }

    fn events(&self) -> Vec<String> {
        self.bodies
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|b| b["event"].as_str().map(String::from))
            .collect()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.release
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

const SECRET: &str = "XyZsecretWEBHOOKtoken123";

fn with_notify(plan: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(plan).expect("plan");
    std::fs::write(
        plan,
        format!("{text}\n[notify]\nwebhook_env = \"GPUCTL_TEST_WEBHOOK\"\n"),
    )
    .expect("write");
    plan.to_path_buf()
}

/// No file gpuctl wrote (bundle, database, run folder) holds the webhook URL.
fn assert_no_secret(ctx: &Ctx) {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(ctx.dir.path(), &mut files);
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "the webhook URL leaked into {}",
            f.display()
        );
    }
}

#[test]
fn alerts_reach_the_webhook_on_the_budget_mark_and_the_stop_and_never_leak_its_url() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let hook = Hook::start(false);
    // $36/h is a cent a second: max_total_usd = $0.20 buys 20 s, the 80 % mark at 16 s.
    let plan = ctx.write(
        "budget.toml",
        format!(
            r#"schema = 1
[plan]
name = "budget-alerts"
goal = "alert at the budget mark and at the stop"
route = "rented_gpu"
why = "I need SSH access to a host I rent, within a small budget"
can_prove = "the alerts"
cannot_prove = "GPU serving"
[model]
id = "smollm2"
runtime = "candle"
path = "{model}"
[instance]
provider = "ssh"
host = "127.0.0.1"
port = {port}
user = "{user}"
host_key = "{fp}"
gpus = 0
hourly_price_usd = 36.0
[budget]
hourly_usd = 40.0
max_total_usd = 0.20
[stop]
max_duration = "10m"
grace = "3s"
[fallback]
route = "local_cpu"
[access]
method = "ssh_key"
identity_file = "{key}"
ports = [{{ local = {local}, remote = {remote} }}]
[evidence]
copy_back = ["environment_report.txt"]
shutdown_proof = "process_exited"
dir = "{evidence}"
"#,
            model = common::model_path().display(),
            port = sshd.port,
            user = sshd.user,
            fp = sshd.host_fingerprint,
            key = sshd.client_key.display(),
            local = free_port(),
            remote = free_port(),
            evidence = ctx.path("bundles").display(),
        ),
    );
    with_notify(&plan);
    let url = hook.url();
    let out = up_to_the_end(&ctx, &plan, &[], &[("GPUCTL_TEST_WEBHOOK", &url)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let events = hook.events();
    assert!(events.iter().any(|e| e == "budget"), "{events:?}");
    assert!(events.iter().any(|e| e == "stop"), "{events:?}");
    let stop = hook
        .bodies
        .lock()
        .expect("lock")
        .iter()
        .find(|b| b["event"] == "stop")
        .cloned()
        .expect("stop");
    assert!(
        stop["text"]
            .as_str()
            .is_some_and(|t| t.contains("budget-alerts")),
        "a Slack-readable text: {stop:#}"
    );
    assert!(
        stop["session_id"].is_string() && stop["at"].is_string(),
        "{stop:#}"
    );
    assert_no_secret(&ctx);
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
}

#[test]
fn an_unconfirmed_stop_is_alerted_and_a_hanging_webhook_does_not_hold_the_stop() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    let hook = Hook::start(true);
    let c = Cloud {
        stop: "after_eval = false",
        max_duration: "5m",
        ..after_eval("vast", "RTX_3090", None)
    };
    let p = with_notify(&plan(&ctx, &sshd, &c, free_port()));
    let mut cmd = ctx.command();
    emu.env(&mut cmd);
    let mut up = cmd
        .env("GPUCTL_STOP_CONFIRM_WINDOW", "4s")
        .env("GPUCTL_TEST_WEBHOOK", hook.url())
        .args(["up", "--json"])
        .arg(&p)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("up");
    let s = common::wait_serving(&ctx, Duration::from_secs(120));
    let id = s["id"].as_str().expect("id").to_string();
    // The terminate is accepted but never completes: the stop stays unconfirmed.
    emu.fault("vast", "terminate", "never_complete", 1);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    // The webhook holds every connection open: the stop is recorded all the same.
    let s = wait_for(
        &ctx,
        &id,
        Duration::from_secs(90),
        "recorded while the webhook hangs",
        |s| s["session"]["state"] == "stop_unconfirmed",
    );
    assert!(
        hook.events().iter().any(|e| e == "stop_unconfirmed"),
        "{:?}",
        hook.events()
    );
    assert_eq!(s["session"]["state"], "stop_unconfirmed");
    hook.release
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = up.wait();
    assert_no_secret(&ctx);
}

#[test]
fn a_webhook_url_written_into_a_plan_is_refused() {
    let ctx = Ctx::new();
    let plan = local_plan(&ctx, free_port(), "");
    let text = std::fs::read_to_string(&plan).expect("plan");
    std::fs::write(
        &plan,
        format!(
            "{text}\n[notify]\nwebhook_env = \"https://hooks.example.com/services/{SECRET}\"\n"
        ),
    )
    .expect("write");
    let check = ctx.run([
        std::ffi::OsStr::new("plan"),
        std::ffi::OsStr::new("check"),
        plan.as_os_str(),
    ]);
    assert_eq!(check.code, 2, "{}", check.stdout);
    let said = format!("{}{}", check.stdout, check.stderr);
    assert!(
        said.contains("notify.webhook_env") && said.contains("is a URL"),
        "{said}"
    );
    // A [notify] without a variable name is refused too.
    std::fs::write(&plan, format!("{text}\n[notify]\n")).expect("write");
    let check = ctx.run([
        std::ffi::OsStr::new("plan"),
        std::ffi::OsStr::new("check"),
        plan.as_os_str(),
    ]);
    assert_eq!(check.code, 2, "{}", check.stdout);
}

/// A wheel of a tiny package, made by hand (no index, no build backend): `dir/*.whl`.
fn build_wheel(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("wheel dir");
    let script = r#"
import sys, zipfile
d = sys.argv[1]
files = {
    "gpuctltestpkg/__init__.py": "VERSION = '1.0'\n",
    "gpuctltestpkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: gpuctltestpkg\nVersion: 1.0\n",
    "gpuctltestpkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: gpuctl-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = "".join(f"{n},,\n" for n in files) + "gpuctltestpkg-1.0.dist-info/RECORD,,\n"
with zipfile.ZipFile(f"{d}/gpuctltestpkg-1.0-py3-none-any.whl", "w") as z:
    for n, t in files.items():
        z.writestr(n, t)
    z.writestr("gpuctltestpkg-1.0.dist-info/RECORD", record)
"#;
    let ok = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .status()
        .expect("python3");
    assert!(ok.success(), "the test wheel");
}

fn host_python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An SSH-route plan (the test's sshd) that stops after its eval, with `setup` as its
/// [setup] section.
fn setup_plan(ctx: &Ctx, sshd: &Sshd, name: &str, setup: &str) -> std::path::PathBuf {
    let plan = common::sshd::ssh_plan(
        ctx,
        sshd,
        name,
        (free_port(), free_port()),
        "max_duration = \"10m\"\ngrace = \"3s\"\nafter_eval = true",
    );
    let text = std::fs::read_to_string(&plan).expect("plan");
    std::fs::write(&plan, format!("{text}\n[setup]\n{setup}\n")).expect("write");
    plan
}

#[test]
fn setup_builds_a_pinned_environment_on_the_host_once_and_a_failing_setup_still_stops() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let wheels = ctx.path("wheels");
    build_wheel(&wheels);
    let setup = format!(
        "python = \"{}\"\npip = [\"--no-index\", \"--find-links\", \"{}\", \"gpuctltestpkg==1.0\"]\ncommands = [\"python -c 'import gpuctltestpkg; print(gpuctltestpkg.VERSION)' > setup-check.txt\"]",
        host_python(),
        wheels.display()
    );
    let check = ctx.run([
        std::ffi::OsStr::new("plan"),
        std::ffi::OsStr::new("check"),
        setup_plan(&ctx, &sshd, "setup-a", &setup).as_os_str(),
    ]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);

    let Ended {
        code, status: s, ..
    } = up_to_the_end(&ctx, &setup_plan(&ctx, &sshd, "setup-a", &setup), &[], &[]);
    assert_eq!(code, 0, "{s:#}");
    let report = bundle_file(&s, "environment_report.txt");
    assert!(
        report.contains("gpuctltestpkg==1.0"),
        "the versions installed are reported:\n{report}"
    );
    let setup_log = bundle_file(&s, "setup.log");
    assert!(setup_log.contains("--- pip install"), "{setup_log}");
    assert!(!bundle_file(&s, "agent.log").contains("setup: reusing"));

    // The same [setup] again: the environment is reused, and the agent says so.
    let Ended {
        code, status: s, ..
    } = up_to_the_end(&ctx, &setup_plan(&ctx, &sshd, "setup-b", &setup), &[], &[]);
    assert_eq!(code, 0, "{s:#}");
    assert!(
        bundle_file(&s, "agent.log").contains("setup: reusing"),
        "{}",
        bundle_file(&s, "agent.log")
    );
    assert!(bundle_file(&s, "environment_report.txt").contains("gpuctltestpkg==1.0"));

    // A setup command that fails: the session fails, and is still stopped and proven.
    let failing = format!(
        "python = \"{}\"\ncommands = [\"echo about to fail; exit 3\"]",
        host_python()
    );
    // With [notify]: the failure is alerted too.
    let hook = Hook::start(false);
    let failing_plan = with_notify(&setup_plan(&ctx, &sshd, "setup-c", &failing));
    let url = hook.url();
    let Ended {
        code, status: s, ..
    } = up_to_the_end(&ctx, &failing_plan, &[], &[("GPUCTL_TEST_WEBHOOK", &url)]);
    assert_eq!(code, 1, "{s:#}");
    let failure_alerts: Vec<serde_json::Value> = hook
        .bodies
        .lock()
        .expect("lock")
        .iter()
        .filter(|b| b["event"] == "failure")
        .cloned()
        .collect();
    assert_eq!(
        failure_alerts.len(),
        1,
        "one failure alert: {:?}",
        hook.events()
    );
    assert!(
        failure_alerts[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("[setup] failed")),
        "{:#}",
        failure_alerts[0]
    );
    assert_eq!(s["session"]["state"], "failed", "{s:#}");
    let failure = s["session"]["failure_reason"].as_str().unwrap_or_default();
    assert!(failure.contains("[setup] failed"), "{failure}");
    let proof: serde_json::Value =
        serde_json::from_str(&bundle_file(&s, "shutdown_proof.json")).expect("proof");
    assert_eq!(proof["confirmed"], true, "{proof:#}");
    assert!(bundle_file(&s, "setup.log").contains("about to fail"));

    // An unpinned requirement is a warning, not a refusal.
    let loose = setup_plan(&ctx, &sshd, "setup-d", "pip = [\"vllm\"]");
    let check = ctx.run([
        std::ffi::OsStr::new("plan"),
        std::ffi::OsStr::new("check"),
        loose.as_os_str(),
    ]);
    assert_eq!(check.code, 0, "{}", check.stdout);
    assert!(format!("{}{}", check.stdout, check.stderr).contains("is not pinned"));
}

const HF_TOKEN: &str = "hf_testTOKENnotArealOne42";

/// Serves one file over HTTP on 127.0.0.1 and records each request's Authorization header.
struct FileServer {
    port: u16,
    auth: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FileServer {
    fn start(file: std::path::PathBuf) -> FileServer {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let auth = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = auth.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(20) {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let a = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("authorization: ")
                            .or_else(|| l.strip_prefix("Authorization: "))
                    })
                    .unwrap_or("")
                    .to_string();
                seen.lock().expect("lock").push(a);
                let body = std::fs::read(&file).expect("model file");
                let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n", body.len());
                let _ = conn.write_all(&body);
            }
        });
        FileServer { port, auth }
    }
}

fn sha256_of(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// An SSH-route plan whose model is downloaded on the host from `url`.
fn fetch_plan(ctx: &Ctx, sshd: &Sshd, name: &str, url: &str, sha: &str) -> std::path::PathBuf {
    let plan = common::sshd::ssh_plan(
        ctx,
        sshd,
        name,
        (free_port(), free_port()),
        "max_duration = \"10m\"\ngrace = \"3s\"\nafter_eval = true",
    );
    let text = std::fs::read_to_string(&plan).expect("plan");
    let path_line = format!("path = \"{}\"", common::model_path().display());
    assert!(text.contains(&path_line));
    std::fs::write(
        &plan,
        text.replace(&path_line, &format!("url = \"{url}\"\nsha256 = \"{sha}\"")),
    )
    .expect("write");
    plan
}

/// Every file under `dir` (the model cache left out: it holds the weights).
fn files_hold(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "models") {
                    stack.push(p);
                }
            } else if String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default())
                .contains(needle)
            {
                hits.push(p);
            }
        }
    }
    hits
}

#[test]
fn the_model_is_fetched_on_the_host_checked_cached_and_the_hub_token_never_leaks() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let server = FileServer::start(common::model_path());
    let base = format!("http://127.0.0.1:{}", server.port);
    let url = format!("{base}/SmolLM2-135M-Instruct.Q4_1.gguf?sig=abc");
    let sha = sha256_of(&common::model_path());
    // The process list, sampled all through the session: the token is in no argv.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (w, leaks) = (
        watching.clone(),
        std::sync::Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let l = leaks.clone();
    let sampler = std::thread::spawn(move || {
        let mut samples = 0;
        while w.load(std::sync::atomic::Ordering::SeqCst) && samples < 3000 {
            samples += 1;
            let ps = std::process::Command::new("ps")
                .args(["-eo", "args"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            for line in ps.lines().filter(|l| l.contains(HF_TOKEN)) {
                l.lock().expect("lock").push(line.to_string());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        samples
    });
    let up = |plan: &std::path::Path| {
        let out = up_to_the_end(
            &ctx,
            plan,
            &["-vv"],
            &[("HF_TOKEN", HF_TOKEN), ("HF_ENDPOINT", &base)],
        );
        assert!(!out.stdout.contains(HF_TOKEN) && !out.stderr.contains(HF_TOKEN));
        (out.code, out.status)
    };
    let (code, s) = up(&fetch_plan(&ctx, &sshd, "fetch-a", &url, &sha));
    assert_eq!(code, 0, "{s:#}");
    let log = bundle_file(&s, "agent.log");
    assert!(
        log.contains("fetch: downloading") && log.contains("sha256 checked"),
        "{log}"
    );
    assert!(!log.contains("sig=abc"), "the URL's query is never logged");
    assert!(
        server
            .auth
            .lock()
            .expect("lock")
            .iter()
            .any(|a| a == &format!("Bearer {HF_TOKEN}")),
        "the hub token reached the host and went with the download"
    );
    // Again: from the host's cache, checked then.
    let (code, s) = up(&fetch_plan(&ctx, &sshd, "fetch-b", &url, &sha));
    assert_eq!(code, 0, "{s:#}");
    assert!(bundle_file(&s, "agent.log").contains("fetch: reusing"));
    // A wrong hash: refused before anything serves it; the session still stops, proven.
    let wrong = "0".repeat(64);
    let (code, s) = up(&fetch_plan(
        &ctx,
        &sshd,
        "fetch-c",
        &format!("{base}/other.gguf"),
        &wrong,
    ));
    assert_eq!(code, 1, "{s:#}");
    let failure = s["session"]["failure_reason"].as_str().unwrap_or_default();
    assert!(failure.contains("does not match model.sha256"), "{failure}");
    let proof: serde_json::Value =
        serde_json::from_str(&bundle_file(&s, "shutdown_proof.json")).expect("proof");
    assert_eq!(proof["confirmed"], true, "{proof:#}");

    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.join().expect("sampler");
    assert!(samples > 0);
    assert!(
        leaks.lock().expect("lock").is_empty(),
        "the token in a process list: {:?}",
        leaks.lock().expect("lock")
    );
    assert_eq!(
        files_hold(ctx.dir.path(), HF_TOKEN),
        Vec::<std::path::PathBuf>::new(),
        "no file here holds the token"
    );
    assert_eq!(
        files_hold(&sshd.remote_home(), HF_TOKEN),
        Vec::<std::path::PathBuf>::new(),
        "no file on the host holds it"
    );
    assert!(!sshd.log().contains(HF_TOKEN));
}

#[test]
fn diagnostics_say_what_gpuctl_does_and_never_carry_a_key() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    let c = after_eval("vast", "RTX_3090", None);
    let p = plan(&ctx, &sshd, &c, free_port());
    let quiet = common::emulator::gpuctl(&ctx, &emu, &["offers", p.to_str().expect("path")]);
    assert!(
        !quiet.stderr.contains("provider request"),
        "quiet by default: {}",
        quiet.stderr
    );
    let loud = common::emulator::gpuctl(&ctx, &emu, &["-vv", "offers", p.to_str().expect("path")]);
    assert!(
        loud.stderr.contains("provider request"),
        "-vv shows the requests: {}",
        loud.stderr
    );
    assert!(loud.stderr.contains("status=200"), "{}", loud.stderr);
    assert!(
        !loud.stderr.contains(&emu.key),
        "the API key is never in a diagnostic"
    );
    // JSON lines for machines, and RUST_LOG decides when set.
    let mut cmd = ctx.command();
    emu.env(&mut cmd);
    let out = cmd
        .env("RUST_LOG", "gpuctl_providers=debug")
        .env("GPUCTL_LOG_FORMAT", "json")
        .args(["offers"])
        .arg(&p)
        .output()
        .expect("offers");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("provider request"))
        .expect("a JSON diagnostic");
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
    assert_eq!(v["fields"]["message"], "provider request", "{v}");
    assert!(!stderr.contains(&emu.key));
}
