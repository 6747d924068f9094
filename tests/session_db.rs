//! The session database: a real SQLite file that survives a killed writer, read by
//! `gpuctl ls` and `gpuctl status`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use chrono::{Duration, Utc};
use common::Ctx;
use gpuctl::db::{Db, DbError, NewSession};
use gpuctl::session::SessionState;

fn new_session(id: &str, name: &str) -> NewSession {
    let now = Utc::now();
    NewSession {
        id: id.into(),
        plan_name: name.into(),
        plan_sha256: "ab".repeat(32),
        plan_text: "schema = 1\n".into(),
        plan_path: Some("plans/x.toml".into()),
        plan_git_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        plan_git_dirty: Some(false),
        owner: Some("ml-platform".into()),
        route: "rented_gpu".into(),
        provider: "ssh".into(),
        instance_type: None,
        region: None,
        price_usd_per_hour: Some(0.75),
        catalog_price_usd_per_hour: None,
        hourly_budget_usd: Some(1.10),
        max_total_usd: Some(5.0),
        created_at: now,
        deadline: now + Duration::hours(2),
        stop_cause: "max_duration".into(),
        controller: None,
        evidence_dir: None,
    }
}

#[test]
fn a_killed_writer_leaves_a_sound_database() {
    let ctx = Ctx::new();
    for round in 0..3 {
        let mut child = ctx
            .command()
            .args(["debug", "write-sessions", "--count", "1000000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Let it commit a batch, then kill it in the middle of whatever it is writing.
        for _ in 0..(40 + round * 17) {
            lines
                .next()
                .expect("writer ended early")
                .expect("read line");
        }
        child.kill().expect("SIGKILL the writer");
        child.wait().expect("reap");

        let db = Db::open(&ctx.home()).expect("reopen after kill");
        assert_eq!(db.integrity_check().expect("integrity"), "ok");
        let sessions = db.list_sessions(None).expect("list");
        assert!(
            sessions.len() >= 40,
            "committed sessions were lost: {}",
            sessions.len()
        );
        for s in &sessions {
            let events = db.events(&s.id).expect("events");
            assert!(!events.is_empty(), "session {} has no event", s.id);
            // A row is either fully recorded as planned, or already moved on with its event.
            assert!(matches!(
                s.state,
                SessionState::Planned | SessionState::Stopped
            ));
            if s.state == SessionState::Stopped {
                assert!(events
                    .iter()
                    .any(|e| e.state == Some(SessionState::Stopped)));
            }
        }
        let ls = ctx.run(["ls", "--json"]);
        assert_eq!(ls.code, 0, "{}", ls.stderr);
        assert_eq!(ls.json().as_array().map(|a| a.len()), Some(sessions.len()));
    }
}

#[test]
fn ls_and_status_show_unconfirmed_stops_first() {
    let ctx = Ctx::new();
    let db = Db::open(&ctx.home()).expect("open");
    db.insert_session(&new_session("20261125-100000-aaaaaa", "done-one"))
        .expect("insert");
    db.transition(
        "20261125-100000-aaaaaa",
        SessionState::Stopped,
        "stopped; proof recorded",
        Utc::now(),
    )
    .expect("transition");
    db.insert_session(&new_session("20261125-110000-bbbbbb", "billing-maybe"))
        .expect("insert");
    db.transition(
        "20261125-110000-bbbbbb",
        SessionState::StopUnconfirmed,
        "provider has not confirmed",
        Utc::now(),
    )
    .expect("transition");
    db.insert_session(&new_session("20261125-120000-cccccc", "newest"))
        .expect("insert");
    drop(db);

    let ls = ctx.run(["ls", "--json"]);
    assert_eq!(ls.code, 0);
    let doc = ls.json();
    assert_eq!(
        doc[0]["id"], "20261125-110000-bbbbbb",
        "stop_unconfirmed comes first: {doc:#}"
    );
    assert_eq!(doc[0]["state"], "stop_unconfirmed");
    assert!(
        doc[0].get("plan_text").is_none(),
        "ls --json should not dump plan texts"
    );

    let text = ctx.run(["ls"]);
    assert!(
        text.stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("STOP_UNCONFIRMED")),
        "{}",
        text.stdout
    );
    assert!(text.stderr.contains("may still bill"));

    let status = ctx.run(["status", "20261125-110000"]);
    assert_eq!(
        status.code, 4,
        "status of an unconfirmed stop exits 4: {}",
        status.stderr
    );
    assert!(status.stdout.contains("STOP_UNCONFIRMED"));
    let status = ctx.run(["status", "--json", "20261125-100000-aaaaaa"]);
    assert_eq!(status.code, 0);
    let doc = status.json();
    assert_eq!(doc["session"]["state"], "stopped");
    assert_eq!(
        doc["session"]["plan_git_commit"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(doc["events"].as_array().map(|a| a.len()), Some(2));

    let ambiguous = ctx.run(["status", "2026"]);
    assert_eq!(ambiguous.code, 1);
    assert!(
        ambiguous.stderr.contains("several sessions"),
        "{}",
        ambiguous.stderr
    );
    let missing = ctx.run(["status", "nope"]);
    assert!(
        missing.stderr.contains("no session matches"),
        "{}",
        missing.stderr
    );
}

#[test]
fn an_empty_database_lists_nothing() {
    let ctx = Ctx::new();
    let ls = ctx.run(["ls"]);
    assert_eq!(ls.code, 0);
    assert!(ls.stderr.contains("no sessions"));
    assert_eq!(ctx.run(["ls", "--json"]).json(), serde_json::json!([]));
}

#[test]
fn migrations_are_versioned_and_a_newer_database_is_refused() {
    let ctx = Ctx::new();
    let path = ctx.path("sessions.db");
    drop(Db::open_path(&path).expect("create"));
    drop(Db::open_path(&path).expect("reopen is a no-op migration"));
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(
        version, 7,
        "v1 sessions, events, evidence; v2 takeover handle and enforcement; v3 plans stored once; v4 the launching key's fingerprint; v5 laptop_only; v6 the controller's heartbeat; v7 team mode (controller machine, daemons, the caps index)"
    );
    let handle: Option<String> = conn
        .query_row("SELECT handle FROM sessions LIMIT 1", [], |r| r.get(0))
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .expect("the v2 columns exist");
    assert!(handle.is_none());
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "user_version", 99).expect("bump");
    drop(conn);
    assert!(matches!(
        Db::open_path(&path),
        Err(DbError::TooNew { found: 99, .. })
    ));
}

#[test]
fn git_provenance_of_a_plan() {
    let ctx = Ctx::new();
    let repo = ctx.path("team-plans");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .expect("git")
            .status
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    let plan = repo.join("gpu_plan.toml");
    assert_eq!(gpuctl::plan::provenance(&plan), None);
    std::fs::write(&plan, "schema = 1\n").expect("write");
    git(&["add", "gpu_plan.toml"]);
    git(&["commit", "-qm", "plan"]);
    let p = gpuctl::plan::provenance(&plan).expect("committed plan has provenance");
    assert_eq!(p.commit.len(), 40);
    assert!(!p.dirty);
    std::fs::write(&plan, "schema = 1\n# changed\n").expect("write");
    assert!(gpuctl::plan::provenance(&plan).expect("provenance").dirty);
}

#[test]
fn up_on_a_fresh_home_survives_ls_and_status_polled_from_other_processes() {
    let ctx = common::Ctx::new();
    let port = common::free_port();
    let plan = common::local_plan(&ctx, port, "after_eval = true");
    let mut up = ctx.command();
    up.args(["up", "--json"]).arg(&plan);
    let up = up.stdout(std::process::Stdio::piped()).spawn().expect("up");
    // Three pollers open the same fresh home while `up` creates and migrates it.
    let pollers: Vec<_> = (0..3)
        .map(|i| {
            let cmd = if i == 2 { "status" } else { "ls" };
            let home = ctx.home();
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for _ in 0..40 {
                    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpuctl"))
                        .env("GPUCTL_HOME", &home)
                        .args([cmd, "--json"])
                        .output()
                        .expect("poll");
                    let err = String::from_utf8_lossy(&out.stderr);
                    if err.contains("locked") || err.contains("busy") {
                        failures.push(err.into_owned());
                    }
                }
                failures
            })
        })
        .collect();
    let out = up.wait_with_output().expect("up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for p in pollers {
        let failures = p.join().expect("poller");
        assert!(failures.is_empty(), "a poller hit a lock: {failures:?}");
    }
}
