//! A team's policy, kept in git beside its plans: `gpuctl-policy.toml`, found by walking up
//! from the plan's folder (the nearest one wins, like `.gitignore`). `plan check` and `up`
//! refuse a plan that breaks a rule; `up` also refuses a session that would take the
//! month's spend past a cap, checked in the same transaction that records it.
//!
//! ```toml
//! [rules]
//! providers = ["runpod", "vast", "ssh", "local"]  # allowed providers (fallbacks included)
//! regions = ["US-TX-3"]                           # allowed regions, where a plan names one
//! max_hourly_usd = 2.50                           # budget.hourly_usd may not be higher
//! max_duration = "4h"                             # stop.max_duration may not be longer
//! owner_required = true                           # every plan names an owner
//!
//! [caps]
//! team_monthly_usd = 1000.0                       # all sessions this calendar month (UTC)
//! owner_monthly_usd = 200.0                       # each owner, unless named below
//! owners = { alice = 400.0 }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::Deserialize;

use crate::plan::{Plan, Problem};

pub const FILE_NAME: &str = "gpuctl-policy.toml";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub rules: Rules,
    #[serde(default)]
    pub caps: MonthlyCaps,
    /// Where it was read from (not part of the file).
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    pub providers: Option<Vec<String>>,
    pub regions: Option<Vec<String>>,
    pub max_hourly_usd: Option<f64>,
    pub max_duration: Option<String>,
    #[serde(default)]
    pub owner_required: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonthlyCaps {
    pub team_monthly_usd: Option<f64>,
    pub owner_monthly_usd: Option<f64>,
    #[serde(default)]
    pub owners: BTreeMap<String, f64>,
}

impl MonthlyCaps {
    pub fn is_empty(&self) -> bool {
        self.team_monthly_usd.is_none()
            && self.owner_monthly_usd.is_none()
            && self.owners.is_empty()
    }

    /// The cap of one owner (their own line, else the default).
    pub fn owner_cap(&self, owner: Option<&str>) -> Option<f64> {
        owner
            .and_then(|o| self.owners.get(o).copied())
            .or(self.owner_monthly_usd)
    }
}

/// The nearest policy file at or above the plan's folder.
pub fn find(plan_path: &Path) -> Option<PathBuf> {
    let start = std::path::absolute(plan_path).ok()?;
    start
        .parent()?
        .ancestors()
        .map(|d| d.join(FILE_NAME))
        .find(|p| p.is_file())
}

/// Read the policy that governs a plan, if any. A policy file that cannot be read or
/// parsed is an error: a team's rules are never skipped silently.
pub fn for_plan(plan_path: &Path) -> Result<Option<Policy>, String> {
    let Some(path) = find(plan_path) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: cannot be read ({e})", path.display()))?;
    let mut policy: Policy = toml::from_str(&text)
        .map_err(|e| format!("{}: not a valid policy ({})", path.display(), e.message()))?;
    if let Some(d) = &policy.rules.max_duration {
        humantime::parse_duration(d).map_err(|e| {
            format!(
                "{}: rules.max_duration {d:?} is not a duration ({e}); write it like \"4h\"",
                path.display()
            )
        })?;
    }
    policy.path = path;
    Ok(Some(policy))
}

