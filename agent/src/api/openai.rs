//! `/v1/models`, `/v1/chat/completions` and `/v1/completions`, as OpenAI's clients expect
//! them: JSON or server-sent events, usage counts, OpenAI-shaped errors.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{ApiError, Shared};
use crate::engine::{ChatMessage, FinishReason, GenEvent, GenParams, Job, Prompt};
use crate::reqlog::RequestRecord;

/// A chat request that names no max_tokens gets at most this many (a CPU model must not run away).
const DEFAULT_CHAT_MAX_TOKENS: usize = 512;
/// OpenAI's default for /v1/completions.
const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn route(self) -> &'static str {
        match self {
            Kind::Chat => "/v1/chat/completions",
            Kind::Completion => "/v1/completions",
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Message content: a string, or OpenAI's array of parts (only text parts are served).
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields both endpoints share; unknown fields are ignored, as OpenAI's server does.
#[derive(Deserialize)]
struct Common {
    model: Option<String>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    stop: Option<OneOrMany>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
}

#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<InMessage>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
struct CompletionRequest {
    prompt: OneOrMany,
    #[serde(flatten)]
    common: Common,
}

pub async fn models(State(state): State<Shared>) -> Response {
    if let Some(up) = &state.upstream {
        return super::proxy::models(up).await;
    }
    Json(json!({
        "object": "list",
        "data": [{ "id": state.model_id, "object": "model", "created": state.started_at.timestamp(), "owned_by": "gpuctl" }]
    }))
    .into_response()
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}"), None))
}

fn params(state: &Shared, c: &Common, kind: Kind) -> Result<GenParams, ApiError> {
    if let Some(model) = &c.model {
        if model != &state.model_id {
            return Err(ApiError {
                code: Some("model_not_found"),
                ..ApiError::not_found(format!(
                    "the model `{model}` does not exist; this session serves `{}`",
                    state.model_id
                ))
            });
        }
    }
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("only n = 1 is supported", Some("n")));
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(
            "temperature must be between 0 and 2",
            Some("temperature"),
        ));
    }
    if let Some(p) = c.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::bad_request(
                "top_p must be in (0, 1]",
                Some("top_p"),
            ));
        }
    }
    let default = match kind {
        Kind::Chat => DEFAULT_CHAT_MAX_TOKENS,
        Kind::Completion => DEFAULT_COMPLETION_MAX_TOKENS,
    };
    let max_tokens = match c.max_completion_tokens.or(c.max_tokens) {
        None => default.min(
            state
                .engine
                .as_ref()
                .map(|e| e.context_length / 2)
                .unwrap_or(default),
        ),
        Some(m) if m >= 1 => usize::try_from(m).unwrap_or(usize::MAX),
        Some(_) => {
            return Err(ApiError::bad_request(
                "max_tokens must be at least 1",
                Some("max_tokens"),
            ))
        }
    };
    let stop = c.stop.take_stop();
    if stop.len() > 4 {
        return Err(ApiError::bad_request(
            "at most 4 stop sequences",
            Some("stop"),
        ));
    }
    Ok(GenParams {
        max_tokens,
        temperature,
        top_p: c.top_p,
        seed: c.seed.unwrap_or_else(|| {
            u64::from(std::process::id()) ^ chrono::Utc::now().timestamp_micros() as u64
        }),
        stop,
    })
}

trait TakeStop {
    fn take_stop(&self) -> Vec<String>;
}

impl TakeStop for Option<OneOrMany> {
    fn take_stop(&self) -> Vec<String> {
        match self {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s.clone()],
            Some(OneOrMany::Many(v)) => v.clone(),
        }
    }
}

