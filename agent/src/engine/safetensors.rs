//! A llama or qwen2 model from a Hugging Face style folder: config.json, tokenizer.json,
//! tokenizer_config.json (its chat template) and one or more *.safetensors files.

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, qwen2};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::candle::{device, LlamaNet, Net};
use super::template::ChatTemplate;

pub(super) struct Loaded {
    pub net: Net,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub eos_ids: Vec<u32>,
    pub context_length: usize,
    pub device: Device,
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// A special token as tokenizer_config.json writes it: a string or `{ "content": ... }`.
fn token_string(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::to_string)
        .or_else(|| v["content"].as_str().map(str::to_string))
}

/// What the weights are computed in. On the CPU f32 (candle's CPU kernels are fastest
/// there); on a GPU the checkpoint's own floating type, so a bf16 7B model takes half the
/// VRAM of f32. `GPUCTL_DTYPE=f32|bf16|f16` overrides both.
fn serving_dtype(checkpoint: Option<DType>, device: &Device) -> anyhow::Result<DType> {
    if let Ok(name) = std::env::var("GPUCTL_DTYPE") {
        return match name.as_str() {
            "f32" => Ok(DType::F32),
            "bf16" => Ok(DType::BF16),
            "f16" => Ok(DType::F16),
            other => {
                bail!("GPUCTL_DTYPE={other:?} is not a dtype gpuctl serves; use f32, bf16 or f16")
            }
        };
    }
    if device.is_cpu() {
        return Ok(DType::F32);
    }
    Ok(checkpoint.unwrap_or(DType::F32))
}

/// The floating type of the checkpoint's first floating tensor (f64 served as f32).
fn checkpoint_dtype(weights: &MmapedSafetensors) -> Option<DType> {
    weights.tensors().into_iter().find_map(|(_, view)| {
        match DType::try_from(view.dtype()).ok()? {
            DType::BF16 => Some(DType::BF16),
            DType::F16 => Some(DType::F16),
            DType::F32 | DType::F64 => Some(DType::F32),
            _ => None,
        }
    })
}

/// transformers 5 writes `rope_theta` inside `rope_parameters` and a null `sliding_window`
/// when the window is off; candle reads the 4.x layout, and for llama would silently take
/// its default theta. Lift both to the old places so either layout serves correctly.
fn normalize_config(config: &mut Value) {
    let Some(map) = config.as_object_mut() else {
        return;
    };
    if !map.contains_key("rope_theta") {
        if let Some(theta) = map
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .cloned()
        {
            map.insert("rope_theta".into(), theta);
        }
    }
    if map.get("sliding_window").is_some_and(Value::is_null) {
        let context = map
            .get("max_position_embeddings")
            .cloned()
            .unwrap_or(Value::from(32768));
        map.insert("sliding_window".into(), context);
    }
    if !map.contains_key("max_window_layers") {
        if let Some(layers) = map.get("num_hidden_layers").cloned() {
            map.insert("max_window_layers".into(), layers);
        }
    }
    if !map.contains_key("use_sliding_window") {
        map.insert("use_sliding_window".into(), Value::Bool(false));
    }
}

