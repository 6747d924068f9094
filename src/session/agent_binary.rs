//! What a remote deploy needs to know of the agent binary: its sha256 (the name it has on
//! a host, so one upload serves every later session) and the newest glibc it links
//! against. Reading 30 MB for that on every `up` was a visible part of a cached deploy, so
//! the facts are kept in `$GPUCTL_HOME/cache/agent-binaries.tsv`, keyed by the binary's
//! path, size and modification time (to the nanosecond): a rebuilt binary changes them.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Context;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFacts {
    pub sha256: String,
    pub size: u64,
    /// The newest `GLIBC_2.x` symbol version the binary needs (None: static, or none found).
    pub glibc: Option<(u32, u32)>,
}

/// At most this many binaries are remembered (a developer switches between a few builds).
const KEEP: usize = 16;

fn cache_file(home: &Path) -> PathBuf {
    home.join("cache").join("agent-binaries.tsv")
}

/// The facts of `bin`, from the cache when its path, size and mtime match; a cache that
/// cannot be read or written only costs the hashing.
pub fn facts(home: &Path, bin: &Path) -> anyhow::Result<AgentFacts> {
    let meta = std::fs::metadata(bin).with_context(|| format!("reading {}", bin.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let path = std::fs::canonicalize(bin).unwrap_or_else(|_| bin.to_path_buf());
    let key = format!("{}\t{}\t{mtime}", path.display(), meta.len());
    let file = cache_file(home);
    let cached = std::fs::read_to_string(&file).unwrap_or_default();
    if let Some(hit) = cached.lines().find_map(|l| parse(l, &key)) {
        return Ok(hit);
    }
    let bytes = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    let facts = AgentFacts {
        sha256: crate::evidence::sha256_hex(&bytes),
        size: bytes.len() as u64,
        glibc: super::remote_host::glibc_needed(&bytes),
    };
    let glibc = facts
        .glibc
        .map(|(a, b)| format!("{a}.{b}"))
        .unwrap_or_else(|| "-".into());
    let prefix = format!("{}\t", path.display());
    let mut lines: Vec<String> = cached
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .map(String::from)
        .collect();
    lines.push(format!("{key}\t{}\t{glibc}", facts.sha256));
    let skip = lines.len().saturating_sub(KEEP);
    let text: String = lines[skip..].iter().map(|l| format!("{l}\n")).collect();
    let _ = write_atomically(&file, &text);
    Ok(facts)
}

fn parse(line: &str, key: &str) -> Option<AgentFacts> {
    let rest = line.strip_prefix(key)?.strip_prefix('\t')?;
    let (sha, glibc) = rest.split_once('\t')?;
    let size = key.rsplit('\t').nth(1)?.parse().ok()?;
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let glibc = match glibc.split_once('.') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => None,
    };
    Some(AgentFacts {
        sha256: sha.to_string(),
        size,
        glibc,
    })
}

fn write_atomically(file: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_cached_by_path_size_and_mtime_and_a_changed_binary_is_hashed_again() {
        let dir = tempfile::tempdir().expect("dir");
        let home = dir.path().join("home");
        let bin = dir.path().join("agent");
        std::fs::write(&bin, b"one GLIBC_2.31 GLIBC_2.17").expect("write");
        let first = facts(&home, &bin).expect("facts");
        assert_eq!(first.size, 25);
        assert_eq!(first.glibc, Some((2, 31)));
        assert_eq!(facts(&home, &bin).expect("cached"), first);
        assert!(std::fs::read_to_string(cache_file(&home))
            .expect("cache")
            .contains(&first.sha256));
        // Rebuilt: another size and mtime, another hash.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&bin, b"two, longer GLIBC_2.34").expect("write");
        let second = facts(&home, &bin).expect("facts");
        assert_ne!(second.sha256, first.sha256);
        assert_eq!(second.glibc, Some((2, 34)));
        // A damaged cache line is ignored, never trusted.
        std::fs::write(cache_file(&home), "garbage\tline\n").expect("write");
        assert_eq!(facts(&home, &bin).expect("facts"), second);
    }
}
