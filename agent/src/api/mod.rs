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
    /// The deadline in force (moved by `gpuctl extend`).
    pub deadline: crate::serve::SharedDeadline,
    /// When the last API request came (`stop.idle`).
    pub activity: Activity,
    pub started_at: DateTime<Utc>,
    pub log: RequestLog,
    pub stopping: AtomicBool,
    /// What the agent can do about billing at the deadline (layer 1), in words.
    pub ends_billing: Option<String>,
}

pub type Shared = Arc<AppState>;

/// When the last API request arrived or finished, on the monotonic clock.
pub struct Activity {
    base: std::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            base: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since the last request (or since serving began).
    pub fn quiet_for(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

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
            // Model requests count as activity (`stop.idle`); the controller's health
            // checks do not.
            let api = req.uri().path().starts_with("/v1/");
            if api {
                state.activity.touch();
            }
            let response = next.run(req).await;
            if api {
                state.activity.touch();
            }
            response
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
        deadline: *state.deadline.lock().unwrap_or_else(|p| p.into_inner()),
        ends_billing: state.ends_billing.clone(),
    })
}
