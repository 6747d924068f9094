//! A llama-family GGUF model served with candle: weights, tokenizer and chat template all
//! come from the one file (DESIGN.md's default model is SmolLM2-135M-Instruct Q4_1).

use std::path::Path;

use anyhow::Context;
use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use tokenizers::Tokenizer;

use super::template::ChatTemplate;
use super::{apply_stop, safe_prefix_len, Backend, EngineError, FinishReason, GenParams, Prompt};

pub struct GgufModel {
    weights: ModelWeights,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    eos_ids: Vec<u32>,
    context_length: usize,
    device: Device,
}

fn meta_string(ct: &gguf_file::Content, key: &str) -> Option<String> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

fn meta_u32(ct: &gguf_file::Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| v.to_u32().ok())
}

pub fn device() -> anyhow::Result<Device> {
    #[cfg(feature = "cuda")]
    {
        if let Ok(dev) = Device::new_cuda(0) {
            return Ok(dev);
        }
    }
    Ok(Device::Cpu)
}

impl GgufModel {
    pub fn load(path: &Path) -> anyhow::Result<GgufModel> {
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("cannot open the model file {}", path.display()))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a readable GGUF model ({e}); fetch it again with scripts/fetch-model.sh",
                path.display()
            )
        })?;
        let arch = meta_string(&content, "general.architecture").unwrap_or_default();
        if !matches!(arch.as_str(), "llama" | "") {
            anyhow::bail!(
                "{}: architecture {arch:?} is not served by candle here (llama-family GGUF only)",
                path.display()
            );
        }
        let tokenizer = Tokenizer::from_gguf(&content).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot build the tokenizer from its metadata: {e}",
                path.display()
            )
        })?;
        let token_text = |key: &str| {
            meta_u32(&content, key)
                .and_then(|id| tokenizer.id_to_token(id))
                .unwrap_or_default()
        };
        let bos = token_text("tokenizer.ggml.bos_token_id");
        let eos = token_text("tokenizer.ggml.eos_token_id");
        let template =
            ChatTemplate::new(meta_string(&content, "tokenizer.chat_template"), bos, eos)?;
        let mut eos_ids: Vec<u32> = meta_u32(&content, "tokenizer.ggml.eos_token_id")
            .into_iter()
            .collect();
        for end in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"] {
            if let Some(id) = tokenizer.token_to_id(end) {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        let context_length = meta_u32(&content, "llama.context_length").unwrap_or(2048) as usize;
        let device = device()?;
        let weights = ModelWeights::from_gguf(content, &mut file, &device).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot load the weights ({e}); the file may be truncated",
                path.display()
            )
        })?;
        Ok(GgufModel {
            weights,
            tokenizer,
            template,
            eos_ids,
            context_length,
            device,
        })
    }

    fn decode(&self, tokens: &[u32]) -> Result<String, EngineError> {
        self.tokenizer
            .decode(tokens, true)
            .map_err(|e| EngineError::Internal(e.to_string()))
    }

    fn step(&mut self, input: &[u32], pos: usize) -> Result<Tensor, EngineError> {
        let internal = |e: candle_core::Error| EngineError::Internal(e.to_string());
        let x = Tensor::new(input, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(internal)?;
        let logits = self.weights.forward(&x, pos).map_err(internal)?;
        logits
            .squeeze(0)
            .and_then(|l| l.to_dtype(DType::F32))
            .map_err(internal)
    }
}

impl Backend for GgufModel {
    fn context_length(&self) -> usize {
        self.context_length
    }

    fn encode(&self, prompt: &Prompt) -> Result<(String, Vec<u32>), EngineError> {
        let text = match prompt {
            Prompt::Chat(messages) => self
                .template
                .render(messages)
                .map_err(EngineError::BadRequest)?,
            Prompt::Text(t) => t.clone(),
        };
        let enc = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        if enc.get_ids().is_empty() {
            return Err(EngineError::BadRequest("the prompt is empty".into()));
        }
        Ok((text, enc.get_ids().to_vec()))
    }

    fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenParams,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(FinishReason, usize), EngineError> {
        let sampling = if params.temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            match params.top_p {
                Some(p) if p > 0.0 && p < 1.0 => Sampling::TopP {
                    p,
                    temperature: params.temperature,
                },
                _ => Sampling::All {
                    temperature: params.temperature,
                },
            }
        };
        let mut sampler = LogitsProcessor::from_sampling(params.seed, sampling);
        let internal = |e: candle_core::Error| EngineError::Internal(e.to_string());
        self.weights.clear_kv_cache();
        let mut logits = self.step(prompt, 0)?;
        let mut generated: Vec<u32> = Vec::new();
        let mut emitted = 0usize;
        loop {
            let next = sampler.sample(&logits).map_err(internal)?;
            if self.eos_ids.contains(&next) {
                let text = self.decode(&generated)?;
                let (kept, _) = apply_stop(&text, &params.stop);
                if kept.len() > emitted && !emit(&kept[emitted..]) {
                    return Ok((FinishReason::Stop, generated.len()));
                }
                return Ok((FinishReason::Stop, generated.len()));
            }
            generated.push(next);
            let text = self.decode(&generated)?;
            let (kept, stopped) = apply_stop(&text, &params.stop);
            let done_by_length = generated.len() >= params.max_tokens;
            // Hold back an incomplete UTF-8 sequence and a possible stop-string prefix.
            let ready = if stopped || done_by_length {
                kept.len()
            } else if kept.ends_with('\u{FFFD}') {
                emitted
            } else {
                safe_prefix_len(kept, &params.stop)
            };
            if ready > emitted && kept.is_char_boundary(emitted) {
                if !emit(&kept[emitted..ready]) {
                    return Ok((FinishReason::Stop, generated.len()));
                }
                emitted = ready;
            }
            if stopped {
                return Ok((FinishReason::Stop, generated.len()));
            }
            if done_by_length {
                return Ok((FinishReason::Length, generated.len()));
            }
            logits = self.step(&[next], prompt.len() + generated.len() - 1)?;
        }
    }
}
