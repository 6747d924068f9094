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
        Phase::Terminating | Phase::Failed => "EXITED",
        Phase::Terminated => "TERMINATED",
    };
    let runtime = if phase == Phase::Running {
        json!({ "ports": [{ "ip": st.ssh_host, "isIpPublic": true, "privatePort": 22, "publicPort": st.ssh_port, "type": "tcp" }] })
    } else {
        Value::Null
    };
    json!({ "id": i.id, "name": i.name, "desiredStatus": status, "costPerHr": i.usd_per_hour, "runtime": runtime })
}

/// The schema every document is validated against (loaded once, at start).
pub static SCHEMA: std::sync::OnceLock<crate::graphql::Schema> = std::sync::OnceLock::new();

/// The fault table's name for a root field.
fn op_name(field: &str) -> Option<&'static str> {
    Some(match field {
        "podFindAndDeployOnDemand" => "launch",
        "podTerminate" => "terminate",
        "myself" => "list",
        "gpuTypes" => "types",
        "pod" => "get",
        _ => return None,
    })
}

/// Which operation a request body is, in the fault table's words (from the parsed
/// document's first root field; None when it does not parse).
pub fn op_of(body: &str) -> Option<&'static str> {
    let v: Value = serde_json::from_str(body).ok()?;
    let doc = graphql_parser::query::parse_query::<String>(v["query"].as_str()?).ok()?;
    doc.definitions.iter().find_map(|d| {
        let graphql_parser::query::Definition::Operation(op) = d else {
            return None;
        };
        let set = match op {
            graphql_parser::query::OperationDefinition::SelectionSet(s) => s,
            graphql_parser::query::OperationDefinition::Query(q) => &q.selection_set,
            graphql_parser::query::OperationDefinition::Mutation(m) => &m.selection_set,
            graphql_parser::query::OperationDefinition::Subscription(s) => &s.selection_set,
        };
        set.items.iter().find_map(|sel| match sel {
            graphql_parser::query::Selection::Field(f) => op_name(&f.name),
            _ => None,
        })
    })
}

/// GraphQL's answer to a document that does not validate: HTTP 400 and every error.
fn invalid(errors: &[String]) -> Reply {
    let errors: Vec<Value> = errors
        .iter()
        .map(|m| json!({ "message": m, "extensions": { "code": "GRAPHQL_VALIDATION_FAILED" } }))
        .collect();
    (StatusCode::BAD_REQUEST, Json(json!({ "errors": errors })))
}

pub async fn graphql(Axum(s): Axum<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Reply {
    let query = body["query"].as_str().unwrap_or_default().to_string();
    let Some(schema) = SCHEMA.get() else {
        return gql_error("the emulator's schema is not loaded");
    };
    // Validated before anything runs, as a GraphQL server does: a nullable `$input` where
    // the argument is non-null, an unknown field or a bad enum is refused here.
    let empty = json!({});
    let variables = if body["variables"].is_object() {
        &body["variables"]
    } else {
        &empty
    };
    let operation = match schema.validate(&query, variables) {
        Ok(op) => op,
        Err(errors) => {
            if let Ok(mut st) = s.lock() {
                st.violation(format!("runpod: {}", errors.join(" | ")));
            }
            return invalid(&errors);
        }
    };
    let Some(call) = operation.calls.first() else {
        return gql_error("an operation without fields");
    };
    let Some(op) = op_name(&call.field) else {
        return gql_error(&format!("the emulator does not implement {}", call.field));
    };
    let vars = &Value::Object(call.args.clone());
    let fault = {
        let Ok(mut st) = s.lock() else {
            return gql_error("lock");
        };
        st.requests += 1;
        // The account key may do anything; a pod's own key (RUNPOD_API_KEY in the pod)
        // may read and terminate that pod alone.
        let by = if authorized(&st, Cloud::Runpod, &headers) {
            "account key"
        } else {
            let pod = vars["input"]["podId"].as_str().unwrap_or_default();
            match st.scoped_instance(crate::bearer(&headers)) {
                Some(own) if own == pod && matches!(op, "terminate" | "get") => "scoped key",
                _ => {
                    return (
                        StatusCode::UNAUTHORIZED,
                        Json(json!({ "errors": [{ "message": "Unauthorized" }] })),
                    )
                }
            }
        };
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
                let id = vars["input"]["id"].as_str().unwrap_or_default();
                let stocked = !st.no_capacity.contains(&(Cloud::Runpod, id.to_string()));
                return data(
                    json!({ "gpuTypes": price(Cloud::Runpod, id).map(|p| json!([{ "id": id, "displayName": id, "memoryInGb": 24, "secureCloud": stocked, "communityCloud": stocked, "securePrice": p, "communityPrice": p }])).unwrap_or(json!([])) }),
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
                // What RunPod's image would install into authorized_keys.
                let key = input["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|e| e["key"] == "PUBLIC_KEY")
                    .and_then(|e| e["value"].as_str())
                    .map(String::from);
                if let Some(i) = st.instances.get_mut(&id) {
                    i.public_key = key;
                }
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
                st.terminate(&id, fault.as_deref() == Some("never_complete"), by);
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
