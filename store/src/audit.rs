//! What audits and budget caps read: the audit's columns streamed page by page, and the
//! month-to-date spend a cap is checked against.

use chrono::{DateTime, Utc};

use crate::sessions::NewSession;
use crate::sql::{Row, Sql, SqlError, Value};
use crate::{Db, DbError, SessionState};

/// What the audit selects.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub plan: Option<String>,
    pub owner: Option<String>,
    /// Rows may come in any order (only totals are printed): no sort on the server.
    pub any_order: bool,
}

/// The columns of the store an audit reads.
#[derive(Debug, Clone)]
pub struct AuditRaw {
    pub id: String,
    pub plan_name: String,
    pub plan_sha256: String,
    pub plan_path: Option<String>,
    pub plan_git_commit: Option<String>,
    pub owner: Option<String>,
    pub route: String,
    pub provider: String,
    pub instance_type: Option<String>,
    pub price: Option<f64>,
    pub catalog_price: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub launched_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub state: SessionState,
    pub stop_reason: Option<String>,
    pub cost_usd: Option<f64>,
    pub max_total_usd: Option<f64>,
    pub laptop_only: bool,
    /// `gpuctl extend` moved its hard stop.
    pub extended: bool,
}

/// The audit's columns from a PostgreSQL row, by position (the SELECT below lists them).
fn pg_raw(r: &postgres::Row) -> Result<AuditRaw, SqlError> {
    fn get<'a, T: postgres::types::FromSql<'a>>(
        r: &'a postgres::Row,
        i: usize,
    ) -> Result<T, SqlError> {
        r.try_get(i).map_err(|e| SqlError::Column {
            column: r
                .columns()
                .get(i)
                .map(|c| c.name().to_string())
                .unwrap_or_default(),
            problem: e.to_string(),
        })
    }
    fn time(r: &postgres::Row, i: usize) -> Result<Option<DateTime<Utc>>, SqlError> {
        get::<Option<&str>>(r, i)?
            .map(|s| parse_time(s, r.columns().get(i).map_or("", |c| c.name())))
            .transpose()
    }
    let state: &str = get(r, 14)?;
    Ok(AuditRaw {
        id: get(r, 0)?,
        plan_name: get(r, 1)?,
        plan_sha256: get(r, 2)?,
        plan_path: get(r, 3)?,
        plan_git_commit: get(r, 4)?,
        owner: get(r, 5)?,
        route: get(r, 6)?,
        provider: get(r, 7)?,
        instance_type: get(r, 8)?,
        price: get(r, 9)?,
        catalog_price: get(r, 10)?,
        created_at: time(r, 11)?.ok_or_else(|| SqlError::Column {
            column: "created_at".into(),
            problem: "is NULL".into(),
        })?,
        launched_at: time(r, 12)?,
        ended_at: time(r, 13)?,
        state: state.parse().map_err(|e: String| SqlError::Column {
            column: "state".into(),
            problem: e,
        })?,
        stop_reason: get(r, 15)?,
        cost_usd: get(r, 16)?,
        max_total_usd: get(r, 17)?,
        laptop_only: get::<Option<i64>>(r, 18)?.unwrap_or(0) != 0,
        extended: get::<Option<&str>>(r, 19)? == Some("extended"),
    })
}

fn parse_time(s: &str, column: &str) -> Result<DateTime<Utc>, SqlError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| SqlError::Column {
            column: column.into(),
            problem: format!("{s:?}: {e}"),
        })
}

/// The audit's columns from a SQLite row, by position (the SELECT above lists them).
fn lite_raw(r: &rusqlite::Row) -> Result<AuditRaw, SqlError> {
    fn time(r: &rusqlite::Row, i: usize, name: &str) -> Result<Option<DateTime<Utc>>, SqlError> {
        let s: Option<String> = r.get(i)?;
        s.map(|s| parse_time(&s, name)).transpose()
    }
    let state: String = r.get(14)?;
    Ok(AuditRaw {
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
        created_at: time(r, 11, "created_at")?.ok_or_else(|| SqlError::Column {
            column: "created_at".into(),
            problem: "is NULL".into(),
        })?,
        launched_at: time(r, 12, "launched_at")?,
        ended_at: time(r, 13, "ended_at")?,
        state: state.parse().map_err(|e: String| SqlError::Column {
            column: "state".into(),
            problem: e,
        })?,
        stop_reason: r.get(15)?,
        cost_usd: r.get(16)?,
        max_total_usd: r.get(17)?,
        laptop_only: r.get::<_, Option<i64>>(18)?.unwrap_or(0) != 0,
        extended: r.get::<_, Option<String>>(19)?.as_deref() == Some("extended"),
    })
}

