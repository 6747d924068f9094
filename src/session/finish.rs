//! The end of every session, whoever drives it (`up`, `gpuctl down`, the daemon): stop the
//! agent, prove it, collect the evidence, account for the cost, record the final state.
//!
//! The stop comes first and nothing after it can undo it: a database that is locked or a
//! disk that is full makes the record late or the bundle incomplete, and says so, but the
//! agent is stopped and the proof is taken all the same.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
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

/// What the stop has established so far; each step adds its part.
struct StopRun {
    ending: Ending,
    stop_started: DateTime<Utc>,
    /// When serving stopped; for a cloud, when the provider confirmed (or gave up).
    stopped_at: DateTime<Utc>,
    checks: Vec<Check>,
    confirmed: bool,
    kind: gpuctl_providers::ProviderKind,
    api_calls: Option<(u64, u64)>,
    record: Option<crate::db::SessionRecord>,
    lateness_ms: Option<i64>,
    db_errors: Vec<String>,
    evidence_errors: Vec<String>,
}

/// What the bundle and the accounting came to.
/// What a stop found, before it is published.
pub(super) struct Stopped {
    run: StopRun,
    cost: f64,
    failure: Option<String>,
    timings: serde_json::Map<String, serde_json::Value>,
}

struct Outcome {
    cost: f64,
    failure: Option<String>,
    rows: Vec<EvidenceRow>,
    missing: Vec<String>,
    timings: serde_json::Map<String, serde_json::Value>,
}

/// The session's final row.
struct End {
    state: SessionState,
    stopped_at: DateTime<Utc>,
    cost: f64,
    reason: String,
    failure: Option<String>,
    message: String,
    lateness_ms: Option<i64>,
}

