//! The refusal rules of DESIGN.md: read the spanned tree into a [`Plan`], reporting every
//! problem with its location, why it matters and the fix.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gpuctl_protocol::Runtime;
use gpuctl_providers::ProviderKind;
use toml::de::DeTable;

use super::problem::Problem;
use super::reader::{Ctx, Sp, TableView};
use super::source::Source;
use super::types::*;
use super::{reasoning, secrets};

/// Budgets above these are typos, not plans (an 8x H100 node rents for well under $100/h).
const MAX_HOURLY_USD: f64 = 1_000.0;
const MAX_TOTAL_USD: f64 = 100_000.0;
/// A bounded experiment ends within a week.
const MAX_SESSION: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_GRACE: Duration = Duration::from_secs(120);
const DEFAULT_MAX_TOKENS: u32 = 64;
const MAX_EVAL_TOKENS: i64 = 8192;

const HARD_STOP_WHY: &str = "a rented GPU without a hard stop keeps billing until someone remembers it; gpuctl enforces this stop on the host, in `up` and in the daemon";

/// Read and validate a plan. `plan_dir` resolves relative paths (the eval cases file);
/// `now` is the moment the hard stop must lie after.
pub fn check(
    source: &Source,
    plan_dir: Option<&Path>,
    now: DateTime<Utc>,
) -> (Option<Plan>, Vec<Problem>) {
    let (plan, problems) = check_lenient_in(source, plan_dir, now);
    let plan = if problems.iter().any(Problem::is_error) {
        None
    } else {
        plan
    };
    (plan, problems)
}

/// Like `check`, but the plan is returned whenever every section could be read, refusals
/// or not: the stop of a recorded session must not depend on today's rules.
pub fn check_lenient(source: &Source, now: DateTime<Utc>) -> (Option<Plan>, Vec<Problem>) {
    check_lenient_in(source, None, now)
}

fn check_lenient_in(
    source: &Source,
    plan_dir: Option<&Path>,
    now: DateTime<Utc>,
) -> (Option<Plan>, Vec<Problem>) {
    let mut cx = Ctx::default();
    let plan = match DeTable::parse(&source.text) {
        Ok(doc) => {
            secrets::scan(doc.get_ref(), &mut cx);
            let root = TableView::new("", 0..0, doc.get_ref());
            read_plan(root, &mut cx, plan_dir, now)
        }
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let first_line = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_string();
            cx.push(
                Problem::error(
                    "toml",
                    span,
                    format!("the plan is not valid TOML: {first_line}"),
                )
                .fix(
                    "fix the syntax at this position (strings need quotes, tables need [brackets])",
                ),
            );
            None
        }
    };
    let mut problems = cx.problems;
    problems.sort_by_key(|p| (p.span.start, p.severity));
    for p in &mut problems {
        p.locate(source);
    }
    (plan, problems)
}

fn missing(cx: &mut Ctx, view: &TableView, key: &str, why: &str, fix: &str) {
    let message = if view.is_present() {
        format!("required field `{key}` is missing")
    } else {
        format!(
            "required field `{key}` is missing (there is no [{}] section)",
            view.path
        )
    };
    cx.push(
        Problem::error(view.field(key), view.missing_span(), message)
            .why(why)
            .fix(fix),
    );
}

/// A required, non-empty string.
fn required(
    cx: &mut Ctx,
    view: &mut TableView,
    key: &'static str,
    why: &str,
    fix: &str,
) -> Option<Sp<String>> {
    let present = view.raw(key).is_some();
    let value = view.string(cx, key);
    match value {
        Some(v) if v.value.trim().is_empty() => {
            cx.push(
                Problem::error(view.field(key), v.span, "is empty")
                    .why(why)
                    .fix(fix),
            );
            None
        }
        Some(v) => Some(v),
        None => {
            if !present {
                missing(cx, view, key, why, fix);
            }
            None
        }
    }
}

/// An optional string; an empty one is reported (it is almost always a forgotten field).
fn optional(cx: &mut Ctx, view: &mut TableView, key: &'static str) -> Option<Sp<String>> {
    let v = view.string(cx, key)?;
    if v.value.trim().is_empty() {
        cx.push(
            Problem::error(view.field(key), v.span, "is empty")
                .fix(format!("fill in `{key}` or remove the line")),
        );
        return None;
    }
    Some(v)
}

/// A string that may be empty; absence and wrong types are `None`.
fn text(cx: &mut Ctx, view: &mut TableView, key: &'static str) -> Option<Sp<String>> {
    view.string(cx, key)
}

/// Report a field that this plan needs but lacks, or has left empty. Returns the value if usable.
fn need(
    cx: &mut Ctx,
    view: &mut TableView,
    key: &'static str,
    value: Option<Sp<String>>,
    why: &str,
    fix: &str,
) -> Option<Sp<String>> {
    match value {
        Some(v) if v.value.trim().is_empty() => {
            cx.push(
                Problem::error(view.field(key), v.span, "is empty")
                    .why(why)
                    .fix(fix),
            );
            None
        }
        Some(v) => Some(v),
        None => {
            if view.raw(key).is_none() {
                missing(cx, view, key, why, fix);
            }
            None
        }
    }
}

fn one_of<T: Copy>(
    cx: &mut Ctx,
    view: &TableView,
    key: &str,
    value: &Sp<String>,
    choices: &[(&str, T)],
) -> Option<T> {
    if let Some((_, t)) = choices.iter().find(|(name, _)| *name == value.value) {
        return Some(*t);
    }
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    let mut p = Problem::error(
        view.field(key),
        value.span.clone(),
        format!("{:?} is not one of: {}", value.value, names.join(", ")),
    );
    if let Some(close) = names
        .iter()
        .find(|n| strsim::jaro_winkler(n, &value.value) > 0.8)
    {
        p = p.fix(format!("did you mean \"{close}\"?"));
    } else {
        p = p.fix(format!("write one of: {}", names.join(", ")));
    }
    cx.push(p);
    None
}

fn port(cx: &mut Ctx, view: &mut TableView, key: &'static str) -> Option<Sp<u16>> {
    let v = view.integer(cx, key)?;
    match u16::try_from(v.value) {
        Ok(p) if p > 0 => Some(Sp {
            value: p,
            span: v.span,
        }),
        _ => {
            cx.push(
                Problem::error(
                    view.field(key),
                    v.span,
                    format!("{} is not a TCP port", v.value),
                )
                .fix("use a number from 1 to 65535"),
            );
            None
        }
    }
}

fn positive_u32(
    cx: &mut Ctx,
    view: &mut TableView,
    key: &'static str,
    allow_zero: bool,
) -> Option<Sp<u32>> {
    let v = view.integer(cx, key)?;
    let min = if allow_zero { 0 } else { 1 };
    match u32::try_from(v.value) {
        Ok(n) if i64::from(n) >= min && n <= 1_000_000 => Some(Sp {
            value: n,
            span: v.span,
        }),
        _ => {
            cx.push(
                Problem::error(
                    view.field(key),
                    v.span,
                    format!("{} is out of range", v.value),
                )
                .fix(format!("use a whole number of at least {min}")),
            );
            None
        }
    }
}

