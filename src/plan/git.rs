//! Where a plan came from: the git commit of the plan file, when it sits in a repository.

use std::path::Path;
use std::process::Command;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitProvenance {
    /// The last commit that touched the plan file.
    pub commit: String,
    /// The file differs from that commit (or is untracked).
    pub dirty: bool,
}

/// `None` when git is missing, the file is not in a repository, or was never committed.
pub fn provenance(plan_path: &Path) -> Option<GitProvenance> {
    let dir = plan_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = plan_path.file_name()?;
    let run = |args: &[&std::ffi::OsStr]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = run(&[
        "log".as_ref(),
        "-1".as_ref(),
        "--format=%H".as_ref(),
        "--".as_ref(),
        file,
    ])?;
    if commit.is_empty() {
        return None;
    }
    let status = run(&[
        "status".as_ref(),
        "--porcelain".as_ref(),
        "--".as_ref(),
        file,
    ])?;
    Some(GitProvenance {
        commit,
        dirty: !status.is_empty(),
    })
}
