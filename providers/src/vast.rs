//! Vast.ai, as its published API reference (vast-ai/docs api-reference/openapi.yaml) and
//! the official CLI (vast-ai/vast-cli vastai/api/) have it. Offers are searched with
//! `POST /api/v0/bundles/` and a JSON query (the CLI's default filters: verified, not
//! external, rentable, not rented; on-demand; priced for the disk asked for); an instance
//! is rented with `PUT /api/v0/asks/{offer}/`. A failed create can still have made an
//! instance (`success: false` with `new_contract`): that is reported so that the
//! controller destroys it. One instance is `GET /api/v0/instances/{id}/?owner=me` (null
//! `instances`: not found); the list is `GET /api/v1/instances/`, 25 a page with a
//! `next_token` (v0's list is deprecated). The plan's public key is attached to the new
//! instance (`POST /api/v0/instances/{id}/ssh/`). A stopped instance keeps billing its disk:
//! gpuctl destroys. Rate limits are per endpoint (a minimum interval each; the values are
//! the backend's `x-rateLimit`, vast-ai/docs PR 915), 429 bodies may be plain text.

use reqwest::Method;
use serde_json::{json, Value};

use crate::credentials::ApiKey;
use crate::http::{Answer, Api, Pace};
use crate::provider::{gone, Instance, LaunchSpec, Launched, Offer};
use crate::{InstanceState, Provider, ProviderError, ProviderKind, SshEndpoint};

pub const DEFAULT_BASE: &str = "https://console.vast.ai/api/v0";

/// Per-endpoint minimum intervals: the backend's `x-rateLimit` seconds, plus 100 ms so that
/// jitter on the way never lands a request just inside the limit.
const SEARCH: Pace = Pace::new("POST /bundles/", 2100);
const CREATE: Pace = Pace::new("PUT /asks/", 4600);
const SHOW: Pace = Pace::new("GET /instances/{id}/", 2100);
const DESTROY: Pace = Pace::new("DELETE /instances/{id}/", 3100);
const LIST: Pace = Pace::new("GET /api/v1/instances/", 1100);
/// No published threshold: one a second.
const ATTACH: Pace = Pace::new("POST /instances/{id}/ssh/", 1100);

/// Pages of the instance list read at most (25 each): a bound on every loop.
const MAX_PAGES: usize = 200;

/// The default image: Vast's own base image, which runs sshd for `runtype: ssh`.
const DEFAULT_IMAGE: &str = "vastai/base-image:cuda-12.4.1-auto";

pub struct Vast {
    api: Api,
    /// The same host's `/api/v1` (the v1 list), derived from the v0 base.
    api_v1: Api,
}