pub async fn chat_completions(State(state): State<Shared>, body: Bytes) -> Response {
    let started = Instant::now();
    if let Some(up) = &state.upstream {
        return super::proxy::forward(state.clone(), up, Kind::Chat.route(), body, started).await;
    }
    let req: ChatRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let mut messages = Vec::new();
    for m in req.messages {
        let content = match m.content {
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                    return ApiError::bad_request(
                        format!(
                            "content parts of type {:?} are not supported; send text",
                            p.kind
                        ),
                        Some("messages"),
                    )
                    .into_response();
                }
                parts
                    .into_iter()
                    .filter_map(|p| p.text)
                    .collect::<Vec<_>>()
                    .join("")
            }
            None => String::new(),
        };
        messages.push(ChatMessage {
            role: m.role,
            content,
        });
    }
    if messages.is_empty() {
        return ApiError::bad_request("messages must not be empty", Some("messages"))
            .into_response();
    }
    let logged_prompt = serde_json::to_string(
        &messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default();
    generate(
        state,
        Kind::Chat,
        Prompt::Chat(messages),
        logged_prompt,
        req.common,
        started,
    )
    .await
}

pub async fn completions(State(state): State<Shared>, body: Bytes) -> Response {
    let started = Instant::now();
    if let Some(up) = &state.upstream {
        return super::proxy::forward(state.clone(), up, Kind::Completion.route(), body, started)
            .await;
    }
    let req: CompletionRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let prompts = req.prompt.into_vec();
    let [prompt] = prompts.as_slice() else {
        return ApiError::bad_request("send exactly one prompt string", Some("prompt"))
            .into_response();
    };
    let prompt = prompt.clone();
    generate(
        state,
        Kind::Completion,
        Prompt::Text(prompt.clone()),
        prompt,
        req.common,
        started,
    )
    .await
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn response_id(kind: Kind) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    match kind {
        Kind::Chat => format!("chatcmpl-{}-{n}", std::process::id()),
        Kind::Completion => format!("cmpl-{}-{n}", std::process::id()),
    }
}

/// Accumulates a request's outcome and writes its `requests.jsonl` line when dropped, so a
/// stream cut by the client is logged too.
pub(super) struct Outcome {
    pub state: Shared,
    pub route: &'static str,
    pub stream: bool,
    pub prompt: String,
    pub output: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub status: u16,
    pub error: Option<String>,
    pub started: Instant,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.state.log.write(RequestRecord {
            time: chrono::Utc::now().to_rfc3339(),
            route: self.route.into(),
            model: self.state.model_id.clone(),
            stream: self.stream,
            prompt: std::mem::take(&mut self.prompt),
            output: std::mem::take(&mut self.output),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            latency_ms: self.started.elapsed().as_millis() as u64,
            status: self.status,
            error: self.error.take(),
        });
    }
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({ "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens })
}

async fn generate(
    state: Shared,
    kind: Kind,
    prompt: Prompt,
    logged_prompt: String,
    common: Common,
    started: Instant,
) -> Response {
    let mut outcome = Outcome {
        state: state.clone(),
        route: kind.route(),
        stream: common.stream,
        prompt: logged_prompt,
        output: String::new(),
        prompt_tokens: 0,
        completion_tokens: 0,
        status: 200,
        error: None,
        started,
    };
    let fail = |outcome: &mut Outcome, e: ApiError| {
        outcome.status = e.status.as_u16();
        outcome.error = Some(e.message.clone());
        e.into_response()
    };
    let params = match params(&state, &common, kind) {
        Ok(p) => p,
        Err(e) => return fail(&mut outcome, e),
    };
    let (tx, mut rx) = mpsc::channel(256);
    let Some(engine) = &state.engine else {
        return fail(&mut outcome, ApiError::unavailable("no engine"));
    };
    if let Err(e) = engine
        .submit(Job {
            prompt,
            params,
            events: tx,
        })
        .await
    {
        return fail(&mut outcome, e.into());
    }
    match rx.recv().await {
        Some(GenEvent::Started { prompt_tokens, .. }) => outcome.prompt_tokens = prompt_tokens,
        Some(GenEvent::Failed(e)) => return fail(&mut outcome, e.into()),
        _ => return fail(&mut outcome, ApiError::unavailable("the engine stopped")),
    }
    let id = response_id(kind);
    let created = chrono::Utc::now().timestamp();
    let model = state.model_id.clone();
    if common.stream {
        let include_usage = common.stream_options.is_some_and(|o| o.include_usage);
        return stream_response(rx, outcome, kind, id, created, model, include_usage)
            .into_response();
    }
    let mut finish = FinishReason::Stop;
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Delta(t) => outcome.output.push_str(&t),
            GenEvent::Done {
                finish_reason,
                completion_tokens,
            } => {
                finish = finish_reason;
                outcome.completion_tokens = completion_tokens;
            }
            GenEvent::Failed(e) => return fail(&mut outcome, e.into()),
            GenEvent::Started { .. } => {}
        }
    }
    let u = usage(outcome.prompt_tokens, outcome.completion_tokens);
    let body = match kind {
        Kind::Chat => json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": outcome.output }, "logprobs": null, "finish_reason": finish.as_str() }],
            "usage": u,
        }),
        Kind::Completion => json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{ "index": 0, "text": outcome.output, "logprobs": null, "finish_reason": finish.as_str() }],
            "usage": u,
        }),
    };
    (StatusCode::OK, Json(body)).into_response()
}

