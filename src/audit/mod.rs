//! Budget audits, from the session database alone (evidence folders may be long gone):
//! per session what was spent, on what, against which plan, and whether its stop was
//! proven; totals per group; flags for what a team must look at.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use gpuctl_providers::billing_of_name;
use serde::Serialize;

use crate::session::SessionState;

/// What the audit selects, and the columns it reads (the store defines both).
pub use gpuctl_store::{AuditFilter as Filter, AuditRaw as Raw};

/// One audited session.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub session_id: String,
    pub plan: String,
    pub plan_sha256: String,
    pub plan_git_commit: Option<String>,
    pub owner: Option<String>,
    pub route: String,
    pub provider: String,
    pub instance_type: Option<String>,
    pub price_usd_per_hour: Option<f64>,
    pub catalog_price_usd_per_hour: Option<f64>,
    pub start: DateTime<Utc>,
    pub stop: Option<DateTime<Utc>>,
    pub billed_seconds: u64,
    pub cost_usd: f64,
    pub budget_usd: Option<f64>,
    pub percent_of_budget: Option<f64>,
    pub stop_reason: Option<String>,
    /// confirmed | UNCONFIRMED | live
    pub proof: &'static str,
    pub flags: Vec<&'static str>,
}

pub const OVER_BUDGET: &str = "over_budget";
pub const STOP_UNCONFIRMED: &str = "stop_unconfirmed";
pub const PLAN_CHANGED: &str = "plan_changed";
/// Run with `up --laptop-only` (a choice, shown; not a problem `--strict` fails on).
pub const LAPTOP_ONLY: &str = "laptop_only";
/// `gpuctl extend` moved the hard stop (shown; within the budget by construction).
pub const EXTENDED: &str = "extended";

/// Whether a plan file still reads as what the session ran (cached per path).
#[derive(Default)]
pub struct PlanFiles {
    current: HashMap<String, Option<String>>,
}

impl PlanFiles {
    /// True when the file exists and its sha256 differs from the recorded one.
    fn changed(&mut self, path: &str, recorded: &str) -> bool {
        let now = self.current.entry(path.to_string()).or_insert_with(|| {
            std::fs::read(path)
                .ok()
                .map(|b| crate::evidence::sha256_hex(&b))
        });
        now.as_deref().is_some_and(|sha| sha != recorded)
    }
}

/// Audit one session as of `now`.
pub fn audit(raw: Raw, now: DateTime<Utc>, plans: &mut PlanFiles) -> Row {
    let start = raw.launched_at.unwrap_or(raw.created_at);
    let billing = billing_of_name(&raw.provider);
    let end = raw.ended_at.unwrap_or(now);
    let billed = if raw.launched_at.is_some() {
        billing.billed((end - start).to_std().unwrap_or_default())
    } else {
        std::time::Duration::ZERO
    };
    // The recorded cost is what the session billed; a live one is metered to now.
    let cost = raw.cost_usd.unwrap_or_else(|| {
        (raw.price.unwrap_or(0.0) * billed.as_secs_f64() / 3600.0 * 100.0).round() / 100.0
    });
    let proof = match raw.state {
        SessionState::Stopped | SessionState::Failed => "confirmed",
        SessionState::StopUnconfirmed => "UNCONFIRMED",
        _ => "live",
    };
    let mut flags = Vec::new();
    if raw.max_total_usd.is_some_and(|m| cost > m + 1e-9) {
        flags.push(OVER_BUDGET);
    }
    if raw.state == SessionState::StopUnconfirmed {
        flags.push(STOP_UNCONFIRMED);
    }
    if raw
        .plan_path
        .as_deref()
        .is_some_and(|p| plans.changed(p, &raw.plan_sha256))
    {
        flags.push(PLAN_CHANGED);
    }
    if raw.laptop_only {
        flags.push(LAPTOP_ONLY);
    }
    if raw.extended {
        flags.push(EXTENDED);
    }
    Row {
        session_id: raw.id,
        plan: raw.plan_name,
        plan_sha256: raw.plan_sha256,
        plan_git_commit: raw.plan_git_commit,
        owner: raw.owner,
        route: raw.route,
        provider: raw.provider,
        instance_type: raw.instance_type,
        price_usd_per_hour: raw.price,
        catalog_price_usd_per_hour: raw.catalog_price,
        start,
        stop: raw.ended_at,
        billed_seconds: billed.as_secs(),
        cost_usd: cost,
        budget_usd: raw.max_total_usd,
        percent_of_budget: raw
            .max_total_usd
            .filter(|m| *m > 0.0)
            .map(|m| (cost / m * 1000.0).round() / 10.0),
        stop_reason: raw.stop_reason,
        proof,
        flags,
    }
}

