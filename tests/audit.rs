//! `gpuctl audit` over sessions made through the real code paths (the local route, and
//! emulated clouds over SSH), checked to the cent against costs computed here; and the
//! HTML pages opened in headless Chromium.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::emulator::{after_eval, gpuctl, plan, Cloud, Emulator};
use common::sshd::Sshd;
use common::{free_port, local_plan, Ctx};

fn cloud_plan(
    ctx: &Ctx,
    sshd: &Sshd,
    provider: &str,
    itype: &str,
    region: Option<&str>,
    name: &str,
) -> PathBuf {
    let c = Cloud {
        name: Some(name),
        ..after_eval(provider, itype, region)
    };
    plan(ctx, sshd, &c, free_port())
}

/// The cost of a session, computed here from its recorded times and price.
fn expected_cents(s: &serde_json::Value) -> i64 {
    let price = s["price_usd_per_hour"].as_f64().unwrap_or(0.0);
    let (Some(l), Some(e)) = (s["launched_at"].as_str(), s["ended_at"].as_str()) else {
        return 0;
    };
    let ms = (chrono::DateTime::parse_from_rfc3339(e).expect("ended")
        - chrono::DateTime::parse_from_rfc3339(l).expect("launched"))
    .num_milliseconds();
    let unit = if s["provider"] == "lambda" {
        60_000
    } else {
        1_000
    };
    let billed = ((ms + unit - 1) / unit * unit) as f64 / 1000.0;
    (price * billed / 3600.0 * 100.0).round() as i64
}

/// Headless Chromium loads the page: it must parse and render; the screenshot is kept.
fn render(page: &std::path::Path, shot: &str) {
    let dom = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium (scripts/install-test-deps.sh installs it)");
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("<svg") || dom.contains("no request"),
        "the page rendered without charts"
    );
    let dir = common::repo_root().join("target/ci-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    let png = dir.join(shot);
    let _ = std::fs::remove_file(&png);
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1000,2400",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "a real screenshot, not a blank one: {size} bytes"
    );
}

