//! The stop fails closed: no session is recorded `stopped` while its instance may still
//! bill. Every verdict here is read from the cloud emulator's own ledger of instances, never
//! from gpuctl's output alone: answers that are not a read-back (a proxy's HTML page, a 200
//! that is not JSON, an empty object), a launch interrupted while its request is in flight
//! (Ctrl+C, and `up` killed with the daemon taking over), and a key changed between the
//! launch and the stop.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::emulator::{after_eval, plan, Cloud, Emulator};
use common::sshd::Sshd;
use common::{free_port, Ctx, Run};

/// A gpuctl command against the emulator, with a short confirm window.
fn command(ctx: &Ctx, emu: &Emulator) -> Command {
    let mut cmd = ctx.command();
    emu.env(&mut cmd);
    cmd.env("GPUCTL_STOP_CONFIRM_WINDOW", "4s");
    cmd
}

fn run(mut cmd: Command) -> Run {
    Run::from(cmd.output().expect("gpuctl"))
}

/// Until the emulator has created an instance (a launch request has reached it).
fn wait_for_launch(emu: &Emulator) {
    let start = Instant::now();
    while emu.instances().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "no launch");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn billing(emu: &Emulator) -> Vec<serde_json::Value> {
    emu.instances()
        .into_iter()
        .filter(|i| i["billing"] == true)
        .collect()
}

/// The invariant, against the ledger: an instance that bills belongs to a session that is
/// not `stopped` (live, or `stop_unconfirmed`, which `ls` shows first and in red).
fn assert_no_stopped_session_bills(ctx: &Ctx, emu: &Emulator) {
    for inst in billing(emu) {
        let name = inst["name"].as_str().unwrap_or_default();
        let Some(id) = name.strip_prefix("gpuctl-") else {
            continue;
        };
        let status = ctx.run(["status", id, "--json"]).json();
        assert_ne!(
            status["session"]["state"], "stopped",
            "session {id} is recorded stopped while {inst} bills"
        );
    }
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `up` for a plan that serves until stopped; returns it and the session id once
/// the session serves.
fn serving(ctx: &Ctx, emu: &Emulator, p: &std::path::Path) -> (Kill, String) {
    let mut cmd = command(ctx, emu);
    cmd.args(["up", "--json", "--laptop-only"])
        .arg(p)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let up = Kill(cmd.spawn().expect("up"));
    let start = Instant::now();
    loop {
        let ls = ctx.run(["ls", "--json"]).json();
        let live = ls
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["state"] == "serving");
        if let Some(s) = live {
            return (up, s["id"].as_str().expect("id").to_string());
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "not serving: {ls}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn answers_that_are_not_a_read_back_never_confirm_a_stop() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &["--lambda-launch-pace-ms", "1000"]);
    for (provider, itype, region, mode) in [
        ("vast", "RTX 3090", None, "html"),
        ("vast", "RTX 3090", None, "non_json"),
        ("vast", "RTX 3090", None, "empty_json"),
        ("runpod", "NVIDIA RTX A5000", None, "html"),
        ("runpod", "NVIDIA RTX A5000", None, "non_json"),
        ("lambda", "gpu_1x_a10", Some("us-east-1"), "html"),
    ] {
        let c = Cloud {
            stop: "after_eval = false",
            ..after_eval(provider, itype, region)
        };
        let p = plan(&ctx, &sshd, &c, free_port());
        let (mut up, id) = serving(&ctx, &emu, &p);
        // From now on the terminate is accepted but never completes (the instance bills
        // on), and every read-back is something other than the provider's answer.
        emu.fault(provider, "terminate", "never_complete", 1);
        emu.fault(provider, "get", mode, 10_000);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(up.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let out = up.0.wait().expect("up");
        assert_eq!(
            out.code(),
            Some(4),
            "{provider} {mode}: the stop must stay unconfirmed"
        );
        let status = ctx.run(["status", &id, "--json"]).json();
        assert_eq!(
            status["session"]["state"], "stop_unconfirmed",
            "{provider} {mode}"
        );
        assert!(
            !billing(&emu).is_empty(),
            "{provider} {mode}: it still bills"
        );
        assert_no_stopped_session_bills(&ctx, &emu);
        // The provider answers again: the next stop confirms, and the ledger agrees.
        emu.call("DELETE", "/_emulator/faults", &serde_json::Value::Null);
        let mut down = command(&ctx, &emu);
        down.args(["down", &id, "--json"]);
        let d = run(down);
        assert_eq!(d.code, 0, "{provider} {mode}: {}\n{}", d.stdout, d.stderr);
        assert!(billing(&emu).is_empty(), "{provider} {mode}");
    }
}

#[test]
fn ctrl_c_while_the_launch_request_is_in_flight_still_terminates_what_it_created() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    // The instance is created, then the answer never comes (the client times out).
    emu.fault("runpod", "launch", "created_then_timeout", 1);
    let p = plan(
        &ctx,
        &sshd,
        &after_eval("runpod", "NVIDIA RTX A5000", None),
        free_port(),
    );
    let mut cmd = command(&ctx, &emu);
    cmd.env("GPUCTL_API_TIMEOUT_MS", "4000")
        .args(["up", "--json"])
        .arg(&p)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("up");
    let pid = child.id();
    wait_for_launch(&emu);
    // Ctrl+C while the launch request has not answered.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let out = child.wait_with_output().expect("up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r = common::result_event(&stdout);
    assert!(
        billing(&emu).is_empty(),
        "the instance created by the interrupted launch bills on: {:?}\n{stdout}",
        emu.instances()
    );
    let proof: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(r["bundle"].as_str().expect("bundle")).join("shutdown_proof.json"),
        )
        .expect("proof"),
    )
    .expect("json");
    assert_eq!(proof["confirmed"], true, "{proof:#}");
    assert_no_stopped_session_bills(&ctx, &emu);
}

