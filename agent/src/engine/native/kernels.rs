//! Which kernels this CPU runs, chosen once at run time (the binary stays portable: no
//! `target-cpu=native`), and the loops over weight rows that call them. Setting
//! `GPUCTL_CPU_KERNELS=scalar|avx2|avx512vnni` forces a level (for tests and benchmarks);
//! forcing one the CPU lacks is refused.

use std::ops::Range;

use super::quant::{self, BlockQ4_1, BlockQ8_0, BlockQ8_1};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Scalar, Level::Avx2, Level::Avx512Vnni];

    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512Vnni => "avx512vnni",
        }
    }

    pub fn supported(self) -> bool {
        match self {
            Level::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => {
                Level::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best level this CPU has.
    pub fn detect() -> Level {
        Level::ALL
            .into_iter()
            .rev()
            .find(|l| l.supported())
            .unwrap_or(Level::Scalar)
    }

    /// `GPUCTL_CPU_KERNELS` if set, else the best level.
    pub fn from_env() -> anyhow::Result<Level> {
        let Ok(wanted) = std::env::var("GPUCTL_CPU_KERNELS") else {
            return Ok(Level::detect());
        };
        let level = Level::ALL
            .into_iter()
            .find(|l| l.name() == wanted)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "GPUCTL_CPU_KERNELS={wanted:?} is not a kernel level; use scalar, avx2 or avx512vnni (or unset it)"
                )
            })?;
        if !level.supported() {
            anyhow::bail!(
                "GPUCTL_CPU_KERNELS={wanted}: this CPU lacks the instructions for it (best here: {}); unset it or pick a lower level",
                Level::detect().name()
            );
        }
        Ok(level)
    }
}

/// A destination matrix that several threads fill at disjoint indices.
#[derive(Clone, Copy)]
pub struct Out {
    pub ptr: *mut f32,
    pub len: usize,
    /// Distance between one token's row and the next.
    pub stride: usize,
}

// SAFETY: only ever written at disjoint indices by the threads of one matmul, while the
// buffer it points into is borrowed mutably by the caller that waits for them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    pub fn new(buf: &mut [f32], stride: usize) -> Out {
        Out {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            stride,
        }
    }

    /// `len` values of token `token`'s row from `start`.
    ///
    /// # Safety
    /// No other live reference overlaps this span (threads take disjoint spans).
    #[allow(clippy::mut_from_ref)] // the point of this type: disjoint spans, shared pointer
    pub unsafe fn span(&self, token: usize, start: usize, len: usize) -> &mut [f32] {
        let i = token * self.stride + start;
        assert!(i + len <= self.len, "span out of bounds");
        // SAFETY: in bounds (checked); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i), len) }
    }

    /// # Safety
    /// As `span`.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn row(&self, token: usize, len: usize) -> &mut [f32] {
        // SAFETY: passed on to the caller.
        unsafe { self.span(token, 0, len) }
    }

    #[inline]
    fn set(&self, token: usize, row: usize, v: f32) {
        let i = token * self.stride + row;
        assert!(i < self.len, "matmul output index out of bounds");
        // SAFETY: in bounds (checked); callers write disjoint rows.
        unsafe { *self.ptr.add(i) = v };
    }
}

/// A buffer that several threads fill in disjoint ranges.
pub struct Shards<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: as for `Out`: disjoint ranges only, while the caller holds the buffer.
unsafe impl<T: Send> Send for Shards<T> {}
unsafe impl<T: Send> Sync for Shards<T> {}

