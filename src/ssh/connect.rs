//! Connecting and authenticating: the plan's key file (ed25519, ECDSA, RSA; an encrypted
//! one is opened with `GPUCTL_KEY_PASSPHRASE` or a passphrase typed on the terminal), then
//! the keys of a running ssh-agent. Each step has a deadline.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, AuthResult};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};

use gpuctl_providers::SshEndpoint;

use super::hostkey::{user_known_hosts, Checker, HostKeyVerdict};
use super::remote::Session;
use super::{SshError, CONNECT_TIMEOUT};

/// russh's algorithms, with AES-GCM ahead of ChaCha20-Poly1305: ring runs AES-GCM on the
/// CPU's AES and carry-less multiply instructions (every x86-64 server and laptop of the
/// last decade), where its ChaCha20-Poly1305 for SSH is the slower of the two; the tunnel's
/// throughput is bound by the cipher (BENCHMARKS.md, SSH route). A server without AES-GCM
/// still gets ChaCha20-Poly1305 or AES-CTR.
fn client_preferred() -> russh::Preferred {
    use russh::cipher;
    const CIPHERS: &[cipher::Name] = &[
        cipher::AES_256_GCM,
        cipher::AES_128_GCM,
        cipher::CHACHA20_POLY1305,
        cipher::AES_256_CTR,
        cipher::AES_192_CTR,
        cipher::AES_128_CTR,
    ];
    russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(CIPHERS),
        ..russh::Preferred::default()
    }
}

/// The passphrase of an encrypted key: `GPUCTL_KEY_PASSPHRASE`, else asked on the terminal.
fn passphrase(path: &Path) -> Option<String> {
    if let Some(p) = crate::settings::secret("GPUCTL_KEY_PASSPHRASE") {
        return Some(p);
    }
    use std::io::{BufRead, IsTerminal, Write};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    if !tty.is_terminal() {
        return None;
    }
    let mut out = tty.try_clone().ok()?;
    let _ = write!(out, "passphrase for {}: ", path.display());
    let _ = out.flush();
    // Echo off while the passphrase is typed.
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let saved = tcgetattr(&tty).ok()?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    let _ = tcsetattr(&tty, SetArg::TCSANOW, &quiet);
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = tcsetattr(&tty, SetArg::TCSANOW, &saved);
    let _ = writeln!(out);
    read.ok()?;
    Some(line.trim_end_matches(['\n', '\r']).to_string())
}