/// A supervised server's extra flags. `--host` and `--port` are refused: the agent puts the
/// server on 127.0.0.1 and a port of its own, and a later `--host 0.0.0.0` would win
/// (argparse keeps the last) and serve the unauthenticated inner port to the network.
fn server_args(cx: &mut Ctx, view: &mut TableView, key: &'static str) -> Vec<String> {
    let Some(list) = view.string_array(cx, key) else {
        return Vec::new();
    };
    for arg in &list.value {
        let flag = arg.value.split('=').next().unwrap_or_default();
        if matches!(flag, "--host" | "--port") {
            cx.push(
                Problem::error(view.field(key), arg.span.clone(), format!("sets `{flag}`, which the agent owns"))
                    .why("the agent starts the server on 127.0.0.1 and a free port, and serves it only through its authenticated API; a `--host` here would expose the server's own, unauthenticated port")
                    .fix(format!("remove `{}` (and its value) from {key}; to reach the API from elsewhere use access.ports and `gpuctl up --allow-public-ports`", arg.value)),
            );
        }
    }
    list.value.into_iter().map(|s| s.value).collect()
}

fn read_plan(
    mut root: TableView,
    cx: &mut Ctx,
    plan_dir: Option<&Path>,
    now: DateTime<Utc>,
) -> Option<Plan> {
    match root.integer(cx, "schema") {
        Some(v) if v.value == SCHEMA_VERSION => {}
        Some(v) => cx.push(
            Problem::error(
                "schema",
                v.span,
                format!(
                    "schema {} is not known to this gpuctl (it reads schema {SCHEMA_VERSION})",
                    v.value
                ),
            )
            .fix("write `schema = 1`, or upgrade gpuctl"),
        ),
        None => {
            if root.raw("schema").is_none() {
                missing(
                    cx,
                    &root,
                    "schema",
                    "the schema version lets future gpuctl releases read today's plans",
                    "add `schema = 1` as the first line",
                );
            }
        }
    }
    let head = {
        let t = root.table(cx, "plan");
        read_head(cx, t)
    };
    let model = {
        let t = root.table(cx, "model");
        read_model(cx, t, head.as_ref().map(|h| h.route))
    };
    let instance = {
        let t = root.table(cx, "instance");
        read_instance(cx, t, head.as_ref().map(|h| h.route))
    };
    let budget = {
        let t = root.table(cx, "budget");
        read_budget(cx, t, head.as_ref().map(|h| h.route))
    };
    let stop = {
        let t = root.table(cx, "stop");
        read_stop(cx, t, now)
    };
    let fallback = {
        let t = root.table(cx, "fallback");
        read_fallback(cx, t)
    };
    let access = {
        let t = root.table(cx, "access");
        read_access(cx, t, head.as_ref().map(|h| h.route))
    };
    let evidence = {
        let t = root.table(cx, "evidence");
        read_evidence(cx, t)
    };
    let eval = {
        let t = root.table(cx, "eval");
        read_eval(cx, t, plan_dir)
    };
    let notify = {
        let t = root.table(cx, "notify");
        read_notify(cx, t)
    };
    let setup = {
        let t = root.table(cx, "setup");
        read_setup(cx, t)
    };
    root.finish(cx);

    let (head, model, instance, budget, stop, fallback, access, evidence) = (
        head?, model?, instance?, budget?, stop?, fallback?, access?, evidence?,
    );
    let plan = Plan {
        name: head.name,
        goal: head.goal,
        route: head.route,
        question: head.question,
        why: head.why.as_ref().map(|w| w.value.clone()),
        can_prove: head.can_prove,
        cannot_prove: head.cannot_prove,
        privacy_level: head.privacy_level.value,
        owner: head.owner,
        model: model.spec,
        instance: instance.spec,
        budget: budget.spec,
        stop: stop.spec,
        fallback: fallback.spec,
        access: access.spec,
        evidence: evidence.spec,
        eval: eval.unwrap_or_default(),
        notify,
        setup,
    };
    let spans = Spans {
        privacy: head.privacy_level.span,
        why: head.why.map(|w| w.span),
        provider: instance.provider_span,
        price: instance.price_span,
        total: budget.total_span,
        on_stop: stop.on_stop_span,
        fallback_route: fallback.route_span,
        access_table: access.table_span,
        proof: evidence.proof_span,
        gpus: instance.gpus_span,
    };
    cross_rules(cx, &plan, &spans, now);
    Some(plan)
}

struct Head {
    name: String,
    goal: String,
    route: Route,
    question: Option<String>,
    why: Option<Sp<String>>,
    can_prove: Option<String>,
    cannot_prove: Option<String>,
    privacy_level: Sp<PrivacyLevel>,
    owner: Option<String>,
}

fn read_head(cx: &mut Ctx, mut t: TableView) -> Option<Head> {
    let name = required(
        cx,
        &mut t,
        "name",
        "the name identifies the session in `gpuctl ls`, audits and evidence folders",
        "add `name = \"my-experiment\"` ([a-z0-9-])",
    );
    if let Some(n) = &name {
        let ok = n.value.len() <= 63
            && n.value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.value.starts_with('-')
            && !n.value.ends_with('-');
        if !ok {
            cx.push(
                Problem::error(
                    t.field("name"),
                    n.span.clone(),
                    "must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
                )
                .fix("rename it, e.g. `qwen05b-vllm-smoke`"),
            );
        }
    }
    let goal = required(
        cx,
        &mut t,
        "goal",
        "a session answers one bounded question; the goal is the first line of its route card",
        "add `goal = \"prove the deployment loop for one small project\"`",
    );
    let route_raw = required(
        cx,
        &mut t,
        "route",
        "the route decides what can be proven and which rules apply",
        "add `route = \"local_cpu\"` (or free_colab, rented_gpu)",
    );
    let route = route_raw.as_ref().and_then(|r| {
        one_of(
            cx,
            &t,
            "route",
            r,
            &[
                ("local_cpu", Route::LocalCpu),
                ("free_colab", Route::FreeColab),
                ("rented_gpu", Route::RentedGpu),
            ],
        )
    });
    let question = optional(cx, &mut t, "question").map(|s| s.value);
    let mut why = text(cx, &mut t, "why");
    let mut can_prove = text(cx, &mut t, "can_prove");
    let mut cannot_prove = text(cx, &mut t, "cannot_prove");
    let privacy = optional(cx, &mut t, "privacy_level");
    let privacy_level = match &privacy {
        Some(p) => one_of(
            cx,
            &t,
            "privacy_level",
            p,
            &[
                ("public", PrivacyLevel::Public),
                ("internal", PrivacyLevel::Internal),
                ("private", PrivacyLevel::Private),
            ],
        )
        .map(|v| Sp {
            value: v,
            span: p.span.clone(),
        }),
        None => Some(Sp {
            value: PrivacyLevel::Internal,
            span: t.missing_span(),
        }),
    };
    let owner = optional(cx, &mut t, "owner").map(|s| s.value);
    let card_why = "a rented GPU costs money by the hour: the plan must say why this route, and what it can and cannot prove, before anything is rented";
    for (key, value, fix) in [
        ("why", &mut why, "write `why = \"I will use rented_gpu because I need predictable VRAM and SSH\"` (name constraints, not enthusiasm)"),
        ("can_prove", &mut can_prove, "write `can_prove = \"serving works; latency and VRAM at batch 1\"`"),
        ("cannot_prove", &mut cannot_prove, "write `cannot_prove = \"quality of a 7B model; throughput under load\"`"),
    ] {
        *value = if route == Some(Route::RentedGpu) {
            need(cx, &mut t, key, value.take(), card_why, fix)
        } else {
            match value.take() {
                Some(v) if v.value.trim().is_empty() => {
                    cx.push(Problem::error(t.field(key), v.span, "is empty").fix(format!("fill in `{key}` or remove the line")));
                    None
                }
                other => other,
            }
        };
    }
    t.finish(cx);
    route_raw?;
    Some(Head {
        name: name?.value,
        goal: goal?.value,
        route: route?,
        question,
        why,
        can_prove: can_prove.map(|v| v.value),
        cannot_prove: cannot_prove.map(|v| v.value),
        privacy_level: privacy_level?,
        owner,
    })
}

