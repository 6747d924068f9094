//! The free_colab route: the notebook gpuctl writes from a plan, and the import of the
//! evidence it brings back as an ordinary session (database row, bundle, manifest, report).

mod import;
pub mod notebook;

use std::path::Path;

use anyhow::Context;
use chrono::Utc;

pub use import::{read_zip, REQUIRED};

use crate::db::{Db, EvidenceRow, NewSession};
use crate::evidence::{sha256_hex, Bundle, Check, CostRecord, ShutdownProofRecord};
use crate::plan::Plan;
use crate::session::SessionState;

/// What an import recorded.
pub struct ImportedSession {
    pub id: String,
    pub bundle: std::path::PathBuf,
}

/// Record the notebook's session: every file has been checked by `read_zip` already.
pub fn record(
    home: &Path,
    plan_path: &Path,
    plan: &Plan,
    plan_text: &str,
    zip: &Path,
    imported: import::Imported,
) -> anyhow::Result<ImportedSession> {
    let db = Db::open(home)?;
    let id = crate::session::new_session_id(imported.started_at);
    let deadline = imported.stop["deadline"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(imported.stopped_at);
    let bundle_dir = match &plan.evidence.dir {
        Some(d) => Path::new(d).join(&id),
        None => home.join("evidence").join(&id),
    };
    let git = crate::plan::provenance(plan_path);
    db.insert_session(&NewSession {
        id: id.clone(),
        plan_name: plan.name.clone(),
        plan_sha256: sha256_hex(plan_text.as_bytes()),
        plan_text: plan_text.to_string(),
        plan_path: Some(plan_path.display().to_string()),
        plan_git_commit: git.as_ref().map(|g| g.commit.clone()),
        plan_git_dirty: git.as_ref().map(|g| g.dirty),
        owner: plan.owner.clone(),
        route: plan.route.as_str().into(),
        provider: plan.instance.provider.as_str().into(),
        instance_type: Some("colab notebook".into()),
        region: None,
        price_usd_per_hour: Some(0.0),
        catalog_price_usd_per_hour: None,
        hourly_budget_usd: plan.budget.hourly_usd,
        max_total_usd: plan.budget.max_total_usd,
        created_at: imported.started_at,
        deadline,
        stop_cause: "notebook".into(),
        // This process drives the row until it is final: a daemon must not take it over.
        controller: Some(crate::procs::me(crate::db::ControllerKind::Up)),
        evidence_dir: Some(bundle_dir.display().to_string()),
    })?;
    let now = Utc::now();
    db.record_launch(&id, "colab notebook", None, imported.started_at)?;
    db.transition(
        &id,
        SessionState::Collecting,
        &format!("imported from {}", zip.display()),
        now,
    )?;

    let bundle = Bundle::create(bundle_dir)?;
    bundle.write("plan.toml", plan_text)?;
    bundle.write(
        "gpu_plan.md",
        crate::plan::route_card(plan, imported.started_at),
    )?;
    for (name, bytes) in &imported.files {
        bundle.write(name, bytes)?;
    }
    let reason = imported.stop["reason"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    let steps = imported.stop["steps"].as_array().map(Vec::len).unwrap_or(0);
    let in_time = imported.stopped_at <= deadline + chrono::Duration::minutes(1);
    let proof = ShutdownProofRecord {
        session_id: id.clone(),
        expected: plan.evidence.shutdown_proof.as_str().into(),
        confirmed: true,
        provider: "free_colab".into(),
        stop_reason: format!("the notebook's own stop record: {reason}"),
        deadline,
        stop_started_at: imported.stopped_at,
        stop_confirmed_at: Some(imported.stopped_at),
        checks: vec![
            Check::new(
                "notebook_stopped",
                true,
                format!("stop_record.json: {reason} at {} after {steps} step(s); the runtime itself is Colab's to reclaim and costs nothing", imported.stopped_at.to_rfc3339()),
            ),
            Check::new(
                "stopped_by_the_hard_stop",
                in_time,
                if in_time {
                    format!("the notebook stopped before its hard stop {}", deadline.to_rfc3339())
                } else {
                    format!("the notebook ran past its hard stop {}", deadline.to_rfc3339())
                },
            ),
        ],
        agent_final_record: Some(imported.stop.clone()),
    };
    bundle.write_json("shutdown_proof.json", &proof)?;
    let billed = (imported.stopped_at - imported.started_at)
        .num_seconds()
        .max(0) as u64;
    bundle.write_json(
        "cost.json",
        &CostRecord {
            session_id: id.clone(),
            provider: "free_colab".into(),
            price_usd_per_hour: 0.0,
            billing_granularity: "free".into(),
            launched_at: imported.started_at,
            stopped_at: imported.stopped_at,
            billed_seconds: billed,
            cost_usd: 0.0,
            hourly_budget_usd: plan.budget.hourly_usd,
            max_total_usd: plan.budget.max_total_usd,
            percent_of_budget: plan.budget.max_total_usd.map(|_| 0.0),
        },
    )?;
    db.transition(
        &id,
        SessionState::Stopping,
        &format!("the notebook stopped: {reason}"),
        imported.stopped_at.max(now),
    )?;
    let mut record = db.get_session(&id)?;
    record.state = SessionState::Stopped;
    record.ended_at = Some(imported.stopped_at);
    record.cost_usd = Some(0.0);
    let events = db.events(&id)?;
    bundle.write(
        "report.html",
        crate::report::session_page(&bundle.dir, &record, &events),
    )?;
    let manifest = bundle.write_manifest()?;
    let rows: Vec<EvidenceRow> = manifest
        .iter()
        .map(|(path, sha, size)| EvidenceRow {
            path: path.clone(),
            sha256: Some(sha.clone()),
            size: Some(*size),
            status: "present".into(),
        })
        .collect();
    db.record_evidence(&id, &rows)?;
    db.record_end(
        &id,
        SessionState::Stopped,
        imported.stopped_at,
        Some(0.0),
        &format!("free_colab notebook: {reason}"),
        None,
        "imported; the notebook's stop record is the proof",
    )
    .context("recording the imported session")?;
    Ok(ImportedSession {
        id,
        bundle: bundle.dir,
    })
}
