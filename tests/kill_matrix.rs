//! The kill matrix on the routes without a cloud: SIGINT and SIGKILL to `up` at every
//! step of a real local session and of a real SSH session (against the test's sshd), then
//! `gpuctl down` doing what the daemon would. The invariant, checked on the machine itself
//! rather than in gpuctl's output: a session recorded `stopped` or `failed` has no process
//! left (none whose working folder or command line names the session) and its port is
//! closed; anything else is `stop_unconfirmed`, which `ls` shows first.
//! (The cloud route's matrix, against the emulator's ledger, is in fail_closed.rs.)

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::sshd::{ssh_plan, Sshd};
use common::{free_port, local_plan, port_refuses, Ctx};
use nix::sys::signal::Signal;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Processes whose working folder or command line names the session.
fn processes_of(id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(e.path().join("cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let state = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // A zombie holds nothing; its parent reaps it.
        let zombie = state
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if !zombie && (cmdline.contains(id) || cwd.contains(id)) {
            out.push(format!("{pid}: {cmdline} (cwd {cwd})"));
        }
    }
    out
}

/// The steps a whole session goes through, from one run that is not interrupted.
fn steps_of(ctx: &Ctx, plan: &Path) -> Vec<String> {
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), plan.as_os_str()]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let mut steps: Vec<String> = Vec::new();
    for line in run.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        if v["event"] == "step" {
            let s = v["step"].as_str().unwrap_or_default().to_string();
            if !steps.contains(&s) {
                steps.push(s);
            }
        }
    }
    for must in ["deploy", "first_run", "eval", "stop"] {
        assert!(steps.iter().any(|s| s == must), "{must} in {steps:?}");
    }
    steps
}

/// `up` signalled when it announces `step`; the session id (empty if it never came).
fn up_killed_at(ctx: &Ctx, plan: &Path, step: &str, signal: Signal) -> (String, bool) {
    let mut cmd = ctx.command();
    cmd.args(["up", "--json"])
        .arg(plan)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut up = Kill(cmd.spawn().expect("up"));
    let pid = nix::unistd::Pid::from_raw(up.0.id() as i32);
    let stdout = up.0.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut id = String::new();
    let mut signalled = false;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["event"] == "session" {
            id = v["session_id"].as_str().unwrap_or_default().to_string();
        }
        if v["event"] == "step" && v["step"] == step {
            let _ = nix::sys::signal::kill(pid, signal);
            signalled = true;
            break;
        }
    }
    let drain = std::thread::spawn(move || lines.count());
    let _ = up.0.wait();
    let _ = drain.join();
    (id, signalled)
}

/// The invariant for one session, after its `up` was killed and `down` ran.
fn assert_stopped_means_gone(ctx: &Ctx, id: &str, port: u16, what: &str) {
    let d = ctx.run(["down", id, "--json"]);
    assert!(
        d.code == 0 || d.code == 4,
        "{what}: down {}\n{}",
        d.stdout,
        d.stderr
    );
    let status = ctx.run(["status", id, "--json"]).json();
    let state = status["session"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ["stopped", "failed", "stop_unconfirmed"].contains(&state.as_str()),
        "{what}: after down the session is {state}"
    );
    if state == "stop_unconfirmed" {
        return;
    }
    // A process may take a moment to be reaped after its stop was proven.
    let start = Instant::now();
    loop {
        let left = processes_of(id);
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: session {id} is {state} but these live on: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(port_refuses(port), "{what}: port {port} still answers");
}

fn matrix(ctx: &Ctx, plan_for: impl Fn(u16) -> std::path::PathBuf) {
    let steps = steps_of(ctx, &plan_for(free_port()));
    eprintln!("kill matrix over {steps:?}");
    for step in &steps {
        for signal in [Signal::SIGINT, Signal::SIGKILL] {
            let port = free_port();
            let plan = plan_for(port);
            let (id, signalled) = up_killed_at(ctx, &plan, step, signal);
            let what = format!("{step} {signal}");
            assert!(signalled, "{what}: the step never came");
            assert!(!id.is_empty(), "{what}: no session id");
            assert_stopped_means_gone(ctx, &id, port, &what);
        }
    }
}

#[test]
fn kill_matrix_every_step_of_a_local_session() {
    let ctx = Ctx::new();
    matrix(&ctx, |port| {
        let p = local_plan(&ctx, port, "after_eval = true");
        let named = ctx.path(&format!("local-{port}.toml"));
        std::fs::rename(&p, &named).expect("rename");
        named
    });
}

#[test]
fn kill_matrix_every_step_of_an_ssh_session() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    matrix(&ctx, |port| {
        ssh_plan(
            &ctx,
            &sshd,
            "ssh-kill-matrix",
            (port, free_port()),
            "max_duration = \"10m\"\ngrace = \"5s\"\nafter_eval = true",
        )
    });
}
