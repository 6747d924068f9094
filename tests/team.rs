//! Team mode: every gpuctl of a team shares one PostgreSQL session store (a real server,
//! started for the test). Daemons in other homes (standing in for always-on hosts) end a
//! laptop's sessions, cover for each other when one dies, and stop each session once; a
//! team policy caps the month's spend, and two `up`s racing for the last dollars cannot
//! both start. Checked against the emulator's own request log, never gpuctl's output alone.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::emulator::{after_eval, plan, request_log, Cloud, Emulator};
use common::postgres::Postgres;
use common::sshd::Sshd;
use common::{free_port, local_plan, Ctx};

struct Guard(Child);

impl Guard {
    fn sigkill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.sigkill();
    }
}

fn with_emulator(ctx: &Ctx, emu: &Emulator) -> Command {
    let mut cmd = ctx.command();
    emu.env(&mut cmd);
    cmd.env("GPUCTL_STOP_CONFIRM_WINDOW", "6s");
    cmd
}

fn start_daemon(ctx: &Ctx, emu: &Emulator, log: &str) -> Guard {
    let log = std::fs::File::create(ctx.path(log)).expect("daemon log");
    let child = with_emulator(ctx, emu)
        .args(["daemon", "--json"])
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    Guard(child)
}

fn status(ctx: &Ctx, id: &str) -> serde_json::Value {
    ctx.run(["status", id, "--json"]).json()
}

fn events_of(s: &serde_json::Value, pred: impl Fn(&serde_json::Value) -> bool) -> Vec<String> {
    s["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| pred(e))
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A Vast session from `ctx`'s home, serving; then its `up` is SIGKILLed (the laptop is
/// gone). Returns the session id.
fn serving_then_laptop_gone(ctx: &Ctx, emu: &Emulator, sshd: &Sshd, max: &str) -> String {
    let c = Cloud {
        stop: "after_eval = false",
        max_duration: max,
        ..after_eval("vast", "RTX_3090", None)
    };
    let p = plan(ctx, sshd, &c, free_port());
    let before: Vec<String> = ctx
        .run(["ls", "--json"])
        .json()
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["id"].as_str().map(String::from))
        .collect();
    let mut up = Guard(
        with_emulator(ctx, emu)
            .args(["up", "--json"])
            .arg(&p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("up"),
    );
    let mut id = None;
    wait_until("the session serves", Duration::from_secs(120), || {
        let ls = ctx.run(["ls", "--json"]).json();
        id = ls
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["state"] == "serving" && !before.iter().any(|b| s["id"] == b.as_str()))
            .and_then(|s| s["id"].as_str().map(String::from));
        id.is_some()
    });
    up.sigkill();
    id.expect("id")
}

/// DELETEs the emulator received for each instance (Vast's terminate).
fn terminates(log: &std::path::Path) -> std::collections::HashMap<String, usize> {
    let mut n = std::collections::HashMap::new();
    for r in request_log(log) {
        let path = r["path"].as_str().unwrap_or_default();
        if r["method"] == "DELETE" {
            if let Some(id) = path.strip_prefix("/vast/api/v0/instances/") {
                *n.entry(id.trim_end_matches('/').to_string()).or_insert(0) += 1;
            }
        }
    }
    n
}

#[test]
fn a_daemon_on_another_host_stops_a_laptops_session_at_its_deadline_with_a_read_back() {
    let pg = Postgres::start();
    let url = pg.database("handoff");
    let (laptop, server) = (Ctx::new(), Ctx::new());
    laptop.use_database(&url);
    server.use_database(&url);
    let sshd = Sshd::start();
    let log = laptop.path("requests.jsonl");
    let emu = Emulator::start(sshd.port, &["--request-log", log.to_str().expect("path")]);
    let id = serving_then_laptop_gone(&laptop, &emu, &sshd, "45s");
    // The laptop's home has no daemon; the always-on host's does, on the same store.
    let _daemon = start_daemon(&server, &emu, "daemon.log");
    let mut last = serde_json::Value::Null;
    wait_until(
        "the other host's daemon stops it",
        Duration::from_secs(150),
        || {
            last = status(&server, &id);
            last["session"]["state"] == "stopped"
        },
    );
    let takeovers = events_of(&last, |e| e["kind"] == "takeover");
    assert!(
        takeovers
            .iter()
            .any(|m| m.contains("gpuctl daemon") && m.contains("gpuctl up")),
        "{takeovers:?}"
    );
    assert_eq!(last["session"]["stop_reason"], "deadline reached");
    // Seen the same from the laptop's home: one store.
    assert_eq!(status(&laptop, &id)["session"]["state"], "stopped");
    let instances = emu.instances();
    assert_eq!(instances.len(), 1);
    assert!(
        !instances[0]["terminated_at"].is_null() || instances[0]["status"] != "running",
        "the emulator's ledger says the instance is gone: {instances:?}"
    );
    let t = terminates(&log);
    assert_eq!(t.values().sum::<usize>(), 1, "one terminate: {t:?}");
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());
}

