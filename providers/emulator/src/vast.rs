//! Vast.ai, as published: vast-ai/docs api-reference/openapi.yaml (the authority), with
//! the official CLI (vast-ai/vast-cli vastai/api/) and the backend's generated
//! descriptions (vast-ai/docs PR 915, `x-rateLimit`) for what the reference leaves open.
//!
//! - `POST /api/v0/bundles/` searches offers with a JSON query (openapi.yaml searchOffers;
//!   vast-cli offers.py search_offers). `GET /bundles/` is not published: refused.
//!   Unset `verified`, `rentable`, `rented` take the documented defaults (true, true,
//!   false); nothing else is filtered unless asked, so a client that forgets `external` or
//!   `disk_space` gets the cheaper external host or the small disk.
//! - `PUT /api/v0/asks/{id}/` rents an offer: `{success, new_contract}`; an instance may
//!   exist even when success is false.
//! - `GET /api/v0/instances/{id}/` answers `{"instances": {...}}`, or null when unknown.
//! - `DELETE /api/v0/instances/{id}/`: `{success: true}`, or 404 `{"error": "not_found"}`.
//! - `GET /api/v1/instances/` lists 25 a page with `next_token`; v0's list answers 410
//!   (deprecated for newer accounts).
//! - Each endpoint has its own minimum interval; too soon is a 429 with a plain-text
//!   body, as rate-limits-and-errors.mdx says.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, Query, State as Axum};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::state::{Cloud, Inst, Phase, State, TYPES};
use crate::{authorized, hang, Shared};

fn reply(code: u16, v: Value) -> Response {
    (crate::status(code), Json(v)).into_response()
}

/// Auth, the endpoint's rate limit, then the fault for `op`. Err: answer this at once.
// The error is the handler's own answer, returned as is; boxing it would only unbox it.
#[allow(clippy::result_large_err)]
fn admit(
    st: &mut State,
    headers: &HeaderMap,
    op: &str,
    endpoint: &'static str,
    every_ms: u64,
) -> Result<Option<String>, Response> {
    admit_for(st, headers, op, endpoint, every_ms, None).map(|(f, _)| f)
}

/// The same, where an instance's own key (`CONTAINER_API_KEY`, restricted to that
/// instance) may act on `instance`; the second value says which key asked.
#[allow(clippy::result_large_err)]
fn admit_for(
    st: &mut State,
    headers: &HeaderMap,
    op: &str,
    endpoint: &'static str,
    every_ms: u64,
    instance: Option<&str>,
) -> Result<(Option<String>, &'static str), Response> {
    st.requests += 1;
    let by = if authorized(st, Cloud::Vast, headers) {
        "account key"
    } else if instance.is_some()
        && st.scoped_instance(crate::bearer(headers)).as_deref() == instance
    {
        "scoped key"
    } else {
        return Err(reply(
            401,
            json!({ "success": false, "error": "auth_error", "msg": "Invalid user key" }),
        ));
    };
    if st.vast_too_soon(endpoint, Duration::from_millis(every_ms)) {
        // "The response body is often plain text" (rate-limits-and-errors.mdx).
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            [(header::CONTENT_TYPE, "text/plain")],
            format!(
                "API requests too frequent: endpoint threshold={}",
                every_ms as f64 / 1000.0
            ),
        )
            .into_response());
    }
    Ok((st.fault(Cloud::Vast, op), by))
}

