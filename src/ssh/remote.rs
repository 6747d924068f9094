//! A connected, authenticated SSH session: exec with a deadline, and SFTP for files.

use std::path::Path;
use std::time::Duration;

use russh::client::Handle;
use russh::ChannelMsg;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::hostkey::{Checker, HostKeyVerdict};
use super::SshError;

pub struct Session {
    pub handle: Handle<Checker>,
    /// The host key fingerprint this session trusted (recorded with the session).
    pub fingerprint: String,
    pub verdict: Option<HostKeyVerdict>,
    /// The accepted host key as a known_hosts key (`type base64`): what `gpuctl ssh` pins
    /// for OpenSSH.
    pub host_key: Option<String>,
}

/// What a remote command answered.
#[derive(Debug, Clone)]
pub struct Exec {
    pub status: Option<u32>,
    pub stdout: String,
    pub stderr: String,
}

impl Exec {
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }
}

fn sftp_err(e: russh_sftp::client::error::Error) -> SshError {
    SshError::Protocol(format!("sftp: {e}"))
}

impl Session {
    pub(super) fn new(
        handle: Handle<Checker>,
        fingerprint: String,
        verdict: Option<HostKeyVerdict>,
    ) -> Session {
        Session {
            handle,
            fingerprint,
            verdict,
            host_key: None,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Run `cmd` through the remote shell; fails if it takes longer than `timeout`.
    pub async fn exec(&self, cmd: &str, timeout: Duration) -> Result<Exec, SshError> {
        // The commands gpuctl sends carry no secret (tokens go by SFTP, in 0600 files).
        tracing::debug!(command = cmd, "ssh exec");
        let run = async {
            let mut channel = self.handle.channel_open_session().await?;
            channel.exec(true, cmd).await?;
            let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), None);
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => stderr.extend_from_slice(&data),
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    _ => {}
                }
            }
            Ok::<_, SshError>(Exec {
                status,
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            })
        };
        tokio::time::timeout(timeout, run).await.map_err(|_| {
            SshError::Protocol(format!(
                "`{cmd}` did not finish within {} s",
                timeout.as_secs()
            ))
        })?
    }

    pub async fn sftp(&self) -> Result<SftpSession, SshError> {
        let channel = self.handle.channel_open_session().await?;
        channel.request_subsystem(true, "sftp").await?;
        SftpSession::new(channel.into_stream())
            .await
            .map_err(sftp_err)
    }

    /// Upload to `remote` atomically (a temporary name, then rename) with `mode`.
    pub async fn upload(
        &self,
        sftp: &SftpSession,
        local: &Path,
        remote: &str,
        mode: u32,
    ) -> Result<u64, SshError> {
        let mut src = tokio::fs::File::open(local)
            .await
            .map_err(|e| SshError::Protocol(format!("{}: {e}", local.display())))?;
        // A temp name of its own: two sessions may upload the same binary to one host at once.
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let tmp = format!("{remote}.part-{}-{unique}", std::process::id());
        let mut dst = sftp.create(tmp.clone()).await.map_err(sftp_err)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = src
                .read(&mut buf)
                .await
                .map_err(|e| SshError::Protocol(e.to_string()))?;
            if n == 0 {
                break;
            }
            dst.write_all(&buf[..n])
                .await
                .map_err(|e| SshError::Protocol(format!("writing {tmp}: {e}")))?;
            total += n as u64;
        }
        dst.shutdown()
            .await
            .map_err(|e| SshError::Protocol(e.to_string()))?;
        drop(dst);
        let mut attrs = FileAttributes::empty();
        attrs.permissions = Some(mode);
        sftp.set_metadata(tmp.clone(), attrs)
            .await
            .map_err(sftp_err)?;
        let _ = sftp.remove_file(remote.to_string()).await;
        if let Err(e) = sftp.rename(tmp.clone(), remote.to_string()).await {
            // Another upload of the same content may have won the race to the name.
            let _ = sftp.remove_file(tmp).await;
            if sftp.metadata(remote.to_string()).await.is_err() {
                return Err(sftp_err(e));
            }
        }
        Ok(total)
    }

    /// Write a small file with `mode` set at creation (a token must never exist world-readable).
    pub async fn write_file(
        &self,
        sftp: &SftpSession,
        remote: &str,
        bytes: &[u8],
        mode: u32,
    ) -> Result<(), SshError> {
        let mut attrs = FileAttributes::empty();
        attrs.permissions = Some(mode);
        let flags = OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE;
        let mut f = sftp
            .open_with_flags_and_attributes(remote.to_string(), flags, attrs)
            .await
            .map_err(sftp_err)?;
        f.write_all(bytes)
            .await
            .map_err(|e| SshError::Protocol(format!("writing {remote}: {e}")))?;
        f.shutdown()
            .await
            .map_err(|e| SshError::Protocol(e.to_string()))?;
        Ok(())
    }

    /// Download `remote` to `local`, at most `cap` bytes, if it is a regular file: a link
    /// (planted by code on the host, pointing at a key or /etc/shadow), a FIFO (which would
    /// hold the stop) or a device is refused without being opened.
    pub async fn download(
        &self,
        sftp: &SftpSession,
        remote: &str,
        local: &Path,
        cap: u64,
    ) -> Result<Download, SshError> {
        let attrs = match sftp.symlink_metadata(remote.to_string()).await {
            Ok(a) => a,
            Err(russh_sftp::client::error::Error::Status(st))
                if st.status_code == russh_sftp::protocol::StatusCode::NoSuchFile =>
            {
                return Ok(Download::Missing)
            }
            Err(e) => return Err(sftp_err(e)),
        };
        const S_IFMT: u32 = 0o170000;
        let kind = attrs.permissions.unwrap_or(0) & S_IFMT;
        let what = match kind {
            0o100000 => None,
            0o120000 => Some("a symbolic link"),
            0o010000 => Some("a FIFO"),
            0o040000 => Some("a directory"),
            0o140000 => Some("a socket"),
            0o020000 | 0o060000 => Some("a device"),
            _ => Some("not a regular file"),
        };
        if let Some(what) = what {
            return Ok(Download::Refused(what));
        }
        let mut src = sftp.open(remote.to_string()).await.map_err(sftp_err)?;
        let mut dst = tokio::fs::File::create(local)
            .await
            .map_err(|e| SshError::Protocol(format!("{}: {e}", local.display())))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = src
                .read(&mut buf)
                .await
                .map_err(|e| SshError::Protocol(format!("reading {remote}: {e}")))?;
            if n == 0 {
                break;
            }
            let keep = (cap - total).min(n as u64) as usize;
            dst.write_all(&buf[..keep])
                .await
                .map_err(|e| SshError::Protocol(e.to_string()))?;
            total += keep as u64;
            if total >= cap {
                return Ok(Download::Copied {
                    bytes: total,
                    cut: true,
                });
            }
        }
        dst.flush()
            .await
            .map_err(|e| SshError::Protocol(e.to_string()))?;
        Ok(Download::Copied {
            bytes: total,
            cut: false,
        })
    }

    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "done", "en")
            .await;
    }
}

/// Quote a string for a POSIX shell.
/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    Missing,
    /// Not a regular file: what it is instead.
    Refused(&'static str),
    Copied {
        bytes: u64,
        cut: bool,
    },
}

pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
