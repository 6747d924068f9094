//! `gpuctl plan new|check|show`.

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;

use crate::cli::{PlanCheckArgs, PlanNewArgs, PlanShowArgs, RouteArg};
use crate::exit::Exit;
use crate::plan::{self, Problem, Route};

pub fn new(args: PlanNewArgs) -> anyhow::Result<Exit> {
    let route = match args.route {
        RouteArg::LocalCpu => Route::LocalCpu,
        RouteArg::FreeColab => Route::FreeColab,
        RouteArg::RentedGpu => Route::RentedGpu,
    };
    let text = plan::template(route);
    match args.output {
        Some(path) => {
            if path.exists() && !args.force {
                crate::error_line!("{} exists; pass --force to overwrite it", path.display());
                return Ok(Exit::Refused);
            }
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            crate::note!(
                "wrote {}; fill it in, then run `gpuctl plan check {}`",
                path.display(),
                path.display()
            );
        }
        None => crate::output::printer().out_text(&text),
    }
    Ok(Exit::Done)
}

#[derive(Serialize)]
struct FileReport<'a> {
    file: String,
    ok: bool,
    problems: &'a [Problem],
}

pub fn check(args: PlanCheckArgs) -> anyhow::Result<Exit> {
    let now = Utc::now();
    let checked: Vec<_> = args
        .plans
        .iter()
        .map(|p| (p, plan::check_file(p, now)))
        .collect();
    let refused = |c: &plan::Checked| {
        c.errors().next().is_some() || (args.deny_warnings && c.warnings().next().is_some())
    };
    let all_ok = checked.iter().all(|(_, c)| !refused(c));
    if crate::output::json() {
        let reports: Vec<FileReport> = checked
            .iter()
            .map(|(path, c)| FileReport {
                file: path.display().to_string(),
                ok: !refused(c),
                problems: &c.problems,
            })
            .collect();
        let doc = serde_json::json!({ "ok": all_ok, "files": reports });
        crate::output::printer().doc(&doc)?;
    } else {
        for (path, c) in &checked {
            for p in &c.problems {
                crate::note!("{p}");
            }
            let errors = c.errors().count();
            let warnings = c.warnings().count();
            if refused(c) {
                crate::note!(
                    "{}: refused ({errors} error(s), {warnings} warning(s))",
                    path.display()
                );
            } else if let Some(plan) = &c.plan {
                let stop = plan
                    .effective_stop(now, plan.declared_price())
                    .map(|(t, cause)| {
                        format!(
                            "; started now it would stop at {} ({})",
                            t.format("%Y-%m-%d %H:%M:%S UTC"),
                            cause.describe()
                        )
                    })
                    .unwrap_or_default();
                let warn = if warnings > 0 {
                    format!(", {warnings} warning(s)")
                } else {
                    String::new()
                };
                crate::out!(
                    "{}: ok ({}, {}{warn}){stop}",
                    path.display(),
                    plan.route,
                    plan.instance.provider
                );
                if plan.instance.provider.is_cloud() {
                    crate::out!(
                        "  if this laptop sleeps or `up` dies: {}",
                        crate::plan::who_ends_billing(plan.instance.provider)
                    );
                }
            }
        }
    }
    Ok(if all_ok { Exit::Done } else { Exit::Refused })
}

pub fn show(args: PlanShowArgs) -> anyhow::Result<Exit> {
    let now = Utc::now();
    let c = plan::check_file(&args.plan, now);
    for p in &c.problems {
        crate::note!("{p}");
    }
    let Some(plan) = c.plan else {
        crate::note!("{}: refused; fix the errors above", args.plan.display());
        return Ok(Exit::Refused);
    };
    if crate::output::json() {
        crate::output::printer().doc(&plan)?;
    } else {
        crate::output::printer().out_text(&plan::route_card(&plan, now));
    }
    Ok(Exit::Done)
}
