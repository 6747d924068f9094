//! A llama / qwen2 decoder for safetensors folders, written for few kernel launches per
//! token: at batch 1 on a GPU a 7B model's decode is decided by launches as much as by
//! HBM (candle's own qwen2 launches about 40 kernels a layer; this one 18).
//!
//! What differs from candle-transformers' models, and why:
//! - q, k and v are one matmul (their weights stacked at load), as are gate and up;
//! - the attention scale is folded into the q weights (rope is linear, so scaling before
//!   it is the same), which saves a kernel a layer;
//! - the KV cache is allocated ahead (`reserve`) and written in place, not concatenated
//!   anew every token; grouped-query attention reads it without repeating the KV heads
//!   (the query heads of a group become rows of one matmul);
//! - rope tables are computed in f32 and only then cast: positions past 256 are not exact
//!   in bf16, and candle's qwen2 computes them there.

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

/// The shape and constants of a llama or qwen2 model, from config.json.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    pub max_positions: usize,
    pub tied: bool,
    /// qwen2 (and llama with `attention_bias`) add a bias to q, k and v.
    pub qkv_bias: bool,
}

impl Shape {
    /// `None` when the model needs something this decoder does not do (llama 3's rope
    /// scaling, an activation other than SiLU): candle's own model serves it then.
    pub fn from_config(config: &Value, model_type: &str) -> anyhow::Result<Option<Shape>> {
        let get = |key: &str| -> anyhow::Result<usize> {
            config[key]
                .as_u64()
                .map(|v| v as usize)
                .with_context(|| format!("config.json has no {key}"))
        };
        if !config["rope_scaling"].is_null()
            || config["hidden_act"].as_str().is_some_and(|a| a != "silu")
        {
            return Ok(None);
        }
        let heads = get("num_attention_heads")?;
        let hidden = get("hidden_size")?;
        if config["head_dim"]
            .as_u64()
            .is_some_and(|d| d as usize != hidden / heads)
        {
            return Ok(None);
        }
        Ok(Some(Shape {
            hidden,
            intermediate: get("intermediate_size")?,
            layers: get("num_hidden_layers")?,
            heads,
            kv_heads: config["num_key_value_heads"]
                .as_u64()
                .map_or(heads, |v| v as usize),
            vocab: get("vocab_size")?,
            rope_theta: config["rope_theta"].as_f64().unwrap_or(10000.0),
            rms_eps: config["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            max_positions: get("max_position_embeddings")?,
            tied: config["tie_word_embeddings"].as_bool().unwrap_or(false),
            qkv_bias: model_type == "qwen2" || config["attention_bias"].as_bool() == Some(true),
        }))
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

struct Layer {
    attn_norm: Tensor,
    qkv: Tensor,
    qkv_bias: Option<Tensor>,
    o: Tensor,
    mlp_norm: Tensor,
    gate_up: Tensor,
    down: Tensor,
    /// Keys and values, `[1, kv_heads, capacity, head_dim]`; positions past the current one
    /// hold stale values that no query reads.
    k_cache: Tensor,
    v_cache: Tensor,
}

pub struct Decoder {
    shape: Shape,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Tensor,
    cos: Tensor,
    sin: Tensor,
    capacity: usize,
    dtype: DType,
    device: Device,
    prefill_chunk: usize,
}

/// The most prompt tokens run at once: at 2,048 a 7B model's attention scores for one KV
/// head take 2,048 x 7 x 2,048 x 2 bytes = 59 MB.
const PREFILL_CHUNK: usize = 2048;

/// `x @ w.T`, `x` of shape `[tokens, in]` and `w` `[out, in]` as stored.
fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(&w.t()?)
}

/// `x @ w[rows].T` for a block of rows of a stacked weight: the output is contiguous, where
/// a slice of the stacked product's output is strided (and candle's strided element-wise
/// kernels are several times slower than its contiguous ones on a long prompt).
fn linear_rows(x: &Tensor, w: &Tensor, start: usize, len: usize) -> candle_core::Result<Tensor> {
    x.matmul(&w.narrow(0, start, len)?.t()?)
}

impl Decoder {
    pub fn load(vb: &VarBuilder, shape: Shape) -> anyhow::Result<Decoder> {
        let dtype = vb.dtype();
        let device = vb.device().clone();
        let hd = shape.head_dim();
        let kv = shape.kv_heads * hd;
        let m = vb.pp("model");
        let embed = m.get((shape.vocab, shape.hidden), "embed_tokens.weight")?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut layers = Vec::with_capacity(shape.layers);
        for i in 0..shape.layers {
            let l = m.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            let q = a.get((shape.hidden, shape.hidden), "q_proj.weight")?;
            let k = a.get((kv, shape.hidden), "k_proj.weight")?;
            let v = a.get((kv, shape.hidden), "v_proj.weight")?;
            let q = (q.to_dtype(DType::F32)? * scale)?.to_dtype(dtype)?;
            let qkv = Tensor::cat(&[&q, &k, &v], 0)?;
            let qkv_bias = if shape.qkv_bias {
                let qb = a.get(shape.hidden, "q_proj.bias")?;
                let qb = (qb.to_dtype(DType::F32)? * scale)?.to_dtype(dtype)?;
                let kb = a.get(kv, "k_proj.bias")?;
                let vb_ = a.get(kv, "v_proj.bias")?;
                Some(Tensor::cat(&[&qb, &kb, &vb_], 0)?)
            } else {
                None
            };
            let mlp = l.pp("mlp");
            let gate = mlp.get((shape.intermediate, shape.hidden), "gate_proj.weight")?;
            let up = mlp.get((shape.intermediate, shape.hidden), "up_proj.weight")?;
            let gate_up = Tensor::cat(&[&gate, &up], 0)?;
            let empty = Tensor::zeros((1, shape.kv_heads, 0, hd), dtype, &device)?;
            layers.push(Layer {
                attn_norm: l.get(shape.hidden, "input_layernorm.weight")?,
                qkv,
                qkv_bias,
                o: a.get((shape.hidden, shape.hidden), "o_proj.weight")?,
                mlp_norm: l.get(shape.hidden, "post_attention_layernorm.weight")?,
                gate_up,
                down: mlp.get((shape.hidden, shape.intermediate), "down_proj.weight")?,
                k_cache: empty.clone(),
                v_cache: empty,
            });
        }
        let norm = m.get(shape.hidden, "norm.weight")?;
        let head = if shape.tied {
            embed.clone()
        } else {
            vb.get((shape.vocab, shape.hidden), "lm_head.weight")?
        };
        // Rope tables in f32 (exact positions), cast once.
        let inv: Vec<f32> = (0..hd)
            .step_by(2)
            .map(|i| 1.0 / shape.rope_theta.powf(i as f64 / hd as f64) as f32)
            .collect();
        let angles: Vec<f32> = (0..shape.max_positions)
            .flat_map(|p| inv.iter().map(move |f| p as f32 * f))
            .collect();
        let angles = Tensor::from_vec(angles, (shape.max_positions, hd / 2), &Device::Cpu)?;
        let cos = angles.cos()?.to_dtype(dtype)?.to_device(&device)?;
        let sin = angles.sin()?.to_dtype(dtype)?.to_device(&device)?;
        Ok(Decoder {
            shape,
            embed,
            layers,
            norm,
            head,
            cos,
            sin,
            capacity: 0,
            dtype,
            device,
            prefill_chunk: PREFILL_CHUNK,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Room for `positions` tokens: the caches grow (keeping what they hold), never shrink.
    pub fn reserve(&mut self, positions: usize) -> candle_core::Result<()> {
        if positions <= self.capacity {
            return Ok(());
        }
        let capacity = positions.max(2 * self.capacity).next_multiple_of(256);
        let hd = self.shape.head_dim();
        for l in &mut self.layers {
            for cache in [&mut l.k_cache, &mut l.v_cache] {
                let grown = Tensor::zeros(
                    (1, self.shape.kv_heads, capacity, hd),
                    self.dtype,
                    &self.device,
                )?;
                if self.capacity > 0 {
                    grown.slice_set(cache, 2, 0)?;
                }
                *cache = grown;
            }
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Logits of the last of `input`, the tokens at positions `pos..pos + input.len()`.
    /// A long prompt goes in chunks, which bounds the attention scores' memory (they grow
    /// with the chunk times the context).
    pub fn forward(&mut self, input: &[u32], pos: usize) -> candle_core::Result<Tensor> {
        let mut logits = None;
        let mut at = pos;
        for chunk in input.chunks(self.prefill_chunk.max(1)) {
            logits = Some(self.forward_chunk(chunk, at)?);
            at += chunk.len();
        }
        logits.ok_or_else(|| candle_core::Error::Msg("no tokens to run".into()))
    }

    /// Tokens per prompt chunk; tests make it small to exercise the chunk boundaries.
    #[cfg(test)]
    pub fn set_prefill_chunk(&mut self, tokens: usize) {
        self.prefill_chunk = tokens;
    }

    fn forward_chunk(&mut self, input: &[u32], pos: usize) -> candle_core::Result<Tensor> {
        let t = input.len();
        if pos + t > self.shape.max_positions {
            candle_core::bail!(
                "position {} is past the model's {} positions",
                pos + t,
                self.shape.max_positions
            );
        }
        self.reserve(pos + t)?;
        let s = self.shape;
        let (hd, kv_heads) = (s.head_dim(), s.kv_heads);
        let group = s.heads / kv_heads;
        let eps = s.rms_eps as f32;
        let ids = Tensor::new(input, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?; // [t, hidden]
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let total = pos + t;
        // A prompt's rows of the mask, repeated for the `group` query heads of a KV head.
        let mask = if t > 1 {
            Some(
                self.mask(t, pos)?
                    .unsqueeze(0)?
                    .broadcast_as((group, t, total))?
                    .contiguous()?
                    .reshape((1, 1, group * t, total))?,
            )
        } else {
            None
        };
        let kvd = kv_heads * hd;
        for l in &mut self.layers {
            let h = candle_nn::ops::rms_norm(&x, &l.attn_norm, eps)?;
            // One token: one matmul (and one bias add) for q, k and v, since launches decide
            // decode. A prompt: one each, so that each output is contiguous.
            let parts = [(0, s.hidden), (s.hidden, kvd), (s.hidden + kvd, kvd)];
            let [q, k, v] = if t == 1 {
                let mut qkv = linear(&h, &l.qkv)?;
                if let Some(b) = &l.qkv_bias {
                    qkv = qkv.broadcast_add(b)?;
                }
                parts.map(|(start, len)| qkv.narrow(1, start, len))
            } else {
                parts.map(|(start, len)| {
                    let y = linear_rows(&h, &l.qkv, start, len)?;
                    match &l.qkv_bias {
                        Some(b) => y.broadcast_add(&b.narrow(0, start, len)?),
                        None => Ok(y),
                    }
                })
            };
            let (q, k, v) = (q?, k?, v?);
            let q = q.reshape((1, t, s.heads, hd))?;
            let k = k.reshape((1, t, kv_heads, hd))?;
            let v = v.reshape((1, t, kv_heads, hd))?;
            let q = candle_nn::rotary_emb::rope_thd(&q.contiguous()?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_thd(&k.contiguous()?, &cos, &sin)?;
            // [1, t, kv, hd] -> [1, kv, t, hd]: free at t = 1 (a size-1 axis moves).
            l.k_cache
                .slice_set(&k.transpose(1, 2)?.contiguous()?, 2, pos)?;
            l.v_cache
                .slice_set(&v.transpose(1, 2)?.contiguous()?, 2, pos)?;
            let keys = l.k_cache.narrow(2, 0, total)?;
            let values = l.v_cache.narrow(2, 0, total)?;
            // The `group` query heads sharing a KV head are rows of one matmul.
            let q = q
                .transpose(1, 2)?
                .contiguous()?
                .reshape((1, kv_heads, group * t, hd))?;
            let attn = match &mask {
                None => {
                    let scores = q.matmul(&keys.t()?)?; // [1, kv, group, total]
                    candle_nn::ops::softmax_last_dim(&scores)?.matmul(&values)?
                }
                // A prompt: one KV head at a time, so the mask is added to a contiguous
                // block of the same shape (candle's broadcasting add was 3 ms a layer at
                // 2,048 tokens on the H200).
                Some(mask) => {
                    let mut heads = Vec::with_capacity(kv_heads);
                    for g in 0..kv_heads {
                        let qg = q.narrow(1, g, 1)?;
                        let scores = (qg.matmul(&keys.narrow(1, g, 1)?.t()?)? + mask)?;
                        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                        heads.push(probs.matmul(&values.narrow(1, g, 1)?)?);
                    }
                    Tensor::cat(&heads, 1)?
                }
            };
            let attn = attn // [1, kv, group * t, hd]
                .reshape((1, s.heads, t, hd))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((t, s.hidden))?;
            x = (x + linear(&attn, &l.o)?)?;
            let h = candle_nn::ops::rms_norm(&x, &l.mlp_norm, eps)?;
            let n = s.intermediate;
            let (gate, up) = if t == 1 {
                let gu = linear(&h, &l.gate_up)?;
                (gu.narrow(1, 0, n)?, gu.narrow(1, n, n)?)
            } else {
                (
                    linear_rows(&h, &l.gate_up, 0, n)?,
                    linear_rows(&h, &l.gate_up, n, n)?,
                )
            };
            let act = (candle_nn::ops::silu(&gate)? * up)?;
            x = (x + linear(&act, &l.down)?)?;
        }
        let last = x.narrow(0, t - 1, 1)?;
        let h = candle_nn::ops::rms_norm(&last, &self.norm, eps)?;
        linear(&h, &self.head)?.flatten_all()?.to_dtype(DType::F32)
    }

    /// The causal mask of a `t`-token chunk at `pos`, `[t, pos + t]`, built on the device
    /// (a 2,048-token prompt's mask built on the CPU cost more than its matmuls): 0 where
    /// key `j` is visible to token `i` (`j <= pos + i`), -1e30 (-inf in f16) where later.
    fn mask(&self, t: usize, pos: usize) -> candle_core::Result<Tensor> {
        let total = pos + t;
        let i = Tensor::arange(pos as u32, total as u32, &self.device)?.reshape((t, 1))?;
        let j = Tensor::arange(0u32, total as u32, &self.device)?.reshape((1, total))?;
        j.broadcast_gt(&i)?.to_dtype(self.dtype)?.affine(-1e30, 0.0)
    }
}

/// Loads a decoder when the folder's model is one it serves, else says why not (`None`).
pub fn try_load(
    config: &Value,
    model_type: &str,
    vb: &VarBuilder,
) -> anyhow::Result<Option<Decoder>> {
    if super::candle::candle_forced() {
        return Ok(None);
    }
    let Some(shape) = Shape::from_config(config, model_type)? else {
        return Ok(None);
    };
    if shape.heads % shape.kv_heads != 0 {
        bail!(
            "config.json: {} attention heads do not split into {} KV heads",
            shape.heads,
            shape.kv_heads
        );
    }
    Ok(Some(Decoder::load(vb, shape)?))
}
