//! `/_emulator/*`: how tests steer the emulator and read what it billed.

use axum::extract::State as Axum;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::state::{Cloud, Fault, Phase};
use crate::Shared;

pub async fn add_fault(Axum(s): Axum<Shared>, Json(f): Json<Fault>) -> Json<Value> {
    if let Ok(mut st) = s.lock() {
        st.faults.push(f);
    }
    Json(json!({ "ok": true }))
}

/// Forget every fault not yet consumed.
/// What the provider puts in an instance's environment, as `KEY=VALUE` lines: RunPod's
/// `RUNPOD_POD_ID`/`RUNPOD_API_KEY`, Vast's `CONTAINER_ID`/`CONTAINER_API_KEY` (a test
/// places it where the instance's processes find it). Lambda gives none.
pub async fn instance_env(
    Axum(s): Axum<Shared>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> (axum::http::StatusCode, String) {
    let Ok(st) = s.lock() else {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new());
    };
    match st.instances.get(&id) {
        Some(i) if i.cloud == Cloud::Runpod => (
            axum::http::StatusCode::OK,
            format!("RUNPOD_POD_ID={}\nRUNPOD_API_KEY={}\n", i.id, i.scoped_key),
        ),
        Some(i) if i.cloud == Cloud::Vast => (
            axum::http::StatusCode::OK,
            format!(
                "CONTAINER_ID={}\nCONTAINER_API_KEY={}\n",
                i.id, i.scoped_key
            ),
        ),
        Some(_) => (axum::http::StatusCode::OK, String::new()),
        None => (axum::http::StatusCode::NOT_FOUND, String::new()),
    }
}

/// Every contract violation seen so far (a test of gpuctl asserts there are none).
pub async fn violations(Axum(s): Axum<Shared>) -> Json<Value> {
    let (list, throttled) = s
        .lock()
        .map(|st| (st.violations.clone(), st.throttled))
        .unwrap_or_default();
    Json(json!({ "violations": list, "throttled": throttled }))
}

pub async fn clear_faults(Axum(s): Axum<Shared>) -> Json<Value> {
    if let Ok(mut st) = s.lock() {
        st.faults.clear();
    }
    Json(json!({ "ok": true }))
}

#[derive(Deserialize)]
pub struct Capacity {
    provider: Cloud,
    instance_type: String,
    available: bool,
}

pub async fn capacity(Axum(s): Axum<Shared>, Json(c): Json<Capacity>) -> Json<Value> {
    if let Ok(mut st) = s.lock() {
        let k = (c.provider, c.instance_type);
        if c.available {
            st.no_capacity.remove(&k);
        } else {
            st.no_capacity.insert(k);
        }
    }
    Json(json!({ "ok": true }))
}

#[derive(Deserialize)]
pub struct Revoke {
    provider: Cloud,
    revoked: bool,
}

pub async fn revoke(Axum(s): Axum<Shared>, Json(r): Json<Revoke>) -> Json<Value> {
    if let Ok(mut st) = s.lock() {
        if r.revoked {
            st.revoked.insert(r.provider);
        } else {
            st.revoked.remove(&r.provider);
        }
    }
    Json(json!({ "ok": true }))
}

/// Every instance with its phase and what it billed so far.
pub async fn instances(Axum(s): Axum<Shared>) -> Json<Value> {
    let Ok(st) = s.lock() else {
        return Json(json!([]));
    };
    let list: Vec<Value> = st
        .instances
        .values()
        .map(|i| {
            let phase = st.phase(i);
            json!({
                "id": i.id,
                "provider": i.cloud,
                "name": i.name,
                "instance_type": i.instance_type,
                "usd_per_hour": i.usd_per_hour,
                "phase": format!("{phase:?}").to_lowercase(),
                "billing": phase != Phase::Terminated,
                "billed_seconds": st.billed(i),
                "public_key": i.public_key,
                "terminated_by": i.terminated_by,
                "terminate_requested_at": i.terminate_requested_at,
            })
        })
        .collect();
    Json(json!({ "instances": list, "requests": st.requests }))
}

#[derive(Deserialize)]
pub struct Bulk {
    provider: Cloud,
    instance_type: String,
    count: u32,
    /// Names get this prefix and a number.
    name_prefix: String,
}

/// Create many running instances at once (the daemon benchmark).
pub async fn bulk_create(Axum(s): Axum<Shared>, Json(b): Json<Bulk>) -> Json<Value> {
    let Ok(mut st) = s.lock() else {
        return Json(json!([]));
    };
    let ids: Vec<String> = (0..b.count)
        .map(|n| {
            let name = format!("{}{n}", b.name_prefix);
            st.create(b.provider, &name, &b.instance_type, None)
        })
        .collect();
    Json(json!({ "ids": ids }))
}
