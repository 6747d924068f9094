//! Layer 1 ending billing: on RunPod and Vast the provider gives each instance a key that
//! can act on that instance alone, in its container's environment (RunPod:
//! `RUNPOD_API_KEY` and `RUNPOD_POD_ID`; Vast: `CONTAINER_API_KEY` and `CONTAINER_ID`).
//! An agent started over SSH does not inherit them, so they are read from PID 1's
//! environment (`/proc/1/environ`), or, where that lacks them, from the file named by
//! `GPUCTL_INSTANCE_ENV` (a test hook standing in for the provider's injection; never
//! needed on a real instance). At the deadline, when no controller is there to do it, the
//! agent terminates its own instance with that key and keeps asking, with backoff, until
//! the provider accepts (or the machine goes away with it). The key is never logged,
//! written or sent anywhere but to the provider.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gpuctl_protocol::SelfTerminate;

/// The instance's own key, and which instance it is for.
pub struct ScopedKey {
    provider: String,
    instance_id: String,
    key: String,
}

impl std::fmt::Debug for ScopedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

/// How long the agent keeps asking the provider before it gives up (the controller, the
/// daemon or `down` then confirm by read-back as always).
const GIVE_UP_AFTER: Duration = Duration::from_secs(30 * 60);

fn parse(text: &str, separator: char) -> HashMap<String, String> {
    text.split(separator)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The instance environment the provider gave: PID 1's, then the test hook's file.
fn instance_env() -> HashMap<String, String> {
    let mut vars = std::fs::read("/proc/1/environ")
        .map(|b| parse(&String::from_utf8_lossy(&b), '\0'))
        .unwrap_or_default();
    if let Some(path) = std::env::var_os("GPUCTL_INSTANCE_ENV") {
        if let Ok(text) = std::fs::read_to_string(path) {
            for (k, v) in parse(&text, '\n') {
                vars.entry(k).or_insert(v);
            }
        }
    }
    vars
}

impl ScopedKey {
    /// The key for `provider` if the host has it.
    pub fn discover(provider: &str) -> Option<ScopedKey> {
        let env = instance_env();
        let (key_var, id_var) = match provider {
            "runpod" => ("RUNPOD_API_KEY", "RUNPOD_POD_ID"),
            "vast" => ("CONTAINER_API_KEY", "CONTAINER_ID"),
            _ => return None,
        };
        Some(ScopedKey {
            provider: provider.to_string(),
            key: env.get(key_var).filter(|k| !k.is_empty())?.clone(),
            instance_id: env.get(id_var).filter(|i| !i.is_empty())?.clone(),
        })
    }

    /// What it is, in words (never the key).
    pub fn describe(&self) -> String {
        match self.provider.as_str() {
            "runpod" => format!("RunPod's pod-scoped key for pod {}", self.instance_id),
            _ => format!("Vast's instance key for instance {}", self.instance_id),
        }
    }

    /// One terminate request: Ok(answer) when the provider accepted it or says the
    /// instance is already gone; Err(why) to ask again.
    async fn terminate_once(&self, client: &reqwest::Client, base: &str) -> Result<String, String> {
        let base = base.trim_end_matches('/');
        let request = match self.provider.as_str() {
            // The form runpodctl sends (api/pod.go): the input inline, the id a variable.
            "runpod" => client.post(base).json(&serde_json::json!({
                "query": "mutation Terminate($podId: String!) { podTerminate(input: {podId: $podId}) }",
                "variables": { "podId": self.instance_id },
            })),
            // openapi.yaml destroyInstance; vast-cli destroy_instance.
            _ => client.delete(format!("{base}/instances/{}/", self.instance_id)),
        };
        let resp = request
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| format!("cannot reach the provider: {}", e.without_url()))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        match self.provider.as_str() {
            "runpod" => {
                let errors = body["errors"].as_array().filter(|e| !e.is_empty());
                match (status.is_success(), errors, body.get("data")) {
                    (true, None, Some(_)) => Ok(format!(
                        "RunPod accepted podTerminate for pod {} (HTTP {status})",
                        self.instance_id
                    )),
                    _ => Err(format!("HTTP {status}: {body}")),
                }
            }
            _ => {
                if body["success"].as_bool() == Some(true) {
                    Ok(format!(
                        "Vast accepted the destroy of instance {} (HTTP {status})",
                        self.instance_id
                    ))
                } else if status == reqwest::StatusCode::NOT_FOUND && body["error"] == "not_found" {
                    Ok(format!(
                        "Vast no longer knows instance {} (HTTP 404 not_found)",
                        self.instance_id
                    ))
                } else {
                    Err(format!("HTTP {status}: {body}"))
                }
            }
        }
    }

    /// Terminate this instance, asking again with backoff until the provider accepts.
    pub async fn terminate(&self, target: &SelfTerminate) -> String {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
        {
            Ok(c) => c,
            Err(e) => return format!("no HTTP client: {e}"),
        };
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.terminate_once(&client, &target.api_base).await {
                Ok(answer) => {
                    tracing::info!("layer 1: {answer} (attempt {attempt})");
                    return format!("{answer}, with {}, attempt {attempt}", self.describe());
                }
                Err(e) if start.elapsed() < GIVE_UP_AFTER => {
                    tracing::warn!("layer 1: the terminate was not accepted ({e}); asking again");
                    let pause = Duration::from_millis(500 * u64::from(attempt.min(60)));
                    tokio::time::sleep(pause.min(Duration::from_secs(30))).await;
                }
                Err(e) => {
                    return format!(
                        "not accepted after {attempt} attempts over {} s, with {}: {e}",
                        start.elapsed().as_secs(),
                        self.describe()
                    )
                }
            }
        }
    }
}

/// Whether a controller touched its heartbeat file in the agent's folder recently.
pub fn controller_present(dir: &std::path::Path) -> bool {
    std::fs::metadata(dir.join(gpuctl_protocol::CONTROLLER_HEARTBEAT))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| {
            age < Duration::from_secs(gpuctl_protocol::CONTROLLER_HEARTBEAT_STALE_SECS)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_read_without_showing_the_key() {
        let vars = parse("A=1\0RUNPOD_API_KEY=secret\0RUNPOD_POD_ID=p1\0", '\0');
        assert_eq!(vars["RUNPOD_POD_ID"], "p1");
        let k = ScopedKey {
            provider: "runpod".into(),
            instance_id: "p1".into(),
            key: vars["RUNPOD_API_KEY"].clone(),
        };
        assert!(!format!("{k:?} {}", k.describe()).contains("secret"));
    }
}
