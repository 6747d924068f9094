//! Vast.ai, REST API v0 (`https://console.vast.ai/api/v0`). An instance is rented from an
//! offer (`GET /bundles/` then `PUT /asks/{offer}/`). A failed create can still have made an
//! instance (`success: false` with `new_contract`): that is reported so the controller
//! destroys it. A stopped instance keeps billing its disk: gpuctl destroys.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::credentials::ApiKey;
use crate::http::{Answer, Api};
use crate::provider::{gone, Instance, LaunchSpec, Launched};
use crate::{InstanceState, Provider, ProviderError, ProviderKind, SshTarget};

pub const DEFAULT_BASE: &str = "https://console.vast.ai/api/v0";

pub struct Vast {
    api: Api,
}

fn error_text(body: &Value) -> String {
    [&body["msg"], &body["error"], &body["message"]]
        .iter()
        .filter_map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(": ")
}

impl Vast {
    pub fn new(base: &str, key: ApiKey) -> Result<Vast, ProviderError> {
        Ok(Vast {
            api: Api::new(
                base,
                key,
                Duration::from_millis(200),
                Duration::from_secs(1),
            )?,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        launch: bool,
    ) -> Result<Answer, ProviderError> {
        self.api.send(method, path, body, launch).await
    }

    /// The cheapest rentable offer of `gpu_name` with `gpus` GPUs.
    async fn offer(&self, gpu_name: &str, gpus: u32) -> Result<Option<(u64, f64)>, ProviderError> {
        let q = json!({
            "gpu_name": { "eq": gpu_name },
            "num_gpus": { "eq": gpus.max(1) },
            "rentable": { "eq": true },
            "order": [["dph_total", "asc"]],
        });
        let path = format!("/bundles/?q={}", urlencode(&q.to_string()));
        let Answer { status, body, .. } = self.call(Method::GET, &path, None, false).await?;
        if !status.is_success() {
            return Err(ProviderError::Api(format!(
                "HTTP {status}: {}",
                error_text(&body)
            )));
        }
        Ok(body["offers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| Some((o["id"].as_u64()?, o["dph_total"].as_f64()?)))
            .min_by(|a, b| a.1.total_cmp(&b.1)))
    }

    fn instance(v: &Value) -> Instance {
        let state = match (
            v["actual_status"].as_str().unwrap_or_default(),
            v["intended_status"].as_str().unwrap_or_default(),
        ) {
            ("running", _) => InstanceState::Running,
            ("exited", "stopped") | ("stopped", _) => InstanceState::Stopped,
            ("created" | "loading" | "", _) => InstanceState::Booting,
            (other, _) => InstanceState::Other(other.to_string()),
        };
        let ssh = v["ssh_host"]
            .as_str()
            .filter(|h| !h.is_empty())
            .and_then(|h| {
                Some(SshTarget {
                    host: h.to_string(),
                    port: crate::port_of(&v["ssh_port"])?,
                    user: "root".into(),
                })
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

impl Provider for Vast {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Vast
    }

    async fn price(&self, instance_type: &str) -> Result<Option<f64>, ProviderError> {
        Ok(self.offer(instance_type, 1).await?.map(|(_, p)| p))
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, ProviderError> {
        let Some((offer, price)) = self.offer(&spec.instance_type, spec.gpus).await? else {
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
        let body = json!({
            "client_id": "me",
            "image": spec.image.clone().unwrap_or_else(|| "vastai/base-image:cuda-12.4.1-auto".into()),
            "label": spec.name,
            "disk": spec.disk_gb.unwrap_or(40),
            "runtype": "ssh",
        });
        let Answer { status, body, .. } = self
            .call(Method::PUT, &format!("/asks/{offer}/"), Some(&body), true)
            .await?;
        let contract = body["new_contract"]
            .as_u64()
            .map(|c| c.to_string())
            .or_else(|| body["new_contract"].as_str().map(String::from));
        match (body["success"].as_bool(), contract) {
            (Some(true), Some(id)) => Ok(Launched {
                instance_id: id,
                usd_per_hour: Some(price),
            }),
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
            .call(Method::GET, &format!("/instances/{id}/"), None, false)
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
            .call(Method::DELETE, &format!("/instances/{id}/"), None, false)
            .await?;
        // 404 is the documented answer for an unknown instance; the read-back decides.
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
        let Answer { status, body, .. } =
            self.call(Method::GET, "/instances/", None, false).await?;
        if !status.is_success() {
            return Err(ProviderError::Api(format!(
                "HTTP {status}: {}",
                error_text(&body)
            )));
        }
        body["instances"]
            .as_array()
            .map(|a| a.iter().map(Vast::instance).collect())
            .ok_or_else(|| ProviderError::Api("an answer without `instances`".into()))
    }

    fn calls(&self) -> u64 {
        self.api.calls()
    }

    fn key_fingerprint(&self) -> String {
        self.api.key_fingerprint()
    }
}
