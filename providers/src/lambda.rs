//! Lambda Cloud, On-Demand API v1 (`https://cloud.lambda.ai/api/v1`), as Lambda's own
//! OpenAPI description (v1.10.0) has it: `{"data": ...}` on success, `{"error": {code,
//! message, suggestion}}` on failure; one request per second, and launches one per 12 s.
//! There is no stop: billing ends only at terminate. Status: booting -> active ->
//! terminating -> terminated; `unhealthy` (never serves, still bills) and `preempted`
//! (ended by Lambda) besides. A launch names a region and exactly one registered SSH key:
//! gpuctl registers the plan's public key under a name made from its fingerprint (reused
//! when present), as SkyPilot's Lambda client does (`sky/provision/lambda_cloud`).

use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::credentials::ApiKey;
use crate::http::{Answer, Api, Pace};
use crate::provider::{gone, Instance, LaunchSpec, Launched, Offer};
use crate::{InstanceState, Provider, ProviderError, ProviderKind, SshEndpoint};

pub const DEFAULT_BASE: &str = "https://cloud.lambda.ai/api/v1";

pub struct Lambda {
    api: Api,
}

/// "Requests to the API are generally limited to one request per second. Requests to the
/// /instance-operations/launch endpoint are limited to one request per 12 seconds." (Plus
/// 50 ms, so that jitter on the way never lands a request just inside the limit.)
const ANY: Pace = Pace::new("any", 1050);
const LAUNCH: Pace = Pace::new("launch", 12_050);

