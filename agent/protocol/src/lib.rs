//! The one place that defines what crosses the wire between the `gpuctl` controller and
//! `gpuctl-agent`: the agent's config file, its status answer, and its final record.
//!
//! Serde only, so both sides (and nothing else) depend on it. Changing a field here is a
//! protocol change: bump [`PROTOCOL_VERSION`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Bumped whenever a type below changes shape.
pub const PROTOCOL_VERSION: u32 = 2;

/// Written by the controller, read by the agent at start (`gpuctl-agent serve --config FILE`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub protocol: u32,
    pub session_id: String,
    /// The absolute moment the agent stops serving, whatever the controller does.
    pub deadline: DateTime<Utc>,
    /// Evidence is flushed this many seconds before the deadline.
    pub grace_secs: u64,
    /// Port on 127.0.0.1 where the agent serves its API.
    pub listen_port: u16,
    /// File holding the bearer token every request must present (never the token itself).
    pub token_file: String,
    /// Folder where the agent writes its evidence files.
    pub evidence_dir: String,
    pub model: ModelConfig,
    /// What the agent runs on the host after it stops serving at the deadline.
    #[serde(default)]
    pub stop_action: StopAction,
    /// GPUs the model may use (the plan's `instance.gpus`).
    #[serde(default)]
    pub gpus: u32,
    /// The GPUs the controller placed this session on, as `CUDA_VISIBLE_DEVICES` ("0,1";
    /// "" hides every GPU). `None` leaves the variable as the host has it.
    #[serde(default)]
    pub cuda_visible_devices: Option<String>,
    /// Layer 1 ending billing: on a cloud that gives each instance a key scoped to
    /// itself, the agent terminates its own instance at the deadline when no controller is
    /// there to do it. Which provider, and its API base (never a key: the agent finds the
    /// instance's own key on the host).
    #[serde(default)]
    pub self_terminate: Option<SelfTerminate>,
    /// The host's wall clock minus the controller's, measured over SSH at deploy (round
    /// trip corrected): the deadline in host time is `deadline + clock_offset_ms`, so a
    /// host clock minutes off still stops on time.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
    /// The round trip of that measurement (its uncertainty is half of it).
    #[serde(default)]
    pub clock_rtt_ms: Option<u64>,
    /// Time left to the deadline when the controller wrote this config: the agent also
    /// counts it down on its monotonic clock, which no wall-clock step can move.
    #[serde(default)]
    pub remaining_ms: Option<u64>,
    /// `stop.idle`: stop once no API request has come for this many seconds (the hard
    /// stop still applies).
    #[serde(default)]
    pub idle_secs: Option<u64>,
    /// The plan's `[setup]`, run by the agent (its watchdog already armed) before the model
    /// loads or the server starts.
    #[serde(default)]
    pub setup: Option<SetupConfig>,
    /// File (mode 0600, in the agent's folder) holding the controller's `HF_TOKEN`: the
    /// agent reads it into its environment for the runtime and the fetch, and deletes it
    /// at its stop. Never the token itself, never argv.
    #[serde(default)]
    pub hf_token_file: Option<String>,
}

/// `[setup]`: a Python virtual environment with pinned packages and commands, built once
/// per distinct setup on a host and reused: it lives in `venvs/<key>` beside the
/// `sessions`/`run` folder that holds the agent's own folder (`<agent dir>/../../venvs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetupConfig {
    /// The hash of the plan's `[setup]` section (hex): the environment's name.
    pub key: String,
    /// "3.12": `python3.12` on the host's PATH, else `python3` if it is that version.
    #[serde(default)]
    pub python: Option<String>,
    /// `pip install` arguments: pinned requirements, and options (those starting with -).
    #[serde(default)]
    pub pip: Vec<String>,
    /// Shell commands run (`sh -c`) in order with the environment active, once when the
    /// environment is built.
    #[serde(default)]
    pub commands: Vec<String>,
}

/// Where the agent may end its own instance's billing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SelfTerminate {
    /// `runpod` (RUNPOD_API_KEY + RUNPOD_POD_ID) or `vast` (CONTAINER_API_KEY + CONTAINER_ID).
    pub provider: String,
    /// The provider's API base, as the controller uses it.
    pub api_base: String,
}

