//! `gpuctl ls`: sessions, what may still bill first.

use chrono::Utc;

use std::io::IsTerminal;

use super::{alarm, driver_note, open_db, usd};
use crate::cli::LsArgs;
use crate::exit::Exit;
use crate::session::SessionState;

pub fn run(args: LsArgs) -> anyhow::Result<Exit> {
    let db = open_db()?;
    let sessions = db.list_sessions(args.limit)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&sessions)?);
        return Ok(Exit::Done);
    }
    if sessions.is_empty() {
        eprintln!("no sessions in {}", db.path().display());
        return Ok(Exit::Done);
    }
    let now = Utc::now();
    println!(
        "{:<24} {:<24} {:<10} {:<8} {:<17} {:<20} {:>9}",
        "ID", "PLAN", "ROUTE", "PROVIDER", "STATE", "DEADLINE", "COST"
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
        println!(
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
            println!("{:<24} {note}", "");
        }
    }
    if sessions
        .iter()
        .any(|s| s.state == SessionState::StopUnconfirmed)
    {
        eprintln!("warning: sessions in STOP_UNCONFIRMED may still bill; the daemon retries until the provider confirms");
    }
    Ok(Exit::Done)
}
