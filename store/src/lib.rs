//! gpuctl's session store: one trait of statements, two backends.
//!
//! The embedded default is SQLite in WAL mode at `$GPUCTL_HOME/sessions.db`: one person,
//! nothing to install. A team points every gpuctl at one PostgreSQL server
//! (`GPUCTL_DATABASE_URL`), so that daemons on always-on hosts cover for each other and
//! budgets are counted across everyone. Every state change is committed before the side
//! effect it announces, so that after a crash the store says what may still be running.

mod audit;
mod migrations;
mod postgres;
mod sessions;
pub mod sql;
mod state;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use audit::{AuditFilter, AuditRaw, Caps, MonthSpend};
pub use migrations::KNOWN as SCHEMA_VERSION;
pub use postgres::redact;
pub use sessions::{
    this_machine, Claim, CloudLaunch, Controller, ControllerKind, DaemonRecord, EventRecord,
    EvidenceRow, NewSession, Patch, SeedRow, SessionRecord,
};
pub use sql::Backend;
pub use state::SessionState;

use sql::{Lite, Sql, SqlError};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create the gpuctl data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the session database {location}: {reason}")]
    Open { location: String, reason: String },
    #[error("session database {location}: {source}")]
    Sql { location: String, source: SqlError },
    #[error("the session database {location} was written by a newer gpuctl (schema {found}, this build knows {known}); upgrade gpuctl")]
    TooNew {
        location: String,
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
        matches!(self, DbError::Sql { source, .. } if source.is_busy())
    }
}

pub(crate) enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::PgConn),
}

pub struct Db {
    conn: Conn,
    /// Where the store is, as it may be shown: a path, or the URL without its password.
    location: String,
    path: Option<PathBuf>,
}

/// How long a writer waits for another process's lock before giving up with a clear error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening waits out a database that other processes are opening or migrating.
const OPEN_RETRY: Duration = Duration::from_secs(30);

/// Where the store is: `GPUCTL_DATABASE_URL`, else `database_url` in
/// `$XDG_CONFIG_HOME/gpuctl/config.toml` (`~/.config/...`), else SQLite in the home.
pub fn database_url() -> Option<String> {
    if let Some(u) = std::env::var("GPUCTL_DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        return Some(u.trim().to_string());
    }
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    let text = std::fs::read_to_string(dir.join("gpuctl").join("config.toml")).ok()?;
    // One key is read; the file may hold others for later versions.
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "database_url")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|v| !v.is_empty())
    })
}

impl Db {
    /// The store this machine is configured for: PostgreSQL when a URL is set, else
    /// `sessions.db` in `home` (created if needed).
    pub fn open(home: &Path) -> Result<Db, DbError> {
        match database_url() {
            Some(url) => Db::open_url(&url),
            None => {
                std::fs::create_dir_all(home).map_err(|source| DbError::CreateDir {
                    path: home.to_path_buf(),
                    source,
                })?;
                Db::open_path(&home.join("sessions.db"))
            }
        }
    }

    /// The configured store as it is, without migrating it (`gpuctl db status`). An
    /// embedded store that does not exist yet is not created.
    pub fn connect(home: &Path) -> Result<Option<Db>, DbError> {
        match database_url() {
            Some(url) => Ok(Some(Db {
                location: redact(&url),
                conn: Conn::Postgres(Db::connect_url(&url)?),
                path: None,
            })),
            None => {
                let path = home.join("sessions.db");
                if !path.exists() {
                    return Ok(None);
                }
                let conn = rusqlite::Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .map_err(|e| DbError::Open {
                    location: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                Ok(Some(Db {
                    location: path.display().to_string(),
                    conn: Conn::Sqlite(conn),
                    path: Some(path),
                }))
            }
        }
    }

    fn connect_url(url: &str) -> Result<postgres::PgConn, DbError> {
        let location = redact(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(DbError::Open {
                location,
                reason: "GPUCTL_DATABASE_URL must be a postgres:// URL (unset it to use the embedded SQLite store)".into(),
            });
        }
        postgres::PgConn::connect(url).map_err(|reason| DbError::Open { location, reason })
    }

    /// A PostgreSQL store (`postgres://user@host:port/db`, `?sslmode=require` for TLS).
    pub fn open_url(url: &str) -> Result<Db, DbError> {
        let db = Db {
            conn: Conn::Postgres(Db::connect_url(url)?),
            location: redact(url),
            path: None,
        };
        db.migrate()?;
        Ok(db)
    }

    pub fn open_path(path: &Path) -> Result<Db, DbError> {
        let location = path.display().to_string();
        let conn = rusqlite::Connection::open(path).map_err(|e| DbError::Open {
            location: location.clone(),
            reason: e.to_string(),
        })?;
        let db = Db {
            conn: Conn::Sqlite(conn),
            location,
            path: Some(path.to_path_buf()),
        };
        // Many processes may open a fresh home at once (`up` beside a loop of `ls`): the
        // switch to WAL and the migrations take locks the busy handler does not always wait
        // for, so a busy answer here is waited out, bounded, instead of failing the command.
        let start = std::time::Instant::now();
        loop {
            match db.configure().and_then(|_| db.migrate()) {
                Err(e) if e.is_busy() && start.elapsed() < OPEN_RETRY => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other.map(|_| db),
            }
        }
    }

    fn configure(&self) -> Result<(), DbError> {
        let Conn::Sqlite(c) = &self.conn else {
            return Ok(());
        };
        c.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.err(e.into()))?;
        // WAL: readers never block the writer; synchronous=FULL: a committed state survives power loss.
        c.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )
        .map_err(|e| self.err(e.into()))
    }

