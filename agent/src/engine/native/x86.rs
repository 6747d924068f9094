//! x86-64 SIMD kernels: AVX2 (with FMA and F16C) and AVX-512 VNNI. Each is `unsafe` because
//! the CPU must have its features; `kernels.rs` picks them at run time and only then.
//! The scalar kernels in `quant.rs` are the reference they are tested against.

use std::arch::x86_64::*;

use super::quant::{BlockQ4_1, BlockQ8_0, BlockQ8_1};

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn half(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// A Q4_1 block's 32 values as bytes: element j of the block is byte j.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: 16 readable bytes, unaligned load.
    let low = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let both = _mm256_set_m128i(_mm_srli_epi16(low, 4), low);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load32(qs: &[i8; 32]) -> __m256i {
    // SAFETY: 32 readable bytes, unaligned load.
    unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) }
}

/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1_q8_1_avx2(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (x, y) in w.iter().zip(a) {
        let scale = half(x.d) * half(y.d);
        mins += half(x.m) * half(y.s);
        // SAFETY: the blocks' arrays are in bounds.
        let (qx, qy) = unsafe { (nibbles(&x.qs), load32(&y.qs)) };
        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), ones);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(sums), acc);
    }
    hsum(acc) + mins
}

/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_q8_0_avx2(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let scale = half(x.d) * half(y.d);
        // SAFETY: the blocks' arrays are in bounds.
        let (qx, qy) = unsafe { (load32(&x.qs), load32(&y.qs)) };
        // maddubs multiplies unsigned by signed: move x's sign onto y.
        let prod = _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
        let sums = _mm256_madd_epi16(prod, ones);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(sums), acc);
    }
    hsum(acc)
}

/// # Safety
/// The CPU has AVX-512 VNNI with VL, AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn dot_q4_1_q8_1_vnni(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (x, y) in w.iter().zip(a) {
        let scale = half(x.d) * half(y.d);
        mins += half(x.m) * half(y.s);
        // SAFETY: the blocks' arrays are in bounds.
        let (qx, qy) = unsafe { (nibbles(&x.qs), load32(&y.qs)) };
        let sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), qx, qy);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(sums), acc);
    }
    hsum(acc) + mins
}

/// # Safety
/// The CPU has AVX-512 VNNI with VL, AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn dot_q8_0_q8_0_vnni(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let scale = half(x.d) * half(y.d);
        // SAFETY: the blocks' arrays are in bounds.
        let (qx, qy) = unsafe { (load32(&x.qs), load32(&y.qs)) };
        let sums = _mm256_dpbusd_epi32(
            _mm256_setzero_si256(),
            _mm256_sign_epi8(qx, qx),
            _mm256_sign_epi8(qy, qx),
        );
        acc = _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(sums), acc);
    }
    hsum(acc)
}

/// Four tokens against one Q4_1 row: the row's blocks are unpacked once for all four
/// (the prompt's batched path).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4_q4_1_q8_1_avx2(w: &[BlockQ4_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = [0f32; 4];
    for (b, x) in w.iter().enumerate() {
        let (dx, mx) = (half(x.d), half(x.m));
        // SAFETY: the block's array is in bounds.
        let qx = unsafe { nibbles(&x.qs) };
        for k in 0..4 {
            let y = &a[k][b];
            // SAFETY: as above.
            let qy = unsafe { load32(&y.qs) };
            let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), ones);
            acc[k] = _mm256_fmadd_ps(
                _mm256_set1_ps(dx * half(y.d)),
                _mm256_cvtepi32_ps(sums),
                acc[k],
            );
            mins[k] += mx * half(y.s);
        }
    }
    std::array::from_fn(|k| hsum(acc[k]) + mins[k])
}

/// # Safety
/// The CPU has AVX-512 VNNI with VL, AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn dot4_q4_1_q8_1_vnni(w: &[BlockQ4_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = [0f32; 4];
    for (b, x) in w.iter().enumerate() {
        let (dx, mx) = (half(x.d), half(x.m));
        // SAFETY: the block's array is in bounds.
        let qx = unsafe { nibbles(&x.qs) };
        for k in 0..4 {
            let y = &a[k][b];
            // SAFETY: as above.
            let qy = unsafe { load32(&y.qs) };
            let sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), qx, qy);
            acc[k] = _mm256_fmadd_ps(
                _mm256_set1_ps(dx * half(y.d)),
                _mm256_cvtepi32_ps(sums),
                acc[k],
            );
            mins[k] += mx * half(y.s);
        }
    }
    std::array::from_fn(|k| hsum(acc[k]) + mins[k])
}

/// 32 floats to 8-bit values with scale amax / 127 (rounding half to even); returns
/// (scale, sum of the values).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block(x: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    assert!(x.len() >= 32);
    // SAFETY: 32 readable floats (asserted).
    let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
    let sign = _mm256_set1_ps(-0.0);
    let mut amax = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, *vi));
    }
    let m4 = _mm_max_ps(_mm256_extractf128_ps(amax, 1), _mm256_castps256_ps128(amax));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let max = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    let d = max / 127.0;
    let id = _mm256_set1_ps(if max != 0.0 { 127.0 / max } else { 0.0 });
    let i: [__m256i; 4] = std::array::from_fn(|k| {
        let r = _mm256_round_ps(
            _mm256_mul_ps(v[k], id),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        _mm256_cvtps_epi32(r)
    });
    let total = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
    let t4 = _mm_add_epi32(
        _mm256_extracti128_si256(total, 1),
        _mm256_castsi256_si128(total),
    );
    let t4 = _mm_add_epi32(t4, _mm_unpackhi_epi64(t4, t4));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(t4, _mm_shuffle_epi32(t4, 1)));
    // Pack to bytes; the packs interleave 128-bit lanes, the permute restores the order.
    let p = _mm256_packs_epi16(
        _mm256_packs_epi32(i[0], i[1]),
        _mm256_packs_epi32(i[2], i[3]),
    );
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: 32 writable bytes.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), p) };
    (d, sum)
}

