//! Hidden helpers for tests. `write-sessions` is the writer the crash-safety test kills.

use chrono::Utc;

use super::open_db;
use crate::cli::DebugCommand;
use crate::db::NewSession;
use crate::exit::Exit;
use crate::session::new_session_id;

pub fn run(cmd: DebugCommand) -> anyhow::Result<Exit> {
    match cmd {
        DebugCommand::WriteSessions { count } => {
            let db = open_db()?;
            for i in 0..count {
                let now = Utc::now();
                let id = format!("{}-{i}", new_session_id(now));
                db.insert_session(&NewSession {
                    id: id.clone(),
                    plan_name: "crash-test".into(),
                    plan_sha256: "0".repeat(64),
                    plan_text: "x".repeat(4096),
                    plan_path: None,
                    plan_git_commit: None,
                    plan_git_dirty: None,
                    owner: None,
                    route: "local_cpu".into(),
                    provider: "local".into(),
                    instance_type: None,
                    region: None,
                    price_usd_per_hour: Some(0.0),
                    catalog_price_usd_per_hour: None,
                    hourly_budget_usd: None,
                    max_total_usd: None,
                    created_at: now,
                    deadline: now + chrono::Duration::hours(1),
                    stop_cause: "max_duration".into(),
                    controller: Some(crate::procs::me(crate::db::ControllerKind::Up)),
                    evidence_dir: None,
                })?;
                db.transition(
                    &id,
                    crate::session::SessionState::Stopped,
                    "debug writer",
                    now,
                )?;
                crate::out!("{i}");
            }
            Ok(Exit::Done)
        }
        DebugCommand::Seed {
            count,
            id_prefix,
            instances,
            deadline_in,
            spread,
            months,
        } => seed(count, &id_prefix, instances, deadline_in, spread, months),
    }
}

/// A valid cloud plan for seeded sessions (the daemon re-reads it at the stop).
const SEED_PLAN: &str = include_str!("../../plans/vast-3090.toml");

fn seed(
    count: u64,
    prefix: &str,
    instances: Option<std::path::PathBuf>,
    deadline_in: std::time::Duration,
    spread: std::time::Duration,
    months: u32,
) -> anyhow::Result<Exit> {
    use crate::db::SeedRow;
    use crate::session::SessionState;
    let db = open_db()?;
    let ids: Option<Vec<String>> = match &instances {
        Some(f) => {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f)?)?;
            Some(
                v["ids"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|i| i.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        }
        None => None,
    };
    let now = Utc::now();
    let sha = crate::evidence::sha256_hex(SEED_PLAN.as_bytes());
    let plans = [
        "vast-3090-vllm",
        "lambda-a10-smoke",
        "runpod-4090-eval",
        "local-cpu-smollm2",
    ];
    let owners = ["ml-platform", "research", "infra"];
    let providers = [
        ("vast", 0.22),
        ("lambda", 0.75),
        ("runpod", 0.69),
        ("local", 0.0),
    ];
    let mut batch = Vec::new();
    for i in 0..count {
        let live = ids.is_some();
        let (created, deadline) = if live {
            let step = spread.as_secs_f64() * i as f64 / count.max(1) as f64;
            let d = now
                + chrono::Duration::from_std(deadline_in).unwrap_or_default()
                + chrono::Duration::milliseconds((step * 1000.0) as i64);
            (now, d)
        } else {
            // Spread evenly over the months, newest last.
            let back = chrono::Duration::seconds(
                (f64::from(months) * 30.0 * 86_400.0 * (1.0 - i as f64 / count.max(1) as f64))
                    as i64,
            );
            let c = now - back;
            (c, c + chrono::Duration::minutes(30))
        };
        let (provider, price) = if live {
            ("vast", 0.22)
        } else {
            providers[(i % 4) as usize]
        };
        let minutes = 5 + (i % 55) as i64;
        let ended = created + chrono::Duration::minutes(minutes);
        let billed_cost = (price * minutes as f64 / 60.0 * 100.0).round() / 100.0;
        batch.push(SeedRow {
            session: NewSession {
                id: format!("{prefix}{i}"),
                plan_name: if live {
                    "vast-3090-vllm".into()
                } else {
                    plans[(i % 4) as usize].into()
                },
                plan_sha256: sha.clone(),
                plan_text: SEED_PLAN.into(),
                plan_path: Some("plans/vast-3090.toml".into()),
                plan_git_commit: None,
                plan_git_dirty: None,
                owner: Some(owners[(i % 3) as usize].into()),
                route: if provider == "local" {
                    "local_cpu".into()
                } else {
                    "rented_gpu".into()
                },
                provider: provider.into(),
                instance_type: Some("RTX 3090".into()),
                region: None,
                price_usd_per_hour: Some(price),
                catalog_price_usd_per_hour: Some(price),
                hourly_budget_usd: Some(0.40),
                max_total_usd: Some(3.0),
                created_at: created,
                deadline,
                stop_cause: "max_duration".into(),
                controller: None,
                evidence_dir: None,
            },
            state: if live {
                SessionState::Serving
            } else {
                SessionState::Stopped
            },
            instance_id: match &ids {
                Some(ids) => ids.get(i as usize).cloned(),
                None => Some(format!("seeded-{i}")),
            },
            launched_at: Some(created),
            ended_at: (!live).then_some(ended),
            cost_usd: (!live).then_some(billed_cost),
            stop_reason: (!live).then(|| "after_eval: the fixed eval set has run".to_string()),
        });
        if batch.len() == 10_000 {
            db.seed(&batch)?;
            batch.clear();
        }
    }
    db.seed(&batch)?;
    crate::note!("seeded {count} session(s) in {}", db.location());
    Ok(Exit::Done)
}
