//! Lambda Cloud API v1, as Lambda's OpenAPI description (v1.10.0) has it: `{"data": ...}`
//! or `{"error": {code, message, suggestion}}`; one request per second, one launch per
//! 12 s (429 beyond); Bearer or Basic auth; booting -> active -> terminating ->
//! terminated (terminated instances stay listed), and `unhealthy`/`preempted` (a launch
//! fault `boots_to_<state>`). A launch must name a region and exactly one SSH key
//! registered through `/ssh-keys` (the `LaunchRequest` schema: region_name,
//! instance_type_name and ssh_key_names are required).

use std::time::Instant;

use axum::extract::{Path, State as Axum};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use crate::state::{price, Cloud, Inst, Phase, SshKey, State, TYPES};
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
        st.throttled += 1;
        return Err(error(429, "global/rate-limited", "Too many requests"));
    }
    st.lambda_last = Some(now);
    if op == "launch" {
        if st
            .lambda_last_launch
            .is_some_and(|t| now - t < st.lambda_launch_pace)
        {
            st.throttled += 1;
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
    let fate = i.fate.as_deref().unwrap_or("unhealthy");
    let status = match st.phase(i) {
        Phase::Booting => "booting",
        Phase::Running => "active",
        Phase::Failed => fate,
        Phase::Terminating => "terminating",
        Phase::Terminated if i.terminate_at.is_none() => fate,
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
        "ssh_key_names": st.lambda_keys.iter().filter(|k| Some(&k.public_key) == i.public_key.as_ref()).map(|k| k.name.clone()).collect::<Vec<_>>(),
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
        if let Err(problem) = launch_problem(&st, &body) {
            st.violation(format!("lambda: launch: {problem}"));
            return error(400, "global/invalid-parameters", &problem);
        }
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
        let key = body["ssh_key_names"][0].as_str().and_then(|n| {
            st.lambda_keys
                .iter()
                .find(|k| k.name == n)
                .map(|k| k.public_key.clone())
        });
        if let Some(i) = st.instances.get_mut(&id) {
            i.public_key = key;
            i.fate = State::fate_of(fault.as_deref());
        }
        (fault, id)
    };
    if matches!(fault.as_deref(), Some("created_then_timeout" | "timeout")) {
        hang().await;
    }
    data(json!({ "instance_ids": [created] }))
}

/// Regions the emulated Lambda offers.
const REGIONS: &[&str] = &["us-east-1", "us-west-1"];

/// What is wrong with a launch body (LaunchRequest), if anything.
fn launch_problem(st: &State, body: &Value) -> Result<(), String> {
    let Some(region) = body["region_name"].as_str() else {
        return Err("region_name is required and must be a string".into());
    };
    if !REGIONS.contains(&region) {
        return Err(format!("Invalid region name {region}"));
    }
    if !body["instance_type_name"].is_string() {
        return Err("instance_type_name is required and must be a string".into());
    }
    let names = body["ssh_key_names"].as_array();
    let Some([name]) = names.map(|n| n.as_slice()) else {
        return Err("ssh_key_names: exactly one SSH key must be specified".into());
    };
    let known = name
        .as_str()
        .is_some_and(|n| st.lambda_keys.iter().any(|k| k.name == n));
    if !known {
        return Err(format!("SSH key {name} does not exist"));
    }
    if body.get("quantity").is_some_and(|q| q.as_u64() != Some(1)) {
        return Err("quantity must be 1".into());
    }
    Ok(())
}

/// `GET /ssh-keys`: the keys registered with the account.
pub async fn ssh_keys(Axum(s): Axum<Shared>, headers: HeaderMap) -> Reply {
    let Ok(mut st) = s.lock() else {
        return error(500, "global/internal", "lock");
    };
    if let Err(r) = admit(&mut st, &headers, "ssh_keys") {
        return r;
    }
    data(json!(st.lambda_keys))
}

/// `POST /ssh-keys`: register a public key under a name (AddSSHKeyRequest). Lambda can
/// also generate a pair when no key is given; gpuctl never asks for that (its private
/// key would travel over the API).
pub async fn add_ssh_key(
    Axum(s): Axum<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Reply {
    let Ok(mut st) = s.lock() else {
        return error(500, "global/internal", "lock");
    };
    if let Err(r) = admit(&mut st, &headers, "ssh_keys") {
        return r;
    }
    let name = body["name"].as_str().unwrap_or_default().to_string();
    let Some(public_key) = body["public_key"].as_str().map(String::from) else {
        st.violation("lambda: POST /ssh-keys without public_key would make Lambda generate (and send) a private key".into());
        return error(
            400,
            "global/invalid-parameters",
            "public_key is required by this emulator",
        );
    };
    if name.is_empty() || name.len() > 64 || public_key.len() > 4096 {
        st.violation(format!(
            "lambda: POST /ssh-keys: bad name or key ({name:?})"
        ));
        return error(
            400,
            "global/invalid-parameters",
            "name must be 1-64 characters, public_key at most 4096",
        );
    }
    if public_key.contains("PRIVATE KEY") {
        st.violation("lambda: a private key was sent to /ssh-keys".into());
        return error(400, "global/invalid-parameters", "Invalid public key");
    }
    if st.lambda_keys.iter().any(|k| k.name == name) {
        return error(
            400,
            "global/invalid-parameters",
            "An SSH key with this name already exists",
        );
    }
    let key = SshKey {
        id: format!("{:032x}", st.lambda_keys.len() + 1),
        name,
        public_key,
    };
    st.lambda_keys.push(key.clone());
    data(json!(key))
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
            if !st.terminate(id, never, "account key") {
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
