//! Where gpuctl keeps its state: `$GPUCTL_HOME`, else the XDG data directory.

use std::path::PathBuf;

pub fn gpuctl_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("GPUCTL_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(data).join("gpuctl"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/gpuctl")),
        None => anyhow::bail!("cannot find a data directory: set GPUCTL_HOME (or HOME)"),
    }
}
