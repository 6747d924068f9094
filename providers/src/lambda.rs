//! Lambda Cloud, On-Demand API v1 (`https://cloud.lambda.ai/api/v1`): `{"data": ...}` on
//! success, `{"error": {code, message, suggestion}}` on failure; about 1 request/s, and one
//! launch per 10 s. There is no stop: billing ends only at terminate. Status goes
//! booting -> active, and terminating -> terminated.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::credentials::ApiKey;
use crate::http::{Answer, Api};
use crate::provider::{gone, Instance, LaunchSpec, Launched};
use crate::{InstanceState, Provider, ProviderError, ProviderKind, SshTarget};

pub const DEFAULT_BASE: &str = "https://cloud.lambda.ai/api/v1";

pub struct Lambda {
    api: Api,
}

impl Lambda {
    pub fn new(base: &str, key: ApiKey) -> Result<Lambda, ProviderError> {
        Ok(Lambda {
            api: Api::new(base, key, Duration::from_secs(1), Duration::from_secs(10))?,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        launch: bool,
    ) -> Result<Value, ProviderError> {
        let Answer {
            status,
            body,
            is_json,
        } = self.api.send(method, path, body, launch).await?;
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
            "terminated" => InstanceState::Gone,
            other => InstanceState::Other(other.to_string()),
        };
        let ssh = v["ip"]
            .as_str()
            .filter(|ip| !ip.is_empty())
            .map(|ip| SshTarget {
                host: ip.to_string(),
                port: crate::port_of(&v["ssh_port"]).unwrap_or(22),
                user: "ubuntu".into(),
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

impl Provider for Lambda {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Lambda
    }

    async fn price(&self, instance_type: &str) -> Result<Option<f64>, ProviderError> {
        let data = self
            .call(Method::GET, "/instance-types", None, false)
            .await?;
        Ok(data[instance_type]["instance_type"]["price_cents_per_hour"]
            .as_f64()
            .map(|c| c / 100.0))
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, ProviderError> {
        let price = self.price(&spec.instance_type).await.ok().flatten();
        let body = json!({
            "region_name": spec.region,
            "instance_type_name": spec.instance_type,
            "ssh_key_names": spec.ssh_key_names,
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
        })
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
