//! The main job end to end: `gpuctl up` on the local route with the bundled model, its
//! evidence bundle, its proven stop; and the refusals that start nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{free_port, local_plan, port_refuses, repo_root, Ctx};

fn assert_bundle(bundle: &std::path::Path, expected: &[&str]) {
    assert_bundle_with(bundle, expected, true)
}

/// `final_record`: whether the agent lived long enough to write its own record (a stop in
/// its first milliseconds, before its signal handler exists, leaves only the exit status).
fn assert_bundle_with(bundle: &std::path::Path, expected: &[&str], final_record: bool) {
    for f in expected.iter().chain(
        [
            "shutdown_proof.json",
            "cost.json",
            "plan.toml",
            "gpu_plan.md",
            "MANIFEST.sha256",
            "agent.log",
        ]
        .iter(),
    ) {
        assert!(
            bundle.join(f).is_file(),
            "the bundle lacks {f}: {:?}",
            std::fs::read_dir(bundle).map(|d| d.count())
        );
    }
    let check = std::process::Command::new("sha256sum")
        .arg("-c")
        .arg("MANIFEST.sha256")
        .current_dir(bundle)
        .output()
        .expect("sha256sum");
    assert!(
        check.status.success(),
        "sha256sum -c refused the manifest:\n{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let proof: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("shutdown_proof.json")).expect("proof"),
    )
    .expect("json");
    assert_eq!(proof["confirmed"], true, "{proof:#}");
    assert!(proof["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .any(|c| c["check"] == "port_closed" && c["passed"] == true));
    if final_record {
        assert!(
            proof["agent_final_record"]["stopped_at"].is_string(),
            "the agent's final record is in the proof"
        );
    }
}

#[test]
fn up_on_the_bundled_plan_ends_by_itself_with_a_complete_bundle() {
    let ctx = Ctx::new();
    // The plan the README runs first, as it is (port 8000, after_eval = true).
    let run = ctx.run(["up", "--json", "plans/local-cpu.toml"]);
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let result = common::result_event(&run.stdout);
    assert_eq!(result["state"], "stopped");
    let bundle = std::path::PathBuf::from(result["bundle"].as_str().expect("bundle path"));
    assert!(
        bundle.starts_with(ctx.home()),
        "bundles land in GPUCTL_HOME by default"
    );
    assert_bundle(
        &bundle,
        &[
            "environment_report.txt",
            "first_run.md",
            "eval_results.csv",
            "requests.jsonl",
        ],
    );
    assert!(port_refuses(8000), "the agent's port is still open");

    let csv = std::fs::read_to_string(bundle.join("eval_results.csv")).expect("csv");
    assert!(csv.starts_with("id,prompt,output,pass,reason,latency_ms,tokens,tokens_per_s\n"));
    assert_eq!(csv.lines().count(), 3, "two cases and a header");
    let first = std::fs::read_to_string(bundle.join("first_run.md")).expect("first run");
    for s in [
        "model:",
        "command:",
        "## Prompt",
        "## Output",
        "latency:",
        "memory",
    ] {
        assert!(first.contains(s), "first_run.md lacks {s:?}");
    }
    let env = std::fs::read_to_string(bundle.join("environment_report.txt")).expect("env");
    assert!(
        env.contains("no NVIDIA GPU visible") || env.contains("gpus:"),
        "{env}"
    );

    // The database agrees, and keeps the evidence manifest.
    let status = ctx.run([
        "status",
        "--json",
        result["session_id"].as_str().expect("id"),
    ]);
    let doc = status.json();
    assert_eq!(doc["session"]["state"], "stopped");
    assert_eq!(doc["session"]["plan_name"], "local-cpu-smollm2");
    assert!(
        doc["session"]["plan_git_commit"].is_string()
            || doc["session"]["plan_git_commit"].is_null()
    );
    let states: Vec<&str> = doc["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["state"].as_str())
        .collect();
    assert_eq!(
        states,
        [
            "planned",
            "provisioning",
            "connecting",
            "deploying",
            "serving",
            "collecting",
            "stopping",
            "stopped"
        ]
    );
    // The token file is gone after the stop.
    let run_dir = ctx
        .home()
        .join("run")
        .join(result["session_id"].as_str().expect("id"));
    assert!(!run_dir.join("token").exists());
}

#[test]
fn ctrl_c_at_any_step_still_ends_stopped_and_proven() {
    let ctx = Ctx::new();
    for stop_at in ["deploy", "load", "first_run"] {
        let port = free_port();
        let plan = local_plan(&ctx, port, "");
        let mut child = ctx
            .command()
            .args(["up", "--json"])
            .arg(&plan)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn up");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut seen = Vec::new();
        for line in lines.by_ref() {
            let line = line.expect("line");
            seen.push(line.clone());
            if line.contains(&format!("\"step\":\"{stop_at}\"")) {
                break;
            }
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT");
        seen.extend(lines.map_while(Result::ok));
        let status = child.wait().expect("wait");
        let stdout = seen.join("\n");
        assert_eq!(status.code(), Some(0), "interrupted at {stop_at}: {stdout}");
        let result = common::result_event(&stdout);
        assert_eq!(result["state"], "stopped", "{stdout}");
        assert!(
            result["stop_reason"]
                .as_str()
                .unwrap_or("")
                .contains("interrupted")
                || result["stop_reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("after_eval")
        );
        let bundle = std::path::PathBuf::from(result["bundle"].as_str().expect("bundle"));
        assert_bundle_with(&bundle, &[], stop_at == "first_run");
        assert!(
            port_refuses(port),
            "port {port} still open after Ctrl+C at {stop_at}"
        );
    }
}

#[test]
fn a_missing_model_is_refused_naming_the_path_and_the_fix() {
    let ctx = Ctx::new();
    let port = free_port();
    let plan = local_plan(&ctx, port, "");
    let text = std::fs::read_to_string(&plan).expect("read").replace(
        &common::model_path().display().to_string(),
        "models/nope.gguf",
    );
    let plan = ctx.write("missing-model.toml", text);
    let run = ctx.run(["up".as_ref(), plan.as_os_str()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("models/nope.gguf") && run.stderr.contains("scripts/fetch-model.sh"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("nothing was started"));
    assert_eq!(
        ctx.run(["ls", "--json"]).json(),
        serde_json::json!([]),
        "a refused plan records no session"
    );

    let corrupt = ctx.write("corrupt.gguf", b"this is not a model");
    let text = std::fs::read_to_string(&plan)
        .expect("read")
        .replace("models/nope.gguf", &corrupt.display().to_string());
    let plan = ctx.write("corrupt-model.toml", text);
    let run = ctx.run(["up".as_ref(), plan.as_os_str()]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("not a GGUF file"), "{}", run.stderr);
}

#[test]
fn a_taken_port_is_refused_before_anything_starts() {
    let ctx = Ctx::new();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let plan = local_plan(&ctx, port, "");
    let run = ctx.run(["up".as_ref(), plan.as_os_str()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("127.0.0.1:{port} is already in use")),
        "{}",
        run.stderr
    );
    assert_eq!(ctx.run(["ls", "--json"]).json(), serde_json::json!([]));
}

#[test]
fn a_refused_plan_starts_nothing() {
    let ctx = Ctx::new();
    let run = ctx.run(["up", "tests/refused/missing-hard-stop.toml"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("no hard stop"));
    assert_eq!(ctx.run(["ls", "--json"]).json(), serde_json::json!([]));
    let _ = repo_root();
}

#[test]
fn a_plan_asking_for_more_gpus_than_the_host_has_is_refused() {
    let ctx = Ctx::new();
    let plan = local_plan(&ctx, free_port(), "");
    let text = std::fs::read_to_string(&plan)
        .expect("read")
        .replace("provider = \"local\"", "provider = \"local\"\ngpus = 2");
    let plan = ctx.write("two-gpus.toml", text);
    let run = ctx.run(["up".as_ref(), plan.as_os_str()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    // This machine has no GPU; on a GPU host the message names how many it has.
    assert!(
        run.stderr.contains("asks for 2 GPU(s)") && run.stderr.contains("nothing was started"),
        "{}",
        run.stderr
    );
    assert_eq!(ctx.run(["ls", "--json"]).json(), serde_json::json!([]));
}

#[test]
fn evidence_verify_accepts_a_bundle_and_names_a_tampered_file() {
    let ctx = Ctx::new();
    let plan = local_plan(&ctx, free_port(), "after_eval = true");
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), plan.as_os_str()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = common::result_event(&run.stdout);
    let id = r["session_id"].as_str().expect("id").to_string();
    let ok = ctx.run(["evidence", &id, "verify"]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.contains("intact"));
    let shown = ctx.run(["evidence", "--json", &id]).json();
    assert_eq!(shown["bundle"], r["bundle"]);

    let bundle = std::path::PathBuf::from(r["bundle"].as_str().expect("bundle"));
    std::fs::write(bundle.join("eval_results.csv"), "id,pass\ncapital,true\n").expect("tamper");
    let bad = ctx.run(["evidence", &id, "verify"]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr
            .contains("eval_results.csv: changed since the session"),
        "{}",
        bad.stderr
    );
    std::fs::remove_file(bundle.join("first_run.md")).expect("rm");
    let bad = ctx.run(["evidence", "--json", &id, "verify"]).json();
    let files: Vec<&str> = bad["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|p| p["file"].as_str())
        .collect();
    assert!(
        files.contains(&"first_run.md") && files.contains(&"eval_results.csv"),
        "{files:?}"
    );
}
