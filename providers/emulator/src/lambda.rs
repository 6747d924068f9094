//! Lambda Cloud API v1, as documented: `{"data": ...}` or `{"error": {code, message,
//! suggestion}}`; about 1 request/s and one launch per 10 s (429 beyond); booting -> active;
//! terminating -> terminated (terminated instances stay listed).

use std::time::Instant;

use axum::extract::{Path, State as Axum};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use crate::state::{price, Cloud, Inst, Phase, State, TYPES};
use crate::{authorized, hang, Shared};

type Reply = (StatusCode, Json<Value>);

fn error(code: u16, c: &str, message: &str) -> Reply {
    (
        crate::status(code),
        Json(json!({ "error": { "code": c, "message": message, "suggestion": null } })),
    )
}

fn data(v: Value) -> Reply {
    (StatusCode::OK, Json(json!({ "data": v })))
}

/// Auth, rate limit, then the fault for `op` (if any). Err: answer this at once.
fn admit(st: &mut State, headers: &HeaderMap, op: &str) -> Result<Option<String>, Reply> {
    st.requests += 1;
    if !authorized(st, Cloud::Lambda, headers) {
        return Err(error(
            401,
            "global/invalid-api-key",
            "API key was invalid, expired, or deleted.",
        ));
    }
    let now = Instant::now();
    if st.lambda_last.is_some_and(|t| now - t < st.lambda_pace) {
        return Err(error(429, "global/rate-limited", "Too many requests"));
    }
    st.lambda_last = Some(now);
    if op == "launch" {
        if st
            .lambda_last_launch
            .is_some_and(|t| now - t < st.lambda_launch_pace)
        {
            return Err(error(
                429,
                "global/rate-limited",
                "Too many launch requests",
            ));
        }
        st.lambda_last_launch = Some(now);
    }
    Ok(st.fault(Cloud::Lambda, op))
}

fn instance(st: &State, i: &Inst) -> Value {
    let status = match st.phase(i) {
        Phase::Booting => "booting",
        Phase::Running => "active",
        Phase::Terminating => "terminating",
        Phase::Terminated => "terminated",
    };
    let running = st.phase(i) == Phase::Running;
    json!({
        "id": i.id,
        "name": i.name,
        "status": status,
        "ip": if running { json!(st.ssh_host) } else { Value::Null },
        // Not in Lambda's answers (always port 22 there): every emulated instance shares one
        // loopback address, so the emulator says which port its sshd listens on.
        "ssh_port": st.ssh_port,
        "region": { "name": i.region, "description": i.region },
        "instance_type": { "name": i.instance_type, "price_cents_per_hour": (i.usd_per_hour * 100.0).round() },
        "ssh_key_names": [],
        "file_system_names": [],
    })
}

pub async fn instance_types(Axum(s): Axum<Shared>, headers: HeaderMap) -> Reply {
    let Ok(mut st) = s.lock() else {
        return error(500, "global/internal", "lock");
    };
    if let Err(r) = admit(&mut st, &headers, "types") {
        return r;
    }
    let mut out = serde_json::Map::new();
    for (c, name, usd) in TYPES {
        if *c != Cloud::Lambda {
            continue;
        }
        let regions = if st.no_capacity.contains(&(Cloud::Lambda, name.to_string())) {
            json!([])
        } else {
            json!([{ "name": "us-east-1", "description": "Virginia, USA" }, { "name": "us-west-1", "description": "California, USA" }])
        };
        out.insert(
            name.to_string(),
            json!({
                "instance_type": { "name": name, "description": name, "gpu_description": name, "price_cents_per_hour": (usd * 100.0).round(), "specs": { "vcpus": 30, "memory_gib": 200, "storage_gib": 1400, "gpus": 1 } },
                "regions_with_capacity_available": regions,
            }),
        );
    }
    data(Value::Object(out))
}

pub async fn launch(Axum(s): Axum<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Reply {
    let (fault, created) = {
        let Ok(mut st) = s.lock() else {
            return error(500, "global/internal", "lock");
        };
        let fault = match admit(&mut st, &headers, "launch") {
            Ok(f) => f,
            Err(r) => return r,
        };
        let t = body["instance_type_name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if price(Cloud::Lambda, &t).is_none() {
            return error(
                400,
                "global/invalid-parameters",
                &format!("Invalid instance type {t}"),
            );
        }
        if fault.as_deref() == Some("capacity")
            || st.no_capacity.contains(&(Cloud::Lambda, t.clone()))
        {
            return error(
                400,
                "instance-operations/launch/insufficient-capacity",
                "Not enough capacity to fulfill launch request.",
            );
        }
        if fault.as_deref() == Some("http500") {
            return error(500, "global/internal-error", "Internal server error");
        }
        let name = body["name"].as_str().unwrap_or_default().to_string();
        let region = body["region_name"].as_str().map(String::from);
        let id = st.create(Cloud::Lambda, &name, &t, region);
        (fault, id)
    };
    if matches!(fault.as_deref(), Some("created_then_timeout" | "timeout")) {
        hang().await;
    }
    data(json!({ "instance_ids": [created] }))
}

pub async fn terminate(
    Axum(s): Axum<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Reply {
    let fault = {
        let Ok(mut st) = s.lock() else {
            return error(500, "global/internal", "lock");
        };
        let fault = match admit(&mut st, &headers, "terminate") {
            Ok(f) => f,
            Err(r) => return r,
        };
        match fault.as_deref() {
            Some("http500") => return error(500, "global/internal-error", "Internal server error"),
            Some("wrong_answer") => {
                return (
                    StatusCode::OK,
                    Json(json!({ "data": { "unexpected": true } })),
                )
            }
            _ => {}
        }
        let ids: Vec<String> = body["instance_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        let never = fault.as_deref() == Some("never_complete");
        let mut done = Vec::new();
        for id in &ids {
            if !st.terminate(id, never) {
                return error(
                    404,
                    "global/object-does-not-exist",
                    &format!("Instance {id} does not exist"),
                );
            }
            if let Some(i) = st.instances.get(id) {
                done.push(instance(&st, i));
            }
        }
        if fault.as_deref() != Some("timeout") {
            return data(json!({ "terminated_instances": done }));
        }
        fault
    };
    let _ = fault;
    hang().await;
    error(504, "global/timeout", "timeout")
}

pub async fn list(Axum(s): Axum<Shared>, headers: HeaderMap) -> Reply {
    let Ok(mut st) = s.lock() else {
        return error(500, "global/internal", "lock");
    };
    if let Err(r) = admit(&mut st, &headers, "list") {
        return r;
    }
    let v: Vec<Value> = st
        .instances
        .values()
        .filter(|i| i.cloud == Cloud::Lambda)
        .map(|i| instance(&st, i))
        .collect();
    data(json!(v))
}

pub async fn get_one(Axum(s): Axum<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Reply {
    let Ok(mut st) = s.lock() else {
        return error(500, "global/internal", "lock");
    };
    match admit(&mut st, &headers, "get") {
        Err(r) => return r,
        Ok(Some(f)) if f == "http500" => {
            return error(500, "global/internal-error", "Internal server error")
        }
        Ok(_) => {}
    }
    match st.instances.get(&id).filter(|i| i.cloud == Cloud::Lambda) {
        Some(i) => data(instance(&st, i)),
        None => error(
            404,
            "global/object-does-not-exist",
            &format!("Instance {id} does not exist"),
        ),
    }
}
