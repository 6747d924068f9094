//! Versioned migrations, one list for both backends: tracked in `PRAGMA user_version`
//! (SQLite) or the `gpuctl_schema` table (PostgreSQL). Append only: a released migration
//! is never edited, because teams' databases already hold it.

use crate::sql::{Backend, Sql, SqlError};

const MIGRATIONS: &[&str] = &[
    // 1: sessions, events, evidence manifest.
    r#"
    CREATE TABLE sessions (
        id                      TEXT PRIMARY KEY,
        plan_name               TEXT NOT NULL,
        plan_sha256             TEXT NOT NULL,
        plan_text               TEXT NOT NULL,
        plan_path               TEXT,
        plan_git_commit         TEXT,
        plan_git_dirty          INTEGER,
        owner                   TEXT,
        route                   TEXT NOT NULL,
        provider                TEXT NOT NULL,
        instance_type           TEXT,
        region                  TEXT,
        instance_id             TEXT,
        host                    TEXT,
        host_key_fingerprint    TEXT,
        price_usd_per_hour      REAL,
        catalog_price_usd_per_hour REAL,
        hourly_budget_usd       REAL,
        max_total_usd           REAL,
        created_at              TEXT NOT NULL,
        launched_at             TEXT,
        deadline                TEXT NOT NULL,
        stop_cause              TEXT NOT NULL,
        ended_at                TEXT,
        state                   TEXT NOT NULL,
        stop_reason             TEXT,
        failure_reason          TEXT,
        cost_usd                REAL,
        controller_pid          INTEGER,
        evidence_dir            TEXT,
        updated_at              TEXT NOT NULL
    );
    CREATE INDEX sessions_state ON sessions(state);
    CREATE INDEX sessions_created ON sessions(created_at);
    CREATE INDEX sessions_plan ON sessions(plan_name);

    CREATE TABLE events (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id  TEXT NOT NULL REFERENCES sessions(id),
        at          TEXT NOT NULL,
        kind        TEXT NOT NULL,
        state       TEXT,
        message     TEXT NOT NULL,
        data        TEXT
    );
    CREATE INDEX events_session ON events(session_id, id);

    CREATE TABLE evidence (
        session_id  TEXT NOT NULL REFERENCES sessions(id),
        path        TEXT NOT NULL,
        sha256      TEXT,
        size        INTEGER,
        status      TEXT NOT NULL,
        PRIMARY KEY (session_id, path)
    );
    "#,
    // 2: what the daemon needs to take a session over, and the enforcement bookkeeping.
    r#"
    ALTER TABLE sessions ADD COLUMN handle TEXT;
    ALTER TABLE sessions ADD COLUMN controller_start INTEGER;
    ALTER TABLE sessions ADD COLUMN controller_kind TEXT;
    ALTER TABLE sessions ADD COLUMN stop_requested_at TEXT;
    ALTER TABLE sessions ADD COLUMN stop_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN next_stop_attempt_at TEXT;
    ALTER TABLE sessions ADD COLUMN stop_lateness_ms INTEGER;
    ALTER TABLE sessions ADD COLUMN budget_warned_at TEXT;
    "#,
    // 3: plan texts stored once per sha256 (teams run the same plan many times; audits scan
    // sessions without reading plan texts). `sessions.plan_text` stays, empty, for old readers.
    r#"
    CREATE TABLE plans (
        sha256  TEXT PRIMARY KEY,
        text    TEXT NOT NULL
    );
    INSERT OR IGNORE INTO plans (sha256, text) SELECT plan_sha256, plan_text FROM sessions;
    UPDATE sessions SET plan_text = '';
    "#,
    // 4: which API key launched a cloud instance (a sha256 prefix, never the key): a stop
    // read back through another key may see "gone" where the instance is only invisible.
    r#"
    ALTER TABLE sessions ADD COLUMN provider_key_sha256 TEXT;
    "#,
    // 5: a cloud session whose billing depends on this laptop alone, run anyway with
    // `up --laptop-only` (audit shows the choice).
    r#"
    ALTER TABLE sessions ADD COLUMN laptop_only INTEGER NOT NULL DEFAULT 0;
    "#,
    // 6: the controlling `up`'s heartbeat: a stopped process (Ctrl+Z, SIGSTOP, a frozen
    // VM) keeps its PID but not its heartbeat, and the daemon takes over.
    r#"
    ALTER TABLE sessions ADD COLUMN controller_heartbeat_at TEXT;
    "#,
    // 7: team mode. Which machine the controller runs on (a PID means nothing on another
    // host: there, only the heartbeat says it is alive), the index monthly caps read, and
    // the daemons watching the store (`up` looks for one before renting).
    r#"
    ALTER TABLE sessions ADD COLUMN controller_machine INTEGER;
    CREATE INDEX sessions_owner_created ON sessions(owner, created_at);
    CREATE INDEX sessions_created_id ON sessions(created_at, id);
    CREATE TABLE daemons (
        machine     INTEGER NOT NULL,
        pid         INTEGER NOT NULL,
        start       INTEGER NOT NULL,
        hostname    TEXT NOT NULL,
        home        TEXT NOT NULL,
        started_at  TEXT NOT NULL,
        seen_at     TEXT NOT NULL,
        PRIMARY KEY (machine, pid, start)
    );
    "#,
];