/// The file on the host the controller touches while it watches the session (every few
/// seconds): at the deadline, the agent ends billing itself only when it is stale.
pub const CONTROLLER_HEARTBEAT: &str = "controller.alive";
/// `gpuctl extend` writes the new deadline (RFC 3339, the controller's clock) to this file
/// in the agent's folder; the agent moves its watchdog by the difference (never earlier)
/// and answers in [`DEADLINE_APPLIED`] with the deadline it now keeps.
pub const DEADLINE_REQUEST: &str = "deadline.request";
pub const DEADLINE_APPLIED: &str = "deadline.applied";

/// How old the heartbeat may be for the controller to count as present.
pub const CONTROLLER_HEARTBEAT_STALE_SECS: u64 = 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub id: String,
    pub runtime: Runtime,
    /// Weights on the host (candle).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// The full server command (runtime = command); `{port}`, `{host}` and `{model}` are
    /// replaced by the agent.
    #[serde(default)]
    pub command: Vec<String>,
    /// `model.url` + `model.sha256`: one file the agent downloads on the host (into a cache
    /// shared by sessions, `<agent dir>/../../models/<sha256>/`), checks, and serves.
    #[serde(default)]
    pub fetch: Option<ModelFetch>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelFetch {
    pub url: String,
    /// Lowercase hex.
    pub sha256: String,
    /// Whether the hub token may go with the request (a Hugging Face host, or the one
    /// `HF_ENDPOINT` names): never to any other server.
    #[serde(default)]
    pub send_token: bool,
}

/// How the model is served.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Candle,
    Vllm,
    Sglang,
    Command,
}

impl Runtime {
    pub const ALL: [Runtime; 4] = [
        Runtime::Candle,
        Runtime::Vllm,
        Runtime::Sglang,
        Runtime::Command,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Candle => "candle",
            Runtime::Vllm => "vllm",
            Runtime::Sglang => "sglang",
            Runtime::Command => "command",
        }
    }
}

/// The agent's own last act at the deadline, run on the host with no network needed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind", content = "argv")]
pub enum StopAction {
    /// Stop serving and exit.
    #[default]
    Exit,
    /// Run this command (for example `sudo shutdown -h now` on a host the engineer owns).
    Command(Vec<String>),
}

/// Answer of the agent's `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentStatus {
    pub protocol: u32,
    pub session_id: String,
    pub version: String,
    pub ready: bool,
    pub model: String,
    pub deadline: DateTime<Utc>,
    /// What the agent itself can do about billing at the deadline, in words (whether it
    /// holds the instance's own scoped key).
    #[serde(default)]
    pub ends_billing: Option<String>,
}

/// The agent's final record, written before it exits (`final_record.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FinalRecord {
    pub session_id: String,
    pub stopped_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub reason: StopReason,
    /// What was stopped: the server, child processes with their PIDs.
    pub stopped: Vec<String>,
    /// The stop action's outcome, when one ran.
    pub stop_action: Option<String>,
    /// Why serving failed, when it did.
    #[serde(default)]
    pub failure: Option<String>,
    /// The runtime ran out of GPU or host memory (the controller's cue for `fallback.if_oom`).
    #[serde(default)]
    pub out_of_memory: bool,
    /// Every process the agent ran the model in (itself, a supervised server): after the
    /// stop, none of them may hold a GPU.
    #[serde(default)]
    pub pids: Vec<u32>,
    /// The agent's own terminate of its instance at the deadline: the provider's answer.
    #[serde(default)]
    pub self_terminate: Option<String>,
}

/// One compute process on a GPU, as NVML lists it (`gpuctl-agent gpu-procs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GpuProcess {
    pub gpu: u32,
    pub uuid: String,
    pub pid: u32,
    pub used_memory_mib: Option<u64>,
}

/// Answer of `gpuctl-agent gpu-procs`: `gpus` is None where NVML is not available.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GpuProcesses {
    pub gpus: Option<u32>,
    pub processes: Vec<GpuProcess>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Deadline,
    Signal,
    Requested,
    ServerFailed,
    /// `stop.idle`: no API request for the plan's idle window.
    Idle,
}

impl StopReason {
    /// The stops the agent reaches on its own (no one asked): after these it runs the
    /// plan's stop action and, with no controller watching, ends its instance's billing.
    pub fn is_own(self) -> bool {
        matches!(self, StopReason::Deadline | StopReason::Idle)
    }
}