#[test]
fn up_killed_during_the_launch_request_is_finished_by_down_from_the_tag() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    emu.fault("vast", "launch", "created_then_timeout", 1);
    let c = Cloud {
        stop: "after_eval = true",
        ..after_eval("vast", "RTX 3090", None)
    };
    let p = plan(&ctx, &sshd, &c, free_port());
    let mut cmd = command(&ctx, &emu);
    cmd.env("GPUCTL_API_TIMEOUT_MS", "60000")
        .args(["up", "--json"])
        .arg(&p)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut up = Kill(cmd.spawn().expect("up"));
    wait_for_launch(&emu);
    // SIGKILL: nothing of `up` runs any more; the row has no instance id.
    let _ = up.0.kill();
    let _ = up.0.wait();
    let id = ctx.run(["ls", "--json"]).json()[0]["id"]
        .as_str()
        .expect("a session")
        .to_string();
    let mut down = command(&ctx, &emu);
    down.args(["down", &id, "--json"]);
    let d = run(down);
    assert_eq!(d.code, 0, "{}\n{}", d.stdout, d.stderr);
    assert!(
        billing(&emu).is_empty(),
        "found by its tag and terminated: {:?}",
        emu.instances()
    );
    assert_no_stopped_session_bills(&ctx, &emu);
}

#[test]
fn a_key_changed_between_launch_and_stop_never_confirms_the_stop() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    let c = Cloud {
        stop: "after_eval = false",
        ..after_eval("vast", "RTX 3090", None)
    };
    let p = plan(&ctx, &sshd, &c, free_port());
    let (mut up, id) = serving(&ctx, &emu, &p);
    let _ = up.0.kill();
    let _ = up.0.wait();
    // Another key: it could read the instance as "gone" where it is only invisible to it.
    let mut down = command(&ctx, &emu);
    down.env("VAST_API_KEY", "another-accounts-key")
        .args(["down", &id, "--json"]);
    let d = run(down);
    assert_eq!(d.code, 4, "{}\n{}", d.stdout, d.stderr);
    assert!(
        d.stdout.contains("another vast API key"),
        "the refusal names the cause: {}",
        d.stdout
    );
    assert!(!d.stdout.contains("another-accounts-key"), "never the key");
    assert_eq!(billing(&emu).len(), 1, "still billing, and said so");
    assert_no_stopped_session_bills(&ctx, &emu);
    // With the launching key back, the stop is confirmed.
    let mut down = command(&ctx, &emu);
    down.args(["down", &id, "--json"]);
    let d = run(down);
    assert_eq!(d.code, 0, "{}\n{}", d.stdout, d.stderr);
    assert!(billing(&emu).is_empty());
}

