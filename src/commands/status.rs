//! `gpuctl status [ID]`: one session in full, with its events.

use std::io::IsTerminal;

use super::{alarm, driver_note, open_db, usd};
use crate::cli::StatusArgs;
use crate::exit::Exit;
use crate::session::SessionState;

pub fn run(args: StatusArgs) -> anyhow::Result<Exit> {
    let db = open_db()?;
    let session = match &args.id {
        Some(id) => db.get_session(id)?,
        None => match db.latest_session()? {
            Some(s) => s,
            None => {
                crate::note!("no sessions in {}", db.location());
                return Ok(Exit::Done);
            }
        },
    };
    let events = db.events(&session.id)?;
    if crate::output::json() {
        let doc = serde_json::json!({ "session": session, "events": events });
        crate::output::printer().doc(&doc)?;
    } else {
        let s = &session;
        crate::out!("session   {}", s.id);
        crate::out!(
            "plan      {} (sha256 {}{})",
            s.plan_name,
            &s.plan_sha256[..12.min(s.plan_sha256.len())],
            s.plan_git_commit
                .as_ref()
                .map(|c| format!(
                    ", git {}{}",
                    &c[..12.min(c.len())],
                    if s.plan_git_dirty == Some(true) {
                        " + local changes"
                    } else {
                        ""
                    }
                ))
                .unwrap_or_default()
        );
        crate::out!(
            "route     {} on {}{}",
            s.route,
            s.provider,
            s.instance_type
                .as_ref()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default()
        );
        let state = if s.state == SessionState::StopUnconfirmed {
            alarm(
                "STOP_UNCONFIRMED: the provider has not confirmed the stop; it may still bill",
                std::io::stdout().is_terminal(),
            )
        } else {
            s.state.to_string()
        };
        crate::out!("state     {state}");
        if let Some(note) = driver_note(s) {
            crate::out!("          {note}");
        }
        crate::out!("created   {}", s.created_at.to_rfc3339());
        crate::out!("deadline  {} ({})", s.deadline.to_rfc3339(), s.stop_cause);
        if let Some(end) = s.ended_at {
            crate::out!("ended     {}", end.to_rfc3339());
        }
        crate::out!(
            "price     {}/h, budget {}/h and {} in total",
            usd(s.price_usd_per_hour),
            usd(s.hourly_budget_usd),
            usd(s.max_total_usd)
        );
        crate::out!("cost      {}", usd(s.cost_usd));
        if let Some(r) = &s.stop_reason {
            crate::out!("stopped   {r}");
        }
        if let Some(ms) = s.stop_lateness_ms {
            crate::out!("lateness  {ms} ms after the deadline");
        }
        if let Some(r) = &s.failure_reason {
            crate::out!("failure   {r}");
        }
        if let Some(d) = &s.evidence_dir {
            crate::out!("evidence  {d}");
        }
        crate::out!("events:");
        for e in &events {
            crate::out!(
                "  {} {:<8} {}",
                e.at.format("%H:%M:%S%.3f"),
                e.kind,
                e.message
            );
        }
    }
    Ok(if session.state == SessionState::StopUnconfirmed {
        Exit::StopUnconfirmed
    } else {
        Exit::Done
    })
}
