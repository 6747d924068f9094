//! Vast.ai REST v0, as documented: offers from `/bundles/`, `PUT /asks/{offer}/` answering
//! `{success, new_contract}` (an instance may exist even when success is false),
//! `{"instances": {...}}` for one instance, `DELETE` answering `{success}` or
//! `{"error": "no_such_instance"}`. Offer ids are stable: one per GPU type.

use axum::extract::{Path, State as Axum};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use crate::state::{Cloud, Inst, Phase, State, TYPES};
use crate::{authorized, hang, Shared};

type Reply = (StatusCode, Json<Value>);

fn reply(code: u16, v: Value) -> Reply {
    (crate::status(code), Json(v))
}

fn admit(st: &mut State, headers: &HeaderMap, op: &str) -> Result<Option<String>, Reply> {
    st.requests += 1;
    if !authorized(st, Cloud::Vast, headers) {
        return Err(reply(
            401,
            json!({ "success": false, "error": "invalid_api_key", "msg": "Invalid API key" }),
        ));
    }
    Ok(st.fault(Cloud::Vast, op))
}

fn offers() -> Vec<(u64, &'static str, f64)> {
    TYPES
        .iter()
        .enumerate()
        .filter(|(_, (c, _, _))| *c == Cloud::Vast)
        .map(|(n, (_, name, p))| (5_000_000 + n as u64, *name, *p))
        .collect()
}

fn instance(st: &State, i: &Inst) -> Value {
    let phase = st.phase(i);
    let (actual, intended) = match phase {
        Phase::Booting => ("loading", "running"),
        Phase::Running => ("running", "running"),
        Phase::Terminating | Phase::Terminated => ("exited", "stopped"),
    };
    json!({
        "id": i.id.parse::<u64>().unwrap_or_default(),
        "label": i.name,
        "actual_status": actual,
        "intended_status": intended,
        "cur_state": actual,
        "ssh_host": if phase == Phase::Running { json!(st.ssh_host) } else { Value::Null },
        "ssh_port": st.ssh_port,
        "dph_total": i.usd_per_hour,
        "gpu_name": i.instance_type,
        "num_gpus": 1,
    })
}

pub async fn bundles(
    Axum(s): Axum<Shared>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Reply {
    let Ok(mut st) = s.lock() else {
        return reply(500, json!({}));
    };
    if let Err(r) = admit(&mut st, &headers, "offers") {
        return r;
    }
    let filter: Value = q
        .get("q")
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null);
    let wanted = filter["gpu_name"]["eq"].as_str().map(String::from);
    let list: Vec<Value> = offers()
        .into_iter()
        .filter(|(_, name, _)| wanted.as_deref().is_none_or(|w| w == *name))
        .filter(|(_, name, _)| !st.no_capacity.contains(&(Cloud::Vast, name.to_string())))
        .map(|(id, name, p)| json!({ "id": id, "gpu_name": name, "num_gpus": 1, "dph_total": p, "reliability": 0.99, "rentable": true }))
        .collect();
    reply(200, json!({ "offers": list }))
}

pub async fn create(
    Axum(s): Axum<Shared>,
    headers: HeaderMap,
    Path(offer): Path<String>,
    Json(body): Json<Value>,
) -> Reply {
    let fault = {
        let Ok(mut st) = s.lock() else {
            return reply(500, json!({}));
        };
        let fault = match admit(&mut st, &headers, "launch") {
            Ok(f) => f,
            Err(r) => return r,
        };
        let Some((_, name, _)) = offers()
            .into_iter()
            .find(|(id, _, _)| offer.trim_end_matches('/') == id.to_string())
        else {
            return reply(
                404,
                json!({ "success": false, "error": "no_such_ask", "msg": "Offer not found" }),
            );
        };
        if fault.as_deref() == Some("capacity")
            || st.no_capacity.contains(&(Cloud::Vast, name.to_string()))
        {
            return reply(
                400,
                json!({ "success": false, "error": "no_such_ask", "msg": "Offer is no longer available" }),
            );
        }
        if fault.as_deref() == Some("http500") {
            return reply(
                500,
                json!({ "success": false, "error": "server_error", "msg": "Internal error" }),
            );
        }
        let label = body["label"].as_str().unwrap_or_default().to_string();
        let id = st.create(Cloud::Vast, &label, name, None);
        match fault.as_deref() {
            Some("success_false_created") => {
                return reply(
                    200,
                    json!({ "success": false, "new_contract": id.parse::<u64>().unwrap_or_default(), "error": "bid_too_low", "msg": "Your bid was below the minimum" }),
                )
            }
            Some("created_then_timeout" | "timeout") => {}
            _ => {
                return reply(
                    200,
                    json!({ "success": true, "new_contract": id.parse::<u64>().unwrap_or_default() }),
                )
            }
        }
        fault
    };
    let _ = fault;
    hang().await;
    reply(504, json!({}))
}

pub async fn list(Axum(s): Axum<Shared>, headers: HeaderMap) -> Reply {
    let Ok(mut st) = s.lock() else {
        return reply(500, json!({}));
    };
    if let Err(r) = admit(&mut st, &headers, "list") {
        return r;
    }
    let v: Vec<Value> = st
        .instances
        .values()
        .filter(|i| i.cloud == Cloud::Vast && st.phase(i) != Phase::Terminated)
        .map(|i| instance(&st, i))
        .collect();
    reply(200, json!({ "instances": v }))
}

pub async fn get_one(Axum(s): Axum<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Reply {
    let Ok(mut st) = s.lock() else {
        return reply(500, json!({}));
    };
    match admit(&mut st, &headers, "get") {
        Err(r) => return r,
        Ok(Some(f)) if f == "http500" => {
            return reply(500, json!({ "success": false, "msg": "Internal error" }))
        }
        Ok(_) => {}
    }
    match st
        .instances
        .get(&id)
        .filter(|i| i.cloud == Cloud::Vast && st.phase(i) != Phase::Terminated)
    {
        Some(i) => reply(200, json!({ "instances": instance(&st, i) })),
        None => reply(200, json!({ "instances": null })),
    }
}

pub async fn destroy(Axum(s): Axum<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Reply {
    let fault = {
        let Ok(mut st) = s.lock() else {
            return reply(500, json!({}));
        };
        let fault = match admit(&mut st, &headers, "terminate") {
            Ok(f) => f,
            Err(r) => return r,
        };
        match fault.as_deref() {
            Some("http500") => {
                return reply(
                    500,
                    json!({ "success": false, "error": "server_error", "msg": "Internal error" }),
                )
            }
            Some("wrong_answer") => return reply(200, json!({ "result": "queued?" })),
            _ => {}
        }
        let live = st
            .instances
            .get(&id)
            .is_some_and(|i| st.phase(i) != Phase::Terminated);
        if !live {
            return reply(
                404,
                json!({ "success": false, "error": "no_such_instance", "msg": "Instance not found" }),
            );
        }
        st.terminate(&id, fault.as_deref() == Some("never_complete"));
        if fault.as_deref() != Some("timeout") {
            return reply(200, json!({ "success": true }));
        }
        fault
    };
    let _ = fault;
    hang().await;
    reply(504, json!({}))
}
