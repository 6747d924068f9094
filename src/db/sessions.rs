//! Session rows and their events.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::{Db, DbError};
use crate::session::SessionState;

/// What `up` records before anything is launched.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub plan_name: String,
    pub plan_sha256: String,
    pub plan_text: String,
    pub plan_path: Option<String>,
    pub plan_git_commit: Option<String>,
    pub plan_git_dirty: Option<bool>,
    pub owner: Option<String>,
    pub route: String,
    pub provider: String,
    pub instance_type: Option<String>,
    pub region: Option<String>,
    pub price_usd_per_hour: Option<f64>,
    pub catalog_price_usd_per_hour: Option<f64>,
    pub hourly_budget_usd: Option<f64>,
    pub max_total_usd: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub stop_cause: String,
    pub controller: Option<Controller>,
    pub evidence_dir: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionRecord {
    pub id: String,
    pub plan_name: String,
    pub plan_sha256: String,
    #[serde(skip)]
    pub plan_text: String,
    pub plan_path: Option<String>,
    pub plan_git_commit: Option<String>,
    pub plan_git_dirty: Option<bool>,
    pub owner: Option<String>,
    pub route: String,
    pub provider: String,
    pub instance_type: Option<String>,
    pub region: Option<String>,
    pub instance_id: Option<String>,
    pub host: Option<String>,
    pub host_key_fingerprint: Option<String>,
    pub price_usd_per_hour: Option<f64>,
    pub catalog_price_usd_per_hour: Option<f64>,
    pub hourly_budget_usd: Option<f64>,
    pub max_total_usd: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub launched_at: Option<DateTime<Utc>>,
    pub deadline: DateTime<Utc>,
    pub stop_cause: String,
    pub ended_at: Option<DateTime<Utc>>,
    pub state: SessionState,
    pub stop_reason: Option<String>,
    pub failure_reason: Option<String>,
    pub cost_usd: Option<f64>,
    pub controller_pid: Option<u32>,
    pub evidence_dir: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// How to reach the agent after a restart (JSON of `session::AgentHandle`).
    #[serde(skip)]
    pub handle: Option<String>,
    #[serde(skip)]
    pub controller_start: Option<u64>,
    /// Which process drives the session: "up", "daemon" or "down".
    pub controller_kind: Option<String>,
    pub stop_requested_at: Option<DateTime<Utc>>,
    pub stop_attempts: u32,
    pub next_stop_attempt_at: Option<DateTime<Utc>>,
    /// Deadline to the confirmed stop, where the stop was for the deadline.
    pub stop_lateness_ms: Option<i64>,
    pub budget_warned_at: Option<DateTime<Utc>>,
    /// The sha256 prefix of the API key that launched the cloud instance (never the key).
    pub provider_key_sha256: Option<String>,
    /// Run with `up --laptop-only`: its billing depended on the laptop alone.
    pub laptop_only: bool,
    /// When the controlling `up` last said it is alive (every 2 s while it runs).
    pub controller_heartbeat_at: Option<DateTime<Utc>>,
}

/// The process that drives a session, identified so that a reused PID is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Controller {
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (/proc/PID/stat, field 22).
    pub start: u64,
    pub kind: ControllerKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControllerKind {
    Up,
    Daemon,
    Down,
}

impl ControllerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ControllerKind::Up => "up",
            ControllerKind::Daemon => "daemon",
            ControllerKind::Down => "down",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub state: Option<SessionState>,
    pub message: String,
}

const COLUMNS: &str = "id, plan_name, plan_sha256, coalesce((SELECT text FROM plans WHERE plans.sha256 = sessions.plan_sha256), plan_text), plan_path, plan_git_commit, plan_git_dirty, owner, route, provider, instance_type, region, instance_id, host, host_key_fingerprint, price_usd_per_hour, catalog_price_usd_per_hour, hourly_budget_usd, max_total_usd, created_at, launched_at, deadline, stop_cause, ended_at, state, stop_reason, failure_reason, cost_usd, controller_pid, evidence_dir, updated_at, handle, controller_start, controller_kind, stop_requested_at, stop_attempts, next_stop_attempt_at, stop_lateness_ms, budget_warned_at, provider_key_sha256, laptop_only, controller_heartbeat_at";

