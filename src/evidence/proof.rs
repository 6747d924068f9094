//! `shutdown_proof.json` and `cost.json`: what was stopped, what each check answered.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One check of the stop, and what it answered.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: String,
    pub passed: bool,
    pub answer: String,
    pub at: DateTime<Utc>,
}

impl Check {
    pub fn new(check: &str, passed: bool, answer: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            passed,
            answer: answer.into(),
            at: Utc::now(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ShutdownProofRecord {
    pub session_id: String,
    /// The proof the plan asked for.
    pub expected: String,
    /// True only when every check passed: the stop is confirmed.
    pub confirmed: bool,
    pub provider: String,
    pub stop_reason: String,
    pub deadline: DateTime<Utc>,
    pub stop_started_at: DateTime<Utc>,
    pub stop_confirmed_at: Option<DateTime<Utc>>,
    pub checks: Vec<Check>,
    /// The agent's own final record, verbatim, when it wrote one.
    pub agent_final_record: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct CostRecord {
    pub session_id: String,
    pub provider: String,
    pub price_usd_per_hour: f64,
    pub billing_granularity: String,
    pub launched_at: DateTime<Utc>,
    pub stopped_at: DateTime<Utc>,
    pub billed_seconds: u64,
    pub cost_usd: f64,
    pub hourly_budget_usd: Option<f64>,
    pub max_total_usd: Option<f64>,
    pub percent_of_budget: Option<f64>,
}
