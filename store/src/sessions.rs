//! Session rows and their events, written once for both backends.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::sql::{ts, Row, Sql, SqlError, Value};
use crate::{Db, DbError, SessionState};

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
    /// How to reach the agent after a restart (JSON of the controller's `AgentHandle`).
    #[serde(skip)]
    pub handle: Option<String>,
    #[serde(skip)]
    pub controller_start: Option<u64>,
    /// Which process drives the session: "up", "daemon" or "down".
    pub controller_kind: Option<String>,
    /// Which machine that process runs on (see `this_machine`).
    #[serde(skip)]
    pub controller_machine: Option<u64>,
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
    /// When the controller last said it is alive (`up` every 2 s, a daemon every sweep).
    pub controller_heartbeat_at: Option<DateTime<Utc>>,
}

/// The process that drives a session, identified so that a reused PID is not mistaken for
/// it, and a PID on another machine is not looked up on this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Controller {
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (/proc/PID/stat, field 22).
    pub start: u64,
    pub kind: ControllerKind,
    /// The machine it runs on (`this_machine()` there).
    #[serde(skip)]
    pub machine: u64,
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

/// This machine, as a number that fits an INTEGER column: a hash of /etc/machine-id (else
/// the hostname). Two machines sharing one PostgreSQL store tell their PIDs apart by it.
/// Read once per process: a daemon asks for every session of every sweep.
pub fn this_machine() -> u64 {
    static MACHINE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MACHINE.get_or_init(machine_hash)
}