struct ModelRead {
    spec: ModelSpec,
}

fn read_model(cx: &mut Ctx, mut t: TableView, route: Option<Route>) -> Option<ModelRead> {
    let id = required(
        cx,
        &mut t,
        "id",
        "the model id is the evidence of what was served",
        "add `id = \"HuggingFaceTB/SmolLM2-135M-Instruct\"`",
    );
    let runtime_raw = required(
        cx,
        &mut t,
        "runtime",
        "the runtime decides how the agent serves the model",
        "add `runtime = \"candle\"` (or vllm, sglang, command)",
    );
    let runtime = runtime_raw.as_ref().and_then(|r| {
        one_of(
            cx,
            &t,
            "runtime",
            r,
            &[
                ("candle", Runtime::Candle),
                ("vllm", Runtime::Vllm),
                ("sglang", Runtime::Sglang),
                ("command", Runtime::Command),
            ],
        )
    });
    let path = optional(cx, &mut t, "path");
    let url = optional(cx, &mut t, "url");
    let sha256 = optional(cx, &mut t, "sha256");
    let args = server_args(cx, &mut t, "args");
    let command = t.string_array(cx, "command");
    match (runtime, &path) {
        (Some(Runtime::Candle), None) if t.raw("path").is_none() && t.raw("url").is_none() => missing(cx, &t, "path", "candle serves weights from a file on the host", "add `path = \"models/SmolLM2-135M-Instruct.Q4_1.gguf\"` (a GGUF file or a safetensors folder)"),
        _ => {}
    }
    match (&url, &sha256) {
        (Some(u), None) => cx.push(
            Problem::error(t.field("url"), u.span.clone(), "has no sha256 beside it")
                .why("a downloaded model is checked before it is served: a changed or truncated file must not answer the eval")
                .fix("add `sha256 = \"<64 hex digits>\"` (sha256sum of the file)"),
        ),
        (None, Some(s)) => cx.push(
            Problem::error(t.field("sha256"), s.span.clone(), "checks a download, but there is no url")
                .fix("add `url = \"https://...\"`, or remove sha256"),
        ),
        _ => {}
    }
    if let (Some(u), Some(p)) = (&url, &path) {
        cx.push(
            Problem::error(
                t.field("url"),
                u.span.clone(),
                "and model.path both name the weights",
            )
            .fix(format!(
                "keep one: the file at {:?} is fetched to the host and served from there",
                p.value
            )),
        );
    }
    if let Some(s) = &sha256 {
        if s.value.len() != 64
            || !s
                .value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            cx.push(
                Problem::error(
                    t.field("sha256"),
                    s.span.clone(),
                    "is not 64 lowercase hex digits",
                )
                .fix("write the file's sha256 as `sha256sum` prints it"),
            );
        }
    }
    if let Some(u) = &url {
        if !(u.value.starts_with("https://") || u.value.starts_with("http://")) {
            cx.push(
                Problem::error(t.field("url"), u.span.clone(), "is not an http(s) URL")
                    .fix("give the file's https URL, like https://huggingface.co/<repo>/resolve/<revision>/<file>"),
            );
        }
    }
    let command_list: Vec<String> = command
        .as_ref()
        .map(|c| c.value.iter().map(|s| s.value.clone()).collect())
        .unwrap_or_default();
    match (runtime, &command) {
        (Some(Runtime::Command), None) => missing(cx, &t, "command", "runtime = \"command\" runs the server you name", "add `command = [\"python\", \"-m\", \"llama_cpp.server\", \"--host\", \"127.0.0.1\", \"--port\", \"8000\"]`"),
        (Some(Runtime::Command), Some(c)) if c.value.is_empty() => cx.push(Problem::error(t.field("command"), c.span.clone(), "is empty").fix("give the full server command as an array of strings")),
        // The notebook of the free_colab route runs its own command; it serves no port.
        (Some(Runtime::Command), Some(c)) if route != Some(Route::FreeColab) && !c.value.iter().any(|a| a.value.contains("{port}")) => cx.push(
            Problem::error(t.field("command"), c.span.clone(), "does not say where to listen: no `{port}` placeholder")
                .why("the agent starts the server on a free 127.0.0.1 port and serves the API in front of it; it replaces {port} (and {host}, {model}) in the command")
                .fix("add the server's port flag, e.g. \"--port\", \"{port}\""),
        ),
        (Some(rt), Some(c)) if rt != Runtime::Command && !c.value.is_empty() => cx.push(
            Problem::error(t.field("command"), c.span.clone(), format!("is only used with runtime = \"command\", not \"{}\"", rt.as_str()))
                .fix("remove `command`, or set `runtime = \"command\"`; extra server flags go in `args`"),
        ),
        _ => {}
    }
    t.finish(cx);
    Some(ModelRead {
        spec: ModelSpec {
            id: id?.value,
            runtime: runtime?,
            path: path.map(|p| p.value),
            url: url.map(|u| u.value),
            sha256: sha256.map(|s| s.value),
            args,
            command: command_list,
        },
    })
}

struct InstanceRead {
    spec: InstanceSpec,
    provider_span: Range<usize>,
    price_span: Range<usize>,
    gpus_span: Range<usize>,
}

