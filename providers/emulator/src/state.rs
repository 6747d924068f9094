//! The emulated clouds' shared state: instances with their lifecycle clocks, the faults the
//! tests ask for, capacity, revoked keys and rate-limit clocks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cloud {
    Lambda,
    Runpod,
    Vast,
}

/// One fault, consumed `times` times by matching requests.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Fault {
    pub provider: Cloud,
    /// launch | terminate | get | list | any
    pub op: String,
    /// http500 | timeout | capacity | created_then_timeout | never_complete |
    /// success_false_created; on the wire (any op): html | non_json | empty_json
    pub mode: String,
    pub times: u32,
}

#[derive(Debug, Clone)]
pub struct Inst {
    pub id: String,
    pub cloud: Cloud,
    pub name: String,
    pub instance_type: String,
    pub region: Option<String>,
    pub usd_per_hour: f64,
    pub created: Instant,
    pub created_at: DateTime<Utc>,
    /// When a terminate was accepted, and whether it will ever complete.
    pub terminate_at: Option<Instant>,
    pub never_complete: bool,
    /// The public key the launch asked for (RunPod's `PUBLIC_KEY`, Lambda's registered key).
    pub public_key: Option<String>,
    /// What the instance turns into once booted instead of running (a `fate` fault): the
    /// provider's own word (Vast `exited`/`offline`/`unknown`, Lambda `unhealthy`/`preempted`).
    pub fate: Option<String>,
    /// The key the provider gives the instance itself (RunPod `RUNPOD_API_KEY`, Vast
    /// `CONTAINER_API_KEY`): valid for this instance alone.
    pub scoped_key: String,
    /// Who asked for the terminate that ended it ("account key" or "scoped key"), and when.
    pub terminated_by: Option<String>,
    pub terminate_requested_at: Option<DateTime<Utc>>,
}

/// A key registered with Lambda (`/ssh-keys`).
#[derive(Debug, Clone, Serialize)]
pub struct SshKey {
    pub id: String,
    pub name: String,
    pub public_key: String,
}

/// What an instance is now, from its clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Booting,
    Running,
    /// Booted into its fate instead of running: it never serves, and still bills.
    Failed,
    Terminating,
    Terminated,
}

pub struct State {
    pub boot: Duration,
    pub terminate: Duration,
    pub ssh_host: String,
    pub ssh_port: u16,
    pub key: String,
    pub instances: BTreeMap<String, Inst>,
    pub faults: Vec<Fault>,
    pub no_capacity: HashSet<(Cloud, String)>,
    pub revoked: HashSet<Cloud>,
    pub next_id: u64,
    /// Lambda's documented limits: about 1 request/s, one launch per 10 s.
    pub lambda_pace: Duration,
    pub lambda_launch_pace: Duration,
    pub lambda_last: Option<Instant>,
    pub lambda_last_launch: Option<Instant>,
    pub requests: u64,
    pub lambda_keys: Vec<SshKey>,
    /// Vast's per-endpoint minimum intervals, on or off (`--vast-rate-limits`), and when
    /// each endpoint was last called.
    pub vast_limits: bool,
    pub vast_last: HashMap<&'static str, Instant>,
    /// Every request that broke the provider's contract, in words.
    pub violations: Vec<String>,
    /// Requests answered 429 (a client that paces itself as documented gets none).
    pub throttled: u64,
    /// `--request-log`: every request received, one JSON line each.
    pub request_log: Option<std::fs::File>,
}

/// The emulator's price list (the same numbers as `providers/catalog.toml`).
pub const TYPES: &[(Cloud, &str, f64)] = &[
    (Cloud::Lambda, "gpu_1x_a10", 0.75),
    (Cloud::Lambda, "gpu_1x_a100", 1.29),
    (Cloud::Runpod, "NVIDIA GeForce RTX 4090", 0.69),
    (Cloud::Runpod, "NVIDIA RTX A5000", 0.27),
    (Cloud::Vast, "RTX 3090", 0.22),
    (Cloud::Vast, "RTX 4090", 0.38),
];

pub fn price(cloud: Cloud, t: &str) -> Option<f64> {
    TYPES
        .iter()
        .find(|(c, n, _)| *c == cloud && *n == t)
        .map(|(_, _, p)| *p)
}

impl State {
    /// A request that broke the contract: answered with the provider's error by the
    /// caller, said on stderr, kept for `/_emulator/violations` and the request log.
    pub fn violation(&mut self, what: String) {
        eprintln!("contract violation: {what}");
        if let Some(f) = self.request_log.as_mut() {
            let _ = writeln!(f, "{}", serde_json::json!({ "violation": what }));
        }
        self.violations.push(what);
    }

