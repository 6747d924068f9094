//! A small client for the agent's OpenAI-compatible API (and any other such server).

use std::time::Duration;

use anyhow::{bail, Context};
use gpuctl_protocol::AgentStatus;
use serde_json::json;

pub struct AgentClient {
    http: reqwest::Client,
    base: String,
    token: String,
    pub model: String,
}

#[derive(Debug, Clone)]
pub struct ChatAnswer {
    pub content: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl AgentClient {
    /// `base` is like `http://127.0.0.1:8000`; requests time out after `timeout`.
    pub fn new(
        base: &str,
        token: &str,
        model: &str,
        timeout: Duration,
    ) -> anyhow::Result<AgentClient> {
        gpuctl_providers::install_tls();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()?;
        Ok(AgentClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            model: model.to_string(),
        })
    }

    pub async fn health(&self) -> anyhow::Result<AgentStatus> {
        let resp = self
            .http
            .get(format!("{}/health", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("health answered {}", resp.status());
        }
        Ok(resp.json().await?)
    }

    pub async fn chat(
        &self,
        prompt: &str,
        max_tokens: u32,
        temperature: f64,
    ) -> anyhow::Result<ChatAnswer> {
        let body = json!({
            "model": self.model,
            "messages": [{ "role": "user", "content": prompt }],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": 0,
        });
        let resp = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .context("the chat request did not complete")?;
        let status = resp.status();
        let value: serde_json::Value = resp.json().await.context("the answer is not JSON")?;
        if !status.is_success() {
            let msg = value["error"]["message"].as_str().unwrap_or("no message");
            bail!("the server answered {status}: {msg}");
        }
        Ok(ChatAnswer {
            content: value["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            prompt_tokens: value["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: value["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        })
    }
}