fn load_key(path: &Path) -> Result<russh::keys::PrivateKey, SshError> {
    let err = |reason: String| SshError::Key {
        path: path.display().to_string(),
        reason,
    };
    match russh::keys::load_secret_key(path, None) {
        Ok(k) => Ok(k),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let pass = passphrase(path).ok_or_else(|| {
                err("it is encrypted; set GPUCTL_KEY_PASSPHRASE or run on a terminal".into())
            })?;
            russh::keys::load_secret_key(path, Some(&pass))
                .map_err(|e| err(format!("wrong passphrase or unreadable key ({e})")))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// The public half of an identity file, as one OpenSSH line (what a provider is given so
/// that the instance accepts the key; the private key never leaves this machine).
pub fn public_key_line(path: &Path) -> Result<String, SshError> {
    let key = load_key(path)?;
    let line = key.public_key().to_openssh().map_err(|e| SshError::Key {
        path: path.display().to_string(),
        reason: format!("cannot write its public key ({e})"),
    })?;
    // Type and key only: the comment is often user@host, which no provider needs.
    Ok(line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" "))
}

/// Connect, verify the host key, authenticate. Nothing is sent to a host whose key is refused.
pub async fn connect(target: &SshEndpoint) -> Result<Session, SshError> {
    let addr = target.addr();
    tracing::debug!(host = %addr, user = %target.user, "ssh connect");
    let verdict = Arc::new(Mutex::new(None));
    let seen = Arc::new(Mutex::new(None));
    let checker = Checker {
        host: target.host.clone(),
        port: target.port,
        policy: target.host_key.clone(),
        verdict: verdict.clone(),
        seen: seen.clone(),
    };
    let config = Arc::new(client::Config {
        // Keepalives notice a dead link in seconds instead of TCP's minutes.
        keepalive_interval: Some(Duration::from_secs(5)),
        keepalive_max: 3,
        nodelay: true,
        preferred: client_preferred(),
        // russh drops the connection when, during a key re-exchange it started (every
        // 1 GiB), more than two windows of channel data arrive before the server's KEXINIT:
        // with the default 2 MiB window, eight busy tunnel channels crossed that and every
        // transfer was cut. An 8 MiB window puts the bound (16 MiB) above what the server
        // had in flight (bench/tunnel_rekey.py: 40/40 whole); 16 MiB cost a third of one
        // stream's throughput (bench/ssh_bench.py), 8 MiB costs nothing measurable.
        window_size: 8 << 20,
        ..Default::default()
    });
    let connecting = client::connect(config, (target.host.as_str(), target.port), checker);
    let handle = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => {
            return Err(SshError::Timeout {
                addr,
                secs: CONNECT_TIMEOUT.as_secs(),
            })
        }
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            let known_hosts = user_known_hosts().display().to_string();
            let decided = verdict.lock().ok().and_then(|v| v.clone());
            return Err(match decided {
                Some(HostKeyVerdict::Unknown { fingerprint }) => SshError::HostKeyUnknown {
                    addr,
                    fingerprint,
                    known_hosts,
                },
                Some(HostKeyVerdict::Changed { fingerprint, line }) => SshError::HostKeyChanged {
                    addr,
                    fingerprint,
                    known_hosts,
                    line,
                },
                Some(HostKeyVerdict::PinMismatch {
                    fingerprint,
                    pinned,
                }) => SshError::HostKeyPinMismatch {
                    addr,
                    fingerprint,
                    pinned,
                },
                Some(HostKeyVerdict::Unreadable { reason, .. }) => {
                    SshError::Protocol(format!("cannot read {known_hosts}: {reason}"))
                }
                _ => SshError::Unreachable {
                    addr,
                    reason: e.to_string(),
                },
            });
        }
    };
    let verdict = verdict.lock().ok().and_then(|v| v.clone());
    let fingerprint = match &verdict {
        Some(
            HostKeyVerdict::Pinned { fingerprint }
            | HostKeyVerdict::Known { fingerprint }
            | HostKeyVerdict::Learned { fingerprint },
        ) => fingerprint.clone(),
        _ => return Err(SshError::Protocol("the host key was not checked".into())),
    };
    let mut session = Session::new(handle, fingerprint, verdict);
    session.host_key = seen.lock().ok().and_then(|s| s.clone());
    tokio::time::timeout(CONNECT_TIMEOUT, authenticate(&mut session, target))
        .await
        .map_err(|_| SshError::Timeout {
            addr: target.addr(),
            secs: CONNECT_TIMEOUT.as_secs(),
        })??;
    Ok(session)
}

async fn authenticate(session: &mut Session, target: &SshEndpoint) -> Result<(), SshError> {
    let mut tried = Vec::new();
    let handle = &mut session.handle;
    if let Some(path) = &target.identity_file {
        let path = crate::settings::settings().expand_home(path);
        let key = load_key(&path)?;
        let hash = handle.best_supported_rsa_hash().await?.flatten();
        let result = handle
            .authenticate_publickey(
                &target.user,
                PrivateKeyWithHashAlg::new(Arc::new(key), hash),
            )
            .await?;
        if matches!(result, AuthResult::Success) {
            return Ok(());
        }
        tried.push(path.display().to_string());
    }
    if crate::settings::settings().ssh_agent {
        if let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await {
            let identities = agent.request_identities().await.unwrap_or_default();
            for id in identities {
                let key: PublicKey = id.public_key().into_owned();
                let hash = handle.best_supported_rsa_hash().await?.flatten();
                match handle
                    .authenticate_publickey_with(&target.user, key.clone(), hash, &mut agent)
                    .await
                {
                    Ok(AuthResult::Success) => return Ok(()),
                    _ => tried.push(format!("ssh-agent key {}", super::fingerprint(&key))),
                }
            }
        }
    }
    if tried.is_empty() {
        tried.push("no key: set access.identity_file, or start ssh-agent".into());
    }
    Err(SshError::AuthFailed {
        user: target.user.clone(),
        addr: target.addr(),
        tried: tried.join(", "),
    })
}
