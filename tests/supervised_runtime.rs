//! A third-party OpenAI-compatible server supervised by the agent (runtime = "command"),
//! tested with a real one: llama.cpp's server from llama-cpp-python, on the same GGUF.
//! Its out-of-memory failure is a real one too: a context too large to allocate.

mod common;

use common::{free_port, model_path, port_refuses, Ctx};

/// llama.cpp's server on the bundled GGUF, as a plan's `command`.
fn llama_cpp_command() -> String {
    format!(
        r#"["python3", "-m", "llama_cpp.server", "--model", "{}", "--model_alias", "{{model}}", "--host", "{{host}}", "--port", "{{port}}", "--n_threads", "2"]"#,
        model_path().display()
    )
}

fn plan(ctx: &Ctx, port: u16, marker: &str, args: &str, if_oom: &str) -> std::path::PathBuf {
    plan_with(ctx, port, marker, &llama_cpp_command(), args, if_oom)
}

fn plan_with(
    ctx: &Ctx,
    port: u16,
    marker: &str,
    command: &str,
    args: &str,
    if_oom: &str,
) -> std::path::PathBuf {
    let text = format!(
        r#"schema = 1
[plan]
name = "supervised-llama-cpp"
goal = "serve through a supervised third-party server"
route = "local_cpu"
[model]
id = "{marker}"
runtime = "command"
command = {command}
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
        evidence = ctx.path("bundles").display(),
    );
    ctx.write(&format!("{marker}.toml"), text)
}

/// `up`'s result, or a panic that says why the session failed: the failure `up` recorded
/// (a supervised server's signal and last output lines) and the end of `agent.log`.
fn expect_up(run: &common::Run, code: i32) -> serde_json::Value {
    if run.code == code {
        return common::result_event(&run.stdout);
    }
    let result = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "result");
    let Some(r) = result else {
        panic!(
            "up exited {} (expected {code}) without a result:\n{}\n{}",
            run.code, run.stdout, run.stderr
        );
    };
    let log = r["bundle"]
        .as_str()
        .and_then(|b| std::fs::read_to_string(std::path::Path::new(b).join("agent.log")).ok())
        .unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    panic!(
        "up exited {} (expected {code}), state {}: {}\n--- agent.log (last lines) ---\n{}",
        run.code,
        r["state"],
        r["failure"].as_str().unwrap_or("no failure recorded"),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
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
    let r = expect_up(&run, 0);
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
    let r = expect_up(&run, 0);
    assert!(
        run.stdout.contains("out of memory at model load"),
        "{}",
        run.stdout
    );
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
    let r = expect_up(&run, 1);
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

/// An OpenAI-compatible server that answers `/v1/models`, then dies of SIGSEGV on the first
/// completion request: what a llama.cpp build with the wrong instruction set does.
const CRASHING_SERVER: &str = r#"import json, os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        print("llama_decode: about to crash on a multi-token prompt", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

#[test]
fn a_server_killed_by_sigsegv_is_named_in_the_failure_and_agent_log() {
    let ctx = Ctx::new();
    let port = free_port();
    let marker = format!("segv-{port}");
    let script = ctx.write(&format!("{marker}.py"), CRASHING_SERVER);
    let command = format!(r#"["python3", "{}", "{{port}}"]"#, script.display());
    let p = plan_with(&ctx, port, &marker, &command, "[]", "");
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), p.as_os_str()]);
    let r = expect_up(&run, 1);
    assert_eq!(r["state"], "failed", "{r}");
    let failure = r["failure"].as_str().unwrap_or("");
    assert!(
        failure.contains("killed by signal 11 (SIGSEGV"),
        "the failure names the signal: {failure}"
    );
    assert!(
        failure.contains("about to crash"),
        "the failure carries the server's last lines: {failure}"
    );
    let bundle = std::path::PathBuf::from(r["bundle"].as_str().expect("bundle"));
    let agent_log = std::fs::read_to_string(bundle.join("agent.log")).expect("agent.log");
    assert!(
        agent_log.contains("SIGSEGV"),
        "agent.log names the signal:\n{agent_log}"
    );
    let proof: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("shutdown_proof.json")).expect("proof"),
    )
    .expect("json");
    assert_eq!(
        proof["confirmed"], true,
        "a failed session is still stopped"
    );
    assert!(port_refuses(port));
    assert!(!process_with(&marker));
}

/// An OpenAI-compatible server that takes 20 s to exit after SIGTERM, with a worker in its
/// process group that ignores SIGTERM altogether (vLLM's engine core is such another PID).
const SLOW_SERVER: &str = r#"import json, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
marker = sys.argv[2]
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)", marker + "-worker"])
signal.signal(signal.SIGTERM, lambda *a: time.sleep(20))
class H(BaseHTTPRequestHandler):
    def send(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.send({"object": "list", "data": [{"id": "m", "object": "model"}]})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send({"id": "c", "object": "chat.completion", "model": "m",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

#[test]
fn a_server_slow_to_exit_and_its_workers_leave_nothing_behind() {
    let ctx = Ctx::new();
    let port = free_port();
    let marker = format!("slow-exit-{port}");
    let script = ctx.write(&format!("{marker}.py"), SLOW_SERVER);
    let command = format!(
        r#"["python3", "{}", "{{port}}", "{marker}"]"#,
        script.display()
    );
    let p = plan_with(&ctx, port, &marker, &command, "[]", "");
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), p.as_os_str()]);
    let r = expect_up(&run, 0);
    assert_eq!(r["state"], "stopped");
    assert!(
        !process_with(&marker),
        "a process of the server's group outlived the session"
    );
    let bundle = std::path::PathBuf::from(r["bundle"].as_str().expect("bundle"));
    let proof: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("shutdown_proof.json")).expect("proof"),
    )
    .expect("json");
    assert_eq!(proof["confirmed"], true, "{proof:#}");
    let stopped = proof["agent_final_record"]["stopped"].to_string();
    assert!(
        stopped.contains("ignored SIGTERM; killed"),
        "the proof names what was killed: {stopped}"
    );
}
