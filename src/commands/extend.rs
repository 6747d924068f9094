//! `gpuctl extend ID --by 30m | --to TIME`: move a serving session's hard stop later.
//!
//! Bounded like the start: the new deadline must keep the session within its plan's
//! `budget.max_total_usd` at the price it launched at, and within the team policy's
//! `max_duration`. The agent's watchdog takes it first (and says so in a file gpuctl reads
//! back); only then does the database move, so `up` and the daemon follow. If the agent
//! cannot be told, nothing moves and the session stops when it was going to.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use gpuctl_protocol::{DEADLINE_APPLIED, DEADLINE_REQUEST};

use super::{open_db, runtime};
use crate::cli::ExtendArgs;
use crate::db::{DbError, SessionRecord};
use crate::exit::Exit;
use crate::session::{AgentHandle, RemoteAgent, SessionState};
use crate::ssh::sh_quote;

/// How long the agent has to acknowledge the new deadline (it looks every second).
const ACK_WAIT: Duration = Duration::from_secs(6);
/// Too close to the stop to move it: the agent may already be stopping.
const TOO_LATE: chrono::Duration = chrono::Duration::seconds(3);

pub fn run(args: ExtendArgs) -> anyhow::Result<Exit> {
    runtime()?.block_on(extend(args))
}

fn refuse(json: bool, id: &str, why: &str) -> Exit {
    if json {
        crate::out!(
            "{}",
            serde_json::json!({ "session_id": id, "extended": false, "error": why })
        );
    }
    crate::error_line!("{why}; the deadline is unchanged");
    Exit::Refused
}

