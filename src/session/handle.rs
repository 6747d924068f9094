//! How to reach a session's agent again from another process: written to the session row
//! as soon as the agent is started, read back by `gpuctl daemon` and `gpuctl down` when the
//! `up` that started it is gone.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::host::Host;
use super::local_host::LocalAgent;
use super::remote_host::RemoteAgent;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentHandle {
    /// A child process of `up` on this machine (its own process group).
    Local {
        pid: u32,
        port: u16,
        /// The agent's config file: its path is in the agent's command line, which is how a
        /// reused PID is told apart from the agent.
        config: PathBuf,
        work: PathBuf,
        agent_bin: PathBuf,
    },
    /// A detached process on an SSH host.
    Remote {
        pid: u32,
        dir: String,
        bin: String,
        port: u16,
        ssh: SshAddress,
    },
}

/// Where the host is and which key it must show (the fingerprint trusted at connect).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshAddress {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity_file: Option<PathBuf>,
    pub fingerprint: String,
}

impl AgentHandle {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> anyhow::Result<AgentHandle> {
        serde_json::from_str(text).context("the session's agent handle cannot be read")
    }

    /// The work folder on this machine (local agents), where the token and logs live.
    pub fn work(&self) -> Option<&Path> {
        match self {
            AgentHandle::Local { work, .. } => Some(work),
            AgentHandle::Remote { .. } => None,
        }
    }

    /// Reach the agent again. A remote host must show the same key as at the start.
    pub async fn reattach(&self) -> anyhow::Result<Host> {
        match self {
            AgentHandle::Local {
                pid,
                port,
                config,
                work,
                ..
            } => Ok(Host::Local {
                agent: Box::new(LocalAgent::adopt(
                    *pid,
                    *port,
                    config,
                    &work.join("agent.log"),
                )),
                work: work.clone(),
            }),
            AgentHandle::Remote {
                pid,
                dir,
                bin,
                port,
                ssh,
            } => {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default();
                let target = crate::ssh::SshTarget {
                    host: ssh.host.clone(),
                    port: ssh.port,
                    user: ssh.user.clone(),
                    identity_file: ssh.identity_file.clone(),
                    pinned: Some(ssh.fingerprint.clone()),
                    known_hosts: home.join(".ssh/known_hosts"),
                    accept_new: false,
                };
                let connected = RemoteAgent::connect(&target).await?;
                Ok(Host::Remote(Box::new(RemoteAgent::attach(
                    connected,
                    *pid,
                    dir.clone(),
                    bin.clone(),
                    *port,
                ))))
            }
        }
    }
}
