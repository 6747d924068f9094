//! `model.url` + `model.sha256`: the model file is downloaded on the host itself (never
//! through the laptop), into a cache shared by the sessions of this host, checked against
//! its sha256 before anything serves it, and reused by later sessions.
//!
//! The hub token is sent only where the controller allowed it (a Hugging Face host), in a
//! header; the URL is logged without its query string (signed URLs carry keys there).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use gpuctl_protocol::ModelFetch;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Written beside a checked file: its sha256.
const VERIFIED: &str = ".verified";
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The URL as it may be logged: no query, no user info.
pub fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(an unparsable URL)".into(),
    }
}

/// Where the file of `fetch` is kept on this host.
fn cache_dir(agent_dir: &Path, fetch: &ModelFetch) -> PathBuf {
    crate::config::shared_dir(agent_dir, "models").join(&fetch.sha256)
}

/// The file's name: the URL's last path segment, kept to safe characters.
fn file_name(url: &str) -> String {
    let last = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.path_segments()
                .and_then(|mut s| s.next_back().map(String::from))
        })
        .unwrap_or_default();
    let safe: String = last
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    if safe.is_empty() || safe.starts_with('.') {
        "model".into()
    } else {
        safe
    }
}

/// Download (or reuse) the file; returns its path on the host.
pub async fn fetch(
    fetch: &ModelFetch,
    agent_dir: &Path,
    token: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let dir = cache_dir(agent_dir, fetch);
    let path = dir.join(file_name(&fetch.url));
    if std::fs::read_to_string(dir.join(VERIFIED)).is_ok_and(|s| s.trim() == fetch.sha256)
        && path.is_file()
    {
        tracing::info!(
            "fetch: reusing {} (downloaded by an earlier session, sha256 {} checked then)",
            path.display(),
            fetch.sha256
        );
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let part = dir.join(format!("{}.part", file_name(&fetch.url)));
    tracing::info!(
        "fetch: downloading {} to {}",
        shown(&fetch.url),
        path.display()
    );
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("gpuctl-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("http client")?;
    let mut req = client.get(&fetch.url);
    if let (true, Some(t)) = (fetch.send_token, token) {
        req = req.bearer_auth(t);
    }
    let answer = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("fetching {}: {}", shown(&fetch.url), e.without_url()))?;
    if !answer.status().is_success() {
        bail!(
            "fetching {}: the server answered {}{}",
            shown(&fetch.url),
            answer.status(),
            if answer.status().as_u16() == 401 || answer.status().as_u16() == 403 {
                " (a gated model needs HF_TOKEN set where `gpuctl up` runs)"
            } else {
                ""
            }
        );
    }
    let total = answer.content_length();
    let mut file = tokio::fs::File::create(&part)
        .await
        .with_context(|| format!("creating {}", part.display()))?;
    let mut hasher = Sha256::new();
    let mut got: u64 = 0;
    let (started, mut said) = (Instant::now(), Instant::now());
    let mut body = answer.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| anyhow::anyhow!("fetching {}: {}", shown(&fetch.url), e.without_url()))?;
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", part.display()))?;
        got += chunk.len() as u64;
        if said.elapsed() >= PROGRESS_EVERY {
            said = Instant::now();
            match total {
                Some(t) if t > 0 => tracing::info!(
                    "fetch: {} of {} MB ({} %)",
                    got / 1_000_000,
                    t / 1_000_000,
                    got * 100 / t
                ),
                _ => tracing::info!("fetch: {} MB", got / 1_000_000),
            }
        }
    }
    file.flush().await.context("flushing the model file")?;
    drop(file);
    let sha = format!("{:x}", hasher.finalize());
    if sha != fetch.sha256 {
        let _ = std::fs::remove_file(&part);
        bail!(
            "the file at {} does not match model.sha256: expected {}, got {} ({got} bytes); nothing was served. Fix model.sha256 or model.url",
            shown(&fetch.url),
            fetch.sha256,
            sha
        );
    }
    std::fs::rename(&part, &path).with_context(|| format!("keeping {}", path.display()))?;
    std::fs::write(dir.join(VERIFIED), &sha).context("recording the check")?;
    tracing::info!(
        "fetch: {} MB in {} s, sha256 checked",
        got / 1_000_000,
        started.elapsed().as_secs()
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn logged_urls_lose_their_query_and_names_stay_safe() {
        assert_eq!(
            super::shown("https://u:p@host/x/model.gguf?X-Amz-Signature=abc"),
            "https://host/x/model.gguf"
        );
        assert_eq!(super::file_name("https://h/a/../b/m.gguf?x=1"), "m.gguf");
        assert_eq!(super::file_name("https://h/"), "model");
    }
}
