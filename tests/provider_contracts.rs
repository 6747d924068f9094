//! The cloud clients against the providers' published contracts: a whole session per
//! provider with the emulator's request log on, asserting exactly what gpuctl sent; the
//! emulator refusing what the real APIs refuse; and gpuctl's answer to the rare states
//! and errors (Vast `exited`/`offline`, Lambda `unhealthy`/`preempted`).

mod common;

use common::emulator::{after_eval, gpuctl, plan, request_log, Cloud, Emulator};
use common::sshd::Sshd;
use common::{free_port, Ctx};
use serde_json::{json, Value};

/// The requests to one provider, as (method, path) pairs, in order.
fn calls(log: &[Value], prefix: &str) -> Vec<(String, String)> {
    log.iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
        .map(|r| {
            (
                r["method"].as_str().unwrap_or_default().to_string(),
                r["path"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn public_key(sshd: &Sshd) -> String {
    let text = std::fs::read_to_string(sshd.client_key.with_extension("pub"))
        .expect("the harness's public key");
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn session(ctx: &Ctx, emu: &Emulator, sshd: &Sshd, c: &Cloud) -> Value {
    let p = plan(ctx, sshd, c, free_port());
    let run = gpuctl(ctx, emu, &["up", "--json", p.to_str().expect("path")]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    common::result_event(&run.stdout)
}

fn start_logged(ctx: &Ctx, sshd: &Sshd) -> (Emulator, std::path::PathBuf) {
    let log = ctx.path("requests.jsonl");
    let emu = Emulator::start(sshd.port, &["--request-log", log.to_str().expect("path")]);
    (emu, log)
}

#[test]
fn vast_session_sends_exactly_the_published_requests() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let (emu, log) = start_logged(&ctx, &sshd);
    let r = session(&ctx, &emu, &sshd, &after_eval("vast", "RTX_3090", None));
    assert_eq!(r["state"], "stopped");
    let log = request_log(&log);
    let sent = calls(&log, "/vast/");
    let id = emu.instances()[0]["id"].as_str().expect("id").to_string();
    // Offers by POST with a JSON body; never GET /bundles/, never the deprecated v0 list.
    assert!(sent
        .iter()
        .all(|(m, p)| !(m == "GET" && p.contains("/bundles"))));
    assert!(!sent.contains(&("GET".into(), "/vast/api/v0/instances/".into())));
    let search = log
        .iter()
        .find(|r| r["method"] == "POST" && r["path"] == "/vast/api/v0/bundles/")
        .expect("an offer search");
    let q = &search["body"];
    assert_eq!(q["verified"], json!({ "eq": true }));
    assert_eq!(q["external"], json!({ "eq": false }));
    assert_eq!(q["rentable"], json!({ "eq": true }));
    assert_eq!(q["rented"], json!({ "eq": false }));
    assert_eq!(
        q["gpu_name"],
        json!({ "eq": "RTX 3090" }),
        "underscores become spaces"
    );
    assert_eq!(q["num_gpus"], json!({ "eq": 1 }));
    assert!(q["disk_space"]["gte"].as_f64().is_some());
    assert!(q["allocated_storage"].as_f64().is_some());
    // The verified datacenter offer was rented, not a cheaper unverified/external/small one.
    let create = log.iter().find(|r| r["method"] == "PUT").expect("a create");
    assert_eq!(create["path"], "/vast/api/v0/asks/5000000/");
    assert_eq!(create["body"]["runtype"], "ssh");
    assert!(create["body"]["label"]
        .as_str()
        .is_some_and(|l| l.starts_with("gpuctl-")));
    let reads: Vec<&Value> = log
        .iter()
        .filter(|r| r["method"] == "GET" && r["path"] == format!("/vast/api/v0/instances/{id}/"))
        .collect();
    assert!(!reads.is_empty());
    assert!(reads.iter().all(|r| r["query"] == "owner=me"), "{reads:?}");
    assert!(sent.contains(&("DELETE".into(), format!("/vast/api/v0/instances/{id}/"))));
    let attach = log
        .iter()
        .find(|r| r["path"] == format!("/vast/api/v0/instances/{id}/ssh/"))
        .expect("the plan's key attached");
    assert_eq!(attach["method"], "POST");
    assert_eq!(attach["body"], json!({ "ssh_key": public_key(&sshd) }));
    assert_eq!(emu.violations(), Vec::<String>::new());
    let throttled = emu.call("GET", "/_emulator/violations", &Value::Null)["throttled"].clone();
    assert_eq!(throttled, 0, "paced per endpoint: no 429");
}

#[test]
fn lambda_registers_the_plans_public_key_once_and_names_a_region() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let (emu, log_path) = start_logged(&ctx, &sshd);
    // The plan's type has no capacity now; its fallback names no region, so the launch
    // names one with capacity (region_name is required, never null).
    emu.call(
        "POST",
        "/_emulator/capacity",
        &json!({ "provider": "lambda", "instance_type": "gpu_1x_a10", "available": false }),
    );
    let c = Cloud {
        fallbacks: &["lambda:gpu_1x_a100"],
        ..after_eval("lambda", "gpu_1x_a10", Some("us-west-1"))
    };
    let first = session(&ctx, &emu, &sshd, &c);
    assert_eq!(first["state"], "stopped");
    emu.call(
        "POST",
        "/_emulator/capacity",
        &json!({ "provider": "lambda", "instance_type": "gpu_1x_a10", "available": true }),
    );
    let c = Cloud {
        name: Some("second"),
        ..after_eval("lambda", "gpu_1x_a10", Some("us-west-1"))
    };
    let second = session(&ctx, &emu, &sshd, &c);
    assert_eq!(second["state"], "stopped");
    let log = request_log(&log_path);
    let registered: Vec<&Value> = log
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"] == "/lambda/api/v1/ssh-keys")
        .collect();
    assert_eq!(registered.len(), 1, "registered once, reused after");
    let key = &registered[0]["body"];
    assert_eq!(key["public_key"], public_key(&sshd));
    let name = key["name"].as_str().expect("name");
    assert!(name.starts_with("gpuctl-") && name.len() <= 64);
    let launches: Vec<&Value> = log
        .iter()
        .filter(|r| r["path"] == "/lambda/api/v1/instance-operations/launch")
        .collect();
    assert_eq!(
        launches.len(),
        2,
        "no launch where the live offers had no capacity"
    );
    assert_eq!(launches[0]["body"]["region_name"], "us-east-1");
    assert_eq!(launches[0]["body"]["instance_type_name"], "gpu_1x_a100");
    assert_eq!(launches[1]["body"]["region_name"], "us-west-1");
    assert_eq!(launches[1]["body"]["instance_type_name"], "gpu_1x_a10");
    for l in &launches {
        assert_eq!(l["body"]["ssh_key_names"], json!([name]));
    }
    let text = std::fs::read_to_string(&log_path).expect("log");
    assert!(!text.contains("PRIVATE KEY"), "never the private key");
    assert!(log
        .iter()
        .any(|r| r["path"] == "/lambda/api/v1/instance-operations/terminate"));
    assert_eq!(emu.violations(), Vec::<String>::new());
    for i in emu.instances() {
        assert_eq!(i["public_key"], public_key(&sshd));
        assert_eq!(i["billing"], false);
    }
}

#[test]
fn runpod_deploys_with_public_key_and_non_null_inputs() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let (emu, log_path) = start_logged(&ctx, &sshd);
    let r = session(
        &ctx,
        &emu,
        &sshd,
        &after_eval("runpod", "NVIDIA GeForce RTX 4090", None),
    );
    assert_eq!(r["state"], "stopped");
    let log = request_log(&log_path);
    assert!(log
        .iter()
        .all(|r| r["method"] == "POST" && r["path"] == "/runpod/graphql"));
    let doc = |field: &str| {
        log.iter()
            .find(|r| {
                r["body"]["query"]
                    .as_str()
                    .is_some_and(|q| q.contains(field))
            })
            .unwrap_or_else(|| panic!("no {field} request"))
    };
    let deploy = doc("podFindAndDeployOnDemand");
    assert!(deploy["body"]["query"]
        .as_str()
        .is_some_and(|q| q.contains("$input: PodFindAndDeployOnDemandInput!")));
    let input = &deploy["body"]["variables"]["input"];
    assert_eq!(input["gpuTypeId"], "NVIDIA GeForce RTX 4090");
    assert_eq!(input["cloudType"], "ALL");
    assert_eq!(
        input["env"],
        json!([{ "key": "PUBLIC_KEY", "value": public_key(&sshd) }])
    );
    let terminate = doc("podTerminate");
    assert!(terminate["body"]["query"]
        .as_str()
        .is_some_and(|q| q.contains("$input: PodTerminateInput!")));
    assert_eq!(emu.violations(), Vec::<String>::new());
    assert_eq!(emu.instances()[0]["public_key"], public_key(&sshd));
}

#[test]
fn the_emulator_refuses_what_the_real_apis_refuse() {
    let emu = Emulator::start(free_port(), &["--lambda-launch-pace-ms", "0"]);
    // RunPod: a nullable variable where the argument is non-null.
    let (code, body) = emu.api(
        "POST",
        "/runpod/graphql",
        &json!({
            "query": "mutation T($input: PodTerminateInput) { podTerminate(input: $input) }",
            "variables": { "input": { "podId": "x" } }
        })
        .to_string(),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("used in position expecting type \\\"PodTerminateInput!\\\""),
        "{body}"
    );
    // The same with runpodctl's form passes validation (and finds no such pod).
    let (code, body) = emu.api(
        "POST",
        "/runpod/graphql",
        &json!({
            "query": "mutation T($podId: String!) { podTerminate(input: {podId: $podId}) }",
            "variables": { "podId": "x" }
        })
        .to_string(),
    );
    assert_eq!(code, 200, "{body}");
    // Vast: GET /bundles/ is not the published search; the v0 list is gone.
    let (code, _) = emu.api("GET", "/vast/api/v0/bundles/?q=%7B%7D", "");
    assert_eq!(code, 405);
    let (code, _) = emu.api("GET", "/vast/api/v0/instances/", "");
    assert_eq!(code, 410);
    // Vast: a second read of one endpoint within its interval is a plain-text 429.
    let (first, _) = emu.api("GET", "/vast/api/v0/instances/42/?owner=me", "");
    let (second, text) = emu.api("GET", "/vast/api/v0/instances/42/?owner=me", "");
    assert_eq!((first, second), (200, 429));
    assert!(text.starts_with("API requests too frequent"), "{text}");
    // Vast: destroying an unknown instance is 404 not_found.
    let (code, body) = emu.api("DELETE", "/vast/api/v0/instances/42/", "");
    assert_eq!(code, 404);
    assert!(body.contains("not_found"));
    // Lambda: region_name is required, and exactly one registered key.
    let (code, body) = emu.api(
        "POST",
        "/lambda/api/v1/instance-operations/launch",
        &json!({ "region_name": null, "instance_type_name": "gpu_1x_a10", "ssh_key_names": ["k"] })
            .to_string(),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("region_name"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (code, body) = emu.api(
        "POST",
        "/lambda/api/v1/instance-operations/launch",
        &json!({ "region_name": "us-east-1", "instance_type_name": "gpu_1x_a10", "ssh_key_names": ["never-registered"] })
            .to_string(),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("does not exist"));
    assert!(emu.instances().is_empty(), "nothing was launched");
    assert_eq!(emu.violations().len(), 5, "{:?}", emu.violations());
}

#[test]
fn a_vast_instance_that_boots_to_exited_or_offline_is_terminated_and_the_next_tried() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &["--vast-rate-limits", "off"]);
    emu.fault("vast", "launch", "boots_to_exited", 1);
    emu.fault("vast", "launch", "boots_to_offline", 1);
    let c = Cloud {
        fallbacks: &["vast:RTX 4090", "vast:RTX 3090"],
        ..after_eval("vast", "RTX 3090", None)
    };
    let r = session(&ctx, &emu, &sshd, &c);
    assert_eq!(r["state"], "stopped");
    let all = emu.instances();
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(
        all.iter().all(|i| i["billing"] == false),
        "the failed ones were terminated too: {all:#?}"
    );
    let id = r["session_id"].as_str().expect("id");
    let status = ctx.run(["status", id, "--json"]).json();
    let failed: Vec<&Value> = status["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "launch_failed")
        .collect();
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert!(failed[0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("exited")));
    assert!(failed[1]["message"]
        .as_str()
        .is_some_and(|m| m.contains("offline")));
}

#[test]
fn lambda_unhealthy_is_replaced_and_preempted_is_read_as_gone() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(
        sshd.port,
        &[
            "--lambda-pace-ms",
            "1000",
            "--lambda-launch-pace-ms",
            "12000",
        ],
    );
    emu.fault("lambda", "launch", "boots_to_unhealthy", 1);
    let c = Cloud {
        fallbacks: &["lambda:gpu_1x_a100"],
        ..after_eval("lambda", "gpu_1x_a10", Some("us-east-1"))
    };
    let r = session(&ctx, &emu, &sshd, &c);
    assert_eq!(r["state"], "stopped");
    let all = emu.instances();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|i| i["billing"] == false), "{all:#?}");
    // Two launches 12 s apart as documented, from one process: no 429 on the way.
    let v = emu.call("GET", "/_emulator/violations", &Value::Null);
    assert_eq!(v["throttled"], 0, "{v}");

    // Preempted while booting: Lambda ended it; the stop reads it back as gone.
    emu.fault("lambda", "launch", "boots_to_preempted", 1);
    let p = plan(
        &ctx,
        &sshd,
        &Cloud {
            name: Some("preempted"),
            ..after_eval("lambda", "gpu_1x_a10", Some("us-east-1"))
        },
        free_port(),
    );
    let run = gpuctl(&ctx, &emu, &["up", "--json", p.to_str().expect("path")]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let r = common::result_event(&run.stdout);
    // Failed (it never served), and the stop proven: nothing bills.
    assert_eq!(r["state"], "failed", "{r:#}\n{}", run.stderr);
    assert!(r["failure"]
        .as_str()
        .is_some_and(|f| f.contains("disappeared while booting")));
    assert!(emu.instances().iter().all(|i| i["billing"] == false));
}

#[test]
fn offers_shows_live_prices_and_fit_and_up_gates_on_them() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &["--vast-rate-limits", "off"]);
    let c = Cloud {
        fallbacks: &["runpod:NVIDIA RTX A5000", "lambda:gpu_1x_a100"],
        hourly: 1.0,
        ..after_eval("vast", "RTX 4090", None)
    };
    let p = plan(&ctx, &sshd, &c, free_port());
    let run = gpuctl(&ctx, &emu, &["offers", "--json", p.to_str().expect("path")]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let doc = run.json();
    let cands = doc["candidates"].as_array().expect("candidates");
    assert_eq!(cands.len(), 3);
    assert_eq!(cands[0]["provider"], "vast");
    assert_eq!(cands[0]["best"]["usd_per_hour"], 0.38);
    assert_eq!(cands[0]["best"]["fits_budget"], true);
    assert_eq!(cands[2]["provider"], "lambda");
    assert_eq!(cands[2]["best"], Value::Null, "$1.29/h is above $1.00/h");
    assert!(cands[2]["offers"]
        .as_array()
        .expect("offers")
        .iter()
        .all(|o| o["fits_budget"] == false));
    assert!(cands[0]["catalog_read_on"].is_string());
    // Nothing fits: exit 1, and the text view says so per row.
    let tight = plan(
        &ctx,
        &sshd,
        &Cloud {
            hourly: 0.1,
            ..after_eval("vast", "RTX 4090", None)
        },
        free_port(),
    );
    let run = gpuctl(&ctx, &emu, &["offers", tight.to_str().expect("path")]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("RTX 4090") && run.stdout.contains("no"));
}

#[test]
fn a_lambda_plan_is_refused_without_laptop_only_and_audit_shows_the_choice() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let emu = Emulator::start(sshd.port, &[]);
    let p = plan(
        &ctx,
        &sshd,
        &after_eval("lambda", "gpu_1x_a10", Some("us-east-1")),
        free_port(),
    );
    let mut cmd = ctx.command();
    emu.env(&mut cmd);
    let refused = common::Run::from(cmd.args(["up", "--json"]).arg(&p).output().expect("up"));
    assert_eq!(refused.code, 2, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("--laptop-only") && refused.stderr.contains("gpuctl daemon"),
        "{}",
        refused.stderr
    );
    assert!(emu.instances().is_empty(), "nothing was rented");
    let route_card = ctx.run(["plan".as_ref(), "show".as_ref(), p.as_os_str()]);
    assert!(
        route_card.stdout.contains("no instance-scoped key"),
        "{}",
        route_card.stdout
    );
    let r = session(
        &ctx,
        &emu,
        &sshd,
        &after_eval("lambda", "gpu_1x_a10", Some("us-east-1")),
    );
    let id = r["session_id"].as_str().expect("id");
    let audit = ctx.run(["audit", "--format", "json"]).json();
    let row = audit["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["session_id"] == id)
        .cloned()
        .expect("the session");
    assert!(
        row["flags"]
            .as_array()
            .expect("flags")
            .contains(&json!("laptop_only")),
        "{row}"
    );
}