fn error_text(body: &Value) -> String {
    [&body["msg"], &body["error"], &body["message"]]
        .iter()
        .filter_map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Vast names GPUs with spaces ("RTX 4090"); the CLI's query language writes them with
/// underscores (`gpu_name=RTX_4090`) and turns those into spaces. Plans may use either.
pub fn gpu_name(instance_type: &str) -> String {
    instance_type.replace('_', " ")
}

/// The v1 base beside a v0 base (`.../api/v0` -> `.../api/v1`).
fn v1_base(base: &str) -> String {
    let b = base.trim_end_matches('/');
    match b.strip_suffix("/v0") {
        Some(root) => format!("{root}/v1"),
        None => format!("{b}/../v1"),
    }
}

impl Vast {
    pub fn new(base: &str, key: ApiKey) -> Result<Vast, ProviderError> {
        Ok(Vast {
            api: Api::new(base, key.clone())?,
            api_v1: Api::new(&v1_base(base), key)?,
        })
    }

    /// The offers for `gpus` x `instance_type` with the CLI's default filters, priced for
    /// `disk_gb` of storage, cheapest first.
    async fn search(
        &self,
        instance_type: &str,
        gpus: u32,
        disk_gb: u32,
    ) -> Result<Vec<(u64, Offer)>, ProviderError> {
        let q = json!({
            "verified": { "eq": true },
            "external": { "eq": false },
            "rentable": { "eq": true },
            "rented": { "eq": false },
            "gpu_name": { "eq": gpu_name(instance_type) },
            "num_gpus": { "eq": gpus.max(1) },
            "disk_space": { "gte": disk_gb },
            "order": [["dph_total", "asc"]],
            "limit": 64,
            "allocated_storage": disk_gb,
        });
        let Answer { status, body, .. } = self
            .api
            .send(Method::POST, "/bundles/", Some(&q), &[SEARCH])
            .await?;
        if !status.is_success() {
            return Err(ProviderError::Api(format!(
                "HTTP {status}: {}",
                error_text(&body)
            )));
        }
        let offers = body["offers"]
            .as_array()
            .ok_or_else(|| ProviderError::Api("an offer search answer without `offers`".into()))?;
        let mut out: Vec<(u64, Offer)> = offers
            .iter()
            .filter_map(|o| {
                Some((
                    o["id"].as_u64()?,
                    Offer {
                        instance_type: instance_type.to_string(),
                        region: o["geolocation"].as_str().map(String::from),
                        gpus: o["num_gpus"].as_u64().unwrap_or(u64::from(gpus)) as u32,
                        vram_gib: o["gpu_ram"].as_f64().map(|mb| (mb / 1024.0).round() as u32),
                        usd_per_hour: o["dph_total"].as_f64()?,
                        available: o["rentable"].as_bool().unwrap_or(true),
                    },
                ))
            })
            .collect();
        out.sort_by(|a, b| a.1.usd_per_hour.total_cmp(&b.1.usd_per_hour));
        Ok(out)
    }

    async fn attach_key(&self, id: &str, public_key: &str) -> Result<(), ProviderError> {
        let body = json!({ "ssh_key": public_key.trim() });
        let Answer { status, body, .. } = self
            .api
            .send(
                Method::POST,
                &format!("/instances/{id}/ssh/"),
                Some(&body),
                &[ATTACH],
            )
            .await?;
        if status.is_success() && body["success"].as_bool() != Some(false) {
            return Ok(());
        }
        Err(ProviderError::Api(format!(
            "HTTP {status}: {}",
            error_text(&body)
        )))
    }

    fn instance(v: &Value) -> Instance {
        let actual = v["actual_status"].as_str().unwrap_or_default();
        let intended = v["intended_status"].as_str().unwrap_or_default();
        let state = match (actual, intended) {
            ("running", _) => InstanceState::Running,
            ("exited" | "stopped", "stopped") => InstanceState::Stopped,
            ("created" | "loading" | "scheduling" | "", _) => InstanceState::Booting,
            // Meant to run but not running, and never will by itself: it may still bill.
            ("exited" | "offline" | "unknown", _) => {
                InstanceState::Failed(format!("{actual} (meant to be {intended})"))
            }
            (other, _) => InstanceState::Other(other.to_string()),
        };
        let ssh = v["ssh_host"]
            .as_str()
            .filter(|h| !h.is_empty())
            .and_then(|h| {
                Some(SshEndpoint::new_instance(
                    h,
                    crate::port_of(&v["ssh_port"])?,
                    "root",
                ))
            });
        Instance {
            id: v["id"].as_u64().map(|i| i.to_string()).unwrap_or_default(),
            name: v["label"].as_str().unwrap_or_default().to_string(),
            state,
            usd_per_hour: v["dph_total"].as_f64(),
            ssh,
        }
    }
}

impl Provider for Vast {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Vast
    }

    async fn live_offers(
        &self,
        instance_type: &str,
        gpus: u32,
    ) -> Result<Vec<Offer>, ProviderError> {
        Ok(self
            .search(instance_type, gpus, DEFAULT_DISK_GB)
            .await?
            .into_iter()
            .map(|(_, o)| o)
            .collect())
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, ProviderError> {
        let disk = spec.disk_gb.unwrap_or(DEFAULT_DISK_GB);
        let offers = self.search(&spec.instance_type, spec.gpus, disk).await?;
        let Some((offer, price)) = offers.first().map(|(id, o)| (*id, o.usd_per_hour)) else {
            return Err(ProviderError::NoCapacity(format!(
                "{} x{} (no rentable offer)",
                spec.instance_type,
                spec.gpus.max(1)
            )));
        };
        if let Some(max) = spec.max_usd_per_hour {
            if price > max {
                return Err(ProviderError::NoCapacity(format!(
                    "{}: the cheapest offer is ${price:.2}/h, above ${max:.2}/h",
                    spec.instance_type
                )));
            }
        }
        // The fields of the published createInstance body (openapi.yaml); `image` is the
        // one it requires.
        let body = json!({
            "image": spec.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into()),
            "label": spec.name,
            "disk": disk,
            "runtype": "ssh",
            "target_state": "running",
            "cancel_unavail": true,
        });
        let Answer { status, body, .. } = self
            .api
            .send(
                Method::PUT,
                &format!("/asks/{offer}/"),
                Some(&body),
                &[CREATE],
            )
            .await?;
        let contract = body["new_contract"]
            .as_u64()
            .map(|c| c.to_string())
            .or_else(|| body["new_contract"].as_str().map(String::from));
        match (body["success"].as_bool(), contract) {
            (Some(true), Some(id)) => {
                // The plan's key on this instance (openapi.yaml attachSshKey), so that SSH
                // does not depend on the keys the account happens to hold. A refusal does
                // not end the launch: the account's own keys may still let the plan's in,
                // and the SSH step says clearly if not.
                let warning = match &spec.ssh_public_key {
                    Some(key) => self.attach_key(&id, key).await.err().map(|e| {
                        format!("attaching the plan's SSH key to instance {id} failed ({e}); SSH works only if the key is among the account's")
                    }),
                    None => None,
                };
                Ok(Launched {
                    instance_id: id,
                    usd_per_hour: Some(price),
                    warning,
                })
            }
            (_, Some(id)) => Err(ProviderError::CreatedAnyway {
                instance_id: id,
                message: error_text(&body),
            }),
            _ => {
                let msg = error_text(&body);
                Err(
                    if msg.to_lowercase().contains("no_such_ask")
                        || msg.to_lowercase().contains("not available")
                    {
                        ProviderError::NoCapacity(format!("{}: {msg}", spec.instance_type))
                    } else {
                        ProviderError::Api(format!("HTTP {status}: {msg}"))
                    },
                )
            }
        }
    }

    async fn get(&self, id: &str) -> Result<Instance, ProviderError> {
        let answer = self
            .api
            .send(
                Method::GET,
                &format!("/instances/{id}/?owner=me"),
                None,
                &[SHOW],
            )
            .await?;
        let status = answer.status;
        if !status.is_success() {
            return Err(ProviderError::Api(format!(
                "HTTP {status}: {}",
                error_text(&answer.body)
            )));
        }
        // The documented not-found answer of this endpoint (OpenAPI; vast-cli's
        // show_instance): 200 with `"instances": null`. Anything without the key is no answer.
        if !answer.has("instances") {
            return Err(ProviderError::Api(format!(
                "HTTP {status} without `instances`: not a read-back"
            )));
        }
        if answer.body["instances"].is_null() {
            return Ok(gone(id));
        }
        Ok(Vast::instance(&answer.body["instances"]))
    }

    async fn terminate(&self, id: &str) -> Result<(), ProviderError> {
        let Answer { status, body, .. } = self
            .api
            .send(
                Method::DELETE,
                &format!("/instances/{id}/"),
                None,
                &[DESTROY],
            )
            .await?;
        // 404 `not_found` is the answer for an unknown instance: nothing to destroy, so no
        // retry; the read-back decides whether it is gone.
        let unknown = status == reqwest::StatusCode::NOT_FOUND
            && matches!(
                body["error"].as_str(),
                Some("not_found" | "no_such_instance")
            );
        if body["success"].as_bool() == Some(true) || unknown {
            return Ok(());
        }
        Err(ProviderError::Api(format!(
            "HTTP {status}: {}",
            error_text(&body)
        )))
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let path = match &after {
                Some(t) => format!("/instances/?limit=25&after_token={}", urlencode(t)),
                None => "/instances/?limit=25".to_string(),
            };
            let Answer { status, body, .. } =
                self.api_v1.send(Method::GET, &path, None, &[LIST]).await?;
            if !status.is_success() {
                return Err(ProviderError::Api(format!(
                    "HTTP {status}: {}",
                    error_text(&body)
                )));
            }
            let page = body["instances"]
                .as_array()
                .ok_or_else(|| ProviderError::Api("an answer without `instances`".into()))?;
            out.extend(page.iter().map(Vast::instance));
            match body["next_token"].as_str().filter(|t| !t.is_empty()) {
                Some(t) => after = Some(t.to_string()),
                None => return Ok(out),
            }
        }
        Err(ProviderError::Api(format!(
            "the instance list did not end within {MAX_PAGES} pages"
        )))
    }

    fn calls(&self) -> u64 {
        self.api.calls() + self.api_v1.calls()
    }

    fn key_fingerprint(&self) -> String {
        self.api.key_fingerprint()
    }
}

