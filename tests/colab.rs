//! The free_colab route: the notebook gpuctl writes is executed headless here (nbclient,
//! on CPU, with a tiny model built from the default model's tokenizer), its zip imported,
//! and the session found in `gpuctl audit`. Malicious zips are refused and write nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{agent_bin, model_path, repo_root, Ctx};

fn python(args: &[&str]) {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python3 {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tiny_model(ctx: &Ctx) -> PathBuf {
    let assets = ctx.path("assets");
    let out = Command::new(agent_bin())
        .args(["export-tokenizer", "--model"])
        .arg(model_path())
        .arg("--out")
        .arg(&assets)
        .output()
        .expect("export-tokenizer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = ctx.path("tiny-model");
    python(&[
        repo_root()
            .join("tests/colab/make_tiny_model.py")
            .to_str()
            .expect("path"),
        assets.to_str().expect("path"),
        model.to_str().expect("path"),
    ]);
    model
}

fn colab_plan(ctx: &Ctx, model: &Path, privacy: &str) -> PathBuf {
    ctx.write(
        &format!("colab-{privacy}.toml"),
        format!(
            r#"schema = 1
[plan]
name = "colab-check"
goal = "run the same loop in a hosted notebook"
route = "free_colab"
why = "I will use free_colab because it costs nothing and a GPU may be available, and the data is public"
can_prove = "the notebook path and a short evaluation"
cannot_prove = "guaranteed GPU availability, long jobs, serving"
privacy_level = "{privacy}"
owner = "research"
[model]
id = "tiny-llama"
runtime = "command"
command = ["python", "run_local_llm.py"]
path = "{model}"
[instance]
provider = "local"
[stop]
max_duration = "1h"
grace = "2m"
[fallback]
route = "local_cpu"
[evidence]
copy_back = ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl"]
shutdown_proof = "process_exited"
dir = "{evidence}"
[[eval.case]]
id = "anything"
prompt = "What is 2 + 2?"
expect_regex = "^"
max_tokens = 8
"#,
            model = model.display(),
            evidence = ctx.path("bundles").display(),
        ),
    )
}

#[test]
fn the_notebook_runs_headless_and_its_zip_becomes_an_audited_session() {
    let ctx = Ctx::new();
    let model = tiny_model(&ctx);
    let plan = colab_plan(&ctx, &model, "public");
    let lab = ctx.path("lab/lab.ipynb");
    std::fs::create_dir_all(lab.parent().expect("dir")).expect("mkdir");
    let r = ctx.run([
        "notebook",
        plan.to_str().expect("path"),
        "-o",
        lab.to_str().expect("path"),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let nb: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&lab).expect("nb")).expect("json");
    assert_eq!(nb["nbformat"], 4);
    let text = nb.to_string();
    assert!(
        text.contains("nvidia-smi || true") && text.contains("hard stop"),
        "the notebook records the GPU and checks the stop"
    );

    python(&[
        repo_root()
            .join("tests/colab/run_notebook.py")
            .to_str()
            .expect("path"),
        lab.to_str().expect("path"),
    ]);
    let zip = ctx.path("lab/gpuctl-evidence-colab-check.zip");
    assert!(zip.is_file(), "the last cell packs the evidence");

    let r = ctx.run([
        "evidence",
        "import",
        plan.to_str().expect("path"),
        zip.to_str().expect("path"),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    let id = v["session_id"].as_str().expect("id").to_string();
    let bundle = PathBuf::from(v["bundle"].as_str().expect("bundle"));
    for f in [
        "environment_report.txt",
        "first_run.md",
        "eval_results.csv",
        "requests.jsonl",
        "colab_notes.md",
        "stop_record.json",
        "shutdown_proof.json",
        "cost.json",
        "report.html",
        "MANIFEST.sha256",
    ] {
        assert!(bundle.join(f).is_file(), "the bundle lacks {f}");
    }
    let notes = std::fs::read_to_string(bundle.join("colab_notes.md")).expect("notes");
    for must in [
        "runtime type",
        "GPU visible: no",
        "install cells",
        "first run output",
        "files downloaded back",
        "if the runtime resets",
    ] {
        assert!(
            notes.contains(must),
            "colab_notes.md lacks {must:?}:\n{notes}"
        );
    }
    assert_eq!(ctx.run(["evidence", &id, "verify"]).code, 0);

    let audit = ctx.run(["audit", "--format", "json"]).json();
    let row = audit["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["session_id"] == id.as_str())
        .cloned()
        .expect("the imported session is audited");
    assert_eq!(row["route"], "free_colab");
    assert_eq!(row["cost_usd"].as_f64(), Some(0.0));
    assert_eq!(row["proof"], "confirmed");
}

#[test]
fn a_notebook_past_its_hard_stop_skips_its_steps_and_says_why() {
    let ctx = Ctx::new();
    let plan = colab_plan(&ctx, &ctx.path("no-model-needed"), "public");
    let lab = ctx.path("late/lab.ipynb");
    std::fs::create_dir_all(lab.parent().expect("dir")).expect("mkdir");
    assert_eq!(
        ctx.run([
            "notebook",
            plan.to_str().expect("path"),
            "-o",
            lab.to_str().expect("path")
        ])
        .code,
        0
    );
    // The same notebook opened after its hard stop: move the stop into the past.
    let text = std::fs::read_to_string(&lab).expect("nb");
    let deadline = serde_json::from_str::<serde_json::Value>(&text).expect("json")["metadata"]
        ["gpuctl"]["deadline"]
        .as_str()
        .expect("deadline")
        .to_string();
    let stop = deadline
        .split('.')
        .next()
        .unwrap_or(&deadline)
        .trim_end_matches('Z')
        .to_string();
    let past = (chrono::Utc::now() - chrono::Duration::minutes(5))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    assert!(
        text.contains(&stop),
        "the stop is written into the notebook"
    );
    std::fs::write(&lab, text.replace(&stop, &past)).expect("write");
    python(&[
        repo_root()
            .join("tests/colab/run_notebook.py")
            .to_str()
            .expect("path"),
        lab.to_str().expect("path"),
    ]);
    let zip = ctx.path("late/gpuctl-evidence-colab-check.zip");
    let list = Command::new("python3")
        .args(["-c", "import sys, zipfile, json; z = zipfile.ZipFile(sys.argv[1]); print(json.loads(z.read('stop_record.json'))['reason'])"])
        .arg(&zip)
        .output()
        .expect("python3");
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "deadline");
    // Its zip lacks the steps' files: the import refuses it and says which.
    let r = ctx.run([
        "evidence",
        "import",
        plan.to_str().expect("path"),
        zip.to_str().expect("path"),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("environment_report.txt"), "{}", r.stderr);
}

#[test]
fn private_plans_get_no_notebook_and_malicious_zips_are_refused_writing_nothing() {
    let ctx = Ctx::new();
    let private = colab_plan(&ctx, &ctx.path("m"), "private");
    let r = ctx.run([
        "notebook",
        private.to_str().expect("path"),
        "-o",
        ctx.path("p.ipynb").to_str().expect("path"),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("private"), "{}", r.stderr);
    assert!(!ctx.path("p.ipynb").exists());

    let plan = colab_plan(&ctx, &ctx.path("m"), "public");
    let make = ctx.write(
        "make_zips.py",
        r#"import io, json, stat, sys, zipfile
d = sys.argv[1]
ok = {n: "x" for n in ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl", "colab_notes.md"]}
ok["stop_record.json"] = json.dumps({"started_at": "2026-01-01T00:00:00+00:00", "stopped_at": "2026-01-01T00:05:00+00:00", "reason": "completed", "plan_sha256": "0"})
def write(name, files, extra=None):
    with zipfile.ZipFile(f"{d}/{name}.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for n, t in files.items():
            z.writestr(n, t)
        if extra:
            extra(z)
write("traversal", {**ok, "../../evil.txt": "x"})
write("absolute", {**ok, "/etc/evil.txt": "x"})
def link(z):
    info = zipfile.ZipInfo("gpu_metrics.csv")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z.writestr(info, "/etc/passwd")
write("symlink", ok, link)
write("bomb", {**ok, "environment_report.txt": "\0" * (40 * 1024 * 1024)})
write("missing", {n: t for n, t in ok.items() if n != "stop_record.json"})
open(f"{d}/notazip.zip", "w").write("this is not a zip")
"#,
    );
    let dir = ctx.path("zips");
    std::fs::create_dir_all(&dir).expect("mkdir");
    python(&[make.to_str().expect("path"), dir.to_str().expect("path")]);
    for (name, says) in [
        ("traversal", "escaping path"),
        ("absolute", "absolute"),
        ("symlink", "symbolic link"),
        ("bomb", "zip bomb"),
        ("missing", "stop_record.json missing"),
        ("notazip", "not a zip"),
    ] {
        let zip = dir.join(format!("{name}.zip"));
        let r = ctx.run([
            "evidence",
            "import",
            plan.to_str().expect("path"),
            zip.to_str().expect("path"),
        ]);
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains(says) && r.stderr.contains("nothing was imported"),
            "{name}: {}",
            r.stderr
        );
    }
    assert!(!ctx.path("bundles").exists(), "no bundle was written");
    assert!(!ctx.path("evil.txt").exists() && !Path::new("/etc/evil.txt").exists());
    assert_eq!(
        ctx.run(["ls", "--json"]).json(),
        serde_json::json!([]),
        "no session was recorded"
    );
}
