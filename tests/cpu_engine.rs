//! gpuctl's own CPU engine (agent/src/engine/native): the fixed eval passes at every kernel
//! level this CPU runs, the agent tokenizes the eval's chat prompts as llama.cpp does and
//! greedy decoding starts with the same tokens, and a bad kernel level is refused by name. The kernels' arithmetic against
//! the scalar reference is unit-tested in the agent (`engine::native::kernels`).

mod common;

use std::process::Command;

use common::{agent_bin, free_port, model_path, Ctx};

fn levels() -> Vec<String> {
    let out = Command::new(agent_bin())
        .arg("kernels")
        .output()
        .expect("run gpuctl-agent kernels");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kernels JSON");
    let levels: Vec<String> = doc["supported"]
        .as_array()
        .expect("supported")
        .iter()
        .filter_map(|l| l.as_str().map(String::from))
        .collect();
    assert!(levels.contains(&"scalar".to_string()), "{doc}");
    assert!(levels.contains(&doc["best"].as_str().expect("best").to_string()));
    levels
}

/// The bundled plan, on a free port and with the model's absolute path.
fn bundled_plan(ctx: &Ctx) -> std::path::PathBuf {
    let text = std::fs::read_to_string(common::repo_root().join("plans/local-cpu.toml"))
        .expect("plans/local-cpu.toml");
    let port = free_port();
    let text = text
        .replace(
            "ports = [{ local = 8000, remote = 8000 }]",
            &format!("ports = [{{ local = {port}, remote = {port} }}]"),
        )
        .replace(
            "path = \"models/SmolLM2-135M-Instruct.Q4_1.gguf\"",
            &format!("path = \"{}\"", model_path().display()),
        );
    assert!(
        text.contains(&port.to_string()),
        "the bundled plan's port line changed"
    );
    ctx.write("plan.toml", text)
}

#[test]
fn the_bundled_eval_passes_at_every_kernel_level_this_cpu_runs() {
    for level in levels() {
        let ctx = Ctx::new();
        let plan = bundled_plan(&ctx);
        let out = ctx
            .command()
            .args(["up", "--json"])
            .arg(&plan)
            .env("GPUCTL_CPU_KERNELS", &level)
            .output()
            .expect("run gpuctl up");
        let run = common::Run::from(out);
        assert_eq!(run.code, 0, "{level}: {}\n{}", run.stdout, run.stderr);
        let result = common::result_event(&run.stdout);
        assert_eq!(result["state"], "stopped", "{level}");
        let bundle = std::path::PathBuf::from(result["bundle"].as_str().expect("bundle"));
        let csv = std::fs::read_to_string(bundle.join("eval_results.csv")).expect("csv");
        let rows: Vec<&str> = csv.lines().skip(1).collect();
        assert_eq!(rows.len(), 2, "{level}: {csv}");
        for row in rows {
            assert!(row.contains(",true,"), "{level}: a case failed: {row}");
        }
        let log = std::fs::read_to_string(bundle.join("agent.log")).expect("agent.log");
        let line = log
            .lines()
            .find(|l| l.contains("gpuctl's CPU engine"))
            .unwrap_or_else(|| panic!("{level}: no engine line in the agent log:\n{log}"));
        assert!(line.contains(&level), "{level}: {line}");
        let env = std::fs::read_to_string(bundle.join("environment_report.txt")).expect("env");
        assert!(env.contains("cpu_kernels: "), "{env}");
    }
}

const SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

fn token_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of token ids")
        .iter()
        .filter_map(|v| v.as_u64().map(|v| v as u32))
        .collect()
}

fn chat_text(prompt: &str) -> String {
    format!(
        "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )
}

/// llama.cpp's prompt ids and first `n` greedy tokens for a chat prompt.
fn llama_cpp_greedy(prompt: &str, n: usize) -> (Vec<u32>, Vec<u32>) {
    let script = r#"
import json, sys
import numpy as np
import llama_cpp
model, text, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_threads=2, verbose=False)
ids = llm.tokenize(text.encode(), add_bos=False, special=True)
llm.eval(ids)
out = []
for _ in range(n):
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    nxt = int(np.argmax(logits))
    out.append(nxt)
    llm.eval([nxt])
print(json.dumps({"ids": ids, "tokens": out}))
"#;
    let text = chat_text(prompt);
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(model_path())
        .arg(text)
        .arg(n.to_string())
        .output()
        .expect("python3 with llama_cpp (scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    (token_ids(&doc["ids"]), token_ids(&doc["tokens"]))
}

/// The agent's own prompt ids (its tokenizer) and first `n` greedy tokens.
fn gpuctl_greedy(prompt: &str, n: usize, level: &str) -> (Vec<u32>, Vec<u32>) {
    let out = Command::new(agent_bin())
        .args(["bench", "--model"])
        .arg(model_path())
        .args(["--prompt", &chat_text(prompt), "--tokens", &n.to_string()])
        .env("GPUCTL_CPU_KERNELS", level)
        .output()
        .expect("gpuctl-agent bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        doc["engine"].as_str().is_some_and(|e| e.contains(level)),
        "{doc}"
    );
    (token_ids(&doc["prompt_ids"]), token_ids(&doc["tokens"]))
}

#[test]
fn the_eval_prompts_tokenize_and_start_decoding_as_in_llama_cpp() {
    let plan =
        std::fs::read_to_string(common::repo_root().join("plans/local-cpu.toml")).expect("plan");
    let doc: toml::Value = toml::from_str(&plan).expect("plan parses");
    let cases = doc["eval"]["case"].as_array().expect("eval cases");
    assert!(!cases.is_empty());
    let levels = levels();
    for case in cases {
        let prompt = case["prompt"].as_str().expect("prompt");
        let (want_ids, want) = llama_cpp_greedy(prompt, 16);
        for level in &levels {
            let (ids, got) = gpuctl_greedy(prompt, 16, level);
            assert_eq!(ids, want_ids, "the prompt's tokens, {prompt:?}");
            assert_eq!(got, want, "{level}, prompt {prompt:?}");
        }
    }
}

#[test]
fn a_kernel_level_that_is_misnamed_is_refused_naming_the_choices() {
    let out = Command::new(agent_bin())
        .args(["bench", "--model"])
        .arg(model_path())
        .args(["--prompt-ids", "1,2,3", "--tokens", "2"])
        .env("GPUCTL_CPU_KERNELS", "sse9")
        .output()
        .expect("gpuctl-agent bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GPUCTL_CPU_KERNELS=\"sse9\"") && err.contains("scalar, avx2 or avx512vnni"),
        "{err}"
    );
}