fn read_instance(cx: &mut Ctx, mut t: TableView, route: Option<Route>) -> Option<InstanceRead> {
    let provider_raw = required(
        cx,
        &mut t,
        "provider",
        "the provider is who launches, bills and terminates the machine",
        "add `provider = \"local\"` (or ssh, lambda, runpod, vast)",
    );
    let choices: Vec<(&str, ProviderKind)> =
        ProviderKind::ALL.iter().map(|k| (k.as_str(), *k)).collect();
    let provider = provider_raw
        .as_ref()
        .and_then(|p| one_of(cx, &t, "provider", p, &choices));
    let mut host = text(cx, &mut t, "host");
    let port_v = port(cx, &mut t, "port");
    let mut user = text(cx, &mut t, "user");
    let host_key = optional(cx, &mut t, "host_key");
    let instance_type = optional(cx, &mut t, "instance_type");
    let region = optional(cx, &mut t, "region");
    let gpus = positive_u32(cx, &mut t, "gpus", true);
    let vram_gb = positive_u32(cx, &mut t, "vram_gb", false);
    let disk_gb = positive_u32(cx, &mut t, "disk_gb", false);
    let price = t.number(cx, "hourly_price_usd");
    if let Some(p) = &price {
        if p.value < 0.0 || p.value > MAX_HOURLY_USD {
            cx.push(
                Problem::error(
                    t.field("hourly_price_usd"),
                    p.span.clone(),
                    format!("{} is not a plausible hourly price", p.value),
                )
                .fix(format!(
                    "give the host's price in US dollars per hour, between 0 and {MAX_HOURLY_USD}"
                )),
            );
        }
    }
    if let Some(k) = &host_key {
        if !is_fingerprint(&k.value) {
            cx.push(
                Problem::error(t.field("host_key"), k.span.clone(), "is not an SSH host key fingerprint")
                    .why("the pinned fingerprint is how gpuctl knows it is talking to your host and not to an impostor")
                    .fix("write the SHA256 fingerprint, as `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints it: host_key = \"SHA256:...\""),
            );
        }
    }
    for (key, value) in [("host", &mut host), ("user", &mut user)] {
        if provider != Some(ProviderKind::Ssh)
            && value.as_ref().is_some_and(|v| v.value.trim().is_empty())
        {
            if let Some(v) = value.take() {
                cx.push(
                    Problem::error(t.field(key), v.span, "is empty")
                        .fix(format!("fill in `{key}` or remove the line")),
                );
            }
        }
    }
    match provider {
        Some(ProviderKind::Ssh) => {
            host = need(
                cx,
                &mut t,
                "host",
                host.take(),
                "provider = \"ssh\" reaches the host you rent by its address",
                "write `host = \"gpu-box.example.com\"`",
            );
            user = need(
                cx,
                &mut t,
                "user",
                user.take(),
                "SSH logs in as a named user; gpuctl never guesses one",
                "write `user = \"ubuntu\"`",
            );
            if route == Some(Route::RentedGpu)
                && price.is_none()
                && t.raw("hourly_price_usd").is_none()
            {
                missing(cx, &t, "hourly_price_usd", "an SSH host has no price API: the budget and the cost records are computed from the price you declare", "add `hourly_price_usd = 0.75` (what the host costs you per hour)");
            }
        }
        Some(kind) if kind.is_cloud() => {
            if instance_type.is_none() && t.raw("instance_type").is_none() {
                missing(cx, &t, "instance_type", "the cloud rents a named instance type, and its price is checked against the budget", "add `instance_type = \"gpu_1x_a10\"` (the provider's own name)");
            }
            if kind == ProviderKind::Lambda && region.is_none() && t.raw("region").is_none() {
                missing(
                    cx,
                    &t,
                    "region",
                    "Lambda launches in a named region",
                    "add `region = \"us-east-1\"`",
                );
            }
        }
        _ => {}
    }
    t.finish(cx);
    let provider = provider?;
    let default_gpus = if route == Some(Route::LocalCpu) { 0 } else { 1 };
    Some(InstanceRead {
        spec: InstanceSpec {
            provider,
            host: host.map(|h| h.value),
            port: port_v.map(|p| p.value).unwrap_or(22),
            user: user.map(|u| u.value),
            host_key: host_key.map(|k| k.value),
            instance_type: instance_type.map(|v| v.value),
            region: region.map(|v| v.value),
            gpus: gpus.as_ref().map(|g| g.value).unwrap_or(default_gpus),
            vram_gb: vram_gb.map(|v| v.value),
            disk_gb: disk_gb.map(|v| v.value),
            hourly_price_usd: price.as_ref().map(|p| p.value),
        },
        provider_span: provider_raw?.span,
        price_span: price.map(|p| p.span).unwrap_or_default(),
        gpus_span: gpus.map(|g| g.span).unwrap_or_default(),
    })
}

/// `SHA256:` followed by 43 unpadded base64 characters, as OpenSSH prints it.
pub fn is_fingerprint(s: &str) -> bool {
    s.strip_prefix("SHA256:").is_some_and(|b| {
        b.trim_end_matches('=').len() == 43
            && b.trim_end_matches('=')
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    })
}

struct BudgetRead {
    spec: Budget,
    total_span: Range<usize>,
}

fn money(cx: &mut Ctx, t: &mut TableView, key: &'static str, max: f64) -> Option<Sp<f64>> {
    let v = t.number(cx, key)?;
    if v.value <= 0.0 {
        cx.push(
            Problem::error(
                t.field(key),
                v.span,
                format!("must be more than zero, found {}", v.value),
            )
            .why("a budget of zero or less cannot pay for anything and cannot bound anything")
            .fix(format!(
                "give a positive amount in US dollars, e.g. {key} = 5.00"
            )),
        );
        return None;
    }
    if v.value > max {
        cx.push(
            Problem::error(
                t.field(key),
                v.span,
                format!("{} is not a plausible budget (the limit is {max})", v.value),
            )
            .why("an absurd budget is a typo that would let a session bill without bound")
            .fix("check the number of digits"),
        );
        return None;
    }
    Some(v)
}

fn read_budget(cx: &mut Ctx, mut t: TableView, route: Option<Route>) -> Option<BudgetRead> {
    let hourly = money(cx, &mut t, "hourly_usd", MAX_HOURLY_USD);
    let total = money(cx, &mut t, "max_total_usd", MAX_TOTAL_USD);
    if route == Some(Route::RentedGpu) {
        let why = "a rented GPU bills by the hour; without a budget nothing bounds the bill";
        if hourly.is_none() && t.raw("hourly_usd").is_none() {
            missing(
                cx,
                &t,
                "hourly_usd",
                why,
                "add `hourly_usd = 1.10` under [budget] (offers above it are refused)",
            );
        }
        if total.is_none() && t.raw("max_total_usd").is_none() {
            missing(cx, &t, "max_total_usd", why, "add `max_total_usd = 5.00` under [budget] (the session stops before spending more)");
        }
    }
    let table_span = t.missing_span();
    t.finish(cx);
    Some(BudgetRead {
        spec: Budget {
            hourly_usd: hourly.as_ref().map(|h| h.value),
            max_total_usd: total.as_ref().map(|v| v.value),
        },
        total_span: total.map(|v| v.span).unwrap_or(table_span),
    })
}

struct StopRead {
    spec: StopSpec,
    on_stop_span: Range<usize>,
}

