//! GGML's block formats, as they lie in a GGUF file, and the scalar reference kernels that
//! every SIMD kernel is tested against. The arithmetic mirrors llama.cpp's (activations
//! quantized once per matmul: Q8_1 for Q4_1 weights, Q8_0 for Q8_0 weights) so that greedy
//! decoding picks the same tokens.

use half::f16;

/// Values per block, for every format here.
pub const QK: usize = 32;

/// 4-bit weights with a per-block scale and minimum: value = d * q + m, q in 0..16.
/// Byte j holds element j (low nibble) and element j + 16 (high nibble).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; QK / 2],
}

/// 8-bit values with a per-block scale: value = d * q.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; QK],
}

/// Q8_0 plus `s` = d * sum(q), which folds Q4_1's minimum into one multiply per block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8_1 {
    pub d: u16,
    pub s: u16,
    pub qs: [i8; QK],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// Scale and quantized values of one block of 32 floats (round half to even, as
/// llama.cpp's x86 kernels do).
#[inline]
fn quantize_block(x: &[f32], qs: &mut [i8; QK]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        let r = (v * id).round_ties_even() as i8;
        *q = r;
        sum += i32::from(r);
    }
    (d, sum)
}

/// `x.len()` must be `y.len() * QK`.
pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    for (block, xs) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let (d, sum) = quantize_block(xs, &mut block.qs);
        block.d = f32_to_f16(d);
        block.s = f32_to_f16(d * sum as f32);
    }
}

pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    for (block, xs) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let (d, _) = quantize_block(xs, &mut block.qs);
        block.d = f32_to_f16(d);
    }
}

pub fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    for (block, ys) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_to_f32(block.d);
        for (o, q) in ys.iter_mut().zip(block.qs) {
            *o = d * f32::from(q);
        }
    }
}

pub fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) {
    for (block, ys) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (f16_to_f32(block.d), f16_to_f32(block.m));
        for (j, q) in block.qs.iter().enumerate() {
            ys[j] = d * f32::from(q & 0x0F) + m;
            ys[j + QK / 2] = d * f32::from(q >> 4) + m;
        }
    }
}

/// Dot product of a Q4_1 row and a Q8_1 row of the same length.
pub fn dot_q4_1_q8_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            sumi += i32::from(x.qs[j] & 0x0F) * i32::from(y.qs[j]);
            sumi += i32::from(x.qs[j] >> 4) * i32::from(y.qs[j + QK / 2]);
        }
        sum += f16_to_f32(x.d) * f16_to_f32(y.d) * sumi as f32 + f16_to_f32(x.m) * f16_to_f32(y.s);
    }
    sum
}

pub fn dot_q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let sumi: i32 =
            x.qs.iter()
                .zip(y.qs)
                .map(|(p, q)| i32::from(*p) * i32::from(q))
                .sum();
        sum += f16_to_f32(x.d) * f16_to_f32(y.d) * sumi as f32;
    }
    sum
}

/// One query head's causal attention over `n` cached positions. Keys and values are f16
/// rows of `stride` values; this head's part of each row starts at `off`. `scores` is
/// scratch of at least `n`; the result goes to `out` (the head's width). As in llama.cpp
/// (its f16 cache, no flash attention), the query and the softmax weights are rounded to
/// f16 before they meet the f16 keys and values: greedy picks then agree on near-ties.
#[allow(clippy::too_many_arguments)] // one kernel's operands, same as the SIMD versions
pub fn attend_head(
    q: &[f32],
    k: &[u16],
    v: &[u16],
    stride: usize,
    off: usize,
    n: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    let round = |v: f32| f16_to_f32(f32_to_f16(v));
    let mut max = f32::NEG_INFINITY;
    for (j, s) in scores[..n].iter_mut().enumerate() {
        let kr = &k[j * stride + off..j * stride + off + hd];
        let dot: f32 = q
            .iter()
            .zip(kr)
            .map(|(a, b)| round(*a) * f16_to_f32(*b))
            .sum();
        *s = dot * scale;
        max = max.max(*s);
    }
    let mut sum = 0f32;
    for s in scores[..n].iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    out[..hd].fill(0.0);
    for (j, s) in scores[..n].iter().enumerate() {
        let w = round(s * inv);
        let vr = &v[j * stride + off..j * stride + off + hd];
        for (o, x) in out.iter_mut().zip(vr) {
            *o += w * f16_to_f32(*x);
        }
    }
}
