//! The evidence bundle: one folder per session, `MANIFEST.sha256` over all of it.

mod proof;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

pub use proof::{Check, CostRecord, ShutdownProofRecord};

pub const MANIFEST: &str = "MANIFEST.sha256";

pub struct Bundle {
    pub dir: PathBuf,
}

impl Bundle {
    pub fn create(dir: PathBuf) -> anyhow::Result<Bundle> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the evidence folder {}", dir.display()))?;
        Ok(Bundle { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
        let p = self.path(name);
        std::fs::write(&p, contents).with_context(|| format!("cannot write {}", p.display()))
    }

    pub fn write_json(&self, name: &str, value: &impl serde::Serialize) -> anyhow::Result<()> {
        self.write(name, serde_json::to_string_pretty(value)? + "\n")
    }

    /// Copy a regular file into the bundle. A link, a FIFO or a device (which code run by
    /// the plan could plant where the evidence is) is not followed, opened or copied.
    /// Returns whether it copied.
    pub fn copy_in(&self, from: &Path, name: &str) -> anyhow::Result<bool> {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::symlink_metadata(from) {
            Ok(m) if m.file_type().is_file() => {}
            _ => return Ok(false),
        }
        let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
        let mut src = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits())
            .open(from)
        {
            Ok(f) if f.metadata().is_ok_and(|m| m.file_type().is_file()) => f,
            _ => return Ok(false),
        };
        let mut dst = std::fs::File::create(self.path(name))
            .with_context(|| format!("cannot copy {} into the bundle", from.display()))?;
        std::io::copy(&mut src, &mut dst)
            .with_context(|| format!("cannot copy {} into the bundle", from.display()))?;
        Ok(true)
    }

    pub fn has(&self, name: &str) -> bool {
        self.path(name).is_file()
    }

    /// Write `MANIFEST.sha256` (`sha256sum -c` format) over every file but itself.
    pub fn write_manifest(&self) -> anyhow::Result<Vec<(String, String, u64)>> {
        let mut entries = Vec::new();
        collect(&self.dir, &self.dir, &mut entries)?;
        entries.sort();
        let mut rows = Vec::new();
        let mut text = String::new();
        for rel in entries {
            if rel == MANIFEST {
                continue;
            }
            let (hash, size) = sha256_file(&self.dir.join(&rel))?;
            text.push_str(&format!("{hash}  {rel}\n"));
            rows.push((rel, hash, size));
        }
        self.write(MANIFEST, text)?;
        Ok(rows)
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

pub fn sha256_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hex(&hasher.finalize()), size))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
