//! RunPod through its GraphQL API (`https://api.runpod.io/graphql`, the path the official
//! SDK and dstack use). Errors come back as HTTP 200 with an `errors` array, so every
//! answer is checked for one. A stopped pod still bills its volume: gpuctl terminates.

use reqwest::Method;
use serde_json::{json, Value};

use crate::credentials::ApiKey;
use crate::http::{Api, Pace};
use crate::provider::{gone, Instance, LaunchSpec, Launched, Offer};
use crate::{InstanceState, Provider, ProviderError, ProviderKind, SshEndpoint};

pub const DEFAULT_BASE: &str = "https://api.runpod.io/graphql";

const POD_FIELDS: &str = "id name desiredStatus costPerHr runtime { ports { ip isIpPublic privatePort publicPort type } }";

/// RunPod documents no rate limit for its GraphQL API: a gentle pace of our own.
const ANY: Pace = Pace::new("any", 200);
const LAUNCH: Pace = Pace::new("launch", 1000);

pub struct Runpod {
    api: Api,
}

impl Runpod {
    pub fn new(base: &str, key: ApiKey) -> Result<Runpod, ProviderError> {
        Ok(Runpod {
            api: Api::new(base, key)?,
        })
    }

    async fn graphql(
        &self,
        query: &str,
        variables: Value,
        launch: bool,
    ) -> Result<Value, ProviderError> {
        let body = json!({ "query": query, "variables": variables });
        let paces: &[Pace] = if launch { &[ANY, LAUNCH] } else { &[ANY] };
        let answer = self.api.send(Method::POST, "", Some(&body), paces).await?;
        let status = answer.status;
        if !answer.is_json || !answer.body.is_object() {
            // A proxy's error page or an empty body is no answer at all, whatever its status.
            return Err(ProviderError::Api(format!(
                "HTTP {status}: the answer is not a GraphQL response"
            )));
        }
        let has_data = answer.has("data");
        let body = answer.body;
        if let Some(errors) = body["errors"].as_array().filter(|e| !e.is_empty()) {
            let message = errors
                .iter()
                .filter_map(|e| e["message"].as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let lower = message.to_lowercase();
            return Err(
                if lower.contains("no longer any instances available")
                    || lower.contains("no instances available")
                    || lower.contains("not enough free gpus")
                {
                    ProviderError::NoCapacity(message)
                } else if lower.contains("not found") {
                    ProviderError::NotFound(message)
                } else if lower.contains("unauthorized") || lower.contains("api key") {
                    ProviderError::Unauthorized
                } else if lower.contains("quota")
                    || lower.contains("spend limit")
                    || lower.contains("balance")
                {
                    ProviderError::Quota(message)
                } else {
                    ProviderError::Api(message)
                },
            );
        }
        if !status.is_success() || !has_data {
            return Err(ProviderError::Api(format!("HTTP {status} without `data`")));
        }
        Ok(body["data"].clone())
    }

    fn instance(v: &Value) -> Instance {
        let ports = v["runtime"]["ports"].as_array();
        let state = match v["desiredStatus"].as_str().unwrap_or_default() {
            "RUNNING" if ports.is_some() => InstanceState::Running,
            "RUNNING" | "CREATED" => InstanceState::Booting,
            "EXITED" => InstanceState::Stopped,
            "TERMINATED" => InstanceState::Gone,
            other => InstanceState::Other(other.to_string()),
        };
        let ssh = ports
            .into_iter()
            .flatten()
            .find(|p| {
                p["privatePort"].as_u64() == Some(22) && p["isIpPublic"].as_bool() == Some(true)
            })
            .and_then(|p| {
                Some(SshEndpoint::new_instance(
                    p["ip"].as_str()?,
                    crate::port_of(&p["publicPort"])?,
                    "root",
                ))
            });
        Instance {
            id: v["id"].as_str().unwrap_or_default().to_string(),
            name: v["name"].as_str().unwrap_or_default().to_string(),
            state,
            usd_per_hour: v["costPerHr"].as_f64(),
            ssh,
        }
    }
}

impl Provider for Runpod {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Runpod
    }