    /// Bring the schema up to date; returns the versions before and after.
    pub fn migrate(&self) -> Result<(i64, i64), DbError> {
        let outcome = match &self.conn {
            Conn::Sqlite(_) => self.tx(migrations::migrate)?,
            Conn::Postgres(p) => {
                // Every command opens the store: a schema already current is only read,
                // without the lock that migrations (rare) take.
                let current = self.schema_version()?;
                if current == SCHEMA_VERSION {
                    Ok((current, current))
                } else {
                    p.locked(migrations::LOCK, migrations::migrate)
                        .map_err(|e| self.err(e))?
                }
            }
        };
        match outcome {
            Ok(v) => Ok(v),
            Err(found) => Err(DbError::TooNew {
                location: self.location.clone(),
                found,
                known: SCHEMA_VERSION,
            }),
        }
    }

    /// The schema version the store holds.
    pub fn schema_version(&self) -> Result<i64, DbError> {
        self.run(migrations::version)
    }

    pub fn backend(&self) -> Backend {
        match self.conn {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        }
    }

    /// How long a write waits for another process's lock. The stop path shortens it so
    /// that a locked database delays the record, never the stop.
    pub fn set_busy_timeout(&self, d: Duration) -> Result<(), DbError> {
        match &self.conn {
            Conn::Sqlite(c) => c.busy_timeout(d).map_err(|e| self.err(e.into())),
            Conn::Postgres(_) => Ok(()),
        }
    }

    /// Where the store is, fit to print (a PostgreSQL URL without its password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The SQLite file, for the embedded store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn err(&self, source: SqlError) -> DbError {
        DbError::Sql {
            location: self.location.clone(),
            source,
        }
    }

    /// Statements outside a transaction (each one atomic on its own).
    fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<R, SqlError> + Send + 'static,
    ) -> Result<R, DbError> {
        match &self.conn {
            Conn::Sqlite(c) => f(&mut Lite(c)),
            Conn::Postgres(p) => p.run(f),
        }
        .map_err(|e| self.err(e))
    }

    /// One transaction: SQLite's BEGIN IMMEDIATE (one writer at a time), PostgreSQL's
    /// SERIALIZABLE (run again when it loses a race).
    fn tx<R: Send + 'static>(
        &self,
        f: impl Fn(&mut dyn Sql) -> Result<R, SqlError> + Send + 'static,
    ) -> Result<R, DbError> {
        match &self.conn {
            Conn::Sqlite(c) => (|| {
                c.execute_batch("BEGIN IMMEDIATE")?;
                match f(&mut Lite(c)) {
                    Ok(r) => match c.execute_batch("COMMIT") {
                        Ok(()) => Ok(r),
                        Err(e) => {
                            let _ = c.execute_batch("ROLLBACK");
                            Err(e.into())
                        }
                    },
                    Err(e) => {
                        let _ = c.execute_batch("ROLLBACK");
                        Err(e)
                    }
                }
            })(),
            Conn::Postgres(p) => p.transaction(f),
        }
        .map_err(|e| self.err(e))
    }

    /// "ok" when the store is sound (SQLite's integrity check; PostgreSQL answers for its own).
    pub fn integrity_check(&self) -> Result<String, DbError> {
        match &self.conn {
            Conn::Sqlite(c) => c
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .map_err(|e| self.err(e.into())),
            Conn::Postgres(_) => Ok("ok".into()),
        }
    }
}
