//! gpuctl's own CPU engine for llama-family GGUF models with Q4_1 / Q8_0 weights (the
//! default model's formats). candle 0.11 has no SIMD kernel for Q4_1 and keeps an f32 copy
//! of the embedding; this engine serves the file's blocks as they are, with kernels picked
//! at run time (`kernels.rs`), one thread pool (`pool.rs`), the prompt through each weight
//! matrix once per chunk, and buffers sized once and reused: a decode step allocates
//! nothing. Files it cannot serve (other formats, rope scaling) go to candle's engine.

#[allow(unsafe_code)] // run-time dispatch to target-feature functions; disjoint writes
mod kernels;
#[allow(unsafe_code)] // a job borrowed by the workers for one section
mod pool;
mod quant;
#[allow(unsafe_code)] // SIMD intrinsics
#[cfg(target_arch = "x86_64")]
mod x86;

use std::io::{Read, Seek, SeekFrom};

use anyhow::Context;
use candle_core::quantized::{gguf_file, GgmlDType};

pub use kernels::Level;
use kernels::{Kernels, Out, Shards};
use pool::{share, Pool};
use quant::{BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};

/// Prompt tokens pushed through the weights at once: bounds the scratch buffers (about 2 MB
/// at 64; 128 cost 2.5 MB more of peak memory and was no faster on a 1,024-token prompt)
/// and keeps one chunk's quantized activations in the L2 cache.
const PREFILL_CHUNK: usize = 64;
/// The KV cache grows in steps of this many positions.
const CACHE_STEP: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Config {
    dim: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    vocab: usize,
    eps: f32,
    rope_base: f32,
}

impl Config {
    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    fn qkv_dim(&self) -> usize {
        self.dim + 2 * self.kv_dim()
    }
}

enum Blocks {
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
}

/// A weight matrix of `rows` outputs by `cols` inputs, row-major in blocks of 32.
struct Matrix {
    rows: usize,
    cols: usize,
    blocks: Blocks,
}

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v stacked: one pass over the input for all three.
    qkv: Matrix,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    /// gate and up stacked.
    gate_up: Matrix,
    down: Matrix,
}

/// Grow-only buffers, reused by every step.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    hidden: Vec<f32>,
    acts: Acts,
    /// Attention scores, one row of the cache's capacity per thread.
    scores: Vec<f32>,
    rope: Vec<(f32, f32)>,
}

/// A matmul's input quantized once: Q8_1 for Q4_1 weights, Q8_0 for Q8_0 weights.
#[derive(Default)]
struct Acts {
    q8_1: Vec<BlockQ8_1>,
    q8_0: Vec<BlockQ8_0>,
}

/// The kernels of this CPU and the threads that run them.
struct Cpu {
    kernels: Kernels,
    pool: Pool,
}

fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// Keys and values of every layer, `capacity` positions each.
#[derive(Default)]
/// Keys and values of every layer in f16 (as llama.cpp keeps them): half the memory and
/// half the bytes read per decoded token at long contexts.
struct KvCache {
    k: Vec<u16>,
    v: Vec<u16>,
    capacity: usize,
}

pub struct NativeLlama {
    cfg: Config,
    cpu: Cpu,
    embed: Matrix,
    /// None: the output projection is the embedding (tied weights).
    output: Option<Matrix>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    cache: KvCache,
    scratch: Scratch,
    logits: Vec<f32>,
}

/// Why a file goes to candle's engine instead.
#[derive(Debug)]
pub struct Unsupported(pub String);

fn meta_u32(ct: &gguf_file::Content, key: &str) -> Option<usize> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_u32().ok())
        .map(|v| v as usize)
}

fn meta_f32(ct: &gguf_file::Content, key: &str) -> Option<f32> {
    ct.metadata.get(key).and_then(|v| v.to_f32().ok())
}

