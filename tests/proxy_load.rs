//! The agent's proxy in front of a supervised server under 64 concurrent streams: every
//! stream completes with its whole output in order, and the request log has one entry per
//! request with that output. The server is bench/sse_server.py, a synthetic
//! OpenAI-compatible server that streams a fixed pattern (no timing is asserted).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{free_port, repo_root, up_until_serving, Ctx};

const STREAMS: usize = 64;
const TOKENS: usize = 300;

fn plan(ctx: &Ctx, port: u16) -> std::path::PathBuf {
    let text = format!(
        r#"schema = 1
[plan]
name = "proxy-load"
goal = "64 streams through the agent's proxy"
route = "local_cpu"
[model]
id = "synthetic"
runtime = "command"
command = ["python3", "{server}", "{{port}}", "--host", "{{host}}", "--model", "{{model}}"]
[instance]
provider = "local"
[stop]
max_duration = "10m"
grace = "5s"
[fallback]
route = "none"
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
        server = repo_root().join("bench/sse_server.py").display(),
        evidence = ctx.path("bundles").display(),
    );
    ctx.write("proxy-load.toml", text)
}

fn expected() -> String {
    (0..TOKENS).map(|i| format!("t{i} ")).collect()
}

/// One streamed chat completion over HTTP/1.0 (the body runs to the connection's close):
/// the contents of its chunks joined, and whether it ended with `[DONE]`.
fn stream(port: u16, token: &str, n: usize) -> (String, bool) {
    let body = serde_json::json!({
        "model": "synthetic",
        "stream": true,
        "max_tokens": TOKENS,
        "messages": [{ "role": "user", "content": format!("stream-{n}") }],
    })
    .to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    let mut text = String::new();
    let mut done = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data).expect("a JSON chunk");
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    (text, done)
}

#[test]
fn sixty_four_concurrent_streams_through_the_proxy_all_complete_in_order_and_are_logged() {
    let ctx = Ctx::new();
    let port = free_port();
    let plan = plan(&ctx, port);
    let (mut up, id) = up_until_serving(ctx.command(), &plan);
    let token = std::fs::read_to_string(ctx.home().join("run").join(&id).join("token"))
        .expect("the session's token")
        .trim()
        .to_string();
    let streams: Vec<_> = (0..STREAMS)
        .map(|n| {
            let token = token.clone();
            std::thread::spawn(move || stream(port, &token, n))
        })
        .collect();
    let want = expected();
    for (n, t) in streams.into_iter().enumerate() {
        let (text, done) = t.join().expect("a stream's thread");
        assert!(done, "stream {n} did not end with [DONE]");
        assert_eq!(text, want, "stream {n} lost or reordered tokens");
    }
    let down = ctx.run(["down", &id]);
    assert_eq!(down.code, 0, "{}", down.stderr);
    let _ = up.wait();
    let status = ctx.run(["status", &id, "--json"]).json();
    let s = &status["session"];
    assert_eq!(s["state"], "stopped", "{status}");
    let bundle = std::path::PathBuf::from(s["evidence_dir"].as_str().expect("bundle"));
    let log = std::fs::read_to_string(bundle.join("requests.jsonl")).expect("requests.jsonl");
    let ours: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter(|r| r["prompt"].as_str().is_some_and(|p| p.contains("stream-")))
        .collect();
    assert_eq!(ours.len(), STREAMS, "one entry per stream:\n{log}");
    for r in &ours {
        assert_eq!(r["stream"], true, "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(
            r["output"],
            want.as_str(),
            "the logged output is whole: {r}"
        );
        assert_eq!(r["completion_tokens"], TOKENS, "{r}");
    }
    let mut prompts: Vec<String> = ours
        .iter()
        .filter_map(|r| r["prompt"].as_str().map(String::from))
        .collect();
    prompts.sort();
    prompts.dedup();
    assert_eq!(prompts.len(), STREAMS, "every stream logged once");
}
