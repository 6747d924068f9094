//! The OpenAI-compatible API on 127.0.0.1. Every route needs the session's bearer token:
//! other users of a rented box must not be able to use (or bill) the model.

mod error;
mod openai;
mod proxy;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use gpuctl_protocol::{AgentStatus, PROTOCOL_VERSION};

pub use error::ApiError;

use crate::engine::EngineHandle;
use crate::reqlog::RequestLog;

/// Requests larger than this are refused before they are read.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The third-party server the agent fronts (vLLM, SGLang, the plan's command).
pub struct Upstream {
    pub base: String,
    pub client: reqwest::Client,
    /// The process behind `base`, so a failed request can say why the server is gone.
    pub server: Arc<crate::supervise::Server>,
}

pub struct AppState {
    /// The in-process model (candle), or
    pub engine: Option<EngineHandle>,
    /// the supervised server every request is forwarded to.
    pub upstream: Option<Upstream>,
    pub token: String,
    pub model_id: String,
    pub session_id: String,
    pub deadline: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub log: RequestLog,
    pub stopping: AtomicBool,
    /// What the agent can do about billing at the deadline (layer 1), in words.
    pub ends_billing: Option<String>,
}

pub type Shared = Arc<AppState>;

pub fn app(state: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .fallback(|| async { ApiError::not_found("no such route; this server offers /v1/models, /v1/chat/completions, /v1/completions and /health") })
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if same(t.as_bytes(), state.token.as_bytes()) => {
            if state.stopping.load(Ordering::SeqCst) {
                return ApiError::unavailable("the session is stopping").into_response();
            }
            next.run(req).await
        }
        _ => ApiError::unauthorized().into_response(),
    }
}

async fn health(State(state): State<Shared>) -> Json<AgentStatus> {
    Json(AgentStatus {
        protocol: PROTOCOL_VERSION,
        session_id: state.session_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ready: true,
        model: state.model_id.clone(),
        deadline: state.deadline,
        ends_billing: state.ends_billing.clone(),
    })
}
