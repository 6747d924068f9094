//! A day on a session: `extend` moves the hard stop (the agent keeps the new one with
//! nobody else watching; past the budget it is refused), `stop.idle` ends a session nobody
//! uses, and the shell completions and man page are there. Real local sessions on the
//! bundled model, and a cloud one on the emulator reached over the test's sshd.

mod common;

use std::io::{BufRead, BufReader};
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

/// `up --json` in the background with `env`, returned once it serves: (process, id).
fn up_until_serving(ctx: &Ctx, plan: &std::path::Path, emu: Option<&Emulator>) -> (Guard, String) {
    let mut cmd = ctx.command();
    if let Some(e) = emu {
        e.env(&mut cmd);
        cmd.env("GPUCTL_STOP_CONFIRM_WINDOW", "6s");
    }
    let mut child = cmd
        .args(["up", "--json"])
        .arg(plan)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn up");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
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
    let id = id.unwrap_or_else(|| panic!("no session before serving:\n{}", seen.join("\n")));
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
    let out = ctx
        .command()
        .args(["up", "--json"])
        .arg(&plan)
        .output()
        .expect("up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "session")
        .and_then(|v| v["session_id"].as_str().map(String::from))
        .expect("session id");
    let s = status(&ctx, &id);
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
