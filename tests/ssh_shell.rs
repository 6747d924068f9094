//! `gpuctl ssh`: one command (or a shell) on a live session's host through OpenSSH, with
//! the host key the session pinned; recorded in the session; refused once it has ended.

mod common;

use common::sshd::{ssh_plan, Sshd};
use common::{free_port, Ctx};

#[test]
fn ssh_runs_a_command_on_the_live_sessions_host_and_is_refused_after_the_stop() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let plan = ssh_plan(
        &ctx,
        &sshd,
        "ssh-shell",
        (free_port(), free_port()),
        "max_duration = \"45s\"\ngrace = \"3s\"\nafter_eval = false",
    );
    let (mut up, session) = common::up_serving(&ctx, &plan);
    let id = session["id"].as_str().expect("id").to_string();

    // One command, in the session's folder on the host (its exit code is ssh's).
    let r = ctx.run(["ssh", &id, "--", "cat", "agent.json"]);
    assert_eq!(
        r.code,
        0,
        "{}\n{}\nsshd:\n{}",
        r.stdout,
        r.stderr,
        sshd.log()
    );
    assert!(
        r.stdout.contains(&id),
        "the agent's config on the host: {}",
        r.stdout
    );
    assert!(r.stderr.contains(&sshd.host_fingerprint), "{}", r.stderr);
    let r = ctx.run(["ssh", &id, "--", "exit 7"]);
    assert_eq!(r.code, 7, "the remote exit code comes back: {}", r.stderr);
    // The pinned key file OpenSSH was given is gone afterwards.
    assert!(!ctx
        .home()
        .join("run")
        .join(&id)
        .join("ssh_known_hosts")
        .exists());
    let status = ctx.run(["status", &id, "--json"]).json();
    let recorded = status["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "ssh")
        .count();
    assert_eq!(recorded, 2, "each use is recorded: {status:#}");

    let _ = up.wait();
    let after = ctx.run(["ssh", &id, "--", "true"]);
    assert_eq!(after.code, 2, "{}", after.stderr);
    assert!(
        after.stderr.contains("no longer the session's"),
        "{}",
        after.stderr
    );
}

#[test]
fn ssh_to_a_local_session_says_there_is_no_host() {
    let ctx = Ctx::new();
    let plan = common::local_plan(&ctx, free_port(), "after_eval = false");
    let (mut up, session) = common::up_serving(&ctx, &plan);
    let id = session["id"].as_str().expect("id").to_string();
    let r = ctx.run(["ssh", &id]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("runs on this machine"), "{}", r.stderr);
    let down = ctx.run(["down", &id]);
    assert_eq!(down.code, 0, "{}", down.stderr);
    let _ = up.wait();
}