impl Db {
    /// Stream the audit's columns: stop_unconfirmed sessions first, then by creation time.
    /// Rows are handed on as they are read, never all held at once.
    pub fn audit_rows(
        &self,
        filter: &AuditFilter,
        mut each: impl FnMut(AuditRaw) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        let mut conds = Vec::new();
        let mut args: Vec<Value> = Vec::new();
        if let Some(t) = filter.since {
            args.push(t.into());
            conds.push(format!("created_at >= ?{}", args.len()));
        }
        if let Some(t) = filter.until {
            args.push(t.into());
            conds.push(format!("created_at < ?{}", args.len()));
        }
        if let Some(p) = &filter.plan {
            args.push(p.into());
            conds.push(format!("plan_name = ?{}", args.len()));
        }
        if let Some(o) = &filter.owner {
            args.push(o.into());
            conds.push(format!("owner = ?{}", args.len()));
        }
        let cols = "id, plan_name, plan_sha256, plan_path, plan_git_commit, owner, route, provider, instance_type, price_usd_per_hour, catalog_price_usd_per_hour, created_at, launched_at, ended_at, state, stop_reason, cost_usd, max_total_usd, laptop_only, stop_cause";
        let order = if filter.any_order {
            ""
        } else {
            " ORDER BY created_at, id"
        };
        for unconfirmed in [true, false] {
            let mut all = conds.clone();
            all.push(if unconfirmed {
                "state = 'stop_unconfirmed'".to_string()
            } else {
                "state != 'stop_unconfirmed'".to_string()
            });
            if let crate::Conn::Postgres(pg) = &self.conn {
                // One query, streamed: PostgreSQL sends rows as they are read.
                let stmt = format!(
                    "SELECT {cols} FROM sessions WHERE {}{order}",
                    all.join(" AND ")
                );
                let rows = pg
                    .stream(stmt, args.clone(), pg_raw)
                    .map_err(|e| self.err(e))?;
                for r in rows {
                    each(r.map_err(|e| self.err(e))?)?;
                }
                continue;
            }
            if let crate::Conn::Sqlite(c) = &self.conn {
                // One query, each row read straight into the audit's columns as SQLite
                // reads it: no by-name values (a million rows make them the cost).
                let stmt = format!(
                    "SELECT {cols} FROM sessions WHERE {}{order}",
                    all.join(" AND ")
                );
                let sql_err = |e: rusqlite::Error| self.err(e.into());
                let mut stmt = c.prepare(&stmt).map_err(sql_err)?;
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(args.iter()))
                    .map_err(sql_err)?;
                while let Some(r) = rows.next().map_err(sql_err)? {
                    each(lite_raw(r).map_err(|e| self.err(e))?)?;
                }
            }
        }
        Ok(())
    }
}

/// Month-to-date spend, as a cap counts it: what ended sessions cost, and what live ones
/// may still cost (their `max_total_usd`, else their price to the deadline). A session
/// that is running counts in full, so two `up`s cannot both spend the same last dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MonthSpend {
    pub owner_usd: f64,
    pub team_usd: f64,
}

/// What one session counts for against a cap.
fn committed(r: &Row) -> Result<f64, SqlError> {
    let state: SessionState = r.parsed("state")?;
    if state.is_final() {
        return Ok(r.opt_real("cost_usd")?.unwrap_or(0.0));
    }
    if let Some(m) = r.opt_real("max_total_usd")? {
        return Ok(m);
    }
    let price = r.opt_real("price_usd_per_hour")?.unwrap_or(0.0);
    let hours = (r.time("deadline")? - r.time("created_at")?)
        .num_seconds()
        .max(0) as f64
        / 3600.0;
    Ok(r.opt_real("cost_usd")?.unwrap_or(0.0).max(price * hours))
}

fn month_spend(
    sql: &mut dyn Sql,
    since: DateTime<Utc>,
    owner: Option<&str>,
) -> Result<MonthSpend, SqlError> {
    let rows = sql.query(
        "SELECT owner, state, cost_usd, max_total_usd, price_usd_per_hour, created_at, deadline FROM sessions WHERE created_at >= ?1",
        &[since.into()],
    )?;
    let mut spend = MonthSpend::default();
    for r in &rows {
        let c = committed(r)?;
        spend.team_usd += c;
        if owner.is_some() && r.opt_text("owner")?.as_deref() == owner {
            spend.owner_usd += c;
        }
    }
    Ok(spend)
}

/// Caps a new session is checked against, with the month they count from.
#[derive(Debug, Clone)]
pub struct Caps {
    pub since: DateTime<Utc>,
    pub owner_usd: Option<f64>,
    pub team_usd: Option<f64>,
    /// What the new session may spend at most.
    pub this_plan_usd: f64,
}

impl Db {
    /// The month-to-date spend of `owner` and of everyone.
    pub fn month_spend(
        &self,
        since: DateTime<Utc>,
        owner: Option<&str>,
    ) -> Result<MonthSpend, DbError> {
        let owner = owner.map(str::to_string);
        self.run(move |sql| month_spend(sql, since, owner.as_deref()))
    }

    /// Record a new session only if the caps still hold with it: the check and the insert
    /// are one transaction (serializable on PostgreSQL, one writer on SQLite), so two
    /// sessions racing for the last dollars cannot both pass. Returns the spend it saw and
    /// whether the session was recorded.
    pub fn insert_session_within(
        &self,
        s: &NewSession,
        caps: &Caps,
    ) -> Result<(MonthSpend, bool), DbError> {
        let (s, caps) = (s.clone(), caps.clone());
        self.tx(move |sql| {
            let spend = month_spend(sql, caps.since, s.owner.as_deref())?;
            let over = caps
                .owner_usd
                .is_some_and(|cap| spend.owner_usd + caps.this_plan_usd > cap + 1e-9)
                || caps
                    .team_usd
                    .is_some_and(|cap| spend.team_usd + caps.this_plan_usd > cap + 1e-9);
            if over {
                return Ok((spend, false));
            }
            crate::sessions::insert_session(sql, &s)?;
            Ok((spend, true))
        })
    }
}
