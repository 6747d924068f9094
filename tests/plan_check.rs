//! `gpuctl plan check|new|show`: every example plan is valid, every refused plan in the
//! corpus is refused with exit 2 naming its field at the right line, and nothing panics.

mod common;

use common::{assert_no_panic, repo_root, Ctx};

fn plan_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join(dir))
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_plan_is_valid() {
    let ctx = Ctx::new();
    let plans = plan_files("plans");
    assert!(
        plans.len() >= 5,
        "plans/ should hold the five example plans"
    );
    for plan in plans {
        let run = ctx.run(["plan".as_ref(), "check".as_ref(), plan.as_os_str()]);
        assert_eq!(
            run.code,
            0,
            "{} was refused:\n{}",
            plan.display(),
            run.stderr
        );
        assert!(run.stdout.contains(": ok"), "{}", run.stdout);
    }
}

/// Each corpus file names the fields it must be refused for in `# expect: FIELD` lines;
/// the reported line must be the line of that field, or of its section when it is missing.
#[test]
fn every_refused_plan_names_its_field() {
    let ctx = Ctx::new();
    let corpus = plan_files("tests/refused");
    assert!(
        corpus.len() >= 40,
        "the refusal corpus is smaller than expected"
    );
    for file in corpus {
        let text = std::fs::read_to_string(&file).expect("read corpus file");
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let run = ctx.run([
            "plan".as_ref(),
            "check".as_ref(),
            "--json".as_ref(),
            file.as_os_str(),
        ]);
        assert_no_panic(&run);
        assert_eq!(
            run.code,
            2,
            "{} was not refused:\n{}{}",
            file.display(),
            run.stdout,
            run.stderr
        );
        let doc = run.json();
        let problems = doc["files"][0]["problems"]
            .as_array()
            .expect("problems array");
        for field in expected {
            let found = problems
                .iter()
                .find(|p| p["field"] == field && p["severity"] == "error");
            let Some(p) = found else {
                panic!("{}: no error for `{field}`; got {:#}", file.display(), doc)
            };
            let line = p["line"].as_u64().expect("line") as usize;
            assert!(line >= 1 && p["column"].as_u64().expect("column") >= 1);
            assert!(
                p["fix"].is_string() || p["why"].is_string() || field == "toml",
                "{}: `{field}` has no fix",
                file.display()
            );
            // The line points at the field itself, or at its section header when the field is missing.
            let source_line = text.lines().nth(line - 1).unwrap_or("");
            let leaf = field.rsplit('.').next().unwrap_or(field);
            let leaf = leaf.split('[').next().unwrap_or(leaf);
            let section = field.split('.').next().unwrap_or(field);
            let points_at_field =
                source_line.contains(leaf) || source_line.contains(&format!("[{section}"));
            let section_missing = !text.contains(&format!("[{section}]")) && line == 1;
            let message = p["message"].as_str().unwrap_or("");
            assert!(
                points_at_field
                    || section_missing
                    || field == "toml"
                    || message.contains("missing")
                    || message.contains("no hard stop")
                    || message.contains("no port")
                    || message.contains("needs"),
                "{}:{line}: `{field}` points at unrelated line {source_line:?}",
                file.display()
            );
        }
    }
}