#[test]
fn two_daemons_share_the_store_and_the_survivor_stops_each_session_once() {
    let pg = Postgres::start();
    let url = pg.database("covering");
    let (laptop, host_a, host_b) = (Ctx::new(), Ctx::new(), Ctx::new());
    for c in [&laptop, &host_a, &host_b] {
        c.use_database(&url);
    }
    let sshd = Sshd::start();
    let log = laptop.path("requests.jsonl");
    let emu = Emulator::start(sshd.port, &["--request-log", log.to_str().expect("path")]);
    let mut a = start_daemon(&host_a, &emu, "daemon-a.log");
    // Sessions start while only daemon A runs: it takes each over once its `up` is gone.
    let ids: Vec<String> = (0..2)
        .map(|_| serving_then_laptop_gone(&laptop, &emu, &sshd, "90s"))
        .collect();
    for id in &ids {
        wait_until(
            "daemon A holds the session",
            Duration::from_secs(60),
            || !events_of(&status(&host_a, id), |e| e["kind"] == "takeover").is_empty(),
        );
    }
    let held = host_a.run(["daemon", "status", "--json"]).json();
    let held_ids: Vec<&str> = held["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["id"].as_str())
        .collect();
    for id in &ids {
        assert!(
            held_ids.contains(&id.as_str()),
            "daemon status names {id}: {held:#}"
        );
    }
    let _b = start_daemon(&host_b, &emu, "daemon-b.log");
    // B sees A's fresh leases and leaves the sessions alone; then A dies mid-run.
    std::thread::sleep(Duration::from_secs(3));
    a.sigkill();
    for id in &ids {
        let mut last = serde_json::Value::Null;
        wait_until("daemon B stops it", Duration::from_secs(180), || {
            last = status(&host_b, id);
            last["session"]["state"] == "stopped"
        });
        let stops = events_of(&last, |e| e["state"] == "stopped" || e["state"] == "failed");
        assert_eq!(stops.len(), 1, "one stop recorded: {stops:?}");
        let takeovers = events_of(&last, |e| e["kind"] == "takeover");
        assert_eq!(takeovers.len(), 2, "up -> A -> B: {takeovers:?}");
        assert!(takeovers[1].contains("is gone"), "{takeovers:?}");
    }
    let t = terminates(&log);
    assert_eq!(t.len(), ids.len(), "every instance terminated: {t:?}");
    assert!(t.values().all(|n| *n == 1), "each exactly once: {t:?}");
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());
}

