//! Models served in-process with candle: a llama-family GGUF file (weights, tokenizer and
//! chat template all come from the one file; DESIGN.md's default model is
//! SmolLM2-135M-Instruct Q4_1), or a llama / qwen2 safetensors folder (config.json,
//! tokenizer.json, tokenizer_config.json and *.safetensors) so a user's own small model works.

use std::path::Path;

use anyhow::Context;
use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use candle_transformers::models::{llama, qwen2};
use tokenizers::Tokenizer;

use super::decoder::Decoder;
use super::native::{Level as KernelLevel, NativeLlama};
use super::template::ChatTemplate;
use super::{apply_stop, safe_prefix_len, Backend, EngineError, FinishReason, GenParams, Prompt};

/// The network behind one of the supported formats.
pub(super) enum Net {
    /// gpuctl's own CPU engine (`native/`), for the GGUF files it can serve.
    Native(Box<NativeLlama>),
    Gguf(Box<ModelWeights>),
    Llama(Box<LlamaNet>),
    Qwen2(Box<qwen2::ModelForCausalLM>),
    /// gpuctl's few-launch decoder for llama / qwen2 safetensors (`decoder.rs`).
    Decoder(Box<Decoder>),
}

pub(super) struct LlamaNet {
    pub model: llama::Llama,
    pub cache: llama::Cache,
    pub config: llama::Config,
    /// What its KV cache holds: the weights' dtype.
    pub dtype: DType,
}

impl Net {
    fn reset(&mut self, device: &Device) -> candle_core::Result<()> {
        match self {
            // Positions restart at 0; the cache is overwritten.
            Net::Native(_) | Net::Decoder(_) => {}
            Net::Gguf(w) => w.clear_kv_cache(),
            Net::Llama(l) => l.cache = llama::Cache::new(true, l.dtype, &l.config, device)?,
            Net::Qwen2(m) => m.clear_kv_cache(),
        }
        Ok(())
    }

    /// Room for `positions` tokens in all, before a generation starts.
    fn reserve(&mut self, positions: usize) -> candle_core::Result<()> {
        match self {
            Net::Native(n) => n.reserve(positions),
            Net::Decoder(d) => d.reserve(positions)?,
            _ => {}
        }
        Ok(())
    }

    /// Logits of the last position, as a flat f32 vector tensor.
    fn forward(
        &mut self,
        input: &[u32],
        pos: usize,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Net::Native(n) = self {
            let logits = n
                .forward(input, pos)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            return Tensor::from_slice(logits, logits.len(), &Device::Cpu);
        }
        if let Net::Decoder(d) = self {
            return d.forward(input, pos);
        }
        let x = Tensor::new(input, device)?.unsqueeze(0)?;
        let logits = match self {
            Net::Gguf(w) => w.forward(&x, pos)?,
            Net::Llama(l) => l.model.forward(&x, pos, &mut l.cache)?,
            Net::Qwen2(m) => m.forward(&x, pos)?,
            Net::Native(_) | Net::Decoder(_) => unreachable!("handled above"),
        };
        logits.flatten_all()?.to_dtype(DType::F32)
    }
}

