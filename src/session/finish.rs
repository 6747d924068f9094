//! The end of every session, whoever drives it (`up`, `gpuctl down`, the daemon): stop the
//! agent, prove it, collect the evidence, account for the cost, record the final state.
//!
//! The stop comes first and nothing after it can undo it: a database that is locked or a
//! disk that is full makes the record late or the bundle incomplete, and says so, but the
//! agent is stopped and the proof is taken all the same.

use std::time::{Duration, Instant};

use chrono::Utc;
use gpuctl_protocol::evidence_files;
use serde_json::json;

use super::up::{Ending, Session};
use super::SessionState;
use crate::db::EvidenceRow;
use crate::evidence::{Check, CostRecord, ShutdownProofRecord};
use crate::exit::Exit;
use crate::progress::Reporter;

/// Pulling the evidence back never holds the stop longer than this.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the final record waits for a database another process holds locked.
const RECORD_RETRY: Duration = Duration::from_secs(90);

/// Backoff of unconfirmed stops: 2 s, 4 s, ... up to 5 minutes, for ever.
pub fn retry_backoff(attempts: u32) -> chrono::Duration {
    chrono::Duration::seconds(2i64.saturating_pow(attempts.min(9)).min(300))
}

/// How long the evidence pull may take. Before the deadline: what is left of it (at most
/// `COLLECT_TIMEOUT`). At or past it, `COLLECT_AFTER_DEADLINE`: enough for the final record
/// and the log, never the terminate's minutes (the grace-period copy holds the rest).
fn collect_budget(deadline: chrono::DateTime<Utc>) -> Duration {
    let left = (deadline - Utc::now()).to_std().unwrap_or_default();
    left.clamp(COLLECT_AFTER_DEADLINE, COLLECT_TIMEOUT)
}

/// The pull's floor once the deadline has passed.
const COLLECT_AFTER_DEADLINE: Duration = Duration::from_secs(10);

impl Session {
    /// Pull the evidence back within its budget; files that are not regular files (links,
    /// FIFOs, devices) are refused and named. A host that cannot be reached keeps its
    /// evidence: that is recorded, not fatal.
    async fn collect_bounded(&mut self, rep: &mut Reporter, errors: &mut Vec<String>) {
        let Some((host, _)) = &self.agent else { return };
        let budget = collect_budget(self.deadline);
        let pulled = tokio::time::timeout(
            budget,
            host.collect(&self.bundle, &self.plan.evidence.copy_back),
        )
        .await;
        match pulled {
            Ok(Ok(files)) => {
                let refused: Vec<String> = files
                    .iter()
                    .filter(|(_, status)| status.starts_with(super::remote_host::REFUSED))
                    .map(|(name, status)| format!("{name} ({status})"))
                    .collect();
                if !refused.is_empty() {
                    let msg = format!("evidence files refused, not copied: {}", refused.join(", "));
                    rep.warn(&msg);
                    let _ = self
                        .db
                        .add_event(&self.id, "evidence_refused", &msg, Utc::now());
                }
            }
            Ok(Err(e)) => {
                let msg = format!("evidence could not be collected: {e:#}");
                rep.warn(&msg);
                errors.push(msg);
            }
            Err(_) => rep.warn(&format!(
                "evidence could not be pulled back within {} s; the stop goes on",
                budget.as_secs()
            )),
        }
    }

