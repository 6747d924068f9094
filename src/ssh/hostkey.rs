//! Host key verification: the plan's pinned fingerprint, else known_hosts. An unknown key
//! is refused (unless `--accept-new-host-key`), a changed one refused loudly.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The russh handler: it only checks the host key.
pub struct Checker {
    pub host: String,
    pub port: u16,
    pub pinned: Option<String>,
    pub known_hosts: PathBuf,
    pub accept_new: bool,
    pub verdict: Arc<Mutex<Option<HostKeyVerdict>>>,
}

impl Checker {
    fn decide(&self, key: &PublicKey) -> HostKeyVerdict {
        let fp = fingerprint(key);
        if let Some(pinned) = &self.pinned {
            return if pinned.trim_end_matches('=') == fp.trim_end_matches('=') {
                HostKeyVerdict::Pinned { fingerprint: fp }
            } else {
                HostKeyVerdict::PinMismatch {
                    fingerprint: fp,
                    pinned: pinned.clone(),
                }
            };
        }
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => HostKeyVerdict::Known { fingerprint: fp },
            Ok(false) if self.accept_new => match russh::keys::known_hosts::learn_known_hosts_path(
                &self.host,
                self.port,
                key,
                &self.known_hosts,
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
        let verdict = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.decide(key),
            // A host certificate is not trusted by itself: the key it certifies is checked.
            PublicKeyOrCertificate::Certificate(cert) => {
                self.decide(&PublicKey::new(cert.public_key().clone(), ""))
            }
        };
        let accepted = verdict.accepted();
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some(verdict);
        }
        Ok(accepted)
    }
}