/// How long the agent gives a supervised server after SIGTERM before SIGKILL.
pub const SERVER_TERM_SECS: u64 = 10;
/// How long the controller gives the agent after SIGTERM before SIGKILL: longer than the
/// agent's own wait for its server, so the agent is never killed half-way through it.
pub const AGENT_TERM_SECS: u64 = SERVER_TERM_SECS + 15;
const _: () = assert!(AGENT_TERM_SECS > SERVER_TERM_SECS + 5);

/// The environment a child process (the agent, a supervised server) is started with: the
/// parent's, cleared down to what running a model needs. Cloud API keys, the key
/// passphrase and anything named like a secret never reach code the plan runs.
pub mod child_env {
    /// Variables passed on by exact name.
    const NAMES: &[&str] = &[
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TERM",
        "LD_LIBRARY_PATH",
        "VIRTUAL_ENV",
        "CUDA_HOME",
        "CUDA_PATH",
        "HF_TOKEN",
        // glibc's allocator tuning (arenas, trim and mmap thresholds) for the agent and its server.
        "GLIBC_TUNABLES",
    ];
    /// Variables passed on by prefix: locale, CUDA and NVIDIA, Python, the model caches and
    /// runtimes, the thread pools, glibc's allocator (`MALLOC_ARENA_MAX`...), gpuctl's own
    /// switches.
    const PREFIXES: &[&str] = &[
        "LC_",
        "XDG_",
        "CUDA_",
        "NVIDIA_",
        "NCCL_",
        "PYTHON",
        "CONDA_",
        "HF_",
        "HUGGINGFACE_",
        "TRANSFORMERS_",
        "TORCH",
        "VLLM_",
        "SGLANG_",
        "OMP_",
        "MKL_",
        "OPENBLAS_",
        "RAYON_",
        "CANDLE_",
        "MALLOC_",
        "GPUCTL_",
    ];
    /// Never passed on, whatever the prefix says.
    fn secret(name: &str) -> bool {
        let upper = name.to_ascii_uppercase();
        upper.ends_with("_API_KEY")
            || upper.contains("SECRET")
            || upper.contains("PASSWORD")
            || upper.contains("PASSPHRASE")
    }

    pub fn allowed(name: &str) -> bool {
        !secret(name) && (NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p)))
    }

    /// This process's environment, filtered for a child.
    pub fn filtered() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        std::env::vars_os()
            .filter(|(k, _)| k.to_str().is_some_and(allowed))
            .collect()
    }
}

/// The evidence files the agent produces, by their names in the bundle.
pub mod evidence_files {
    /// The supervised server's process group, beside the evidence (not copied back): the
    /// controller kills what is left of the group when the agent could not.
    pub const SERVER_PGID: &str = "server.pgid";
    pub const ENVIRONMENT_REPORT: &str = "environment_report.txt";
    pub const REQUESTS: &str = "requests.jsonl";
    pub const GPU_METRICS: &str = "gpu_metrics.csv";
    pub const AGENT_LOG: &str = "agent.log";
    pub const FINAL_RECORD: &str = "final_record.json";
    /// `[setup]`'s output (pip, the commands), when the plan has one.
    pub const SETUP_LOG: &str = "setup.log";
}

#[cfg(test)]
mod tests {
    #[test]
    fn child_env_keeps_what_runs_a_model_and_drops_secrets() {
        use super::child_env::allowed;
        for keep in [
            "PATH",
            "HOME",
            "CUDA_VISIBLE_DEVICES",
            "HF_HOME",
            "HF_TOKEN",
            "LC_ALL",
            "MALLOC_ARENA_MAX",
            "GLIBC_TUNABLES",
        ] {
            assert!(allowed(keep), "{keep}");
        }
        for drop in [
            "LAMBDA_API_KEY",
            "RUNPOD_API_KEY",
            "VAST_API_KEY",
            "GPUCTL_KEY_PASSPHRASE",
            "OPENAI_API_KEY",
            "AWS_SECRET_ACCESS_KEY",
            "PGPASSWORD",
            "SSH_AUTH_SOCK",
            "GPUCTL_LAMBDA_API_KEY",
        ] {
            assert!(!allowed(drop), "{drop}");
        }
    }

    use super::*;

    #[test]
    fn stop_action_round_trips() {
        let a = StopAction::Command(vec!["sudo".into(), "poweroff".into()]);
        let json = serde_json::to_string(&a).expect("serialize");
        assert_eq!(json, r#"{"kind":"command","argv":["sudo","poweroff"]}"#);
        let back: StopAction = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, a);
    }
}
