//! Billing ends at the deadline with the laptop gone: on RunPod and Vast the agent holds
//! the instance's own scoped key (found where the provider puts it; here through the
//! GPUCTL_INSTANCE_ENV test hook, filled from the emulator's per-instance environment) and,
//! with `up` SIGKILLed and no daemon anywhere, terminates its own instance at the
//! deadline. Checked against the emulator's ledger: which key terminated it, and when.
//! The next `gpuctl down` confirms by read-back.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::emulator::{after_eval, plan, Cloud, Emulator};
use common::sshd::Sshd;
use common::{free_port, Ctx};

fn instance_of(emu: &Emulator) -> Option<serde_json::Value> {
    emu.instances().into_iter().next()
}

/// One session: `up` killed while serving; the ledger's terminate and its lateness.
fn killed_up_is_ended_by_the_agent(provider: &str, itype: &str) {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    let c = Cloud {
        stop: "after_eval = false",
        max_duration: "40s",
        ..after_eval(provider, itype, None)
    };
    let p = plan(&ctx, &sshd, &c, free_port());
    let mut cmd = ctx.command();
    emu.env(&mut cmd);
    cmd.env("GPUCTL_STOP_CONFIRM_WINDOW", "6s")
        .args(["up", "--json"])
        .arg(&p)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut up = cmd.spawn().expect("up");
    // The provider puts the instance's own key in its environment at creation.
    let start = Instant::now();
    let id = loop {
        if let Some(i) = instance_of(&emu) {
            break i["id"].as_str().expect("id").to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no instance");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (code, env) = emu.api("GET", &format!("/_emulator/instances/{id}/env"), "");
    assert_eq!(code, 200);
    std::fs::write(sshd.instance_env_file(), env).expect("instance env");
    // Serving: then the laptop goes away (SIGKILL, no daemon anywhere).
    let session = common::wait_serving(&ctx, Duration::from_secs(90));
    let sid = session["id"].as_str().expect("id").to_string();
    let status = ctx.run(["status", &sid, "--json"]).json();
    let layer1: Vec<String> = status["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "layer1")
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect();
    assert!(
        layer1
            .iter()
            .any(|m| m.contains("holds") && m.contains(&id)),
        "{layer1:?}"
    );
    let _ = up.kill();
    let _ = up.wait();
    let deadline: DateTime<Utc> = status["session"]["deadline"]
        .as_str()
        .expect("deadline")
        .parse()
        .expect("rfc3339");
    // Wait past the deadline for the agent's own terminate.
    let ended = loop {
        let i = instance_of(&emu).expect("instance");
        if !i["terminated_by"].is_null() {
            break i;
        }
        assert!(
            Utc::now() < deadline + chrono::Duration::seconds(30),
            "nothing terminated the instance after the deadline: {i}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ended["terminated_by"], "scoped key", "{ended}");
    let at: DateTime<Utc> = ended["terminate_requested_at"]
        .as_str()
        .expect("when")
        .parse()
        .expect("rfc3339");
    let late_ms = (at - deadline).num_milliseconds();
    eprintln!("layer 1 lateness {provider}: {late_ms} ms after the deadline");
    assert!(
        late_ms < 2000,
        "{provider}: terminated {late_ms} ms after the deadline"
    );
    // The next controller confirms by read-back, and the agent's answer is on record.
    let mut down = ctx.command();
    emu.env(&mut down);
    let d = common::Run::from(down.args(["down", &sid, "--json"]).output().expect("down"));
    assert!(d.code == 0, "{}\n{}", d.stdout, d.stderr);
    let after = ctx.run(["status", &sid, "--json"]).json();
    assert!(
        ["stopped", "failed"].contains(&after["session"]["state"].as_str().unwrap_or_default()),
        "{after:#}"
    );
    assert!(emu.instances().iter().all(|i| i["billing"] == false));
}

#[test]
fn runpod_with_up_killed_the_agent_terminates_its_pod_at_the_deadline() {
    killed_up_is_ended_by_the_agent("runpod", "NVIDIA GeForce RTX 4090");
}

#[test]
fn vast_with_up_killed_the_agent_destroys_its_instance_at_the_deadline() {
    killed_up_is_ended_by_the_agent("vast", "RTX 3090");
}