    /// Append one request to the request log (never its headers: the key is there).
    pub fn log_request(&mut self, line: serde_json::Value) {
        if let Some(f) = self.request_log.as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Vast's per-endpoint limit: Some(threshold) when this call comes too soon.
    pub fn vast_too_soon(&mut self, endpoint: &'static str, every: Duration) -> bool {
        let now = Instant::now();
        let soon = self.vast_limits
            && self
                .vast_last
                .get(endpoint)
                .is_some_and(|t| now - *t < every);
        if soon {
            self.throttled += 1;
        } else {
            self.vast_last.insert(endpoint, now);
        }
        soon
    }

    pub fn phase(&self, i: &Inst) -> Phase {
        let now = Instant::now();
        match i.terminate_at {
            Some(t) if i.never_complete || now < t + self.terminate => Phase::Terminating,
            Some(_) => Phase::Terminated,
            None if now < i.created + self.boot => Phase::Booting,
            // Preempted: the provider ended it, billing with it.
            None if i.fate.as_deref() == Some("preempted") => Phase::Terminated,
            None if i.fate.is_some() => Phase::Failed,
            None => Phase::Running,
        }
    }

    /// Take one matching fault, if any (wire faults are taken before, by `wire_fault`).
    pub fn fault(&mut self, cloud: Cloud, op: &str) -> Option<String> {
        let f = self.faults.iter_mut().find(|f| {
            f.provider == cloud
                && (f.op == op || f.op == "any")
                && f.times > 0
                && !crate::wire::MODES.contains(&f.mode.as_str())
        })?;
        f.times -= 1;
        Some(f.mode.clone())
    }

    /// Take one matching wire fault (an answer that is not the provider's), if any.
    pub fn wire_fault(&mut self, cloud: Cloud, op: &str) -> Option<String> {
        let f = self.faults.iter_mut().find(|f| {
            f.provider == cloud
                && (f.op == op || f.op == "any")
                && f.times > 0
                && crate::wire::MODES.contains(&f.mode.as_str())
        })?;
        f.times -= 1;
        Some(f.mode.clone())
    }

    /// The fate a launch fault gives its instance (`boots_to_<state>`).
    pub fn fate_of(fault: Option<&str>) -> Option<String> {
        fault?.strip_prefix("boots_to_").map(String::from)
    }

    pub fn create(&mut self, cloud: Cloud, name: &str, t: &str, region: Option<String>) -> String {
        self.next_id += 1;
        let id = match cloud {
            Cloud::Lambda => format!("{:032x}", self.next_id),
            Cloud::Runpod => format!("pod{:010}", self.next_id),
            Cloud::Vast => format!("{}", 1_000_000 + self.next_id),
        };
        self.instances.insert(
            id.clone(),
            Inst {
                id: id.clone(),
                cloud,
                name: name.to_string(),
                instance_type: t.to_string(),
                region,
                usd_per_hour: price(cloud, t).unwrap_or(1.0),
                created: Instant::now(),
                created_at: Utc::now(),
                terminate_at: None,
                never_complete: false,
                public_key: None,
                fate: None,
                scoped_key: format!(
                    "scoped-{}-{:016x}",
                    self.next_id,
                    scoped_nonce(self.next_id)
                ),
                terminated_by: None,
                terminate_requested_at: None,
            },
        );
        id
    }

    /// The instance a bearer key is scoped to, if it is one of the instance keys.
    pub fn scoped_instance(&self, bearer: &str) -> Option<String> {
        self.instances
            .values()
            .find(|i| !bearer.is_empty() && i.scoped_key == bearer)
            .map(|i| i.id.clone())
    }

    /// Accept a terminate (`by`: which key asked): it completes after the terminate delay,
    /// unless a fault says never.
    pub fn terminate(&mut self, id: &str, never_complete: bool, by: &str) -> bool {
        let ended = self
            .instances
            .get(id)
            .is_some_and(|i| self.phase(i) == Phase::Terminated);
        let Some(i) = self.instances.get_mut(id).filter(|_| !ended) else {
            return false;
        };
        if i.terminate_at.is_none() {
            i.terminate_at = Some(Instant::now());
            i.terminated_by = Some(by.to_string());
            i.terminate_requested_at = Some(Utc::now());
        }
        i.never_complete = never_complete;
        true
    }

    /// Seconds billed so far: from creation until the terminate completed (or now).
    pub fn billed(&self, i: &Inst) -> f64 {
        let end = match (i.terminate_at, self.phase(i)) {
            (Some(t), Phase::Terminated) => t + self.terminate,
            (None, Phase::Terminated) => i.created + self.boot,
            _ => Instant::now(),
        };
        (end - i.created).as_secs_f64()
    }
}

/// A per-instance nonce for scoped keys (not a secret worth more than a test needs).
fn scoped_nonce(n: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    (t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left(17)
}