/// The live sessions `ctx`'s daemon holds, by `daemon status --json`.
fn held_by_daemon(ctx: &Ctx) -> usize {
    ctx.run(["daemon", "status", "--json"]).json()["sessions"]
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn a_daemon_joining_the_store_gets_a_share_of_the_sessions() {
    let pg = Postgres::start();
    let url = pg.database("balance");
    let (host_a, host_b) = (Ctx::new(), Ctx::new());
    host_a.use_database(&url);
    host_b.use_database(&url);
    let emu = Emulator::start(free_port(), &[]);
    let ids = emu.call(
        "POST",
        "/_emulator/instances",
        &serde_json::json!({ "provider": "vast", "instance_type": "RTX 3090", "count": 40, "name_prefix": "gpuctl-balance-" }),
    );
    let instances = host_a.path("instances.json");
    std::fs::write(&instances, ids.to_string()).expect("instances");
    // Deadlines 10 minutes ahead: nothing is due while the daemons split the sessions.
    let instances = instances.to_str().expect("path");
    let seeded = host_a.run([
        "debug",
        "seed",
        "--count",
        "40",
        "--deadline-in",
        "600s",
        "--spread",
        "60s",
        "--instances",
        instances,
    ]);
    assert_eq!(seeded.code, 0, "seed: {}", seeded.stderr);
    let _a = start_daemon(&host_a, &emu, "daemon-a.log");
    wait_until("daemon A holds all 40", Duration::from_secs(60), || {
        held_by_daemon(&host_a) == 40
    });
    let _b = start_daemon(&host_b, &emu, "daemon-b.log");
    wait_until(
        "daemon B is handed a share",
        Duration::from_secs(90),
        || held_by_daemon(&host_b) >= 15,
    );
    wait_until(
        "every session held by one of them",
        Duration::from_secs(30),
        || held_by_daemon(&host_a) + held_by_daemon(&host_b) == 40,
    );
    let (a, b) = (held_by_daemon(&host_a), held_by_daemon(&host_b));
    assert!(a <= 25 && b <= 25, "an even split: A {a}, B {b}");
    // Handing over is not a stop: nothing was terminated.
    assert!(
        emu.instances().iter().all(|i| i["billing"] == true),
        "no instance stopped"
    );
}

#[test]
fn two_ups_racing_for_the_last_dollars_of_a_team_cap_start_once() {
    let pg = Postgres::start();
    let url = pg.database("caps");
    let (alice, bob) = (Ctx::new(), Ctx::new());
    alice.use_database(&url);
    bob.use_database(&url);
    let policy = "[rules]\nowner_required = true\n\n[caps]\nteam_monthly_usd = 10.0\n";
    let mut children = Vec::new();
    for (ctx, who) in [(&alice, "alice"), (&bob, "bob")] {
        ctx.write("gpuctl-policy.toml", policy);
        let p = local_plan(ctx, free_port(), "after_eval = true");
        let text = std::fs::read_to_string(&p)
            .expect("plan")
            .replace(
                "route = \"local_cpu\"\n",
                &format!("route = \"local_cpu\"\nowner = \"{who}\"\n"),
            )
            .replace("[fallback]", "[budget]\nmax_total_usd = 6.0\n\n[fallback]");
        std::fs::write(&p, text).expect("plan");
        assert_eq!(
            ctx.run(["plan", "check", p.to_str().expect("path")]).code,
            0
        );
        children.push((ctx, p));
    }
    let runs: Vec<_> = children
        .iter()
        .map(|(ctx, p)| {
            ctx.command()
                .args(["up"])
                .arg(p)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("up")
        })
        .collect();
    let outs: Vec<_> = runs
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    let codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap_or(-1)).collect();
    let mut sorted = codes.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 2], "one starts, one is refused: {codes:?}");
    let refused = outs
        .iter()
        .find(|o| o.status.code() == Some(2))
        .expect("refused");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("monthly cap is $10.00"), "{err}");
    assert!(err.contains("could spend $6.00"), "{err}");
    assert!(err.contains("nothing was started"), "{err}");
    // The audit on either machine shows the team's one session.
    let audit = alice.run(["audit", "--format", "json"]);
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(
        bob.run(["ls", "--json"]).json().as_array().map(|a| a.len()),
        Some(1)
    );
}

