//! `gpuctl logs [ID] [-f] [--server]`: the agent's log, from where it is now: the run
//! folder of a local session, the host of a remote one (over SSH, the host key pinned as
//! the session recorded it), or the evidence bundle once the session has ended.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use gpuctl_protocol::evidence_files;

use super::open_db;
use crate::cli::LogsArgs;
use crate::db::{Db, SessionRecord};
use crate::exit::Exit;
use crate::session::{AgentHandle, RemoteAgent};
use crate::ssh::sh_quote;

/// How long `-f` waits between two reads.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Where a session's agent log is now.
enum Source {
    File(PathBuf),
    Host {
        ssh: crate::ssh::SshEndpoint,
        path: String,
    },
    Nowhere(String),
}

fn source(s: &SessionRecord) -> Source {
    let bundle = || {
        s.evidence_dir
            .as_ref()
            .map(|d| PathBuf::from(d).join(evidence_files::AGENT_LOG))
    };
    if s.state.is_final() || s.state == crate::session::SessionState::StopUnconfirmed {
        return match bundle() {
            Some(p) => Source::File(p),
            None => Source::Nowhere("the session has no evidence bundle".into()),
        };
    }
    match s.handle.as_deref().map(AgentHandle::from_json) {
        Some(Ok(AgentHandle::Local { work, .. })) => Source::File(work.join("agent.log")),
        Some(Ok(AgentHandle::Remote { dir, ssh, .. })) => Source::Host {
            ssh,
            path: format!("{dir}/agent.log"),
        },
        Some(Err(e)) => Source::Nowhere(format!("{e:#}")),
        None => Source::Nowhere(format!(
            "no agent has been started yet (the session is {})",
            s.state
        )),
    }
}

/// The whole log as it is now.
async fn read(
    src: &Source,
    host: &mut Option<crate::session::remote_host::Connected>,
) -> anyhow::Result<String> {
    match src {
        Source::File(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        }
        Source::Host { ssh, path } => {
            if host.is_none() {
                *host = Some(RemoteAgent::connect(ssh).await?);
            }
            let connected = host.as_ref().context("no connection")?;
            let out = connected.exec(&format!("cat {}", sh_quote(path))).await?;
            Ok(out)
        }
        Source::Nowhere(why) => anyhow::bail!("{why}"),
    }
}

/// Print the whole lines of `text` after `from` (as JSON Lines events `log` with
/// `--json`); returns where the next read starts.
fn print_new(text: &str, from: usize, server_only: bool, session: &str) -> usize {
    let new = text.get(from..).unwrap_or("");
    // Whole lines only; a line still being written waits for the next read.
    let end = new.rfind('\n').map(|i| i + 1).unwrap_or(0);
    for line in new[..end].lines() {
        if !server_only || line.contains("[server ") {
            if crate::output::json() {
                crate::output::printer().event(
                    "log",
                    Some(session),
                    serde_json::json!({ "line": line }),
                );
            } else {
                crate::out!("{line}");
            }
        }
    }
    from + end
}

pub fn run(args: LogsArgs) -> anyhow::Result<Exit> {
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
    super::runtime()?.block_on(show(&db, session, args.follow, args.server))
}

async fn show(db: &Db, session: SessionRecord, follow: bool, server: bool) -> anyhow::Result<Exit> {
    let mut src = source(&session);
    let mut host = None;
    let mut printed = 0;
    // Bounded: a follow ends when the session is stopped, or at its deadline plus an hour.
    let give_up = session.deadline + chrono::Duration::hours(1);
    loop {
        match read(&src, &mut host).await {
            Ok(text) => printed = print_new(&text, printed, server, &session.id),
            Err(e) if !follow => {
                crate::error_line!("the log of session {}: {e:#}", session.id);
                return Ok(Exit::Failed);
            }
            Err(_) => {}
        }
        if !follow {
            return Ok(Exit::Done);
        }
        let now = db.get_session(&session.id)?;
        if now.state.is_final() || chrono::Utc::now() > give_up {
            // The last lines, from wherever the log ended up.
            if let Source::File(p) = source(&now) {
                if let Ok(text) = std::fs::read_to_string(p) {
                    print_new(&text, printed, server, &now.id);
                }
            }
            crate::note!("session {} is {}", now.id, now.state);
            return Ok(Exit::Done);
        }
        src = match (&src, source(&now)) {
            (Source::Nowhere(_), next) => next,
            (_, _) => src,
        };
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}