/// Plain-old-data read straight from the file into its final buffer (no second copy).
trait Pod: Copy + Default {}
impl Pod for f32 {}
impl Pod for BlockQ4_1 {}
impl Pod for BlockQ8_0 {}

#[allow(unsafe_code)]
fn read_into<T: Pod>(file: &mut std::fs::File, at: u64, out: &mut [T]) -> std::io::Result<()> {
    // SAFETY: T is a repr(C) (or primitive) type without padding for which every bit
    // pattern is a valid value; the byte view covers exactly `out`.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(out))
    };
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(bytes)
}

struct Loader<'a> {
    content: &'a gguf_file::Content,
    file: &'a mut std::fs::File,
}

impl Loader<'_> {
    /// Format, dimensions (outermost first) and data offset of one tensor.
    fn info(&self, name: &str) -> Result<(GgmlDType, Vec<usize>, u64), Unsupported> {
        self.content
            .tensor_infos
            .get(name)
            .map(|i| (i.ggml_dtype, i.shape.dims().to_vec(), i.offset))
            .ok_or_else(|| Unsupported(format!("no tensor {name}")))
    }

    fn vector(&mut self, name: &str, len: usize) -> anyhow::Result<Result<Vec<f32>, Unsupported>> {
        let (dtype, dims, offset) = match self.info(name) {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        if dtype != GgmlDType::F32 || dims != [len] {
            return Ok(Err(Unsupported(format!(
                "{name} is {dtype:?} {dims:?}, not f32 [{len}]"
            ))));
        }
        let mut v = vec![0f32; len];
        read_into(self.file, self.content.tensor_data_offset + offset, &mut v)
            .with_context(|| format!("reading {name}; the file may be truncated"))?;
        Ok(Ok(v))
    }

    /// One matrix from several stacked tensors of the same format and width.
    fn matrix(
        &mut self,
        names: &[String],
        cols: usize,
    ) -> anyhow::Result<Result<Matrix, Unsupported>> {
        let mut parts = Vec::new();
        for name in names {
            let (dtype, dims, offset) = match self.info(name) {
                Ok(i) => i,
                Err(e) => return Ok(Err(e)),
            };
            if dims.len() != 2 || dims[1] != cols || !cols.is_multiple_of(QK) {
                return Ok(Err(Unsupported(format!(
                    "{name} has shape {dims:?}, expected [_, {cols}]"
                ))));
            }
            parts.push((name, dtype, dims[0], offset));
        }
        let dtype = parts[0].1;
        if parts.iter().any(|p| p.1 != dtype) {
            return Ok(Err(Unsupported(format!(
                "{} mix formats",
                names.join(", ")
            ))));
        }
        let rows: usize = parts.iter().map(|p| p.2).sum();
        let bpr = cols / QK;
        let base = self.content.tensor_data_offset;
        fn fill<T: Pod>(
            file: &mut std::fs::File,
            base: u64,
            parts: &[(&String, GgmlDType, usize, u64)],
            bpr: usize,
            rows: usize,
        ) -> anyhow::Result<Vec<T>> {
            let mut blocks = vec![T::default(); rows * bpr];
            let mut at = 0;
            for (name, _, r, offset) in parts {
                read_into(file, base + offset, &mut blocks[at..at + r * bpr])
                    .with_context(|| format!("reading {name}; the file may be truncated"))?;
                at += r * bpr;
            }
            Ok(blocks)
        }
        let blocks = match dtype {
            GgmlDType::Q4_1 => Blocks::Q4_1(fill(self.file, base, &parts, bpr, rows)?),
            GgmlDType::Q8_0 => Blocks::Q8_0(fill(self.file, base, &parts, bpr, rows)?),
            other => {
                return Ok(Err(Unsupported(format!(
                    "{} is {other:?} (this engine serves Q4_1 and Q8_0)",
                    names[0]
                ))))
            }
        };
        Ok(Ok(Matrix { rows, cols, blocks }))
    }
}

