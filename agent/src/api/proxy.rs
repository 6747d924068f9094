//! Forwarding to a supervised server: same routes, same token check, same request log.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::Value;

use super::openai::Outcome;
use super::{ApiError, Shared, Upstream};

pub async fn models(up: &Upstream) -> Response {
    let req = up
        .client
        .get(format!("{}/v1/models", up.base))
        .bearer_auth(&up.server.key);
    match req.send().await {
        Ok(resp) => relay_whole(resp).await,
        Err(e) => bad_gateway(&unreachable_reason(up, &e).await),
    }
}

/// How long a failed request waits to see whether the server died, to say so.
const DEATH_WAIT: Duration = Duration::from_secs(2);

/// Why the server did not answer: its death (status, signal, last lines) when it died,
/// else the transport error. A connection reset usually comes just before the exit.
async fn unreachable_reason(up: &Upstream, e: &reqwest::Error) -> String {
    let until = Instant::now() + DEATH_WAIT;
    loop {
        if up.server.exited().is_some() {
            // Let the output readers take in the last lines first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Some(report) = up.server.death_report() {
                tracing::warn!("a request failed: {report}");
                return report;
            }
        }
        if Instant::now() >= until {
            return format!("the model server did not answer: {e}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bad_gateway(message: &str) -> Response {
    ApiError {
        status: StatusCode::BAD_GATEWAY,
        kind: "server_error",
        code: Some("upstream_unavailable"),
        param: None,
        message: message.to_string(),
    }
    .into_response()
}

async fn relay_whole(resp: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let bytes = resp.bytes().await.unwrap_or_default();
    (status, [(CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// The prompt as logged: the messages (chat) or the prompt (completions).
fn logged_prompt(req: &Value) -> String {
    match (&req["messages"], &req["prompt"]) {
        (Value::Null, Value::String(p)) => p.clone(),
        (Value::Null, other) => other.to_string(),
        (m, _) => m.to_string(),
    }
}

/// Text of one response object or stream chunk (chat or completions).
fn text_of(v: &Value) -> &str {
    let choice = &v["choices"][0];
    choice["message"]["content"]
        .as_str()
        .or(choice["delta"]["content"].as_str())
        .or(choice["text"].as_str())
        .unwrap_or("")
}

fn usage_of(v: &Value, o: &mut Outcome) {
    if let Some(p) = v["usage"]["prompt_tokens"].as_u64() {
        o.prompt_tokens = p as usize;
    }
    if let Some(c) = v["usage"]["completion_tokens"].as_u64() {
        o.completion_tokens = c as usize;
    }
}

pub async fn forward(
    state: Shared,
    up: &Upstream,
    route: &'static str,
    body: Bytes,
    started: Instant,
) -> Response {
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return ApiError::bad_request(format!("the request body is not valid JSON: {e}"), None)
                .into_response()
        }
    };
    let stream = req["stream"].as_bool().unwrap_or(false);
    let mut outcome = Outcome {
        state: state.clone(),
        route,
        stream,
        prompt: logged_prompt(&req),
        output: String::new(),
        prompt_tokens: 0,
        completion_tokens: 0,
        status: 200,
        error: None,
        started,
    };
    let resp = match up
        .client
        .post(format!("{}{route}", up.base))
        .bearer_auth(&up.server.key)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let reason = unreachable_reason(up, &e).await;
            outcome.status = 502;
            outcome.error = Some(reason.clone());
            return bad_gateway(&reason);
        }
    };
    outcome.status = resp.status().as_u16();
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::BAD_GATEWAY);
    if !stream || !status.is_success() {
        let bytes = resp.bytes().await.unwrap_or_default();
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            outcome.output = text_of(&v).to_string();
            usage_of(&v, &mut outcome);
            if let Some(msg) = v["error"]["message"].as_str() {
                outcome.error = Some(msg.to_string());
            }
        }
        return (status, [(CONTENT_TYPE, "application/json")], bytes).into_response();
    }
    // Streamed: relay bytes as they come, reading the SSE lines on the way for the log.
    let mut pending = String::new();
    let relayed = resp.bytes_stream().map(move |chunk| {
        if let Ok(bytes) = &chunk {
            pending.push_str(&String::from_utf8_lossy(bytes));
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                if let Some(data) = line.trim_end().strip_prefix("data: ") {
                    if let Ok(v) = serde_json::from_str::<Value>(data) {
                        outcome.output.push_str(text_of(&v));
                        usage_of(&v, &mut outcome);
                    }
                }
            }
        }
        chunk
    });
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(relayed))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