pub(super) fn load(dir: &Path) -> anyhow::Result<Loaded> {
    let mut config = read_json(&dir.join("config.json"))?;
    normalize_config(&mut config);
    let model_type = config["model_type"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| {
        anyhow::anyhow!("cannot read {}: {e}", dir.join("tokenizer.json").display())
    })?;
    let tok_config = read_json(&dir.join("tokenizer_config.json")).unwrap_or(Value::Null);
    let chat_template = match &tok_config["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    };
    let bos = token_string(&tok_config["bos_token"]).unwrap_or_default();
    let eos = token_string(&tok_config["eos_token"]).unwrap_or_default();
    let mut eos_ids: Vec<u32> = match &config["eos_token_id"] {
        Value::Number(n) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Value::Array(a) => a
            .iter()
            .filter_map(|n| n.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    };
    for t in [eos.as_str(), "<|im_end|>", "<|endoftext|>", "<|eot_id|>"] {
        if let Some(id) = tokenizer.token_to_id(t) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
    }
    let template = ChatTemplate::new(chat_template, bos, eos)?;

    let device = device()?;
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} holds no *.safetensors file", dir.display());
    }
    // SAFETY: the weight files are mapped read-only and must not change while they are
    // served; a model folder is written once, before `up`, and never edited in place.
    #[allow(unsafe_code)]
    let weights = unsafe { MmapedSafetensors::multi(&files) }
        .with_context(|| format!("cannot map the *.safetensors files in {}", dir.display()))?;
    let dtype = serving_dtype(checkpoint_dtype(&weights), &device)?;
    let vb = VarBuilder::from_backend(Box::new(weights), dtype, device.clone());
    let context_length = config["max_position_embeddings"].as_u64().unwrap_or(2048) as usize;
    let decoder = match model_type.as_str() {
        "llama" | "qwen2" => super::decoder::try_load(&config, &model_type, &vb)?,
        _ => None,
    };
    let net = match (decoder, model_type.as_str()) {
        (Some(decoder), _) => Net::Decoder(Box::new(decoder)),
        (None, "llama") => {
            let cfg: llama::LlamaConfig = serde_json::from_value(config.clone())
                .context("config.json is not a llama config")?;
            let cfg = cfg.into_config(false);
            let model = llama::Llama::load(vb, &cfg).context("cannot load the llama weights")?;
            let cache = llama::Cache::new(true, dtype, &cfg, &device)?;
            Net::Llama(Box::new(LlamaNet {
                model,
                cache,
                config: cfg,
                dtype,
            }))
        }
        (None, "qwen2") => {
            let cfg: qwen2::Config = serde_json::from_value(config.clone())
                .context("config.json is not a qwen2 config")?;
            Net::Qwen2(Box::new(
                qwen2::ModelForCausalLM::new(&cfg, vb).context("cannot load the qwen2 weights")?,
            ))
        }
        (None, other) => bail!(
            "{}: model_type {other:?} is not served by candle here (llama and qwen2 are)",
            dir.display()
        ),
    };
    Ok(Loaded {
        net,
        tokenizer,
        template,
        eos_ids,
        context_length,
        device,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Backend, CandleModel, ChatMessage, FinishReason, GenParams, Prompt};
    use candle_core::quantized::gguf_file;
    use candle_core::quantized::tokenizer::TokenizerFromGguf;
    use candle_core::Tensor;
    use std::collections::HashMap;

    /// A tiny random model of `model_type` in a temp folder, with the default model's real tokenizer.
    fn tiny_model(model_type: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let gguf =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let mut f = std::fs::File::open(&gguf).expect("the default model (scripts/fetch-model.sh)");
        let content = gguf_file::Content::read(&mut f).expect("gguf");
        let tokenizer = Tokenizer::from_gguf(&content).expect("tokenizer");
        tokenizer
            .save(dir.path().join("tokenizer.json"), false)
            .expect("save tokenizer");
        let vocab = tokenizer.get_vocab_size(true);
        let tok_config = serde_json::json!({ "eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "chat_template": null });
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            tok_config.to_string(),
        )
        .expect("write");
        let config = serde_json::json!({
            "model_type": model_type, "hidden_size": 64, "intermediate_size": 128, "vocab_size": vocab,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": true, "eos_token_id": 2,
            "sliding_window": 256, "max_window_layers": 2, "use_sliding_window": false, "hidden_act": "silu",
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write");
        let dev = Device::Cpu;
        let mut w: HashMap<String, Tensor> = HashMap::new();
        // Norm weights near 1 and projections near 1/sqrt(width), as in a trained model,
        // so the logits spread enough for the decoder test to see a difference.
        let mut add = |name: String, shape: &[usize]| {
            let (mean, std) = if name.contains("norm") {
                (1f32, 0.1)
            } else {
                (0f32, 0.15)
            };
            w.insert(name, Tensor::randn(mean, std, shape, &dev).expect("randn"));
        };
        add("model.embed_tokens.weight".into(), &[vocab, 64]);
        add("model.norm.weight".into(), &[64]);
        for i in 0..2 {
            let p = format!("model.layers.{i}");
            add(format!("{p}.self_attn.q_proj.weight"), &[64, 64]);
            add(format!("{p}.self_attn.k_proj.weight"), &[32, 64]);
            add(format!("{p}.self_attn.v_proj.weight"), &[32, 64]);
            add(format!("{p}.self_attn.o_proj.weight"), &[64, 64]);
            if model_type == "qwen2" {
                add(format!("{p}.self_attn.q_proj.bias"), &[64]);
                add(format!("{p}.self_attn.k_proj.bias"), &[32]);
                add(format!("{p}.self_attn.v_proj.bias"), &[32]);
            }
            add(format!("{p}.mlp.gate_proj.weight"), &[128, 64]);
            add(format!("{p}.mlp.up_proj.weight"), &[128, 64]);
            add(format!("{p}.mlp.down_proj.weight"), &[64, 128]);
            add(format!("{p}.input_layernorm.weight"), &[64]);
            add(format!("{p}.post_attention_layernorm.weight"), &[64]);
        }
        candle_core::safetensors::save(&w, dir.path().join("model.safetensors"))
            .expect("save weights");
        dir
    }

    #[test]
    fn llama_and_qwen2_safetensors_folders_serve() {
        for model_type in ["llama", "qwen2"] {
            let dir = tiny_model(model_type);
            let mut model =
                CandleModel::load(dir.path()).unwrap_or_else(|e| panic!("{model_type}: {e:#}"));
            assert_eq!(model.context_length(), 256);
            let prompt = Prompt::Chat(vec![ChatMessage {
                role: "user".into(),
                content: "hello".into(),
            }]);
            let (text, ids) = model.encode(&prompt).expect("encode");
            assert!(text.contains("<|im_start|>user\nhello"), "{text}");
            let params = GenParams {
                max_tokens: 5,
                temperature: 0.0,
                top_p: None,
                seed: 1,
                stop: vec![],
            };
            let mut pieces = 0;
            let (finish, n) = model
                .generate(&ids, &params, &mut |_| {
                    pieces += 1;
                    true
                })
                .expect("generate");
            assert!(
                n <= 5 && (finish == FinishReason::Length || n < 5),
                "{model_type}: {finish:?} {n}"
            );
        }
    }

    /// candle's own model, one forward step: token ids at a position to flat logits.
    type Reference = Box<dyn FnMut(&[u32], usize) -> candle_core::Result<Tensor>>;

    /// gpuctl's decoder gives candle's own models' logits, prompt and decode steps alike.
    #[test]
    fn the_decoder_matches_candles_llama_and_qwen2() {
        for model_type in ["llama", "qwen2"] {
            let dir = tiny_model(model_type);
            let mut config = read_json(&dir.path().join("config.json")).expect("config");
            normalize_config(&mut config);
            let files = vec![dir.path().join("model.safetensors")];
            let dev = Device::Cpu;
            #[allow(unsafe_code)]
            // SAFETY: the test's own file, not changed while mapped.
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &dev) }
                .expect("vb");
            let mut ours = crate::engine::decoder::try_load(&config, model_type, &vb)
                .expect("load")
                .expect("served by the decoder");
            let mut theirs: Reference = if model_type == "qwen2" {
                let cfg: qwen2::Config = serde_json::from_value(config.clone()).expect("cfg");
                let mut m = qwen2::ModelForCausalLM::new(&cfg, vb.clone()).expect("qwen2");
                Box::new(move |ids, pos| {
                    let x = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
                    m.forward(&x, pos)?.flatten_all()
                })
            } else {
                let cfg: llama::LlamaConfig = serde_json::from_value(config.clone()).expect("cfg");
                let cfg = cfg.into_config(false);
                let m = llama::Llama::load(vb.clone(), &cfg).expect("llama");
                let mut cache = llama::Cache::new(true, DType::F32, &cfg, &dev).expect("cache");
                Box::new(move |ids, pos| {
                    let x = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
                    m.forward(&x, pos, &mut cache)?.flatten_all()
                })
            };
            let steps: [&[u32]; 5] = [&[1, 42, 7, 300, 9], &[11], &[4000], &[17, 5, 6], &[8]];
            let mut pos = 0;
            for (n, ids) in steps.into_iter().enumerate() {
                // Whole, then in chunks of 2 tokens: the same logits either way.
                ours.set_prefill_chunk(if n == 0 || n == 3 { 2 } else { 2048 });
                let a: Vec<f32> = ours
                    .forward(ids, pos)
                    .expect("ours")
                    .to_vec1()
                    .expect("vec");
                let b: Vec<f32> = theirs(ids, pos)
                    .and_then(|t| t.to_vec1())
                    .expect("reference");
                assert_eq!(a.len(), b.len());
                let worst = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                let spread = b.iter().fold(f32::MIN, |m, x| m.max(*x))
                    - b.iter().fold(f32::MAX, |m, x| m.min(*x));
                assert!(
                    spread > 0.05,
                    "{model_type}: logits too flat to compare ({spread})"
                );
                assert!(
                    worst < 1e-4 * spread,
                    "{model_type} at position {pos}: logits differ by {worst} (spread {spread})"
                );
                pos += ids.len();
            }
        }
    }

    #[test]
    fn a_transformers_5_config_reads_as_candle_expects() {
        let mut config = serde_json::json!({
            "model_type": "qwen2", "num_hidden_layers": 28, "max_position_embeddings": 32768,
            "rope_parameters": { "rope_type": "default", "rope_theta": 1000000.0 },
            "sliding_window": null,
        });
        normalize_config(&mut config);
        assert_eq!(config["rope_theta"], 1000000.0);
        assert_eq!(config["sliding_window"], 32768);
        assert_eq!(config["max_window_layers"], 28);
        assert_eq!(config["use_sliding_window"], false);
        let mut old = serde_json::json!({ "rope_theta": 10000.0, "sliding_window": 4096 });
        normalize_config(&mut old);
        assert_eq!(old["rope_theta"], 10000.0);
        assert_eq!(old["sliding_window"], 4096);
    }

    #[test]
    fn a_gpu_serves_the_checkpoints_own_dtype_and_the_cpu_f32() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("model.safetensors");
        let mut w = HashMap::new();
        let t = Tensor::zeros((2, 2), DType::BF16, &Device::Cpu).expect("zeros");
        w.insert("model.norm.weight".to_string(), t);
        candle_core::safetensors::save(&w, &file).expect("save");
        #[allow(unsafe_code)]
        // SAFETY: the test's own file, not changed while mapped.
        let map = |f: &Path| unsafe { MmapedSafetensors::new(f) };
        let bf16 = checkpoint_dtype(&map(&file).expect("header"));
        assert_eq!(bf16, Some(DType::BF16));
        assert_eq!(
            serving_dtype(bf16, &Device::Cpu).expect("dtype"),
            DType::F32
        );
        std::fs::write(&file, b"\x05\0\0\0\0\0\0\0{}").expect("write");
        assert!(map(&file).is_err(), "a cut-short header");
    }

    #[test]
    fn a_folder_without_weights_is_a_clear_error() {
        let dir = tiny_model("llama");
        std::fs::remove_file(dir.path().join("model.safetensors")).expect("rm");
        let err = CandleModel::load(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no *.safetensors"), "{err}");
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "gpt2"}"#).expect("write");
        std::fs::write(dir.path().join("model.safetensors"), b"").expect("write");
        let err = CandleModel::load(dir.path())
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("safetensors") || err.contains("gpt2"), "{err}");
    }
}