    /// The SSH address the session's host is reached at (the plan's, or the cloud's).
    fn ssh_address(&self) -> Option<(String, u16)> {
        if let Some(t) = &self.target {
            return Some((t.host.clone(), t.port));
        }
        if let Some(h) = &self.plan.instance.host {
            return Some((h.clone(), self.plan.instance.port));
        }
        let row = self.db.get_session(&self.id).ok()?;
        let (h, p) = row
            .host?
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.to_string()))?;
        Some((h, p.parse().ok()?))
    }

    /// Write through `f`; on failure say so and carry on (the stop must not wait on it).
    fn soft(&self, rep: &Reporter, what: &str, r: anyhow::Result<()>, errors: &mut Vec<String>) {
        if let Err(e) = r {
            let msg = format!("{what}: {e:#}");
            rep.warn(&msg);
            errors.push(msg);
        }
    }

    /// Collect, stop, prove, account. Runs whatever happened before.
    pub(super) async fn finish(
        &mut self,
        rep: &mut Reporter,
        ending: Ending,
        started: Instant,
    ) -> anyhow::Result<Exit> {
        if let Ending::Failed(msg) = &ending {
            rep.warn(&format!("the session failed: {msg}"));
        }
        let mut db_errors = Vec::new();
        let mut evidence_errors = Vec::new();
        let _ = self.db.set_busy_timeout(Duration::from_millis(500));
        let r = self
            .transition(SessionState::Collecting, "collecting evidence")
            .and_then(|_| self.transition(SessionState::Stopping, &ending.reason()));
        self.soft(rep, "the session database", r, &mut db_errors);
        rep.step("stop", "stopping the agent and proving it");
        let stop_started = Utc::now();
        let t = Instant::now();
        let mut checks: Vec<Check> = match self.agent.as_mut() {
            Some((host, _)) => host.stop(&self.agent_bin).await,
            None => match self.stop_blocker.clone() {
                Some(blocker) => vec![blocker],
                None => vec![Check::new("process_exited", true, "no agent was started")],
            },
        };
        self.time("stop_and_prove", t);
        let stopped_at = Utc::now();
        let _ = self.db.set_busy_timeout(Duration::from_secs(10));

        let t = Instant::now();
        self.collect_bounded(rep, &mut evidence_errors).await;
        // The plan's own stop command comes last: it may take the host down.
        if let (Some((host, _)), crate::plan::OnStop::Command) =
            (&self.agent, self.plan.stop.on_stop)
        {
            let mut ran = host.run_stop_command(&self.plan.stop.stop_command).await;
            if self.plan.evidence.shutdown_proof == crate::plan::ShutdownProof::HostUnreachable {
                if let Some((h, p)) = self.ssh_address() {
                    let probe = super::remote_host::probe_unreachable(&h, p).await;
                    // The host going silent is the proof the command did its work.
                    if probe.passed && !ran.passed {
                        ran.passed = true;
                        ran.answer.push_str("; the host then went unreachable");
                    }
                    checks.push(ran);
                    checks.push(probe);
                } else {
                    checks.push(ran);
                    checks.push(Check::new(
                        "host_unreachable",
                        false,
                        "no address recorded to probe",
                    ));
                }
            } else {
                checks.push(ran);
            }
        }
        // A cloud stop is confirmed by the provider's own read-back, and only by it.
        let record = self.db.get_session(&self.id).ok();
        let kind: gpuctl_providers::ProviderKind = record
            .as_ref()
            .and_then(|r| r.provider.parse().ok())
            .unwrap_or(self.plan.instance.provider);
        let mut stopped_at = stopped_at;
        let mut api_calls: Option<(u64, u64)> = None;
        let confirmed = if kind.is_cloud() || self.plan.instance.provider.is_cloud() {
            let cloud = self.stop_cloud(rep, record.as_ref()).await;
            let passed = cloud.passed();
            api_calls = cloud.api_calls;
            stopped_at = cloud.confirmed_at.unwrap_or_else(Utc::now);
            checks.extend(cloud.checks);
            passed
        } else {
            checks.iter().all(|c| c.passed)
        };
        // The row may have learned of an instance just now (a launch that was in flight).
        let record = self.db.get_session(&self.id).ok().or(record);
        // Every check that failed is said now, not only in shutdown_proof.json.
        for c in checks.iter().filter(|c| !c.passed) {
            rep.warn(&format!("{}: {}", c.check, c.answer));
        }
        let final_record: Option<serde_json::Value> =
            std::fs::read_to_string(self.bundle.path(evidence_files::FINAL_RECORD))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
        // Lateness of a deadline stop: when serving stopped (the agent's own record when it
        // stopped first), against the deadline in the database.
        let agent_stop = final_record
            .as_ref()
            .filter(|r| r["reason"].as_str() == Some("deadline"))
            .and_then(|r| r["stopped_at"].as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let lateness_ms = match (&ending, agent_stop) {
            (_, Some(t)) => Some((t.min(stopped_at) - self.deadline).num_milliseconds()),
            (Ending::Deadline | Ending::AgentExited(_), None) if stopped_at >= self.deadline => {
                Some((stopped_at - self.deadline).num_milliseconds())
            }
            _ => None,
        };
        let proof = ShutdownProofRecord {
            session_id: self.id.clone(),
            expected: self.plan.evidence.shutdown_proof.as_str().into(),
            confirmed,
            provider: kind.as_str().into(),
            stop_reason: ending.reason(),
            deadline: self.deadline,
            stop_started_at: stop_started,
            stop_confirmed_at: confirmed.then_some(stopped_at),
            checks,
            agent_final_record: final_record,
        };
        let r = self.bundle.write_json("shutdown_proof.json", &proof);
        self.soft(rep, "the evidence bundle", r, &mut evidence_errors);

        let (launched, price) = match &record {
            Some(s) => (
                s.launched_at.unwrap_or(s.created_at),
                s.price_usd_per_hour
                    .or(self.plan.budget.hourly_usd)
                    .unwrap_or(0.0),
            ),
            None => (stop_started, self.plan.declared_price().unwrap_or(0.0)),
        };
        let billing = gpuctl_providers::billing_of(kind);
        let billed = billing.billed((stopped_at - launched).to_std().unwrap_or_default());
        let cost = (price * billed.as_secs_f64() / 3600.0 * 100.0).round() / 100.0;
        let cost_record = CostRecord {
            session_id: self.id.clone(),
            provider: kind.as_str().into(),
            price_usd_per_hour: price,
            billing_granularity: format!("{billing:?}"),
            launched_at: launched,
            stopped_at,
            billed_seconds: billed.as_secs(),
            cost_usd: cost,
            hourly_budget_usd: self.plan.budget.hourly_usd,
            max_total_usd: self.plan.budget.max_total_usd,
            percent_of_budget: self
                .plan
                .budget
                .max_total_usd
                .map(|m| (cost / m * 1000.0).round() / 10.0),
        };
        let r = self.bundle.write_json("cost.json", &cost_record);
        self.soft(rep, "the evidence bundle", r, &mut evidence_errors);
        self.time("collect_evidence", t);
        let total_ms = started.elapsed().as_millis() as u64;
        let timings: serde_json::Map<String, serde_json::Value> = self
            .timings
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let r = self.bundle.write_json(
            "timings.json",
            &json!({ "session_id": self.id, "total_ms": total_ms, "steps_ms": timings }),
        );
        self.soft(rep, "the evidence bundle", r, &mut evidence_errors);

        // The page a reviewer opens: written before the manifest, which covers it.
        if let Some(mut record) = record {
            record.state = if confirmed {
                if evidence_errors.is_empty() && !matches!(ending, Ending::Failed(_)) {
                    SessionState::Stopped
                } else {
                    SessionState::Failed
                }
            } else {
                SessionState::StopUnconfirmed
            };
            record.ended_at = Some(stopped_at);
            record.cost_usd = Some(cost);
            let events = self.db.events(&self.id).unwrap_or_default();
            let page = crate::report::session_page(&self.bundle.dir, &record, &events);
            let r = self.bundle.write("report.html", page);
            self.soft(rep, "the evidence bundle", r, &mut evidence_errors);
        }

        // What the plan asked for, present or missing.
        let mut rows: Vec<EvidenceRow> = Vec::new();
        match self.bundle.write_manifest() {
            Ok(manifest) => {
                for (path, sha, size) in &manifest {
                    rows.push(EvidenceRow {
                        path: path.clone(),
                        sha256: Some(sha.clone()),
                        size: Some(*size),
                        status: "present".into(),
                    });
                }
            }
            Err(e) => self.soft(rep, "the evidence manifest", Err(e), &mut evidence_errors),
        }
        let missing: Vec<String> = self
            .plan
            .evidence
            .copy_back
            .iter()
            .filter(|f| !self.bundle.has(f))
            .cloned()
            .collect();
        for m in &missing {
            rows.push(EvidenceRow {
                path: m.clone(),
                sha256: None,
                size: None,
                status: "missing".into(),
            });
            rep.warn(&format!(
                "the plan asked for {m}, but the session did not produce it"
            ));
        }
        let _ = std::fs::remove_file(self.work.join("token"));

        let mut failure = match &ending {
            Ending::Failed(msg) => Some(msg.clone()),
            Ending::AgentExited(s)
                if !matches!(
                    proof
                        .agent_final_record
                        .as_ref()
                        .and_then(|r| r["reason"].as_str()),
                    Some("deadline")
                ) =>
            {
                Some(format!("the agent exited before the deadline: {s}"))
            }
            _ => None,
        };
        // The agent's own account of a failure (a supervised server's death: its signal and
        // last lines) belongs in the session's, not only in final_record.json.
        let agent_failure = proof
            .agent_final_record
            .as_ref()
            .and_then(|r| r["failure"].as_str())
            .filter(|f| !failure.as_deref().unwrap_or("").contains(f.trim()));
        if let (Some(f), Some(agent)) = (failure.as_mut(), agent_failure) {
            f.push_str("; the agent reported: ");
            f.push_str(agent.trim());
        }
        if let Some(first) = evidence_errors.first() {
            // The stop stands; the bundle does not hold everything it should.
            let msg = format!("the evidence could not all be written ({first}); free space in {} and see what is missing with `gpuctl evidence {} verify`", self.bundle.dir.display(), self.id);
            failure = Some(match failure {
                Some(f) => format!("{f}; {msg}"),
                None => msg,
            });
        }
        let (state, exit) = match (confirmed, &failure) {
            (false, _) => (SessionState::StopUnconfirmed, Exit::StopUnconfirmed),
            (true, Some(_)) => (SessionState::Failed, Exit::Failed),
            (true, None) => (SessionState::Stopped, Exit::Done),
        };
        let message = match state {
            SessionState::StopUnconfirmed => {
                "the stop could not be confirmed; see shutdown_proof.json".to_string()
            }
            _ => format!(
                "stopped and proven ({})",
                self.plan.evidence.shutdown_proof.as_str()
            ),
        };
        let message = match lateness_ms {
            Some(ms) => format!("{message}; {ms} ms after the deadline"),
            None => message,
        };
        let recorded = self
            .record_end(
                rep,
                state,
                stopped_at,
                cost,
                &ending.reason(),
                failure.as_deref(),
                &message,
                &rows,
                lateness_ms,
            )
            .await;
        if let Err(e) = &recorded {
            db_errors.push(format!("{e:#}"));
        }
        rep.done(&message);
        rep.result(json!({
            "session_id": self.id,
            "state": state.as_str(),
            "bundle": self.bundle.dir.display().to_string(),
            "stop_reason": ending.reason(),
            "failure": failure,
            "cost_usd": cost,
            "missing_evidence": missing,
            "lateness_ms": lateness_ms,
            "provider_api_calls": api_calls.map(|(all, stop)| json!({ "session": all, "stop": stop })),
            "database_errors": db_errors,
            "timings_ms": timings,
        }));
        if !rep.is_json() {
            println!("{}", self.bundle.dir.display());
            eprintln!(
                "session {} {}: evidence in {}",
                self.id,
                state,
                self.bundle.dir.display()
            );
        }
        if recorded.is_err() {
            eprintln!("error: the agent is stopped (see shutdown_proof.json), but the session database could not record it: {}; `gpuctl daemon` or `gpuctl down {}` will record it once the database can be written", db_errors.last().map(String::as_str).unwrap_or_default(), self.id);
            return Ok(if exit == Exit::StopUnconfirmed {
                exit
            } else {
                Exit::Failed
            });
        }
        Ok(exit)
    }

    /// The final record, retried while another process holds the database locked.
    #[allow(clippy::too_many_arguments)]
    async fn record_end(
        &mut self,
        rep: &Reporter,
        state: SessionState,
        stopped_at: chrono::DateTime<Utc>,
        cost: f64,
        reason: &str,
        failure: Option<&str>,
        message: &str,
        rows: &[EvidenceRow],
        lateness_ms: Option<i64>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut warned = false;
        loop {
            let r: anyhow::Result<()> = (|| {
                self.db.record_evidence(&self.id, rows)?;
                if let Some(ms) = lateness_ms {
                    self.db.record_lateness(&self.id, ms)?;
                }
                if state == SessionState::StopUnconfirmed {
                    let attempts = self
                        .db
                        .get_session(&self.id)
                        .map(|s| s.stop_attempts)
                        .unwrap_or(0)
                        + 1;
                    self.db.record_stop_attempt(
                        &self.id,
                        attempts,
                        Utc::now() + retry_backoff(attempts),
                    )?;
                }
                self.db.record_end(
                    &self.id,
                    state,
                    stopped_at,
                    Some(cost),
                    reason,
                    failure,
                    message,
                )?;
                Ok(())
            })();
            match r {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() < RECORD_RETRY => {
                    if !warned {
                        rep.warn(&format!("cannot record the end of the session yet ({e:#}); retrying for up to {} s", RECORD_RETRY.as_secs()));
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
