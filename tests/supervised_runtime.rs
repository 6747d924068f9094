//! A third-party OpenAI-compatible server supervised by the agent (runtime = "command"),
//! tested with a real one: llama.cpp's server from llama-cpp-python, on the same GGUF.
//! Its out-of-memory failure is a real one too: a context too large to allocate.

mod common;

use common::{free_port, model_path, port_refuses, Ctx};

fn plan(ctx: &Ctx, port: u16, marker: &str, args: &str, if_oom: &str) -> std::path::PathBuf {
    let text = format!(
        r#"schema = 1
[plan]
name = "supervised-llama-cpp"
goal = "serve through a supervised third-party server"
route = "local_cpu"
[model]
id = "{marker}"
runtime = "command"
command = ["python3", "-m", "llama_cpp.server", "--model", "{model}", "--model_alias", "{{model}}", "--host", "{{host}}", "--port", "{{port}}", "--n_threads", "2"]
args = {args}
[instance]
provider = "local"
[stop]
max_duration = "10m"
grace = "5s"
after_eval = true
[fallback]
route = "none"
{if_oom}
[access]
ports = [{{ local = {port}, remote = {port} }}]
[evidence]
copy_back = ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl"]
shutdown_proof = "process_exited"
dir = "{evidence}"
[[eval.case]]
id = "digits"
prompt = "What is 2 + 2?"
expect_regex = "\\d"
max_tokens = 8
"#,
        model = model_path().display(),
        evidence = ctx.path("bundles").display(),
    );
    ctx.write(&format!("{marker}.toml"), text)
}

/// Whether any process still runs with `marker` in its command line.
fn process_with(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()).any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(marker))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

#[test]
fn a_supervised_server_serves_through_the_agent_and_is_stopped() {
    let ctx = Ctx::new();
    let port = free_port();
    let marker = format!("llama-cpp-{port}");
    let p = plan(&ctx, port, &marker, r#"["--n_ctx", "2048"]"#, "");
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), p.as_os_str()]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = common::result_event(&run.stdout);
    assert_eq!(r["state"], "stopped");
    let bundle = std::path::PathBuf::from(r["bundle"].as_str().expect("bundle"));
    let log = std::fs::read_to_string(bundle.join("requests.jsonl")).expect("requests.jsonl");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(
        lines.len() >= 2,
        "first run and the eval case are logged: {log}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["status"] == 200 && l["completion_tokens"].as_u64().unwrap_or(0) > 0),
        "{log}"
    );
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("final_record.json")).expect("record"),
    )
    .expect("json");
    assert!(
        record["stopped"].to_string().contains("server pid"),
        "{record}"
    );
    assert!(port_refuses(port));
    assert!(
        !process_with(&marker),
        "the supervised server outlived the session"
    );
    let agent_log = std::fs::read_to_string(bundle.join("agent.log")).expect("agent.log");
    assert!(
        agent_log.contains("llama_cpp.server"),
        "the server's command line is in agent.log"
    );
}

#[test]
fn out_of_memory_at_load_is_reported_and_fallback_if_oom_takes_over() {
    let ctx = Ctx::new();
    let port = free_port();
    let marker = format!("llama-oom-{port}");
    // 50M tokens of KV cache cannot be allocated: a real OOM from the real server.
    let p = plan(
        &ctx,
        port,
        &marker,
        r#"["--n_ctx", "50000000"]"#,
        &format!(r#"if_oom = {{ model = "{marker}-small", args = ["--n_ctx", "2048"] }}"#),
    );
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), p.as_os_str()]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("out of memory at model load"),
        "{}",
        run.stdout
    );
    let r = common::result_event(&run.stdout);
    let bundle = std::path::PathBuf::from(r["bundle"].as_str().expect("bundle"));
    let failed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("final_record-oom-attempt.json")).expect("oom record"),
    )
    .expect("json");
    assert_eq!(failed["out_of_memory"], true);
    assert_eq!(failed["reason"], "server_failed");
    let first = std::fs::read_to_string(bundle.join("first_run.md")).expect("first run");
    assert!(
        first.contains(&format!("{marker}-small")),
        "first_run.md names the fallback model: {first}"
    );
    let status = ctx
        .run(["status", "--json", r["session_id"].as_str().expect("id")])
        .json();
    assert!(status["events"]
        .as_array()
        .expect("events")
        .iter()
        .any(|e| e["kind"] == "fallback"));
    assert!(!process_with(&marker));

    // Without if_oom the session fails, says why, and is still stopped and proven.
    let port = free_port();
    let marker = format!("llama-oom-nofallback-{port}");
    let p = plan(&ctx, port, &marker, r#"["--n_ctx", "50000000"]"#, "");
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), p.as_os_str()]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let r = common::result_event(&run.stdout);
    assert_eq!(r["state"], "failed");
    assert!(
        r["failure"]
            .as_str()
            .unwrap_or("")
            .contains("out of memory"),
        "{r}"
    );
    let bundle = std::path::PathBuf::from(r["bundle"].as_str().expect("bundle"));
    let proof: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("shutdown_proof.json")).expect("proof"),
    )
    .expect("json");
    assert_eq!(proof["confirmed"], true);
    assert!(!process_with(&marker));
}
