//! The plan rendered as the route card (`gpuctl plan show`, and `gpu_plan.md` in every
//! evidence bundle): the lesson's sentences, filled in from the plan.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::types::{OnStop, Plan, Route};

/// Markdown route card. `now` is the start used for the effective stop.
pub fn route_card(plan: &Plan, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let na = "(not stated)";
    let _ = writeln!(out, "# GPU Plan: {}\n", plan.name);
    let _ = writeln!(out, "- goal: {}", plan.goal);
    let _ = writeln!(out, "- route: {}", plan.route);
    if let Some(q) = &plan.question {
        let _ = writeln!(out, "- question: {q}");
    }
    let _ = writeln!(
        out,
        "- model: {} ({})",
        plan.model.id,
        plan.model.runtime.as_str()
    );
    let i = &plan.instance;
    let _ = writeln!(
        out,
        "- instance: provider {}{}{}, {} GPU(s){}{}",
        i.provider,
        i.host
            .as_ref()
            .map(|h| format!(", host {h}"))
            .unwrap_or_default(),
        i.instance_type
            .as_ref()
            .map(|t| format!(", type {t}"))
            .unwrap_or_default(),
        i.gpus,
        i.vram_gb
            .map(|v| format!(", {v} GB VRAM"))
            .unwrap_or_default(),
        i.disk_gb
            .map(|v| format!(", {v} GB disk"))
            .unwrap_or_default()
    );
    if let Some(r) = &i.region {
        let _ = writeln!(out, "- region: {r}");
    }
    let _ = writeln!(out, "- privacy level: {}", plan.privacy_level.as_str());
    let budget = match (plan.budget.hourly_usd, plan.budget.max_total_usd) {
        (None, None) => "none (nothing is rented)".to_string(),
        (h, t) => format!(
            "{} per hour, {} in total",
            h.map(|h| format!("${h:.2}"))
                .unwrap_or_else(|| "no limit".into()),
            t.map(|t| format!("${t:.2}"))
                .unwrap_or_else(|| "no limit".into())
        ),
    };
    let _ = writeln!(out, "- budget: {budget}");
    if let Some(p) = plan.declared_price().filter(|p| *p > 0.0) {
        let _ = writeln!(out, "- declared price: ${p:.2}/h");
    }
    let ports: Vec<String> = plan
        .access
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{} -> host 127.0.0.1:{}", p.local, p.remote))
        .collect();
    let _ = writeln!(
        out,
        "- ports: {}",
        if ports.is_empty() {
            "none".into()
        } else {
            ports.join(", ")
        }
    );
    for p in &plan.access.public_ports {
        let _ = writeln!(out, "- PUBLIC port {}: {}", p.port, p.reason);
    }
    if plan.instance.provider.uses_ssh() {
        let _ = writeln!(
            out,
            "- access: SSH key{}",
            plan.access
                .identity_file
                .as_ref()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "- shutdown proof: {}",
        plan.evidence.shutdown_proof.as_str()
    );
    let _ = writeln!(
        out,
        "- if this laptop sleeps or `up` dies: {}",
        who_ends_billing(plan.instance.provider)
    );
    if let Some(oom) = &plan.fallback.if_oom {
        let _ = writeln!(
            out,
            "- fallback if OOM: {} {}",
            oom.model,
            oom.args.join(" ")
        );
    }
    let _ = writeln!(
        out,
        "- fallback route: {}",
        plan.fallback.route.map(Route::as_str).unwrap_or("none")
    );

    let _ = writeln!(out, "\n## Route card\n");
    let _ = writeln!(
        out,
        "I will use {} because {}.",
        plan.route,
        trim_dot(plan.why.as_deref().map(strip_prefix_sentence).unwrap_or(na))
    );
    let _ = writeln!(
        out,
        "This route can prove {}.",
        trim_dot(plan.can_prove.as_deref().unwrap_or(na))
    );
    let _ = writeln!(
        out,
        "This route cannot prove {} yet.",
        trim_dot(plan.cannot_prove.as_deref().unwrap_or(na))
    );
    let _ = writeln!(
        out,
        "I will stop or fall back when {}.",
        stop_sentence(plan, now)
    );
    let _ = writeln!(
        out,
        "The evidence I must copy back is {}.",
        plan.evidence.copy_back.join(", ")
    );
    out
}

/// "I will use rented_gpu because I will use rented_gpu because ..." reads badly; keep the reason.
fn strip_prefix_sentence(why: &str) -> &str {
    match why.find(" because ") {
        Some(i) if why[..i].to_lowercase().starts_with("i will use") => {
            &why[i + " because ".len()..]
        }
        _ => why,
    }
}

fn trim_dot(s: &str) -> &str {
    s.trim().trim_end_matches('.')
}

fn stop_sentence(plan: &Plan, now: DateTime<Utc>) -> String {
    let mut parts = Vec::new();
    if let Some(t) = plan.stop.hard_stop_time {
        parts.push(format!("the clock reaches {}", t.to_rfc3339()));
    }
    if let Some(d) = plan.stop.max_duration {
        parts.push(format!(
            "{} have passed since `gpuctl up`",
            humantime::format_duration(d)
        ));
    }
    if let (Some(total), Some(price)) = (
        plan.budget.max_total_usd,
        plan.declared_price().filter(|p| *p > 0.0),
    ) {
        parts.push(format!("${total:.2} is spent at ${price:.2}/h"));
    }
    if plan.stop.after_eval {
        parts.push("the fixed eval set has run".into());
    }
    let mut s = parts.join(", or ");
    if let Some((at, cause)) = plan.effective_stop(now, plan.declared_price()) {
        let _ = write!(
            s,
            " (started now, the effective stop would be {} by {})",
            at.format("%Y-%m-%d %H:%M:%S UTC"),
            cause.describe()
        );
    }
    let action = match plan.stop.on_stop {
        OnStop::Terminate if plan.instance.provider.is_cloud() => {
            "terminate the instance".to_string()
        }
        OnStop::Terminate => "stop the agent".to_string(),
        OnStop::Stop => "stop the instance".to_string(),
        OnStop::Command => format!("run `{}`", plan.stop.stop_command.join(" ")),
    };
    let _ = write!(
        s,
        "; evidence is collected {} before, then I {action} and prove it ({})",
        humantime::format_duration(plan.stop.grace),
        plan.evidence.shutdown_proof.as_str()
    );
    match plan.fallback.route {
        Some(r) => {
            let _ = write!(s, "; if it fails I fall back to {r}");
        }
        None => s.push_str("; there is no fallback route"),
    }
    s
}

/// Who ends billing at the deadline when the laptop is gone, per provider (the enforcers
/// and what each can do), said before anything is rented.
pub fn who_ends_billing(kind: gpuctl_providers::ProviderKind) -> &'static str {
    use gpuctl_providers::ProviderKind as K;
    match kind {
        K::Runpod | K::Vast => "the agent stops serving and terminates the instance with the instance's own scoped key at the deadline; a daemon or the next `down` confirms by read-back",
        K::Lambda => "the agent stops serving, but Lambda gives it no instance-scoped key: the instance bills until a daemon (`gpuctl daemon`, `up --detach`) or the next `up`/`down` terminates it",
        K::Ssh => "the agent stops serving and runs on_stop's command if the plan has one; the host itself is yours (a powered-off VM may still bill at its provider)",
        K::Local => "the agent stops serving; nothing bills",
    }
}
