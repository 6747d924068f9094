//! `gpuctl notebook PLAN -o lab.ipynb` and `gpuctl evidence import PLAN BUNDLE.zip`.

use std::path::Path;

use chrono::Utc;

use crate::cli::NotebookArgs;
use crate::colab::{self, notebook};
use crate::exit::Exit;

/// A checked free_colab plan and its text, or the exit status of a refusal.
fn checked_plan(
    path: &Path,
    at: chrono::DateTime<Utc>,
) -> Result<(crate::plan::Plan, String), Exit> {
    let checked = crate::plan::check_file(path, at);
    for p in &checked.problems {
        crate::note!("{p}");
    }
    let (Some(plan), Some(source)) = (checked.plan, checked.source) else {
        crate::note!("{}: refused", path.display());
        return Err(Exit::Refused);
    };
    if let Some(why) = notebook::refusal(&plan) {
        crate::error_line!("{}: {why}", path.display());
        return Err(Exit::Refused);
    }
    Ok((plan, source.text))
}

pub fn run(args: NotebookArgs) -> anyhow::Result<Exit> {
    let now = Utc::now();
    let (plan, text) = match checked_plan(&args.plan, now) {
        Ok(p) => p,
        Err(exit) => return Ok(exit),
    };
    if args.output.exists() && !args.force {
        crate::error_line!(
            "{} exists; pass --force to overwrite it",
            args.output.display()
        );
        return Ok(Exit::Refused);
    }
    let mut cases = Vec::new();
    if let Some(file) = &plan.eval.cases_file {
        let dir = args.plan.parent().unwrap_or(Path::new("."));
        match crate::plan::read_cases_file(&dir.join(file)) {
            Ok(c) => cases.extend(c),
            Err(problems) => {
                for p in problems {
                    crate::note!("{p}");
                }
                return Ok(Exit::Refused);
            }
        }
    }
    cases.extend(plan.eval.cases.iter().cloned());
    let nb = notebook::notebook(&plan, &text, &cases, now);
    std::fs::write(&args.output, serde_json::to_string_pretty(&nb)?)?;
    let deadline = nb["metadata"]["gpuctl"]["deadline"].as_str().unwrap_or("-");
    if crate::output::json() {
        crate::output::printer().doc(&serde_json::json!({
            "notebook": args.output,
            "deadline": deadline,
            "evidence_zip": format!("gpuctl-evidence-{}.zip", plan.name),
        }))?;
    } else {
        crate::out!("{}", args.output.display());
    }
    crate::note!(
        "wrote {}: its hard stop is {deadline}; open it in Colab, run all cells, download the zip, then `gpuctl evidence import {} gpuctl-evidence-{}.zip`",
        args.output.display(),
        args.plan.display(),
        plan.name
    );
    Ok(Exit::Done)
}

pub fn import(plan_path: &Path, zip: &Path) -> anyhow::Result<Exit> {
    // The zip first: nothing is recorded unless all of it is sound.
    let imported = match colab::read_zip(zip) {
        Ok(i) => i,
        Err(e) => {
            crate::error_line!("{e}");
            return Ok(Exit::Refused);
        }
    };
    // The plan is checked as of the notebook's start: its hard stop has passed since.
    let (plan, text) = match checked_plan(plan_path, imported.started_at) {
        Ok(p) => p,
        Err(exit) => return Ok(exit),
    };
    let sha = crate::evidence::sha256_hex(text.as_bytes());
    if imported.stop["plan_sha256"].as_str() != Some(sha.as_str()) {
        crate::error_line!(
            "{} was made from another version of {} (its sha256 {}, the file's {sha}); import it with the plan the notebook was written from; nothing was imported",
            zip.display(),
            plan_path.display(),
            imported.stop["plan_sha256"].as_str().unwrap_or("unknown")
        );
        return Ok(Exit::Refused);
    }
    let home = crate::home::gpuctl_home()?;
    let s = colab::record(&home, plan_path, &plan, &text, zip, imported)?;
    if crate::output::json() {
        crate::out!(
            "{}",
            serde_json::json!({ "session_id": s.id, "bundle": s.bundle, "state": "stopped" })
        );
    } else {
        crate::out!("{}", s.bundle.display());
        crate::note!("session {} recorded (free_colab, cost $0.00); `gpuctl audit` and its report.html show it", s.id);
    }
    Ok(Exit::Done)
}
