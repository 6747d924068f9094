//! API keys: from the provider's environment variable, else from
//! `$XDG_CONFIG_HOME/gpuctl/credentials.toml` (`[lambda] api_key = "..."`), which must not be
//! readable by anyone else (mode 0600 or stricter). A key is never printed: `ApiKey` has no
//! `Display` and its `Debug` is redacted.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::{ProviderError, ProviderKind};

#[derive(Clone)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// The key, for an Authorization header only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// The first 16 hex digits of the key's sha256: enough to tell two keys apart, useless
    /// for recovering either.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(self.0.as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A key given directly (tests, and the emulator's clients).
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }
}

pub fn env_var(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Lambda => "LAMBDA_API_KEY",
        ProviderKind::Runpod => "RUNPOD_API_KEY",
        ProviderKind::Vast => "VAST_API_KEY",
        ProviderKind::Local | ProviderKind::Ssh => "",
    }
}

pub fn credentials_file() -> Option<PathBuf> {
    Some(
        crate::settings::settings()
            .config_dir
            .as_ref()?
            .join("gpuctl/credentials.toml"),
    )
}

/// The key for `kind`, or a message that says where it was looked for and how to set it.
pub fn api_key(kind: ProviderKind) -> Result<ApiKey, ProviderError> {
    let var = env_var(kind);
    if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Ok(ApiKey(v.to_string_lossy().trim().to_string()));
    }
    let missing = || {
        ProviderError::Credentials(format!(
            "no API key for {kind}: set {var}, or put `[{kind}] api_key = \"...\"` in {} (mode 0600)",
            credentials_file()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "$XDG_CONFIG_HOME/gpuctl/credentials.toml".into())
        ))
    };
    let Some(path) = credentials_file() else {
        return Err(missing());
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(_) => return Err(missing()),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ProviderError::Credentials(format!(
            "{} is readable by others (mode {mode:03o}); it holds API keys: run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ProviderError::Credentials(format!("cannot read {}: {e}", path.display())))?;
    // The file's own errors are reported by position only: a parse error could quote a key.
    let table: toml::Table = text.parse().map_err(|_| {
        ProviderError::Credentials(format!(
            "{} is not valid TOML; expected `[{kind}] api_key = \"...\"`",
            path.display()
        ))
    })?;
    match table
        .get(kind.as_str())
        .and_then(|t| t.get("api_key"))
        .and_then(|k| k.as_str())
    {
        Some(k) if !k.trim().is_empty() => Ok(ApiKey(k.trim().to_string())),
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_never_shows_in_debug_output() {
        let k = ApiKey::new("secret-value-123");
        assert!(!format!("{k:?}").contains("secret"));
    }
}
