//! Lambda, RunPod and Vast end to end against the cloud emulator (the only stand-in, a test
//! tool in providers/emulator): its instances are reached at the test's real sshd, so each
//! session launches, deploys over SSH, evaluates, collects, terminates and reads the
//! instance back. Faults: no capacity, terminate failing, terminate never completing,
//! a launch that times out after creating, a revoked key, orphans, credentials.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::emulator::{after_eval, gpuctl, plan, Cloud, Emulator};
use common::sshd::Sshd;
use common::{free_port, port_refuses, Ctx};

fn proof_of(result: &serde_json::Value) -> serde_json::Value {
    let bundle = std::path::PathBuf::from(result["bundle"].as_str().expect("bundle"));
    serde_json::from_str(
        &std::fs::read_to_string(bundle.join("shutdown_proof.json")).expect("proof"),
    )
    .expect("proof JSON")
}

fn provider_check(proof: &serde_json::Value) -> serde_json::Value {
    proof["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == "provider_terminated")
        .cloned()
        .unwrap_or_else(|| panic!("no provider_terminated check: {proof:#}"))
}

#[test]
fn each_emulated_cloud_runs_a_whole_session_and_the_terminate_is_read_back() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    for (provider, itype, region, price, per_minute) in [
        ("lambda", "gpu_1x_a10", Some("us-east-1"), 0.75, true),
        ("runpod", "NVIDIA GeForce RTX 4090", None, 0.69, false),
        ("vast", "RTX 3090", None, 0.22, false),
    ] {
        let port = free_port();
        let p = plan(&ctx, &sshd, &after_eval(provider, itype, region), port);
        let run = gpuctl(&ctx, &emu, &["up", "--json", p.to_str().expect("path")]);
        assert_eq!(run.code, 0, "{provider}: {}\n{}", run.stdout, run.stderr);
        let r = common::result_event(&run.stdout);
        assert_eq!(r["state"], "stopped", "{provider}");
        let proof = proof_of(&r);
        assert_eq!(proof["confirmed"], true, "{provider}: {proof:#}");
        assert_eq!(provider_check(&proof)["passed"], true);
        assert!(port_refuses(port), "{provider}: the tunnel port is closed");
        let calls = r["provider_api_calls"]["session"]
            .as_u64()
            .expect("API calls counted");
        assert!(
            calls >= 3,
            "{provider}: launch, read-back, terminate at least: {calls}"
        );

        // The emulator's own books: the instance is terminated and no longer bills.
        let id = r["session_id"].as_str().expect("id");
        let status = ctx.run(["status", id, "--json"]).json();
        let s = &status["session"];
        let instance_id = s["instance_id"].as_str().expect("instance id");
        let inst = emu
            .instances()
            .into_iter()
            .find(|i| i["id"] == instance_id)
            .expect("the emulator knows the instance");
        assert_eq!(inst["phase"], "terminated", "{provider}: {inst:#}");
        assert_eq!(inst["billing"], false);
        assert_eq!(
            inst["name"],
            format!("gpuctl-{id}"),
            "tagged with its session"
        );
        assert_eq!(
            s["price_usd_per_hour"].as_f64(),
            Some(price),
            "the quoted price is billed"
        );
        assert_eq!(s["catalog_price_usd_per_hour"].as_f64(), Some(price));

        // Cost, computed here from the recorded times at the provider's granularity.
        let t =
            |k: &str| chrono::DateTime::parse_from_rfc3339(s[k].as_str().expect(k)).expect("time");
        let ms = (t("ended_at") - t("launched_at")).num_milliseconds();
        let unit = if per_minute { 60_000 } else { 1_000 };
        let billed_s = ((ms + unit - 1) / unit * unit) as f64 / 1000.0;
        let expected = (price * billed_s / 3600.0 * 100.0).round() / 100.0;
        assert_eq!(s["cost_usd"].as_f64(), Some(expected), "{provider}: {s:#}");
    }
}

