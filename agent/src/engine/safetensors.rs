//! A llama or qwen2 model from a Hugging Face style folder: config.json, tokenizer.json,
//! tokenizer_config.json (its chat template) and one or more *.safetensors files.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
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

pub(super) fn load(dir: &Path) -> anyhow::Result<Loaded> {
    let config = read_json(&dir.join("config.json"))?;
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
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        let loaded = candle_core::safetensors::load_buffer(&bytes, &device)
            .with_context(|| format!("{} is not a safetensors file", f.display()))?;
        for (name, t) in loaded {
            tensors.insert(name, t.to_dtype(DType::F32)?);
        }
    }
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
    let context_length = config["max_position_embeddings"].as_u64().unwrap_or(2048) as usize;
    let net = match model_type.as_str() {
        "llama" => {
            let cfg: llama::LlamaConfig = serde_json::from_value(config.clone())
                .context("config.json is not a llama config")?;
            let cfg = cfg.into_config(false);
            let model = llama::Llama::load(vb, &cfg).context("cannot load the llama weights")?;
            let cache = llama::Cache::new(true, DType::F32, &cfg, &device)?;
            Net::Llama(Box::new(LlamaNet {
                model,
                cache,
                config: cfg,
            }))
        }
        "qwen2" => {
            let cfg: qwen2::Config = serde_json::from_value(config.clone())
                .context("config.json is not a qwen2 config")?;
            Net::Qwen2(Box::new(
                qwen2::ModelForCausalLM::new(&cfg, vb).context("cannot load the qwen2 weights")?,
            ))
        }
        other => bail!(
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
        let mut add = |name: String, shape: &[usize]| {
            w.insert(name, Tensor::randn(0f32, 0.02, shape, &dev).expect("randn"));
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