    async fn live_offers(
        &self,
        instance_type: &str,
        gpus: u32,
    ) -> Result<Vec<Offer>, ProviderError> {
        // runpod-python's queries/gpus.py asks `gpuTypes(input: {id: ...})` for these fields.
        let data = self
            .graphql(
                "query GpuTypes($input: GpuTypeFilter) { gpuTypes(input: $input) { id displayName memoryInGb secureCloud communityCloud securePrice communityPrice } }",
                json!({ "input": { "id": instance_type } }),
                false,
            )
            .await?;
        let gpus = gpus.max(1);
        let mut out: Vec<Offer> = data["gpuTypes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["id"].as_str() == Some(instance_type))
            .flat_map(|g| {
                // RunPod prices per GPU, in its secure and its community cloud.
                [
                    ("SECURE", "securePrice", "secureCloud"),
                    ("COMMUNITY", "communityPrice", "communityCloud"),
                ]
                .into_iter()
                .filter_map(|(cloud, price, offered)| {
                    let p = g[price].as_f64().filter(|p| *p > 0.0)?;
                    Some(Offer {
                        instance_type: instance_type.to_string(),
                        region: Some(cloud.to_string()),
                        gpus,
                        vram_gib: g["memoryInGb"].as_u64().map(|m| m as u32),
                        usd_per_hour: p * f64::from(gpus),
                        available: g[offered].as_bool().unwrap_or(false),
                    })
                })
                .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| a.usd_per_hour.total_cmp(&b.usd_per_hour));
        Ok(out)
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, ProviderError> {
        // RunPod's images put `PUBLIC_KEY` into root's authorized_keys at start (RunPod's
        // docs, "Use SSH"; runpod-python passes env as [{key, value}]).
        let env: Vec<Value> = spec
            .ssh_public_key
            .iter()
            .map(|k| json!({ "key": "PUBLIC_KEY", "value": k.trim() }))
            .collect();
        let mut input = json!({
            "name": spec.name,
            "imageName": spec.image.clone().unwrap_or_else(|| "runpod/base:0.6.2-cuda12.2.0".into()),
            "gpuTypeId": spec.instance_type,
            "gpuCount": spec.gpus.max(1),
            "cloudType": "ALL",
            "containerDiskInGb": spec.disk_gb.unwrap_or(40),
            "volumeInGb": 0,
            "ports": "22/tcp",
            "startSsh": true,
            "supportPublicIp": true,
            "env": env,
        });
        // An absent data center is left out (any), never sent as null.
        if let Some(r) = &spec.region {
            input["dataCenterId"] = json!(r);
        }
        let data = self
            .graphql(
                &format!("mutation Deploy($input: PodFindAndDeployOnDemandInput!) {{ podFindAndDeployOnDemand(input: $input) {{ {POD_FIELDS} }} }}"),
                json!({ "input": input }),
                true,
            )
            .await?;
        let pod = &data["podFindAndDeployOnDemand"];
        let id = pod["id"]
            .as_str()
            .ok_or_else(|| ProviderError::Api("the deploy answer has no pod id".into()))?;
        Ok(Launched {
            instance_id: id.to_string(),
            usd_per_hour: pod["costPerHr"].as_f64(),
            warning: None,
        })
    }

    async fn get(&self, id: &str) -> Result<Instance, ProviderError> {
        // Errors, "not found" among them, are not a read-back: only `pod: null` in a
        // well-formed answer (the pod is no longer listed) or TERMINATED counts as gone.
        let data = self
            .graphql(
                &format!(
                    "query Pod($input: PodFilter) {{ pod(input: $input) {{ {POD_FIELDS} }} }}"
                ),
                json!({ "input": { "podId": id } }),
                false,
            )
            .await?;
        if !data.as_object().is_some_and(|d| d.contains_key("pod")) {
            return Err(ProviderError::Api("an answer without `pod`".into()));
        }
        if data["pod"].is_null() {
            return Ok(gone(id));
        }
        Ok(Runpod::instance(&data["pod"]))
    }

    async fn terminate(&self, id: &str) -> Result<(), ProviderError> {
        match self
            .graphql(
                "mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }",
                json!({ "input": { "podId": id } }),
                false,
            )
            .await
        {
            // "pod not found to terminate": it is already gone.
            Ok(_) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let data = self
            .graphql(
                &format!("query Pods {{ myself {{ pods {{ {POD_FIELDS} }} }} }}"),
                json!({}),
                false,
            )
            .await?;
        // An empty list is an answer; a missing one is not (orphans and lost launches are
        // looked for here: "none" must mean none).
        data["myself"]["pods"]
            .as_array()
            .map(|a| a.iter().map(Runpod::instance).collect())
            .ok_or_else(|| ProviderError::Api("an answer without `myself.pods`".into()))
    }

    fn calls(&self) -> u64 {
        self.api.calls()
    }

    fn key_fingerprint(&self) -> String {
        self.api.key_fingerprint()
    }
}
