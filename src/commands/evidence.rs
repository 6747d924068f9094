//! `gpuctl evidence ID [verify]`: where a session's bundle is, what it holds, and whether
//! it is intact (every file in MANIFEST.sha256 hashes the same, every file the plan asked
//! for is there).

use std::path::Path;

use serde::Serialize;

use super::open_db;
use crate::cli::EvidenceArgs;
use crate::evidence::{sha256_file, MANIFEST};
use crate::exit::Exit;

#[derive(Serialize)]
struct Finding {
    file: String,
    problem: String,
}

pub fn run(args: EvidenceArgs) -> anyhow::Result<Exit> {
    if let Some(crate::cli::EvidenceImport::Import { plan, zip }) = args.import {
        return super::notebook::import(&plan, &zip);
    }
    let Some(id) = args.id.as_deref() else {
        crate::error_line!("give a session id (`gpuctl ls` lists them), or `gpuctl evidence import PLAN BUNDLE.zip`");
        return Ok(Exit::Refused);
    };
    let db = open_db()?;
    let session = db.get_session(id)?;
    let Some(dir) = session.evidence_dir.clone() else {
        crate::note!("session {} has no evidence folder recorded", session.id);
        return Ok(Exit::Failed);
    };
    let dir = Path::new(&dir);
    let rows = db.evidence_rows(&session.id)?;
    if args.action.as_deref() != Some("verify") {
        if crate::output::json() {
            crate::out!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "session_id": session.id, "bundle": dir, "state": session.state, "files": rows })
                )?
            );
        } else {
            crate::out!("{}", dir.display());
            for r in &rows {
                let size = r.size.map(|s| format!("{s} bytes")).unwrap_or_default();
                crate::note!("  {:<8} {:<32} {size}", r.status, r.path);
            }
        }
        return Ok(Exit::Done);
    }

    let mut findings = Vec::new();
    let manifest = std::fs::read_to_string(dir.join(MANIFEST));
    match &manifest {
        Err(e) => findings.push(Finding {
            file: MANIFEST.into(),
            problem: format!("cannot be read: {e}"),
        }),
        Ok(text) => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let Some((hash, name)) = line.split_once("  ") else {
                    findings.push(Finding {
                        file: MANIFEST.into(),
                        problem: format!("malformed line {line:?}"),
                    });
                    continue;
                };
                match sha256_file(&dir.join(name)) {
                    Ok((actual, _)) if actual == hash => {}
                    Ok(_) => findings.push(Finding {
                        file: name.into(),
                        problem: "changed since the session (sha256 differs)".into(),
                    }),
                    Err(_) => findings.push(Finding {
                        file: name.into(),
                        problem: "listed in the manifest but missing".into(),
                    }),
                }
            }
            // Files added after the fact are not covered by the manifest.
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name != MANIFEST && !text.lines().any(|l| l.ends_with(&format!("  {name}")))
                    {
                        findings.push(Finding {
                            file: name,
                            problem: "not in the manifest (added after the session)".into(),
                        });
                    }
                }
            }
        }
    }
    // What the plan asked for.
    let plan = crate::plan::check_str("plan.toml", &session.plan_text, session.created_at);
    if let Some(plan) = plan.plan {
        for f in &plan.evidence.copy_back {
            if !dir.join(f).is_file() {
                findings.push(Finding {
                    file: f.clone(),
                    problem: "the plan asked for it; the bundle does not hold it".into(),
                });
            }
        }
    }
    let ok = findings.is_empty();
    if crate::output::json() {
        crate::out!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "session_id": session.id, "bundle": dir, "ok": ok, "problems": findings })
            )?
        );
    } else if ok {
        crate::out!(
            "{}: intact ({} files match MANIFEST.sha256; every file the plan asked for is there)",
            dir.display(),
            manifest.map(|m| m.lines().count()).unwrap_or(0)
        );
    } else {
        for f in &findings {
            crate::error_line!("{}: {}", f.file, f.problem);
        }
        crate::note!(
            "{}: NOT intact ({} problem(s))",
            dir.display(),
            findings.len()
        );
    }
    Ok(if ok { Exit::Done } else { Exit::Failed })
}
