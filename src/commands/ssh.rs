//! `gpuctl ssh [ID] [-- CMD...]`: a shell (or one command) on a live session's host, with
//! the plan's identity and the host key the session pinned. gpuctl connects first and
//! checks the key itself, then hands the terminal to OpenSSH with a known_hosts file that
//! holds that one key, so OpenSSH refuses the host too if its key changes in between.

use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

use anyhow::Context;
use chrono::Utc;

use super::{open_db, runtime};
use crate::cli::SshArgs;
use crate::exit::Exit;
use crate::session::{AgentHandle, SessionState};
use crate::ssh::sh_quote;

/// OpenSSH's host key algorithms for a key type (an RSA key signs with SHA-2).
fn host_key_algorithms(key_type: &str) -> String {
    match key_type {
        "ssh-rsa" => "rsa-sha2-512,rsa-sha2-256,ssh-rsa".into(),
        other => other.into(),
    }
}

pub fn run(args: SshArgs) -> anyhow::Result<Exit> {
    let db = open_db()?;
    let s = match &args.id {
        Some(id) => db.get_session(id)?,
        None => match db.latest_session()? {
            Some(s) => s,
            None => {
                crate::note!("no sessions in {}", db.location());
                return Ok(Exit::Refused);
            }
        },
    };
    if s.state.is_final() || s.state == SessionState::StopUnconfirmed {
        crate::error_line!(
            "session {} is {}: its host is no longer the session's; `gpuctl ssh` opens a shell only while a session is live (its logs: `gpuctl logs {}`)",
            s.id, s.state, s.id
        );
        return Ok(Exit::Refused);
    }
    let (ssh, dir) = match s.handle.as_deref().map(AgentHandle::from_json) {
        Some(Ok(AgentHandle::Remote { ssh, dir, .. })) => (ssh, dir),
        Some(Ok(AgentHandle::Local { work, .. })) => {
            crate::error_line!(
                "session {} runs on this machine (its run folder is {}); there is no host to open a shell on",
                s.id,
                work.display()
            );
            return Ok(Exit::Refused);
        }
        Some(Err(e)) => return Err(e),
        None => {
            crate::error_line!(
                "session {} has no agent on a host yet (it is {}); try again once it is deploying or serving",
                s.id, s.state
            );
            return Ok(Exit::Refused);
        }
    };
    // Checked by gpuctl first: the pinned fingerprint, and the key the plan names works.
    let key = runtime()?.block_on(async {
        let session = crate::ssh::connect(&ssh).await?;
        let key = session.host_key.clone();
        session.close().await;
        Ok::<_, crate::ssh::SshError>(key)
    })?;
    let key = key.context("the host's key could not be read")?;
    let key_type = key
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let home = crate::home::gpuctl_home()?;
    let work = home.join("run").join(&s.id);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let known_hosts = work.join("ssh_known_hosts");
    let entry = if ssh.port == 22 {
        ssh.host.clone()
    } else {
        format!("[{}]:{}", ssh.host, ssh.port)
    };
    let _ = std::fs::remove_file(&known_hosts);
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&known_hosts)
            .with_context(|| format!("writing {}", known_hosts.display()))?,
        format!("{entry} {key}\n").as_bytes(),
    )?;
    let mut cmd = Command::new("ssh");
    cmd.args(["-p", &ssh.port.to_string(), "-l", &ssh.user])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "GlobalKnownHostsFile=/dev/null"])
        .args(["-o", "StrictHostKeyChecking=yes"])
        .args(["-o", "UpdateHostKeys=no"])
        .arg("-o")
        .arg(format!(
            "HostKeyAlgorithms={}",
            host_key_algorithms(&key_type)
        ));
    if let Some(identity) = ssh.identity_file.as_ref().filter(|p| p.exists()) {
        cmd.arg("-i")
            .arg(identity)
            .args(["-o", "IdentitiesOnly=yes"]);
    }
    let what = if args.command.is_empty() {
        // A login shell in the session's folder on the host.
        cmd.arg("-t").arg(&ssh.host).arg(format!(
            "cd {} 2>/dev/null; exec \"${{SHELL:-/bin/sh}}\" -l",
            sh_quote(&dir)
        ));
        "a shell".to_string()
    } else {
        // As `ssh HOST CMD...` would run it (joined, read by the remote shell), from the
        // session's folder.
        cmd.arg(&ssh.host).arg("--").arg(format!(
            "cd {} 2>/dev/null; {}",
            sh_quote(&dir),
            args.command.join(" ")
        ));
        format!("`{}`", args.command.join(" "))
    };
    crate::note!(
        "gpuctl ssh: {}@{} (host key {}, pinned by the session); the session's folder is {dir}",
        ssh.user,
        ssh.addr(),
        crate::ssh::fingerprint_of_line(&key).unwrap_or_default()
    );
    let _ = db.add_event(
        &s.id,
        "ssh",
        &format!("gpuctl ssh (pid {}): {what}", std::process::id()),
        Utc::now(),
    );
    let status = cmd
        .status()
        .context("cannot run OpenSSH's `ssh` (install openssh-client)")?;
    let _ = std::fs::remove_file(&known_hosts);
    // The remote command's own exit code, as `ssh` gives it.
    std::process::exit(status.code().unwrap_or(255));
}