impl Session {
    /// Pull the evidence back within its budget; files that are not regular files (links,
    /// FIFOs, devices) are refused and named. A host that cannot be reached keeps its
    /// evidence: that is recorded, not fatal.
    async fn collect_bounded(&mut self, rep: &mut Reporter, errors: &mut Vec<String>) {
        let Some(host) = &self.host else { return };
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

    /// The stop, whatever happened before: stop serving -> collect (bounded) -> the plan's
    /// stop command -> terminate and confirm by read-back -> prove -> account. Each step
    /// adds its record to the returned `Stopped`; none can undo an earlier one. Publishing
    /// it (the page, the manifest, the session's final row) is the caller's next step:
    /// `publish`.
    pub(super) async fn finish(
        &mut self,
        rep: &mut Reporter,
        ending: Ending,
        started: Instant,
    ) -> Stopped {
        // `gpuctl extend` may have moved the deadline since the start: lateness and the
        // record count from the one in force.
        if let Ok(r) = self.db.get_session(&self.id) {
            self.deadline = r.deadline;
        }
        let mut run = self.begin_stop(rep, ending);
        self.stop_serving(&mut run).await;
        let t = Instant::now();
        self.collect_bounded(rep, &mut run.evidence_errors).await;
        self.plan_stop_command(&mut run).await;
        self.terminate(rep, &mut run).await;
        for c in run.checks.iter().filter(|c| !c.passed) {
            // Every check that failed is said now, not only in shutdown_proof.json.
            rep.warn(&format!("{}: {}", c.check, c.answer));
        }
        let final_record = self.write_proof(rep, &mut run);
        let cost = self.account(rep, &mut run);
        self.time("collect_evidence", t);
        let timings = self.write_timings(rep, &mut run, started);
        let _ = std::fs::remove_file(self.work.join("token"));
        let _ = std::fs::remove_file(self.work.join("hf_token"));
        let failure = self.failure_of(&run, final_record.as_ref());
        Stopped {
            run,
            cost,
            failure,
            timings,
        }
    }

    /// After the stop: the page a reviewer opens, then the manifest that covers it, then
    /// the session's final row and the result line.
    pub(super) async fn publish(
        &mut self,
        rep: &mut Reporter,
        stopped: Stopped,
    ) -> anyhow::Result<Exit> {
        let Stopped {
            mut run,
            cost,
            failure,
            timings,
        } = stopped;
        self.write_page(rep, &mut run, cost);
        let (rows, missing) = self.manifest(rep, &mut run);
        let outcome = Outcome {
            cost,
            failure,
            rows,
            missing,
            timings,
        };
        self.record_and_report(rep, run, outcome).await
    }

    /// The session enters its stop; the database is asked briefly (a locked one delays the
    /// record, never the stop).
    fn begin_stop(&mut self, rep: &mut Reporter, ending: Ending) -> StopRun {
        if let Ending::Failed(msg) = &ending {
            rep.warn(&format!("the session failed: {msg}"));
        }
        let mut run = StopRun {
            stop_started: Utc::now(),
            stopped_at: Utc::now(),
            checks: Vec::new(),
            confirmed: false,
            kind: self.plan.instance.provider,
            api_calls: None,
            record: None,
            lateness_ms: None,
            db_errors: Vec::new(),
            evidence_errors: Vec::new(),
            ending,
        };
        let _ = self.db.set_busy_timeout(Duration::from_millis(500));
        let reason = run.ending.reason();
        let r = self
            .transition(SessionState::Collecting, "collecting evidence")
            .and_then(|_| self.transition(SessionState::Stopping, &reason));
        self.soft(rep, "the session database", r, &mut run.db_errors);
        rep.step("stop", "stopping the agent and proving it");
        run
    }

    /// Stop the agent (and what it serves with) and prove it on its host.
    async fn stop_serving(&mut self, run: &mut StopRun) {
        let t = Instant::now();
        run.checks = match self.host.as_mut() {
            Some(host) => {
                let whole_host = self.plan.instance.provider.is_cloud();
                host.stop(&self.agent_bin, whole_host).await
            }
            None => match self.stop_blocker.clone() {
                Some(blocker) => vec![blocker],
                None => vec![Check::new("process_exited", true, "no agent was started")],
            },
        };
        self.time("stop_and_prove", t);
        run.stopped_at = Utc::now();
        let _ = self.db.set_busy_timeout(Duration::from_secs(10));
    }

    /// The plan's own stop command comes after the evidence: it may take the host down.
    /// With `shutdown_proof = "host_unreachable"` the host's silence is what proves it.
    async fn plan_stop_command(&mut self, run: &mut StopRun) {
        let (Some(host), crate::plan::OnStop::Command) = (&self.host, self.plan.stop.on_stop)
        else {
            return;
        };
        let mut ran = host.run_stop_command(&self.plan.stop.stop_command).await;
        if self.plan.evidence.shutdown_proof != crate::plan::ShutdownProof::HostUnreachable {
            run.checks.push(ran);
            return;
        }
        let probe = match self.ssh_address() {
            Some((h, p)) => super::remote_host::probe_unreachable(&h, p).await,
            None => Check::new("host_unreachable", false, "no address recorded to probe"),
        };
        if probe.passed && !ran.passed {
            ran.passed = true;
            ran.answer.push_str("; the host then went unreachable");
        }
        run.checks.push(ran);
        run.checks.push(probe);
    }

    /// A cloud stop is confirmed by the provider's own read-back, and only by it; other
    /// stops by their checks on the host.
    async fn terminate(&mut self, rep: &mut Reporter, run: &mut StopRun) {
        run.confirmed = if self.plan.instance.provider.is_cloud() {
            let cloud = self.stop_cloud(rep).await;
            run.api_calls = cloud.api_calls;
            run.stopped_at = cloud.confirmed_at.unwrap_or_else(Utc::now);
            let passed = cloud.passed();
            run.checks.extend(cloud.checks);
            passed
        } else {
            run.checks.iter().all(|c| c.passed)
        };
        // Read after the stop: the row may have learned of an instance just now (a launch
        // that was in flight), and of the provider a fallback launched on.
        run.record = self.db.get_session(&self.id).ok();
        run.kind = run
            .record
            .as_ref()
            .and_then(|r| r.provider.parse().ok())
            .unwrap_or(self.plan.instance.provider);
    }

    /// `shutdown_proof.json`: every check, and the agent's own final record. Returns the
    /// final record, which later steps read.
    fn write_proof(&mut self, rep: &mut Reporter, run: &mut StopRun) -> Option<serde_json::Value> {
        let final_record: Option<serde_json::Value> =
            std::fs::read_to_string(self.bundle.path(evidence_files::FINAL_RECORD))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
        // The agent stopped itself for `stop.idle`: that is the session's reason.
        if matches!(run.ending, Ending::AgentExited(_))
            && final_record
                .as_ref()
                .is_some_and(|r| r["reason"].as_str() == Some("idle"))
        {
            run.ending = Ending::Idle(self.plan.stop.idle.unwrap_or_default());
        }
        // Lateness of a deadline stop: when serving stopped (the agent's own record when it
        // stopped first), against the deadline in the database.
        let agent_stop = final_record
            .as_ref()
            .filter(|r| r["reason"].as_str() == Some("deadline"))
            .and_then(|r| r["stopped_at"].as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        run.lateness_ms = match (&run.ending, agent_stop) {
            (_, Some(t)) => Some((t.min(run.stopped_at) - self.deadline).num_milliseconds()),
            (Ending::Deadline | Ending::AgentExited(_), None)
                if run.stopped_at >= self.deadline =>
            {
                Some((run.stopped_at - self.deadline).num_milliseconds())
            }
            _ => None,
        };
        let proof = ShutdownProofRecord {
            session_id: self.id.clone(),
            expected: self.plan.evidence.shutdown_proof.as_str().into(),
            confirmed: run.confirmed,
            provider: run.kind.as_str().into(),
            stop_reason: run.ending.reason(),
            deadline: self.deadline,
            stop_started_at: run.stop_started,
            stop_confirmed_at: run.confirmed.then_some(run.stopped_at),
            checks: run.checks.clone(),
            agent_final_record: final_record.clone(),
        };
        let r = self.bundle.write_json("shutdown_proof.json", &proof);
        self.soft(rep, "the evidence bundle", r, &mut run.evidence_errors);
        final_record
    }

    /// `cost.json`: billed time at the provider's granularity times the price known. A
    /// price nobody quoted is the hourly budget, never 0.
    fn account(&mut self, rep: &mut Reporter, run: &mut StopRun) -> f64 {
        let (launched, price) = match &run.record {
            Some(s) => (
                s.launched_at.unwrap_or(s.created_at),
                s.price_usd_per_hour
                    .or(self.plan.budget.hourly_usd)
                    .unwrap_or(0.0),
            ),
            None => (
                run.stop_started,
                self.plan
                    .declared_price()
                    .or(self.plan.budget.hourly_usd)
                    .unwrap_or(0.0),
            ),
        };
        let billing = gpuctl_providers::billing_of(run.kind);
        let billed = billing.billed((run.stopped_at - launched).to_std().unwrap_or_default());
        let cost = (price * billed.as_secs_f64() / 3600.0 * 100.0).round() / 100.0;
        let budget = &self.plan.budget;
        let cost_record = CostRecord {
            session_id: self.id.clone(),
            provider: run.kind.as_str().into(),
            price_usd_per_hour: price,
            billing_granularity: format!("{billing:?}"),
            launched_at: launched,
            stopped_at: run.stopped_at,
            billed_seconds: billed.as_secs(),
            cost_usd: cost,
            hourly_budget_usd: budget.hourly_usd,
            max_total_usd: budget.max_total_usd,
            percent_of_budget: budget
                .max_total_usd
                .map(|m| (cost / m * 1000.0).round() / 10.0),
        };
        let r = self.bundle.write_json("cost.json", &cost_record);
        self.soft(rep, "the evidence bundle", r, &mut run.evidence_errors);
        cost
    }

    /// `timings.json`: every step's milliseconds and the total.
    fn write_timings(
        &mut self,
        rep: &mut Reporter,
        run: &mut StopRun,
        started: Instant,
    ) -> serde_json::Map<String, serde_json::Value> {
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
        self.soft(rep, "the evidence bundle", r, &mut run.evidence_errors);
        timings
    }

    /// The page a reviewer opens: written before the manifest, which covers it.
    fn write_page(&mut self, rep: &mut Reporter, run: &mut StopRun, cost: f64) {
        let Some(mut record) = run.record.clone() else {
            return;
        };
        record.state = if !run.confirmed {
            SessionState::StopUnconfirmed
        } else if run.evidence_errors.is_empty() && !matches!(run.ending, Ending::Failed(_)) {
            SessionState::Stopped
        } else {
            SessionState::Failed
        };
        record.ended_at = Some(run.stopped_at);
        record.cost_usd = Some(cost);
        let events = self.db.events(&self.id).unwrap_or_default();
        let page = crate::report::session_page(&self.bundle.dir, &record, &events);
        let r = self.bundle.write("report.html", page);
        self.soft(rep, "the evidence bundle", r, &mut run.evidence_errors);
    }

    /// `MANIFEST.sha256`, and what the plan asked for: present or missing.
    fn manifest(
        &mut self,
        rep: &mut Reporter,
        run: &mut StopRun,
    ) -> (Vec<EvidenceRow>, Vec<String>) {
        let mut rows: Vec<EvidenceRow> = Vec::new();
        match self.bundle.write_manifest() {
            Ok(manifest) => {
                rows.extend(manifest.into_iter().map(|(path, sha, size)| EvidenceRow {
                    path,
                    sha256: Some(sha),
                    size: Some(size),
                    status: "present".into(),
                }))
            }
            Err(e) => self.soft(
                rep,
                "the evidence manifest",
                Err(e),
                &mut run.evidence_errors,
            ),
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
        (rows, missing)
    }

    /// Why the session failed, if it did: its own failure, the agent's account of it (a
    /// supervised server's signal and last lines), and evidence that could not be written.
    fn failure_of(
        &self,
        run: &StopRun,
        final_record: Option<&serde_json::Value>,
    ) -> Option<String> {
        let agent_reason = final_record.and_then(|r| r["reason"].as_str());
        let mut failure = match &run.ending {
            Ending::Failed(msg) => Some(msg.clone()),
            Ending::AgentExited(s) if !matches!(agent_reason, Some("deadline" | "idle")) => {
                Some(format!("the agent exited before the deadline: {s}"))
            }
            _ => None,
        };
        let agent_failure = final_record
            .and_then(|r| r["failure"].as_str())
            .filter(|f| !failure.as_deref().unwrap_or("").contains(f.trim()));
        if let (Some(f), Some(agent)) = (failure.as_mut(), agent_failure) {
            f.push_str("; the agent reported: ");
            f.push_str(agent.trim());
        }
        if let Some(first) = run.evidence_errors.first() {
            // The stop stands; the bundle does not hold everything it should.
            let msg = format!("the evidence could not all be written ({first}); free space in {} and see what is missing with `gpuctl evidence {} verify`", self.bundle.dir.display(), self.id);
            failure = Some(match failure {
                Some(f) => format!("{f}; {msg}"),
                None => msg,
            });
        }
        failure
    }

    /// The final state in the database (retried while it is locked), the result line, and
    /// the exit status: 4 whenever the stop is not confirmed.
    async fn record_and_report(
        &mut self,
        rep: &mut Reporter,
        mut run: StopRun,
        outcome: Outcome,
    ) -> anyhow::Result<Exit> {
        let (state, exit) = match (run.confirmed, &outcome.failure) {
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
        let message = match run.lateness_ms {
            Some(ms) => format!("{message}; {ms} ms after the deadline"),
            None => message,
        };
        let end = End {
            state,
            stopped_at: run.stopped_at,
            cost: outcome.cost,
            reason: run.ending.reason(),
            failure: outcome.failure.clone(),
            message: message.clone(),
            lateness_ms: run.lateness_ms,
        };
        let recorded = self.record_end(rep, &end, &outcome.rows).await;
        if let Err(e) = &recorded {
            run.db_errors.push(format!("{e:#}"));
        }
        // After the record: an alert never delays the stop or its proof.
        let (event, said) = match state {
            SessionState::StopUnconfirmed => (
                "stop_unconfirmed",
                format!("{message}; it may still bill, and the stop is retried"),
            ),
            SessionState::Failed => (
                "failure",
                format!(
                    "{message}; failed: {}",
                    outcome.failure.as_deref().unwrap_or("see the bundle")
                ),
            ),
            _ => ("stop", format!("{message} ({})", end.reason)),
        };
        self.alerter().send(event, &said);
        rep.done(&message);
        rep.result(json!({
            "session_id": self.id,
            "state": state.as_str(),
            "bundle": self.bundle.dir.display().to_string(),
            "stop_reason": end.reason,
            "failure": outcome.failure,
            "cost_usd": outcome.cost,
            "missing_evidence": outcome.missing,
            "lateness_ms": run.lateness_ms,
            "provider_api_calls": run.api_calls.map(|(all, stop)| json!({ "session": all, "stop": stop })),
            "database_errors": run.db_errors,
            "timings_ms": outcome.timings,
        }));
        if !rep.is_json() {
            crate::out!("{}", self.bundle.dir.display());
            crate::note!(
                "session {} {}: evidence in {}",
                self.id,
                state,
                self.bundle.dir.display()
            );
        }
        if recorded.is_err() {
            crate::error_line!("the agent is stopped (see shutdown_proof.json), but the session database could not record it: {}; `gpuctl daemon` or `gpuctl down {}` will record it once the database can be written", run.db_errors.last().map(String::as_str).unwrap_or_default(), self.id);
            return Ok(if exit == Exit::StopUnconfirmed {
                exit
            } else {
                Exit::Failed
            });
        }
        Ok(exit)
    }

    /// The final record, retried while another process holds the database locked.
    async fn record_end(
        &mut self,
        rep: &Reporter,
        end: &End,
        rows: &[EvidenceRow],
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut warned = false;
        loop {
            let r: anyhow::Result<()> = (|| {
                self.db.record_evidence(&self.id, rows)?;
                if let Some(ms) = end.lateness_ms {
                    self.db.record_lateness(&self.id, ms)?;
                }
                if end.state == SessionState::StopUnconfirmed {
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
                    end.state,
                    end.stopped_at,
                    Some(end.cost),
                    &end.reason,
                    end.failure.as_deref(),
                    &end.message,
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