#[test]
fn a_host_in_args_is_refused_by_plan_check() {
    let ctx = Ctx::new();
    let p = ctx.write(
        "public.toml",
        format!(
            r#"schema = 1
[plan]
name = "public-args"
goal = "try to serve the inner port publicly"
route = "local_cpu"
[model]
id = "smollm2"
runtime = "command"
command = ["python3", "-m", "llama_cpp.server", "--port", "{{port}}"]
args = ["--host", "0.0.0.0"]
[instance]
provider = "local"
[stop]
max_duration = "10m"
after_eval = true
[fallback]
route = "none"
[access]
ports = [{{ local = {port}, remote = {port} }}]
[evidence]
copy_back = ["first_run.md"]
shutdown_proof = "process_exited"
"#,
            port = free_port()
        ),
    );
    let r = ctx.run(["plan".as_ref(), "check".as_ref(), p.as_os_str()]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("model.args"), "{all}");
    assert!(all.contains("--host"), "{all}");
}

/// SIGINT and SIGKILL to `up` at each step of a cloud session; after SIGKILL, `gpuctl down`
/// does what the daemon would. After each, against the emulator's ledger: no session is
/// `stopped` while its instance bills, and once the stop has run nothing bills at all
/// unless its session says `stop_unconfirmed`.
#[test]
fn kill_matrix_every_step_of_a_cloud_session() {
    use std::io::BufRead;
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    let steps = [
        "launch",
        "boot",
        "connect",
        "deploy",
        "load",
        "first_run",
        "eval",
        "serve",
        "stop",
        "terminate",
    ];
    for step in steps {
        for signal in [
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::Signal::SIGKILL,
        ] {
            let c = Cloud {
                stop: "after_eval = false",
                ..after_eval("vast", "RTX 3090", None)
            };
            let p = plan(&ctx, &sshd, &c, free_port());
            let mut cmd = command(&ctx, &emu);
            cmd.args(["up", "--json"])
                .arg(&p)
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            let mut up = Kill(cmd.spawn().expect("up"));
            let pid = nix::unistd::Pid::from_raw(up.0.id() as i32);
            let stdout = up.0.stdout.take().expect("stdout");
            let mut id = String::new();
            let mut lines = std::io::BufReader::new(stdout).lines();
            let mut signalled = false;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["event"] == "session" {
                    id = v["session_id"].as_str().unwrap_or_default().to_string();
                }
                if v["event"] == "step" && v["step"] == step {
                    let _ = nix::sys::signal::kill(pid, signal);
                    signalled = true;
                    break;
                }
                if v["event"] == "step"
                    && v["step"] == "serve"
                    && (step == "stop" || step == "terminate")
                {
                    // Serving: ask for the stop, then signal during it.
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                }
            }
            // Drain what is left so `up` never blocks on a full pipe.
            let drain = std::thread::spawn(move || lines.count());
            let _ = up.0.wait();
            let _ = drain.join();
            assert!(signalled, "{step}: the step never came");
            assert!(!id.is_empty(), "{step}: no session id");
            assert_no_stopped_session_bills(&ctx, &emu);
            // The daemon's part after SIGKILL (or a second look after SIGINT).
            let mut down = command(&ctx, &emu);
            down.args(["down", &id, "--json"]);
            let d = run(down);
            assert!(
                d.code == 0 || d.code == 4,
                "{step} {signal}: down {}\n{}",
                d.stdout,
                d.stderr
            );
            assert_no_stopped_session_bills(&ctx, &emu);
            let state = ctx.run(["status", &id, "--json"]).json()["session"]["state"].clone();
            if state != "stop_unconfirmed" {
                assert!(
                    billing(&emu).is_empty(),
                    "{step} {signal}: session {id} is {state} and something bills: {:?}",
                    emu.instances()
                );
            }
        }
    }
}