/// The name gpuctl registers a public key under: stable for one key, so it is reused.
pub fn ssh_key_name_for(public_key: &str) -> String {
    let blob = public_key.split_whitespace().nth(1).unwrap_or(public_key);
    let digest = Sha256::digest(blob.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("gpuctl-{hex}")
}

/// The key type and body of an OpenSSH public key line (its comment does not matter).
fn key_material(line: &str) -> Option<(&str, &str)> {
    let mut it = line.split_whitespace();
    Some((it.next()?, it.next()?))
}

impl Lambda {
    pub fn new(base: &str, key: ApiKey) -> Result<Lambda, ProviderError> {
        Ok(Lambda {
            api: Api::new(base, key)?,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        launch: bool,
    ) -> Result<Value, ProviderError> {
        let paces: &[Pace] = if launch { &[ANY, LAUNCH] } else { &[ANY] };
        let Answer {
            status,
            body,
            is_json,
        } = self.api.send(method, path, body, paces).await?;
        if !is_json {
            return Err(ProviderError::Api(format!(
                "HTTP {status}: the answer is not JSON"
            )));
        }
        if let Some(err) = body.get("error") {
            let code = err["code"].as_str().unwrap_or_default();
            let message = err["message"].as_str().unwrap_or("no message").to_string();
            let suggestion = err["suggestion"]
                .as_str()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            return Err(match code {
                "instance-operations/launch/insufficient-capacity" => {
                    ProviderError::NoCapacity(format!("{message}{suggestion}"))
                }
                "global/quota-exceeded" => ProviderError::Quota(format!("{message}{suggestion}")),
                // Not-found only as documented: HTTP 404 with this code.
                "global/object-does-not-exist" if status == reqwest::StatusCode::NOT_FOUND => {
                    ProviderError::NotFound(message)
                }
                "global/invalid-api-key" => ProviderError::Unauthorized,
                _ => ProviderError::Api(format!("{code}: {message}{suggestion}")),
            });
        }
        if !status.is_success() {
            return Err(ProviderError::Api(format!("HTTP {status}")));
        }
        body.get("data")
            .cloned()
            .ok_or_else(|| ProviderError::Api("an answer without `data`".into()))
    }

    fn instance(v: &Value) -> Instance {
        let state = match v["status"].as_str().unwrap_or_default() {
            "booting" => InstanceState::Booting,
            "active" => InstanceState::Running,
            "terminating" => InstanceState::Stopping,
            // Both end billing: terminated by the user, or preempted by Lambda.
            "terminated" | "preempted" => InstanceState::Gone,
            "unhealthy" => InstanceState::Failed("unhealthy".into()),
            other => InstanceState::Other(other.to_string()),
        };
        let ssh = v["ip"].as_str().filter(|ip| !ip.is_empty()).map(|ip| {
            SshEndpoint::new_instance(ip, crate::port_of(&v["ssh_port"]).unwrap_or(22), "ubuntu")
        });
        Instance {
            id: v["id"].as_str().unwrap_or_default().to_string(),
            name: v["name"].as_str().unwrap_or_default().to_string(),
            state,
            usd_per_hour: v["instance_type"]["price_cents_per_hour"]
                .as_f64()
                .map(|c| c / 100.0),
            ssh,
        }
    }
}

/// GPU memory from Lambda's description ("1x A10 (24 GB PCIe)"): the first "<n> GB".
fn vram_gib(description: Option<&str>) -> Option<u32> {
    let words: Vec<&str> = description?
        .split(|c: char| c.is_whitespace() || c == '(')
        .collect();
    words
        .windows(2)
        .find(|w| w[1].starts_with("GB"))
        .and_then(|w| w[0].parse().ok())
}

impl Lambda {
    /// The instance type's price and the regions with capacity now (`/instance-types`).
    async fn offers(&self, instance_type: &str) -> Result<Vec<Offer>, ProviderError> {
        let data = self
            .call(Method::GET, "/instance-types", None, false)
            .await?;
        let item = &data[instance_type];
        let Some(cents) = item["instance_type"]["price_cents_per_hour"].as_f64() else {
            return Ok(Vec::new());
        };
        let spec = &item["instance_type"]["specs"];
        let gpus = spec["gpus"].as_u64().unwrap_or(0) as u32;
        let vram = vram_gib(item["instance_type"]["gpu_description"].as_str());
        let regions: Vec<String> = item["regions_with_capacity_available"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(String::from))
            .collect();
        let offer = |region: Option<String>, available: bool| Offer {
            instance_type: instance_type.to_string(),
            region,
            gpus,
            vram_gib: vram,
            usd_per_hour: cents / 100.0,
            available,
        };
        if regions.is_empty() {
            return Ok(vec![offer(None, false)]);
        }
        Ok(regions.into_iter().map(|r| offer(Some(r), true)).collect())
    }

    /// The one registered key name the instance will accept: the one the user named
    /// (which must exist), else the plan's public key, registered when it is not yet.
    async fn ssh_key(&self, spec: &LaunchSpec) -> Result<String, ProviderError> {
        let keys = self.call(Method::GET, "/ssh-keys", None, false).await?;
        let keys = keys.as_array().cloned().unwrap_or_default();
        if let Some(name) = &spec.ssh_key_name {
            if keys.iter().any(|k| k["name"].as_str() == Some(name)) {
                return Ok(name.clone());
            }
            return Err(ProviderError::Api(format!(
                "Lambda has no SSH key named {name:?} (GPUCTL_LAMBDA_SSH_KEY_NAME): register it at cloud.lambda.ai, or unset the variable and gpuctl registers the plan's public key"
            )));
        }
        let Some(public) = spec.ssh_public_key.as_deref() else {
            return Err(ProviderError::Api(
                "Lambda needs an SSH key: set access.identity_file in the plan (its public key is registered), or GPUCTL_LAMBDA_SSH_KEY_NAME to a key already registered".into(),
            ));
        };
        let mine = key_material(public);
        if let Some(k) = keys
            .iter()
            .find(|k| k["public_key"].as_str().and_then(key_material) == mine)
        {
            return Ok(k["name"].as_str().unwrap_or_default().to_string());
        }
        let name = ssh_key_name_for(public);
        let body = json!({ "name": name, "public_key": public.trim() });
        let added = self
            .call(Method::POST, "/ssh-keys", Some(&body), false)
            .await?;
        Ok(added["name"].as_str().unwrap_or(&name).to_string())
    }
}

impl Provider for Lambda {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Lambda
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, ProviderError> {
        let offers = self.offers(&spec.instance_type).await?;
        let price = offers.first().map(|o| o.usd_per_hour);
        // `region_name` is required: the plan's, else the first region with capacity now.
        let region = match &spec.region {
            Some(r) => r.clone(),
            None => offers
                .iter()
                .find(|o| o.available)
                .and_then(|o| o.region.clone())
                .ok_or_else(|| {
                    ProviderError::NoCapacity(format!(
                        "{}: no region has capacity now",
                        spec.instance_type
                    ))
                })?,
        };
        let key_name = self.ssh_key(spec).await?;
        let body = json!({
            "region_name": region,
            "instance_type_name": spec.instance_type,
            "ssh_key_names": [key_name],
            "quantity": 1,
            "name": spec.name,
        });
        let data = self
            .call(
                Method::POST,
                "/instance-operations/launch",
                Some(&body),
                true,
            )
            .await?;
        let id = data["instance_ids"][0]
            .as_str()
            .ok_or_else(|| ProviderError::Api("the launch answer has no instance id".into()))?;
        Ok(Launched {
            instance_id: id.to_string(),
            usd_per_hour: price,
            warning: None,
        })
    }

    async fn live_offers(
        &self,
        instance_type: &str,
        _gpus: u32,
    ) -> Result<Vec<Offer>, ProviderError> {
        self.offers(instance_type).await
    }

    async fn get(&self, id: &str) -> Result<Instance, ProviderError> {
        match self
            .call(Method::GET, &format!("/instances/{id}"), None, false)
            .await
        {
            Ok(v) => Ok(Lambda::instance(&v)),
            Err(ProviderError::NotFound(_)) => Ok(gone(id)),
            Err(e) => Err(e),
        }
    }

    async fn terminate(&self, id: &str) -> Result<(), ProviderError> {
        let body = json!({ "instance_ids": [id] });
        match self
            .call(
                Method::POST,
                "/instance-operations/terminate",
                Some(&body),
                false,
            )
            .await
        {
            Ok(_) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let data = self.call(Method::GET, "/instances", None, false).await?;
        data.as_array()
            .map(|a| a.iter().map(Lambda::instance).collect())
            .ok_or_else(|| ProviderError::Api("an answer whose `data` is not a list".into()))
    }

    fn calls(&self) -> u64 {
        self.api.calls()
    }

    fn key_fingerprint(&self) -> String {
        self.api.key_fingerprint()
    }
}