fn read_stop(cx: &mut Ctx, mut t: TableView, now: DateTime<Utc>) -> Option<StopRead> {
    let hard = t.datetime(cx, "hard_stop_time");
    let max_duration = t.duration(cx, "max_duration");
    let grace = t.duration(cx, "grace");
    let idle = t.duration(cx, "idle");
    let on_stop_raw = optional(cx, &mut t, "on_stop");
    let on_stop = match &on_stop_raw {
        Some(o) => one_of(
            cx,
            &t,
            "on_stop",
            o,
            &[
                ("terminate", OnStop::Terminate),
                ("stop", OnStop::Stop),
                ("command", OnStop::Command),
            ],
        ),
        None => Some(OnStop::Terminate),
    };
    let stop_command = t.string_array(cx, "stop_command");
    let after_eval = t
        .boolean(cx, "after_eval")
        .map(|b| b.value)
        .unwrap_or(false);
    let grace_value = grace.as_ref().map(|g| g.value).unwrap_or(DEFAULT_GRACE);

    if hard.is_none()
        && max_duration.is_none()
        && t.raw("hard_stop_time").is_none()
        && t.raw("max_duration").is_none()
    {
        let message = if t.is_present() {
            "no hard stop: neither `hard_stop_time` nor `max_duration` is set".to_string()
        } else {
            "no hard stop: there is no [stop] section".to_string()
        };
        cx.push(
            Problem::error(t.field("max_duration"), t.missing_span(), message)
                .why(HARD_STOP_WHY)
                .fix("add a [stop] section with `max_duration = \"2h\"` or `hard_stop_time = \"2026-11-25T20:00:00Z\"`"),
        );
    }
    if let Some(h) = &hard {
        if h.value <= now {
            cx.push(
                Problem::error(
                    t.field("hard_stop_time"),
                    h.span.clone(),
                    format!("{} is in the past", h.value.to_rfc3339()),
                )
                .why("a session whose hard stop has passed would be stopped before it starts")
                .fix("set a future time, or use `max_duration = \"2h\"`, which counts from `up`"),
            );
        } else if h.value <= now + chrono::Duration::from_std(grace_value).unwrap_or_default() {
            cx.push(
                Problem::error(t.field("hard_stop_time"), h.span.clone(), "is sooner than the grace period from now")
                    .why("evidence is collected in the grace window before the stop; there would be no time to run anything")
                    .fix("move the hard stop later"),
            );
        } else if h.value - now > chrono::Duration::from_std(MAX_SESSION).unwrap_or_default() {
            cx.push(
                Problem::error(
                    t.field("hard_stop_time"),
                    h.span.clone(),
                    "is more than 7 days away",
                )
                .why("gpuctl runs bounded experiments; a week-long rental is not one")
                .fix("split the work into shorter sessions"),
            );
        }
    }
    if let Some(d) = &max_duration {
        if d.value.is_zero() {
            cx.push(
                Problem::error(t.field("max_duration"), d.span.clone(), "is zero")
                    .fix("give a duration such as \"90m\""),
            );
        } else if d.value > MAX_SESSION {
            cx.push(
                Problem::error(
                    t.field("max_duration"),
                    d.span.clone(),
                    "is more than 7 days",
                )
                .why("gpuctl runs bounded experiments; a week-long rental is not one")
                .fix("split the work into shorter sessions"),
            );
        } else if d.value <= grace_value {
            cx.push(
                Problem::error(t.field("max_duration"), d.span.clone(), "is not longer than the grace period")
                    .why("evidence is collected during `grace` before the stop; the session needs time before that")
                    .fix("lengthen max_duration or shorten stop.grace"),
            );
        }
    }
    if let Some(i) = &idle {
        if i.value.is_zero() {
            cx.push(
                Problem::error(t.field("idle"), i.span.clone(), "is zero")
                    .why("the session would stop before its first request")
                    .fix("give the idle window as a duration such as \"20m\", or remove `idle`"),
            );
        }
    }
    if let Some(g) = &grace {
        if g.value > Duration::from_secs(3600) {
            cx.push(
                Problem::error(t.field("grace"), g.span.clone(), "is more than an hour")
                    .fix("evidence collection takes seconds to minutes; use e.g. grace = \"2m\""),
            );
        }
    }
    let command: Vec<String> = stop_command
        .as_ref()
        .map(|c| c.value.iter().map(|s| s.value.clone()).collect())
        .unwrap_or_default();
    match on_stop {
        Some(OnStop::Command) if command.is_empty() => {
            let span = stop_command
                .as_ref()
                .map(|c| c.span.clone())
                .or(on_stop_raw.as_ref().map(|o| o.span.clone()))
                .unwrap_or_else(|| t.missing_span());
            cx.push(
                Problem::error(
                    t.field("stop_command"),
                    span,
                    "on_stop = \"command\" needs a non-empty stop_command",
                )
                .fix("add e.g. `stop_command = [\"sudo\", \"shutdown\", \"-h\", \"now\"]`"),
            );
        }
        Some(o) if o != OnStop::Command && !command.is_empty() => {
            if let Some(c) = &stop_command {
                cx.push(
                    Problem::error(
                        t.field("stop_command"),
                        c.span.clone(),
                        "is only used with on_stop = \"command\"",
                    )
                    .fix("set `on_stop = \"command\"` or remove stop_command"),
                );
            }
        }
        _ => {}
    }
    let table_span = t.missing_span();
    t.finish(cx);
    Some(StopRead {
        spec: StopSpec {
            hard_stop_time: hard.map(|h| h.value),
            max_duration: max_duration.map(|d| d.value),
            grace: grace_value,
            on_stop: on_stop?,
            stop_command: command,
            after_eval,
            idle: idle.map(|i| i.value),
        },
        on_stop_span: on_stop_raw.map(|o| o.span).unwrap_or(table_span),
    })
}

struct FallbackRead {
    spec: Fallback,
    route_span: Range<usize>,
}

fn read_fallback(cx: &mut Ctx, mut t: TableView) -> Option<FallbackRead> {
    let route_raw = required(cx, &mut t, "route", "when the GPU is out of memory or out of stock, the plan must already say where the work goes next", "add a [fallback] section with `route = \"local_cpu\"`");
    let route = route_raw.as_ref().and_then(|r| {
        one_of(
            cx,
            &t,
            "route",
            r,
            &[
                ("local_cpu", Some(Route::LocalCpu)),
                ("free_colab", Some(Route::FreeColab)),
                ("rented_gpu", Some(Route::RentedGpu)),
                ("none", None),
            ],
        )
    });
    let mut oom_view = t.table(cx, "if_oom");
    let if_oom = if oom_view.is_present() {
        let model = required(
            cx,
            &mut oom_view,
            "model",
            "the OOM fallback restarts the server with this model",
            "add `model = \"Qwen/Qwen2.5-0.5B-Instruct\"`",
        );
        let args = server_args(cx, &mut oom_view, "args");
        oom_view.finish(cx);
        model.map(|m| OomFallback {
            model: m.value,
            args,
        })
    } else {
        None
    };
    let mut targets = Vec::new();
    if let Some(list) = t.string_array(cx, "if_no_capacity") {
        for (i, entry) in list.value.iter().enumerate() {
            match parse_capacity_target(&entry.value) {
                Ok(target) => targets.push(target),
                Err(why) => cx.push(
                    Problem::error(format!("{}[{i}]", t.field("if_no_capacity")), entry.span.clone(), why)
                        .fix("write entries as \"provider:instance_type:region\", e.g. \"lambda:gpu_1x_a10:us-west-1\""),
                ),
            }
        }
    }
    t.finish(cx);
    Some(FallbackRead {
        spec: Fallback {
            route: route?,
            if_oom,
            if_no_capacity: targets,
        },
        route_span: route_raw?.span,
    })
}

fn parse_capacity_target(s: &str) -> Result<CapacityTarget, String> {
    let mut parts = s.split(':');
    let provider = parts.next().unwrap_or_default();
    let instance_type = parts.next().unwrap_or_default();
    let region = parts.next();
    if parts.next().is_some() || instance_type.is_empty() {
        return Err(format!("{s:?} is not provider:instance_type:region"));
    }
    let provider: ProviderKind = provider
        .parse()
        .map_err(|e: gpuctl_providers::UnknownProvider| e.to_string())?;
    if !provider.is_cloud() {
        return Err(format!(
            "{provider} cannot be launched on demand; only lambda, runpod and vast can"
        ));
    }
    Ok(CapacityTarget {
        provider,
        instance_type: instance_type.to_string(),
        region: region.filter(|r| !r.is_empty()).map(str::to_string),
    })
}

struct AccessRead {
    spec: Access,
    table_span: Range<usize>,
}