#[test]
fn audit_totals_match_the_costs_computed_here_to_the_cent_and_survive_deleted_bundles() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    let plans = [
        cloud_plan(&ctx, &sshd, "vast", "RTX 3090", None, "vast-audit"),
        cloud_plan(
            &ctx,
            &sshd,
            "lambda",
            "gpu_1x_a10",
            Some("us-east-1"),
            "lambda-audit",
        ),
        cloud_plan(
            &ctx,
            &sshd,
            "runpod",
            "NVIDIA RTX A5000",
            None,
            "runpod-audit",
        ),
    ];
    let mut ids = Vec::new();
    for p in &plans {
        let r = gpuctl(&ctx, &emu, &["up", "--json", p.to_str().expect("path")]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        ids.push(
            common::result_event(&r.stdout)["session_id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
    }
    let local = local_plan(&ctx, free_port(), "after_eval = true");
    let r = ctx.run(["up", "--json", local.to_str().expect("path")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    ids.push(
        common::result_event(&r.stdout)["session_id"]
            .as_str()
            .expect("id")
            .to_string(),
    );
    // One more whose terminate never completes: unconfirmed, listed first, flagged.
    emu.fault("vast", "terminate", "never_complete", 10);
    // A plan of its own: ports chosen now, not reused from a session long over (another test
    // may hold them by now).
    let again = cloud_plan(&ctx, &sshd, "vast", "RTX 3090", None, "vast-audit");
    let r = gpuctl(&ctx, &emu, &["up", "--json", again.to_str().expect("path")]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let unconfirmed = common::result_event(&r.stdout)["session_id"]
        .as_str()
        .expect("id")
        .to_string();
    ids.push(unconfirmed.clone());

    let mut expected_total = 0;
    let mut per_provider = std::collections::BTreeMap::<String, i64>::new();
    for id in &ids {
        let s = ctx.run(["status", id, "--json"]).json()["session"].clone();
        let cents = if s["state"] == "stop_unconfirmed" {
            (s["cost_usd"].as_f64().unwrap_or(0.0) * 100.0).round() as i64
        } else {
            expected_cents(&s)
        };
        assert_eq!(
            (s["cost_usd"].as_f64().unwrap_or(0.0) * 100.0).round() as i64,
            cents,
            "{s:#}"
        );
        expected_total += cents;
        *per_provider
            .entry(s["provider"].as_str().unwrap_or_default().to_string())
            .or_default() += cents;
    }

    let audit = |args: &[&str]| {
        let mut all = vec!["audit"];
        all.extend_from_slice(args);
        gpuctl(&ctx, &emu, &all)
    };
    let j = audit(&["--format", "json"]);
    assert_eq!(j.code, 0, "{}", j.stderr);
    let doc = j.json();
    let sessions = doc["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), ids.len());
    assert_eq!(
        sessions[0]["session_id"],
        unconfirmed.as_str(),
        "what may still bill comes first"
    );
    assert_eq!(sessions[0]["proof"], "UNCONFIRMED");
    assert!(sessions[0]["flags"]
        .as_array()
        .expect("flags")
        .contains(&serde_json::json!("stop_unconfirmed")));
    assert_eq!(
        (doc["totals"]["cost_usd"].as_f64().expect("total") * 100.0).round() as i64,
        expected_total
    );
    let vast = sessions
        .iter()
        .find(|s| s["provider"] == "vast")
        .expect("vast row");
    assert_eq!(vast["catalog_price_usd_per_hour"].as_f64(), Some(0.22));
    assert_eq!(vast["price_usd_per_hour"].as_f64(), Some(0.22));

    let by = audit(&["--by", "provider", "--format", "json"]).json();
    for g in by["groups"].as_array().expect("groups") {
        let name = g["group"].as_str().expect("group");
        assert_eq!(
            (g["cost_usd"].as_f64().expect("cost") * 100.0).round() as i64,
            per_provider[name],
            "{name}"
        );
    }
    let csv = audit(&["--format", "csv"]);
    assert_eq!(csv.stdout.lines().count(), ids.len() + 1, "{}", csv.stdout);
    let table = audit(&["--by", "month"]);
    assert!(table.stdout.contains("total:"), "{}", table.stdout);
    let only = audit(&["--plan", "lambda-audit", "--format", "json"]).json();
    assert_eq!(only["sessions"].as_array().map(Vec::len), Some(1));
    let owner = audit(&["--owner", "research", "--format", "json"]).json();
    assert_eq!(
        owner["sessions"].as_array().map(Vec::len),
        Some(4),
        "the cloud sessions"
    );
    let bad = audit(&["--since", "last tuesday"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("YYYY-MM-DD"), "{}", bad.stderr);

    // --strict: 4 while a stop is unconfirmed.
    assert_eq!(audit(&["--strict"]).code, 4);

    // The database alone answers: delete every bundle, the audit is the same.
    std::fs::remove_dir_all(ctx.path("bundles")).expect("rm bundles");
    let again = audit(&["--format", "json"]).json();
    assert_eq!(again["totals"], doc["totals"]);

    // A plan edited after its session ran is flagged.
    let mut text = std::fs::read_to_string(&plans[1]).expect("plan");
    text.push_str("\n# edited after launch\n");
    std::fs::write(&plans[1], text).expect("edit");
    let changed = audit(&["--plan", "lambda-audit", "--format", "json", "--strict"]);
    assert_eq!(changed.code, 1, "{}", changed.stdout);
    assert!(changed.stdout.contains("plan_changed"));

    // The audit as a page, opened in Chromium.
    let html = ctx.path("audit.html");
    let h = audit(&["--by", "provider", "--html", html.to_str().expect("path")]);
    assert_eq!(h.code, 0, "{}", h.stderr);
    let page = std::fs::read_to_string(&html).expect("page");
    assert!(page.contains(&unconfirmed), "the flagged session is listed");
    assert!(
        !page.contains("src=") && !page.contains("href=") && !page.contains("<script"),
        "self-contained"
    );
    render(&html, "audit.png");
}

#[test]
fn every_bundle_has_a_report_a_browser_renders() {
    let ctx = Ctx::new();
    let plan = local_plan(&ctx, free_port(), "after_eval = true");
    let r = ctx.run(["up", "--json", plan.to_str().expect("path")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let result = common::result_event(&r.stdout);
    let bundle = PathBuf::from(result["bundle"].as_str().expect("bundle"));
    let page = std::fs::read_to_string(bundle.join("report.html")).expect("report.html");
    for section in [
        "Route card",
        "Timeline",
        "Environment",
        "First run",
        "Evaluation",
        "Latency",
        "GPU memory",
        "Cost against the budget",
        "Shutdown proof",
    ] {
        assert!(page.contains(section), "report.html lacks {section}");
    }
    assert!(
        !page.contains("src=") && !page.contains("href=") && !page.contains("<script"),
        "no network resource, no script"
    );
    let manifest = std::fs::read_to_string(bundle.join("MANIFEST.sha256")).expect("manifest");
    assert!(
        manifest.contains("report.html"),
        "the manifest covers the report"
    );
    render(&bundle.join("report.html"), "report.png");
}
