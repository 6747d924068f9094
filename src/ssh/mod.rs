//! SSH to rented hosts with russh: host keys verified (pinned fingerprint, else
//! known_hosts), key authentication only (a file, or ssh-agent), exec, SFTP and the
//! localhost tunnel. Passwords are never used.

mod connect;
mod hostkey;
mod remote;
mod tunnel;

pub use connect::{connect, public_key_line};
pub use gpuctl_providers::{HostKeyPolicy, SshEndpoint};
pub use hostkey::{fingerprint, fingerprint_of_line, user_known_hosts, HostKeyVerdict};
pub use remote::{sh_quote, Download, Exec, Session};
pub use tunnel::{live, Shared, Tunnel};

use std::time::Duration;

/// How long the TCP connection and the SSH handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{addr} did not complete the SSH handshake within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("the host key of {addr} is not known: {fingerprint}\n  hint: check it on the host (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then pin it in the plan:\n    host_key = \"{fingerprint}\"\n  or run `gpuctl up --accept-new-host-key` to record it in {known_hosts}")]
    HostKeyUnknown {
        addr: String,
        fingerprint: String,
        known_hosts: String,
    },
    #[error("WARNING: THE HOST KEY OF {addr} HAS CHANGED ({known_hosts}:{line} holds another key; the host offers {fingerprint}). Someone may be intercepting the connection, or the host was rebuilt. Nothing was sent. If the change is expected, remove line {line} of {known_hosts} and check the new key")]
    HostKeyChanged {
        addr: String,
        fingerprint: String,
        known_hosts: String,
        line: usize,
    },
    #[error("the host key of {addr} is {fingerprint}, but the plan pins {pinned}: refusing to connect (nothing was sent)")]
    HostKeyPinMismatch {
        addr: String,
        fingerprint: String,
        pinned: String,
    },
    #[error("{user}@{addr} refused every key offered ({tried}); check `user` and `access.identity_file` in the plan, or the keys in ssh-agent")]
    AuthFailed {
        user: String,
        addr: String,
        tried: String,
    },
    #[error("cannot use the key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("ssh: {0}")]
    Protocol(String),
}

impl SshError {
    /// Worth retrying a moment later (a host still booting), unlike a refused key.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SshError::Unreachable { .. } | SshError::Timeout { .. }
        )
    }
}

impl From<russh::Error> for SshError {
    fn from(e: russh::Error) -> Self {
        SshError::Protocol(e.to_string())
    }
}
