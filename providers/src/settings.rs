//! What the environment configures for the provider clients, read once: each cloud's API
//! base (a proxy, or the emulator in tests), the request timeout, where the credentials
//! file is. API keys are secrets and are read where a client is made, never kept here.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::{lambda, runpod, vast, ProviderKind};

#[derive(Debug, Clone)]
pub struct Settings {
    /// `GPUCTL_LAMBDA_API`, `GPUCTL_RUNPOD_API`, `GPUCTL_VAST_API`, else the documented base.
    pub lambda_api: String,
    pub runpod_api: String,
    pub vast_api: String,
    /// `GPUCTL_API_TIMEOUT_MS` (default 30 s): one request's limit.
    pub api_timeout: Duration,
    /// `GPUCTL_EMULATOR_UNPACED=1`: benchmarks lift the client's pacing (loopback APIs only).
    pub unpaced: bool,
    /// `$XDG_CONFIG_HOME`, else `~/.config`: where `gpuctl/credentials.toml` is.
    pub config_dir: Option<PathBuf>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// The provider settings of this process, read from the environment on first use.
pub fn settings() -> &'static Settings {
    SETTINGS.get_or_init(Settings::from_env)
}

fn text(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Settings {
    pub fn from_env() -> Settings {
        let path = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Settings {
            lambda_api: text("GPUCTL_LAMBDA_API").unwrap_or_else(|| lambda::DEFAULT_BASE.into()),
            runpod_api: text("GPUCTL_RUNPOD_API").unwrap_or_else(|| runpod::DEFAULT_BASE.into()),
            vast_api: text("GPUCTL_VAST_API").unwrap_or_else(|| vast::DEFAULT_BASE.into()),
            api_timeout: text("GPUCTL_API_TIMEOUT_MS")
                .and_then(|v| v.trim().parse().ok())
                .map(Duration::from_millis)
                .unwrap_or(Duration::from_secs(30)),
            unpaced: std::env::var("GPUCTL_EMULATOR_UNPACED").is_ok_and(|v| v == "1"),
            config_dir: path("XDG_CONFIG_HOME").or_else(|| path("HOME").map(|h| h.join(".config"))),
        }
    }

    /// The API base of a cloud (None for local and SSH hosts).
    pub fn api_base(&self, kind: ProviderKind) -> Option<&str> {
        match kind {
            ProviderKind::Lambda => Some(&self.lambda_api),
            ProviderKind::Runpod => Some(&self.runpod_api),
            ProviderKind::Vast => Some(&self.vast_api),
            ProviderKind::Local | ProviderKind::Ssh => None,
        }
    }
}
