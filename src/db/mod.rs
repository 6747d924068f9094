//! The session database: SQLite in WAL mode at `$GPUCTL_HOME/sessions.db`.
//!
//! Every state change is committed before the side effect it announces, so that after a
//! crash the database says what may still be running. WAL keeps a killed writer from
//! corrupting the file: an unfinished transaction is simply not there on reopen.

mod migrations;
mod sessions;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

pub use sessions::{
    Claim, CloudLaunch, Controller, ControllerKind, EventRecord, EvidenceRow, NewSession, SeedRow,
    SessionRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create the gpuctl data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the session database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("session database {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the session database {path} was written by a newer gpuctl (schema {found}, this build knows {known}); upgrade gpuctl")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("no session matches {0:?}")]
    NotFound(String),
    #[error("{0:?} matches several sessions; give more of the id")]
    Ambiguous(String),
}

impl DbError {
    /// Another connection holds a lock (SQLITE_BUSY or SQLITE_LOCKED, any extended code).
    pub fn is_busy(&self) -> bool {
        let source = match self {
            DbError::Sql { source, .. } | DbError::Open { source, .. } => source,
            _ => return false,
        };
        matches!(
            source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

pub struct Db {
    conn: Connection,
    path: PathBuf,
}

/// How long a writer waits for another process's lock before giving up with a clear error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening waits out a database that other processes are opening or migrating.
const OPEN_RETRY: Duration = Duration::from_secs(30);

impl Db {
    /// Open (creating if needed) `sessions.db` in `home`.
    pub fn open(home: &Path) -> Result<Db, DbError> {
        std::fs::create_dir_all(home).map_err(|source| DbError::CreateDir {
            path: home.to_path_buf(),
            source,
        })?;
        Db::open_path(&home.join("sessions.db"))
    }

    pub fn open_path(path: &Path) -> Result<Db, DbError> {
        let conn = Connection::open(path).map_err(|source| DbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut db = Db {
            conn,
            path: path.to_path_buf(),
        };
        // Many processes may open a fresh home at once (`up` beside a loop of `ls`): the
        // switch to WAL and the migrations take locks the busy handler does not always wait
        // for, so a busy answer here is waited out, bounded, instead of failing the command.
        let start = std::time::Instant::now();
        loop {
            match db.configure().and_then(|_| migrations::migrate(&mut db)) {
                Err(e) if e.is_busy() && start.elapsed() < OPEN_RETRY => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other.map(|_| db),
            }
        }
    }

    fn configure(&self) -> Result<(), DbError> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.err(e))?;
        // WAL: readers never block the writer; synchronous=FULL: a committed state survives power loss.
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
            )
            .map_err(|e| self.err(e))
    }

    /// How long a write waits for another process's lock. The stop path shortens it so
    /// that a locked database delays the record, never the stop.
    pub fn set_busy_timeout(&self, d: Duration) -> Result<(), DbError> {
        self.conn.busy_timeout(d).map_err(|e| self.err(e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> DbError {
        DbError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// `PRAGMA integrity_check`: "ok" when the file is sound.
    pub fn integrity_check(&self) -> Result<String, DbError> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}