fn bad_column(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
}

fn time(row: &Row, idx: usize) -> rusqlite::Result<DateTime<Utc>> {
    let s: String = row.get(idx)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| bad_column(idx, e))
}

fn opt_time(row: &Row, idx: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let s: Option<String> = row.get(idx)?;
    s.map(|s| {
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| bad_column(idx, e))
    })
    .transpose()
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StateError(String);

fn state(row: &Row, idx: usize) -> rusqlite::Result<SessionState> {
    let s: String = row.get(idx)?;
    s.parse()
        .map_err(|e: String| bad_column(idx, StateError(e)))
}

fn session_from_row(row: &Row) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: row.get(0)?,
        plan_name: row.get(1)?,
        plan_sha256: row.get(2)?,
        plan_text: row.get(3)?,
        plan_path: row.get(4)?,
        plan_git_commit: row.get(5)?,
        plan_git_dirty: row.get(6)?,
        owner: row.get(7)?,
        route: row.get(8)?,
        provider: row.get(9)?,
        instance_type: row.get(10)?,
        region: row.get(11)?,
        instance_id: row.get(12)?,
        host: row.get(13)?,
        host_key_fingerprint: row.get(14)?,
        price_usd_per_hour: row.get(15)?,
        catalog_price_usd_per_hour: row.get(16)?,
        hourly_budget_usd: row.get(17)?,
        max_total_usd: row.get(18)?,
        created_at: time(row, 19)?,
        launched_at: opt_time(row, 20)?,
        deadline: time(row, 21)?,
        stop_cause: row.get(22)?,
        ended_at: opt_time(row, 23)?,
        state: state(row, 24)?,
        stop_reason: row.get(25)?,
        failure_reason: row.get(26)?,
        cost_usd: row.get(27)?,
        controller_pid: row.get(28)?,
        evidence_dir: row.get(29)?,
        updated_at: time(row, 30)?,
        handle: row.get(31)?,
        controller_start: row.get::<_, Option<i64>>(32)?.map(|v| v as u64),
        controller_kind: row.get(33)?,
        stop_requested_at: opt_time(row, 34)?,
        stop_attempts: row.get(35)?,
        next_stop_attempt_at: opt_time(row, 36)?,
        stop_lateness_ms: row.get(37)?,
        budget_warned_at: opt_time(row, 38)?,
        provider_key_sha256: row.get(39)?,
        laptop_only: row.get::<_, i64>(40)? != 0,
        controller_heartbeat_at: opt_time(row, 41)?,
    })
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Db {
    /// Record a new session in state `planned`, with its first event, in one transaction.
    pub fn insert_session(&mut self, s: &NewSession) -> Result<(), DbError> {
        let path = self.path.clone();
        let sql = |source| DbError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        tx.execute(
            "INSERT OR IGNORE INTO plans (sha256, text) VALUES (?1, ?2)",
            params![s.plan_sha256, s.plan_text],
        )
        .map_err(sql)?;
        tx.execute(
            "INSERT INTO sessions (id, plan_name, plan_sha256, plan_text, plan_path, plan_git_commit, plan_git_dirty, owner, route, provider, instance_type, region, price_usd_per_hour, catalog_price_usd_per_hour, hourly_budget_usd, max_total_usd, created_at, deadline, stop_cause, state, controller_pid, evidence_dir, updated_at, controller_start, controller_kind) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?17, ?23, ?24)",
            params![
                s.id, s.plan_name, s.plan_sha256, "", s.plan_path, s.plan_git_commit, s.plan_git_dirty, s.owner,
                s.route, s.provider, s.instance_type, s.region, s.price_usd_per_hour, s.catalog_price_usd_per_hour,
                s.hourly_budget_usd, s.max_total_usd, ts(s.created_at), ts(s.deadline), s.stop_cause,
                SessionState::Planned.as_str(), s.controller.map(|c| c.pid), s.evidence_dir,
                s.controller.map(|c| c.start as i64), s.controller.map(|c| c.kind.as_str()),
            ],
        )
        .map_err(sql)?;
        tx.execute(
            "INSERT INTO events (session_id, at, kind, state, message) VALUES (?1, ?2, 'state', ?3, ?4)",
            params![s.id, ts(s.created_at), SessionState::Planned.as_str(), format!("session recorded; deadline {}", ts(s.deadline))],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// Move a session to `state`, with an event saying why, in one transaction.
    pub fn transition(
        &mut self,
        id: &str,
        state: SessionState,
        message: &str,
        at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let path = self.path.clone();
        let sql = |source| DbError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        let n = tx
            .execute(
                "UPDATE sessions SET state = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, state.as_str(), ts(at)],
            )
            .map_err(sql)?;
        if n == 0 {
            return Err(DbError::NotFound(id.to_string()));
        }
        tx.execute(
            "INSERT INTO events (session_id, at, kind, state, message) VALUES (?1, ?2, 'state', ?3, ?4)",
            params![id, ts(at), state.as_str(), message],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    pub fn add_event(
        &self,
        id: &str,
        kind: &str,
        message: &str,
        at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        self.conn
            .execute(
                "INSERT INTO events (session_id, at, kind, message) VALUES (?1, ?2, ?3, ?4)",
                params![id, ts(at), kind, message],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// All sessions, what may still bill first, then newest first.
    pub fn list_sessions(&self, limit: Option<usize>) -> Result<Vec<SessionRecord>, DbError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM sessions ORDER BY created_at DESC LIMIT ?1"
            ))
            .map_err(|e| self.err(e))?;
        let limit = limit.map(|l| l as i64).unwrap_or(-1);
        let rows = stmt
            .query_map([limit], session_from_row)
            .map_err(|e| self.err(e))?;
        let mut sessions = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        sessions.sort_by_key(|s| s.state.display_rank());
        Ok(sessions)
    }

    /// A session by id or unique id prefix.
    pub fn get_session(&self, id: &str) -> Result<SessionRecord, DbError> {
        let pattern = format!("{}%", id.replace(['%', '_'], ""));
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM sessions WHERE id = ?1 OR id LIKE ?2 ORDER BY id = ?1 DESC LIMIT 2"))
            .map_err(|e| self.err(e))?;
        let found = stmt
            .query_map(params![id, pattern], session_from_row)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        match found.as_slice() {
            [] => Err(DbError::NotFound(id.to_string())),
            [one] => Ok(one.clone()),
            [first, ..] if first.id == id => Ok(first.clone()),
            _ => Err(DbError::Ambiguous(id.to_string())),
        }
    }

    /// The most recent session, live ones first.
    pub fn latest_session(&self) -> Result<Option<SessionRecord>, DbError> {
        Ok(self.list_sessions(None)?.into_iter().next())
    }

    pub fn events(&self, id: &str) -> Result<Vec<EventRecord>, DbError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT at, kind, state, message FROM events WHERE session_id = ?1 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([id], |row| {
                let st: Option<String> = row.get(2)?;
                Ok(EventRecord {
                    at: time(row, 0)?,
                    kind: row.get(1)?,
                    state: st
                        .map(|s| s.parse().map_err(|e: String| bad_column(2, StateError(e))))
                        .transpose()?,
                    message: row.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    pub fn count_sessions(&self) -> Result<i64, DbError> {
        self.conn
            .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Read an optional value; used by tests and diagnostics.
    pub fn session_exists(&self, id: &str) -> Result<bool, DbError> {
        self.conn
            .query_row("SELECT 1 FROM sessions WHERE id = ?1", [id], |_| Ok(()))
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err(e))
    }
}

/// One file of a session's evidence manifest.
#[derive(Debug, Clone, Serialize)]
pub struct EvidenceRow {
    pub path: String,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    /// "present" or "missing".
    pub status: String,
}

impl Db {
    /// The instance is running: record what it is and when billing started.
    pub fn record_launch(
        &self,
        id: &str,
        instance_id: &str,
        host: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE sessions SET instance_id = ?2, host = ?3, launched_at = ?4, updated_at = ?4 WHERE id = ?1",
                params![id, instance_id, host, ts(at)],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The host key fingerprint the session trusted (provider ssh).
    pub fn record_host_key(&self, id: &str, fingerprint: &str) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE sessions SET host_key_fingerprint = ?2 WHERE id = ?1",
                params![id, fingerprint],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The final state with its cost and reasons, and the state event, in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn record_end(
        &mut self,
        id: &str,
        state: SessionState,
        ended_at: DateTime<Utc>,
        cost_usd: Option<f64>,
        stop_reason: &str,
        failure_reason: Option<&str>,
        message: &str,
    ) -> Result<(), DbError> {
        let path = self.path.clone();
        let sql = |source| DbError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        tx.execute(
            "UPDATE sessions SET state = ?2, ended_at = ?3, cost_usd = ?4, stop_reason = ?5, failure_reason = ?6, updated_at = ?3 WHERE id = ?1",
            params![id, state.as_str(), ts(ended_at), cost_usd, stop_reason, failure_reason],
        )
        .map_err(sql)?;
        tx.execute(
            "INSERT INTO events (session_id, at, kind, state, message) VALUES (?1, ?2, 'state', ?3, ?4)",
            params![id, ts(ended_at), state.as_str(), message],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    pub fn record_evidence(&mut self, id: &str, rows: &[EvidenceRow]) -> Result<(), DbError> {
        let path = self.path.clone();
        let sql = |source| DbError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        for r in rows {
            tx.execute(
                "INSERT OR REPLACE INTO evidence (session_id, path, sha256, size, status) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, r.path, r.sha256, r.size.map(|s| s as i64), r.status],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }

    pub fn evidence_rows(&self, id: &str) -> Result<Vec<EvidenceRow>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, sha256, size, status FROM evidence WHERE session_id = ?1 ORDER BY path")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([id], |r| {
                let size: Option<i64> = r.get(2)?;
                Ok(EvidenceRow {
                    path: r.get(0)?,
                    sha256: r.get(1)?,
                    size: size.map(|s| s as u64),
                    status: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

/// The answer to "may I drive this session now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Yours now; `from` is the controller it was taken from (gone), if any.
    Taken { from: Option<Controller> },
    /// Nothing left to do: the session is stopped (or failed, and proven stopped).
    Final(SessionState),
    /// Another live process drives it.
    Held(Controller),
}

fn controller_from(
    pid: Option<u32>,
    start: Option<i64>,
    kind: Option<String>,
) -> Option<Controller> {
    let kind = match kind.as_deref() {
        Some("daemon") => ControllerKind::Daemon,
        Some("down") => ControllerKind::Down,
        _ => ControllerKind::Up,
    };
    Some(Controller {
        pid: pid?,
        start: start.map(|s| s as u64).unwrap_or(0),
        kind,
    })
}

impl SessionRecord {
    pub fn controller(&self) -> Option<Controller> {
        controller_from(
            self.controller_pid,
            self.controller_start.map(|s| s as i64),
            self.controller_kind.clone(),
        )
    }
}

impl Db {
    /// How to reach the agent again after a restart (see `session::AgentHandle`).
    /// `up` says it is alive; false when it is no longer the session's controller (a
    /// daemon took over while it was stopped).
    pub fn heartbeat(&self, id: &str, me: Controller, at: DateTime<Utc>) -> Result<bool, DbError> {
        self.conn
            .execute(
                "UPDATE sessions SET controller_heartbeat_at = ?2 WHERE id = ?1 AND controller_pid = ?3 AND controller_start = ?4",
                params![id, ts(at), me.pid, me.start as i64],
            )
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
    }

    /// The user chose `up --laptop-only`: recorded with the session.
    pub fn record_laptop_only(&self, id: &str) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE sessions SET laptop_only = 1 WHERE id = ?1",
                params![id],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn record_handle(&self, id: &str, handle: &str) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE sessions SET handle = ?2 WHERE id = ?1",
                params![id, handle],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Become the session's controller unless a live process already is. One transaction
    /// (BEGIN IMMEDIATE), so two processes claiming at once cannot both win.
    pub fn claim(
        &mut self,
        id: &str,
        me: Controller,
        alive: impl Fn(&Controller) -> bool,
        at: DateTime<Utc>,
    ) -> Result<Claim, DbError> {
        let path = self.path.clone();
        let sql = |source| DbError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        type Row = (String, Option<u32>, Option<i64>, Option<String>);
        let row: Option<Row> = tx
            .query_row(
                "SELECT state, controller_pid, controller_start, controller_kind FROM sessions WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(sql)?;
        let Some((state, pid, start, kind)) = row else {
            return Err(DbError::NotFound(id.to_string()));
        };
        let state: SessionState = state
            .parse()
            .map_err(|e: String| sql(bad_column(0, StateError(e))))?;
        if state.is_final() {
            return Ok(Claim::Final(state));
        }
        let previous = controller_from(pid, start, kind);
        if let Some(p) = previous {
            if p != me && alive(&p) {
                return Ok(Claim::Held(p));
            }
        }
        if previous != Some(me) {
            tx.execute(
                "UPDATE sessions SET controller_pid = ?2, controller_start = ?3, controller_kind = ?4, updated_at = ?5 WHERE id = ?1",
                params![id, me.pid, me.start as i64, me.kind.as_str(), ts(at)],
            )
            .map_err(sql)?;
            let message = match previous {
                Some(p) => format!(
                    "taken over by gpuctl {} (pid {}): its controller, gpuctl {} (pid {}), {}",
                    me.kind.as_str(),
                    me.pid,
                    p.kind.as_str(),
                    p.pid,
                    if crate::procs::alive(&p) {
                        "still exists but has stopped saying it is alive (stopped or frozen)"
                    } else {
                        "is gone"
                    }
                ),
                None => format!("taken over by gpuctl {} (pid {})", me.kind.as_str(), me.pid),
            };
            tx.execute(
                "INSERT INTO events (session_id, at, kind, message) VALUES (?1, ?2, 'takeover', ?3)",
                params![id, ts(at), message],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(Claim::Taken {
            from: previous.filter(|p| *p != me),
        })
    }

    /// `gpuctl down`: ask whoever drives the session to stop it now.
    pub fn request_stop(&self, id: &str, at: DateTime<Utc>, by: &str) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE sessions SET stop_requested_at = coalesce(stop_requested_at, ?2) WHERE id = ?1",
                params![id, ts(at)],
            )
            .map_err(|e| self.err(e))?;
        self.add_event(id, "stop_requested", &format!("stop requested by {by}"), at)
    }

    /// Every session that is not final (stop_unconfirmed included), oldest deadline first.
    pub fn live_sessions(&self) -> Result<Vec<SessionRecord>, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM sessions WHERE state NOT IN ('stopped', 'failed') ORDER BY deadline"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], session_from_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// An unconfirmed stop: how many tries so far, and when the next one is due.
    pub fn record_stop_attempt(
        &self,
        id: &str,
        attempts: u32,
        next: DateTime<Utc>,
    ) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE sessions SET stop_attempts = ?2, next_stop_attempt_at = ?3 WHERE id = ?1",
                params![id, attempts, ts(next)],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn record_lateness(&self, id: &str, ms: i64) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE sessions SET stop_lateness_ms = ?2 WHERE id = ?1",
                params![id, ms],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The 80% budget warning, once per session; returns false when it was already given.
    pub fn mark_budget_warned(&self, id: &str, at: DateTime<Utc>) -> Result<bool, DbError> {
        self.conn
            .execute(
                "UPDATE sessions SET budget_warned_at = ?2 WHERE id = ?1 AND budget_warned_at IS NULL",
                params![id, ts(at)],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }
}

impl Db {
    /// A cloud instance exists: which one, where, at what quoted price, launched with which
    /// key (its sha256 prefix); billing starts now.
    pub fn record_cloud_launch(&self, id: &str, l: &CloudLaunch) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE sessions SET provider = ?2, instance_type = ?3, region = ?4, instance_id = ?5, price_usd_per_hour = coalesce(?6, price_usd_per_hour), catalog_price_usd_per_hour = ?7, launched_at = ?8, updated_at = ?8, provider_key_sha256 = ?9 WHERE id = ?1",
                params![id, l.provider, l.instance_type, l.region, l.instance_id, l.price_usd_per_hour, l.catalog_price, ts(l.at), l.key_sha256],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The host a cloud instance is reached at.
    pub fn record_host(&self, id: &str, host: &str) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE sessions SET host = ?2 WHERE id = ?1",
                params![id, host],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// An earlier effective stop (the budget at the price quoted at launch).
    pub fn record_deadline(
        &self,
        id: &str,
        deadline: DateTime<Utc>,
        cause: &str,
    ) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE sessions SET deadline = ?2, stop_cause = ?3 WHERE id = ?1",
                params![id, ts(deadline), cause],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

/// What `record_cloud_launch` writes.
#[derive(Debug, Clone)]
pub struct CloudLaunch {
    pub provider: String,
    pub instance_type: String,
    pub region: Option<String>,
    pub instance_id: String,
    pub price_usd_per_hour: Option<f64>,
    pub catalog_price: Option<f64>,
    pub at: DateTime<Utc>,
    pub key_sha256: String,
}

/// A session row as a benchmark seeds it: where it stands, not how it got there.
#[derive(Debug, Clone)]
pub struct SeedRow {
    pub session: NewSession,
    pub state: SessionState,
    pub instance_id: Option<String>,
    pub launched_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub cost_usd: Option<f64>,
    pub stop_reason: Option<String>,
}

impl Db {
    /// Insert many sessions in one transaction, through the real schema (benchmarks:
    /// `gpuctl debug seed`). Each gets its first event.
    pub fn seed(&mut self, rows: &[SeedRow]) -> Result<(), DbError> {
        let path = self.path.clone();
        let sql = |source| DbError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        {
            let mut ins = tx
                .prepare_cached("INSERT INTO sessions (id, plan_name, plan_sha256, plan_text, plan_path, plan_git_commit, plan_git_dirty, owner, route, provider, instance_type, region, price_usd_per_hour, catalog_price_usd_per_hour, hourly_budget_usd, max_total_usd, created_at, deadline, stop_cause, state, evidence_dir, updated_at, instance_id, launched_at, ended_at, cost_usd, stop_reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?17, ?22, ?23, ?24, ?25, ?26)")
                .map_err(sql)?;
            let mut ev = tx
                .prepare_cached("INSERT INTO events (session_id, at, kind, state, message) VALUES (?1, ?2, 'state', ?3, 'seeded')")
                .map_err(sql)?;
            let mut plan = tx
                .prepare_cached("INSERT OR IGNORE INTO plans (sha256, text) VALUES (?1, ?2)")
                .map_err(sql)?;
            for r in rows {
                let s = &r.session;
                plan.execute(params![s.plan_sha256, s.plan_text])
                    .map_err(sql)?;
                ins.execute(params![
                    s.id,
                    s.plan_name,
                    s.plan_sha256,
                    "",
                    s.plan_path,
                    s.plan_git_commit,
                    s.plan_git_dirty,
                    s.owner,
                    s.route,
                    s.provider,
                    s.instance_type,
                    s.region,
                    s.price_usd_per_hour,
                    s.catalog_price_usd_per_hour,
                    s.hourly_budget_usd,
                    s.max_total_usd,
                    ts(s.created_at),
                    ts(s.deadline),
                    s.stop_cause,
                    r.state.as_str(),
                    s.evidence_dir,
                    r.instance_id,
                    r.launched_at.map(ts),
                    r.ended_at.map(ts),
                    r.cost_usd,
                    r.stop_reason,
                ])
                .map_err(sql)?;
                ev.execute(params![s.id, ts(s.created_at), r.state.as_str()])
                    .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)
    }
}

impl Db {
    /// Stream the audit's columns: stop_unconfirmed sessions first, then by creation time.
    /// Rows are never all held in memory (audits run over millions of sessions).
    pub fn audit_rows(
        &self,
        filter: &crate::audit::Filter,
        mut each: impl FnMut(crate::audit::Raw) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        let mut conds = Vec::new();
        let mut args: Vec<String> = Vec::new();
        if let Some(t) = filter.since {
            args.push(ts(t));
            conds.push(format!("created_at >= ?{}", args.len()));
        }
        if let Some(t) = filter.until {
            args.push(ts(t));
            conds.push(format!("created_at < ?{}", args.len()));
        }
        if let Some(p) = &filter.plan {
            args.push(p.clone());
            conds.push(format!("plan_name = ?{}", args.len()));
        }
        if let Some(o) = &filter.owner {
            args.push(o.clone());
            conds.push(format!("owner = ?{}", args.len()));
        }
        let cols = "id, plan_name, plan_sha256, plan_path, plan_git_commit, owner, route, provider, instance_type, price_usd_per_hour, catalog_price_usd_per_hour, created_at, launched_at, ended_at, state, stop_reason, cost_usd, max_total_usd, laptop_only";
        for unconfirmed in [true, false] {
            let mut all = conds.clone();
            all.push(if unconfirmed {
                "state = 'stop_unconfirmed'".to_string()
            } else {
                "state != 'stop_unconfirmed'".to_string()
            });
            let sql = format!(
                "SELECT {cols} FROM sessions WHERE {} ORDER BY created_at",
                all.join(" AND ")
            );
            let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
            let mut rows = stmt
                .query(rusqlite::params_from_iter(args.iter()))
                .map_err(|e| self.err(e))?;
            while let Some(r) = rows.next().map_err(|e| self.err(e))? {
                let raw = (|| -> rusqlite::Result<crate::audit::Raw> {
                    Ok(crate::audit::Raw {
                        id: r.get(0)?,
                        plan_name: r.get(1)?,
                        plan_sha256: r.get(2)?,
                        plan_path: r.get(3)?,
                        plan_git_commit: r.get(4)?,
                        owner: r.get(5)?,
                        route: r.get(6)?,
                        provider: r.get(7)?,
                        instance_type: r.get(8)?,
                        price: r.get(9)?,
                        catalog_price: r.get(10)?,
                        created_at: time(r, 11)?,
                        launched_at: opt_time(r, 12)?,
                        ended_at: opt_time(r, 13)?,
                        state: state(r, 14)?,
                        stop_reason: r.get(15)?,
                        cost_usd: r.get(16)?,
                        max_total_usd: r.get(17)?,
                        laptop_only: r.get::<_, i64>(18)? != 0,
                    })
                })()
                .map_err(|e| self.err(e))?;
                each(raw)?;
            }
        }
        Ok(())
    }
}