#[test]
fn text_output_has_file_line_column_field_why_and_fix() {
    let ctx = Ctx::new();
    let run = ctx.run(["plan", "check", "tests/refused/missing-hard-stop.toml"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("error: tests/refused/missing-hard-stop.toml:"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("stop.max_duration: no hard stop"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("keeps billing"),
        "the why should say a GPU without a hard stop keeps billing:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("fix: add"), "{}", run.stderr);
}

#[test]
fn secrets_are_refused_without_being_echoed() {
    let ctx = Ctx::new();
    for (file, secret) in [
        ("tests/refused/api-key-in-plan.toml", "sk-proj-AbCdEf"),
        ("tests/refused/token-in-args.toml", "hf_AbCdEf"),
        (
            "tests/refused/private-key-as-identity.toml",
            "b3BlbnNzaC1rZXkt",
        ),
        ("tests/refused/password-field.toml", "hunter2"),
    ] {
        for json in [false, true] {
            let mut args = vec!["plan", "check", file];
            if json {
                args.push("--json");
            }
            let run = ctx.run(&args);
            assert_eq!(run.code, 2, "{file}");
            assert!(
                !run.stdout.contains(secret) && !run.stderr.contains(secret),
                "{file} echoed its secret:\n{}{}",
                run.stdout,
                run.stderr
            );
            assert!(
                run.stdout.contains("value not shown") || run.stderr.contains("value not shown")
            );
        }
    }
    // A secret on a line with a syntax error is not echoed either.
    let p = ctx.write(
        "broken.toml",
        "schema = 1\napi_key = \"sk-proj-AbCdEfGhIjKlMnOpQrSt\" oops\n",
    );
    let run = ctx.run(["plan".as_ref(), "check".as_ref(), p.as_os_str()]);
    assert_eq!(run.code, 2);
    assert!(!run.stderr.contains("sk-proj"), "{}", run.stderr);
}

#[test]
fn a_plan_that_is_not_utf8_is_refused_with_its_position() {
    let ctx = Ctx::new();
    let p = ctx.write("latin1.toml", b"schema = 1\n[plan]\nname = \"caf\xe9\"\n");
    let run = ctx.run(["plan".as_ref(), "check".as_ref(), p.as_os_str()]);
    assert_no_panic(&run);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(":3:12:") && run.stderr.contains("not UTF-8"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_huge_plan_is_refused_before_parsing() {
    let ctx = Ctx::new();
    let mut text = String::from("schema = 1\n");
    while text.len() < 10 * 1024 * 1024 {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let p = ctx.write("huge.toml", text);
    let run = ctx.run([
        "plan".as_ref(),
        "check".as_ref(),
        "--json".as_ref(),
        p.as_os_str(),
    ]);
    assert_no_panic(&run);
    assert_eq!(run.code, 2);
    let doc = run.json();
    assert_eq!(doc["files"][0]["problems"][0]["field"], "file");
    assert!(doc["files"][0]["problems"][0]["message"]
        .as_str()
        .unwrap_or("")
        .contains("bytes"));
}

#[test]
fn a_missing_file_is_a_clear_refusal() {
    let ctx = Ctx::new();
    let run = ctx.run(["plan", "check", "no/such/plan.toml"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("no/such/plan.toml") && run.stderr.contains("cannot read"),
        "{}",
        run.stderr
    );
}

#[test]
fn rented_gpu_template_is_refused_until_filled_in() {
    let ctx = Ctx::new();
    let run = ctx.run(["plan", "new", "--route", "rented_gpu"]);
    assert_eq!(run.code, 0);
    let p = ctx.write("p.toml", &run.stdout);
    let check = ctx.run([
        "plan".as_ref(),
        "check".as_ref(),
        "--json".as_ref(),
        p.as_os_str(),
    ]);
    assert_eq!(check.code, 2);
    let doc = check.json();
    let fields: Vec<&str> = doc["files"][0]["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|p| p["field"].as_str())
        .collect();
    for f in [
        "plan.goal",
        "plan.why",
        "plan.can_prove",
        "plan.cannot_prove",
        "instance.host",
    ] {
        assert!(
            fields.contains(&f),
            "template refusal should name {f}: {fields:?}"
        );
    }
    // Filling them in makes it valid.
    let filled = run
        .stdout
        .replace("goal = \"\"", "goal = \"prove vLLM serving\"")
        .replace(
            "why = \"\"",
            "why = \"I will use rented_gpu because I need 24 GB of VRAM and SSH\"",
        )
        .replace("can_prove = \"\"", "can_prove = \"serving works\"")
        .replace("cannot_prove = \"\"", "cannot_prove = \"7B quality\"")
        .replace("host = \"\"", "host = \"gpu.example.com\"");
    let p = ctx.write("filled.toml", filled);
    let check = ctx.run(["plan".as_ref(), "check".as_ref(), p.as_os_str()]);
    assert_eq!(check.code, 0, "{}", check.stderr);
}

#[test]
fn local_and_colab_templates_are_valid_as_written() {
    let ctx = Ctx::new();
    for route in ["local_cpu", "free_colab"] {
        let run = ctx.run(["plan", "new", "--route", route]);
        let p = ctx.write(&format!("{route}.toml"), &run.stdout);
        let check = ctx.run(["plan".as_ref(), "check".as_ref(), p.as_os_str()]);
        assert_eq!(check.code, 0, "{route}: {}", check.stderr);
    }
}

#[test]
fn plan_new_does_not_overwrite_without_force() {
    let ctx = Ctx::new();
    let p = ctx.write("existing.toml", "keep me");
    let run = ctx.run([
        "plan".as_ref(),
        "new".as_ref(),
        "-o".as_ref(),
        p.as_os_str(),
    ]);
    assert_eq!(run.code, 2);
    assert_eq!(std::fs::read_to_string(&p).expect("read"), "keep me");
    let run = ctx.run([
        "plan".as_ref(),
        "new".as_ref(),
        "--force".as_ref(),
        "-o".as_ref(),
        p.as_os_str(),
    ]);
    assert_eq!(run.code, 0);
    assert!(std::fs::read_to_string(&p)
        .expect("read")
        .contains("schema = 1"));
}

#[test]
fn enthusiasm_is_a_warning_not_a_refusal() {
    let ctx = Ctx::new();
    let text = std::fs::read_to_string(repo_root().join("plans/ssh-rented-gpu.toml"))
        .expect("read")
        .replace(
            "why = \"I will use rented_gpu because I need predictable VRAM and SSH access for vLLM serving, within a $5 budget\"",
            "why = \"because it is faster and better\"",
        )
        .replace("cases = \"evals/smoke.toml\"", "");
    let p = ctx.write("enthusiastic.toml", text);
    let run = ctx.run([
        "plan".as_ref(),
        "check".as_ref(),
        "--json".as_ref(),
        p.as_os_str(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let doc = run.json();
    let warning = doc["files"][0]["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .find(|p| p["field"] == "plan.why")
        .cloned();
    assert!(warning
        .is_some_and(|w| w["severity"] == "warning"
            && w["message"].as_str().unwrap_or("").contains("faster")));
    let strict = ctx.run([
        "plan".as_ref(),
        "check".as_ref(),
        "--deny-warnings".as_ref(),
        p.as_os_str(),
    ]);
    assert_eq!(strict.code, 2);
}

#[test]
fn plan_show_renders_the_route_card() {
    let ctx = Ctx::new();
    let run = ctx.run(["plan", "show", "plans/ssh-rented-gpu.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for s in [
        "I will use rented_gpu because",
        "This route can prove",
        "This route cannot prove",
        "I will stop or fall back when",
        "The evidence I must copy back is",
    ] {
        assert!(run.stdout.contains(s), "missing {s:?} in\n{}", run.stdout);
    }
    let json = ctx.run(["plan", "show", "--json", "plans/local-cpu.toml"]);
    assert_eq!(json.json()["route"], "local_cpu");
    let refused = ctx.run(["plan", "show", "tests/refused/missing-goal.toml"]);
    assert_eq!(refused.code, 2);
}

#[test]
fn check_reports_several_files_and_fails_if_any_is_refused() {
    let ctx = Ctx::new();
    let run = ctx.run([
        "plan",
        "check",
        "--json",
        "plans/local-cpu.toml",
        "tests/refused/missing-goal.toml",
    ]);
    assert_eq!(run.code, 2);
    let doc = run.json();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["files"][0]["ok"], true);
    assert_eq!(doc["files"][1]["ok"], false);
}
