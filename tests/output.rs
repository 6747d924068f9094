//! The output layer: one global `--json`, a closed stdout that never aborts a session, and
//! the agent's structured log.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{assert_no_panic, free_port, local_plan, Ctx};

#[test]
fn json_is_one_global_flag_and_commands_without_a_json_form_refuse_it() {
    let ctx = Ctx::new();
    // Before or after the subcommand: the same document.
    for args in [["--json", "ls"], ["ls", "--json"]] {
        let run = ctx.run(args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(run.json(), serde_json::json!([]));
    }
    let db = ctx.run(["db", "status", "--json"]).json();
    assert_eq!(db["backend"], "sqlite", "{db}");
    for args in [
        vec!["--json", "ssh"],
        vec!["completions", "bash", "--json"],
        vec!["man", "--json"],
        vec!["plan", "new", "--json"],
    ] {
        let run = ctx.run(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?} wrote {}", run.stdout);
        assert!(
            run.stderr.contains("writes no JSON") && run.stderr.contains("without --json"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_reader_that_goes_away_does_not_abort_up_the_session_still_stops_and_is_proven() {
    let ctx = Ctx::new();
    let plan = local_plan(&ctx, free_port(), "after_eval = true");
    let mut up = ctx
        .command()
        .args(["up", "--json"])
        .arg(&plan)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("up");
    // Read the first event, then close the pipe: every later write meets EPIPE.
    let mut first = String::new();
    BufReader::new(up.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    let out = up.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let ls = ctx.run(["ls", "--json"]).json();
    let s = &ls[0];
    assert_eq!(s["state"], "stopped", "{ls}");
    let bundle = std::path::PathBuf::from(s["evidence_dir"].as_str().expect("bundle"));
    let proof: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("shutdown_proof.json")).expect("proof"),
    )
    .expect("proof json");
    assert_eq!(proof["confirmed"], true, "{proof}");
}

#[test]
fn the_agent_log_is_structured_text_by_default_and_json_lines_on_request() {
    for json in [false, true] {
        let ctx = Ctx::new();
        let plan = local_plan(&ctx, free_port(), "after_eval = true");
        let mut cmd = ctx.command();
        if json {
            cmd.env("GPUCTL_LOG_FORMAT", "json");
        }
        let run = common::Run::from(cmd.arg("up").arg(&plan).output().expect("up"));
        assert_no_panic(&run);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let bundle = std::path::PathBuf::from(run.stdout.trim());
        let log = std::fs::read_to_string(bundle.join("agent.log")).expect("agent.log");
        let lines: Vec<&str> = log.lines().collect();
        assert!(lines.len() >= 3, "{log}");
        if json {
            for l in &lines {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
                assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
            }
            let start: serde_json::Value = serde_json::from_str(lines[0]).expect("first line");
            assert_eq!(start["fields"]["message"], "starting", "{log}");
            assert!(start["fields"]["deadline"].is_string(), "{log}");
        } else {
            for l in &lines {
                let mut words = l.split_whitespace();
                let stamp = words.next().unwrap_or_default();
                assert!(
                    chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
                    "no time stamp: {l}"
                );
                assert!(
                    matches!(words.next(), Some("INFO" | "WARN" | "ERROR")),
                    "no level: {l}"
                );
            }
            assert!(
                lines[0].contains("starting") && lines[0].contains(" deadline="),
                "the first line carries the session's fields: {}",
                lines[0]
            );
        }
    }
}
