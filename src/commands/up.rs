//! `gpuctl up PLAN [--detach]`.

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::runtime;
use crate::cli::UpArgs;
use crate::exit::Exit;
use crate::session::up::{up, UpOptions};

/// How long `--detach` waits for the background `up` to record its session.
const DETACH_WAIT: Duration = Duration::from_secs(60);

pub fn run(args: UpArgs) -> anyhow::Result<Exit> {
    if args.detach {
        return detach(args);
    }
    let opts = UpOptions {
        plan_path: args.plan,
        agent_bin: args.agent_bin,
        allow_public_ports: args.allow_public_ports,
        accept_new_host_key: args.accept_new_host_key,
        fallback: args.fallback,
        laptop_only: args.laptop_only,
    };
    runtime()?.block_on(up(opts))
}

/// Start a detached process (own process group, no terminal) logging to `log`.
fn spawn_detached(args: &[String], log: &Path) -> anyhow::Result<std::process::Child> {
    let exe = std::env::current_exe().context("cannot find the gpuctl executable")?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    use std::os::unix::process::CommandExt;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .context("cannot start gpuctl in the background")
}

/// `up --detach`: the session runs in a background `up` (the second layer), and a daemon
/// (the third) is started if none runs, so that the stop never depends on this terminal.
fn detach(args: UpArgs) -> anyhow::Result<Exit> {
    let home = crate::home::gpuctl_home()?;
    let run_dir = home.join("run");
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let log = run_dir.join(format!(
        "up-{}-{}.log",
        chrono::Utc::now().format("%Y%m%d-%H%M%S"),
        std::process::id()
    ));
    let mut argv = vec![
        "up".to_string(),
        args.plan.display().to_string(),
        "--json".into(),
    ];
    if let Some(bin) = &args.agent_bin {
        argv.push("--agent-bin".into());
        argv.push(bin.display().to_string());
    }
    if args.allow_public_ports {
        argv.push("--allow-public-ports".into());
    }
    if args.accept_new_host_key {
        argv.push("--accept-new-host-key".into());
    }
    if args.fallback {
        argv.push("--fallback".into());
    }
    if args.laptop_only {
        argv.push("--laptop-only".into());
    }
    let mut child = spawn_detached(&argv, &log)?;
    let started = Instant::now();
    let session = loop {
        if let Some(found) = session_event(&log) {
            break found;
        }
        if let Some(status) = child.try_wait()? {
            // Refused or failed before the session was recorded: show why, keep its code.
            let mut text = String::new();
            let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
            crate::output::printer().note_text(&text);
            return Ok(match status.code() {
                Some(2) => Exit::Refused,
                Some(4) => Exit::StopUnconfirmed,
                _ => Exit::Failed,
            });
        }
        if started.elapsed() > DETACH_WAIT {
            crate::error_line!(
                "the background gpuctl up (pid {}) recorded no session within {} s; see {}",
                child.id(),
                DETACH_WAIT.as_secs(),
                log.display()
            );
            return Ok(Exit::Failed);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let id = session["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let daemon_pid = ensure_daemon(&home)?;
    if crate::output::json() {
        crate::out!(
            "{}",
            serde_json::json!({
                "session_id": id,
                "deadline": session["deadline"],
                "bundle": session["bundle"],
                "up_pid": child.id(),
                "log": log,
                "daemon_pid": daemon_pid,
            })
        );
    } else {
        crate::out!("{id}");
        crate::note!(
            "session {id} runs in the background (gpuctl up pid {}, log {});\nthe daemon{} stops it at {} even if that process dies.\n`gpuctl status {id}` follows it; `gpuctl down {id}` stops it now.",
            child.id(),
            log.display(),
            daemon_pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            session["deadline"].as_str().unwrap_or("its deadline"),
        );
    }
    Ok(Exit::Done)
}

/// The `session` event of a background `up`'s JSON Lines log.
fn session_event(log: &Path) -> Option<serde_json::Value> {
    let f = std::fs::File::open(log).ok()?;
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| v["event"] == "session")
}

/// Start `gpuctl daemon` in the background unless one runs; its pid.
fn ensure_daemon(home: &Path) -> anyhow::Result<Option<u32>> {
    let st = crate::daemon::status(home)?;
    if st.running {
        return Ok(st.pid);
    }
    let log = home.join("daemon.log");
    spawn_detached(&["daemon".to_string()], &log)?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let st = crate::daemon::status(home)?;
        if st.running && st.pid.is_some() {
            crate::note!(
                "started gpuctl daemon (pid {}, log {})",
                st.pid.unwrap_or_default(),
                log.display()
            );
            return Ok(st.pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::warning!(
        "the daemon did not start (see {}); the session's own deadline still stops its agent",
        log.display()
    );
    Ok(None)
}
