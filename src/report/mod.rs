//! Self-contained HTML pages a reviewer can open offline: `report.html` in every evidence
//! bundle, and `gpuctl audit --html`. No script, no network resource; charts are inline SVG.

mod charts;

use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::audit::{By, Filter, Groups, Row};
use crate::db::{EventRecord, SessionRecord};
use charts::Series;

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em auto;max-width:980px;color:#222}h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top;overflow-wrap:anywhere}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;overflow-wrap:anywhere;font-size:.85em}.bad{color:#b00;font-weight:bold}.ok{color:#070}.note{color:#666}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n",
        escape(title)
    )
}

fn pre(text: &str) -> String {
    format!("<pre>{}</pre>", escape(text))
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{}</td>", escape(c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

/// A tiny CSV reader for the bundle's own files (quoted fields with commas and quotes).
fn csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            ('\r', false) => {}
            (c, _) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

fn chart_or_note(svg: Option<String>, note: &str) -> String {
    svg.unwrap_or_else(|| format!("<p class=\"note\">{}</p>", escape(note)))
}

/// `report.html` of a bundle: everything in it, readable in a browser.
pub fn session_page(dir: &Path, s: &SessionRecord, events: &[EventRecord]) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>gpuctl session {}</h1><p>plan <b>{}</b> (sha256 {}), route {} on {}, state <b class=\"{}\">{}</b></p>",
        escape(&s.id),
        escape(&s.plan_name),
        escape(&s.plan_sha256[..12.min(s.plan_sha256.len())]),
        escape(&s.route),
        escape(&s.provider),
        if s.state.is_final() && s.state != crate::session::SessionState::Failed { "ok" } else { "bad" },
        s.state
    );
    b.push_str("<h2>Route card</h2>");
    b.push_str(&pre(
        &read(dir, "gpu_plan.md").unwrap_or_else(|| "(gpu_plan.md is missing)".into())
    ));

    b.push_str("<h2>Timeline</h2>");
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                e.kind.clone(),
                e.state.map(|s| s.to_string()).unwrap_or_default(),
                e.message.clone(),
            ]
        })
        .collect();
    b.push_str(&table(&["time (UTC)", "kind", "state", "what"], &rows));

    b.push_str("<h2>Environment</h2>");
    b.push_str(&pre(&read(dir, "environment_report.txt")
        .unwrap_or_else(|| "(environment_report.txt is missing)".into())));
    b.push_str("<h2>First run</h2>");
    b.push_str(&pre(
        &read(dir, "first_run.md").unwrap_or_else(|| "(no first run)".into())
    ));

    b.push_str("<h2>Evaluation</h2>");
    match read(dir, "eval_results.csv").map(|t| csv(&t)) {
        Some(rows) if rows.len() > 1 => {
            let head: Vec<&str> = rows[0].iter().map(String::as_str).collect();
            b.push_str(&table(&head, &rows[1..]));
        }
        _ => b.push_str("<p class=\"note\">no eval results</p>"),
    }

    b.push_str("<h2>Latency</h2>");
    let latencies: Vec<f64> = read(dir, "requests.jsonl")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["latency_ms"].as_f64())
        .collect();
    b.push_str(&chart_or_note(
        charts::histogram(
            &format!("latency of {} request(s)", latencies.len()),
            "ms",
            &latencies,
            12,
        ),
        "no request was logged",
    ));

    b.push_str("<h2>GPU memory and utilisation</h2>");
    b.push_str(&gpu_charts(dir));

    b.push_str("<h2>Cost against the budget</h2>");
    b.push_str(&cost_chart(s));

    b.push_str("<h2>Shutdown proof</h2>");
    match read(dir, "shutdown_proof.json")
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    {
        Some(p) => {
            let _ = write!(
                b,
                "<p>stop {} — expected proof: {}; reason: {}</p>",
                if p["confirmed"] == true {
                    "<b class=\"ok\">confirmed</b>"
                } else {
                    "<b class=\"bad\">NOT CONFIRMED: the instance may still bill</b>"
                },
                escape(p["expected"].as_str().unwrap_or("-")),
                escape(p["stop_reason"].as_str().unwrap_or("-"))
            );
            let rows: Vec<Vec<String>> = p["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    vec![
                        c["check"].as_str().unwrap_or_default().to_string(),
                        if c["passed"] == true {
                            "passed".into()
                        } else {
                            "FAILED".into()
                        },
                        c["answer"].as_str().unwrap_or_default().to_string(),
                    ]
                })
                .collect();
            b.push_str(&table(&["check", "result", "answer"], &rows));
        }
        None => b.push_str("<p class=\"bad\">shutdown_proof.json is missing</p>"),
    }
    page(&format!("gpuctl session {}", s.id), &b)
}