/// How rows are grouped (`--by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Plan,
    Owner,
    Provider,
    Month,
}

impl By {
    pub fn key(self, r: &Row) -> String {
        match self {
            By::Plan => r.plan.clone(),
            By::Owner => r.owner.clone().unwrap_or_else(|| "-".into()),
            By::Provider => r.provider.clone(),
            By::Month => r.start.format("%Y-%m").to_string(),
        }
    }
}

/// The totals of a group (or of everything). Money is summed in cents, so totals are exact.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub sessions: u64,
    pub billed_hours: f64,
    #[serde(skip)]
    pub cents: i64,
    pub cost_usd: f64,
    pub over_budget: u64,
    pub stop_unconfirmed: u64,
    pub plan_changed: u64,
    /// Sessions run with `up --laptop-only` (shown, not a failure for `--strict`).
    pub laptop_only: u64,
    /// Sessions whose hard stop `gpuctl extend` moved.
    pub extended: u64,
}

impl Totals {
    pub fn add(&mut self, r: &Row) {
        self.sessions += 1;
        self.billed_hours += r.billed_seconds as f64 / 3600.0;
        self.cents += (r.cost_usd * 100.0).round() as i64;
        self.cost_usd = self.cents as f64 / 100.0;
        for f in &r.flags {
            match *f {
                OVER_BUDGET => self.over_budget += 1,
                STOP_UNCONFIRMED => self.stop_unconfirmed += 1,
                LAPTOP_ONLY => self.laptop_only += 1,
                EXTENDED => self.extended += 1,
                _ => self.plan_changed += 1,
            }
        }
    }

    pub fn flagged(&self) -> bool {
        self.over_budget + self.stop_unconfirmed + self.plan_changed > 0
    }
}

/// Totals per group, in key order.
#[derive(Debug, Default)]
pub struct Groups {
    pub by: BTreeMap<String, Totals>,
    pub all: Totals,
}

impl Groups {
    pub fn add(&mut self, by: Option<By>, r: &Row) {
        if let Some(b) = by {
            self.by.entry(b.key(r)).or_default().add(r);
        }
        self.all.add(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(cost: Option<f64>, state: SessionState) -> Raw {
        let t = DateTime::parse_from_rfc3339("2026-11-01T10:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("time");
        Raw {
            id: "s".into(),
            plan_name: "p".into(),
            plan_sha256: "0".repeat(64),
            plan_path: None,
            plan_git_commit: None,
            owner: None,
            route: "rented_gpu".into(),
            provider: "lambda".into(),
            instance_type: Some("gpu_1x_a10".into()),
            price: Some(0.75),
            catalog_price: Some(0.75),
            created_at: t,
            launched_at: Some(t),
            ended_at: Some(t + chrono::Duration::seconds(61)),
            state,
            stop_reason: None,
            cost_usd: cost,
            max_total_usd: Some(1.0),
            laptop_only: false,
            extended: false,
        }
    }

    #[test]
    fn flags_and_billing_follow_the_record() {
        let now = Utc::now();
        let mut plans = PlanFiles::default();
        let ok = audit(raw(Some(0.03), SessionState::Stopped), now, &mut plans);
        assert!(ok.flags.is_empty());
        assert_eq!(ok.billed_seconds, 120, "Lambda bills per started minute");
        assert_eq!(ok.proof, "confirmed");
        let over = audit(raw(Some(1.25), SessionState::Stopped), now, &mut plans);
        assert_eq!(over.flags, vec![OVER_BUDGET]);
        let open = audit(raw(None, SessionState::StopUnconfirmed), now, &mut plans);
        assert_eq!(open.flags, vec![STOP_UNCONFIRMED]);
        assert_eq!(open.proof, "UNCONFIRMED");
        assert_eq!(
            open.cost_usd, 0.03,
            "metered from the price when nothing was recorded"
        );

        let dir = tempfile::tempdir().expect("dir");
        let plan = dir.path().join("p.toml");
        std::fs::write(&plan, "edited").expect("write");
        let mut changed = raw(Some(0.03), SessionState::Stopped);
        changed.plan_path = Some(plan.display().to_string());
        assert_eq!(audit(changed, now, &mut plans).flags, vec![PLAN_CHANGED]);

        let mut g = Groups::default();
        g.add(Some(By::Month), &ok);
        g.add(Some(By::Month), &over);
        assert_eq!(g.by["2026-11"].cents, 128);
        assert!(g.all.flagged());
    }
}