fn read_access(cx: &mut Ctx, mut t: TableView, route: Option<Route>) -> Option<AccessRead> {
    let method = optional(cx, &mut t, "method");
    if route == Some(Route::RentedGpu) && method.is_none() && t.raw("method").is_none() {
        missing(
            cx,
            &t,
            "method",
            "rented hosts are reached by SSH key only; passwords are never used",
            "add `method = \"ssh_key\"` and `identity_file = \"~/.ssh/id_ed25519\"` under [access]",
        );
    }
    let declared_ports = t
        .raw("ports")
        .is_some_and(|v| !matches!(v.get_ref(), toml::de::DeValue::Array(a) if a.is_empty()));
    if !declared_ports && route.is_some_and(|r| r != Route::FreeColab) {
        let span = t
            .raw("ports")
            .map(|v| v.span())
            .unwrap_or_else(|| t.missing_span());
        cx.push(
            Problem::error(t.field("ports"), span, "no port is forwarded, so the served API cannot be reached")
                .fix("add `ports = [{ local = 8000, remote = 8000 }]` under [access] (the first entry is the served API)"),
        );
    }
    if let Some(m) = &method {
        if m.value != "ssh_key" {
            cx.push(
                Problem::error(t.field("method"), m.span.clone(), format!("{:?} is not accepted; the only method is \"ssh_key\"", m.value))
                    .why("passwords are never used: they leak, and they cannot be pinned like a key")
                    .fix("write `method = \"ssh_key\"` and point identity_file at your key (or use ssh-agent)"),
            );
        }
    }
    let identity_file = optional(cx, &mut t, "identity_file");
    let mut ports = Vec::new();
    let mut seen_local = HashSet::new();
    for mut entry in t.tables(cx, "ports") {
        for key in [
            "bind",
            "host",
            "address",
            "local_host",
            "remote_host",
            "listen",
        ] {
            if let Some(v) = entry.raw(key) {
                cx.push(
                    Problem::error(entry.field(key), v.span(), "ports always bind 127.0.0.1 on both ends and take no address")
                        .why("a served model on a public address can be used by anyone who finds it, on your bill")
                        .fix("remove it; to expose a port, list it in `public_ports` with a reason and run `up --allow-public-ports`"),
                );
            }
        }
        let local = port(cx, &mut entry, "local");
        let remote = port(cx, &mut entry, "remote");
        for (key, v) in [("local", &local), ("remote", &remote)] {
            if v.is_none() && entry.raw(key).is_none() {
                missing(
                    cx,
                    &entry,
                    key,
                    "each forwarded port names its local and remote end",
                    "write entries as { local = 8000, remote = 8000 }",
                );
            }
        }
        if let (Some(l), Some(r)) = (local, remote) {
            if !seen_local.insert(l.value) {
                cx.push(
                    Problem::error(
                        entry.field("local"),
                        l.span,
                        format!("local port {} is listed twice", l.value),
                    )
                    .fix("give each forward its own local port"),
                );
            } else {
                ports.push(PortForward {
                    local: l.value,
                    remote: r.value,
                });
            }
        }
        entry.finish(cx);
    }
    let mut public_ports = Vec::new();
    for mut entry in t.tables(cx, "public_ports") {
        let p = port(cx, &mut entry, "port");
        if p.is_none() && entry.raw("port").is_none() {
            missing(
                cx,
                &entry,
                "port",
                "a public port names the port it opens",
                "write entries as { port = 8000, reason = \"...\" }",
            );
        }
        let reason = required(
            cx,
            &mut entry,
            "reason",
            "a public port lets anyone on the internet reach the server; the plan must say why",
            "add `reason = \"...\"` explaining who needs it and why a tunnel will not do",
        );
        entry.finish(cx);
        if let (Some(p), Some(r)) = (p, reason) {
            public_ports.push(PublicPort {
                port: p.value,
                reason: r.value,
            });
        }
    }
    let table_span = t.missing_span();
    t.finish(cx);
    Some(AccessRead {
        spec: Access {
            method: method.as_ref().map(|m| m.value.clone()),
            identity_file: identity_file.map(|i| i.value),
            ports,
            public_ports,
        },
        table_span,
    })
}

struct EvidenceRead {
    spec: EvidenceSpec,
    proof_span: Range<usize>,
}

/// `[setup]`: a virtual environment built on the host before the model loads.
fn read_setup(cx: &mut Ctx, mut t: TableView) -> Option<Setup> {
    if !t.is_present() {
        return None;
    }
    let python = t.string(cx, "python");
    let pip = t.string_array(cx, "pip");
    let commands = t.string_array(cx, "commands");
    t.finish(cx);
    if let Some(p) = &python {
        let ok = p.value.split('.').count() == 2
            && p.value
                .split('.')
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            cx.push(
                Problem::error(
                    "setup.python",
                    p.span.clone(),
                    format!("{:?} is not a Python version", p.value),
                )
                .fix("write the major and minor version, like python = \"3.12\""),
            );
        }
    }
    for r in pip.iter().flat_map(|p| p.value.iter()) {
        let pinned = r.value.starts_with('-')
            || r.value.contains("==")
            || r.value.contains(" @ ")
            || r.value.ends_with(".whl");
        if !pinned {
            cx.push(
                Problem::warning(
                    "setup.pip",
                    r.span.clone(),
                    format!("{:?} is not pinned", r.value),
                )
                .why("an unpinned requirement installs whatever is newest the day the session runs: two sessions of one plan can differ")
                .fix(format!("pin it, like \"{}==1.2.3\"", r.value.split(['<', '>', '=', '~', '!', '[']).next().unwrap_or(&r.value).trim())),
            );
        }
    }
    let list = |v: Option<Sp<Vec<Sp<String>>>>| -> Vec<String> {
        v.map(|a| a.value.into_iter().map(|s| s.value).collect())
            .unwrap_or_default()
    };
    Some(Setup {
        python: python.map(|p| p.value),
        pip: list(pip),
        commands: list(commands),
    })
}

/// `[notify]`: where alerts go. The webhook URL is a secret, so the plan names the
/// environment variable that holds it, never the URL.
fn read_notify(cx: &mut Ctx, mut t: TableView) -> Option<Notify> {
    if !t.is_present() {
        return None;
    }
    let env = t.string(cx, "webhook_env");
    if env.is_none() && t.raw("webhook_env").is_none() {
        cx.push(
            Problem::error("notify.webhook_env", t.missing_span(), "[notify] names no webhook_env")
                .fix("add `webhook_env = \"GPUCTL_WEBHOOK_URL\"` (the variable holding the URL), or remove [notify]"),
        );
    }
    t.finish(cx);
    let env = env?;
    let name_ok = !env.value.is_empty()
        && !env.value.starts_with(|c: char| c.is_ascii_digit())
        && env
            .value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !name_ok {
        let looks_like_url = env.value.contains("://");
        cx.push(
            Problem::error(
                "notify.webhook_env",
                env.span.clone(),
                if looks_like_url {
                    "is a URL; a webhook URL is a secret and never goes in a plan".to_string()
                } else {
                    format!("{:?} is not an environment variable name", env.value)
                },
            )
            .why("plans are shared in git; the URL lets anyone post to the channel")
            .fix("write `webhook_env = \"GPUCTL_WEBHOOK_URL\"` and export GPUCTL_WEBHOOK_URL=<the URL> where gpuctl runs"),
        );
        return None;
    }
    Some(Notify {
        webhook_env: env.value,
    })
}