/// How many migrations this build knows.
pub const KNOWN: i64 = MIGRATIONS.len() as i64;

/// A migration in PostgreSQL's words: the statements are written for SQLite, and differ
/// only in these types and one insert.
fn for_postgres(sql: &str) -> String {
    sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        .replace("INTEGER", "BIGINT")
        .replace("REAL", "DOUBLE PRECISION")
        .replace(
            "INSERT OR IGNORE INTO plans (sha256, text) SELECT plan_sha256, plan_text FROM sessions;",
            "INSERT INTO plans (sha256, text) SELECT DISTINCT plan_sha256, plan_text FROM sessions ON CONFLICT DO NOTHING;",
        )
}

/// The schema version the database holds.
pub fn version(sql: &mut dyn Sql) -> Result<i64, SqlError> {
    match sql.backend() {
        Backend::Sqlite => sql
            .query_opt("PRAGMA user_version", &[])?
            .map(|r| r.int("user_version"))
            .transpose()
            .map(|v| v.unwrap_or(0)),
        Backend::Postgres => {
            // A new database has no table yet: version 0 (read without creating anything).
            let exists = sql
                .query_opt("SELECT to_regclass('gpuctl_schema')::text AS t", &[])?
                .and_then(|r| r.opt_text("t").ok().flatten())
                .is_some();
            if !exists {
                return Ok(0);
            }
            Ok(sql
                .query_opt("SELECT max(version) AS version FROM gpuctl_schema", &[])?
                .and_then(|r| r.opt_int("version").ok().flatten())
                .unwrap_or(0))
        }
    }
}

/// The advisory lock PostgreSQL migrations run under: several gpuctl processes may open a
/// new database at once, and one migrates while the others wait.
pub const LOCK: i64 = 7_450_717;

/// Bring the schema up to date inside the caller's transaction. Returns the versions
/// before and after; a database newer than this build is refused, untouched.
pub fn migrate(sql: &mut dyn Sql) -> Result<Result<(i64, i64), i64>, SqlError> {
    let current = version(sql)?;
    if current > KNOWN {
        return Ok(Err(current));
    }
    if sql.backend() == Backend::Postgres {
        sql.batch("CREATE TABLE IF NOT EXISTS gpuctl_schema (version BIGINT NOT NULL)")?;
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let n = i as i64 + 1;
        match sql.backend() {
            Backend::Sqlite => {
                sql.batch(migration)?;
                sql.batch(&format!("PRAGMA user_version = {n}"))?;
            }
            Backend::Postgres => {
                sql.batch(&for_postgres(migration))?;
                sql.execute(
                    "INSERT INTO gpuctl_schema (version) VALUES (?1)",
                    &[n.into()],
                )?;
            }
        }
    }
    Ok(Ok((current, KNOWN)))
}
