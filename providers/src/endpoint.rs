//! Where a host is reached over SSH and how its host key is trusted: one type from the
//! provider's answer, through the connection, to the session's handle (which stores it as
//! is, so that a takeover days later trusts exactly the key the session started with).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The key file to authenticate with (else ssh-agent's keys).
    pub identity_file: Option<PathBuf>,
    pub host_key: HostKeyPolicy,
}

/// How the host's key is trusted. Nothing is sent to a host whose key is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum HostKeyPolicy {
    /// Exactly this SHA256 fingerprint: the plan's `host_key`, or the key a session
    /// trusted when it first connected (every later connection: reconnects, takeovers).
    Pinned { fingerprint: String },
    /// The user's `~/.ssh/known_hosts`: a key not in it is refused unless `accept_new`
    /// (then recorded there); a changed key is always refused.
    KnownHosts { accept_new: bool },
    /// A cloud instance just created: it has a new key no one can know in advance, so the
    /// key it shows on the first connection is trusted, and pinned from then on.
    FirstUse,
}

impl SshEndpoint {
    /// A freshly launched instance as its provider describes it.
    pub fn new_instance(host: impl Into<String>, port: u16, user: impl Into<String>) -> Self {
        SshEndpoint {
            host: host.into(),
            port,
            user: user.into(),
            identity_file: None,
            host_key: HostKeyPolicy::FirstUse,
        }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The same endpoint, trusting only `fingerprint` from now on.
    pub fn pinned_to(&self, fingerprint: &str) -> SshEndpoint {
        SshEndpoint {
            host_key: HostKeyPolicy::Pinned {
                fingerprint: fingerprint.to_string(),
            },
            ..self.clone()
        }
    }
}