pub struct CandleModel {
    weights: Net,
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

/// candle 0.11 builds a GPT-2-style tokenizer whose pre-tokenizer adds a space before
/// every piece of text, and (for `smollm`) does not split digits: after each special token
/// "user" became " user", so a chat prompt was not the one the model was trained on (and
/// not the one llama.cpp feeds it). Set the pre-tokenizer from the file's own metadata
/// (`tokenizer.ggml.add_space_prefix`, false unless said) and llama.cpp's pre-type rules;
/// the pre-types candle already gets right are left alone.
fn fix_pre_tokenizer(tokenizer: &mut Tokenizer, content: &gguf_file::Content) {
    use tokenizers::pre_tokenizers::{
        byte_level::ByteLevel, digits::Digits, sequence::Sequence, PreTokenizerWrapper,
    };
    if meta_string(content, "tokenizer.ggml.model").as_deref() != Some("gpt2") {
        return;
    }
    let pre = meta_string(content, "tokenizer.ggml.pre");
    if matches!(
        pre.as_deref(),
        Some("qwen2" | "smaug-bpe" | "lfm2" | "llama3")
    ) {
        return;
    }
    let add_prefix_space = content
        .metadata
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let byte_level = ByteLevel::new(add_prefix_space, true, true);
    let wrapper: PreTokenizerWrapper = if pre.as_deref() == Some("smollm") {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    tokenizer.with_pre_tokenizer(Some(wrapper));
}

/// candle has no SIMD kernel for Q4_1 (a scalar dot product takes most of the decode time),
/// but fast ones for Q8_0. Q4_1 weights are re-encoded as Q8_0 at load, which loses nothing
/// measurable (8 bits per weight hold a 4-bit value and its block offset); set
/// `GPUCTL_Q4_1_AS=keep` to serve the file's own encoding. The converted model goes
/// through a temporary file, not memory, to keep the agent's peak memory down.
fn requantize_q4_1(
    content: &gguf_file::Content,
    file: &mut std::fs::File,
    device: &Device,
) -> anyhow::Result<Option<ModelWeights>> {
    use candle_core::quantized::{GgmlDType, QTensor};
    if std::env::var("GPUCTL_Q4_1_AS").is_ok_and(|v| v == "keep")
        || !content
            .tensor_infos
            .values()
            .any(|t| t.ggml_dtype == GgmlDType::Q4_1)
    {
        return Ok(None);
    }
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(content.tensor_infos.len());
    for name in content.tensor_infos.keys() {
        let t = content.tensor(file, name, &Device::Cpu)?;
        let t = if t.dtype() == GgmlDType::Q4_1 {
            QTensor::quantize(&t.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?
        } else {
            t
        };
        tensors.push((name.clone(), t));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let tmp = std::env::temp_dir().join(format!("gpuctl-agent-{}-q8_0.gguf", std::process::id()));
    let written = (|| -> anyhow::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        gguf_file::write(&mut out, &metadata, &refs)?;
        std::io::Write::flush(&mut out)?;
        Ok(())
    })();
    drop(refs);
    drop(tensors);
    let loaded = written.and_then(|()| {
        let mut f = std::fs::File::open(&tmp)?;
        let converted = gguf_file::Content::read(&mut f)?;
        Ok(ModelWeights::from_gguf(converted, &mut f, device)?)
    });
    let _ = std::fs::remove_file(&tmp);
    loaded
        .map(Some)
        .with_context(|| format!("re-encoding Q4_1 as Q8_0 through {}", tmp.display()))
}

/// gpuctl's own engine for this file, when it runs on the CPU and the file is one it
/// serves (llama-family, Q4_1/Q8_0 weights); `GPUCTL_ENGINE=candle` picks candle's instead.
fn native_engine(
    content: &gguf_file::Content,
    file: &mut std::fs::File,
    device: &Device,
    path: &Path,
) -> anyhow::Result<Option<NativeLlama>> {
    if !device.is_cpu() || candle_forced() {
        return Ok(None);
    }
    let level = KernelLevel::from_env()?;
    let threads = std::env::var("GPUCTL_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|t| *t > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    match NativeLlama::from_gguf(content, file, level, threads)
        .with_context(|| format!("loading {}", path.display()))?
    {
        Ok(native) => {
            tracing::info!(
                kernels = native.level().name(),
                threads = native.threads(),
                "serving with gpuctl's CPU engine"
            );
            Ok(Some(native))
        }
        Err(why) => {
            tracing::info!(reason = %why.0, "serving with candle's engine");
            Ok(None)
        }
    }
}

/// `GPUCTL_ENGINE=candle`: candle-transformers' own models serve, not gpuctl's engines
/// (the native CPU engine for GGUF, the decoder for safetensors).
pub(super) fn candle_forced() -> bool {
    std::env::var("GPUCTL_ENGINE").is_ok_and(|e| e == "candle")
}

fn device_name(device: &Device) -> &'static str {
    if device.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

/// CUDA device 0 when built with the `cuda` feature and a GPU answers, else the CPU;
/// `GPUCTL_DEVICE=cpu` forces the CPU (to compare the two on one host).
pub fn device() -> anyhow::Result<Device> {
    #[cfg(feature = "cuda")]
    {
        if std::env::var("GPUCTL_DEVICE").map_or(true, |d| d != "cpu") {
            match Device::new_cuda(0) {
                Ok(dev) => return Ok(dev),
                Err(e) => tracing::warn!("no CUDA device ({e}); serving on the CPU"),
            }
        }
    }
    Ok(Device::Cpu)
}

impl CandleModel {
    /// A GGUF file, or a safetensors folder.
    pub fn load(path: &Path) -> anyhow::Result<CandleModel> {
        let model = Self::load_from(path);
        // What the load parsed and dropped (a GGUF's vocabulary, say) goes back to the
        // system instead of adding to every later peak.
        crate::memory::release_free_heap();
        model
    }

    fn load_from(path: &Path) -> anyhow::Result<CandleModel> {
        if path.is_dir() {
            let l = super::safetensors::load(path)?;
            return Ok(CandleModel {
                weights: l.net,
                tokenizer: l.tokenizer,
                template: l.template,
                eos_ids: l.eos_ids,
                context_length: l.context_length,
                device: l.device,
            });
        }
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
        let mut tokenizer = Tokenizer::from_gguf(&content).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot build the tokenizer from its metadata: {e}",
                path.display()
            )
        })?;
        fix_pre_tokenizer(&mut tokenizer, &content);
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
        let truncated = |e: candle_core::Error| {
            anyhow::anyhow!(
                "{}: cannot load the weights ({e}); the file may be truncated",
                path.display()
            )
        };
        let weights = match native_engine(&content, &mut file, &device, path)? {
            Some(native) => Net::Native(Box::new(native)),
            None => Net::Gguf(Box::new(
                match requantize_q4_1(&content, &mut file, &device)? {
                    Some(weights) => weights,
                    None => {
                        ModelWeights::from_gguf(content, &mut file, &device).map_err(truncated)?
                    }
                },
            )),
        };
        Ok(CandleModel {
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
        self.weights
            .forward(input, pos, &self.device)
            .map_err(|e| EngineError::Internal(e.to_string()))
    }
}

impl Backend for CandleModel {
    fn context_length(&self) -> usize {
        self.context_length
    }

    fn on_engine_thread(&mut self) -> Result<(), EngineError> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(d) = &self.device {
            d.cuda_stream().context().bind_to_thread().map_err(|e| {
                EngineError::Internal(format!("cannot use the GPU from the engine thread: {e}"))
            })?;
        }
        Ok(())
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
        self.weights.reset(&self.device).map_err(internal)?;
        self.weights
            .reserve(prompt.len() + params.max_tokens)
            .map_err(internal)?;
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

/// Timings of one greedy run that ignores end-of-sequence (for `gpuctl-agent bench`).
pub struct BenchRun {
    pub ttft: std::time::Duration,
    pub decode: std::time::Duration,
    pub generated: usize,
    pub tokens: Vec<u32>,
    /// The prompt's three best next tokens and their logits (how close the first pick was).
    pub first_top: Vec<(u32, f32)>,
}

impl CandleModel {
    /// Which engine serves the model: "native (avx512vnni, 2 threads)" or "candle".
    pub fn engine(&self) -> String {
        match &self.weights {
            Net::Native(n) => format!("native ({}, {} threads)", n.level().name(), n.threads()),
            Net::Decoder(d) => format!("decoder ({:?}, {})", d.dtype(), device_name(&self.device)),
            _ => format!("candle ({})", device_name(&self.device)),
        }
    }

    pub fn tokenize(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .get_ids()
            .to_vec())
    }

    /// Prompt, then `n` greedy tokens whatever they are; times the first and the rest.
    pub fn bench(&mut self, prompt: &[u32], n: usize) -> anyhow::Result<BenchRun> {
        let argmax = |logits: &Tensor| -> anyhow::Result<u32> {
            let v: Vec<f32> = logits.to_vec1()?;
            Ok(v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .unwrap_or(0))
        };
        self.weights.reset(&self.device)?;
        self.weights.reserve(prompt.len() + n)?;
        let start = std::time::Instant::now();
        let logits = self.step(prompt, 0).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut next = argmax(&logits)?;
        let ttft = start.elapsed();
        let mut ranked: Vec<(u32, f32)> = logits
            .to_vec1::<f32>()?
            .into_iter()
            .enumerate()
            .map(|(i, l)| (i as u32, l))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(3);
        let mut tokens = vec![next];
        let start = std::time::Instant::now();
        for i in 1..n {
            let logits = self
                .step(&[next], prompt.len() + i - 1)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            next = argmax(&logits)?;
            tokens.push(next);
        }
        Ok(BenchRun {
            ttft,
            decode: start.elapsed(),
            generated: n,
            tokens,
            first_top: ranked,
        })
    }
}
