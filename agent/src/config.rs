//! The agent's one config file, written by the controller (the wire type lives in
//! `gpuctl-protocol`), and the bearer token it points at.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use gpuctl_protocol::{AgentConfig, PROTOCOL_VERSION};

/// A folder sessions on this host share, beside theirs: `<agent dir>/../../<name>`
/// (`~/.gpuctl/` on an SSH host, `$GPUCTL_HOME` locally): `venvs`, `models`.
pub fn shared_dir(agent_dir: &Path, name: &str) -> PathBuf {
    agent_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(agent_dir)
        .join(name)
}

pub struct Loaded {
    pub config: AgentConfig,
    pub token: String,
    pub evidence_dir: PathBuf,
}

pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading agent config {}", path.display()))?;
    let config: AgentConfig = serde_json::from_str(&text)
        .with_context(|| format!("agent config {} is not valid", path.display()))?;
    if config.protocol != PROTOCOL_VERSION {
        bail!(
            "agent config speaks protocol {} but this agent speaks {PROTOCOL_VERSION}; deploy the agent built with this gpuctl",
            config.protocol
        );
    }
    let token = std::fs::read_to_string(&config.token_file)
        .with_context(|| format!("reading the token file {}", config.token_file))?
        .trim()
        .to_string();
    if token.len() < 16 {
        bail!(
            "the token in {} is too short to protect the API",
            config.token_file
        );
    }
    let evidence_dir = PathBuf::from(&config.evidence_dir);
    std::fs::create_dir_all(&evidence_dir)
        .with_context(|| format!("creating {}", evidence_dir.display()))?;
    Ok(Loaded {
        config,
        token,
        evidence_dir,
    })
}
