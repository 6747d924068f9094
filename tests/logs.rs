//! `gpuctl logs`: the agent's log while a local session serves (from its run folder),
//! followed with -f until the stop, and from the evidence bundle after it.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{free_port, local_plan, Ctx};

#[test]
fn logs_show_the_agent_while_serving_follow_to_the_stop_and_read_the_bundle_after() {
    let ctx = Ctx::new();
    let at = chrono::Utc::now() + chrono::Duration::seconds(25);
    let plan = local_plan(
        &ctx,
        free_port(),
        &format!(
            "hard_stop_time = \"{}\"",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    );
    let (mut up, session) = common::up_serving(&ctx, &plan);
    let id = session["id"].as_str().expect("id").to_string();

    let now = ctx.run(["logs", &id]);
    assert_eq!(now.code, 0, "{}", now.stderr);
    assert!(
        now.stdout.contains(&format!("session={id}")),
        "{}",
        now.stdout
    );
    let server_only = ctx.run(["logs", &id, "--server"]);
    assert_eq!(server_only.code, 0);
    assert!(
        server_only.stdout.trim().is_empty(),
        "candle runs no server: {}",
        server_only.stdout
    );

    let mut follow = ctx
        .command()
        .args(["logs", &id, "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("logs -f");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = follow.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "logs -f did not end after the stop"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success());
    let mut out = String::new();
    follow
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    assert!(out.contains("deadline reached"), "{out}");
    assert_eq!(
        out.matches(&format!("session={id}")).count(),
        1,
        "every line once: {out}"
    );
    let _ = up.wait();

    let after = ctx.run(["logs", &id]);
    assert_eq!(after.code, 0, "{}", after.stderr);
    assert!(
        after.stdout.contains("deadline reached"),
        "{}",
        after.stdout
    );
}

#[test]
fn logs_of_a_session_over_ssh_come_from_the_host_with_its_pinned_key() {
    let ctx = Ctx::new();
    let sshd = common::sshd::Sshd::start();
    let plan = common::sshd::ssh_plan(
        &ctx,
        &sshd,
        "ssh-logs",
        (free_port(), free_port()),
        "max_duration = \"10m\"\ngrace = \"5s\"\nafter_eval = false",
    );
    let (mut up, session) = common::up_serving(&ctx, &plan);
    let id = session["id"].as_str().expect("id").to_string();
    let now = ctx.run(["logs", &id]);
    assert_eq!(now.code, 0, "{}", now.stderr);
    assert!(
        now.stdout.contains(&format!("session={id}")),
        "{}",
        now.stdout
    );
    let down = ctx.run(["down", &id]);
    assert_eq!(down.code, 0, "{}{}", down.stdout, down.stderr);
    let _ = up.wait();
    let after = ctx.run(["logs", &id]);
    assert_eq!(after.code, 0, "{}", after.stderr);
    assert!(
        after.stdout.contains(&format!("session={id}")),
        "{}",
        after.stdout
    );
}