/// `?` for the inner "unsupported" result: return it to the caller as is.
macro_rules! supported {
    ($e:expr) => {
        match $e? {
            Ok(v) => v,
            Err(u) => return Ok(Err(u)),
        }
    };
}

impl NativeLlama {
    /// The model in `content`, or why this engine cannot serve it.
    pub fn from_gguf(
        content: &gguf_file::Content,
        file: &mut std::fs::File,
        level: Level,
        threads: usize,
    ) -> anyhow::Result<Result<NativeLlama, Unsupported>> {
        let need = |key: &str| {
            meta_u32(content, key).ok_or_else(|| Unsupported(format!("no {key} in the metadata")))
        };
        let unsupported = |why: String| Ok(Err(Unsupported(why)));
        let (dim, layers, heads) = match (
            need("llama.embedding_length"),
            need("llama.block_count"),
            need("llama.attention.head_count"),
        ) {
            (Ok(d), Ok(l), Ok(h)) => (d, l, h),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Ok(Err(e)),
        };
        let kv_heads = meta_u32(content, "llama.attention.head_count_kv").unwrap_or(heads);
        if heads == 0 || dim % heads != 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return unsupported(format!("{heads} heads / {kv_heads} KV heads over {dim}"));
        }
        let head_dim = dim / heads;
        if meta_u32(content, "llama.rope.dimension_count").is_some_and(|d| d != head_dim)
            || content.tensor_infos.contains_key("rope_freqs.weight")
            || content.metadata.contains_key("llama.rope.scaling.type")
        {
            return unsupported("partial or scaled rotary embeddings".into());
        }
        let embed_info = match content.tensor_infos.get("token_embd.weight") {
            Some(i) => i,
            None => return unsupported("no token_embd.weight".into()),
        };
        let vocab = embed_info.shape.dims().first().copied().unwrap_or(0);
        let mut ld = Loader { content, file };
        let mut blk = Vec::with_capacity(layers);
        let mut ffn = 0;
        for i in 0..layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let qkv = supported!(ld.matrix(&[n("attn_q"), n("attn_k"), n("attn_v")], dim));
            if qkv.rows != dim + 2 * kv_heads * head_dim {
                return unsupported(format!(
                    "blk.{i} q/k/v rows {} do not match the heads",
                    qkv.rows
                ));
            }
            let gate_up = supported!(ld.matrix(&[n("ffn_gate"), n("ffn_up")], dim));
            ffn = gate_up.rows / 2;
            let down = supported!(ld.matrix(&[n("ffn_down")], ffn));
            let wo = supported!(ld.matrix(&[n("attn_output")], dim));
            if wo.rows != dim || down.rows != dim {
                return unsupported(format!("blk.{i} output shapes do not match {dim}"));
            }
            blk.push(Layer {
                attn_norm: supported!(ld.vector(&n("attn_norm"), dim)),
                qkv,
                wo,
                ffn_norm: supported!(ld.vector(&n("ffn_norm"), dim)),
                gate_up,
                down,
            });
        }
        let embed = supported!(ld.matrix(&["token_embd.weight".to_string()], dim));
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(supported!(ld.matrix(&["output.weight".to_string()], dim)))
        } else {
            None
        };
        let output_norm = supported!(ld.vector("output_norm.weight", dim));
        let cfg = Config {
            dim,
            layers,
            heads,
            kv_heads,
            head_dim,
            ffn,
            vocab: output.as_ref().map_or(vocab, |o| o.rows),
            eps: meta_f32(content, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_base: meta_f32(content, "llama.rope.freq_base").unwrap_or(10_000.0),
        };
        Ok(Ok(NativeLlama {
            logits: vec![0f32; cfg.vocab],
            cfg,
            cpu: Cpu {
                kernels: Kernels::new(level)?,
                pool: Pool::new(threads),
            },
            embed,
            output,
            output_norm,
            layers: blk,
            cache: KvCache::default(),
            scratch: Scratch::default(),
        }))
    }

    pub fn level(&self) -> Level {
        self.cpu.kernels.level()
    }

    pub fn threads(&self) -> usize {
        self.cpu.pool.threads()
    }

    /// Room in the KV cache for `positions` in all (kept across requests; the positions
    /// already written are kept too).
    pub fn reserve(&mut self, positions: usize) {
        if positions <= self.cache.capacity {
            return;
        }
        let cap = positions.div_ceil(CACHE_STEP) * CACHE_STEP;
        let (old, kv) = (self.cache.capacity, self.cfg.kv_dim());
        let regrow = |v: &Vec<u16>| {
            let mut n = vec![0u16; self.cfg.layers * cap * kv];
            for l in 0..self.cfg.layers {
                n[l * cap * kv..(l * cap + old) * kv]
                    .copy_from_slice(&v[l * old * kv..(l + 1) * old * kv]);
            }
            n
        };
        self.cache.k = regrow(&self.cache.k);
        self.cache.v = regrow(&self.cache.v);
        self.cache.capacity = cap;
        self.scratch.scores = vec![0f32; self.cpu.pool.threads() * cap];
    }

    /// Feed `tokens` at positions `pos..`; the logits of the last one.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> anyhow::Result<&[f32]> {
        if let Some(bad) = tokens.iter().find(|t| **t as usize >= self.cfg.vocab) {
            anyhow::bail!(
                "token id {bad} is outside the vocabulary ({})",
                self.cfg.vocab
            );
        }
        if tokens.is_empty() {
            anyhow::bail!("no tokens to feed");
        }
        self.reserve(pos + tokens.len());
        for (i, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            self.chunk(chunk, pos + i * PREFILL_CHUNK);
        }
        Ok(&self.logits)
    }

    fn chunk(&mut self, tokens: &[u32], pos: usize) {
        let c = self.cfg;
        let m = tokens.len();
        let s = &mut self.scratch;
        grow(&mut s.x, m * c.dim);
        grow(&mut s.xn, m * c.dim);
        grow(&mut s.qkv, m * c.qkv_dim());
        grow(&mut s.attn, m * c.dim);
        grow(&mut s.proj, m * c.dim);
        grow(&mut s.gate_up, m * 2 * c.ffn);
        grow(&mut s.hidden, m * c.ffn);
        grow(&mut s.rope, m * c.head_dim / 2);
        for (t, tok) in tokens.iter().enumerate() {
            embed_row(
                &self.embed,
                *tok as usize,
                &mut s.x[t * c.dim..(t + 1) * c.dim],
            );
        }
        rope_table(&c, pos, m, &mut s.rope);
        for l in 0..c.layers {
            let layer = &self.layers[l];
            let s = &mut self.scratch;
            rms_norm(&s.x[..m * c.dim], &layer.attn_norm, c.eps, &mut s.xn);
            matmul(&self.cpu, &layer.qkv, &s.xn, m, &mut s.acts, &mut s.qkv);
            apply_rope(&c, m, &s.rope, &mut s.qkv);
            // Keys and values into the cache at their positions.
            let cap = self.cache.capacity;
            let kv = c.kv_dim();
            for t in 0..m {
                let row = &s.qkv[t * c.qkv_dim()..(t + 1) * c.qkv_dim()];
                let at = (l * cap + pos + t) * kv;
                for (o, x) in self.cache.k[at..at + kv]
                    .iter_mut()
                    .zip(&row[c.dim..c.dim + kv])
                {
                    *o = quant::f32_to_f16(*x);
                }
                for (o, x) in self.cache.v[at..at + kv].iter_mut().zip(&row[c.dim + kv..]) {
                    *o = quant::f32_to_f16(*x);
                }
            }
            attention(
                &c,
                &self.cpu,
                AttentionInput {
                    qkv: &s.qkv,
                    k: &self.cache.k[l * cap * kv..(l + 1) * cap * kv],
                    v: &self.cache.v[l * cap * kv..(l + 1) * cap * kv],
                    pos,
                    m,
                },
                &mut s.scores,
                cap,
                &mut s.attn,
            );
            matmul(&self.cpu, &layer.wo, &s.attn, m, &mut s.acts, &mut s.proj);
            add(&mut s.x[..m * c.dim], &s.proj[..m * c.dim]);
            rms_norm(&s.x[..m * c.dim], &layer.ffn_norm, c.eps, &mut s.xn);
            matmul(
                &self.cpu,
                &layer.gate_up,
                &s.xn,
                m,
                &mut s.acts,
                &mut s.gate_up,
            );
            for t in 0..m {
                let gu = &s.gate_up[t * 2 * c.ffn..(t + 1) * 2 * c.ffn];
                let (gate, up) = gu.split_at(c.ffn);
                for ((h, g), u) in s.hidden[t * c.ffn..(t + 1) * c.ffn]
                    .iter_mut()
                    .zip(gate)
                    .zip(up)
                {
                    *h = g / (1.0 + (-g).exp()) * u;
                }
            }
            matmul(
                &self.cpu,
                &layer.down,
                &s.hidden,
                m,
                &mut s.acts,
                &mut s.proj,
            );
            add(&mut s.x[..m * c.dim], &s.proj[..m * c.dim]);
        }
        // Only the last position's logits are needed.
        let s = &mut self.scratch;
        let last = &s.x[(m - 1) * c.dim..m * c.dim];
        rms_norm(last, &self.output_norm, c.eps, &mut s.xn);
        let head = self.output.as_ref().unwrap_or(&self.embed);
        matmul(&self.cpu, head, &s.xn, 1, &mut s.acts, &mut self.logits);
    }
}