/// The disk an offer is priced for when the plan names none.
const DEFAULT_DISK_GB: u32 = 40;

/// Percent-encoding for a query value (no crate needed for this one use).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v1_base_sits_beside_the_v0_base() {
        assert_eq!(
            v1_base("https://console.vast.ai/api/v0"),
            "https://console.vast.ai/api/v1"
        );
        assert_eq!(
            v1_base("http://127.0.0.1:9/vast/api/v0/"),
            "http://127.0.0.1:9/vast/api/v1"
        );
    }

    #[test]
    fn gpu_names_take_spaces() {
        assert_eq!(gpu_name("RTX_4090"), "RTX 4090");
        assert_eq!(gpu_name("RTX 4090"), "RTX 4090");
    }

    #[test]
    fn meant_to_run_but_exited_is_failed_and_stopped_is_stopped() {
        let state = |a: &str, i: &str| {
            Vast::instance(&json!({ "id": 1, "actual_status": a, "intended_status": i })).state
        };
        assert!(matches!(
            state("exited", "running"),
            InstanceState::Failed(_)
        ));
        assert!(matches!(
            state("offline", "running"),
            InstanceState::Failed(_)
        ));
        assert!(matches!(
            state("unknown", "running"),
            InstanceState::Failed(_)
        ));
        assert_eq!(state("exited", "stopped"), InstanceState::Stopped);
        assert_eq!(state("loading", "running"), InstanceState::Booting);
        assert_eq!(state("running", "running"), InstanceState::Running);
    }
}
