//! The session store, the same checks on both backends: the embedded SQLite file and a
//! real PostgreSQL server started for the test (Debian's `postgresql`).

mod common;

use std::sync::{Arc, Barrier};

use chrono::{Duration, Utc};
use common::postgres::Postgres;
use gpuctl::db::{
    Backend, Caps, Claim, Controller, ControllerKind, Db, DbError, EvidenceRow, NewSession,
    SeedRow, SCHEMA_VERSION,
};
use gpuctl::session::SessionState;

fn new_session(id: &str, owner: &str, max_total: f64) -> NewSession {
    let now = Utc::now();
    NewSession {
        id: id.into(),
        plan_name: "store-test".into(),
        plan_sha256: "cd".repeat(32),
        plan_text: "schema = 1\n".into(),
        plan_path: Some("plans/x.toml".into()),
        plan_git_commit: None,
        plan_git_dirty: Some(true),
        owner: Some(owner.into()),
        route: "rented_gpu".into(),
        provider: "runpod".into(),
        instance_type: Some("NVIDIA A40".into()),
        region: None,
        price_usd_per_hour: Some(0.5),
        catalog_price_usd_per_hour: Some(0.44),
        hourly_budget_usd: Some(1.0),
        max_total_usd: Some(max_total),
        created_at: now,
        deadline: now + Duration::hours(1),
        stop_cause: "max_duration".into(),
        controller: None,
        evidence_dir: Some("/tmp/evidence".into()),
    }
}

fn controller(pid: u32) -> Controller {
    Controller {
        pid,
        start: 1000 + u64::from(pid),
        kind: ControllerKind::Daemon,
        machine: 42,
    }
}

/// Both stores, each opened the way gpuctl opens it; the opener makes another connection.
struct Stores {
    _pg: Postgres,
    _dir: tempfile::TempDir,
    sqlite: std::path::PathBuf,
    pg_url: String,
}

impl Stores {
    fn new(name: &str) -> Stores {
        let pg = Postgres::start();
        let pg_url = pg.database(name);
        let dir = tempfile::tempdir().expect("temp dir");
        Stores {
            sqlite: dir.path().join("sessions.db"),
            _dir: dir,
            _pg: pg,
            pg_url,
        }
    }

    fn both(&self) -> Vec<Box<dyn Fn() -> Db + Send + Sync>> {
        let (path, url) = (self.sqlite.clone(), self.pg_url.clone());
        vec![
            Box::new(move || Db::open_path(&path).expect("open sqlite")),
            Box::new(move || Db::open_url(&url).expect("open postgres")),
        ]
    }
}