fn read_evidence(cx: &mut Ctx, mut t: TableView) -> Option<EvidenceRead> {
    let copy_back = t.string_array(cx, "copy_back");
    let mut files = Vec::new();
    match &copy_back {
        None if t.raw("copy_back").is_none() => missing(cx, &t, "copy_back", "the evidence is the point of the session: what is not copied back before the stop is lost with the machine", "add `copy_back = [\"environment_report.txt\", \"first_run.md\", \"eval_results.csv\"]`"),
        Some(list) if list.value.is_empty() => cx.push(
            Problem::error(t.field("copy_back"), list.span.clone(), "is empty")
                .why("the evidence is the point of the session: what is not copied back before the stop is lost with the machine")
                .fix("list at least environment_report.txt, first_run.md and eval_results.csv"),
        ),
        Some(list) => {
            for (i, entry) in list.value.iter().enumerate() {
                let bad = entry.value.trim().is_empty() || entry.value.contains('\0') || Path::new(&entry.value).components().any(|c| matches!(c, std::path::Component::ParentDir));
                if bad {
                    cx.push(Problem::error(format!("{}[{i}]", t.field("copy_back")), entry.span.clone(), "is not a usable file name (empty, or it climbs out with '..')").fix("name a file produced on the host, e.g. \"eval_results.csv\""));
                } else {
                    files.push(entry.value.clone());
                }
            }
        }
        None => {}
    }
    let proof_raw = required(cx, &mut t, "shutdown_proof", "gpuctl records a stop only with the proof the plan expects; without it a stop cannot be trusted", "add `shutdown_proof = \"process_exited\"` (or provider_terminated, host_unreachable)");
    let proof = proof_raw.as_ref().and_then(|p| {
        one_of(
            cx,
            &t,
            "shutdown_proof",
            p,
            &[
                ("provider_terminated", ShutdownProof::ProviderTerminated),
                ("process_exited", ShutdownProof::ProcessExited),
                ("host_unreachable", ShutdownProof::HostUnreachable),
            ],
        )
    });
    let dir = optional(cx, &mut t, "dir").map(|d| d.value);
    t.finish(cx);
    copy_back.as_ref()?;
    Some(EvidenceRead {
        spec: EvidenceSpec {
            copy_back: files,
            shutdown_proof: proof?,
            dir,
        },
        proof_span: proof_raw?.span,
    })
}

fn read_eval(cx: &mut Ctx, mut t: TableView, plan_dir: Option<&Path>) -> Option<EvalSpec> {
    if !t.is_present() {
        t.finish(cx);
        return None;
    }
    let cases_file = optional(cx, &mut t, "cases");
    if let (Some(file), Some(dir)) = (&cases_file, plan_dir) {
        if !dir.join(&file.value).is_file() {
            cx.push(Problem::error(t.field("cases"), file.span.clone(), format!("{} does not exist (paths are relative to the plan's folder)", dir.join(&file.value).display())).fix("point `cases` at a file of [[case]] tables, or write the cases inline as [[eval.case]]"));
        }
    }
    let tables = t.tables(cx, "case");
    let cases = read_cases(cx, tables);
    t.finish(cx);
    Some(EvalSpec {
        cases_file: cases_file.map(|f| f.value),
        cases,
    })
}

/// Eval cases, from `[[eval.case]]` in a plan or `[[case]]` in a cases file.
pub(super) fn read_cases(cx: &mut Ctx, tables: Vec<TableView>) -> Vec<EvalCase> {
    let mut ids = HashSet::new();
    let mut cases = Vec::new();
    for mut c in tables {
        let id = required(
            cx,
            &mut c,
            "id",
            "each case is reported by its id",
            "add `id = \"capital\"`",
        );
        let prompt = required(
            cx,
            &mut c,
            "prompt",
            "a case without a prompt tests nothing",
            "add `prompt = \"What is the capital of France?\"`",
        );
        let contains = c.string(cx, "expect_contains");
        let regex = c.string(cx, "expect_regex");
        let max_tokens = c.integer(cx, "max_tokens");
        let latency = c.integer(cx, "max_latency_ms");
        let expect = match (contains, regex) {
            (Some(s), None) => Some(Expectation::Contains(s.value)),
            (None, Some(r)) => match regex::Regex::new(&r.value) {
                Ok(_) => Some(Expectation::Regex(r.value)),
                Err(e) => {
                    cx.push(
                        Problem::error(
                            c.field("expect_regex"),
                            r.span,
                            format!(
                                "is not a valid regular expression: {}",
                                e.to_string().lines().last().unwrap_or_default()
                            ),
                        )
                        .fix("fix the pattern (Rust regex syntax)"),
                    );
                    None
                }
            },
            (Some(_), Some(r)) => {
                cx.push(
                    Problem::error(
                        c.field("expect_regex"),
                        r.span,
                        "a case has either expect_contains or expect_regex, not both",
                    )
                    .fix("keep one of the two"),
                );
                None
            }
            (None, None) => {
                if c.raw("expect_contains").is_none() && c.raw("expect_regex").is_none() {
                    missing(
                        cx,
                        &c,
                        "expect_contains",
                        "a case needs a pass condition",
                        "add `expect_contains = \"Paris\"` or `expect_regex = \"(?i)paris\"`",
                    );
                }
                None
            }
        };
        let max_tokens = match max_tokens {
            Some(m) if (1..=MAX_EVAL_TOKENS).contains(&m.value) => u32::try_from(m.value).ok(),
            Some(m) => {
                cx.push(
                    Problem::error(
                        c.field("max_tokens"),
                        m.span,
                        format!("{} is out of range", m.value),
                    )
                    .fix(format!("use 1 to {MAX_EVAL_TOKENS}")),
                );
                None
            }
            None => Some(DEFAULT_MAX_TOKENS),
        };
        let max_latency_ms = match latency {
            Some(l) if l.value > 0 => Some(Some(l.value as u64)),
            Some(l) => {
                cx.push(
                    Problem::error(c.field("max_latency_ms"), l.span, "must be more than zero")
                        .fix("give the limit in milliseconds, e.g. 5000"),
                );
                None
            }
            None => Some(None),
        };
        if let Some(i) = &id {
            if !ids.insert(i.value.clone()) {
                cx.push(
                    Problem::error(
                        c.field("id"),
                        i.span.clone(),
                        format!("case id {:?} is used twice", i.value),
                    )
                    .fix("give every case its own id"),
                );
            }
        }
        c.finish(cx);
        if let (Some(id), Some(prompt), Some(expect), Some(max_tokens), Some(max_latency_ms)) =
            (id, prompt, expect, max_tokens, max_latency_ms)
        {
            cases.push(EvalCase {
                id: id.value,
                prompt: prompt.value,
                expect,
                max_tokens,
                max_latency_ms,
            });
        }
    }
    cases
}

struct Spans {
    privacy: Range<usize>,
    why: Option<Range<usize>>,
    provider: Range<usize>,
    price: Range<usize>,
    total: Range<usize>,
    on_stop: Range<usize>,
    fallback_route: Range<usize>,
    access_table: Range<usize>,
    proof: Range<usize>,
    gpus: Range<usize>,
}