/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q8_1_avx2(x: &[f32], y: &mut [BlockQ8_1]) {
    for (block, xs) in y.iter_mut().zip(x.chunks_exact(32)) {
        // SAFETY: same features.
        let (d, sum) = unsafe { quantize_block(xs, &mut block.qs) };
        block.d = super::quant::f32_to_f16(d);
        block.s = super::quant::f32_to_f16(d * sum as f32);
    }
}

/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q8_0_avx2(x: &[f32], y: &mut [BlockQ8_0]) {
    for (block, xs) in y.iter_mut().zip(x.chunks_exact(32)) {
        // SAFETY: same features.
        let (d, _) = unsafe { quantize_block(xs, &mut block.qs) };
        block.d = super::quant::f32_to_f16(d);
    }
}

/// e^x for x <= 0 (attention's shifted scores): 2^n times a polynomial for the rest
/// (Cephes' expf coefficients), relative error ~1e-7; x below -87 gives ~e^-87.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp_neg(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(
        _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    ));
    _mm256_mul_ps(y, pow2n)
}

/// `quant::attend_head` for heads a multiple of 8 wide.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attend_head_avx2(
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
    assert!(hd.is_multiple_of(8) && hd <= 512 && out.len() >= hd && scores.len() >= n);
    assert!(n == 0 || ((n - 1) * stride + off + hd <= k.len().min(v.len())));
    let load_half = |p: *const u16| {
        // SAFETY: callers pass pointers to 8 in-bounds f16 values (asserted above).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    };
    // The query rounded to f16, as llama.cpp's f16 matmul does (see quant::attend_head).
    let mut qh = [0f32; 512];
    for i in (0..hd).step_by(8) {
        // SAFETY: i + 8 <= hd <= 512, in bounds of q and qh.
        unsafe {
            let v = _mm256_loadu_ps(q.as_ptr().add(i));
            let r = _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
            _mm256_storeu_ps(qh.as_mut_ptr().add(i), r);
        }
    }
    let mut max = f32::NEG_INFINITY;
    for (j, s) in scores[..n].iter_mut().enumerate() {
        let row = k[j * stride + off..].as_ptr();
        let mut acc = _mm256_setzero_ps();
        for i in (0..hd).step_by(8) {
            // SAFETY: i + 8 <= hd, in bounds of qh and of the key row.
            let qv = unsafe { _mm256_loadu_ps(qh.as_ptr().add(i)) };
            acc = _mm256_fmadd_ps(qv, load_half(row.wrapping_add(i)), acc);
        }
        *s = hsum(acc) * scale;
        max = max.max(*s);
    }
    let vmax = _mm256_set1_ps(max);
    let mut vsum = _mm256_setzero_ps();
    let mut j = 0;
    while j + 8 <= n {
        // SAFETY: j + 8 <= n <= scores.len().
        unsafe {
            let p = scores.as_mut_ptr().add(j);
            let e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(p), vmax));
            _mm256_storeu_ps(p, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        j += 8;
    }
    let mut sum = hsum(vsum);
    while j < n {
        scores[j] = (scores[j] - max).exp();
        sum += scores[j];
        j += 1;
    }
    // The weights, normalised and rounded to f16 (as above).
    let vinv = _mm256_set1_ps(1.0 / sum);
    let mut j = 0;
    while j + 8 <= n {
        // SAFETY: j + 8 <= n <= scores.len().
        unsafe {
            let p = scores.as_mut_ptr().add(j);
            let w = _mm256_mul_ps(_mm256_loadu_ps(p), vinv);
            _mm256_storeu_ps(
                p,
                _mm256_cvtph_ps(_mm256_cvtps_ph(w, _MM_FROUND_TO_NEAREST_INT)),
            );
        }
        j += 8;
    }
    while j < n {
        scores[j] = super::quant::f16_to_f32(super::quant::f32_to_f16(scores[j] / sum));
        j += 1;
    }
    // Four accumulators of 8 cover a 32-wide slice of the head; wider heads take passes.
    for base in (0..hd).step_by(32) {
        let width = (hd - base).min(32);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (j, s) in scores[..n].iter().enumerate() {
            let w = _mm256_set1_ps(*s);
            let row = v[j * stride + off + base..].as_ptr();
            for (c, a) in acc.iter_mut().enumerate().take(width / 8) {
                *a = _mm256_fmadd_ps(w, load_half(row.wrapping_add(8 * c)), *a);
            }
        }
        for (c, a) in acc.iter().enumerate().take(width / 8) {
            // SAFETY: base + 8c + 8 <= hd <= out.len().
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(base + 8 * c), *a) };
        }
    }
}