#[test]
fn every_store_operation_reads_back_the_same_on_both_backends() {
    let stores = Stores::new("ops");
    for open in stores.both() {
        let db = open();
        let backend = db.backend();
        assert_eq!(db.schema_version().expect("version"), SCHEMA_VERSION);
        assert_eq!(
            db.migrate().expect("again"),
            (SCHEMA_VERSION, SCHEMA_VERSION)
        );
        let s = new_session("20261202-120000-aaaaaa", "alice", 3.0);
        db.insert_session(&s).expect("insert");
        assert!(
            db.insert_session(&s).is_err(),
            "{backend:?}: a second insert of one id fails"
        );
        let got = db.get_session("20261202-120000").expect("by prefix");
        assert_eq!(got.id, s.id);
        assert_eq!(
            got.plan_text, "schema = 1\n",
            "{backend:?}: the plan text comes back"
        );
        assert_eq!(got.plan_git_dirty, Some(true));
        assert_eq!(got.state, SessionState::Planned);
        assert_eq!(got.max_total_usd, Some(3.0));
        assert_eq!(
            got.deadline.timestamp_millis(),
            s.deadline.timestamp_millis()
        );

        db.transition(&s.id, SessionState::Serving, "serving", Utc::now())
            .expect("transition");
        assert!(matches!(
            db.transition("nope", SessionState::Serving, "x", Utc::now()),
            Err(DbError::NotFound(_))
        ));
        db.record_launch(&s.id, "pod-1", Some("10.0.0.1"), Utc::now())
            .expect("launch");
        db.record_host_key(&s.id, "SHA256:abc").expect("host key");
        db.record_handle(&s.id, "{\"local\":1}").expect("handle");
        db.record_laptop_only(&s.id).expect("laptop only");
        db.record_stop_attempt(&s.id, 3, Utc::now())
            .expect("attempt");
        db.record_lateness(&s.id, 120).expect("lateness");
        assert!(db.mark_budget_warned(&s.id, Utc::now()).expect("warn"));
        assert!(!db.mark_budget_warned(&s.id, Utc::now()).expect("warn once"));
        let got = db.get_session(&s.id).expect("get");
        assert_eq!(got.instance_id.as_deref(), Some("pod-1"));
        assert_eq!(got.host_key_fingerprint.as_deref(), Some("SHA256:abc"));
        assert!(got.laptop_only);
        assert_eq!(got.stop_attempts, 3);
        assert_eq!(got.stop_lateness_ms, Some(120));
        assert_eq!(got.state, SessionState::Serving);

        db.record_evidence(
            &s.id,
            &[EvidenceRow {
                path: "a.txt".into(),
                sha256: None,
                size: None,
                status: "missing".into(),
            }],
        )
        .expect("evidence");
        db.record_evidence(
            &s.id,
            &[EvidenceRow {
                path: "a.txt".into(),
                sha256: Some("ff".into()),
                size: Some(3),
                status: "present".into(),
            }],
        )
        .expect("evidence replaced");
        let ev = db.evidence_rows(&s.id).expect("rows");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].status, "present");
        assert_eq!(ev[0].size, Some(3));

        // Claims: a fresh session is taken; a live holder keeps it; a gone one loses it.
        let (a, b) = (controller(10), controller(11));
        assert_eq!(
            db.claim(&s.id, a, |_, _| None, Utc::now()).expect("claim"),
            Claim::Taken { from: None }
        );
        assert_eq!(
            db.claim(&s.id, b, |_, _| None, Utc::now()).expect("held"),
            Claim::Held(a)
        );
        assert!(db.heartbeat(&s.id, a, Utc::now()).expect("heartbeat"));
        assert!(!db.heartbeat(&s.id, b, Utc::now()).expect("not b's"));
        assert_eq!(db.renew_leases(a, Utc::now()).expect("renew"), 1);
        assert_eq!(db.held_by(a).expect("held by").len(), 1);
        assert_eq!(
            db.claim(&s.id, b, |_, _| Some("is gone".into()), Utc::now())
                .expect("take over"),
            Claim::Taken { from: Some(a) }
        );
        assert!(db
            .events(&s.id)
            .expect("events")
            .iter()
            .any(|e| e.kind == "takeover" && e.message.contains("is gone")));
        db.record_end(
            &s.id,
            SessionState::Stopped,
            Utc::now(),
            Some(0.25),
            "deadline",
            None,
            "stopped",
        )
        .expect("end");
        assert_eq!(
            db.claim(&s.id, a, |_, _| Some("gone".into()), Utc::now())
                .expect("final"),
            Claim::Final(SessionState::Stopped)
        );
        let events = db.events(&s.id).expect("events");
        assert_eq!(
            events.first().map(|e| e.state),
            Some(Some(SessionState::Planned))
        );
        assert_eq!(
            events.last().map(|e| e.state),
            Some(Some(SessionState::Stopped))
        );
        assert_eq!(db.count_sessions().expect("count"), 1);
        assert!(db.live_sessions().expect("live").is_empty());
        assert_eq!(db.list_sessions(Some(5)).expect("list").len(), 1);
        assert!(matches!(db.get_session("zzz"), Err(DbError::NotFound(_))));
        eprintln!("{backend:?}: ok");
    }
}

#[test]
fn audits_page_through_more_rows_than_one_read_on_both_backends() {
    let stores = Stores::new("audit");
    for open in stores.both() {
        let db = open();
        let base = Utc::now() - Duration::days(3);
        let rows: Vec<SeedRow> = (0..12_345)
            .map(|i| {
                let mut s = new_session(
                    &format!("s{i:06}"),
                    if i % 2 == 0 { "alice" } else { "bob" },
                    1.0,
                );
                // Many share one creation time: the page boundary must not skip or repeat.
                s.created_at = base + Duration::seconds(i / 7);
                SeedRow {
                    session: s,
                    state: if i % 100 == 0 {
                        SessionState::StopUnconfirmed
                    } else {
                        SessionState::Stopped
                    },
                    instance_id: Some(format!("i-{i}")),
                    launched_at: None,
                    ended_at: None,
                    cost_usd: Some(0.5),
                    stop_reason: Some("deadline".into()),
                }
            })
            .collect();
        db.seed(&rows).expect("seed");
        let mut seen = Vec::new();
        db.audit_rows(&Default::default(), |r| {
            seen.push((r.state, r.id));
            Ok(())
        })
        .expect("audit");
        assert_eq!(seen.len(), rows.len(), "{:?}: every row once", db.backend());
        let unique: std::collections::HashSet<_> = seen.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(unique.len(), rows.len());
        let unconfirmed = seen
            .iter()
            .take_while(|(s, _)| *s == SessionState::StopUnconfirmed)
            .count();
        assert_eq!(unconfirmed, 124, "stop_unconfirmed first");
        let mut alice = 0;
        db.audit_rows(
            &gpuctl::audit::Filter {
                owner: Some("alice".into()),
                ..Default::default()
            },
            |_| {
                alice += 1;
                Ok(())
            },
        )
        .expect("by owner");
        assert_eq!(alice, 6_173);
    }
}

