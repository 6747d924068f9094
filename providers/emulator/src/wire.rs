//! Faults on the wire, answered before any handler runs: what a proxy or load balancer in
//! front of a real API sends when the API itself is down. `html` is a 502 with an HTML page,
//! `non_json` a 200 whose body is not JSON, `empty_json` a 200 with `{}`. None of them is
//! the provider's answer, so none may ever be read as "the instance is gone".

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::Cloud;
use crate::Shared;

pub const MODES: &[&str] = &["html", "non_json", "empty_json"];

/// Which cloud and operation a request is, in the fault table's words.
fn classify(method: &Method, path: &str, body: &str) -> Option<(Cloud, &'static str)> {
    let op = |p: &str, instances: &str| -> &'static str {
        let rest = p.strip_prefix(instances).unwrap_or("");
        match (method.clone(), rest.trim_matches('/').is_empty()) {
            (Method::GET, true) => "list",
            (Method::GET, false) => "get",
            (Method::DELETE, _) => "terminate",
            _ => "other",
        }
    };
    if let Some(p) = path.strip_prefix("/lambda/api/v1") {
        return Some((
            Cloud::Lambda,
            if p.ends_with("/launch") {
                "launch"
            } else if p.ends_with("/terminate") {
                "terminate"
            } else if p.starts_with("/instances") {
                op(p, "/instances")
            } else {
                "other"
            },
        ));
    }
    if let Some(p) = path
        .strip_prefix("/vast/api/v0")
        .or_else(|| path.strip_prefix("/vast/api/v1"))
    {
        return Some((
            Cloud::Vast,
            if p.starts_with("/asks/") {
                "launch"
            } else if p.starts_with("/instances") {
                op(p, "/instances")
            } else {
                "other"
            },
        ));
    }
    if path == "/runpod/graphql" {
        return Some((Cloud::Runpod, crate::runpod::op_of(body).unwrap_or("other")));
    }
    None
}

/// `--request-log`: each request to a provider's API as one JSON line (method, path,
/// query, body), before anything answers it. Headers are never written: the key is there.
pub async fn log(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/_emulator") {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, 4 * 1024 * 1024).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let text = String::from_utf8_lossy(&bytes);
    let body_json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
    if let Ok(mut st) = s.lock() {
        st.log_request(serde_json::json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "body": if bytes.is_empty() { serde_json::Value::Null } else { body_json },
        }));
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

pub async fn faults(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, 4 * 1024 * 1024).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let text = String::from_utf8_lossy(&bytes);
    let mode = classify(&parts.method, parts.uri.path(), &text).and_then(|(cloud, op)| {
        let mut st = s.lock().ok()?;
        st.wire_fault(cloud, op)
    });
    match mode.as_deref() {
        Some("html") => (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>",
        )
            .into_response(),
        Some("non_json") => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            "OK",
        )
            .into_response(),
        Some("empty_json") => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response(),
        _ => next.run(Request::from_parts(parts, Body::from(bytes))).await,
    }
}