fn gpu_charts(dir: &Path) -> String {
    let Some(rows) = read(dir, "gpu_metrics.csv").map(|t| csv(&t)) else {
        return "<p class=\"note\">no NVML samples (no NVIDIA GPU on the host)</p>".into();
    };
    let Some(head) = rows.first() else {
        return "<p class=\"note\">no NVML samples</p>".into();
    };
    let col = |name: &str| head.iter().position(|h| h == name);
    let (Some(t), Some(g), Some(mem), Some(util)) = (
        col("time"),
        col("gpu"),
        col("memory_used_mib"),
        col("utilization_gpu_pct"),
    ) else {
        return "<p class=\"note\">gpu_metrics.csv has an unknown layout</p>".into();
    };
    let t0 = rows
        .get(1)
        .and_then(|r| DateTime::parse_from_rfc3339(r.get(t)?).ok());
    let mut mem_series: Vec<Series> = Vec::new();
    let mut util_series: Vec<Series> = Vec::new();
    for r in rows.iter().skip(1) {
        let (Some(at), Some(t0)) = (
            r.get(t).and_then(|x| DateTime::parse_from_rfc3339(x).ok()),
            t0,
        ) else {
            continue;
        };
        let x = (at - t0).num_milliseconds() as f64 / 1000.0;
        let gpu = r.get(g).cloned().unwrap_or_default();
        for (series, idx) in [(&mut mem_series, mem), (&mut util_series, util)] {
            let Some(y) = r.get(idx).and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            match series.iter_mut().find(|s| s.name == format!("GPU {gpu}")) {
                Some(s) => s.points.push((x, y)),
                None => series.push(Series {
                    name: format!("GPU {gpu}"),
                    points: vec![(x, y)],
                }),
            }
        }
    }
    if mem_series.is_empty() {
        return "<p class=\"note\">no NVML samples (no NVIDIA GPU on the host)</p>".into();
    }
    let mut out = chart_or_note(
        charts::lines("GPU memory used", "seconds", "MiB", &mem_series),
        "chart failed",
    );
    out.push_str(&chart_or_note(
        charts::lines("GPU utilisation", "seconds", "%", &util_series),
        "chart failed",
    ));
    out
}

fn cost_chart(s: &SessionRecord) -> String {
    let (Some(launched), Some(price)) = (s.launched_at, s.price_usd_per_hour) else {
        return "<p class=\"note\">nothing was billed (no launch)</p>".into();
    };
    let end = s.ended_at.unwrap_or_else(Utc::now);
    let billing = gpuctl_providers::billing_of_name(&s.provider);
    let secs = (end - launched).num_milliseconds().max(0) as f64 / 1000.0;
    let steps = 60;
    let cost: Vec<(f64, f64)> = (0..=steps)
        .map(|i| {
            let t = secs * f64::from(i) / f64::from(steps);
            let billed = billing
                .billed(std::time::Duration::from_secs_f64(t))
                .as_secs_f64();
            (t, price * billed / 3600.0)
        })
        .collect();
    let mut series = vec![Series {
        name: "cost so far".into(),
        points: cost,
    }];
    if let Some(max) = s.max_total_usd {
        series.push(Series {
            name: "max_total_usd".into(),
            points: vec![(0.0, max), (secs.max(1.0), max)],
        });
    }
    let mut out = chart_or_note(
        charts::lines(
            &format!("${price:.2}/h, billed {billing:?}"),
            "seconds since launch",
            "USD",
            &series,
        ),
        "chart failed",
    );
    let _ = write!(
        out,
        "<p>cost {}; budget {}</p>",
        s.cost_usd
            .map(|c| format!("${c:.2}"))
            .unwrap_or_else(|| "-".into()),
        s.max_total_usd
            .map(|c| format!("${c:.2}"))
            .unwrap_or_else(|| "-".into())
    );
    out
}

