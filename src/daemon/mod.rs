//! `gpuctl daemon`: the third enforcement layer. It loads every session that is not final,
//! arms a timer at each deadline, and sweeps on a schedule (tokio-cron-scheduler, every
//! second by default): it takes over sessions whose controller is gone, stops what is due
//! (deadline, `gpuctl down`), warns at 80 % of a budget, and retries unconfirmed stops
//! with backoff until they are confirmed.

mod lock;
pub mod unit;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Semaphore};
use tokio_cron_scheduler::{Job, JobScheduler};

pub use lock::{status, who_retries, DaemonLock, DaemonStatus};

use crate::db::{Claim, Controller, ControllerKind, Db, SessionRecord};
use crate::exit::Exit;
use crate::session::budget::{self, WARN_SHARE};
use crate::session::takeover::{self, Outcome};
use crate::session::SessionState;

/// The daemons that watch this store now (seen within `HEARTBEAT_STALE`): this home's,
/// and in team mode those of other hosts sharing the store.
pub fn watching(db: &Db, now: DateTime<Utc>) -> Vec<crate::db::DaemonRecord> {
    let since =
        now - chrono::Duration::from_std(crate::session::up::HEARTBEAT_STALE).unwrap_or_default();
    db.daemons_seen_since(since).unwrap_or_default()
}

/// A daemon hands a session back only while its deadline is at least this far ahead.
const HANDOVER_LEAD_S: i64 = 30;

/// Whether a session needs its stop within a few seconds (or now): claimed by whichever
/// daemon sees it, whatever its share.
fn urgent(s: &SessionRecord, now: DateTime<Utc>) -> bool {
    s.stop_requested_at.is_some()
        || s.state == SessionState::StopUnconfirmed
        || s.deadline - now < chrono::Duration::seconds(5)
}

/// How a store's live sessions split over the daemons watching it.
#[derive(Debug, Clone, Copy)]
struct Share {
    daemons: usize,
    /// Held by this daemon at the sweep's start.
    held: usize,
    /// This daemon's fair share (rounded up).
    each: usize,
}

impl Share {
    fn of(live: &[SessionRecord], daemons: usize, me: Controller) -> Share {
        let daemons = daemons.max(1);
        Share {
            daemons,
            held: live.iter().filter(|s| s.controller() == Some(me)).count(),
            each: live.len().div_ceil(daemons),
        }
    }
}

/// How often a daemon renews its leases within a long sweep (they go stale after
/// `HEARTBEAT_STALE`, 15 s).
const LEASE_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

pub struct DaemonOptions {
    /// Cron expression (with seconds) of the sweep.
    pub schedule: String,
    /// Stops run at once at most this many at a time.
    pub parallel_stops: usize,
    pub log_sweeps: bool,
}

struct Daemon {
    home: PathBuf,
    /// This machine's name, shown to other hosts in the daemons table.
    hostname: String,
    me: Controller,
    log_sweeps: bool,
    db: Db,
    /// The deadline each armed timer was set for.
    armed: HashMap<String, DateTime<Utc>>,
    /// Sessions whose stop is running now.
    stopping: Arc<Mutex<HashSet<String>>>,
    permits: Arc<Semaphore>,
    due: mpsc::UnboundedSender<String>,
}