fn embed_row(embed: &Matrix, token: usize, out: &mut [f32]) {
    let bpr = embed.cols / QK;
    match &embed.blocks {
        Blocks::Q8_0(b) => quant::dequantize_row_q8_0(&b[token * bpr..(token + 1) * bpr], out),
        Blocks::Q4_1(b) => quant::dequantize_row_q4_1(&b[token * bpr..(token + 1) * bpr], out),
    }
}

/// out = x / rms(x) * weight, row by row (the sum of squares in f64, as llama.cpp).
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (row, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let sum: f64 = row.iter().map(|v| f64::from(*v) * f64::from(*v)).sum();
        let scale = 1.0 / ((sum / n as f64) as f32 + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// cos/sin per position and pair, the angles stepped as llama.cpp does (theta *= scale).
fn rope_table(c: &Config, pos: usize, m: usize, table: &mut [(f32, f32)]) {
    let half = c.head_dim / 2;
    let scale = c.rope_base.powf(-2.0 / c.head_dim as f32);
    for t in 0..m {
        let mut theta = (pos + t) as f32;
        for i in 0..half {
            table[t * half + i] = (theta.cos(), theta.sin());
            theta *= scale;
        }
    }
}

/// Rotate adjacent pairs of every q and k head (GGUF llama stores them for this layout).
fn apply_rope(c: &Config, m: usize, table: &[(f32, f32)], qkv: &mut [f32]) {
    let half = c.head_dim / 2;
    let rotated = c.dim + c.kv_dim();
    for t in 0..m {
        let row = &mut qkv[t * c.qkv_dim()..t * c.qkv_dim() + rotated];
        let cs = &table[t * half..(t + 1) * half];
        for head in row.chunks_exact_mut(c.head_dim) {
            for (pair, (cos, sin)) in head.chunks_exact_mut(2).zip(cs) {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0 * cos - x1 * sin;
                pair[1] = x0 * sin + x1 * cos;
            }
        }
    }
}

/// out[m, rows] = x[m, cols] times w's rows: x quantized once, rows split over the pool.
fn matmul(cpu: &Cpu, w: &Matrix, x: &[f32], m: usize, acts: &mut Acts, out: &mut [f32]) {
    let (kernels, pool) = (&cpu.kernels, &cpu.pool);
    let bpr = w.cols / QK;
    let x = &x[..m * w.cols];
    let out = Out::new(&mut out[..m * w.rows], w.rows);
    let threads = pool.threads();
    match &w.blocks {
        Blocks::Q4_1(b) => {
            grow(&mut acts.q8_1, m * bpr);
            quantize_rows(pool, x, w.cols, &mut acts.q8_1[..m * bpr], |x, y| {
                kernels.quantize_q8_1(x, y)
            });
            let a = &acts.q8_1[..m * bpr];
            pool.run(&|i| kernels.q4_1_rows(b, bpr, a, m, share(w.rows, i, threads, 8), out));
        }
        Blocks::Q8_0(b) => {
            grow(&mut acts.q8_0, m * bpr);
            quantize_rows(pool, x, w.cols, &mut acts.q8_0[..m * bpr], |x, y| {
                kernels.quantize_q8_0(x, y)
            });
            let a = &acts.q8_0[..m * bpr];
            pool.run(&|i| kernels.q8_0_rows(b, bpr, a, m, share(w.rows, i, threads, 8), out));
        }
    }
}

/// Each token's row of `x` quantized into its row of `blocks`; tokens split over the pool.
#[allow(unsafe_code)] // disjoint rows of one buffer, see below
fn quantize_rows<B: Send>(
    pool: &Pool,
    x: &[f32],
    cols: usize,
    blocks: &mut [B],
    quantize: impl Fn(&[f32], &mut [B]) + Sync,
) {
    let m = x.len() / cols;
    if m < 2 {
        quantize(x, blocks);
        return;
    }
    let bpr = cols / QK;
    let threads = pool.threads();
    let shards = Shards::new(blocks);
    pool.run(&|i| {
        for t in share(m, i, threads, 1) {
            // SAFETY: token t's row is written by this thread alone.
            let row = unsafe { shards.slice(t * bpr..(t + 1) * bpr) };
            quantize(&x[t * cols..(t + 1) * cols], row);
        }
    });
}

struct AttentionInput<'a> {
    qkv: &'a [f32],
    k: &'a [u16],
    v: &'a [u16],
    pos: usize,
    m: usize,
}

#[allow(unsafe_code)] // per-thread spans of shared buffers, see below
/// Causal attention of the chunk's queries over the cache, (token, head) pairs split
/// over the pool. Grouped-query: `heads / kv_heads` query heads share a key/value head.
fn attention(
    c: &Config,
    cpu: &Cpu,
    inp: AttentionInput,
    scores: &mut [f32],
    cap: usize,
    out: &mut [f32],
) {
    let (kernels, pool) = (&cpu.kernels, &cpu.pool);
    let (hd, kv, group) = (c.head_dim, c.kv_dim(), c.heads / c.kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    let items = inp.m * c.heads;
    let threads = pool.threads();
    let out = Out::new(&mut out[..inp.m * c.dim], c.dim);
    let scores = Out::new(&mut scores[..threads * cap], cap);
    pool.run(&|i| {
        // SAFETY: thread i alone uses score row i, and (token, head) pairs are split
        // between threads, so each writes its own heads' outputs.
        let row = unsafe { scores.row(i, cap) };
        for item in share(items, i, threads, 1) {
            let (t, h) = (item / c.heads, item % c.heads);
            let q = &inp.qkv[t * c.qkv_dim() + h * hd..t * c.qkv_dim() + (h + 1) * hd];
            let seen = inp.pos + t + 1;
            // SAFETY: as above: this head of this token is this thread's alone.
            let o = unsafe { out.span(t, h * hd, hd) };
            let off = (h / group) * hd;
            kernels.attend_head(q, inp.k, inp.v, kv, off, seen, scale, row, o);
        }
    });
}