/// `gpuctl audit --html`: totals, groups, a chart of cost per group, and every flagged session.
pub fn audit_page(
    groups: &Groups,
    by: Option<By>,
    flagged: &[Row],
    filter: &Filter,
    now: DateTime<Utc>,
) -> String {
    let mut b = String::new();
    let all = &groups.all;
    let _ = write!(
        b,
        "<h1>gpuctl audit</h1><p class=\"note\">made {} from the session database{}{}{}{}</p><p><b>{}</b> session(s), <b>{:.2}</b> billed hours, <b>${:.2}</b>; flags: <span class=\"{}\">{} over budget, {} stop unconfirmed, {} plan changed after launch</span></p>",
        now.format("%Y-%m-%d %H:%M UTC"),
        filter.since.map(|t| format!(", since {}", t.format("%Y-%m-%d"))).unwrap_or_default(),
        filter.until.map(|t| format!(", until {}", t.format("%Y-%m-%d"))).unwrap_or_default(),
        filter.plan.as_ref().map(|p| format!(", plan {}", escape(p))).unwrap_or_default(),
        filter.owner.as_ref().map(|o| format!(", owner {}", escape(o))).unwrap_or_default(),
        all.sessions,
        all.billed_hours,
        all.cost_usd,
        if all.flagged() { "bad" } else { "ok" },
        all.over_budget,
        all.stop_unconfirmed,
        all.plan_changed
    );
    if let Some(by) = by {
        let _ = write!(b, "<h2>By {}</h2>", format!("{by:?}").to_lowercase());
        let rows: Vec<Vec<String>> = groups
            .by
            .iter()
            .map(|(k, t)| {
                vec![
                    k.clone(),
                    t.sessions.to_string(),
                    format!("{:.2}", t.billed_hours),
                    format!("${:.2}", t.cost_usd),
                    t.over_budget.to_string(),
                    t.stop_unconfirmed.to_string(),
                    t.plan_changed.to_string(),
                ]
            })
            .collect();
        b.push_str(&table(
            &[
                "group",
                "sessions",
                "billed hours",
                "cost",
                "over budget",
                "stop unconfirmed",
                "plan changed",
            ],
            &rows,
        ));
        let points: Vec<(f64, f64)> = groups
            .by
            .values()
            .enumerate()
            .map(|(i, t)| (i as f64, t.cost_usd))
            .collect();
        if points.len() > 1 {
            b.push_str(&chart_or_note(
                charts::lines(
                    "cost per group, in the order above",
                    "group",
                    "USD",
                    &[Series {
                        name: "cost".into(),
                        points,
                    }],
                ),
                "chart failed",
            ));
        }
    }
    b.push_str("<h2>Flagged sessions</h2>");
    if flagged.is_empty() {
        b.push_str("<p class=\"ok\">none</p>");
    } else {
        let rows: Vec<Vec<String>> = flagged
            .iter()
            .map(|r| {
                vec![
                    r.session_id.clone(),
                    r.plan.clone(),
                    r.provider.clone(),
                    r.start.format("%Y-%m-%d %H:%M").to_string(),
                    format!("${:.2}", r.cost_usd),
                    r.budget_usd.map(|m| format!("${m:.2}")).unwrap_or_default(),
                    r.proof.to_string(),
                    r.flags.join(" "),
                ]
            })
            .collect();
        b.push_str(&table(
            &[
                "session", "plan", "provider", "start", "cost", "budget", "proof", "flags",
            ],
            &rows,
        ));
    }
    page("gpuctl audit", &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_nvml_samples_from_an_h100_become_two_charts() {
        // gpu_metrics.csv kept from the H100 run of 2026-11-25 (bench/device/results).
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(
            dir.path().join("gpu_metrics.csv"),
            include_str!("../../bench/device/results/2026-11-25-candle-cuda-gpu_metrics.csv"),
        )
        .expect("write");
        let html = gpu_charts(dir.path());
        assert_eq!(html.matches("<svg").count(), 2, "{html}");
        assert!(html.contains("GPU memory used") && html.contains("GPU utilisation"));
        assert!(html.contains("GPU 0"));
    }

    #[test]
    fn csv_fields_with_commas_quotes_and_newlines_are_read_back() {
        let rows = csv("id,output\na,\"x, \"\"y\"\"\nz\"\n");
        assert_eq!(rows[1], vec!["a".to_string(), "x, \"y\"\nz".to_string()]);
    }
}