#[test]
fn no_capacity_falls_back_in_the_plans_order_and_says_so() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    emu.call(
        "POST",
        "/_emulator/capacity",
        &serde_json::json!({ "provider": "vast", "instance_type": "RTX 3090", "available": false }),
    );
    let c = Cloud {
        fallbacks: &["vast:RTX 4090"],
        ..after_eval("vast", "RTX 3090", None)
    };
    let p = plan(&ctx, &sshd, &c, free_port());
    let run = gpuctl(&ctx, &emu, &["up", "--json", p.to_str().expect("path")]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = common::result_event(&run.stdout);
    let id = r["session_id"].as_str().expect("id");
    let status = ctx.run(["status", id, "--json"]).json();
    assert_eq!(status["session"]["instance_type"], "RTX 4090");
    let events: Vec<String> = status["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "fallback")
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect();
    assert!(events.iter().any(|m| m.contains("RTX 4090")), "{events:?}");
}

#[test]
fn nothing_anywhere_fails_naming_the_fallback_route_and_launches_nothing() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    emu.fault("runpod", "launch", "capacity", 5);
    let p = plan(
        &ctx,
        &sshd,
        &after_eval("runpod", "NVIDIA RTX A5000", None),
        free_port(),
    );
    let run = gpuctl(&ctx, &emu, &["up", "--json", p.to_str().expect("path")]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let r = common::result_event(&run.stdout);
    let failure = r["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("no capacity") && failure.contains("local_cpu"),
        "{failure}"
    );
    assert!(emu.instances().is_empty());
}

#[test]
fn a_terminate_answering_500_three_times_is_retried_until_the_read_back_confirms() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    emu.fault("runpod", "terminate", "http500", 3);
    let p = plan(
        &ctx,
        &sshd,
        &after_eval("runpod", "NVIDIA RTX A5000", None),
        free_port(),
    );
    let run = gpuctl(&ctx, &emu, &["up", "--json", p.to_str().expect("path")]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = common::result_event(&run.stdout);
    assert_eq!(r["state"], "stopped");
    assert_eq!(provider_check(&proof_of(&r))["passed"], true);
    assert!(emu.instances().iter().all(|i| i["billing"] == false));
}

#[test]
fn a_terminate_that_never_completes_stays_unconfirmed_until_the_daemon_gets_a_read_back() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    emu.fault("vast", "terminate", "never_complete", 1);
    let p = plan(
        &ctx,
        &sshd,
        &after_eval("vast", "RTX 3090", None),
        free_port(),
    );
    let run = gpuctl(&ctx, &emu, &["up", "--json", p.to_str().expect("path")]);
    assert_eq!(run.code, 4, "{}\n{}", run.stdout, run.stderr);
    let r = common::result_event(&run.stdout);
    assert_eq!(r["state"], "stop_unconfirmed");
    let check = provider_check(&proof_of(&r));
    assert_eq!(check["passed"], false);
    assert!(
        check["answer"]
            .as_str()
            .unwrap_or_default()
            .contains("may still bill"),
        "{check:#}"
    );
    assert!(
        emu.instances().iter().any(|i| i["billing"] == true),
        "it still bills"
    );
    let ls = ctx.run(["ls"]);
    let first = ls.stdout.lines().nth(1).unwrap_or_default();
    assert!(
        first.contains("STOP_UNCONFIRMED"),
        "first in ls:\n{}",
        ls.stdout
    );
    assert!(ls.stderr.contains("may still bill"));

    // The daemon retries with backoff and records the stop only after the read-back.
    let id = r["session_id"].as_str().expect("id").to_string();
    let mut cmd = ctx.command();
    emu.env(&mut cmd);
    let mut daemon = cmd
        .args(["daemon"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let start = Instant::now();
    let status = loop {
        let s = ctx.run(["status", &id, "--json"]).json();
        if s["session"]["state"] == "stopped" {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = daemon.kill();
            panic!("the daemon did not confirm the stop: {s:#}");
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(status["session"]["stop_attempts"].as_u64().unwrap_or(0) >= 1);
    assert!(emu.instances().iter().all(|i| i["billing"] == false));
}

#[test]
fn a_launch_that_times_out_after_creating_leaves_no_orphan() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    emu.fault("runpod", "launch", "created_then_timeout", 1);
    let p = plan(
        &ctx,
        &sshd,
        &after_eval("runpod", "NVIDIA RTX A5000", None),
        free_port(),
    );
    let mut cmd = ctx.command();
    emu.env(&mut cmd);
    let out = cmd
        .env("GPUCTL_API_TIMEOUT_MS", "2000")
        .args(["up", "--json"])
        .arg(&p)
        .output()
        .expect("up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let r = common::result_event(&stdout);
    assert!(
        r["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{r:#}"
    );
    assert_eq!(
        provider_check(&proof_of(&r))["passed"],
        true,
        "found and terminated"
    );
    let instances = emu.instances();
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0]["billing"], false, "no orphan: {instances:?}");
    let orphans = gpuctl(&ctx, &emu, &["ls", "--orphans", "--json"]);
    assert_eq!(orphans.code, 0, "{}", orphans.stderr);
    assert_eq!(orphans.json(), serde_json::json!([]));
}

#[test]
fn a_revoked_key_is_loud_the_agent_stops_anyway_and_down_finishes_once_it_is_back() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    let port = free_port();
    let c = Cloud {
        stop: "",
        ..after_eval("vast", "RTX 3090", None)
    };
    let p = plan(&ctx, &sshd, &c, port);
    let mut cmd = ctx.command();
    emu.env(&mut cmd);
    cmd.env("GPUCTL_STOP_CONFIRM_WINDOW", "4s");
    let mut up = cmd
        .args(["up", "--json"])
        .arg(&p)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("up");
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(up.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        let serving = line.contains("\"step\":\"serve\"");
        seen.push(line);
        if serving {
            break;
        }
    }
    emu.call(
        "POST",
        "/_emulator/revoke",
        &serde_json::json!({ "provider": "vast", "revoked": true }),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    seen.extend(lines.map_while(Result::ok));
    let status = up.wait().expect("up");
    let stdout = seen.join("\n");
    assert_eq!(status.code(), Some(4), "{stdout}");
    let r = common::result_event(&stdout);
    let proof = proof_of(&r);
    assert!(
        provider_check(&proof)["answer"]
            .as_str()
            .unwrap_or_default()
            .contains("refused the API key"),
        "{proof:#}"
    );
    // The agent itself was stopped over SSH: serving ended although the API refused us.
    let exited = proof["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == "process_exited")
        .expect("process check");
    assert_eq!(exited["passed"], true);
    assert!(port_refuses(port));

    emu.call(
        "POST",
        "/_emulator/revoke",
        &serde_json::json!({ "provider": "vast", "revoked": false }),
    );
    let id = r["session_id"].as_str().expect("id");
    let down = gpuctl(&ctx, &emu, &["down", id]);
    assert_eq!(down.code, 0, "{}\n{}", down.stdout, down.stderr);
    assert!(down.stdout.contains("stopped"), "{}", down.stdout);
    assert!(emu.instances().iter().all(|i| i["billing"] == false));
}

#[test]
fn ls_orphans_lists_tagged_instances_that_no_live_session_owns() {
    let ctx = Ctx::new();
    let emu = Emulator::start(22, &[]);
    emu.call(
        "POST",
        "/_emulator/instances",
        &serde_json::json!({ "provider": "vast", "instance_type": "RTX 3090", "count": 1, "name_prefix": "gpuctl-20990101-000000-abcde" }),
    );
    emu.call(
        "POST",
        "/_emulator/instances",
        &serde_json::json!({ "provider": "vast", "instance_type": "RTX 3090", "count": 1, "name_prefix": "someone-elses-" }),
    );
    let run = gpuctl(&ctx, &emu, &["ls", "--orphans", "--json"]);
    assert_eq!(run.code, 4, "an orphan is an alarm: {}", run.stderr);
    let list = run.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list:#}");
    assert_eq!(list[0]["provider"], "vast");
    assert_eq!(list[0]["name"], "gpuctl-20990101-000000-abcde0");
    assert!(list[0]["session_id"].is_null());
}

#[test]
fn keys_and_budgets_are_checked_before_anything_is_launched() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    let p = plan(
        &ctx,
        &sshd,
        &after_eval("vast", "RTX 3090", None),
        free_port(),
    );

    // No key anywhere.
    let mut cmd = ctx.command();
    cmd.env("GPUCTL_VAST_API", format!("{}/vast/api/v0", emu.url));
    let out = cmd.args(["up"]).arg(&p).output().expect("up");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("VAST_API_KEY") && err.contains("credentials.toml"),
        "{err}"
    );

    // A credentials file others can read is refused, naming the fix; 0600 is accepted.
    let creds = ctx.write(
        "xdg-config/gpuctl/credentials.toml",
        format!("[vast]\napi_key = \"{}\"\n", emu.key),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut cmd = ctx.command();
    cmd.env("GPUCTL_VAST_API", format!("{}/vast/api/v0", emu.url));
    let out = cmd.args(["up"]).arg(&p).output().expect("up");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(&emu.key), "the key is never printed");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut cmd = ctx.command();
    cmd.env("GPUCTL_VAST_API", format!("{}/vast/api/v0", emu.url));
    let out = cmd.args(["up", "--json"]).arg(&p).output().expect("up");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = std::fs::read(ctx.home().join("sessions.db")).expect("db");
    assert!(
        !db.windows(emu.key.len()).any(|w| w == emu.key.as_bytes()),
        "the key is not stored in the database"
    );

    // Over budget in the catalog: refused before any launch.
    let before = emu.instances().len();
    let cheap = Cloud {
        hourly: 0.10,
        ..after_eval("vast", "RTX 3090", None)
    };
    let p = plan(&ctx, &sshd, &cheap, free_port());
    let run = gpuctl(&ctx, &emu, &["up", p.to_str().expect("path")]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("above budget.hourly_usd"),
        "{}",
        run.stderr
    );
    assert_eq!(emu.instances().len(), before, "nothing launched");
}

#[test]
fn up_fallback_runs_the_local_cpu_route_at_once_when_nothing_has_capacity() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    emu.fault("vast", "launch", "capacity", 5);
    let p = plan(
        &ctx,
        &sshd,
        &after_eval("vast", "RTX 3090", None),
        free_port(),
    );
    let without = gpuctl(&ctx, &emu, &["up", "--json", p.to_str().expect("path")]);
    assert_eq!(without.code, 1);
    assert!(
        without.stdout.contains("up --fallback"),
        "{}",
        without.stdout
    );
    emu.fault("vast", "launch", "capacity", 5);
    let run = gpuctl(
        &ctx,
        &emu,
        &["up", "--json", "--fallback", p.to_str().expect("path")],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    // Two results: the cloud session that found no capacity, then the local_cpu run.
    let results: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "result")
        .collect();
    assert_eq!(results.len(), 2, "{}", run.stdout);
    assert_eq!(results[0]["state"], "failed");
    let r = &results[1];
    assert_eq!(r["state"], "stopped");
    let s = ctx
        .run(["status", r["session_id"].as_str().expect("id"), "--json"])
        .json();
    assert_eq!(s["session"]["route"], "local_cpu");
    assert_eq!(s["session"]["plan_name"], "cloud-vast-local-cpu");
    let ls = ctx.run(["ls", "--json"]).json();
    assert_eq!(
        ls.as_array().map(Vec::len),
        Some(3),
        "two failed cloud attempts and the local run"
    );
}
