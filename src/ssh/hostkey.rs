//! Host key verification by the endpoint's policy: a pinned fingerprint, the user's
//! known_hosts (an unknown key refused unless `--accept-new-host-key`, a changed one
//! refused loudly), or a new cloud instance's first key (then pinned by the session).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gpuctl_providers::HostKeyPolicy;

use russh::keys::ssh_key::{HashAlg, PublicKey};
use russh::keys::PublicKeyOrCertificate;

/// What the check decided, kept for the error message and the session row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyVerdict {
    Pinned { fingerprint: String },
    Known { fingerprint: String },
    Learned { fingerprint: String },
    Unknown { fingerprint: String },
    Changed { fingerprint: String, line: usize },
    PinMismatch { fingerprint: String, pinned: String },
    Unreadable { fingerprint: String, reason: String },
}

impl HostKeyVerdict {
    pub fn accepted(&self) -> bool {
        matches!(
            self,
            HostKeyVerdict::Pinned { .. }
                | HostKeyVerdict::Known { .. }
                | HostKeyVerdict::Learned { .. }
        )
    }
}

/// The user's known_hosts file (`~/.ssh/known_hosts`): the one place its path is made.
pub fn user_known_hosts() -> PathBuf {
    crate::settings::settings().known_hosts()
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The fingerprint of a key written as `type base64`.
pub fn fingerprint_of_line(line: &str) -> Option<String> {
    PublicKey::from_openssh(line).ok().map(|k| fingerprint(&k))
}

/// The russh handler: it only checks the host key.
pub struct Checker {
    pub host: String,
    pub port: u16,
    pub policy: HostKeyPolicy,
    pub verdict: Arc<Mutex<Option<HostKeyVerdict>>>,
    /// The key the host presented, as a known_hosts key (`type base64`).
    pub seen: Arc<Mutex<Option<String>>>,
}

impl Checker {
    fn decide(&self, key: &PublicKey) -> HostKeyVerdict {
        let fp = fingerprint(key);
        let accept_new = match &self.policy {
            HostKeyPolicy::Pinned {
                fingerprint: pinned,
            } => {
                return if pinned.trim_end_matches('=') == fp.trim_end_matches('=') {
                    HostKeyVerdict::Pinned { fingerprint: fp }
                } else {
                    HostKeyVerdict::PinMismatch {
                        fingerprint: fp,
                        pinned: pinned.clone(),
                    }
                };
            }
            // Never written to the user's known_hosts: the session pins it instead.
            HostKeyPolicy::FirstUse => return HostKeyVerdict::Learned { fingerprint: fp },
            HostKeyPolicy::KnownHosts { accept_new } => *accept_new,
        };
        let known_hosts = user_known_hosts();
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, &known_hosts) {
            Ok(true) => HostKeyVerdict::Known { fingerprint: fp },
            Ok(false) if accept_new => match russh::keys::known_hosts::learn_known_hosts_path(
                &self.host,
                self.port,
                key,
                &known_hosts,
            ) {
                Ok(()) => HostKeyVerdict::Learned { fingerprint: fp },
                Err(e) => HostKeyVerdict::Unreadable {
                    fingerprint: fp,
                    reason: e.to_string(),
                },
            },
            Ok(false) => HostKeyVerdict::Unknown { fingerprint: fp },
            Err(russh::keys::Error::KeyChanged { line }) => HostKeyVerdict::Changed {
                fingerprint: fp,
                line,
            },
            Err(e) => HostKeyVerdict::Unreadable {
                fingerprint: fp,
                reason: e.to_string(),
            },
        }
    }
}

impl russh::client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // A host certificate is not trusted by itself: the key it certifies is checked.
            PublicKeyOrCertificate::Certificate(cert) => {
                PublicKey::new(cert.public_key().clone(), "")
            }
        };
        let verdict = self.decide(&key);
        if let (Ok(line), Ok(mut seen)) = (key.to_openssh(), self.seen.lock()) {
            *seen = Some(
                line.split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        let accepted = verdict.accepted();
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some(verdict);
        }
        Ok(accepted)
    }
}
