//! `gpuctl db status|migrate`: which session store this machine uses, and its schema.

use serde::Serialize;

use crate::cli::DbAction;
use crate::db::{Db, SCHEMA_VERSION};
use crate::exit::Exit;

#[derive(Serialize)]
struct StoreStatus {
    /// "sqlite" or "postgres".
    backend: &'static str,
    /// A path, or the URL without its password.
    location: String,
    /// Where the choice came from.
    selected_by: &'static str,
    exists: bool,
    schema_version: Option<i64>,
    known_schema_version: i64,
    sessions: Option<i64>,
    live_sessions: Option<usize>,
}

fn selected_by() -> &'static str {
    if crate::settings::settings().database_url_from_env {
        "GPUCTL_DATABASE_URL"
    } else if crate::db::database_url().is_some() {
        "database_url in $XDG_CONFIG_HOME/gpuctl/config.toml"
    } else {
        "default (embedded SQLite in GPUCTL_HOME)"
    }
}

pub fn run(action: DbAction) -> anyhow::Result<Exit> {
    let home = crate::home::gpuctl_home()?;
    match action {
        DbAction::Status => {
            let db = Db::connect(&home)?;
            let status = match &db {
                Some(db) => StoreStatus {
                    backend: backend_name(db),
                    location: db.location().to_string(),
                    selected_by: selected_by(),
                    exists: true,
                    schema_version: Some(db.schema_version()?),
                    known_schema_version: SCHEMA_VERSION,
                    sessions: db.count_sessions().ok(),
                    live_sessions: db.live_sessions().ok().map(|l| l.len()),
                },
                None => StoreStatus {
                    backend: "sqlite",
                    location: home.join("sessions.db").display().to_string(),
                    selected_by: selected_by(),
                    exists: false,
                    schema_version: None,
                    known_schema_version: SCHEMA_VERSION,
                    sessions: None,
                    live_sessions: None,
                },
            };
            let behind = status.schema_version.is_some_and(|v| v < SCHEMA_VERSION);
            let ahead = status.schema_version.is_some_and(|v| v > SCHEMA_VERSION);
            if crate::output::json() {
                crate::output::printer().doc(&status)?;
            } else {
                crate::out!("store:    {} ({})", status.location, status.backend);
                crate::out!("selected: {}", status.selected_by);
                match status.schema_version {
                    None => crate::out!("schema:   not created yet (the first command that records a session creates it)"),
                    Some(v) => crate::out!(
                        "schema:   {v} (this gpuctl knows {SCHEMA_VERSION}){}",
                        if behind {
                            "; `gpuctl db migrate` brings it up to date"
                        } else if ahead {
                            "; written by a newer gpuctl: upgrade this one"
                        } else {
                            ""
                        }
                    ),
                }
                if let (Some(n), Some(l)) = (status.sessions, status.live_sessions) {
                    crate::out!("sessions: {n} ({l} live)");
                }
            }
            Ok(if ahead { Exit::Failed } else { Exit::Done })
        }
        DbAction::Migrate => {
            let before = match Db::connect(&home)? {
                Some(db) => Some(db.schema_version()?),
                None => None,
            };
            // Opening migrates (in one transaction, one process at a time).
            let db = Db::open(&home)?;
            let after = db.schema_version()?;
            if crate::output::json() {
                crate::out!(
                    "{}",
                    serde_json::json!({ "backend": backend_name(&db), "location": db.location(), "schema_version_before": before, "schema_version": after })
                );
            } else {
                match before {
                    Some(b) if b == after => crate::out!(
                        "{}: schema {after}, up to date ({})",
                        db.location(),
                        backend_name(&db)
                    ),
                    Some(b) => crate::out!(
                        "{}: schema {b} -> {after} ({})",
                        db.location(),
                        backend_name(&db)
                    ),
                    None => crate::out!(
                        "{}: created, schema {after} ({})",
                        db.location(),
                        backend_name(&db)
                    ),
                }
            }
            Ok(Exit::Done)
        }
    }
}

fn backend_name(db: &Db) -> &'static str {
    match db.backend() {
        crate::db::Backend::Sqlite => "sqlite",
        crate::db::Backend::Postgres => "postgres",
    }
}
