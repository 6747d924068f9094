//! Versioned migrations, tracked in `PRAGMA user_version`. Append only: a released
//! migration is never edited, because teams' databases already hold it.

use super::{Db, DbError};

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
];

pub fn migrate(db: &mut Db) -> Result<(), DbError> {
    let known = MIGRATIONS.len() as i64;
    let path = db.path.clone();
    let sql = |source| DbError::Sql {
        path: path.clone(),
        source,
    };
    let tx = db
        .conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql)?;
    let current: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if current > known {
        return Err(DbError::TooNew {
            path: path.clone(),
            found: current,
            known,
        });
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(migration).map_err(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(sql)?;
    }
    tx.commit().map_err(sql)
}
