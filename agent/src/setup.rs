//! `[setup]` on the host: a Python virtual environment with the plan's pinned packages and
//! commands, built once per distinct setup and reused by later sessions (a marker file
//! written last says it is complete). Runs after the watchdog is armed: a stop during
//! setup kills what it is running (its own process group) and ends the session.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gpuctl_protocol::SetupConfig;

/// Written last into a finished environment: its key, then what pip froze.
const READY: &str = ".gpuctl-ready";

/// Where the environment of `setup` lives for an agent whose folder is `agent_dir`.
pub fn venv_dir(agent_dir: &Path, setup: &SetupConfig) -> PathBuf {
    crate::config::shared_dir(agent_dir, "venvs").join(&setup.key)
}

/// What the session runs with after setup: the environment's folder.
pub struct Ready {
    pub venv: PathBuf,
    /// `pip freeze` of the environment (for environment_report.txt).
    pub versions: String,
}

/// Build (or reuse) the environment; output goes to `log_path`. `stop` is set when the
/// session stops: the step running is killed and setup fails.
pub fn run(
    setup: &SetupConfig,
    agent_dir: &Path,
    log_path: &Path,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Ready> {
    let venv = venv_dir(agent_dir, setup);
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    if let Ok(marker) = std::fs::read_to_string(venv.join(READY)) {
        if marker.lines().next() == Some(setup.key.as_str()) {
            tracing::info!(
                "setup: reusing {} (the same [setup] was built by an earlier session, key {})",
                venv.display(),
                setup.key
            );
            let _ = writeln!(out, "reused {} (key {})", venv.display(), setup.key);
            let versions = marker.lines().skip(1).collect::<Vec<_>>().join("\n");
            return Ok(Ready { venv, versions });
        }
    }
    // An environment left half-built by an earlier session is built again.
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("removing the unfinished {}", venv.display()))?;
    }
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let started = Instant::now();
    let python = find_python(setup.python.as_deref())?;
    tracing::info!("setup: creating {} with {python}", venv.display());
    step(
        &mut out,
        "venv",
        Command::new(&python).arg("-m").arg("venv").arg(&venv),
        &stop,
    )?;
    let bin = venv.join("bin");
    if !setup.pip.is_empty() {
        tracing::info!("setup: pip install {}", setup.pip.join(" "));
        step(
            &mut out,
            "pip install",
            Command::new(bin.join("python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                ])
                .args(&setup.pip),
            &stop,
        )?;
    }
    for (i, c) in setup.commands.iter().enumerate() {
        tracing::info!("setup: command {} of {}: {c}", i + 1, setup.commands.len());
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(c).current_dir(agent_dir);
        activate(&mut cmd, &venv);
        step(&mut out, &format!("command {}", i + 1), &mut cmd, &stop)?;
    }
    let freeze = Command::new(bin.join("python"))
        .args(["-m", "pip", "freeze", "--disable-pip-version-check"])
        .output()
        .context("pip freeze")?;
    let versions = String::from_utf8_lossy(&freeze.stdout).trim().to_string();
    std::fs::write(venv.join(READY), format!("{}\n{versions}\n", setup.key))
        .context("marking the environment complete")?;
    tracing::info!(
        "setup: done in {} s ({} packages)",
        started.elapsed().as_secs(),
        versions.lines().count()
    );
    Ok(Ready { venv, versions })
}

/// PATH with the environment's `bin` first.
fn path_with(venv: &Path) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{}:{path}", venv.join("bin").display())
}

/// PATH and VIRTUAL_ENV of the environment, for one setup command.
fn activate(cmd: &mut Command, venv: &Path) {
    cmd.env("PATH", path_with(venv)).env("VIRTUAL_ENV", venv);
}

/// The same for this process, so that the supervised server it starts (and anything that
/// starts) runs in the environment.
pub fn activate_here(venv: &Path) {
    std::env::set_var("PATH", path_with(venv));
    std::env::set_var("VIRTUAL_ENV", venv);
}

/// `python3.X` on PATH, else `python3` when it is that version (or any, when none asked).
fn find_python(version: Option<&str>) -> anyhow::Result<String> {
    let version_of = |bin: &str| -> Option<String> {
        let out = Command::new(bin)
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match version {
        Some(v) => {
            let named = format!("python{v}");
            if version_of(&named).as_deref() == Some(v) {
                return Ok(named);
            }
            match version_of("python3") {
                Some(found) if found == v => Ok("python3".into()),
                Some(found) => bail!(
                    "setup.python = \"{v}\", but the host has neither python{v} nor a python3 of that version (python3 is {found}); install it on the host, or set setup.python = \"{found}\""
                ),
                None => bail!("setup.python = \"{v}\", but the host has no python{v} or python3"),
            }
        }
        None => version_of("python3")
            .map(|_| "python3".to_string())
            .context("[setup] needs Python, and the host has no python3"),
    }
}

/// Run one step in its own process group, its output appended to the setup log; killed
/// when the session stops.
fn step(
    out: &mut std::fs::File,
    what: &str,
    cmd: &mut Command,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let _ = writeln!(out, "--- {what}");
    let log = out.try_clone().context("setup log")?;
    let err = out.try_clone().context("setup log")?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("setup {what}: cannot start it"))?;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("setup {what} failed ({status}); setup.log in the bundle has its output");
        }
        if stop.load(Ordering::SeqCst) {
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            bail!("setup {what} was interrupted by the stop");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