#[test]
fn claims_racing_from_many_connections_have_one_winner_on_both_backends() {
    let stores = Stores::new("claims");
    for open in stores.both() {
        let open: Arc<dyn Fn() -> Db + Send + Sync> = Arc::from(open);
        let db = open();
        let backend = db.backend();
        for round in 0..5 {
            let id = format!("race-{round}");
            db.insert_session(&new_session(&id, "alice", 1.0))
                .expect("insert");
            let barrier = Arc::new(Barrier::new(8));
            let threads: Vec<_> = (0..8u32)
                .map(|t| {
                    let (open, barrier, id) = (open.clone(), barrier.clone(), id.clone());
                    std::thread::spawn(move || {
                        let db = open();
                        barrier.wait();
                        db.claim(&id, controller(100 + t), |_, _| None, Utc::now())
                            .expect("claim")
                    })
                })
                .collect();
            let claims: Vec<Claim> = threads
                .into_iter()
                .map(|t| t.join().expect("join"))
                .collect();
            let won = claims
                .iter()
                .filter(|c| matches!(c, Claim::Taken { .. }))
                .count();
            assert_eq!(won, 1, "{backend:?}: one claim wins: {claims:?}");
            let takeovers = db
                .events(&id)
                .expect("events")
                .iter()
                .filter(|e| e.kind == "takeover")
                .count();
            assert_eq!(takeovers, 1, "{backend:?}: one takeover recorded");
        }
    }
}

#[test]
fn sessions_racing_for_the_last_dollars_of_a_cap_start_once_on_both_backends() {
    let stores = Stores::new("caps");
    for open in stores.both() {
        let open: Arc<dyn Fn() -> Db + Send + Sync> = Arc::from(open);
        let db = open();
        let backend = db.backend();
        // $4 already spent by a finished session; the cap is $10; each new plan may spend $5.
        let done = new_session("spent", "alice", 4.0);
        db.insert_session(&done).expect("insert");
        db.record_end(
            "spent",
            SessionState::Stopped,
            Utc::now(),
            Some(4.0),
            "deadline",
            None,
            "ok",
        )
        .expect("end");
        let since = Utc::now() - Duration::days(1);
        let barrier = Arc::new(Barrier::new(6));
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let (open, barrier) = (open.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let db = open();
                    let caps = Caps {
                        since,
                        owner_usd: None,
                        team_usd: Some(10.0),
                        this_plan_usd: 5.0,
                    };
                    barrier.wait();
                    db.insert_session_within(&new_session(&format!("racer-{t}"), "bob", 5.0), &caps)
                        .expect("insert within")
                        .1
                })
            })
            .collect();
        let started = threads
            .into_iter()
            .map(|t| t.join().expect("join"))
            .filter(|s| *s)
            .count();
        assert_eq!(started, 1, "{backend:?}: exactly one fits the cap");
        let spend = db.month_spend(since, Some("bob")).expect("spend");
        assert_eq!(
            spend.owner_usd, 5.0,
            "a live session counts at its max_total_usd"
        );
        assert_eq!(spend.team_usd, 9.0);
    }
}

#[test]
fn a_store_written_by_a_newer_gpuctl_is_refused_on_postgres() {
    let pg = Postgres::start();
    let url = pg.database("newer");
    drop(Db::open_url(&url).expect("create"));
    pg.exec(&url, "INSERT INTO gpuctl_schema (version) VALUES (99)");
    match Db::open_url(&url) {
        Err(DbError::TooNew { found: 99, .. }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

#[test]
fn a_bad_url_or_password_is_refused_without_showing_the_password() {
    let pg = Postgres::start();
    let url = format!(
        "postgres://nobody:s3cret-pw@127.0.0.1:{}/postgres?sslmode=disable",
        pg.port
    );
    let err = match Db::open_url(&url) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an unknown role was let in"),
    };
    assert!(!err.contains("s3cret-pw"), "the password is shown: {err}");
    assert!(err.contains("nobody:***@"), "the URL is named: {err}");
    let err = match Db::open_url("mysql://x") {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };
    assert!(err.contains("postgres://"), "{err}");
    assert_eq!(
        Backend::Postgres,
        Db::open_url(&pg.url("postgres")).expect("open").backend()
    );
}