#[test]
fn db_status_and_migrate_name_the_store_without_its_password() {
    let pg = Postgres::start();
    let url = pg.database("status");
    let ctx = Ctx::new();
    let fresh = ctx.run(["db", "status", "--json"]).json();
    assert_eq!(fresh["backend"], "sqlite");
    assert_eq!(fresh["exists"], false);
    ctx.use_database(&url.replace("gpuctl@", "gpuctl:hunter2@"));
    let m = ctx.run(["db", "migrate"]);
    assert_eq!(m.code, 0, "{}", m.stderr);
    assert!(
        m.stdout.contains("created") || m.stdout.contains("schema"),
        "{}",
        m.stdout
    );
    let s = ctx.run(["db", "status", "--json"]);
    assert_eq!(s.code, 0, "{}", s.stderr);
    let j = s.json();
    assert_eq!(j["backend"], "postgres");
    assert_eq!(j["schema_version"], j["known_schema_version"]);
    assert!(!s.stdout.contains("hunter2"), "{}", s.stdout);
    assert!(j["location"]
        .as_str()
        .unwrap_or_default()
        .contains("gpuctl:***@"));
    // A server that is not there: a clear error, still without the password.
    ctx.use_database(&format!(
        "postgres://gpuctl:hunter2@127.0.0.1:{}/x?sslmode=disable",
        free_port()
    ));
    let bad = ctx.run(["ls"]);
    assert_ne!(bad.code, 0);
    assert!(!bad.stderr.contains("hunter2"), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("gpuctl:***@127.0.0.1"),
        "{}",
        bad.stderr
    );
}

#[test]
fn a_team_policy_in_the_plans_folder_refuses_plans_that_break_its_rules() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    // The policy sits at the root; the plan two folders below finds it walking up.
    ctx.write(
        "gpuctl-policy.toml",
        "[rules]\nproviders = [\"runpod\", \"local\"]\nmax_hourly_usd = 1.0\nmax_duration = \"5m\"\nowner_required = true\n",
    );
    std::fs::create_dir_all(ctx.path("team/plans")).expect("dirs");
    let c = Cloud {
        max_duration: "10m",
        ..after_eval("vast", "RTX_3090", None)
    };
    let p = plan(&ctx, &sshd, &c, free_port());
    let moved = ctx.path("team/plans/vast.toml");
    std::fs::rename(&p, &moved).expect("move");
    let r = ctx.run(["plan", "check", "--json", moved.to_str().expect("path")]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let fields: Vec<String> = r.json()["files"][0]["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter(|p| {
            p["message"]
                .as_str()
                .unwrap_or_default()
                .contains("gpuctl-policy.toml")
        })
        .filter_map(|p| p["field"].as_str().map(String::from))
        .collect();
    for f in [
        "instance.provider",
        "budget.hourly_usd",
        "stop.max_duration",
    ] {
        assert!(
            fields.iter().any(|x| x == f),
            "{f} refused by the policy: {fields:?}"
        );
    }
    // `up` refuses the same plan before anything starts.
    let up = ctx.run(["up", moved.to_str().expect("path")]);
    assert_eq!(up.code, 2, "{}", up.stderr);
    assert!(
        up.stderr.contains("provider vast is not allowed"),
        "{}",
        up.stderr
    );
    assert!(ctx
        .run(["ls", "--json"])
        .json()
        .as_array()
        .is_none_or(|a| a.is_empty()));
    // A policy file that cannot be parsed refuses too, naming itself.
    ctx.write("gpuctl-policy.toml", "[rules]\nmax_hourly = 1\n");
    let r = ctx.run(["plan", "check", moved.to_str().expect("path")]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a valid policy"), "{}", r.stderr);
}
