//! The three enforcement layers under faults: `up` killed, the daemon killed and
//! restarted, both killed, `down` run twice at once, a locked database, a full disk.
//! Every session here is a real local session on the bundled model.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, local_plan, port_refuses, Ctx};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A process killed (SIGKILL) and reaped when the test ends, whatever happened.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.id() as i32)
    }

    /// SIGKILL a process the test needs alive up to now: one that already ended (its
    /// deadline came before the test got here) would make the rest of the test meaningless.
    fn sigkill(&mut self) {
        if let Ok(Some(status)) = self.0.try_wait() {
            panic!("the process ended ({status}) before the test could kill it: its deadline came first");
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plan whose hard stop is `secs` from now.
fn plan_stopping_in(ctx: &Ctx, port: u16, secs: i64, name: &str) -> std::path::PathBuf {
    let at = chrono::Utc::now() + chrono::Duration::seconds(secs);
    let plan = local_plan(
        ctx,
        port,
        &format!(
            "hard_stop_time = \"{}\"",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    );
    let text = std::fs::read_to_string(&plan).expect("plan");
    ctx.write(name, text)
}

/// `up --json` in the background, returned once it serves: (process, session id).
fn up_until_serving(ctx: &Ctx, plan: &std::path::Path) -> (Guard, String) {
    let (child, id) = common::up_until_serving(ctx.command(), plan);
    (Guard(child), id)
}

fn start_daemon(ctx: &Ctx, log: &str) -> Guard {
    let log = std::fs::File::create(ctx.path(log)).expect("log");
    Guard(
        ctx.command()
            .args(["daemon", "--json"])
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn daemon"),
    )
}

fn status(ctx: &Ctx, id: &str) -> serde_json::Value {
    ctx.run(["status", id, "--json"]).json()
}

/// Poll `gpuctl status` until `pred` holds (bounded: panics after `limit`).
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
            "{what}: not within {limit:?}; last status:\n{s:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn state(s: &serde_json::Value) -> &str {
    s["session"]["state"].as_str().unwrap_or_default()
}

fn events_of(s: &serde_json::Value, kind: &str) -> Vec<String> {
    s["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == kind)
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect()
}

fn proof(s: &serde_json::Value) -> serde_json::Value {
    let dir = s["session"]["evidence_dir"].as_str().expect("evidence dir");
    let text = std::fs::read_to_string(std::path::Path::new(dir).join("shutdown_proof.json"))
        .expect("shutdown_proof.json");
    serde_json::from_str(&text).expect("proof JSON")
}

#[test]
fn up_killed_the_daemon_stops_the_session_at_its_deadline_with_proof() {
    let ctx = Ctx::new();
    let port = free_port();
    let plan = plan_stopping_in(&ctx, port, 35, "plan.toml");
    let (mut up, id) = up_until_serving(&ctx, &plan);
    up.sigkill();
    let ls = ctx.run(["ls"]);
    assert!(
        ls.stdout.contains("is gone"),
        "ls says the controller is gone:\n{}",
        ls.stdout
    );
    assert!(!port_refuses(port), "the agent outlives its up");

    let _daemon = start_daemon(&ctx, "daemon.log");
    let s = wait_for(
        &ctx,
        &id,
        Duration::from_secs(90),
        "stopped by the daemon",
        |s| state(s) == "stopped",
    );
    let takeovers = events_of(&s, "takeover");
    assert!(
        takeovers
            .iter()
            .any(|m| m.contains("gpuctl daemon") && m.contains("gpuctl up")),
        "{takeovers:?}"
    );
    assert_eq!(s["session"]["stop_reason"], "deadline reached");
    assert!(
        s["session"]["stop_lateness_ms"].is_i64(),
        "lateness recorded: {s:#}"
    );
    let p = proof(&s);
    assert_eq!(p["confirmed"], true, "{p:#}");
    assert!(port_refuses(port));
    let verify = ctx.run(["evidence", &id, "verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
}

#[test]
fn a_daemon_killed_and_started_again_rearms_every_live_session() {
    let ctx = Ctx::new();
    let (p1, p2) = (free_port(), free_port());
    let (mut up1, id1) = up_until_serving(&ctx, &plan_stopping_in(&ctx, p1, 75, "a.toml"));
    let (mut up2, id2) = up_until_serving(&ctx, &plan_stopping_in(&ctx, p2, 80, "b.toml"));
    up1.sigkill();
    up2.sigkill();
    let mut first = start_daemon(&ctx, "daemon-1.log");
    for id in [&id1, &id2] {
        wait_for(
            &ctx,
            id,
            Duration::from_secs(60),
            "taken over by the first daemon",
            |s| !events_of(s, "takeover").is_empty(),
        );
    }
    let first_pid = first.0.id();
    first.sigkill();
    let _second = start_daemon(&ctx, "daemon-2.log");
    for (id, port) in [(&id1, p1), (&id2, p2)] {
        let s = wait_for(
            &ctx,
            id,
            Duration::from_secs(120),
            "stopped by the second daemon",
            |s| state(s) == "stopped",
        );
        let takeovers = events_of(&s, "takeover");
        assert!(
            takeovers
                .iter()
                .any(|m| m.contains(&format!("gpuctl daemon (pid {first_pid}), is gone"))),
            "the second daemon took it from the first: {takeovers:?}"
        );
        assert_eq!(proof(&s)["confirmed"], true);
        assert!(port_refuses(port));
    }
}

#[test]
fn with_up_and_daemon_both_dead_the_agent_stops_alone_and_the_next_daemon_confirms() {
    let ctx = Ctx::new();
    let port = free_port();
    let (mut up, id) = up_until_serving(&ctx, &plan_stopping_in(&ctx, port, 30, "plan.toml"));
    up.sigkill();
    let deadline = chrono::DateTime::parse_from_rfc3339(
        status(&ctx, &id)["session"]["deadline"]
            .as_str()
            .expect("deadline"),
    )
    .expect("time");
    // Nobody but the agent is left: it must close its port at the deadline by itself.
    let start = Instant::now();
    while !port_refuses(port) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the agent kept serving"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        chrono::Utc::now() >= deadline,
        "closed at the deadline, not before"
    );
    assert_eq!(
        state(&status(&ctx, &id)),
        "serving",
        "nobody has recorded the stop yet"
    );

    let _daemon = start_daemon(&ctx, "daemon.log");
    let s = wait_for(
        &ctx,
        &id,
        Duration::from_secs(60),
        "confirmed by the daemon",
        |s| state(s) == "stopped",
    );
    let p = proof(&s);
    assert_eq!(p["confirmed"], true, "{p:#}");
    assert_eq!(p["agent_final_record"]["reason"], "deadline", "{p:#}");
    // The lateness is the agent's own: when it stopped serving, not when the daemon came.
    let lateness = s["session"]["stop_lateness_ms"].as_i64().expect("lateness");
    assert!(lateness >= 0, "{lateness}");
}

#[test]
fn down_twice_at_once_stops_once_and_a_third_down_is_harmless() {
    let ctx = Ctx::new();
    let port = free_port();
    let plan = local_plan(&ctx, port, "");
    let (mut up, id) = up_until_serving(&ctx, &plan);
    let downs: Vec<Child> = (0..2)
        .map(|_| {
            ctx.command()
                .args(["down", &id])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("down")
        })
        .collect();
    for d in downs {
        let out = d.wait_with_output().expect("down");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        up.0.wait().expect("up").code(),
        Some(0),
        "up stopped in order"
    );
    let s = status(&ctx, &id);
    assert_eq!(state(&s), "stopped");
    assert_eq!(s["session"]["stop_reason"], "stopped by gpuctl down");
    let stops = s["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["state"] == "stopping")
        .count();
    assert_eq!(stops, 1, "one stop, not two: {s:#}");
    assert_eq!(proof(&s)["confirmed"], true);
    assert!(port_refuses(port));

    let third = ctx.run(["down", &id]);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert!(third.stdout.contains("already stopped"), "{}", third.stdout);
    let unknown = ctx.run(["down", "no-such-session"]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("no session matches"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn up_detach_hands_the_session_to_a_daemon_and_down_all_stops_it() {
    let ctx = Ctx::new();
    let port = free_port();
    let plan = local_plan(&ctx, port, "");
    let r = ctx.run(["up", "--detach", "--json", plan.to_str().expect("path")]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json();
    let id = v["session_id"].as_str().expect("id").to_string();
    let daemon_pid = v["daemon_pid"].as_u64().expect("a daemon was started") as i32;
    let up_pid = v["up_pid"].as_u64().expect("up pid") as i32;
    // Whatever happens below, neither background process outlives the test.
    struct Reap(i32, i32);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(self.1), Signal::SIGKILL);
        }
    }
    let _reap = Reap(daemon_pid, up_pid);

    let st = ctx.run(["daemon", "status", "--json"]);
    assert_eq!(st.code, 0, "{}", st.stdout);
    assert_eq!(st.json()["pid"].as_i64(), Some(daemon_pid as i64));
    let second = ctx.run(["daemon"]);
    assert_eq!(second.code, 1);
    assert!(
        second.stderr.contains(&format!("pid {daemon_pid}"))
            && second.stderr.contains("already runs"),
        "{}",
        second.stderr
    );

    wait_for(
        &ctx,
        &id,
        Duration::from_secs(120),
        "serving in the background",
        |s| state(s) == "serving",
    );
    let down = ctx.run(["down", "--all", "--json"]);
    assert_eq!(down.code, 0, "{}{}", down.stdout, down.stderr);
    let results = down.json();
    assert_eq!(results[0]["session_id"], id.as_str());
    assert_eq!(results[0]["state"], "stopped");
    assert!(port_refuses(port));
    let again = ctx.run(["down", "--all"]);
    assert_eq!(again.code, 0);
    assert!(again.stderr.contains("nothing to stop"), "{}", again.stderr);

    kill(Pid::from_raw(daemon_pid), Signal::SIGTERM).expect("SIGTERM the daemon");
    let start = Instant::now();
    while ctx.run(["daemon", "status"]).code == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the daemon ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn daemon_install_writes_a_user_unit_and_keeps_an_existing_one() {
    let ctx = Ctx::new();
    let st = ctx.run(["daemon", "status"]);
    assert_eq!(st.code, 1, "no daemon runs");
    assert!(st.stdout.contains("no gpuctl daemon"), "{}", st.stdout);
    let r = ctx.run(["daemon", "install"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let unit = ctx.path("xdg-config/systemd/user/gpuctl-daemon.service");
    let text = std::fs::read_to_string(&unit).expect("unit written");
    assert!(
        text.contains(&format!(
            "ExecStart={} daemon",
            env!("CARGO_BIN_EXE_gpuctl")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("Environment=GPUCTL_HOME={}", ctx.home().display())),
        "{text}"
    );
    assert!(text.contains("Restart=always"));
    assert!(r
        .stderr
        .contains("systemctl --user enable --now gpuctl-daemon.service"));
    let again = ctx.run(["daemon", "install"]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(ctx.run(["daemon", "install", "--force"]).code, 0);
}

#[test]
fn a_locked_database_delays_the_record_not_the_stop() {
    let ctx = Ctx::new();
    let port = free_port();
    let plan = local_plan(&ctx, port, "");
    let (mut up, id) = up_until_serving(&ctx, &plan);
    // Another process takes the database's write lock and keeps it for 20 s.
    let db = ctx.home().join("sessions.db");
    let mut locker = Guard(
        std::process::Command::new("python3")
            .arg("-c")
            .arg("import sqlite3, sys, time\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(20)\nc.execute('COMMIT')")
            .arg(&db)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let mut line = String::new();
    BufReader::new(locker.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "locked");
    kill(up.pid(), Signal::SIGTERM).expect("SIGTERM up");
    let start = Instant::now();
    while !port_refuses(port) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the agent still serves"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        locker.0.try_wait().expect("wait").is_none(),
        "the stop happened while the database was still locked"
    );
    let code = up.0.wait().expect("up").code();
    assert_eq!(
        code,
        Some(0),
        "the record was written once the lock was released"
    );
    let s = status(&ctx, &id);
    assert_eq!(state(&s), "stopped");
    assert_eq!(proof(&s)["confirmed"], true);
}

#[test]
fn a_full_evidence_disk_still_stops_and_says_what_is_missing() {
    let ctx = Ctx::new();
    let port = free_port();
    let plan = local_plan(&ctx, port, "after_eval = true");
    let bundles = ctx.path("bundles");
    std::fs::create_dir_all(&bundles).expect("mkdir");
    // A 16 KiB tmpfs (four pages) in a mount namespace of the `up` process alone: the first
    // files fit, the rest of the evidence does not.
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=16k tmpfs "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg(&bundles)
        .arg(env!("CARGO_BIN_EXE_gpuctl"))
        .args(["up", "--json"])
        .arg(&plan)
        .envs(
            ctx.command()
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k, v))),
        )
        .current_dir(common::repo_root())
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let result = common::result_event(&stdout);
    assert_eq!(result["state"], "failed", "{result:#}");
    let failure = result["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("No space left on device") && failure.contains("free space"),
        "{failure}"
    );
    assert!(port_refuses(port), "the agent was stopped all the same");
    let id = result["session_id"].as_str().expect("id");
    let s = status(&ctx, id);
    assert_eq!(state(&s), "failed");
    assert!(s["session"]["failure_reason"]
        .as_str()
        .unwrap_or_default()
        .contains("No space left"));
}

#[test]
fn the_budget_meter_warns_at_80_percent_and_stops_before_max_total_is_spent() {
    let ctx = Ctx::new();
    let sshd = common::sshd::Sshd::start();
    // $36/h is a cent a second: max_total_usd = $0.30 buys 30 s; the warning comes at 24 s,
    // the grace period at 25 s.
    let plan = ctx.write(
        "budget.toml",
        format!(
            r#"schema = 1
[plan]
name = "budget-meter"
goal = "spend to the limit and no further"
route = "rented_gpu"
why = "I need SSH access to a host I rent, within a small budget"
can_prove = "the budget stop"
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
max_total_usd = 0.30
[stop]
max_duration = "10m"
grace = "5s"
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
    let run = ctx.run(["up", "--json", plan.to_str().expect("path")]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = common::result_event(&run.stdout);
    let id = r["session_id"].as_str().expect("id");
    let s = status(&ctx, id);
    assert_eq!(s["session"]["stop_cause"], "budget", "{s:#}");
    assert_eq!(s["session"]["stop_reason"], "deadline reached");
    assert!(
        !events_of(&s, "grace").is_empty(),
        "a first copy of the evidence at deadline - grace: {s:#}"
    );
    let warnings = events_of(&s, "budget");
    assert!(warnings.iter().any(|m| m.contains("80 %")), "{warnings:?}");
    let cost = s["session"]["cost_usd"].as_f64().expect("cost");
    assert!(cost <= 0.30, "never more than max_total_usd: {cost}");
}

/// `up` stopped (SIGSTOP: Ctrl+Z, a frozen VM) while serving keeps its PID but not its
/// heartbeat: the daemon takes the session over and stops it at the deadline; the `up`
/// resumed after the deadline finds another controller and backs off, without a second stop.
#[test]
fn up_sigstopped_is_taken_over_by_its_stale_heartbeat_and_backs_off_when_resumed() {
    let ctx = Ctx::new();
    let port = free_port();
    let plan = plan_stopping_in(&ctx, port, 30, "plan.toml");
    let (mut up, id) = up_until_serving(&ctx, &plan);
    let _daemon = start_daemon(&ctx, "daemon.log");
    kill(up.pid(), Signal::SIGSTOP).expect("SIGSTOP");
    let s = wait_for(
        &ctx,
        &id,
        Duration::from_secs(120),
        "stopped by the daemon",
        |s| state(s) == "stopped",
    );
    let takeovers = events_of(&s, "takeover");
    assert!(
        takeovers
            .iter()
            .any(|m| m.contains("stopped saying it is alive")),
        "{takeovers:?}"
    );
    let ended = s["session"]["ended_at"].clone();
    assert_eq!(proof(&s)["confirmed"], true);
    kill(up.pid(), Signal::SIGCONT).expect("SIGCONT");
    let code = up.0.wait().expect("up").code();
    assert_eq!(
        code,
        Some(1),
        "the resumed up says it did not finish the session"
    );
    let after = status(&ctx, &id);
    assert_eq!(state(&after), "stopped");
    assert_eq!(after["session"]["ended_at"], ended, "no second stop");
    let superseded = events_of(&after, "superseded");
    assert!(
        superseded
            .iter()
            .any(|m| m.contains("took the session over")),
        "{superseded:?}"
    );
}
