//! Clock-safe deadlines: a host whose wall clock is 5 minutes slow, and one 5 minutes fast
//! (libfaketime preloaded into the test sshd's sessions; the monotonic clock untouched).
//! With `up` SIGKILLed while serving, the agent alone must stop serving within 1.5 s of
//! the true deadline, and the offset measured at deploy is in environment_report.txt.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::sshd::{ssh_plan, Sshd};
use common::{free_port, port_refuses, Ctx};

fn libfaketime() -> String {
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ] {
        let p = format!("{dir}/faketime/libfaketimeMT.so.1");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!(
        "libfaketime is missing: scripts/install-test-deps.sh installs it (Debian's libfaketime)"
    );
}

fn stops_on_time_with_the_host_clock_off_by(faketime: &str, expected_offset_ms: i64) {
    let ctx = Ctx::new();
    let sshd = Sshd::start_with_env(&format!(
        "LD_PRELOAD={} FAKETIME={faketime} FAKETIME_DONT_FAKE_MONOTONIC=1",
        libfaketime()
    ));
    let (local, remote) = (free_port(), free_port());
    let plan = ssh_plan(
        &ctx,
        &sshd,
        "clock-off",
        (local, remote),
        "max_duration = \"35s\"\ngrace = \"3s\"\nafter_eval = false",
    );
    let (mut up, session) = common::up_serving(&ctx, &plan);
    // The laptop goes away: only the agent's own clocks decide now.
    let _ = up.kill();
    let _ = up.wait();
    let id = session["id"].as_str().expect("id").to_string();
    let status = ctx.run(["status", &id, "--json"]).json();
    let deadline: DateTime<Utc> = status["session"]["deadline"]
        .as_str()
        .expect("deadline")
        .parse()
        .expect("rfc3339");
    assert!(
        !port_refuses(remote),
        "the agent serves before its deadline"
    );
    let refused_at = loop {
        if port_refuses(remote) {
            break Utc::now();
        }
        assert!(
            Utc::now() < deadline + chrono::Duration::seconds(20),
            "FAKETIME={faketime}: the agent still serves 20 s after the true deadline"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let late_ms = (refused_at - deadline).num_milliseconds();
    eprintln!(
        "FAKETIME={faketime}: the agent stopped serving {late_ms} ms after the true deadline"
    );
    assert!(
        late_ms.abs() < 1500,
        "FAKETIME={faketime}: stopped {late_ms} ms from the true deadline"
    );
    let report = std::fs::read_to_string(
        sshd.remote_home()
            .join(".gpuctl/sessions")
            .join(&id)
            .join("evidence/environment_report.txt"),
    )
    .expect("environment_report.txt on the host");
    let offset: i64 = report
        .lines()
        .find_map(|l| l.strip_prefix("clock offset: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no clock offset in:\n{report}"));
    assert!(
        (offset - expected_offset_ms).abs() < 2000,
        "measured {offset} ms, expected about {expected_offset_ms}"
    );
    // Cleaned up by a later controller, as always.
    let _ = ctx.run(["down", &id]);
}

#[test]
fn a_host_clock_five_minutes_slow_still_stops_at_the_true_deadline() {
    stops_on_time_with_the_host_clock_off_by("-5m", -300_000);
}

#[test]
fn a_host_clock_five_minutes_fast_still_stops_at_the_true_deadline() {
    stops_on_time_with_the_host_clock_off_by("+5m", 300_000);
}