struct StreamState {
    rx: mpsc::Receiver<GenEvent>,
    outcome: Outcome,
    kind: Kind,
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
    sent_role: bool,
    pending: Vec<Event>,
    finished: bool,
}

impl StreamState {
    fn chunk(&self, delta: Option<&str>, finish: Option<&str>) -> Event {
        let body = match self.kind {
            Kind::Chat => {
                let mut d = serde_json::Map::new();
                if !self.sent_role {
                    d.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = delta {
                    d.insert("content".into(), json!(t));
                }
                json!({ "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                        "choices": [{ "index": 0, "delta": d, "logprobs": null, "finish_reason": finish }] })
            }
            Kind::Completion => {
                json!({ "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                        "choices": [{ "index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish }] })
            }
        };
        Event::default().data(body.to_string())
    }
}

fn stream_response(
    rx: mpsc::Receiver<GenEvent>,
    outcome: Outcome,
    kind: Kind,
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let st = StreamState {
        rx,
        outcome,
        kind,
        id,
        created,
        model,
        include_usage,
        sent_role: false,
        pending: Vec::new(),
        finished: false,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop() {
                return Some((Ok(ev), st));
            }
            if st.finished {
                return None;
            }
            match st.rx.recv().await {
                Some(GenEvent::Delta(t)) => {
                    st.outcome.output.push_str(&t);
                    let ev = st.chunk(Some(&t), None);
                    st.sent_role = true;
                    return Some((Ok(ev), st));
                }
                Some(GenEvent::Done {
                    finish_reason,
                    completion_tokens,
                }) => {
                    st.outcome.completion_tokens = completion_tokens;
                    // Events are popped from the end: push in reverse order.
                    st.pending.push(Event::default().data("[DONE]"));
                    if st.include_usage {
                        let body = json!({ "id": st.id, "object": if st.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
                            "created": st.created, "model": st.model, "choices": [], "usage": usage(st.outcome.prompt_tokens, completion_tokens) });
                        st.pending.push(Event::default().data(body.to_string()));
                    }
                    let last = st.chunk(None, Some(finish_reason.as_str()));
                    st.pending.push(last);
                    st.finished = true;
                }
                Some(GenEvent::Failed(e)) => {
                    let err: ApiError = e.into();
                    st.outcome.status = err.status.as_u16();
                    st.outcome.error = Some(err.message.clone());
                    st.pending.push(Event::default().data("[DONE]"));
                    st.pending
                        .push(Event::default().data(err.body().to_string()));
                    st.finished = true;
                }
                Some(GenEvent::Started { .. }) => {}
                None => {
                    st.finished = true;
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
