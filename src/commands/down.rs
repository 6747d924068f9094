//! `gpuctl down ID...|--all`: stop sessions now, in order, with evidence and proof.
//!
//! A session driven by a live `up` is stopped by that `up` (SIGTERM: it stops in order);
//! one driven by the daemon is stopped by the daemon (the request is in the database); one
//! whose controller is gone is stopped here. Running `down` twice, or from two processes at
//! once, does no harm: the database lets one stop through and the others wait for it.

use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use super::runtime;
use crate::cli::DownArgs;
use crate::db::{ControllerKind, Db, DbError, SessionRecord};
use crate::exit::Exit;
use crate::session::takeover::{self, Outcome};
use crate::session::SessionState;

#[derive(Debug, Serialize)]
struct Stopped {
    session_id: String,
    state: SessionState,
    message: String,
    evidence_dir: Option<String>,
}

pub fn run(args: DownArgs) -> anyhow::Result<Exit> {
    runtime()?.block_on(down(args))
}

async fn down(args: DownArgs) -> anyhow::Result<Exit> {
    let home = crate::home::gpuctl_home()?;
    let db = Db::open(&home)?;
    let targets: Vec<SessionRecord> = if args.all {
        db.live_sessions()?
    } else {
        let mut found = Vec::new();
        for id in &args.ids {
            match db.get_session(id) {
                Ok(s) => found.push(s),
                Err(e @ (DbError::NotFound(_) | DbError::Ambiguous(_))) => {
                    crate::error_line!("{e} (`gpuctl ls` lists the sessions); nothing was stopped");
                    return Ok(Exit::Refused);
                }
                Err(e) => return Err(e.into()),
            }
        }
        found
    };
    if targets.is_empty() {
        crate::note!(
            "nothing to stop: every session in {} is stopped",
            db.location()
        );
    }
    let mut results = Vec::new();
    for s in targets {
        let r = stop_one(&home, &db, s, args.timeout).await?;
        if !crate::output::json() {
            crate::out!("{} {}: {}", r.session_id, r.state, r.message);
        }
        results.push(r);
    }
    if crate::output::json() {
        crate::output::printer().doc(&results)?;
    }
    let exit = if results
        .iter()
        .any(|r| r.state == SessionState::StopUnconfirmed)
    {
        crate::warning!(
            "a stop is not confirmed; the instance may still bill. {}; `gpuctl ls` shows it first",
            crate::daemon::who_retries(&home)
        );
        Exit::StopUnconfirmed
    } else if results.iter().any(|r| !r.state.is_final()) {
        Exit::Failed
    } else {
        Exit::Done
    };
    // Alerts of the stops still in flight get a bounded moment before the process exits.
    crate::notify::flush(Duration::from_secs(6));
    Ok(exit)
}

async fn stop_one(
    home: &std::path::Path,
    db: &Db,
    s: SessionRecord,
    timeout: Duration,
) -> anyhow::Result<Stopped> {
    let me = crate::procs::me(ControllerKind::Down);
    let done = |s: &SessionRecord, message: String| Stopped {
        session_id: s.id.clone(),
        state: s.state,
        message,
        evidence_dir: s.evidence_dir.clone(),
    };
    if s.state.is_final() {
        return Ok(done(&s, "already stopped; nothing to do".into()));
    }
    let was_unconfirmed = s.state == SessionState::StopUnconfirmed;
    db.request_stop(&s.id, Utc::now(), &format!("gpuctl down (pid {})", me.pid))?;
    let started = Instant::now();
    let mut signalled = None;
    loop {
        let cur = db.get_session(&s.id)?;
        if cur.state.is_final() {
            return Ok(done(&cur, stop_message(&cur)));
        }
        let owner = cur
            .controller()
            .filter(|c| *c != me && crate::procs::gone(c, &cur).is_none());
        match owner {
            Some(c) => {
                if c.kind == ControllerKind::Up
                    && c.machine == crate::db::this_machine()
                    && signalled.is_none()
                {
                    // Never signal a reused PID: it must still be this gpuctl.
                    if crate::procs::cmdline_contains(c.pid, "gpuctl") {
                        let _ = kill(Pid::from_raw(c.pid as i32), Signal::SIGTERM);
                        crate::note!("{}: asked gpuctl up (pid {}) to stop it", s.id, c.pid);
                    }
                    signalled = Some(c);
                }
            }
            None if signalled.is_some() && cur.state == SessionState::StopUnconfirmed => {
                // The `up` we asked made its attempt and said the stop is unconfirmed.
                return Ok(done(&cur, stop_message(&cur)));
            }
            None if !was_unconfirmed
                && cur.state == SessionState::StopUnconfirmed
                && cur.controller() == Some(me) =>
            {
                return Ok(done(&cur, stop_message(&cur)));
            }
            None => match takeover::stop_recorded(home, &s.id, me, "stopped by gpuctl down").await?
            {
                Outcome::Stopped(_) | Outcome::AlreadyFinal => {
                    let cur = db.get_session(&s.id)?;
                    return Ok(done(&cur, stop_message(&cur)));
                }
                Outcome::Held(_) => {}
            },
        }
        if started.elapsed() > timeout {
            return Ok(done(
                &cur,
                format!(
                    "still {} after {}; its controller goes on with the stop (`gpuctl status {}`)",
                    cur.state,
                    humantime::format_duration(timeout),
                    cur.id
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop_message(s: &SessionRecord) -> String {
    match s.state {
        SessionState::Stopped => format!(
            "stopped and proven; evidence in {}",
            s.evidence_dir.as_deref().unwrap_or("-")
        ),
        SessionState::Failed => format!(
            "stopped and proven, with a failure: {}",
            s.failure_reason.as_deref().unwrap_or("see `gpuctl status`")
        ),
        SessionState::StopUnconfirmed => {
            "the stop is NOT confirmed (see shutdown_proof.json); it may still bill".into()
        }
        other => format!("{other}"),
    }
}