fn machine_hash() -> u64 {
    let id = std::fs::read_to_string("/etc/machine-id")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    // FNV-1a, 63 bits (positive as an i64).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.trim().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h >> 1
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub state: Option<SessionState>,
    pub message: String,
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

/// The plan text of a session row: stored once per sha256 in `plans` (older rows inline).
const PLAN_TEXT_COLUMN: &str =
    "coalesce((SELECT text FROM plans WHERE plans.sha256 = sessions.plan_sha256), plan_text) AS plan_text";
const COLUMNS: &str = "id, plan_name, plan_sha256, coalesce((SELECT text FROM plans WHERE plans.sha256 = sessions.plan_sha256), plan_text) AS plan_text, plan_path, plan_git_commit, plan_git_dirty, owner, route, provider, instance_type, region, instance_id, host, host_key_fingerprint, price_usd_per_hour, catalog_price_usd_per_hour, hourly_budget_usd, max_total_usd, created_at, launched_at, deadline, stop_cause, ended_at, state, stop_reason, failure_reason, cost_usd, controller_pid, evidence_dir, updated_at, handle, controller_start, controller_kind, controller_machine, stop_requested_at, stop_attempts, next_stop_attempt_at, stop_lateness_ms, budget_warned_at, provider_key_sha256, laptop_only, controller_heartbeat_at";

fn session_from_row(r: &Row) -> Result<SessionRecord, SqlError> {
    Ok(SessionRecord {
        id: r.text("id")?,
        plan_name: r.text("plan_name")?,
        plan_sha256: r.text("plan_sha256")?,
        plan_text: r.opt_text("plan_text")?.unwrap_or_default(),
        plan_path: r.opt_text("plan_path")?,
        plan_git_commit: r.opt_text("plan_git_commit")?,
        plan_git_dirty: r.opt_int("plan_git_dirty")?.map(|v| v != 0),
        owner: r.opt_text("owner")?,
        route: r.text("route")?,
        provider: r.text("provider")?,
        instance_type: r.opt_text("instance_type")?,
        region: r.opt_text("region")?,
        instance_id: r.opt_text("instance_id")?,
        host: r.opt_text("host")?,
        host_key_fingerprint: r.opt_text("host_key_fingerprint")?,
        price_usd_per_hour: r.opt_real("price_usd_per_hour")?,
        catalog_price_usd_per_hour: r.opt_real("catalog_price_usd_per_hour")?,
        hourly_budget_usd: r.opt_real("hourly_budget_usd")?,
        max_total_usd: r.opt_real("max_total_usd")?,
        created_at: r.time("created_at")?,
        launched_at: r.opt_time("launched_at")?,
        deadline: r.time("deadline")?,
        stop_cause: r.text("stop_cause")?,
        ended_at: r.opt_time("ended_at")?,
        state: r.parsed("state")?,
        stop_reason: r.opt_text("stop_reason")?,
        failure_reason: r.opt_text("failure_reason")?,
        cost_usd: r.opt_real("cost_usd")?,
        controller_pid: r.opt_int("controller_pid")?.map(|v| v as u32),
        evidence_dir: r.opt_text("evidence_dir")?,
        updated_at: r.time("updated_at")?,
        handle: r.opt_text("handle")?,
        controller_start: r.opt_int("controller_start")?.map(|v| v as u64),
        controller_kind: r.opt_text("controller_kind")?,
        controller_machine: r.opt_int("controller_machine")?.map(|v| v as u64),
        stop_requested_at: r.opt_time("stop_requested_at")?,
        stop_attempts: r.opt_int("stop_attempts")?.unwrap_or(0) as u32,
        next_stop_attempt_at: r.opt_time("next_stop_attempt_at")?,
        stop_lateness_ms: r.opt_int("stop_lateness_ms")?,
        budget_warned_at: r.opt_time("budget_warned_at")?,
        provider_key_sha256: r.opt_text("provider_key_sha256")?,
        laptop_only: r.opt_int("laptop_only")?.unwrap_or(0) != 0,
        controller_heartbeat_at: r.opt_time("controller_heartbeat_at")?,
    })
}

fn sessions(rows: Vec<Row>) -> Result<Vec<SessionRecord>, SqlError> {
    rows.iter().map(session_from_row).collect()
}

/// Columns `update` may set: what a session learns as it runs.
const PATCHABLE: &[&str] = &[
    "provider",
    "instance_type",
    "region",
    "instance_id",
    "host",
    "host_key_fingerprint",
    "price_usd_per_hour",
    "catalog_price_usd_per_hour",
    "launched_at",
    "deadline",
    "stop_cause",
    "handle",
    "stop_attempts",
    "next_stop_attempt_at",
    "stop_lateness_ms",
    "provider_key_sha256",
    "laptop_only",
    "updated_at",
];

/// Columns to set on one session row, by name.
#[derive(Debug, Clone, Default)]
pub struct Patch(Vec<(&'static str, Value)>);

impl Patch {
    pub fn new() -> Patch {
        Patch::default()
    }

    pub fn set(mut self, column: &'static str, value: impl Into<Value>) -> Patch {
        debug_assert!(PATCHABLE.contains(&column), "{column} is not patchable");
        self.0.push((column, value.into()));
        self
    }
}

fn insert_event(
    sql: &mut dyn Sql,
    id: &str,
    at: DateTime<Utc>,
    kind: &str,
    state: Option<SessionState>,
    message: &str,
) -> Result<(), SqlError> {
    sql.execute(
        "INSERT INTO events (session_id, at, kind, state, message) VALUES (?1, ?2, ?3, ?4, ?5)",
        &[
            id.into(),
            at.into(),
            kind.into(),
            state.map(|s| s.as_str()).into(),
            message.into(),
        ],
    )?;
    Ok(())
}

const INSERT_PLAN: &str =
    "INSERT INTO plans (sha256, text) VALUES (?1, ?2) ON CONFLICT (sha256) DO NOTHING";

impl Db {
    /// Record a new session in state `planned`, with its first event, in one transaction.
    pub fn insert_session(&self, s: &NewSession) -> Result<(), DbError> {
        let s = s.clone();
        self.tx(move |sql| insert_session(sql, &s))
    }

    /// Set columns of one session (see `PATCHABLE`); a session that is not there is an error.
    pub fn update(&self, id: &str, patch: Patch) -> Result<(), DbError> {
        if patch.0.is_empty() {
            return Ok(());
        }
        if let Some((bad, _)) = patch.0.iter().find(|(c, _)| !PATCHABLE.contains(c)) {
            return Err(self.err(SqlError::Column {
                column: bad.to_string(),
                problem: "is not a column a patch may set".into(),
            }));
        }
        let sets: Vec<String> = patch
            .0
            .iter()
            .enumerate()
            .map(|(i, (c, _))| format!("{c} = ?{}", i + 2))
            .collect();
        let stmt = format!("UPDATE sessions SET {} WHERE id = ?1", sets.join(", "));
        let mut params: Vec<Value> = vec![id.into()];
        params.extend(patch.0.into_iter().map(|(_, v)| v));
        let id = id.to_string();
        let n = self.run(move |sql| sql.execute(&stmt, &params))?;
        if n == 0 {
            return Err(DbError::NotFound(id));
        }
        Ok(())
    }

    /// Move a session to `state`, with an event saying why, in one transaction.
    pub fn transition(
        &self,
        id: &str,
        state: SessionState,
        message: &str,
        at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let (i, m) = (id.to_string(), message.to_string());
        let found = self.tx(move |sql| {
            let n = sql.execute(
                "UPDATE sessions SET state = ?2, updated_at = ?3 WHERE id = ?1",
                &[i.as_str().into(), state.as_str().into(), at.into()],
            )?;
            if n == 0 {
                return Ok(false);
            }
            insert_event(sql, &i, at, "state", Some(state), &m)?;
            Ok(true)
        })?;
        if !found {
            return Err(DbError::NotFound(id.to_string()));
        }
        Ok(())
    }

    pub fn add_event(
        &self,
        id: &str,
        kind: &str,
        message: &str,
        at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let (i, k, m) = (id.to_string(), kind.to_string(), message.to_string());
        self.run(move |sql| insert_event(sql, &i, at, &k, None, &m))
    }

    /// All sessions, what may still bill first, then newest first.
    pub fn list_sessions(&self, limit: Option<usize>) -> Result<Vec<SessionRecord>, DbError> {
        let stmt = match limit {
            Some(l) => format!("SELECT {COLUMNS} FROM sessions ORDER BY created_at DESC LIMIT {l}"),
            None => format!("SELECT {COLUMNS} FROM sessions ORDER BY created_at DESC"),
        };
        let mut all = self.run(move |sql| sessions(sql.query(&stmt, &[])?))?;
        all.sort_by_key(|s| s.state.display_rank());
        Ok(all)
    }

    /// A session by id or unique id prefix.
    pub fn get_session(&self, id: &str) -> Result<SessionRecord, DbError> {
        let pattern = format!("{}%", id.replace(['%', '_'], ""));
        let i = id.to_string();
        let found = self.run(move |sql| {
            sessions(sql.query(
                &format!("SELECT {COLUMNS} FROM sessions WHERE id = ?1 OR id LIKE ?2 ORDER BY (id = ?1) DESC LIMIT 2"),
                &[i.into(), pattern.into()],
            )?)
        })?;
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
        let i = id.to_string();
        self.run(move |sql| {
            sql.query(
                "SELECT at, kind, state, message FROM events WHERE session_id = ?1 ORDER BY id",
                &[i.into()],
            )?
            .iter()
            .map(|r| {
                Ok(EventRecord {
                    at: r.time("at")?,
                    kind: r.text("kind")?,
                    state: r
                        .opt_text("state")?
                        .map(|s| {
                            s.parse().map_err(|e: String| SqlError::Column {
                                column: "state".into(),
                                problem: e,
                            })
                        })
                        .transpose()?,
                    message: r.text("message")?,
                })
            })
            .collect()
        })
    }

    pub fn count_sessions(&self) -> Result<i64, DbError> {
        self.run(|sql| {
            sql.query_opt("SELECT count(*) AS n FROM sessions", &[])?
                .map(|r| r.int("n"))
                .transpose()
                .map(|n| n.unwrap_or(0))
        })
    }

    /// Whether a session with exactly this id exists.
    pub fn session_exists(&self, id: &str) -> Result<bool, DbError> {
        let i = id.to_string();
        self.run(move |sql| {
            Ok(sql
                .query_opt("SELECT 1 AS one FROM sessions WHERE id = ?1", &[i.into()])?
                .is_some())
        })
    }

    /// The instance is running: record what it is and when billing started.
    pub fn record_launch(
        &self,
        id: &str,
        instance_id: &str,
        host: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        self.update(
            id,
            Patch::new()
                .set("instance_id", instance_id)
                .set("host", host)
                .set("launched_at", at)
                .set("updated_at", at),
        )
    }

    /// The host key fingerprint the session trusted (provider ssh).
    pub fn record_host_key(&self, id: &str, fingerprint: &str) -> Result<(), DbError> {
        self.update(id, Patch::new().set("host_key_fingerprint", fingerprint))
    }

    /// The final state with its cost and reasons, and the state event, in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn record_end(
        &self,
        id: &str,
        state: SessionState,
        ended_at: DateTime<Utc>,
        cost_usd: Option<f64>,
        stop_reason: &str,
        failure_reason: Option<&str>,
        message: &str,
    ) -> Result<(), DbError> {
        let (i, reason, failure, m) = (
            id.to_string(),
            stop_reason.to_string(),
            failure_reason.map(str::to_string),
            message.to_string(),
        );
        self.tx(move |sql| {
            sql.execute(
                "UPDATE sessions SET state = ?2, ended_at = ?3, cost_usd = ?4, stop_reason = ?5, failure_reason = ?6, updated_at = ?3 WHERE id = ?1",
                &[i.as_str().into(), state.as_str().into(), ended_at.into(), cost_usd.into(), reason.as_str().into(), (&failure).into()],
            )?;
            insert_event(sql, &i, ended_at, "state", Some(state), &m)
        })
    }

    pub fn record_evidence(&self, id: &str, rows: &[EvidenceRow]) -> Result<(), DbError> {
        let (i, rows) = (id.to_string(), rows.to_vec());
        self.tx(move |sql| {
            for r in &rows {
                sql.execute(
                    "INSERT INTO evidence (session_id, path, sha256, size, status) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (session_id, path) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, status = excluded.status",
                    &[i.as_str().into(), r.path.as_str().into(), (&r.sha256).into(), r.size.into(), r.status.as_str().into()],
                )?;
            }
            Ok(())
        })
    }

    pub fn evidence_rows(&self, id: &str) -> Result<Vec<EvidenceRow>, DbError> {
        let i = id.to_string();
        self.run(move |sql| {
            sql.query(
                "SELECT path, sha256, size, status FROM evidence WHERE session_id = ?1 ORDER BY path",
                &[i.into()],
            )?
            .iter()
            .map(|r| {
                Ok(EvidenceRow {
                    path: r.text("path")?,
                    sha256: r.opt_text("sha256")?,
                    size: r.opt_int("size")?.map(|s| s as u64),
                    status: r.text("status")?,
                })
            })
            .collect()
        })
    }
}

pub(crate) fn insert_session(sql: &mut dyn Sql, s: &NewSession) -> Result<(), SqlError> {
    sql.execute(
        INSERT_PLAN,
        &[(&s.plan_sha256).into(), (&s.plan_text).into()],
    )?;
    sql.execute(
        "INSERT INTO sessions (id, plan_name, plan_sha256, plan_text, plan_path, plan_git_commit, plan_git_dirty, owner, route, provider, instance_type, region, price_usd_per_hour, catalog_price_usd_per_hour, hourly_budget_usd, max_total_usd, created_at, deadline, stop_cause, state, controller_pid, evidence_dir, updated_at, controller_start, controller_kind, controller_machine) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?17, ?23, ?24, ?25)",
        &[
            (&s.id).into(), (&s.plan_name).into(), (&s.plan_sha256).into(), "".into(), (&s.plan_path).into(),
            (&s.plan_git_commit).into(), s.plan_git_dirty.into(), (&s.owner).into(), (&s.route).into(),
            (&s.provider).into(), (&s.instance_type).into(), (&s.region).into(), s.price_usd_per_hour.into(),
            s.catalog_price_usd_per_hour.into(), s.hourly_budget_usd.into(), s.max_total_usd.into(),
            s.created_at.into(), s.deadline.into(), (&s.stop_cause).into(), SessionState::Planned.as_str().into(),
            s.controller.map(|c| c.pid).into(), (&s.evidence_dir).into(),
            s.controller.map(|c| c.start).into(), s.controller.map(|c| c.kind.as_str()).into(),
            s.controller.map(|c| c.machine).into(),
        ],
    )?;
    insert_event(
        sql,
        &s.id,
        s.created_at,
        "state",
        Some(SessionState::Planned),
        &format!("session recorded; deadline {}", ts(s.deadline)),
    )
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

impl SessionRecord {
    pub fn controller(&self) -> Option<Controller> {
        let kind = match self.controller_kind.as_deref() {
            Some("daemon") => ControllerKind::Daemon,
            Some("down") => ControllerKind::Down,
            _ => ControllerKind::Up,
        };
        Some(Controller {
            pid: self.controller_pid?,
            start: self.controller_start.unwrap_or(0),
            kind,
            // Rows from before team mode were written on this machine.
            machine: self.controller_machine.unwrap_or_else(this_machine),
        })
    }
}

/// The controller columns, for a compare-and-set on them.
fn controller_params(c: Option<Controller>) -> [Value; 4] {
    [
        c.map(|c| c.pid).into(),
        c.map(|c| c.start).into(),
        c.map(|c| c.kind.as_str()).into(),
        c.map(|c| c.machine).into(),
    ]
}

impl Db {
    /// `up` (or a daemon, for each session it holds) says it is alive; false when it is no
    /// longer the session's controller (another took over while this one was stopped).
    pub fn heartbeat(&self, id: &str, me: Controller, at: DateTime<Utc>) -> Result<bool, DbError> {
        let i = id.to_string();
        self.run(move |sql| {
            let [pid, start, _, machine] = controller_params(Some(me));
            sql.execute(
                "UPDATE sessions SET controller_heartbeat_at = ?2 WHERE id = ?1 AND controller_pid = ?3 AND controller_start = ?4 AND coalesce(controller_machine, ?5) = ?5",
                &[i.into(), at.into(), pid, start, machine],
            )
        })
        .map(|n| n == 1)
    }

    /// A daemon renews its lease on every session it holds, in one statement; returns how
    /// many it holds.
    pub fn renew_leases(&self, me: Controller, at: DateTime<Utc>) -> Result<u64, DbError> {
        self.run(move |sql| {
            let [pid, start, _, machine] = controller_params(Some(me));
            sql.execute(
                "UPDATE sessions SET controller_heartbeat_at = ?1 WHERE controller_pid = ?2 AND controller_start = ?3 AND controller_machine = ?4 AND state NOT IN ('stopped', 'failed')",
                &[at.into(), pid, start, machine],
            )
        })
    }

    /// The live sessions a controller holds (`daemon status`).
    pub fn held_by(&self, c: Controller) -> Result<Vec<SessionRecord>, DbError> {
        self.run(move |sql| {
            let [pid, start, _, machine] = controller_params(Some(c));
            sessions(sql.query(
                &format!("SELECT {COLUMNS} FROM sessions WHERE controller_pid = ?1 AND controller_start = ?2 AND controller_machine = ?3 AND state NOT IN ('stopped', 'failed') ORDER BY deadline"),
                &[pid, start, machine],
            )?)
        })
    }

    /// The user chose `up --laptop-only`: recorded with the session.
    pub fn record_laptop_only(&self, id: &str) -> Result<(), DbError> {
        self.update(id, Patch::new().set("laptop_only", true))
    }

    /// How to reach the agent after a restart (see the controller's `AgentHandle`).
    pub fn record_handle(&self, id: &str, handle: &str) -> Result<(), DbError> {
        self.update(id, Patch::new().set("handle", handle))
    }

    /// Become the session's controller unless a live process already is. `gone` says why
    /// the recorded controller no longer drives it (None: it still does). The change is a
    /// compare-and-set on the controller read, so two processes claiming at once (on one
    /// machine or many) cannot both win.
    pub fn claim(
        &self,
        id: &str,
        me: Controller,
        gone: impl Fn(&Controller, &SessionRecord) -> Option<String>,
        at: DateTime<Utc>,
    ) -> Result<Claim, DbError> {
        for _ in 0..10 {
            let record = self.get_session(id)?;
            if record.id != id {
                return Err(DbError::NotFound(id.to_string()));
            }
            if record.state.is_final() {
                return Ok(Claim::Final(record.state));
            }
            let previous = record.controller();
            let why = match previous {
                Some(p) if p == me => None,
                Some(p) => match gone(&p, &record) {
                    None => return Ok(Claim::Held(p)),
                    Some(why) => Some((p, why)),
                },
                None => None,
            };
            if previous == Some(me) {
                return Ok(Claim::Taken { from: None });
            }
            let message = match &why {
                Some((p, why)) => format!(
                    "taken over by gpuctl {} (pid {}): its controller, gpuctl {} (pid {}), {why}",
                    me.kind.as_str(),
                    me.pid,
                    p.kind.as_str(),
                    p.pid
                ),
                None => format!("taken over by gpuctl {} (pid {})", me.kind.as_str(), me.pid),
            };
            let i = id.to_string();
            // The controller columns exactly as read (any of them may be NULL).
            let expected: [Value; 4] = [
                record.controller_pid.into(),
                record.controller_start.into(),
                (&record.controller_kind).into(),
                record.controller_machine.into(),
            ];
            let won = self.tx(move |sql| {
                let [pid, start, kind, machine] = controller_params(Some(me));
                let [epid, estart, ekind, emachine] = expected.clone();
                let n = sql.execute(
                    "UPDATE sessions SET controller_pid = ?2, controller_start = ?3, controller_kind = ?4, controller_machine = ?5, controller_heartbeat_at = ?6, updated_at = ?6 WHERE id = ?1 AND state NOT IN ('stopped', 'failed') AND controller_pid IS NOT DISTINCT FROM ?7 AND controller_start IS NOT DISTINCT FROM ?8 AND controller_kind IS NOT DISTINCT FROM ?9 AND controller_machine IS NOT DISTINCT FROM ?10",
                    &[i.as_str().into(), pid, start, kind, machine, at.into(), epid, estart, ekind, emachine],
                )?;
                if n == 1 {
                    insert_event(sql, &i, at, "takeover", None, &message)?;
                }
                Ok(n == 1)
            })?;
            if won {
                tracing::info!(session = id, by = me.pid, "claimed");
                return Ok(Claim::Taken {
                    from: why.map(|(p, _)| p),
                });
            }
            // Someone else changed the row between the read and the write: read it again.
        }
        // Ten lost races in a row: someone else is busy with it; leave it to them.
        let record = self.get_session(id)?;
        match record.controller() {
            Some(c) if !record.state.is_final() => Ok(Claim::Held(c)),
            _ => Ok(Claim::Final(record.state)),
        }
    }

    /// Hand a session back to the team's daemons (one holding more than its share when
    /// several watch the store): the controller columns go NULL only if `me` still holds
    /// it, and the next daemon to sweep claims it. Returns whether it was released.
    pub fn release(
        &self,
        id: &str,
        me: Controller,
        why: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, DbError> {
        let (i, message) = (
            id.to_string(),
            format!(
                "released by gpuctl {} (pid {}): {why}",
                me.kind.as_str(),
                me.pid
            ),
        );
        self.tx(move |sql| {
            let [pid, start, _, machine] = controller_params(Some(me));
            let n = sql.execute(
                "UPDATE sessions SET controller_pid = NULL, controller_start = NULL, controller_kind = NULL, controller_machine = NULL, controller_heartbeat_at = NULL, updated_at = ?2 WHERE id = ?1 AND state NOT IN ('stopped', 'failed') AND stop_requested_at IS NULL AND controller_pid = ?3 AND controller_start = ?4 AND controller_machine = ?5",
                &[i.as_str().into(), at.into(), pid, start, machine],
            )?;
            if n == 1 {
                insert_event(sql, &i, at, "release", None, &message)?;
            }
            Ok(n == 1)
        })
    }

    /// `gpuctl down`: ask whoever drives the session to stop it now.
    pub fn request_stop(&self, id: &str, at: DateTime<Utc>, by: &str) -> Result<(), DbError> {
        let i = id.to_string();
        self.run(move |sql| {
            sql.execute(
                "UPDATE sessions SET stop_requested_at = coalesce(stop_requested_at, ?2) WHERE id = ?1",
                &[i.into(), at.into()],
            )
        })?;
        self.add_event(id, "stop_requested", &format!("stop requested by {by}"), at)
    }

    /// The live sessions without their plan text (empty): what a daemon's sweep reads every
    /// second. Thousands of plans a second were most of a team daemon's work; a stop reads
    /// its session again whole.
    pub fn live_sessions_brief(&self) -> Result<Vec<SessionRecord>, DbError> {
        self.run(|sql| {
            sessions(sql.query(
                &format!(
                    "SELECT {} FROM sessions WHERE state NOT IN ('stopped', 'failed') ORDER BY deadline",
                    COLUMNS.replace(PLAN_TEXT_COLUMN, "'' AS plan_text")
                ),
                &[],
            )?)
        })
    }

    /// Every session that is not final (stop_unconfirmed included), oldest deadline first.
    pub fn live_sessions(&self) -> Result<Vec<SessionRecord>, DbError> {
        self.run(|sql| {
            sessions(sql.query(
                &format!("SELECT {COLUMNS} FROM sessions WHERE state NOT IN ('stopped', 'failed') ORDER BY deadline"),
                &[],
            )?)
        })
    }

    /// An unconfirmed stop: how many tries so far, and when the next one is due.
    pub fn record_stop_attempt(
        &self,
        id: &str,
        attempts: u32,
        next: DateTime<Utc>,
    ) -> Result<(), DbError> {
        self.update(
            id,
            Patch::new()
                .set("stop_attempts", attempts)
                .set("next_stop_attempt_at", next),
        )
    }

    pub fn record_lateness(&self, id: &str, ms: i64) -> Result<(), DbError> {
        self.update(id, Patch::new().set("stop_lateness_ms", ms))
    }

    /// The 80% budget warning, once per session; returns false when it was already given.
    pub fn mark_budget_warned(&self, id: &str, at: DateTime<Utc>) -> Result<bool, DbError> {
        let i = id.to_string();
        self.run(move |sql| {
            sql.execute(
                "UPDATE sessions SET budget_warned_at = ?2 WHERE id = ?1 AND budget_warned_at IS NULL",
                &[i.into(), at.into()],
            )
        })
        .map(|n| n > 0)
    }

    /// A cloud instance exists: which one, where, at what quoted price, launched with which
    /// key (its sha256 prefix); billing starts now.
    pub fn record_cloud_launch(&self, id: &str, l: &CloudLaunch) -> Result<(), DbError> {
        let mut patch = Patch::new()
            .set("provider", l.provider.as_str())
            .set("instance_type", l.instance_type.as_str())
            .set("region", &l.region)
            .set("instance_id", l.instance_id.as_str())
            .set("catalog_price_usd_per_hour", l.catalog_price)
            .set("launched_at", l.at)
            .set("updated_at", l.at)
            .set("provider_key_sha256", l.key_sha256.as_str());
        if let Some(p) = l.price_usd_per_hour {
            patch = patch.set("price_usd_per_hour", p);
        }
        self.update(id, patch)
    }

    /// The host a cloud instance is reached at.
    pub fn record_host(&self, id: &str, host: &str) -> Result<(), DbError> {
        self.update(id, Patch::new().set("host", host))
    }

    /// An earlier effective stop (the budget at the price quoted at launch).
    pub fn record_deadline(
        &self,
        id: &str,
        deadline: DateTime<Utc>,
        cause: &str,
    ) -> Result<(), DbError> {
        self.update(
            id,
            Patch::new()
                .set("deadline", deadline)
                .set("stop_cause", cause),
        )
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
    pub fn seed(&self, rows: &[SeedRow]) -> Result<(), DbError> {
        let rows = rows.to_vec();
        self.tx(move |sql| {
            let mut plans: Vec<(&str, &str)> = rows
                .iter()
                .map(|r| (r.session.plan_sha256.as_str(), r.session.plan_text.as_str()))
                .collect();
            plans.sort();
            plans.dedup_by(|a, b| a.0 == b.0);
            for (sha, text) in plans {
                sql.execute(INSERT_PLAN, &[sha.into(), text.into()])?;
            }
            // Many rows per statement: one round trip per chunk, on either backend.
            for chunk in rows.chunks(SEED_CHUNK) {
                let mut values = Vec::with_capacity(chunk.len());
                let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * SEED_COLUMNS);
                let mut events = Vec::with_capacity(chunk.len());
                let mut event_params: Vec<Value> = Vec::with_capacity(chunk.len() * 3);
                for r in chunk {
                    let s = &r.session;
                    let n = params.len();
                    values.push(format!(
                        "({})",
                        (1..=SEED_COLUMNS).map(|i| format!("?{}", n + i)).collect::<Vec<_>>().join(", ")
                    ));
                    params.extend([
                        (&s.id).into(), (&s.plan_name).into(), (&s.plan_sha256).into(), "".into(), (&s.plan_path).into(),
                        (&s.plan_git_commit).into(), s.plan_git_dirty.into(), (&s.owner).into(), (&s.route).into(),
                        (&s.provider).into(), (&s.instance_type).into(), (&s.region).into(), s.price_usd_per_hour.into(),
                        s.catalog_price_usd_per_hour.into(), s.hourly_budget_usd.into(), s.max_total_usd.into(),
                        s.created_at.into(), s.deadline.into(), (&s.stop_cause).into(), r.state.as_str().into(),
                        (&s.evidence_dir).into(), s.created_at.into(), (&r.instance_id).into(), r.launched_at.into(),
                        r.ended_at.into(), r.cost_usd.into(), (&r.stop_reason).into(),
                    ]);
                    let m = event_params.len();
                    events.push(format!("(?{}, ?{}, 'state', ?{}, 'seeded')", m + 1, m + 2, m + 3));
                    event_params.extend([(&s.id).into(), s.created_at.into(), r.state.as_str().into()]);
                }
                sql.execute(
                    &format!("INSERT INTO sessions (id, plan_name, plan_sha256, plan_text, plan_path, plan_git_commit, plan_git_dirty, owner, route, provider, instance_type, region, price_usd_per_hour, catalog_price_usd_per_hour, hourly_budget_usd, max_total_usd, created_at, deadline, stop_cause, state, evidence_dir, updated_at, instance_id, launched_at, ended_at, cost_usd, stop_reason) VALUES {}", values.join(", ")),
                    &params,
                )?;
                sql.execute(
                    &format!("INSERT INTO events (session_id, at, kind, state, message) VALUES {}", events.join(", ")),
                    &event_params,
                )?;
            }
            Ok(())
        })
    }
}

/// Columns a seeded session row binds, and rows per statement (within SQLite's 32,766
/// and PostgreSQL's 65,535 parameters).
const SEED_COLUMNS: usize = 27;
const SEED_CHUNK: usize = 500;

/// A daemon watching the store, as it last said so.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonRecord {
    pub pid: u32,
    pub hostname: String,
    pub home: String,
    pub machine: u64,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
}

impl Db {
    /// A daemon says it watches the store (every sweep).
    pub fn daemon_seen(
        &self,
        me: Controller,
        hostname: &str,
        home: &str,
        at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let (hostname, home) = (hostname.to_string(), home.to_string());
        self.run(move |sql| {
            sql.execute(
                "INSERT INTO daemons (machine, pid, start, hostname, home, started_at, seen_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (machine, pid, start) DO UPDATE SET seen_at = excluded.seen_at",
                &[me.machine.into(), me.pid.into(), me.start.into(), hostname.into(), home.into(), at.into()],
            )?;
            // Long-gone daemons are forgotten after a day.
            sql.execute(
                "DELETE FROM daemons WHERE seen_at < ?1",
                &[(at - chrono::Duration::days(1)).into()],
            )?;
            Ok(())
        })
    }

    /// The daemons seen since `since`, most recent first.
    pub fn daemons_seen_since(&self, since: DateTime<Utc>) -> Result<Vec<DaemonRecord>, DbError> {
        self.run(move |sql| {
            sql.query(
                "SELECT machine, pid, hostname, home, started_at, seen_at FROM daemons WHERE seen_at >= ?1 ORDER BY seen_at DESC",
                &[since.into()],
            )?
            .iter()
            .map(|r| {
                Ok(DaemonRecord {
                    machine: r.int("machine")? as u64,
                    pid: r.int("pid")? as u32,
                    hostname: r.text("hostname")?,
                    home: r.text("home")?,
                    started_at: r.time("started_at")?,
                    seen_at: r.time("seen_at")?,
                })
            })
            .collect()
        })
    }
}