/// Rules that relate several sections: route against provider, budget arithmetic, proof.
fn cross_rules(cx: &mut Ctx, plan: &Plan, s: &Spans, now: DateTime<Utc>) {
    let provider = plan.instance.provider;
    match plan.route {
        Route::LocalCpu if provider != ProviderKind::Local => cx.push(
            Problem::error(
                "instance.provider",
                s.provider.clone(),
                format!("route local_cpu runs on this machine, but provider is \"{provider}\""),
            )
            .fix("use `provider = \"local\"`, or `route = \"rented_gpu\"` for a rented host"),
        ),
        Route::RentedGpu if provider == ProviderKind::Local => cx.push(
            Problem::error(
                "instance.provider",
                s.provider.clone(),
                "route rented_gpu needs a rented host, but provider is \"local\"",
            )
            .fix(
                "use provider ssh, lambda, runpod or vast; or `route = \"local_cpu\"` to run here",
            ),
        ),
        Route::FreeColab if provider != ProviderKind::Local => cx.push(
            Problem::error(
                "instance.provider",
                s.provider.clone(),
                "route free_colab runs in a notebook gpuctl generates; nothing is rented",
            )
            .fix("use `provider = \"local\"` for free_colab plans"),
        ),
        _ => {}
    }
    if plan.route == Route::FreeColab && plan.privacy_level == PrivacyLevel::Private {
        cx.push(
            Problem::error("plan.privacy_level", s.privacy.clone(), "private data is refused on free_colab")
                .why("a free notebook runs on shared infrastructure with no data agreement; private data does not belong there")
                .fix("use route local_cpu or rented_gpu, or lower privacy_level if the data is not private"),
        );
    }
    if plan.fallback.route.is_none() && plan.route != Route::LocalCpu {
        cx.push(
            Problem::error("fallback.route", s.fallback_route.clone(), "\"none\" is only accepted on route local_cpu")
                .why("a GPU can be out of memory or out of stock; the plan must say where the work goes then")
                .fix("use `route = \"local_cpu\"` as the fallback"),
        );
    }
    if plan.route == Route::RentedGpu && plan.instance.gpus == 0 {
        cx.push(
            Problem::warning("instance.gpus", s.gpus.clone(), "is 0 on route rented_gpu")
                .fix("set `gpus = 1` or more, or use route local_cpu"),
        );
    }
    if !plan.access.public_ports.is_empty() {
        cx.push(
            Problem::warning(
                "access.public_ports",
                s.access_table.clone(),
                "this plan opens public ports; `gpuctl up` refuses it without --allow-public-ports",
            )
            .why("a public port exposes the model, and your bill, to anyone who finds it"),
        );
    }
    // Proof against provider: only a cloud can answer "terminated"; a cloud VM needs exactly that.
    match (plan.evidence.shutdown_proof, provider.is_cloud()) {
        (ShutdownProof::ProviderTerminated, false) => cx.push(
            Problem::error("evidence.shutdown_proof", s.proof.clone(), format!("provider \"{provider}\" has no API that can confirm a termination"))
                .fix(if provider == ProviderKind::Local { "use `shutdown_proof = \"process_exited\"`" } else { "use `shutdown_proof = \"process_exited\"` (or \"host_unreachable\" with on_stop = \"command\" that powers the host off)" }),
        ),
        (p, true) if p != ShutdownProof::ProviderTerminated && plan.stop.on_stop == OnStop::Terminate => cx.push(
            Problem::error("evidence.shutdown_proof", s.proof.clone(), format!("\"{}\" proves the server stopped, not that the cloud stopped billing", p.as_str()))
                .why("only the provider's own read-back proves a cloud instance is gone")
                .fix("use `shutdown_proof = \"provider_terminated\"`"),
        ),
        (ShutdownProof::HostUnreachable, false) if provider == ProviderKind::Local => cx.push(
            Problem::error("evidence.shutdown_proof", s.proof.clone(), "this machine cannot be unreachable from itself").fix("use `shutdown_proof = \"process_exited\"`"),
        ),
        _ => {}
    }
    match (plan.stop.on_stop, provider) {
        (OnStop::Stop, ProviderKind::Lambda) => cx.push(
            Problem::error("stop.on_stop", s.on_stop.clone(), "Lambda has no stop: billing ends only at terminate").fix("use `on_stop = \"terminate\"`"),
        ),
        (OnStop::Stop, ProviderKind::Runpod | ProviderKind::Vast) => cx.push(
            Problem::error("stop.on_stop", s.on_stop.clone(), format!("a stopped {provider} instance still bills for its disk"))
                .why("users have been billed for weeks of storage after `stop` instead of `destroy`")
                .fix("use `on_stop = \"terminate\"`"),
        ),
        (OnStop::Command, p) if p.is_cloud() => cx.push(
            Problem::error("stop.on_stop", s.on_stop.clone(), "a stop command is only for ssh hosts you own; a cloud instance is terminated through its API").fix("use `on_stop = \"terminate\"`"),
        ),
        _ => {}
    }
    // Budget arithmetic at the declared price.
    if let (Some(price), Some(hourly)) = (plan.instance.hourly_price_usd, plan.budget.hourly_usd) {
        if provider.uses_ssh() && price > hourly {
            cx.push(
                Problem::error(
                    "instance.hourly_price_usd",
                    s.price.clone(),
                    format!("${price:.2}/h is above budget.hourly_usd ${hourly:.2}/h"),
                )
                .why("hourly_usd is the most this session may cost per hour")
                .fix("raise budget.hourly_usd, or use a cheaper host"),
            );
        }
    }
    if let Some(price) = plan.declared_price().filter(|p| *p > 0.0) {
        if let Some((stop, cause)) = plan.effective_stop(now, Some(price)) {
            let runway = (stop - now).to_std().unwrap_or_default();
            if cause == StopCause::Budget && runway <= plan.stop.grace {
                cx.push(
                    Problem::error(
                        "budget.max_total_usd",
                        s.total.clone(),
                        format!(
                            "${:.2} buys only {} at ${price:.2}/h, not more than the grace period",
                            plan.budget.max_total_usd.unwrap_or_default(),
                            humantime::format_duration(Duration::from_secs(runway.as_secs()))
                        ),
                    )
                    .fix("raise max_total_usd or use a cheaper host"),
                );
            } else if cause == StopCause::Budget
                && (plan.stop.hard_stop_time.is_some() || plan.stop.max_duration.is_some())
            {
                cx.push(Problem::warning(
                    "budget.max_total_usd",
                    s.total.clone(),
                    format!(
                        "the budget ends the session first: ${:.2} at ${price:.2}/h lasts {}",
                        plan.budget.max_total_usd.unwrap_or_default(),
                        humantime::format_duration(Duration::from_secs(runway.as_secs()))
                    ),
                ));
            }
        }
    }
    if let (Some(why), Some(span)) = (&plan.why, &s.why) {
        if let Some(warning) = reasoning::judge_why(why) {
            cx.push(Problem::warning("plan.why", span.clone(), warning).why("a strong route decision names constraints instead of enthusiasm").fix("say which constraint decides: VRAM, budget, privacy, SSH access, availability, time..."));
        }
    }
}

/// Check a cases file (`[[case]]` tables and nothing else).
pub fn check_cases(source: &Source) -> (Vec<EvalCase>, Vec<Problem>) {
    let mut cx = Ctx::default();
    let cases = match DeTable::parse(&source.text) {
        Ok(doc) => {
            secrets::scan(doc.get_ref(), &mut cx);
            let mut root = TableView::new("", 0..0, doc.get_ref());
            let tables = root.tables(&mut cx, "case");
            let cases = read_cases(&mut cx, tables);
            root.finish(&mut cx);
            cases
        }
        Err(e) => {
            cx.push(Problem::error(
                "toml",
                e.span().unwrap_or(0..0),
                format!(
                    "not valid TOML: {}",
                    e.message().lines().next().unwrap_or_default()
                ),
            ));
            Vec::new()
        }
    };
    (cases, cx.problems)
}
