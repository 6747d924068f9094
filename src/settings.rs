//! What this machine's environment configures, read once when gpuctl starts: where state
//! lives, which agent binary to deploy, the SSH fallbacks, the stop's patience. Every
//! module asks `settings()` instead of reading variables of its own, so the whole list is
//! here, with its defaults (README "Environment").
//!
//! Secrets are not kept here: `secret(NAME)` reads one where it is used and nothing holds
//! it longer than that use (API keys are the providers crate's, through its credentials).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    /// `$HOME` (known_hosts, `~` in plans, the default data and config folders).
    pub user_home: Option<PathBuf>,
    /// `$GPUCTL_HOME`: the session database, run folders and evidence (default below).
    pub gpuctl_home: Option<PathBuf>,
    /// `$XDG_DATA_HOME` (gpuctl's data is `$XDG_DATA_HOME/gpuctl` without GPUCTL_HOME).
    pub xdg_data_home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME` (the systemd user unit, config.toml).
    pub xdg_config_home: Option<PathBuf>,
    /// `$GPUCTL_AGENT_BIN`: the agent to deploy (else next to gpuctl).
    pub agent_bin: Option<PathBuf>,
    /// `$GPUCTL_DAEMON_IDENTITY`: the daemon host's own SSH key, for SSH sessions whose
    /// plan identity is not on this machine.
    pub daemon_identity: Option<PathBuf>,
    /// `$SSH_AUTH_SOCK` is set: ssh-agent's keys are offered after the plan's identity.
    pub ssh_agent: bool,
    /// `$HF_ENDPOINT`: a Hugging Face mirror the hub token may also be sent to.
    pub hf_endpoint: Option<String>,
    /// `$GPUCTL_STOP_CONFIRM_WINDOW` (default 90 s): how long one stop asks the provider
    /// before recording `stop_unconfirmed` (the daemon retries after).
    pub stop_confirm_window: Duration,
    /// `$GPUCTL_LAMBDA_SSH_KEY_NAME`: a key already registered with Lambda.
    pub lambda_ssh_key_name: Option<String>,
    /// `$GPUCTL_DATABASE_URL` is set (it selects the store; the URL itself is the store
    /// crate's to read, as it may hold a password).
    pub database_url_from_env: bool,
    /// `$NO_COLOR` is set: no colour even on a terminal.
    pub no_color: bool,
    /// `$USER`, for events that say who asked.
    pub user: Option<String>,
    /// `$RUST_LOG`: a tracing filter that replaces -v/-vv.
    pub rust_log: Option<String>,
    /// `$GPUCTL_LOG_FORMAT=json`: diagnostics as JSON lines.
    pub log_json: bool,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// The settings of this process, read from the environment on first use.
pub fn settings() -> &'static Settings {
    SETTINGS.get_or_init(Settings::from_env)
}

/// A secret from the environment (a token, a passphrase, a webhook URL), read at its use.
/// Empty counts as unset.
pub fn secret(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn text(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Settings {
    pub fn from_env() -> Settings {
        Settings {
            user_home: path("HOME"),
            gpuctl_home: path("GPUCTL_HOME"),
            xdg_data_home: path("XDG_DATA_HOME"),
            xdg_config_home: path("XDG_CONFIG_HOME"),
            agent_bin: path("GPUCTL_AGENT_BIN"),
            daemon_identity: path("GPUCTL_DAEMON_IDENTITY"),
            ssh_agent: std::env::var_os("SSH_AUTH_SOCK").is_some(),
            hf_endpoint: text("HF_ENDPOINT"),
            stop_confirm_window: text("GPUCTL_STOP_CONFIRM_WINDOW")
                .and_then(|v| humantime::parse_duration(&v).ok())
                .unwrap_or(Duration::from_secs(90)),
            lambda_ssh_key_name: text("GPUCTL_LAMBDA_SSH_KEY_NAME"),
            database_url_from_env: text("GPUCTL_DATABASE_URL").is_some(),
            no_color: std::env::var_os("NO_COLOR").is_some(),
            user: text("USER"),
            rust_log: text("RUST_LOG"),
            log_json: std::env::var("GPUCTL_LOG_FORMAT").is_ok_and(|f| f == "json"),
        }
    }

    /// `~/...` made absolute with `$HOME` (a path as the plan wrote it otherwise).
    pub fn expand_home(&self, p: &std::path::Path) -> PathBuf {
        match (p.strip_prefix("~"), &self.user_home) {
            (Ok(rest), Some(home)) => home.join(rest),
            _ => p.to_path_buf(),
        }
    }

    /// Where gpuctl keeps its state: `$GPUCTL_HOME`, else `$XDG_DATA_HOME/gpuctl`, else
    /// `~/.local/share/gpuctl`.
    pub fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(h) = &self.gpuctl_home {
            return Ok(h.clone());
        }
        if let Some(d) = &self.xdg_data_home {
            return Ok(d.join("gpuctl"));
        }
        match &self.user_home {
            Some(h) => Ok(h.join(".local/share/gpuctl")),
            None => anyhow::bail!("cannot find a data directory: set GPUCTL_HOME (or HOME)"),
        }
    }

    /// `$XDG_CONFIG_HOME`, else `~/.config`.
    pub fn config_dir(&self) -> Option<PathBuf> {
        self.xdg_config_home
            .clone()
            .or_else(|| self.user_home.as_ref().map(|h| h.join(".config")))
    }

    /// The user's known_hosts file (`~/.ssh/known_hosts`).
    pub fn known_hosts(&self) -> PathBuf {
        self.user_home
            .clone()
            .unwrap_or_default()
            .join(".ssh/known_hosts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare() -> Settings {
        Settings {
            user_home: Some("/home/u".into()),
            gpuctl_home: None,
            xdg_data_home: None,
            xdg_config_home: None,
            agent_bin: None,
            daemon_identity: None,
            ssh_agent: false,
            hf_endpoint: None,
            stop_confirm_window: Duration::from_secs(90),
            lambda_ssh_key_name: None,
            database_url_from_env: false,
            no_color: false,
            user: None,
            rust_log: None,
            log_json: false,
        }
    }

    #[test]
    fn the_data_dir_prefers_gpuctl_home_then_xdg_then_home() {
        let mut s = bare();
        assert_eq!(
            s.data_dir().expect("dir"),
            PathBuf::from("/home/u/.local/share/gpuctl")
        );
        s.xdg_data_home = Some("/x".into());
        assert_eq!(s.data_dir().expect("dir"), PathBuf::from("/x/gpuctl"));
        s.gpuctl_home = Some("/g".into());
        assert_eq!(s.data_dir().expect("dir"), PathBuf::from("/g"));
        s.user_home = None;
        s.gpuctl_home = None;
        s.xdg_data_home = None;
        assert!(s.data_dir().is_err());
    }

    #[test]
    fn a_tilde_is_the_users_home() {
        let s = bare();
        assert_eq!(
            s.expand_home("~/.ssh/id".as_ref()),
            PathBuf::from("/home/u/.ssh/id")
        );
        assert_eq!(s.expand_home("/abs".as_ref()), PathBuf::from("/abs"));
        assert_eq!(s.config_dir(), Some(PathBuf::from("/home/u/.config")));
    }
}
