//! `gpuctl daemon [install|status]`.

use anyhow::Context;

use super::runtime;
use crate::cli::{DaemonAction, DaemonArgs};
use crate::daemon::{self, unit, DaemonOptions};
use crate::exit::Exit;

pub fn run(args: DaemonArgs) -> anyhow::Result<Exit> {
    let home = crate::home::gpuctl_home()?;
    match args.action {
        None => runtime()?.block_on(daemon::run(
            home,
            DaemonOptions {
                schedule: args.schedule,
                parallel_stops: args.parallel_stops,
                log_sweeps: args.log_sweeps,
            },
        )),
        Some(DaemonAction::Status) => {
            let st = daemon::status(&home)?;
            if crate::output::json() {
                crate::output::printer().doc(&st)?;
            } else if st.running {
                crate::out!(
                    "a gpuctl daemon runs for {} (pid {}), store {}; it holds {} live session(s)",
                    st.home,
                    st.pid
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "unknown".into()),
                    st.store.as_deref().unwrap_or("unreadable"),
                    st.sessions.len()
                );
                for s in &st.sessions {
                    crate::out!(
                        "  {}  {}  deadline {}  owner {}",
                        s.id,
                        s.state,
                        s.deadline.format("%Y-%m-%d %H:%M:%S UTC"),
                        s.owner.as_deref().unwrap_or("-")
                    );
                }
            } else {
                crate::out!(
                    "no gpuctl daemon runs for {}: start one with `gpuctl daemon` (or install it with `gpuctl daemon install`)",
                    st.home
                );
            }
            Ok(if st.running { Exit::Done } else { Exit::Failed })
        }
        Some(DaemonAction::Install { force, print }) => {
            let exe = std::env::current_exe().context("cannot find the gpuctl executable")?;
            let home = std::path::absolute(&home).unwrap_or(home);
            let text = unit::unit_text(&exe, &home);
            if print {
                crate::output::printer().out_text(&text);
                return Ok(Exit::Done);
            }
            let dir = unit::unit_dir()?;
            let path = dir.join(unit::UNIT_NAME);
            if path.exists() && !force {
                crate::error_line!(
                    "{} exists; pass --force to overwrite it (or --print to see the new one)",
                    path.display()
                );
                return Ok(Exit::Refused);
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            crate::out!("{}", path.display());
            crate::note!(
                "wrote {}; start it now and at every login with:\n    systemctl --user daemon-reload && systemctl --user enable --now {}\n(on a server where you log out, also: loginctl enable-linger $USER)",
                path.display(),
                unit::UNIT_NAME
            );
            Ok(Exit::Done)
        }
    }
}
