//! gpuctl-agent on its own: the OpenAI-compatible API (checked with OpenAI's own Python
//! client), its errors, and the watchdog that stops it at the deadline with no controller.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{free_port, port_refuses, AgentProc, Ctx};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    gpuctl_providers::install_tls();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

async fn post(agent: &AgentProc, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = client().post(format!("{}{path}", agent.url())).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_speaks_openai_and_refuses_what_it_must() {
    let ctx = Ctx::new();
    let agent = AgentProc::start(
        &ctx,
        free_port(),
        Utc::now() + chrono::Duration::minutes(10),
    );
    let t = Some(agent.token.as_str());

    // Every route needs the token, /health included.
    for path in ["/health", "/v1/models"] {
        let resp = client()
            .get(format!("{}{path}", agent.url()))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 401, "{path}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    let (status, body) = post(
        &agent,
        "/v1/chat/completions",
        Some("wrong-token-wrong-token"),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (401, Some("invalid_request_error"))
    );

    let models: Value = client()
        .get(format!("{}/v1/models", agent.url()))
        .bearer_auth(&agent.token)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(models["data"][0]["id"], "smollm2");

    let (status, body) = post(
        &agent,
        "/v1/completions",
        t,
        json!({ "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    // Same seed, same answer; a stop string cuts the output.
    let ask = json!({ "messages": [{ "role": "user", "content": "Count from 1 to 10." }], "max_tokens": 24, "temperature": 0.8, "top_p": 0.9, "seed": 7 });
    let (_, a) = post(&agent, "/v1/chat/completions", t, ask.clone()).await;
    let (_, b) = post(&agent, "/v1/chat/completions", t, ask).await;
    assert_eq!(
        a["choices"][0]["message"]["content"],
        b["choices"][0]["message"]["content"]
    );
    let (status, stopped) = post(&agent, "/v1/chat/completions", t, json!({ "messages": [{ "role": "user", "content": "Count from 1 to 10, separated by commas." }], "max_tokens": 40, "temperature": 0, "stop": ["5"] })).await;
    assert_eq!(status, 200);
    assert!(
        !stopped["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .contains('5'),
        "{stopped}"
    );

    // Errors in OpenAI's shape, with the right status.
    let (status, body) = post(
        &agent,
        "/v1/chat/completions",
        t,
        json!({ "messages": "nope" }),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) = post(
        &agent,
        "/v1/chat/completions",
        t,
        json!({ "model": "gpt-4", "messages": [{ "role": "user", "content": "hi" }] }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (status, _) = post(
        &agent,
        "/v1/chat/completions",
        t,
        json!({ "messages": [{ "role": "user", "content": "hi" }], "temperature": 7 }),
    )
    .await;
    assert_eq!(status, 400);
    let resp = client()
        .get(format!("{}/v2/nothing", agent.url()))
        .bearer_auth(&agent.token)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 404);

    // Larger than the context: a 400, and the agent keeps serving.
    let long = "word ".repeat(9000);
    let (status, body) = post(
        &agent,
        "/v1/chat/completions",
        t,
        json!({ "messages": [{ "role": "user", "content": long }], "max_tokens": 10 }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("context_length_exceeded")),
        "{body}"
    );

    // Requests are queued, not dropped.
    let mut handles = Vec::new();
    for i in 0..4 {
        let (url, token) = (agent.url(), agent.token.clone());
        handles.push(tokio::spawn(async move {
            let resp = client()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(token)
                .json(&json!({ "messages": [{ "role": "user", "content": format!("Say the number {i}.") }], "max_tokens": 8, "temperature": 0 }))
                .send()
                .await
                .expect("send");
            resp.status().as_u16()
        }));
    }
    for h in handles {
        assert_eq!(h.await.expect("join"), 200);
    }

    // Streamed: server-sent events ending in [DONE], with usage when asked.
    let resp = client()
        .post(format!("{}/v1/chat/completions", agent.url()))
        .bearer_auth(&agent.token)
        .json(&json!({ "messages": [{ "role": "user", "content": "Say hello." }], "max_tokens": 12, "temperature": 0, "stream": true, "stream_options": { "include_usage": true } }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.expect("body");
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .any(|c| c["usage"]["completion_tokens"].as_u64().is_some()));

    // Every request above is in requests.jsonl, and the token is in none of it.
    let log =
        std::fs::read_to_string(agent.evidence.join("requests.jsonl")).expect("requests.jsonl");
    assert!(log.lines().count() >= 12, "{log}");
    assert!(!log.contains(&agent.token));
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).expect("json line");
        for k in [
            "time",
            "route",
            "prompt",
            "output",
            "prompt_tokens",
            "completion_tokens",
            "latency_ms",
            "status",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {line}");
        }
    }
}

#[test]
fn the_official_openai_python_client_talks_to_the_agent() {
    let ctx = Ctx::new();
    let agent = AgentProc::start(
        &ctx,
        free_port(),
        Utc::now() + chrono::Duration::minutes(10),
    );
    let script = r#"
import os, sys, openai
base = os.environ["BASE"] + "/v1"
c = openai.OpenAI(base_url=base, api_key=os.environ["TOKEN"])
r = c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0)
assert r.choices[0].message.role == "assistant", r
assert r.usage.completion_tokens > 0, r
parts = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0, stream=True) if ch.choices]
assert "".join(parts) == r.choices[0].message.content, (parts, r.choices[0].message.content)
bad = openai.OpenAI(base_url=base, api_key="not-the-token")
try:
    bad.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    sys.exit("no error without the token")
except openai.AuthenticationError as e:
    assert e.status_code == 401
print("ok")
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("BASE", agent.url())
        .env("TOKEN", &agent.token)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the openai client failed (scripts/install-test-deps.sh installs it):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_watchdog_stops_the_agent_at_its_deadline_with_no_controller() {
    let ctx = Ctx::new();
    let port = free_port();
    let deadline = Utc::now() + chrono::Duration::seconds(3);
    // Whether or not it finished loading by then, nobody asks it to stop: it must exit by itself.
    let mut agent = AgentProc::spawn(&ctx, port, deadline);
    let mut status = None;
    for _ in 0..300 {
        if let Some(s) = agent.child.try_wait().expect("wait") {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.expect("the agent did not stop at its deadline");
    assert!(status.success(), "{status}");
    assert!(port_refuses(port));
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(agent.evidence.join("final_record.json")).expect("final record"),
    )
    .expect("json");
    assert_eq!(record["reason"], "deadline");
    let stopped: chrono::DateTime<Utc> = record["stopped_at"]
        .as_str()
        .expect("stopped_at")
        .parse()
        .expect("time");
    let lateness = (stopped - deadline).num_milliseconds();
    eprintln!("watchdog lateness: {lateness} ms (the benchmark reports the distribution)");
    assert!(lateness >= 0, "stopped before its deadline");
    assert!(lateness < 5_000, "stopped {lateness} ms after the deadline");
}
