//! `gpuctl evidence import PLAN BUNDLE.zip`: a notebook's evidence becomes a session like
//! any other (route free_colab, cost 0, the notebook's own stop record as its proof).
//!
//! The zip is checked whole, in memory, before anything is written: plain files only (no
//! links, no folders, no absolute or `..` paths), known names, every required file present,
//! sizes capped on what is actually inflated (not on what the headers claim).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use chrono::{DateTime, Utc};

/// Files the notebook writes; the first six must be there.
pub const REQUIRED: &[&str] = &[
    "environment_report.txt",
    "first_run.md",
    "eval_results.csv",
    "requests.jsonl",
    "stop_record.json",
    "colab_notes.md",
];
const OPTIONAL: &[&str] = &["gpu_metrics.csv"];
/// Per file, and for the whole archive once inflated.
const FILE_CAP: u64 = 16 * 1024 * 1024;
const TOTAL_CAP: u64 = 64 * 1024 * 1024;
const MAX_ENTRIES: usize = 64;

/// What a checked zip holds.
pub struct Imported {
    pub files: BTreeMap<String, Vec<u8>>,
    pub stop: serde_json::Value,
    pub started_at: DateTime<Utc>,
    pub stopped_at: DateTime<Utc>,
}

fn bad(zip: &Path, why: impl std::fmt::Display) -> String {
    format!("{}: {why}; nothing was imported", zip.display())
}

/// Read and check the notebook's zip. Err names the problem (and the fix, where there is one).
pub fn read_zip(path: &Path) -> Result<Imported, String> {
    let file = std::fs::File::open(path).map_err(|e| bad(path, format!("cannot open it ({e})")))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| bad(path, format!("not a zip archive ({e})")))?;
    if archive.len() > MAX_ENTRIES {
        return Err(bad(
            path,
            format!("{} entries (at most {MAX_ENTRIES})", archive.len()),
        ));
    }
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| bad(path, format!("entry {i} cannot be read ({e})")))?;
        let name = entry
            .name()
            .map_err(|e| bad(path, format!("entry {i} has an unreadable name ({e})")))?
            .to_string();
        if name.starts_with('/')
            || name.contains('\\')
            || name.split('/').any(|p| p == ".." || p == ".")
            || name.contains(':')
        {
            return Err(bad(
                path,
                format!("entry {name:?} has an absolute or escaping path"),
            ));
        }
        if entry.is_symlink() {
            return Err(bad(path, format!("entry {name:?} is a symbolic link")));
        }
        if entry.is_dir() || name.contains('/') {
            return Err(bad(
                path,
                format!("entry {name:?} is in a folder; the notebook's zip is flat"),
            ));
        }
        if !REQUIRED.contains(&name.as_str()) && !OPTIONAL.contains(&name.as_str()) {
            return Err(bad(
                path,
                format!(
                    "entry {name:?} is not a file the notebook writes (expected {})",
                    REQUIRED.join(", ")
                ),
            ));
        }
        // Inflate at most the cap plus one byte: a zip bomb stops here, whatever its headers say.
        let mut bytes = Vec::new();
        (&mut entry)
            .take(FILE_CAP + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(path, format!("entry {name:?} cannot be inflated ({e})")))?;
        if bytes.len() as u64 > FILE_CAP {
            return Err(bad(
                path,
                format!(
                    "entry {name:?} inflates past {} MiB (a zip bomb?)",
                    FILE_CAP >> 20
                ),
            ));
        }
        total += bytes.len() as u64;
        if total > TOTAL_CAP {
            return Err(bad(
                path,
                format!("the archive inflates past {} MiB", TOTAL_CAP >> 20),
            ));
        }
        if files.insert(name.clone(), bytes).is_some() {
            return Err(bad(path, format!("entry {name:?} appears twice")));
        }
    }
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|r| !files.contains_key(*r))
        .collect();
    if !missing.is_empty() {
        return Err(bad(
            path,
            format!(
                "{} missing; run the notebook's last cell again, it packs every file",
                missing.join(", ")
            ),
        ));
    }
    let stop: serde_json::Value = serde_json::from_slice(&files["stop_record.json"])
        .map_err(|e| bad(path, format!("stop_record.json is not JSON ({e})")))?;
    let time = |k: &str| -> Result<DateTime<Utc>, String> {
        stop[k]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| bad(path, format!("stop_record.json has no valid {k}")))
    };
    let started_at = time("started_at")?;
    let stopped_at = time("stopped_at")?;
    Ok(Imported {
        files,
        stop,
        started_at,
        stopped_at,
    })
}
