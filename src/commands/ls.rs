//! `gpuctl ls`: sessions, what may still bill first.

use chrono::Utc;

use std::io::IsTerminal;

use super::{alarm, driver_note, open_db, usd};
use crate::cli::LsArgs;
use crate::exit::Exit;
use crate::session::SessionState;

pub fn run(args: LsArgs) -> anyhow::Result<Exit> {
    let db = open_db()?;
    if args.orphans {
        return super::runtime()?.block_on(orphans(&db, crate::output::json()));
    }
    let sessions = db.list_sessions(args.limit)?;
    if crate::output::json() {
        crate::output::printer().doc(&sessions)?;
        return Ok(Exit::Done);
    }
    if sessions.is_empty() {
        crate::note!("no sessions in {}", db.location());
        return Ok(Exit::Done);
    }
    let now = Utc::now();
    crate::out!(
        "{:<24} {:<24} {:<10} {:<8} {:<17} {:<20} {:>9}",
        "ID",
        "PLAN",
        "ROUTE",
        "PROVIDER",
        "STATE",
        "DEADLINE",
        "COST"
    );
    for s in &sessions {
        let deadline = if s.state.is_final() {
            s.deadline.format("%Y-%m-%d %H:%M:%S").to_string()
        } else if s.deadline > now {
            format!(
                "in {}",
                humantime::format_duration(std::time::Duration::from_secs(
                    (s.deadline - now).num_seconds().max(0) as u64
                ))
            )
        } else {
            "PASSED".to_string()
        };
        let state = if s.state == SessionState::StopUnconfirmed {
            // Padded before colouring, so that the columns stay aligned.
            alarm(
                &format!("{:<17}", "STOP_UNCONFIRMED"),
                std::io::stdout().is_terminal(),
            )
        } else {
            format!("{:<17}", s.state.to_string())
        };
        crate::out!(
            "{:<24} {:<24} {:<10} {:<8} {} {:<20} {:>9}",
            s.id,
            s.plan_name,
            s.route,
            s.provider,
            state,
            deadline,
            usd(s.cost_usd)
        );
        if let Some(note) = driver_note(s) {
            crate::out!("{:<24} {note}", "");
        }
    }
    if sessions
        .iter()
        .any(|s| s.state == SessionState::StopUnconfirmed)
    {
        crate::warning!(
            "sessions in STOP_UNCONFIRMED may still bill; {}",
            crate::home::gpuctl_home()
                .map(|h| crate::daemon::who_retries(&h))
                .unwrap_or_else(|_| "see `gpuctl daemon status`".into())
        );
    }
    Ok(Exit::Done)
}

#[derive(serde::Serialize)]
struct Orphan {
    provider: String,
    instance_id: String,
    name: String,
    state: String,
    usd_per_hour: Option<f64>,
    /// The session its tag names, and that session's state (None: no such session here).
    session_id: Option<String>,
    session_state: Option<String>,
}

/// Instances tagged `gpuctl-<session>` whose session is stopped, failed or unknown here.
async fn orphans(db: &crate::db::Db, json: bool) -> anyhow::Result<Exit> {
    use gpuctl_providers::{session_of, Cloud, InstanceState, Provider, ProviderKind};
    let mut found = Vec::new();
    let mut asked = Vec::new();
    let mut skipped = Vec::new();
    for kind in [
        ProviderKind::Lambda,
        ProviderKind::Runpod,
        ProviderKind::Vast,
    ] {
        let cloud = match Cloud::connect(kind) {
            Ok(c) => c,
            Err(e) => {
                skipped.push(format!("{kind}: {e}"));
                continue;
            }
        };
        let list = match cloud.list().await {
            Ok(l) => l,
            Err(e) => {
                skipped.push(format!("{kind}: {e}"));
                continue;
            }
        };
        asked.push(kind.as_str());
        for i in list {
            let Some(session) = session_of(&i.name) else {
                continue;
            };
            if i.state == InstanceState::Gone {
                continue;
            }
            let owner = db.get_session(session).ok().filter(|s| s.id == session);
            if owner.as_ref().is_some_and(|s| !s.state.is_final()) {
                continue;
            }
            found.push(Orphan {
                provider: kind.as_str().into(),
                instance_id: i.id,
                name: i.name.clone(),
                state: format!("{:?}", i.state).to_lowercase(),
                usd_per_hour: i.usd_per_hour,
                session_id: owner.as_ref().map(|s| s.id.clone()),
                session_state: owner.map(|s| s.state.to_string()),
            });
        }
    }
    for s in &skipped {
        crate::note!("not asked: {s}");
    }
    if json {
        crate::output::printer().doc(&found)?;
    } else if found.is_empty() {
        crate::note!(
            "no orphans on {}",
            if asked.is_empty() {
                "any provider (no API key set)".to_string()
            } else {
                asked.join(", ")
            }
        );
    } else {
        crate::out!(
            "{:<8} {:<34} {:<36} {:<10} {:>8}  SESSION",
            "PROVIDER",
            "INSTANCE",
            "NAME",
            "STATE",
            "$/H"
        );
        for o in &found {
            crate::out!(
                "{:<8} {:<34} {:<36} {:<10} {:>8}  {}",
                o.provider,
                o.instance_id,
                o.name,
                o.state,
                usd(o.usd_per_hour),
                match (&o.session_id, &o.session_state) {
                    (Some(id), Some(st)) => format!("{id} ({st})"),
                    _ => "no such session in this database".into(),
                }
            );
        }
        crate::warning!("{} instance(s) tagged by gpuctl may still bill with no session to stop them; terminate them at the provider", found.len());
    }
    // An orphan is an alarm for scripts: exit 4, like a stop that is not confirmed.
    Ok(if found.is_empty() {
        Exit::Done
    } else {
        Exit::StopUnconfirmed
    })
}
