//! Hidden helpers for tests. `write-sessions` is the writer the crash-safety test kills.

use chrono::Utc;

use super::open_db;
use crate::cli::DebugCommand;
use crate::db::NewSession;
use crate::exit::Exit;
use crate::session::new_session_id;

pub fn run(cmd: DebugCommand) -> anyhow::Result<Exit> {
    match cmd {
        DebugCommand::WriteSessions { count } => {
            let mut db = open_db()?;
            for i in 0..count {
                let now = Utc::now();
                let id = format!("{}-{i}", new_session_id(now));
                db.insert_session(&NewSession {
                    id: id.clone(),
                    plan_name: "crash-test".into(),
                    plan_sha256: "0".repeat(64),
                    plan_text: "x".repeat(4096),
                    plan_path: None,
                    plan_git_commit: None,
                    plan_git_dirty: None,
                    owner: None,
                    route: "local_cpu".into(),
                    provider: "local".into(),
                    instance_type: None,
                    region: None,
                    price_usd_per_hour: Some(0.0),
                    catalog_price_usd_per_hour: None,
                    hourly_budget_usd: None,
                    max_total_usd: None,
                    created_at: now,
                    deadline: now + chrono::Duration::hours(1),
                    stop_cause: "max_duration".into(),
                    controller: Some(crate::procs::me(crate::db::ControllerKind::Up)),
                    evidence_dir: None,
                })?;
                db.transition(
                    &id,
                    crate::session::SessionState::Stopped,
                    "debug writer",
                    now,
                )?;
                println!("{i}");
            }
            Ok(Exit::Done)
        }
    }
}