/// Offers per GPU type: a verified datacenter host at the catalog price, and three
/// cheaper ones a careful search excludes (unverified, external, a 20 GB disk).
fn offers() -> Vec<Value> {
    let mut out = Vec::new();
    for (n, (_, name, p)) in TYPES
        .iter()
        .filter(|(c, _, _)| *c == Cloud::Vast)
        .enumerate()
    {
        let base = json!({
            "gpu_name": name, "num_gpus": 1, "gpu_ram": 24576, "rentable": true, "rented": false,
            "verified": true, "verification": "verified", "external": false,
            "disk_space": 500.0, "reliability": 0.995, "geolocation": "Oregon, US",
        });
        let variant = |id: u64, dph: f64, patch: Value| {
            let mut o = base.clone();
            o["id"] = json!(id);
            o["ask_contract_id"] = json!(id);
            o["dph_total"] = json!((dph * 1000.0).round() / 1000.0);
            if let (Some(o), Some(patch)) = (o.as_object_mut(), patch.as_object()) {
                o.extend(patch.clone());
            }
            o
        };
        let n = n as u64;
        out.push(variant(5_000_000 + n, *p, json!({})));
        out.push(variant(
            5_100_000 + n,
            p * 0.6,
            json!({ "verified": false, "verification": "unverified" }),
        ));
        out.push(variant(5_200_000 + n, p * 0.7, json!({ "external": true })));
        out.push(variant(
            5_300_000 + n,
            p * 0.8,
            json!({ "disk_space": 20.0 }),
        ));
    }
    out
}

/// The search query's properties, as openapi.yaml's searchOffers lists them.
const QUERY_FIELDS: &[&str] = &[
    "limit",
    "type",
    "verified",
    "rentable",
    "rented",
    "gpu_name",
    "reliability",
    "num_gpus",
    "gpu_ram",
    "duration",
    "machine_id",
    "dlperf_per_dphtotal",
    "dph_total",
    "flops_per_dphtotal",
    "geolocation",
    "gpu_arch",
    "dlperf",
    "cuda_max_good",
    "inet_down",
    "inet_up",
    "inet_down_cost",
    "inet_up_cost",
    "driver_version",
    "compute_cap",
    "cpu_arch",
    "has_avx",
    "cpu_cores",
    "cpu_cores_effective",
    "cpu_ghz",
    "cpu_ram",
    "datacenter",
    "external",
    "disk_bw",
    "disk_space",
    "bw_nvlink",
    "gpu_max_power",
    "gpu_max_temp",
    "gpu_mem_bw",
    "gpu_total_ram",
    "gpu_frac",
    "gpu_display_active",
    "direct_port_count",
    "host_id",
    "id",
    "min_bid",
    "mobo_name",
    "pci_gen",
    "pcie_bw",
    "storage_cost",
    "static_ip",
    "total_flops",
    "os_version",
    "ubuntu_version",
    "verification",
    "vms_enabled",
    "order",
    "allocated_storage",
];
const OPERATORS: &[&str] = &["eq", "neq", "gt", "lt", "gte", "lte", "in", "notin"];

/// What is wrong with a search query, against the published schema.
fn query_problems(q: &Value) -> Vec<String> {
    let Some(obj) = q.as_object() else {
        return vec!["the body is not a JSON object".into()];
    };
    let mut out = Vec::new();
    for (k, v) in obj {
        match k.as_str() {
            _ if !QUERY_FIELDS.contains(&k.as_str()) => {
                out.push(format!("`{k}` is not a search field"))
            }
            "limit" if !v.is_u64() => out.push("`limit` must be an integer".into()),
            // The reference's enum says `ondemand`; its own example and the CLI send
            // `on-demand`: both are accepted.
            "type"
                if !matches!(
                    v.as_str(),
                    Some("ondemand" | "on-demand" | "bid" | "reserved")
                ) =>
            {
                out.push(format!("`type` {v} is not ondemand, bid or reserved"))
            }
            "allocated_storage" if !v.is_number() => {
                out.push("`allocated_storage` must be a number (GB)".into())
            }
            "order" => {
                let pairs = v.as_array().is_some_and(|a| {
                    a.iter().all(|p| {
                        p.as_array().is_some_and(|p| {
                            p.len() == 2
                                && p[0].is_string()
                                && matches!(p[1].as_str(), Some("asc" | "desc"))
                        })
                    })
                });
                if !pairs {
                    out.push("`order` must be a list of [field, \"asc\"|\"desc\"]".into());
                }
            }
            "limit" | "type" | "allocated_storage" => {}
            _ => match v.as_object() {
                Some(ops) => {
                    for op in ops.keys().filter(|o| !OPERATORS.contains(&o.as_str())) {
                        out.push(format!("`{k}`: unknown operator `{op}`"));
                    }
                }
                None => out.push(format!(
                    "`{k}` must be an object of operators, e.g. {{\"eq\": ...}}"
                )),
            },
        }
    }
    out
}