impl<T> Shards<T> {
    pub fn new(buf: &mut [T]) -> Shards<T> {
        Shards {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// # Safety
    /// No other live reference overlaps `range`.
    #[allow(clippy::mut_from_ref)] // disjoint ranges of one buffer, by the caller's promise
    pub unsafe fn slice(&self, range: Range<usize>) -> &mut [T] {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "shard out of bounds"
        );
        // SAFETY: in bounds (checked); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }
}

macro_rules! rows_loop {
    ($w:ident, $bpr:ident, $a:ident, $m:ident, $rows:ident, $out:ident, $dot:expr) => {
        for r in $rows {
            let wr = &$w[r * $bpr..(r + 1) * $bpr];
            for t in 0..$m {
                let v = $dot(wr, &$a[t * $bpr..(t + 1) * $bpr]);
                $out.set(t, r, v);
            }
        }
    };
}

/// The Q4_1 loop, four tokens at a time where it can (the row is unpacked once per four).
macro_rules! rows_loop4 {
    ($w:ident, $bpr:ident, $a:ident, $m:ident, $rows:ident, $out:ident, $dot:expr, $dot4:expr) => {
        for r in $rows {
            let wr = &$w[r * $bpr..(r + 1) * $bpr];
            let mut t = 0;
            while t + 4 <= $m {
                let act = |k: usize| &$a[(t + k) * $bpr..(t + k + 1) * $bpr];
                let v = $dot4(wr, [act(0), act(1), act(2), act(3)]);
                for (k, v) in v.into_iter().enumerate() {
                    $out.set(t + k, r, v);
                }
                t += 4;
            }
            while t < $m {
                let v = $dot(wr, &$a[t * $bpr..(t + 1) * $bpr]);
                $out.set(t, r, v);
                t += 1;
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod simd_loops {
    use super::super::x86;
    use super::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_1_avx2(
        w: &[BlockQ4_1],
        bpr: usize,
        a: &[BlockQ8_1],
        m: usize,
        rows: Range<usize>,
        out: Out,
    ) {
        // SAFETY: same features as this function's.
        rows_loop4!(
            w,
            bpr,
            a,
            m,
            rows,
            out,
            |x, y| unsafe { x86::dot_q4_1_q8_1_avx2(x, y) },
            |x, y| unsafe { x86::dot4_q4_1_q8_1_avx2(x, y) }
        );
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0_avx2(
        w: &[BlockQ8_0],
        bpr: usize,
        a: &[BlockQ8_0],
        m: usize,
        rows: Range<usize>,
        out: Out,
    ) {
        // SAFETY: same features as this function's.
        rows_loop!(w, bpr, a, m, rows, out, |x, y| unsafe {
            x86::dot_q8_0_q8_0_avx2(x, y)
        });
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn q4_1_vnni(
        w: &[BlockQ4_1],
        bpr: usize,
        a: &[BlockQ8_1],
        m: usize,
        rows: Range<usize>,
        out: Out,
    ) {
        // SAFETY: same features as this function's.
        rows_loop4!(
            w,
            bpr,
            a,
            m,
            rows,
            out,
            |x, y| unsafe { x86::dot_q4_1_q8_1_vnni(x, y) },
            |x, y| unsafe { x86::dot4_q4_1_q8_1_vnni(x, y) }
        );
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn q8_0_vnni(
        w: &[BlockQ8_0],
        bpr: usize,
        a: &[BlockQ8_0],
        m: usize,
        rows: Range<usize>,
        out: Out,
    ) {
        // SAFETY: same features as this function's.
        rows_loop!(w, bpr, a, m, rows, out, |x, y| unsafe {
            x86::dot_q8_0_q8_0_vnni(x, y)
        });
    }
}

/// The kernels of one level. Built only through `Kernels::new`, which refuses a level the
/// CPU lacks: that check is what makes the `unsafe` calls below sound.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    level: Level,
}

impl Kernels {
    pub fn new(level: Level) -> anyhow::Result<Kernels> {
        if !level.supported() {
            anyhow::bail!("this CPU cannot run the {} kernels", level.name());
        }
        Ok(Kernels { level })
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// out[t][r] = dot(w row r, a row t) for r in `rows`, t < m; rows are `bpr` blocks.
    pub fn q4_1_rows(
        &self,
        w: &[BlockQ4_1],
        bpr: usize,
        a: &[BlockQ8_1],
        m: usize,
        rows: Range<usize>,
        out: Out,
    ) {
        match self.level {
            // SAFETY: `new` checked the CPU has this level.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { simd_loops::q4_1_avx2(w, bpr, a, m, rows, out) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => unsafe { simd_loops::q4_1_vnni(w, bpr, a, m, rows, out) },
            _ => rows_loop!(w, bpr, a, m, rows, out, quant::dot_q4_1_q8_1),
        }
    }

    pub fn q8_0_rows(
        &self,
        w: &[BlockQ8_0],
        bpr: usize,
        a: &[BlockQ8_0],
        m: usize,
        rows: Range<usize>,
        out: Out,
    ) {
        match self.level {
            // SAFETY: `new` checked the CPU has this level.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { simd_loops::q8_0_avx2(w, bpr, a, m, rows, out) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => unsafe { simd_loops::q8_0_vnni(w, bpr, a, m, rows, out) },
            _ => rows_loop!(w, bpr, a, m, rows, out, quant::dot_q8_0_q8_0),
        }
    }

    pub fn quantize_q8_1(&self, x: &[f32], y: &mut [BlockQ8_1]) {
        match self.level {
            // SAFETY: every SIMD level includes AVX2, FMA and F16C, checked by `new`.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::Avx512Vnni => unsafe { super::x86::quantize_row_q8_1_avx2(x, y) },
            _ => quant::quantize_row_q8_1(x, y),
        }
    }

    pub fn quantize_q8_0(&self, x: &[f32], y: &mut [BlockQ8_0]) {
        match self.level {
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::Avx512Vnni => unsafe { super::x86::quantize_row_q8_0_avx2(x, y) },
            _ => quant::quantize_row_q8_0(x, y),
        }
    }

    /// See `quant::attend_head`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend_head(
        &self,
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
        match self.level {
            // SAFETY: every SIMD level includes AVX2, FMA and F16C, checked by `new`.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::Avx512Vnni if q.len().is_multiple_of(8) && q.len() <= 512 => unsafe {
                super::x86::attend_head_avx2(q, k, v, stride, off, n, scale, scores, out)
            },
            _ => quant::attend_head(q, k, v, stride, off, n, scale, scores, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::native::quant::{f32_to_f16, QK};

    /// A small deterministic generator, so a failure reproduces.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn float(&mut self) -> f32 {
            (self.next() % 20001) as f32 / 10000.0 - 1.0
        }
    }

    fn random_q4_1(rng: &mut Lcg, n: usize) -> Vec<BlockQ4_1> {
        (0..n)
            .map(|_| BlockQ4_1 {
                d: f32_to_f16(rng.float() * 0.1),
                m: f32_to_f16(rng.float() * 0.5),
                qs: std::array::from_fn(|_| rng.next() as u8),
            })
            .collect()
    }

    fn random_acts(rng: &mut Lcg, n: usize) -> Vec<f32> {
        (0..n * QK).map(|_| rng.float() * 4.0).collect()
    }

    fn levels() -> Vec<Kernels> {
        Level::ALL
            .into_iter()
            .filter(|l| l.supported())
            .map(|l| Kernels::new(l).expect("supported"))
            .collect()
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn every_level_matches_the_scalar_q4_1_kernel() {
        let mut rng = Lcg(7);
        let (rows, bpr, m) = (37, 18, 5);
        let w = random_q4_1(&mut rng, rows * bpr);
        let x = random_acts(&mut rng, m * bpr);
        let mut a = vec![BlockQ8_1::default(); m * bpr];
        quant::quantize_row_q8_1(&x, &mut a);
        let mut want = vec![0f32; m * rows];
        for r in 0..rows {
            for t in 0..m {
                want[t * rows + r] =
                    quant::dot_q4_1_q8_1(&w[r * bpr..(r + 1) * bpr], &a[t * bpr..(t + 1) * bpr]);
            }
        }
        for k in levels() {
            let mut got = vec![f32::NAN; m * rows];
            k.q4_1_rows(&w, bpr, &a, m, 0..rows, Out::new(&mut got, rows));
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(close(*g, *e), "{:?} [{i}]: {g} != {e}", k.level());
            }
        }
    }

    #[test]
    fn every_level_matches_the_scalar_q8_0_kernel() {
        let mut rng = Lcg(11);
        let (rows, bpr, m) = (23, 48, 3);
        let mut w = vec![BlockQ8_0::default(); rows * bpr];
        quant::quantize_row_q8_0(&random_acts(&mut rng, rows * bpr), &mut w);
        let mut a = vec![BlockQ8_0::default(); m * bpr];
        quant::quantize_row_q8_0(&random_acts(&mut rng, m * bpr), &mut a);
        // An extreme block: every value at -127 and +127 (the saturation edges).
        w[0].qs = [-127; QK];
        a[0].qs = [127; QK];
        for k in levels() {
            let mut got = vec![f32::NAN; m * rows];
            k.q8_0_rows(&w, bpr, &a, m, 3..rows, Out::new(&mut got, rows));
            for r in 3..rows {
                for t in 0..m {
                    let e = quant::dot_q8_0_q8_0(
                        &w[r * bpr..(r + 1) * bpr],
                        &a[t * bpr..(t + 1) * bpr],
                    );
                    let g = got[t * rows + r];
                    assert!(close(g, e), "{:?} row {r} token {t}: {g} != {e}", k.level());
                }
            }
            assert!(got[0].is_nan(), "rows outside the range stay untouched");
        }
    }

    #[test]
    fn every_level_matches_the_scalar_attention() {
        let mut rng = Lcg(3);
        let (stride, hd, n) = (192, 64, 77);
        let k: Vec<u16> = (0..n * stride)
            .map(|_| f32_to_f16(rng.float() * 3.0))
            .collect();
        let v: Vec<u16> = (0..n * stride).map(|_| f32_to_f16(rng.float())).collect();
        let q: Vec<f32> = (0..hd).map(|_| rng.float() * 2.0).collect();
        let mut scores = vec![0f32; n];
        for len in [1, 9, n] {
            let mut want = vec![0f32; hd];
            quant::attend_head(&q, &k, &v, stride, 64, len, 0.125, &mut scores, &mut want);
            for kern in levels() {
                let mut got = vec![f32::NAN; hd];
                kern.attend_head(&q, &k, &v, stride, 64, len, 0.125, &mut scores, &mut got);
                for (g, e) in got.iter().zip(&want) {
                    assert!(
                        (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
                        "{:?} n={len}: {g} != {e}",
                        kern.level()
                    );
                }
            }
        }
    }

    #[test]
    fn quantizing_round_trips_within_a_step() {
        let mut rng = Lcg(5);
        let x = random_acts(&mut rng, 4);
        let mut q = vec![BlockQ8_0::default(); 4];
        quant::quantize_row_q8_0(&x, &mut q);
        let mut back = vec![0f32; x.len()];
        quant::dequantize_row_q8_0(&q, &mut back);
        for (i, (o, b)) in x.iter().zip(&back).enumerate() {
            let step = quant::f16_to_f32(q[i / QK].d);
            assert!((o - b).abs() <= step * 0.51 + 1e-3, "{o} vs {b}");
        }
        let mut q1 = vec![BlockQ8_1::default(); 4];
        quant::quantize_row_q8_1(&x, &mut q1);
        for b in &q1 {
            let sum: i32 = b.qs.iter().map(|v| i32::from(*v)).sum();
            let s = quant::f16_to_f32(b.d) * sum as f32;
            assert!((quant::f16_to_f32(b.s) - s).abs() <= s.abs() * 1e-2 + 1e-2);
        }
    }

    #[test]
    fn every_level_quantizes_like_the_scalar_path() {
        let mut rng = Lcg(13);
        let mut x = random_acts(&mut rng, 6);
        x[..QK].fill(0.0); // an all-zero block: scale 0, values 0
        x[QK] = 1e-3; // a tie-free small value among large ones
        for k in levels() {
            let (mut want, mut got) =
                (vec![BlockQ8_1::default(); 6], vec![BlockQ8_1::default(); 6]);
            quant::quantize_row_q8_1(&x, &mut want);
            k.quantize_q8_1(&x, &mut got);
            assert_eq!(got, want, "{:?}", k.level());
            let (mut want, mut got) =
                (vec![BlockQ8_0::default(); 6], vec![BlockQ8_0::default(); 6]);
            quant::quantize_row_q8_0(&x, &mut want);
            k.quantize_q8_0(&x, &mut got);
            assert_eq!(got, want, "{:?}", k.level());
        }
    }

    #[test]
    fn a_level_the_cpu_lacks_is_refused_by_name() {
        for l in Level::ALL {
            assert_eq!(Kernels::new(l).is_ok(), l.supported());
        }
    }
}
