//! The validated plan: what the rest of gpuctl sees. Nothing downstream reads raw TOML.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gpuctl_protocol::Runtime;
use gpuctl_providers::ProviderKind;
use serde::Serialize;

/// The schema version this build reads.
pub const SCHEMA_VERSION: i64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    LocalCpu,
    FreeColab,
    RentedGpu,
}

impl Route {
    pub const ALL: [Route; 3] = [Route::LocalCpu, Route::FreeColab, Route::RentedGpu];

    pub fn as_str(self) -> &'static str {
        match self {
            Route::LocalCpu => "local_cpu",
            Route::FreeColab => "free_colab",
            Route::RentedGpu => "rented_gpu",
        }
    }

    pub fn parse(s: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyLevel {
    Public,
    Internal,
    Private,
}

impl PrivacyLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            PrivacyLevel::Public => "public",
            PrivacyLevel::Internal => "internal",
            PrivacyLevel::Private => "private",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStop {
    Terminate,
    Stop,
    Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownProof {
    /// The provider's API reads the instance back as terminated or gone.
    ProviderTerminated,
    /// The agent's process has exited and its port refuses connections.
    ProcessExited,
    /// The host no longer answers (it powered itself off).
    HostUnreachable,
}

impl ShutdownProof {
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownProof::ProviderTerminated => "provider_terminated",
            ShutdownProof::ProcessExited => "process_exited",
            ShutdownProof::HostUnreachable => "host_unreachable",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub goal: String,
    pub route: Route,
    pub question: Option<String>,
    pub why: Option<String>,
    pub can_prove: Option<String>,
    pub cannot_prove: Option<String>,
    pub privacy_level: PrivacyLevel,
    pub owner: Option<String>,
    pub model: ModelSpec,
    pub instance: InstanceSpec,
    pub budget: Budget,
    pub stop: StopSpec,
    pub fallback: Fallback,
    pub access: Access,
    pub evidence: EvidenceSpec,
    pub eval: EvalSpec,
    /// `[notify]`: alerts (optional).
    pub notify: Option<Notify>,
    /// `[setup]`: the host's Python environment (optional).
    pub setup: Option<Setup>,
}

/// `[setup]`: built on the host by the agent before the model loads, once per distinct
/// section (its hash names the environment), then reused.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub python: Option<String>,
    pub pip: Vec<String>,
    pub commands: Vec<String>,
}

impl Setup {
    /// The environment's name: sha256 of the section as the agent receives it (16 hex).
    pub fn key(&self) -> String {
        let canonical = serde_json::json!({ "python": self.python, "pip": self.pip, "commands": self.commands });
        crate::evidence::sha256_hex(canonical.to_string().as_bytes())[..16].to_string()
    }
}

/// Where alerts go: the environment variable holding a webhook URL (never the URL).
#[derive(Debug, Clone, Serialize)]
pub struct Notify {
    pub webhook_env: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelSpec {
    pub id: String,
    pub runtime: Runtime,
    pub path: Option<String>,
    /// One file downloaded on the host (with `sha256`, checked before it is served).
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub args: Vec<String>,
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceSpec {
    pub provider: ProviderKind,
    pub host: Option<String>,
    pub port: u16,
    pub user: Option<String>,
    pub host_key: Option<String>,
    pub instance_type: Option<String>,
    pub region: Option<String>,
    pub gpus: u32,
    pub vram_gb: Option<u32>,
    pub disk_gb: Option<u32>,
    pub hourly_price_usd: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    pub hourly_usd: Option<f64>,
    pub max_total_usd: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StopSpec {
    pub hard_stop_time: Option<DateTime<Utc>>,
    #[serde(with = "humantime_serde_compat")]
    pub max_duration: Option<Duration>,
    #[serde(serialize_with = "humantime_serde_compat::serialize_one")]
    pub grace: Duration,
    pub on_stop: OnStop,
    pub stop_command: Vec<String>,
    pub after_eval: bool,
    /// Stop once no API request has come for this long (the hard stop still applies).
    #[serde(with = "humantime_serde_compat")]
    pub idle: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fallback {
    /// `None` means the plan declares no fallback route (allowed on local_cpu only).
    pub route: Option<Route>,
    pub if_oom: Option<OomFallback>,
    pub if_no_capacity: Vec<CapacityTarget>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OomFallback {
    pub model: String,
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CapacityTarget {
    pub provider: ProviderKind,
    pub instance_type: String,
    pub region: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Access {
    pub method: Option<String>,
    pub identity_file: Option<String>,
    pub ports: Vec<PortForward>,
    pub public_ports: Vec<PublicPort>,
}

/// A port reached through the tunnel: 127.0.0.1:local here, 127.0.0.1:remote on the host.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PortForward {
    pub local: u16,
    pub remote: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublicPort {
    pub port: u16,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvidenceSpec {
    pub copy_back: Vec<String>,
    pub shutdown_proof: ShutdownProof,
    pub dir: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct EvalSpec {
    /// A file of `[[case]]` tables, relative to the plan's folder.
    pub cases_file: Option<String>,
    pub cases: Vec<EvalCase>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalCase {
    pub id: String,
    pub prompt: String,
    pub expect: Expectation,
    pub max_tokens: u32,
    pub max_latency_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expectation {
    Contains(String),
    Regex(String),
}

/// Which limit ends the session first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    HardStopTime,
    MaxDuration,
    Budget,
}

impl StopCause {
    pub fn describe(self) -> &'static str {
        match self {
            StopCause::HardStopTime => "the hard stop time",
            StopCause::MaxDuration => "the maximum duration",
            StopCause::Budget => "the total budget at the hourly price",
        }
    }
}

impl Plan {
    /// The effective stop for a session recorded at `start` and billed at `price_per_hour`:
    /// the earliest of the hard stop, start + max_duration, and the moment max_total_usd
    /// is spent at that price.
    pub fn effective_stop(
        &self,
        start: DateTime<Utc>,
        price_per_hour: Option<f64>,
    ) -> Option<(DateTime<Utc>, StopCause)> {
        let mut candidates = Vec::new();
        if let Some(t) = self.stop.hard_stop_time {
            candidates.push((t, StopCause::HardStopTime));
        }
        if let Some(d) = self
            .stop
            .max_duration
            .and_then(|d| chrono::Duration::from_std(d).ok())
        {
            candidates.push((start + d, StopCause::MaxDuration));
        }
        if let (Some(total), Some(price)) = (self.budget.max_total_usd, price_per_hour) {
            if price > 0.0 {
                let secs = (total / price * 3600.0).floor();
                if secs.is_finite() && secs < 1e9 {
                    // Truncation is intended: stop at or before the last affordable second.
                    candidates.push((
                        start + chrono::Duration::seconds(secs as i64),
                        StopCause::Budget,
                    ));
                }
            }
        }
        candidates.into_iter().min_by_key(|(t, _)| *t)
    }

    /// The price the plan declares for its instance (ssh hosts), or zero for this machine.
    pub fn declared_price(&self) -> Option<f64> {
        match self.instance.provider {
            ProviderKind::Local => Some(0.0),
            _ => self.instance.hourly_price_usd,
        }
    }

    /// The port the served API is reached on (the first `access.ports` entry).
    pub fn api_port(&self) -> Option<PortForward> {
        self.access.ports.first().copied()
    }
}

/// Durations serialise as humane strings ("1h 30m") in JSON output.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => serialize_one(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn serialize_one<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}