fn compare(have: &Value, op: &str, want: &Value) -> bool {
    let num = |v: &Value| v.as_f64();
    match op {
        "eq" => have == want,
        "neq" => have != want,
        "in" => want.as_array().is_some_and(|a| a.contains(have)),
        "notin" => want.as_array().is_some_and(|a| !a.contains(have)),
        _ => match (num(have), num(want)) {
            (Some(h), Some(w)) => match op {
                "gt" => h > w,
                "gte" => h >= w,
                "lt" => h < w,
                _ => h <= w,
            },
            _ => false,
        },
    }
}

/// Whether an offer passes the query (unset verified/rentable/rented: their defaults).
fn matches(offer: &Value, q: &Value) -> bool {
    let defaults = json!({ "verified": { "eq": true }, "rentable": { "eq": true }, "rented": { "eq": false } });
    let mut filters = defaults.as_object().cloned().unwrap_or_default();
    if let Some(obj) = q.as_object() {
        filters.extend(obj.clone());
    }
    filters.iter().all(|(field, ops)| {
        let Some(ops) = ops.as_object() else {
            return true;
        };
        let Some(have) = offer.get(field) else {
            return true;
        };
        ops.iter().all(|(op, want)| compare(have, op, want))
    })
}

fn instance(st: &State, i: &Inst) -> Value {
    let phase = st.phase(i);
    let fate = i.fate.as_deref().unwrap_or("exited");
    let (actual, intended) = match phase {
        Phase::Booting => ("loading", "running"),
        Phase::Running => ("running", "running"),
        Phase::Failed => (fate, "running"),
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

pub async fn search(Axum(s): Axum<Shared>, headers: HeaderMap, body: String) -> Response {
    let Ok(mut st) = s.lock() else {
        return reply(500, json!({}));
    };
    if let Err(r) = admit(&mut st, &headers, "offers", "POST /bundles/", 2000) {
        return r;
    }
    let q: Value = match serde_json::from_str(&body) {
        Ok(q) => q,
        Err(_) => {
            st.violation("vast: POST /bundles/ without a JSON body".into());
            return reply(
                400,
                json!({ "error": "invalid_request", "msg": "Invalid json body" }),
            );
        }
    };
    let problems = query_problems(&q);
    if !problems.is_empty() {
        st.violation(format!("vast: POST /bundles/: {}", problems.join("; ")));
        return reply(
            400,
            json!({ "error": "invalid_request", "msg": problems.join("; ") }),
        );
    }
    let list: Vec<Value> = offers()
        .into_iter()
        .filter(|o| matches(o, &q))
        .filter(|o| {
            let name = o["gpu_name"].as_str().unwrap_or_default().to_string();
            !st.no_capacity.contains(&(Cloud::Vast, name))
        })
        .collect();
    reply(200, json!({ "offers": list }))
}

/// `GET /bundles/?q=`: not in the published reference.
pub async fn search_by_get(Axum(s): Axum<Shared>) -> Response {
    if let Ok(mut st) = s.lock() {
        st.violation("vast: GET /bundles/ is not published; offers are searched with POST /api/v0/bundles/ and a JSON body".into());
    }
    reply(
        405,
        json!({ "success": false, "error": "method_not_allowed", "msg": "search offers with POST /api/v0/bundles/" }),
    )
}

/// The create body's fields (PUT /asks/{id}/, backend description and vast-cli).
const CREATE_FIELDS: &[&str] = &[
    "client_id",
    "image",
    "template_hash_id",
    "label",
    "disk",
    "runtype",
    "target_state",
    "price",
    "env",
    "cancel_unavail",
    "vm",
    "onstart",
    "args",
    "args_str",
    "use_jupyter_lab",
    "jupyter_dir",
    "python_utf8",
    "lang_utf8",
    "force",
    "user",
    "image_login",
    "volume_info",
];

pub async fn create(
    Axum(s): Axum<Shared>,
    headers: HeaderMap,
    Path(offer): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let fault = {
        let Ok(mut st) = s.lock() else {
            return reply(500, json!({}));
        };
        let fault = match admit(&mut st, &headers, "launch", "PUT /asks/", 4500) {
            Ok(f) => f,
            Err(r) => return r,
        };
        let mut problems: Vec<String> = body
            .as_object()
            .map(|o| {
                o.keys()
                    .filter(|k| !CREATE_FIELDS.contains(&k.as_str()))
                    .map(|k| format!("`{k}` is not a create field"))
                    .collect()
            })
            .unwrap_or_else(|| vec!["the body is not a JSON object".into()]);
        if !body["image"].is_string() {
            problems.push("`image` is required".into());
        }
        if body.get("disk").is_some_and(|d| !d.is_number()) {
            problems.push("`disk` must be a number (GB)".into());
        }
        if body.get("runtype").is_some_and(|r| {
            !matches!(
                r.as_str(),
                Some(
                    "ssh"
                        | "jupyter"
                        | "args"
                        | "ssh_proxy"
                        | "ssh_direct"
                        | "jupyter_proxy"
                        | "jupyter_direct"
                )
            )
        }) {
            problems.push("`runtype` is not one of the documented values".into());
        }
        if !problems.is_empty() {
            st.violation(format!("vast: PUT /asks/{offer}/: {}", problems.join("; ")));
            return reply(
                400,
                json!({ "success": false, "error": "invalid_args", "msg": problems.join("; ") }),
            );
        }
        let Some(o) = offers()
            .into_iter()
            .find(|o| o["id"].as_u64() == offer.trim_end_matches('/').parse().ok())
        else {
            return reply(
                404,
                json!({ "success": false, "error": "no_such_ask", "msg": "Offer not found" }),
            );
        };
        let name = o["gpu_name"].as_str().unwrap_or_default().to_string();
        if fault.as_deref() == Some("capacity")
            || st.no_capacity.contains(&(Cloud::Vast, name.clone()))
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
        let id = st.create(Cloud::Vast, &label, &name, None);
        if let Some(i) = st.instances.get_mut(&id) {
            i.usd_per_hour = o["dph_total"].as_f64().unwrap_or(i.usd_per_hour);
            i.fate = State::fate_of(fault.as_deref());
        }
        let contract = id.parse::<u64>().unwrap_or_default();
        match fault.as_deref() {
            Some("success_false_created") => {
                return reply(
                    200,
                    json!({ "success": false, "new_contract": contract, "error": "bid_too_low", "msg": "Your bid was below the minimum" }),
                )
            }
            Some("created_then_timeout" | "timeout") => {}
            _ => return reply(200, json!({ "success": true, "new_contract": contract })),
        }
        fault
    };
    let _ = fault;
    hang().await;
    reply(504, json!({}))
}

/// `POST /api/v0/instances/{id}/ssh/` (attachSshKey): `{"ssh_key": "<public key>"}`.
pub async fn attach_ssh(
    Axum(s): Axum<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let Ok(mut st) = s.lock() else {
        return reply(500, json!({}));
    };
    if let Err(r) = admit(
        &mut st,
        &headers,
        "attach",
        "POST /instances/{id}/ssh/",
        1000,
    ) {
        return r;
    }
    let key = body["ssh_key"].as_str().unwrap_or_default().to_string();
    if key.is_empty() || key.contains("PRIVATE KEY") {
        st.violation(format!(
            "vast: attach ssh to {id}: ssh_key must be a public key"
        ));
        return reply(
            400,
            json!({ "success": false, "error": "invalid_args", "msg": "ssh_key must be a public key" }),
        );
    }
    let live = st
        .instances
        .get(&id)
        .is_some_and(|i| i.cloud == Cloud::Vast && st.phase(i) != Phase::Terminated);
    if !live {
        return reply(
            404,
            json!({ "success": false, "error": "not_found", "msg": "Instance not found" }),
        );
    }
    if let Some(i) = st.instances.get_mut(&id) {
        i.public_key = Some(key);
    }
    reply(
        200,
        json!({ "success": true, "msg": "SSH key attached successfully" }),
    )
}

/// `GET /api/v0/instances/`: deprecated, gone for newer accounts.
pub async fn list_v0(Axum(s): Axum<Shared>) -> Response {
    if let Ok(mut st) = s.lock() {
        st.violation(
            "vast: GET /api/v0/instances/ is deprecated; list with GET /api/v1/instances/".into(),
        );
    }
    reply(
        410,
        json!({ "success": false, "error": "deprecated", "msg": "This endpoint is deprecated; use /api/v1/instances/" }),
    )
}

/// `GET /api/v1/instances/`: keyset pages of at most 25, `next_token` until the end.
pub async fn list_v1(
    Axum(s): Axum<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Ok(mut st) = s.lock() else {
        return reply(500, json!({}));
    };
    if let Err(r) = admit(&mut st, &headers, "list", "GET /api/v1/instances/", 1000) {
        return r;
    }
    let limit = match q.get("limit").map(|l| l.parse::<i64>()) {
        None => 25,
        Some(Ok(l)) if l <= 0 => 5,
        Some(Ok(l)) => l.min(25) as usize,
        Some(Err(_)) => {
            return reply(
                400,
                json!({ "success": false, "error": "invalid_args", "msg": "limit must be an integer" }),
            )
        }
    };
    let after = match q.get("after_token").map(|t| t.parse::<u64>()) {
        None => 0,
        Some(Ok(t)) => t,
        Some(Err(_)) => {
            return reply(
                400,
                json!({ "success": false, "error": "invalid_args", "msg": "invalid after_token" }),
            )
        }
    };
    let all: Vec<&Inst> = st
        .instances
        .values()
        .filter(|i| i.cloud == Cloud::Vast && st.phase(i) != Phase::Terminated)
        .filter(|i| i.id.parse::<u64>().unwrap_or_default() > after)
        .collect();
    let page: Vec<Value> = all.iter().take(limit).map(|i| instance(&st, i)).collect();
    let next = (all.len() > limit)
        .then(|| all.get(limit - 1).map(|i| i.id.clone()))
        .flatten();
    reply(
        200,
        json!({ "success": true, "instances_found": page.len(), "total_instances": all.len(), "instances": page, "next_token": next }),
    )
}

pub async fn get_one(
    Axum(s): Axum<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Ok(mut st) = s.lock() else {
        return reply(500, json!({}));
    };
    match admit(&mut st, &headers, "get", "GET /instances/{id}/", 2000) {
        Err(r) => return r,
        Ok(Some(f)) if f == "http500" => {
            return reply(500, json!({ "success": false, "msg": "Internal error" }))
        }
        Ok(_) => {}
    }
    if id.parse::<u64>().is_err() {
        return reply(
            400,
            json!({ "success": false, "error": "invalid_args", "msg": "id must be an integer" }),
        );
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

pub async fn destroy(
    Axum(s): Axum<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let fault = {
        let Ok(mut st) = s.lock() else {
            return reply(500, json!({}));
        };
        let (fault, by) = match admit_for(
            &mut st,
            &headers,
            "terminate",
            "DELETE /instances/{id}/",
            3000,
            Some(&id),
        ) {
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
            .is_some_and(|i| i.cloud == Cloud::Vast && st.phase(i) != Phase::Terminated);
        if !live {
            // openapi.yaml destroyInstance: 404 "Instance not found".
            return reply(
                404,
                json!({ "success": false, "error": "not_found", "msg": "Instance not found" }),
            );
        }
        st.terminate(&id, fault.as_deref() == Some("never_complete"), by);
        if fault.as_deref() != Some("timeout") {
            return reply(200, json!({ "success": true }));
        }
        fault
    };
    let _ = fault;
    hang().await;
    reply(504, json!({}))
}
