//! `gpuctl audit`: sessions from the database, one line each or totals per group, as a
//! table, CSV or JSON; `--strict` turns flags into an exit status for cron and CI.

use std::io::{IsTerminal, Write};

use chrono::{DateTime, NaiveDate, Utc};

use super::{alarm, open_db};
use crate::audit::{self, By, Filter, Groups, PlanFiles, Row};
use crate::cli::{AuditArgs, AuditBy, AuditFormat};
use crate::exit::Exit;

fn parse_date(flag: &str, s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{flag} {s:?} is not a date: use YYYY-MM-DD (UTC) or RFC 3339, like 2026-11-01 or 2026-11-01T08:00:00Z"))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_default()
}

const CSV_HEADER: &str = "session_id,plan,plan_sha256,plan_git_commit,owner,route,provider,instance_type,price_usd_per_hour,catalog_price_usd_per_hour,start,stop,billed_seconds,cost_usd,budget_usd,percent_of_budget,stop_reason,proof,flags";

fn csv_row(r: &Row) -> String {
    [
        r.session_id.clone(),
        r.plan.clone(),
        r.plan_sha256.clone(),
        opt(&r.plan_git_commit),
        opt(&r.owner),
        r.route.clone(),
        r.provider.clone(),
        opt(&r.instance_type),
        opt(&r.price_usd_per_hour),
        opt(&r.catalog_price_usd_per_hour),
        r.start.to_rfc3339(),
        r.stop.map(|t| t.to_rfc3339()).unwrap_or_default(),
        r.billed_seconds.to_string(),
        format!("{:.2}", r.cost_usd),
        opt(&r.budget_usd),
        opt(&r.percent_of_budget),
        opt(&r.stop_reason),
        r.proof.to_string(),
        r.flags.join(" "),
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}

/// One line of the per-session table, written without building intermediate strings
/// (audits print a million of them).
fn table_row(out: &mut impl Write, row: &Row, color: bool) -> std::io::Result<()> {
    use chrono::{Datelike, Timelike};
    let t = row.start;
    write!(
        out,
        "{:<24} {:<22} {:<8} {:<24} ",
        row.session_id,
        row.plan,
        row.provider,
        row.instance_type.as_deref().unwrap_or("-")
    )?;
    match row.price_usd_per_hour {
        Some(p) => write!(out, "{p:>7.2} ")?,
        None => write!(out, "{:>7} ", "-")?,
    }
    write!(
        out,
        "{:04}-{:02}-{:02} {:02}:{:02} {:>6.2} h {:>9.2} ",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        row.billed_seconds as f64 / 3600.0,
        row.cost_usd
    )?;
    match row.percent_of_budget {
        Some(p) => write!(out, "{p:>5.0}% ")?,
        None => write!(out, "{:>6} ", "-")?,
    }
    if row.proof == "UNCONFIRMED" {
        write!(out, "{}", alarm(&format!("{:<11}", row.proof), color))?;
    } else {
        write!(out, "{:<11}", row.proof)?;
    }
    for f in &row.flags {
        write!(out, " {f}")?;
    }
    writeln!(out)
}

pub fn run(mut args: AuditArgs) -> anyhow::Result<Exit> {
    if crate::output::json() {
        args.format = AuditFormat::Json;
    }
    let mut filter = Filter {
        plan: args.plan.clone(),
        owner: args.owner.clone(),
        ..Filter::default()
    };
    for (flag, value, slot) in [
        ("--since", &args.since, &mut filter.since),
        ("--until", &args.until, &mut filter.until),
    ] {
        if let Some(v) = value {
            match parse_date(flag, v) {
                Ok(t) => *slot = Some(t),
                Err(e) => {
                    crate::error_line!("{e}");
                    return Ok(Exit::Refused);
                }
            }
        }
    }
    let by = args.by.map(|b| match b {
        AuditBy::Plan => By::Plan,
        AuditBy::Owner => By::Owner,
        AuditBy::Provider => By::Provider,
        AuditBy::Month => By::Month,
    });
    // Totals alone need no order (the HTML page lists flagged sessions in order).
    filter.any_order = by.is_some() && args.html.is_none();
    let db = open_db()?;
    let now = Utc::now();
    let mut plans = PlanFiles::default();
    let mut groups = Groups::default();
    // Flagged sessions are kept for the HTML page (never all sessions).
    let mut flagged: Vec<Row> = Vec::new();
    let color = std::io::stdout().is_terminal();
    let mut out = crate::output::printer().stream();
    let per_session = by.is_none();
    let mut first = true;
    match (args.format, per_session) {
        (AuditFormat::Csv, true) => writeln!(out, "{CSV_HEADER}")?,
        (AuditFormat::Json, true) => write!(out, "{{\"sessions\":[")?,
        (AuditFormat::Table, true) => writeln!(
            out,
            "{:<24} {:<22} {:<8} {:<24} {:>7} {:<16} {:>8} {:>9} {:>6} {:<11} FLAGS",
            "SESSION",
            "PLAN",
            "PROVIDER",
            "INSTANCE",
            "USD/H",
            "START (UTC)",
            "BILLED",
            "COST USD",
            "BUDGET",
            "PROOF"
        )?,
        _ => {}
    }
    let mut io_error: Option<std::io::Error> = None;
    db.audit_rows(&filter, |raw| {
        let row = audit::audit(raw, now, &mut plans);
        groups.add(by, &row);
        if per_session && io_error.is_none() {
            let r = match args.format {
                AuditFormat::Csv => writeln!(out, "{}", csv_row(&row)),
                AuditFormat::Json => {
                    let sep = if first { "" } else { "," };
                    first = false;
                    serde_json::to_string(&row)
                        .map_err(std::io::Error::other)
                        .and_then(|j| write!(out, "{sep}{j}"))
                }
                AuditFormat::Table => table_row(&mut out, &row, color),
            };
            if let Err(e) = r {
                io_error = Some(e);
            }
        }
        if !row.flags.is_empty() && flagged.len() < 10_000 {
            flagged.push(row);
        }
        Ok(())
    })?;
    // A closed pipe (`| head`) is not an error worth a message.
    if let Some(e) = io_error {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
        return Ok(Exit::Done);
    }
    let all = &groups.all;
    match (args.format, per_session) {
        (AuditFormat::Json, true) => {
            writeln!(out, "],\"totals\":{}}}", serde_json::to_string(all)?)?
        }
        (AuditFormat::Json, false) => {
            let list: Vec<serde_json::Value> = groups
                .by
                .iter()
                .map(|(k, t)| {
                    let mut v = serde_json::to_value(t).unwrap_or_default();
                    v["group"] = serde_json::json!(k);
                    v
                })
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::json!({ "by": format!("{:?}", by.unwrap_or(By::Plan)).to_lowercase(), "groups": list, "totals": all })
            )?;
        }
        (AuditFormat::Csv, false) => {
            writeln!(
                out,
                "group,sessions,billed_hours,cost_usd,over_budget,stop_unconfirmed,plan_changed"
            )?;
            for (k, t) in &groups.by {
                writeln!(
                    out,
                    "{},{},{:.4},{:.2},{},{},{}",
                    csv_field(k),
                    t.sessions,
                    t.billed_hours,
                    t.cost_usd,
                    t.over_budget,
                    t.stop_unconfirmed,
                    t.plan_changed
                )?;
            }
        }
        (AuditFormat::Table, false) => {
            writeln!(
                out,
                "{:<28} {:>9} {:>12} {:>12} {:>6} {:>8} {:>8}",
                "GROUP", "SESSIONS", "BILLED", "COST", "OVER", "UNCONF", "CHANGED"
            )?;
            for (k, t) in &groups.by {
                writeln!(
                    out,
                    "{:<28} {:>9} {:>10.2} h {:>12} {:>6} {:>8} {:>8}",
                    k,
                    t.sessions,
                    t.billed_hours,
                    format!("${:.2}", t.cost_usd),
                    t.over_budget,
                    t.stop_unconfirmed,
                    t.plan_changed
                )?;
            }
        }
        (AuditFormat::Csv, true) => {}
        (AuditFormat::Table, true) => {}
    }
    if args.format == AuditFormat::Table {
        writeln!(
            out,
            "total: {} session(s), {:.2} billed hours, ${:.2}; flags: {} over budget, {} stop unconfirmed, {} plan changed after launch; {} run with --laptop-only; {} extended",
            all.sessions, all.billed_hours, all.cost_usd, all.over_budget, all.stop_unconfirmed, all.plan_changed, all.laptop_only, all.extended
        )?;
    }
    out.flush()?;
    drop(out);
    if let Some(path) = &args.html {
        let page = crate::report::audit_page(&groups, by, &flagged, &filter, now);
        std::fs::write(path, page)?;
        crate::note!("wrote {}", path.display());
    }
    if all.stop_unconfirmed > 0 {
        crate::warning!(
            "{} session(s) have no confirmed stop and may still bill; they are listed first",
            all.stop_unconfirmed
        );
    }
    Ok(
        match (args.strict, all.stop_unconfirmed > 0, all.flagged()) {
            (true, true, _) => Exit::StopUnconfirmed,
            (true, false, true) => Exit::Failed,
            _ => Exit::Done,
        },
    )
}
