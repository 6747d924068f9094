//! RunPod's GraphQL API, as documented: one POST endpoint; errors come back as HTTP 200
//! with an `errors` array; `pod` is null for an unknown pod; "pod not found to terminate".

use axum::extract::State as Axum;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use crate::state::{price, Cloud, Inst, Phase, State};
use crate::{authorized, hang, Shared};

type Reply = (StatusCode, Json<Value>);

/// RunPod's way: HTTP 200 and an `errors` array.
fn gql_error(message: &str) -> Reply {
    (
        StatusCode::OK,
        Json(json!({ "errors": [{ "message": message, "path": [] }], "data": null })),
    )
}

fn data(v: Value) -> Reply {
    (StatusCode::OK, Json(json!({ "data": v })))
}

fn pod(st: &State, i: &Inst) -> Value {
    let phase = st.phase(i);
    let status = match phase {
        Phase::Booting | Phase::Running => "RUNNING",
        Phase::Terminating => "EXITED",
        Phase::Terminated => "TERMINATED",
    };
    let runtime = if phase == Phase::Running {
        json!({ "ports": [{ "ip": st.ssh_host, "isIpPublic": true, "privatePort": 22, "publicPort": st.ssh_port, "type": "tcp" }] })
    } else {
        Value::Null
    };
    json!({ "id": i.id, "name": i.name, "desiredStatus": status, "costPerHr": i.usd_per_hour, "runtime": runtime })
}

/// A `$input` variable declared nullable where the argument is non-null: GraphQL's
/// "Variable used in position expecting type X!" error.
fn nullable_input(query: &str, op: &str) -> Option<String> {
    let ty = match op {
        "launch" => "PodFindAndDeployOnDemandInput",
        "terminate" => "PodTerminateInput",
        _ => return None,
    };
    let declared = query.split("$input:").nth(1)?.trim_start();
    let nullable = declared.starts_with(ty) && !declared[ty.len()..].starts_with('!');
    nullable.then(|| {
        format!("Variable \"$input\" of type \"{ty}\" used in position expecting type \"{ty}!\".")
    })
}

/// Which operation a GraphQL document is, in the fault table's words.
pub fn op_of(query: &str) -> Option<&'static str> {
    Some(if query.contains("podFindAndDeployOnDemand") {
        "launch"
    } else if query.contains("podTerminate") {
        "terminate"
    } else if query.contains("myself") {
        "list"
    } else if query.contains("gpuTypes") {
        "types"
    } else if query.contains("pod(") {
        "get"
    } else {
        return None;
    })
}

pub async fn graphql(Axum(s): Axum<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Reply {
    let query = body["query"].as_str().unwrap_or_default().to_string();
    let vars = &body["variables"];
    let Some(op) = op_of(&query) else {
        return gql_error("Cannot query this field in the emulator");
    };
    // The schema's arguments are non-null (runpod.graphql, from RunPod's own clients): a
    // variable declared nullable in that position is a validation error, as on RunPod.
    if let Some(e) = nullable_input(&query, op) {
        return gql_error(&e);
    }
    let fault = {
        let Ok(mut st) = s.lock() else {
            return gql_error("lock");
        };
        st.requests += 1;
        if !authorized(&st, Cloud::Runpod, &headers) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "errors": [{ "message": "Unauthorized" }] })),
            );
        }
        let fault = st.fault(Cloud::Runpod, op);
        match fault.as_deref() {
            Some("http500") => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({ "errors": [{ "message": "Internal server error" }] })),
                )
            }
            Some("error_in_200") => {
                return gql_error(
                    "Something went wrong. Please try again later or contact support.",
                )
            }
            _ => {}
        }
        match op {
            "types" => {
                let id = vars["id"].as_str().unwrap_or_default();
                return data(
                    json!({ "gpuTypes": price(Cloud::Runpod, id).map(|p| json!([{ "id": id, "displayName": id, "securePrice": p, "communityPrice": p }])).unwrap_or(json!([])) }),
                );
            }
            "launch" => {
                let input = &vars["input"];
                let t = input["gpuTypeId"].as_str().unwrap_or_default().to_string();
                if price(Cloud::Runpod, &t).is_none() {
                    return gql_error(&format!("Invalid GPU type: {t}"));
                }
                if fault.as_deref() == Some("capacity")
                    || st.no_capacity.contains(&(Cloud::Runpod, t.clone()))
                {
                    return gql_error("There are no longer any instances available with the requested specifications. Please refresh and try again.");
                }
                let name = input["name"].as_str().unwrap_or_default().to_string();
                let region = input["dataCenterId"].as_str().map(String::from);
                let id = st.create(Cloud::Runpod, &name, &t, region);
                if !matches!(fault.as_deref(), Some("created_then_timeout" | "timeout")) {
                    let p = st
                        .instances
                        .get(&id)
                        .map(|i| pod(&st, i))
                        .unwrap_or(Value::Null);
                    return data(json!({ "podFindAndDeployOnDemand": p }));
                }
            }
            "terminate" => {
                let id = vars["input"]["podId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let known = st
                    .instances
                    .get(&id)
                    .is_some_and(|i| st.phase(i) != Phase::Terminated);
                if !known {
                    return gql_error("pod not found to terminate");
                }
                st.terminate(&id, fault.as_deref() == Some("never_complete"));
                if fault.as_deref() != Some("timeout") {
                    return data(json!({ "podTerminate": null }));
                }
            }
            "list" => {
                let pods: Vec<Value> = st
                    .instances
                    .values()
                    .filter(|i| i.cloud == Cloud::Runpod && st.phase(i) != Phase::Terminated)
                    .map(|i| pod(&st, i))
                    .collect();
                return data(json!({ "myself": { "pods": pods } }));
            }
            _ => {
                let id = vars["input"]["podId"].as_str().unwrap_or_default();
                let p = st
                    .instances
                    .get(id)
                    .filter(|i| i.cloud == Cloud::Runpod && st.phase(i) != Phase::Terminated)
                    .map(|i| pod(&st, i))
                    .unwrap_or(Value::Null);
                return data(json!({ "pod": p }));
            }
        }
        fault
    };
    let _ = fault;
    hang().await;
    gql_error("timeout")
}