async fn extend(args: ExtendArgs) -> anyhow::Result<Exit> {
    let db = open_db()?;
    let s = match db.get_session(&args.id) {
        Ok(s) => s,
        Err(e @ (DbError::NotFound(_) | DbError::Ambiguous(_))) => {
            return Ok(refuse(
                crate::output::json(),
                &args.id,
                &format!("{e} (`gpuctl ls` lists the sessions)"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let now = Utc::now();
    let old = s.deadline;
    let new = match (&args.by, &args.to) {
        (Some(by), _) => old + chrono::Duration::from_std(*by).unwrap_or_default(),
        (None, Some(to)) => match DateTime::parse_from_rfc3339(to) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => {
                return Ok(refuse(
                    crate::output::json(),
                    &s.id,
                    &format!(
                        "--to {to:?} is not an RFC 3339 time; write it like 2026-12-02T18:00:00Z"
                    ),
                ))
            }
        },
        (None, None) => {
            return Ok(refuse(
                crate::output::json(),
                &s.id,
                "say how far: --by 30m or --to 2026-12-02T18:00:00Z",
            ))
        }
    };
    if let Err(why) = allowed(&s, new, now) {
        return Ok(refuse(crate::output::json(), &s.id, &why));
    }
    // The agent first: if it cannot take the new deadline, nothing else moves.
    if let Err(e) = tell_agent(&s, new).await {
        return Ok(refuse(
            crate::output::json(),
            &s.id,
            &format!(
                "the agent did not take the new deadline ({e:#}); the session still stops at {}",
                old.format("%H:%M:%S UTC")
            ),
        ));
    }
    let by = who();
    db.record_deadline(&s.id, new, "extended")?;
    db.add_event(
        &s.id,
        "extend",
        &format!(
            "deadline extended by {by}: {} -> {}",
            old.to_rfc3339(),
            new.to_rfc3339()
        ),
        Utc::now(),
    )?;
    if crate::output::json() {
        crate::out!(
            "{}",
            serde_json::json!({ "session_id": s.id, "extended": true, "old_deadline": old, "deadline": new, "by": by })
        );
    } else {
        crate::out!(
            "{}: the hard stop moves from {} to {} (the agent, `up` and the daemon follow it)",
            s.id,
            old.format("%Y-%m-%d %H:%M:%S UTC"),
            new.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    Ok(Exit::Done)
}

/// Who asked, for the event: user, host and process (never a secret).
fn who() -> String {
    let user = crate::settings::settings()
        .user
        .clone()
        .unwrap_or_else(|| "unknown".into());
    format!(
        "{user}@{} (gpuctl extend, pid {})",
        crate::procs::hostname(),
        std::process::id()
    )
}

/// The rules a new deadline must keep, each refusal naming the limit and the latest
/// deadline it allows.
fn allowed(s: &SessionRecord, new: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), String> {
    if s.state != SessionState::Serving {
        return Err(match s.state {
            st if st.is_final() => format!(
                "session {} has ended ({st}); start a new one with `gpuctl up`",
                s.id
            ),
            st => format!(
                "session {} is {st}: only a serving session can be extended",
                s.id
            ),
        });
    }
    if s.stop_requested_at.is_some() {
        return Err(format!("session {} is being stopped (`gpuctl down`)", s.id));
    }
    if new <= s.deadline {
        return Err(format!(
            "{} is not after the current hard stop {}: extend only moves it later (`gpuctl down` stops now)",
            new.to_rfc3339(),
            s.deadline.to_rfc3339()
        ));
    }
    if s.deadline - now < TOO_LATE {
        return Err(format!(
            "the hard stop ({}) is under {} s away: the stop has begun",
            s.deadline.format("%H:%M:%S UTC"),
            TOO_LATE.num_seconds()
        ));
    }
    let start = s.launched_at.unwrap_or(s.created_at);
    if let (Some(max), Some(price)) = (s.max_total_usd, s.price_usd_per_hour) {
        if price > 0.0 {
            let billing = gpuctl_providers::billing_of_name(&s.provider);
            let cost = |until: DateTime<Utc>| {
                price
                    * billing
                        .billed((until - start).to_std().unwrap_or_default())
                        .as_secs_f64()
                    / 3600.0
            };
            if cost(new) > max + 1e-9 {
                let latest = start
                    + chrono::Duration::milliseconds((max / price * 3_600_000.0).floor() as i64);
                return Err(format!(
                    "running to {} would cost ${:.2} at ${price:.2}/h, past budget.max_total_usd ${max:.2}; the latest the budget allows is {}",
                    new.format("%H:%M:%S UTC"),
                    cost(new),
                    latest.format("%H:%M:%S UTC")
                ));
            }
        }
    }
    if let Some(plan_path) = &s.plan_path {
        let policy = crate::policy::for_plan(std::path::Path::new(plan_path))?;
        let max = policy
            .as_ref()
            .and_then(|p| p.rules.max_duration.as_deref())
            .and_then(|d| humantime::parse_duration(d).ok());
        if let Some(max) = max {
            let total = (new - s.created_at).to_std().unwrap_or_default();
            if total > max {
                return Err(format!(
                    "the session would run {}, past the team policy's rules.max_duration {} ({}); the latest it allows is {}",
                    humantime::format_duration(Duration::from_secs(total.as_secs())),
                    humantime::format_duration(max),
                    crate::policy::find(std::path::Path::new(plan_path))
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    (s.created_at + chrono::Duration::from_std(max).unwrap_or_default())
                        .format("%H:%M:%S UTC")
                ));
            }
        }
    }
    Ok(())
}

/// Write the new deadline where the agent looks for it, and wait for its answer.
async fn tell_agent(s: &SessionRecord, new: DateTime<Utc>) -> anyhow::Result<()> {
    let handle = s
        .handle
        .as_deref()
        .context("the session has no agent yet")
        .and_then(AgentHandle::from_json)?;
    let want = new.to_rfc3339();
    let started = std::time::Instant::now();
    match handle {
        AgentHandle::Local { config, .. } => {
            let dir = config
                .parent()
                .context("the agent's folder is not recorded")?
                .to_path_buf();
            let tmp = dir.join(format!("{DEADLINE_REQUEST}.tmp"));
            std::fs::write(&tmp, &want).context("writing the deadline request")?;
            std::fs::rename(&tmp, dir.join(DEADLINE_REQUEST))
                .context("writing the deadline request")?;
            let applied = dir.join(DEADLINE_APPLIED);
            while started.elapsed() < ACK_WAIT {
                if acknowledged(&std::fs::read_to_string(&applied).unwrap_or_default(), new) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = std::fs::remove_file(dir.join(DEADLINE_REQUEST));
        }
        AgentHandle::Remote { dir, ssh, .. } => {
            let host = RemoteAgent::connect(&ssh).await?;
            let (req, applied) = (
                format!("{dir}/{DEADLINE_REQUEST}"),
                format!("{dir}/{DEADLINE_APPLIED}"),
            );
            host.exec(&format!(
                "printf '%s' {} > {}.tmp && mv -f {}.tmp {}",
                sh_quote(&want),
                sh_quote(&req),
                sh_quote(&req),
                sh_quote(&req)
            ))
            .await?;
            while started.elapsed() < ACK_WAIT {
                let seen = host
                    .exec(&format!("cat {} 2>/dev/null || true", sh_quote(&applied)))
                    .await
                    .unwrap_or_default();
                if acknowledged(&seen, new) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let _ = host.exec(&format!("rm -f {}", sh_quote(&req))).await;
        }
    }
    anyhow::bail!(
        "no answer from the agent within {} s (it may be stopping, or be an older agent)",
        ACK_WAIT.as_secs()
    )
}

fn acknowledged(text: &str, new: DateTime<Utc>) -> bool {
    DateTime::parse_from_rfc3339(text.trim()).is_ok_and(|t| t.with_timezone(&Utc) == new)
}
