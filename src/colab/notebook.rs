//! `gpuctl notebook PLAN -o lab.ipynb`: the free_colab route as a Jupyter notebook (nbformat
//! 4) that runs the plan's loop with transformers and writes the agent's evidence files.
//! gpuctl cannot drive Colab; it can write the notebook and take its evidence back.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::plan::{Expectation, Plan, Route};

/// The packages the notebook pins (installed when the runtime lacks them).
pub const PACKAGES: &[&str] = &["transformers==5.24.0"];

const LAB: &str = include_str!("lab.py");

/// Why a plan cannot become a notebook.
pub fn refusal(plan: &Plan) -> Option<String> {
    if plan.route != Route::FreeColab {
        return Some(format!(
            "plan.route is {}; a notebook is written for route = \"free_colab\" only (run other routes with `gpuctl up`)",
            plan.route.as_str()
        ));
    }
    if plan.privacy_level == crate::plan::PrivacyLevel::Private {
        return Some("privacy_level = \"private\": no private data belongs on a free hosted notebook; use local_cpu or a rented GPU".into());
    }
    None
}

/// The notebook for `plan`, whose hard stop is computed as of `now`.
pub fn notebook(
    plan: &Plan,
    plan_text: &str,
    cases: &[crate::plan::EvalCase],
    now: DateTime<Utc>,
) -> serde_json::Value {
    let deadline = plan
        .effective_stop(now, Some(0.0))
        .map(|(d, _)| d)
        .unwrap_or(now);
    let cases: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            let (contains, regex) = match &c.expect {
                Expectation::Contains(s) => (Some(s.clone()), None),
                Expectation::Regex(r) => (None, Some(r.clone())),
            };
            json!({ "id": c.id, "prompt": c.prompt, "max_tokens": c.max_tokens, "max_latency_ms": c.max_latency_ms,
                    "expect_contains": contains, "expect_regex": regex })
        })
        .collect();
    let config = json!({
        "name": plan.name,
        "plan_sha256": crate::evidence::sha256_hex(plan_text.as_bytes()),
        "deadline": deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "model_id": plan.model.id,
        "model_path": plan.model.path,
        "packages": PACKAGES,
        "first_prompt": "Give one deployment rule for a rented GPU.",
        "cases": cases,
        "out_dir": "gpuctl-evidence",
    });
    // A JSON string literal is a valid Python string literal: json.loads reads it back.
    let literal = serde_json::to_string(&config.to_string()).unwrap_or_default();
    let code = LAB.replace("__PLAN_JSON__", &literal);
    let mut cells = vec![json!({
        "cell_type": "markdown",
        "id": "route-card",
        "metadata": {},
        "source": lines(&format!(
            "{}\n\n**Hard stop: {} (UTC).** Every cell checks it first; past it, the cells skip their work and the last one packs the evidence.\nRun all cells, download `gpuctl-evidence-{}.zip`, then: `gpuctl evidence import PLAN gpuctl-evidence-{}.zip`.\nNo private data belongs in this notebook.",
            crate::plan::route_card(plan, now),
            deadline.format("%Y-%m-%d %H:%M:%S"),
            plan.name,
            plan.name
        )),
    })];
    for (i, chunk) in code
        .split("# %% cell: ")
        .filter(|c| !c.trim().is_empty())
        .enumerate()
    {
        let (title, body) = chunk.split_once('\n').unwrap_or((chunk, ""));
        cells.push(json!({
            "cell_type": "code",
            "id": format!("step-{i}"),
            "metadata": { "gpuctl_step": title.trim() },
            "execution_count": null,
            "outputs": [],
            "source": lines(body.trim_end()),
        }));
    }
    json!({
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": { "name": "python3", "display_name": "Python 3", "language": "python" },
            "language_info": { "name": "python" },
            "accelerator": "GPU",
            "gpuctl": { "plan": plan.name, "deadline": deadline },
        },
        "cells": cells,
    })
}

/// nbformat stores source as a list of lines, each with its newline.
fn lines(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text.split_inclusive('\n').map(String::from).collect();
    if out.is_empty() {
        out.push(String::new());
    }
    out
}
