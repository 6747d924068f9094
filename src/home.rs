//! Where gpuctl keeps its state: `$GPUCTL_HOME`, else the XDG data directory.

use std::path::PathBuf;

pub fn gpuctl_home() -> anyhow::Result<PathBuf> {
    crate::settings::settings().data_dir()
}
