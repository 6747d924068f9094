//! One daemon per `GPUCTL_HOME`: an exclusive `flock` on `daemon.lock`, held for the life
//! of the process (the kernel drops it when the process dies, however it dies), and the
//! daemon's identity in `daemon.pid` for `gpuctl daemon status`.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use crate::db::{Controller, ControllerKind};

pub struct DaemonLock {
    _lock: Flock<File>,
    pid_file: PathBuf,
}

/// What `gpuctl daemon status` reports.
#[derive(Debug, Serialize)]
pub struct DaemonStatus {
    pub running: bool,
    pub pid: Option<u32>,
    pub home: String,
    pub lock: String,
    /// The session store it shares (a path, or a PostgreSQL URL without its password).
    pub store: Option<String>,
    /// The live sessions this daemon holds (their lease is its heartbeat).
    pub sessions: Vec<HeldSession>,
}

/// A session a daemon holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldSession {
    pub id: String,
    pub state: String,
    pub deadline: chrono::DateTime<chrono::Utc>,
    pub owner: Option<String>,
    pub lease_renewed_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn lock_path(home: &Path) -> PathBuf {
    home.join("daemon.lock")
}

fn pid_path(home: &Path) -> PathBuf {
    home.join("daemon.pid")
}

fn open(home: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    let path = lock_path(home);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// The daemon that holds the lock, from `daemon.pid` (checked against /proc).
fn holder(home: &Path) -> Option<Controller> {
    let text = std::fs::read_to_string(pid_path(home)).ok()?;
    let mut parts = text.split_whitespace();
    let c = Controller {
        pid: parts.next()?.parse().ok()?,
        start: parts.next()?.parse().ok()?,
        kind: ControllerKind::Daemon,
        machine: crate::db::this_machine(),
    };
    crate::procs::alive(&c).then_some(c)
}

impl DaemonLock {
    /// Take the lock, or say which daemon has it.
    pub fn acquire(home: &Path, me: &Controller) -> anyhow::Result<DaemonLock> {
        let file = open(home)?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let who = holder(home)
                    .map(|c| format!("pid {}", c.pid))
                    .unwrap_or_else(|| "another process".into());
                anyhow::bail!(
                    "a gpuctl daemon already runs for {} ({who} holds {}); one is enough: `gpuctl daemon status` shows it",
                    home.display(),
                    lock_path(home).display()
                );
            }
            Err((_, e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path(home).display()))
            }
        };
        let pid_file = pid_path(home);
        std::fs::write(&pid_file, format!("{} {}\n", me.pid, me.start))
            .with_context(|| format!("writing {}", pid_file.display()))?;
        Ok(DaemonLock {
            _lock: lock,
            pid_file,
        })
    }
}

impl Drop for DaemonLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Whether a daemon holds the lock now (tested by trying to take it).
pub fn status(home: &Path) -> anyhow::Result<DaemonStatus> {
    let file = open(home)?;
    let running = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_released_on_drop) => false,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => true,
        Err((_, e)) => return Err(e).context("testing the daemon lock"),
    };
    let me = running.then(|| holder(home)).flatten();
    // What it holds, from the store (best effort: a store that cannot be read says so elsewhere).
    let (store, sessions) = match crate::db::Db::open(home) {
        Ok(db) => {
            let held = me
                .and_then(|c| db.held_by(c).ok())
                .unwrap_or_default()
                .into_iter()
                .map(|s| HeldSession {
                    state: s.state.as_str().into(),
                    id: s.id,
                    deadline: s.deadline,
                    owner: s.owner,
                    lease_renewed_at: s.controller_heartbeat_at,
                })
                .collect();
            (Some(db.location().to_string()), held)
        }
        Err(_) => (None, Vec::new()),
    };
    Ok(DaemonStatus {
        running,
        pid: me.map(|c| c.pid),
        home: home.display().to_string(),
        lock: lock_path(home).display().to_string(),
        store,
        sessions,
    })
}

/// Who retries an unconfirmed stop, in words: the running daemon, or nobody (and the fix).
pub fn who_retries(home: &Path) -> String {
    match status(home) {
        Ok(DaemonStatus {
            running: true, pid, ..
        }) => format!(
            "the daemon{} retries it until the provider confirms",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ),
        _ => "no daemon runs for this GPUCTL_HOME, so nothing retries it: start one (`gpuctl daemon`, or `gpuctl daemon install`) or run `gpuctl down ID` again".into(),
    }
}
