//! How to reach a session's agent again from another process: written to the session row
//! as soon as the agent is started, read back by `gpuctl daemon` and `gpuctl down` when the
//! `up` that started it is gone.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::host::Host;
use super::local_host::LocalAgent;
use super::remote_host::RemoteAgent;
use crate::ssh::{HostKeyPolicy, SshEndpoint};

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
        /// Pinned to the key trusted at the start. Handles written before the endpoint
        /// type (`{host, port, user, identity_file, fingerprint}`) are still read.
        #[serde(deserialize_with = "endpoint_or_legacy")]
        ssh: SshEndpoint,
    },
}

/// An endpoint as stored now, or as gpuctl stored it before (a bare fingerprint).
fn endpoint_or_legacy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SshEndpoint, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Endpoint(SshEndpoint),
        Legacy {
            host: String,
            port: u16,
            user: String,
            identity_file: Option<PathBuf>,
            fingerprint: String,
        },
    }
    Ok(match Stored::deserialize(d)? {
        Stored::Endpoint(e) => e,
        Stored::Legacy {
            host,
            port,
            user,
            identity_file,
            fingerprint,
        } => SshEndpoint {
            host,
            port,
            user,
            identity_file,
            host_key: HostKeyPolicy::Pinned { fingerprint },
        },
    })
}

/// The endpoint as this machine can use it. The handle records the key file of the
/// machine that ran `up` (never the key): on another host (a team's daemon) that path
/// does not exist, and the host's own key, `GPUCTL_DAEMON_IDENTITY`, is offered instead
/// (else ssh-agent's keys; failing both, the stop is recorded unconfirmed, not assumed).
/// The host key stays pinned either way.
fn own_identity(ssh: &SshEndpoint) -> SshEndpoint {
    let mut ssh = ssh.clone();
    let missing = ssh.identity_file.as_ref().is_some_and(|p| !p.exists());
    if missing || ssh.identity_file.is_none() {
        if let Some(own) = &crate::settings::settings().daemon_identity {
            ssh.identity_file = Some(own.clone());
        } else if missing {
            ssh.identity_file = None;
        }
    }
    ssh
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
                let connected = RemoteAgent::connect(&own_identity(ssh)).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_written_before_the_endpoint_type_is_read_as_pinned() {
        let old = r#"{"kind":"remote","pid":7,"dir":"/d","bin":"/b","port":9,"ssh":{"host":"h","port":22,"user":"u","identity_file":null,"fingerprint":"SHA256:abc"}}"#;
        let AgentHandle::Remote { ssh, .. } = AgentHandle::from_json(old).expect("read") else {
            panic!("remote");
        };
        assert_eq!(
            ssh.host_key,
            HostKeyPolicy::Pinned {
                fingerprint: "SHA256:abc".into()
            }
        );
        let again = AgentHandle::from_json(
            &AgentHandle::Remote {
                pid: 7,
                dir: "/d".into(),
                bin: "/b".into(),
                port: 9,
                ssh: ssh.clone(),
            }
            .to_json(),
        )
        .expect("round trip");
        assert!(matches!(again, AgentHandle::Remote { ssh: s, .. } if s == ssh));
    }
}
