//! The plan file (schema 1): reading, refusal rules, the template and the route card.
//!
//! Parse raw (a spanned TOML tree), then validate into [`Plan`]: every problem is reported
//! at once with `file:line:column`, the field, why it matters and the fix.

mod card;
mod git;
mod problem;
mod reader;
mod reasoning;
mod secrets;
mod source;
mod template;
mod types;
mod validate;

use std::path::Path;

use chrono::{DateTime, Utc};

pub use card::{route_card, who_ends_billing};
pub use git::{provenance, GitProvenance};
pub use problem::{Problem, Severity};
pub use source::{Source, MAX_PLAN_BYTES};
pub use template::template;
pub use types::*;
pub use validate::is_fingerprint;

/// The outcome of checking one plan file.
#[derive(Debug)]
pub struct Checked {
    pub source: Option<Source>,
    /// Present only when no problem is an error.
    pub plan: Option<Plan>,
    pub problems: Vec<Problem>,
}

impl Checked {
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| !p.is_error())
    }
}

/// Read and check a plan file as of `now`.
pub fn check_file(path: &Path, now: DateTime<Utc>) -> Checked {
    match Source::read(path) {
        Ok(source) => {
            let dir = path.parent().map(|d| {
                if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                }
            });
            let (mut plan, mut problems) = validate::check(&source, dir, now);
            // The team's policy, where one governs this plan's folder.
            if let Some(p) = &plan {
                for mut problem in crate::policy::check(path, p) {
                    problem.locate(&source);
                    problems.push(problem);
                }
                if problems.iter().any(Problem::is_error) {
                    plan = None;
                }
            }
            Checked {
                source: Some(source),
                plan,
                problems,
            }
        }
        Err(problem) => Checked {
            source: None,
            plan: None,
            problems: vec![*problem],
        },
    }
}

/// Check plan text held in memory (the fuzz target and tests use this).
pub fn check_str(name: &str, text: &str, now: DateTime<Utc>) -> Checked {
    let source = Source::new(name, text);
    let (plan, problems) = validate::check(&source, None, now);
    Checked {
        source: Some(source),
        plan,
        problems,
    }
}

/// A stored plan read back for a stop: the plan even where today's rules refuse it (a
/// newer gpuctl may be stricter than the one that launched it). `None` only when it cannot
/// be read at all. The problems say what today's rules think of it.
pub fn read_lenient(name: &str, text: &str, now: DateTime<Utc>) -> (Option<Plan>, Vec<Problem>) {
    let source = Source::new(name, text);
    validate::check_lenient(&source, now)
}

/// Read an eval cases file: a TOML file of `[[case]]` tables.
pub fn read_cases_file(path: &Path) -> Result<Vec<EvalCase>, Vec<Problem>> {
    let source = Source::read(path).map_err(|p| vec![*p])?;
    let (cases, mut problems) = validate::check_cases(&source);
    if problems.iter().any(Problem::is_error) {
        for p in &mut problems {
            p.locate(&source);
        }
        return Err(problems);
    }
    Ok(cases)
}