fn log(session: Option<&str>, message: &str) {
    let now = Utc::now();
    if crate::output::json() {
        crate::output::printer().event(
            "daemon",
            session,
            serde_json::json!({ "message": message }),
        );
    } else {
        let tag = session.map(|s| format!("[{s}] ")).unwrap_or_default();
        crate::note!("{} {tag}{message}", now.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
    }
}

pub async fn run(home: PathBuf, opts: DaemonOptions) -> anyhow::Result<Exit> {
    use tokio::signal::unix::{signal, SignalKind};
    let me = crate::procs::me(ControllerKind::Daemon);
    let _lock = match DaemonLock::acquire(&home, &me) {
        Ok(l) => l,
        Err(e) => {
            crate::error_line!("{e:#}");
            return Ok(Exit::Failed);
        }
    };
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let (tick_tx, mut ticks) = mpsc::channel::<()>(1);
    let mut scheduler = JobScheduler::new()
        .await
        .context("cannot start the scheduler")?;
    let job = Job::new_async(opts.schedule.as_str(), move |_, _| {
        let tx = tick_tx.clone();
        // A sweep still running absorbs the tick: sweeps never pile up.
        Box::pin(async move {
            let _ = tx.try_send(());
        })
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "--schedule {:?} is not a cron expression with seconds (like \"*/5 * * * * *\"): {e}",
            opts.schedule
        )
    })?;
    scheduler
        .add(job)
        .await
        .context("cannot schedule the sweep")?;
    scheduler
        .start()
        .await
        .context("cannot start the scheduler")?;
    let (due_tx, mut due) = mpsc::unbounded_channel();
    let mut d = Daemon {
        db: Db::open(&home)?,
        home: home.clone(),
        hostname: crate::procs::hostname(),
        me,
        log_sweeps: opts.log_sweeps,
        armed: HashMap::new(),
        stopping: Arc::new(Mutex::new(HashSet::new())),
        permits: Arc::new(Semaphore::new(opts.parallel_stops.max(1))),
        due: due_tx,
    };
    log(
        None,
        &format!(
            "gpuctl daemon (pid {}) watches {} (sweep \"{}\")",
            me.pid,
            d.db.location(),
            opts.schedule
        ),
    );
    d.sweep();
    loop {
        tokio::select! {
            Some(()) = ticks.recv() => d.sweep(),
            Some(id) = due.recv() => d.deadline_reached(&id),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    let _ = scheduler.shutdown().await;
    log(None,
        "daemon stopping; live sessions stay armed on their hosts (the agent's deadline) and are taken over by the next daemon",
    );
    Ok(Exit::Done)
}

impl Daemon {
    fn is_stopping(&self, id: &str) -> bool {
        self.stopping
            .lock()
            .map(|s| s.contains(id))
            .unwrap_or(false)
    }

    /// Whether another live process (an `up`, a `down`) drives the session. `alive`
    /// remembers each controller's process within one sweep (thousands of sessions share a
    /// few controllers).
    fn driven_by_other(
        &self,
        s: &SessionRecord,
        alive: &mut HashMap<(u32, u64, u64), bool>,
    ) -> bool {
        s.controller().is_some_and(|c| {
            c != self.me
                && crate::procs::gone_given(&c, s, |c| {
                    *alive
                        .entry((c.pid, c.start, c.machine))
                        .or_insert_with(|| crate::procs::alive(c))
                })
                .is_none()
        })
    }

    fn sweep(&mut self) {
        let started = std::time::Instant::now();
        let live = self.sweep_once();
        tracing::debug!(
            live,
            ms = started.elapsed().as_millis() as u64,
            "daemon sweep"
        );
        if self.log_sweeps {
            log(
                None,
                &format!(
                    "sweep: {live} live session(s) in {:.1} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                ),
            );
        }
    }

    /// One pass over the live sessions; returns how many there were.
    /// Renew the lease on every session this daemon holds, and say it watches the store.
    fn renew(&self, now: DateTime<Utc>) {
        let renewed = self.db.renew_leases(self.me, now).and_then(|_| {
            self.db.daemon_seen(
                self.me,
                &self.hostname,
                &self.home.display().to_string(),
                now,
            )
        });
        if let Err(e) = renewed {
            log(None, &format!("cannot renew this daemon's leases ({e})"));
        }
    }

    fn sweep_once(&mut self) -> usize {
        let now = Utc::now();
        // The lease on every session this daemon holds: another daemon sharing the store
        // takes them over only once this stops (killed, host gone, frozen).
        self.renew(now);
        let mut renewed = std::time::Instant::now();
        let live = match self.db.live_sessions_brief() {
            Ok(l) => l,
            Err(e) => {
                log(
                    None,
                    &format!("cannot read the sessions ({e}); retrying at the next sweep"),
                );
                return 0;
            }
        };
        let ids: HashSet<&str> = live.iter().map(|s| s.id.as_str()).collect();
        self.armed.retain(|id, _| ids.contains(id.as_str()));
        let share = Share::of(&live, watching(&self.db, now).len(), self.me);
        let mut held = share.held;
        let mut alive = HashMap::new();
        for s in &live {
            // A sweep that takes over thousands of sessions lasts seconds: the leases it
            // already holds are renewed as it goes, or another daemon would take them back.
            if renewed.elapsed() > LEASE_RENEW_EVERY {
                self.renew(Utc::now());
                renewed = std::time::Instant::now();
            }
            if self.is_stopping(&s.id) {
                continue;
            }
            self.arm(s);
            self.meter(s, now);
            if self.driven_by_other(s, &mut alive) {
                continue;
            }
            if s.controller() != Some(self.me) {
                // Several daemons on one store split its sessions: one at its share leaves
                // the rest to the others, unless the session needs a stop soon.
                if held >= share.each && !urgent(s, now) {
                    continue;
                }
                let why = s.controller().and_then(|c| crate::procs::gone(&c, s));
                match self.db.claim(&s.id, self.me, crate::procs::gone, now) {
                    Ok(Claim::Taken { from }) => {
                        held += 1;
                        log(Some(&s.id),
                        &match (from, why) {
                            (Some(c), Some(why)) => format!(
                                "taken over: its controller, gpuctl {} (pid {}), {why}; deadline {}",
                                c.kind.as_str(),
                                c.pid,
                                s.deadline.format("%H:%M:%S%.3f UTC")
                            ),
                            _ => format!(
                                "taken over; deadline {}",
                                s.deadline.format("%H:%M:%S%.3f UTC")
                            ),
                        },
                        )
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        log(
                            Some(&s.id),
                            &format!("cannot take over ({e}); retrying at the next sweep"),
                        );
                        continue;
                    }
                }
            }
            if s.state == SessionState::StopUnconfirmed {
                if s.next_stop_attempt_at.is_none_or(|t| t <= now) {
                    self.start_stop(
                        &s.id,
                        format!(
                            "retrying an unconfirmed stop (attempt {})",
                            s.stop_attempts + 1
                        ),
                    );
                }
            } else if s.stop_requested_at.is_some() {
                self.start_stop(&s.id, "stop requested by gpuctl down".into());
            } else if now >= s.deadline {
                self.start_stop(&s.id, "deadline".into());
            }
        }
        self.rebalance(&live, share, now);
        live.len()
    }

    /// Above its share (it started first, or a daemon joined the store since), a daemon
    /// hands back the sessions with the latest deadlines, far enough ahead that the daemon
    /// that claims them has sweeps to spare.
    fn rebalance(&self, live: &[SessionRecord], share: Share, now: DateTime<Utc>) {
        let excess = share.held.saturating_sub(share.each + share.each / 20 + 1);
        if excess == 0 {
            return;
        }
        let why = format!(
            "{} daemons watch the store; this one held {} of {} live sessions",
            share.daemons,
            share.held,
            live.len()
        );
        let mut released = 0;
        // `live` is in deadline order: the latest first.
        for s in live.iter().rev() {
            if released == excess || s.deadline - now < chrono::Duration::seconds(HANDOVER_LEAD_S) {
                break;
            }
            if s.controller() != Some(self.me) || self.is_stopping(&s.id) || urgent(s, now) {
                continue;
            }
            match self.db.release(&s.id, self.me, &why, now) {
                Ok(true) => released += 1,
                Ok(false) => {}
                Err(e) => {
                    log(None, &format!("cannot hand sessions back ({e})"));
                    return;
                }
            }
        }
        if released > 0 {
            log(
                None,
                &format!("handed {released} session(s) back to the store: {why}"),
            );
        }
    }

    /// A timer at the session's deadline, so that the stop does not wait for a sweep.
    fn arm(&mut self, s: &SessionRecord) {
        if self.armed.get(&s.id) == Some(&s.deadline) {
            return;
        }
        self.armed.insert(s.id.clone(), s.deadline);
        let wait = (s.deadline - Utc::now()).to_std().unwrap_or_default();
        let due = self.due.clone();
        let id = s.id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = due.send(id);
        });
    }

    fn deadline_reached(&mut self, id: &str) {
        if self.is_stopping(id) {
            return;
        }
        let Ok(s) = self.db.get_session(id) else {
            return;
        };
        if s.state.is_final() || s.state == SessionState::StopUnconfirmed || s.deadline > Utc::now()
        {
            return;
        }
        // A live `up` stops at the deadline itself; if it has died, the next sweep takes over.
        if self.driven_by_other(&s, &mut HashMap::new()) {
            return;
        }
        self.start_stop(id, "deadline".into());
    }

    /// The 80 % warning, once per session.
    fn meter(&self, s: &SessionRecord, now: DateTime<Utc>) {
        if s.budget_warned_at.is_some() {
            return;
        }
        let Some((cost, max)) = budget::meter(s, now) else {
            return;
        };
        if cost < max * WARN_SHARE {
            return;
        }
        if let Ok(true) = self.db.mark_budget_warned(&s.id, now) {
            let msg = format!(
                "budget: ${cost:.2} of max_total_usd ${max:.2} spent ({:.0} %); the session stops at {} at the latest",
                cost / max * 100.0,
                s.deadline.format("%H:%M:%S UTC")
            );
            let _ = self.db.add_event(&s.id, "budget", &msg, now);
            // The sweep's rows carry no plan text: the alert reads the session whole.
            if let Ok(full) = self.db.get_session(&s.id) {
                crate::notify::Alerter::for_record(&full).send("budget", &msg);
            }
            log(Some(&s.id), &msg);
        }
    }

    fn start_stop(&self, id: &str, reason: String) {
        tracing::info!(session = id, reason = %reason, "daemon stop");
        if let Ok(mut set) = self.stopping.lock() {
            if !set.insert(id.to_string()) {
                return;
            }
        }
        let (home, me) = (self.home.clone(), self.me);
        let stopping = self.stopping.clone();
        let permits = self.permits.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            log(Some(&id), &format!("stopping: {reason}"));
            // Each stop on a thread and runtime of its own: its store calls block (SQLite's
            // file, PostgreSQL's round trips), and must never hold up the sweep that renews
            // this daemon's leases and arms the next deadlines.
            let (h, i, r) = (home.clone(), id.clone(), reason.clone());
            let outcome = tokio::task::spawn_blocking(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(takeover::stop_recorded(&h, &i, me, &r)))
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the stop's thread ended: {e}")));
            let message = match outcome {
                Ok(Outcome::Stopped(exit)) => match exit {
                    Exit::StopUnconfirmed => {
                        "the stop is NOT confirmed; retrying with backoff".to_string()
                    }
                    Exit::Done => "stopped and proven".to_string(),
                    other => format!(
                        "stopped and proven, with a failure recorded (exit {})",
                        other as u8
                    ),
                },
                Ok(Outcome::AlreadyFinal) => "already stopped".to_string(),
                Ok(Outcome::Held(c)) => format!(
                    "driven by gpuctl {} (pid {}); left to it",
                    c.kind.as_str(),
                    c.pid
                ),
                Err(e) => format!("the stop failed: {e:#}; retrying at the next sweep"),
            };
            log(Some(&id), &message);
            if let Ok(mut set) = stopping.lock() {
                set.remove(&id);
            }
        });
    }
}
