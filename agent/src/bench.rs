//! `gpuctl-agent bench --model FILE --prompt-ids 1,2,3 --tokens 128`: time to first token
//! and decode speed of the candle path on exactly the token ids given, for `bench/`.
//! `--prompt-ids` and `--prompt` may be given several times and `--rounds N` repeats them
//! all: the model loads once (a 7B model takes seconds to load) and one JSON line is
//! printed per prompt and round, the first round being the warm-up a GPU needs.

use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::engine::CandleModel;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut model = None;
    let mut prompts: Vec<PromptArg> = Vec::new();
    let mut tokens = 128usize;
    let mut rounds = 1usize;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value)),
            "--prompt-ids" => prompts.push(PromptArg::Ids(
                value
                    .split(',')
                    .map(|s| s.trim().parse::<u32>())
                    .collect::<Result<Vec<_>, _>>()
                    .context("--prompt-ids takes token ids separated by commas")?,
            )),
            "--prompt" => prompts.push(PromptArg::Text(value.clone())),
            "--tokens" => tokens = value.parse().context("--tokens takes a count")?,
            "--rounds" => rounds = value.parse().context("--rounds takes a count")?,
            other => bail!("unknown flag {other}"),
        }
    }
    let model_path = model.context("--model is required")?;
    let started = std::time::Instant::now();
    let mut m = CandleModel::load(&model_path)?;
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    if prompts.is_empty() {
        bail!("give --prompt-ids or --prompt");
    }
    let prompts = prompts
        .into_iter()
        .map(|p| match p {
            PromptArg::Ids(ids) => Ok(ids),
            PromptArg::Text(t) => m.tokenize(&t),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for round in 0..rounds.max(1) {
        for prompt in &prompts {
            let run = m.bench(prompt, tokens)?;
            let decode_s = run.decode.as_secs_f64();
            let out = serde_json::json!({
                "engine": m.engine(),
                "round": round,
                "load_ms": load_ms,
                "prompt_tokens": prompt.len(),
                "prompt_ids": prompt,
                "generated": run.generated,
                "ttft_ms": run.ttft.as_secs_f64() * 1000.0,
                "decode_tok_s": if decode_s > 0.0 { (run.generated - 1) as f64 / decode_s } else { 0.0 },
                "peak_rss_kib": peak_rss_kib(),
                "tokens": run.tokens,
                "first_top": run.first_top,
            });
            println!("{out}");
        }
    }
    Ok(())
}

enum PromptArg {
    Ids(Vec<u32>),
    Text(String),
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `gpuctl-agent export-tokenizer --model FILE.gguf --out DIR`: the GGUF's tokenizer and chat
/// template as tokenizer.json and tokenizer_config.json (to build a model folder elsewhere).
pub fn export_tokenizer(args: &[String]) -> anyhow::Result<()> {
    use candle_core::quantized::gguf_file;
    use candle_core::quantized::tokenizer::TokenizerFromGguf;
    let (Some(model), Some(out)) = (flag(args, "--model"), flag(args, "--out")) else {
        bail!("usage: gpuctl-agent export-tokenizer --model FILE.gguf --out DIR");
    };
    let mut f = std::fs::File::open(&model).with_context(|| format!("opening {model}"))?;
    let content = gguf_file::Content::read(&mut f)?;
    let tokenizer = tokenizers::Tokenizer::from_gguf(&content)?;
    std::fs::create_dir_all(&out)?;
    tokenizer
        .save(PathBuf::from(&out).join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = |key: &str| {
        content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .cloned()
    };
    let token = |key: &str| {
        content
            .metadata
            .get(key)
            .and_then(|v| v.to_u32().ok())
            .and_then(|id| tokenizer.id_to_token(id))
    };
    let config = serde_json::json!({
        "chat_template": text("tokenizer.chat_template"),
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "model_max_length": 8192,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    std::fs::write(
        PathBuf::from(&out).join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    Ok(())
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// `gpuctl-agent membw [--threads N] [--mib M]`: memory read bandwidth, for the benchmarks'
/// physical floor (a model's bytes read once per token). Each thread sums its share of an
/// M MiB buffer (default 1024, far beyond any cache); the best of 5 passes, as JSON.
pub fn membw(args: &[String]) -> anyhow::Result<()> {
    let threads: usize = flag(args, "--threads")
        .map(|t| t.parse())
        .transpose()?
        .unwrap_or(2)
        .max(1);
    let mib: usize = flag(args, "--mib")
        .map(|t| t.parse())
        .transpose()?
        .unwrap_or(1024)
        .max(1);
    let data: Vec<u64> = (0..mib * (1 << 17)).map(|i| i as u64).collect();
    let share = data.len().div_ceil(threads);
    let mut best = 0f64;
    let mut check = 0u64;
    for _ in 0..5 {
        let start = std::time::Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = data
                .chunks(share)
                .map(|part| s.spawn(move || part.iter().fold(0u64, |a, v| a.wrapping_add(*v))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        let secs = start.elapsed().as_secs_f64();
        check = check.wrapping_add(sums.iter().fold(0, |a, v| a.wrapping_add(*v)));
        best = best.max((data.len() * 8) as f64 / secs);
    }
    println!(
        "{}",
        serde_json::json!({ "threads": threads, "mib": mib, "read_bytes_per_s": best, "checksum": check })
    );
    Ok(())
}