/// The rules a plan breaks, as plan problems (errors) that name the policy file.
pub fn check(plan_path: &Path, plan: &Plan) -> Vec<Problem> {
    let policy = match for_plan(plan_path) {
        Ok(Some(p)) => p,
        Ok(None) => return Vec::new(),
        Err(e) => {
            return vec![Problem::error("policy", 0..0, e)
                .fix(format!("fix {FILE_NAME}, or ask who owns it"))]
        }
    };
    let file = policy.path.display().to_string();
    let mut problems = Vec::new();
    let mut refuse = |field: &str, message: String, fix: String| {
        problems
            .push(Problem::error(field, 0..0, format!("{message} (team policy {file})")).fix(fix));
    };
    let r = &policy.rules;
    if let Some(allowed) = &r.providers {
        let mut used = vec![(
            "instance.provider".to_string(),
            plan.instance.provider.as_str(),
        )];
        for (i, t) in plan.fallback.if_no_capacity.iter().enumerate() {
            used.push((
                format!("fallback.if_no_capacity[{i}].provider"),
                t.provider.as_str(),
            ));
        }
        for (field, p) in used {
            if !allowed.iter().any(|a| a == p) {
                refuse(
                    &field,
                    format!("provider {p} is not allowed"),
                    format!("use one of: {}", allowed.join(", ")),
                );
            }
        }
    }
    if let Some(allowed) = &r.regions {
        let mut used = vec![("instance.region".to_string(), plan.instance.region.clone())];
        for (i, t) in plan.fallback.if_no_capacity.iter().enumerate() {
            used.push((
                format!("fallback.if_no_capacity[{i}].region"),
                t.region.clone(),
            ));
        }
        for (field, region) in used {
            if let Some(region) = region.filter(|r| !allowed.contains(r)) {
                refuse(
                    &field,
                    format!("region {region} is not allowed"),
                    format!("use one of: {}", allowed.join(", ")),
                );
            }
        }
    }
    if let Some(max) = r.max_hourly_usd {
        match plan.budget.hourly_usd {
            Some(h) if h > max => refuse(
                "budget.hourly_usd",
                format!("${h:.2}/h is above the team's maximum ${max:.2}/h"),
                format!("set budget.hourly_usd to at most {max}"),
            ),
            None if plan.instance.provider.is_cloud() => refuse(
                "budget.hourly_usd",
                format!("no hourly budget, and the team allows at most ${max:.2}/h"),
                format!("set budget.hourly_usd to at most {max}"),
            ),
            _ => {}
        }
    }
    if let Some(max) = r
        .max_duration
        .as_deref()
        .and_then(|d| humantime::parse_duration(d).ok())
    {
        match plan.stop.max_duration {
            Some(d) if d > max => refuse(
                "stop.max_duration",
                format!(
                    "{} is longer than the team's maximum {}",
                    humantime::format_duration(d),
                    humantime::format_duration(max)
                ),
                format!(
                    "set stop.max_duration to at most \"{}\"",
                    humantime::format_duration(max)
                ),
            ),
            None => refuse(
                "stop.max_duration",
                format!(
                    "no max_duration, and the team allows at most {}",
                    humantime::format_duration(max)
                ),
                format!(
                    "set stop.max_duration to at most \"{}\"",
                    humantime::format_duration(max)
                ),
            ),
            _ => {}
        }
    }
    if r.owner_required && plan.owner.as_deref().is_none_or(|o| o.trim().is_empty()) {
        refuse(
            "plan.owner",
            "the plan names no owner".into(),
            "add owner = \"your-team-or-name\" under [plan]".into(),
        );
    }
    if !policy.caps.is_empty() && plan_ceiling_usd(plan).is_none() {
        refuse(
            "budget.max_total_usd",
            "the team has monthly caps, and this plan's spend has no bound".into(),
            "set budget.max_total_usd (or budget.hourly_usd with stop.max_duration)".into(),
        );
    }
    problems
}

/// The most a plan's session may spend: `max_total_usd`, else its hourly budget over its
/// longest run. None when neither bounds it.
pub fn plan_ceiling_usd(plan: &Plan) -> Option<f64> {
    if !plan.instance.provider.is_cloud() && plan.instance.provider.as_str() != "ssh" {
        // This machine costs nothing by the hour.
        return Some(plan.budget.max_total_usd.unwrap_or(0.0));
    }
    plan.budget.max_total_usd.or_else(|| {
        let hours = plan
            .stop
            .max_duration
            .map(|d: Duration| d.as_secs_f64() / 3600.0)?;
        Some(plan.budget.hourly_usd? * hours)
    })
}

/// The first instant of the calendar month (UTC) that `now` is in.
pub fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now)
}
