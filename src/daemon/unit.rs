//! `gpuctl daemon install`: a systemd user unit that keeps the daemon running (and starts
//! it at login), so that the third layer does not depend on a terminal staying open.

use std::path::{Path, PathBuf};

use anyhow::Context;

pub const UNIT_NAME: &str = "gpuctl-daemon.service";

/// `$XDG_CONFIG_HOME/systemd/user` (default `~/.config/systemd/user`).
pub fn unit_dir() -> anyhow::Result<PathBuf> {
    Ok(crate::settings::settings()
        .config_dir()
        .context("cannot find the systemd user folder: set HOME or XDG_CONFIG_HOME")?
        .join("systemd/user"))
}

/// The unit text: this gpuctl, this data directory, restarted whenever it stops.
pub fn unit_text(exe: &Path, home: &Path) -> String {
    format!(
        "[Unit]\n\
         Description=gpuctl daemon: enforces the hard stop of every gpuctl session\n\
         Documentation=https://github.com/gpuctl/gpuctl\n\
         \n\
         [Service]\n\
         Type=simple\n\
         Environment=GPUCTL_HOME={home}\n\
         ExecStart={exe} daemon\n\
         Restart=always\n\
         RestartSec=2\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        exe = exe.display(),
        home = home.display(),
    )
}
