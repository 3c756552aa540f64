//! Causal attention of one query head over the KV cache, and the SwiGLU activation, with
//! AVX-512 paths sharing one vector exp (the generic build is SSE2 only; the prompt spent
//! ~10% of its time in attention and ~4% in libm's expf for SwiGLU).
//!
//! The cache holds f32 or f16 values ([`KvValue`]); f16 ones are widened as they are loaded
//! (in registers on AVX-512, a row at a time elsewhere), never copied whole, and every path
//! then computes exactly what it computes over an f32 cache holding the widened values.

// The AVX-512 intrinsics are stable since Rust 1.89 (as in quant/x86.rs).
#![allow(clippy::incompatible_msrv)]

use super::fp16::{self, f16};

/// A value type of the KV cache: f32, or f16 widened (exactly) as it is read.
pub trait KvValue: Copy + Send + Sync + 'static {
    /// `src` as f32: itself, or widened into `buf`.
    fn as_f32<'a>(src: &'a [Self], buf: &'a mut Vec<f32>) -> &'a [f32];

    /// The 16 values from `p`, as f32.
    ///
    /// # Safety
    /// AVX-512F present; 16 values readable from `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl KvValue for f32 {
    fn as_f32<'a>(src: &'a [f32], _: &'a mut Vec<f32>) -> &'a [f32] {
        src
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
}

impl KvValue for f16 {
    fn as_f32<'a>(src: &'a [f16], buf: &'a mut Vec<f32>) -> &'a [f32] {
        buf.resize(src.len(), 0.0);
        fp16::widen(src, buf);
        buf
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

/// A sequence's keys and values of one layer, in blocks: position `p` is row `p % block` of
/// `k[p / block]` (and `v[...]`), rows `stride` values apart.
pub struct Paged<'a, T> {
    pub k: Vec<&'a [T]>,
    pub v: Vec<&'a [T]>,
    pub block: usize,
    pub stride: usize,
}

/// A layer's cache of either value type.
pub enum Cache<'a> {
    F32(Paged<'a, f32>),
    F16(Paged<'a, f16>),
}

impl Cache<'_> {
    /// [`head`] over this cache.
    #[allow(clippy::too_many_arguments)]
    pub fn head(
        &self,
        q: &[f32],
        col: usize,
        lo: usize,
        len: usize,
        scale: f32,
        sink: Option<f32>,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        match self {
            Cache::F32(kv) => head(q, kv, col, lo, len, scale, sink, scores, out),
            Cache::F16(kv) => head(q, kv, col, lo, len, scale, sink, scores, out),
        }
    }

    /// [`heads`] over this cache.
    ///
    /// # Safety
    /// As [`heads`].
    pub unsafe fn heads(&self, tile: &[Query], col: usize, scale: f32, scores: &mut Vec<f32>) {
        match self {
            Cache::F32(kv) => heads(tile, kv, col, scale, scores),
            Cache::F16(kv) => heads(tile, kv, col, scale, scores),
        }
    }
}

impl<T: KvValue> Paged<'_, T> {
    /// The runs of positions `lo..lo + len` within one block each, in order: the keys and
    /// values from the first run's row at column `col`, and the run's length.
    fn runs(&self, col: usize, lo: usize, len: usize) -> impl Iterator<Item = (&[T], &[T], usize)> {
        let end = lo + len;
        (lo / self.block..end.div_ceil(self.block)).map(move |bi| {
            let r0 = lo.saturating_sub(bi * self.block);
            let r1 = self.block.min(end - bi * self.block);
            let at = r0 * self.stride + col;
            (&self.k[bi][at..], &self.v[bi][at..], r1 - r0)
        })
    }

    /// Whether positions `lo..lo + len` of `hd` values from `col` are all there (whole
    /// blocks: the vector loops read through raw pointers).
    fn holds(&self, col: usize, hd: usize, lo: usize, len: usize) -> bool {
        let (first, need) = (lo / self.block, (lo + len).div_ceil(self.block));
        let full = self.block * self.stride;
        col + hd <= self.stride
            && self.k.len() >= need
            && self.v.len() >= need
            && self.k[first..need]
                .iter()
                .chain(&self.v[first..need])
                .all(|b| b.len() >= full)
    }
}

/// `out = Σ_j softmax_j(scale·q·k_j)·v_j` over positions `lo..lo + len` of `kv`, each
/// position's key and value the `q.len()` values from column `col` of its row. A `sink`
/// logit joins the softmax (its max and its sum) with no value. `scores`: scratch.
#[allow(clippy::too_many_arguments)]
pub fn head<T: KvValue>(
    q: &[f32],
    kv: &Paged<T>,
    col: usize,
    lo: usize,
    len: usize,
    scale: f32,
    sink: Option<f32>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len();
    assert!(len > 0 && out.len() == hd);
    assert!(
        kv.holds(col, hd, lo, len),
        "KV rows {lo}..{} not held",
        lo + len
    );
    scores.clear();
    scores.resize(len, 0.0);
    #[cfg(target_arch = "x86_64")]
    if hd % 16 == 0 && avx512() {
        // SAFETY: AVX-512F present; sizes checked above.
        return unsafe { head_avx512(q, kv, col, lo, scale, sink, scores, out) };
    }
    head_scalar(q, kv, col, lo, scale, sink, scores, out)
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// The portable version (and the reference of the tests).
#[allow(clippy::too_many_arguments)]
fn head_scalar<T: KvValue>(
    q: &[f32],
    kv: &Paged<T>,
    col: usize,
    lo: usize,
    scale: f32,
    sink: Option<f32>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (hd, stride, len) = (q.len(), kv.stride, scores.len());
    let mut row = Vec::new();
    let mut j = 0;
    for (kc, _, rows) in kv.runs(col, lo, len) {
        for r in 0..rows {
            let k = T::as_f32(&kc[r * stride..r * stride + hd], &mut row);
            scores[j] = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
            j += 1;
        }
    }
    let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let max = sink.map_or(max, |s| max.max(s));
    let mut sum = sink.map_or(0.0, |s| (s - max).exp());
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    let mut j = 0;
    for (_, vc, rows) in kv.runs(col, lo, len) {
        for r in 0..rows {
            let w = scores[j] / sum;
            let v = T::as_f32(&vc[r * stride..r * stride + hd], &mut row);
            for (a, b) in out.iter_mut().zip(v) {
                *a += w * b;
            }
            j += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn head_avx512<T: KvValue>(
    q: &[f32],
    kv: &Paged<T>,
    col: usize,
    lo: usize,
    scale: f32,
    sink: Option<f32>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (hd, stride, len) = (q.len(), kv.stride, scores.len());
    let qp = q.as_ptr();
    let mut max = f32::NEG_INFINITY;
    let mut j = 0;
    for (kc, _, rows) in kv.runs(col, lo, len) {
        let kp = kc.as_ptr();
        for r in 0..rows {
            let s = dot512(qp, kp.add(r * stride), hd) * scale;
            scores[j] = s;
            max = max.max(s);
            j += 1;
        }
    }
    if let Some(s) = sink {
        max = max.max(s);
    }
    let inv = softmax_exp(scores, max, sink);
    // Σ_j w_j·v_j, 16 dimensions at a time, normalized once at the end.
    for d in (0..hd).step_by(16) {
        let mut acc = _mm512_setzero_ps();
        let mut j = 0;
        for (_, vc, rows) in kv.runs(col, lo, len) {
            let vp = vc.as_ptr();
            for r in 0..rows {
                acc = _mm512_fmadd_ps(
                    _mm512_set1_ps(scores[j]),
                    T::load16(vp.add(r * stride + d)),
                    acc,
                );
                j += 1;
            }
        }
        _mm512_storeu_ps(
            out.as_mut_ptr().add(d),
            _mm512_mul_ps(acc, _mm512_set1_ps(inv)),
        );
    }
}

/// Most queries of one [`heads`] call (a tile: rows of a prompt chunk times the query heads
/// that share a KV head).
pub const MAX_TILE: usize = 16;

/// One query of a tile: its vector, its positions `lo..end`, its sink logit and where its
/// output goes (`q.len()` values).
pub struct Query<'a> {
    pub q: &'a [f32],
    pub lo: usize,
    pub end: usize,
    pub sink: Option<f32>,
    pub out: *mut f32,
}

/// [`head`] for each query of `tile` (at most [`MAX_TILE`]), all at column `col` of the same
/// keys and values: each key and value row is read once for all of them (a long prompt's
/// attention was bound by reading them once per query). Each output is bit for bit what
/// [`head`] gives: the same products, maxima and sums in the same order.
///
/// # Safety
/// Every `out` must be valid for `q.len()` writes, and no other thread may touch them.
pub unsafe fn heads<T: KvValue>(
    tile: &[Query],
    kv: &Paged<T>,
    col: usize,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    assert!(tile.len() <= MAX_TILE);
    let Some(hd) = tile.first().map(|t| t.q.len()) else {
        return;
    };
    for t in tile {
        assert!(t.q.len() == hd && t.end > t.lo && kv.holds(col, hd, t.lo, t.end - t.lo));
    }
    #[cfg(target_arch = "x86_64")]
    if hd % 16 == 0 && avx512() {
        return heads_avx512(tile, kv, col, scale, scores);
    }
    for t in tile {
        let out = std::slice::from_raw_parts_mut(t.out, hd);
        head(t.q, kv, col, t.lo, t.end - t.lo, scale, t.sink, scores, out);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn heads_avx512<T: KvValue>(
    tile: &[Query],
    kv: &Paged<T>,
    col: usize,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    use std::arch::x86_64::*;
    let (hd, stride) = (tile[0].q.len(), kv.stride);
    let lo = tile.iter().map(|t| t.lo).min().unwrap_or(0);
    let end = tile.iter().map(|t| t.end).max().unwrap_or(0);
    // Each query's scores at offsets: query i's position j at at[i] + j - lo_i.
    let mut at = [0usize; MAX_TILE];
    let mut total = 0;
    for (i, t) in tile.iter().enumerate() {
        at[i] = total;
        total += t.end - t.lo;
    }
    scores.clear();
    scores.resize(total, 0.0);
    let sp = scores.as_mut_ptr();
    // Each position's key row, then 16 positions at a time for every query of the tile
    // (their keys stay in L1): 16 products reduced together where all 16 are the query's,
    // one by one at its edges.
    let keys: Vec<*const T> = kv
        .runs(col, lo, end - lo)
        .flat_map(|(kc, _, rows)| (0..rows).map(move |r| kc.as_ptr().add(r * stride)))
        .collect();
    for j0 in (lo..end).step_by(16) {
        let j1 = (j0 + 16).min(end);
        for (i, t) in tile.iter().enumerate() {
            let out = sp.add(at[i]);
            if t.lo <= j0 && j0 + 16 <= t.end {
                let k: &[*const T; 16] = keys[j0 - lo..j0 - lo + 16].try_into().expect("16");
                let s = _mm512_mul_ps(dot512x16(t.q.as_ptr(), k, hd), _mm512_set1_ps(scale));
                let mut v = [0f32; 16];
                _mm512_storeu_ps(v.as_mut_ptr(), s);
                for (lane, &x) in v.iter().enumerate() {
                    // Lane 4l + s holds position 4s + l (see `dot512x16`).
                    *out.add(j0 + 4 * (lane % 4) + lane / 4 - t.lo) = x;
                }
            } else {
                for j in j0.max(t.lo)..j1.min(t.end) {
                    *out.add(j - t.lo) = dot512(t.q.as_ptr(), keys[j - lo], hd) * scale;
                }
            }
        }
    }
    // Per query as `head_avx512`: the max in order, exp(s - max) 16 at a time, the sum.
    let mut inv = [0f32; MAX_TILE];
    for (i, t) in tile.iter().enumerate() {
        let sc = &mut scores[at[i]..at[i] + t.end - t.lo];
        let mut max = sc.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        if let Some(s) = t.sink {
            max = max.max(s);
        }
        inv[i] = softmax_exp(sc, max, t.sink);
    }
    // Σ_j w_j·v_j per query, 16 dimensions at a time, groups of up to 8 queries reading
    // each value row once.
    for (g, group) in tile.chunks(8).enumerate() {
        let w: Vec<*const f32> = (0..group.len())
            .map(|i| sp.add(at[8 * g + i]) as *const f32)
            .collect();
        for d in (0..hd).step_by(16) {
            let mut acc = [_mm512_setzero_ps(); 8];
            macro_rules! weigh {
                ($n:literal) => {{
                    let a = weigh_values::<T, $n>(group, &w, kv, col, d);
                    acc[..$n].copy_from_slice(&a);
                }};
            }
            match group.len() {
                1 => weigh!(1),
                2 => weigh!(2),
                3 => weigh!(3),
                4 => weigh!(4),
                5 => weigh!(5),
                6 => weigh!(6),
                7 => weigh!(7),
                _ => weigh!(8),
            }
            for (i, t) in group.iter().enumerate() {
                let scale = _mm512_set1_ps(inv[8 * g + i]);
                _mm512_storeu_ps(t.out.add(d), _mm512_mul_ps(acc[i], scale));
            }
        }
    }
}

/// `Σ_j w_ij·v_j` over each query's positions, 16 dimensions from `d`, for the `N` queries of
/// `tile` (`w[i]`: query i's weights from its `lo`). Each query's terms are added in the
/// order of j, one fused multiply-add each, as `head_avx512` adds them; in the positions all
/// queries share, each value row is loaded once and the N accumulators stay in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weigh_values<T: KvValue, const N: usize>(
    tile: &[Query],
    w: &[*const f32],
    kv: &Paged<T>,
    col: usize,
    d: usize,
) -> [std::arch::x86_64::__m512; N] {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); N];
    let row = |j: usize| {
        kv.v[j / kv.block]
            .as_ptr()
            .add((j % kv.block) * kv.stride + col + d)
    };
    // Positions before, in and after the range all queries share.
    let c0 = tile.iter().map(|t| t.lo).max().unwrap_or(0);
    let c1 = tile.iter().map(|t| t.end).min().unwrap_or(0).max(c0);
    for i in 0..N {
        let t = &tile[i];
        for j in t.lo..t.end.min(c0) {
            let x = _mm512_set1_ps(*w[i].add(j - t.lo));
            acc[i] = _mm512_fmadd_ps(x, T::load16(row(j)), acc[i]);
        }
    }
    if c1 > c0 {
        let mut j = c0;
        for (_, vc, rows) in kv.runs(col, c0, c1 - c0) {
            let vp = vc.as_ptr().add(d);
            for r in 0..rows {
                let v = T::load16(vp.add(r * kv.stride));
                for i in 0..N {
                    let x = _mm512_set1_ps(*w[i].add(j - tile[i].lo));
                    acc[i] = _mm512_fmadd_ps(x, v, acc[i]);
                }
                j += 1;
            }
        }
    }
    for i in 0..N {
        let t = &tile[i];
        for j in t.lo.max(c1)..t.end {
            let x = _mm512_set1_ps(*w[i].add(j - t.lo));
            acc[i] = _mm512_fmadd_ps(x, T::load16(row(j)), acc[i]);
        }
    }
    acc
}

/// `q · k` over `hd` values (a multiple of 16): one fused multiply-add chain over 16 lanes,
/// then their sum (every attention path computes its scores this way: tiles equal heads).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn dot512<T: KvValue>(q: *const f32, k: *const T, hd: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = _mm512_setzero_ps();
    for d in (0..hd).step_by(16) {
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(d)), T::load16(k.add(d)), acc);
    }
    _mm512_reduce_add_ps(acc)
}

/// [`dot512`] of `q` with 16 keys at once: each key's 16-lane chain as there, then the 16
/// sums reduced together with the same pairings `_mm512_reduce_add_ps` makes for one
/// (halves of 256, then of 128 bits, then lanes 0+2 and 1+3, then 0+1), so each result is
/// bit for bit `dot512`'s. Lane `4l + s` holds key `4s + l`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot512x16<T: KvValue>(
    q: *const f32,
    k: &[*const T; 16],
    hd: usize,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 16];
    for d in (0..hd).step_by(16) {
        let qd = _mm512_loadu_ps(q.add(d));
        for (a, &kp) in acc.iter_mut().zip(k) {
            *a = _mm512_fmadd_ps(qd, T::load16(kp.add(d)), *a);
        }
    }
    // b = low 256 + high 256 bits: keys 2m and 2m+1 in one vector's halves.
    let b: [__m512; 8] = std::array::from_fn(|m| {
        let (x, y) = (acc[2 * m], acc[2 * m + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y),
        )
    });
    // c = low 128 + high 128 bits of each half: keys 4n..4n+4 in one vector's quarters.
    let c: [__m512; 4] = std::array::from_fn(|n| {
        let (x, y) = (b[2 * n], b[2 * n + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
        )
    });
    // d = lanes 0+2 and 1+3 of each quarter: quarter l holds keys 8p+l and 8p+4+l.
    let d: [__m512; 2] = std::array::from_fn(|p| {
        let (x, y) = (c[2 * p], c[2 * p + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(x, y),
            _mm512_shuffle_ps::<0b11_10_11_10>(x, y),
        )
    });
    // lanes 0+1: quarter l holds keys l, 4+l, 8+l, 12+l.
    _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(d[0], d[1]),
        _mm512_shuffle_ps::<0b11_01_11_01>(d[0], d[1]),
    )
}

/// `s = exp(s - max)` in place, 16 at a time (the tail through a mask); returns
/// `1 / (Σ s + exp(sink - max))`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_exp(scores: &mut [f32], max: f32, sink: Option<f32>) -> f32 {
    use std::arch::x86_64::*;
    let len = scores.len();
    let mut sumv = _mm512_setzero_ps();
    let mv = _mm512_set1_ps(max);
    for j in (0..len).step_by(16) {
        let m: __mmask16 = if len - j >= 16 {
            0xFFFF
        } else {
            (1u16 << (len - j)) - 1
        };
        let p = scores.as_mut_ptr().add(j);
        let x = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, p), mv);
        let e = _mm512_maskz_mov_ps(m, exp512(x));
        _mm512_mask_storeu_ps(p, m, e);
        sumv = _mm512_add_ps(sumv, e);
    }
    let sink_term = sink.map_or(0.0, |s| (s - max).exp());
    1.0 / (_mm512_reduce_add_ps(sumv) + sink_term)
}

/// `out = act(g, u)`.
pub fn glu(act: super::Activation, g: &[f32], u: &[f32], out: &mut [f32]) {
    match act {
        super::Activation::Silu => silu_mul(g, u, out),
        super::Activation::GeluTanh => gelu_tanh_mul(g, u, out),
        super::Activation::ClampedSwiglu { alpha, limit } => {
            clamped_swiglu(g, u, alpha, limit, out)
        }
    }
}

/// GPT-OSS's expert activation, as its reference computes it: `g = min(gate, limit)`,
/// `u = clamp(up, -limit, limit)`, `out = g * sigmoid(alpha * g) * (u + 1)`.
pub fn clamped_swiglu(g: &[f32], u: &[f32], alpha: f32, limit: f32, out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(g).zip(u) {
        let x = x.min(limit);
        let y = y.max(-limit).min(limit); // (f32::clamp panics on a NaN limit)
        *o = x / (1.0 + (-alpha * x).exp()) * (y + 1.0);
    }
}

/// `out = gelu_tanh(g) * u`: `0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))`, the
/// approximation Gemma's GeGLU uses.
pub fn gelu_tanh_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    for ((o, &x), &y) in out.iter_mut().zip(g).zip(u) {
        *o = 0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh()) * y;
    }
}

/// `out[i] = silu(g[i]) · u[i] = g / (1 + e^-g) · u` for `out.len()` values.
pub fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    let n = out.len();
    assert!(g.len() >= n && u.len() >= n);
    #[cfg(target_arch = "x86_64")]
    let done = if avx512() {
        // SAFETY: AVX-512F present; lengths checked above.
        unsafe { silu_mul_avx512(g, u, out) };
        n - n % 16
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for i in done..n {
        out[i] = g[i] / (1.0 + (-g[i]).exp()) * u[i];
    }
}

/// The whole 16-value groups of [`silu_mul`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(g: &[f32], u: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let one = _mm512_set1_ps(1.0);
    for c in 0..out.len() / 16 {
        let gv = _mm512_loadu_ps(g.as_ptr().add(16 * c));
        let uv = _mm512_loadu_ps(u.as_ptr().add(16 * c));
        let e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        let s = _mm512_div_ps(gv, _mm512_add_ps(one, e));
        _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), _mm512_mul_ps(s, uv));
    }
}

/// e^x (softmax arguments x <= 0, SwiGLU's -g of either sign): x = n·ln2 + r with |r| <=
/// ln2/2, e^r by its Taylor series to r^7 (truncation < 0.347^8/8! = 5e-9, below f32
/// rounding), times 2^n (inf past f32's range, 0 below e^-104).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn exp512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0)); // e^-104 is 0 in f32
    let n = _mm512_roundscale_ps(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        0,
    );
    // ln2 in two parts so n·ln2_hi is exact for |n| < 2^9.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let c = [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let mut p = _mm512_set1_ps(c[0]);
    for &ci in &c[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(ci));
    }
    _mm512_scalef_ps(p, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(s: &mut u64) -> f32 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 40) as f32 / (1u64 << 24) as f32
    }

    /// `rows` cut into blocks of `block` rows of `stride` values (the last one padded).
    fn blocks_of<T: Copy + Default>(rows: &[T], block: usize, stride: usize) -> Vec<Vec<T>> {
        rows.chunks(block * stride)
            .map(|b| {
                let mut b = b.to_vec();
                b.resize(block * stride, T::default());
                b
            })
            .collect()
    }

    fn slices<T>(blocks: &[Vec<T>]) -> Vec<&[T]> {
        blocks.iter().map(|b| &b[..]).collect()
    }

    /// Keys in -3..3 and values in -1..1, `n` of each.
    fn random_kv(s: &mut u64, n: usize) -> (Vec<f32>, Vec<f32>) {
        let k = (0..n).map(|_| rng(s) * 6.0 - 3.0).collect();
        let v = (0..n).map(|_| rng(s) * 2.0 - 1.0).collect();
        (k, v)
    }

    /// Blocks of `block` rows (one block holding them all, or several).
    fn whole<'a, T>(k: &[&'a [T]], v: &[&'a [T]], stride: usize, len: usize) -> Paged<'a, T> {
        Paged {
            k: k.to_vec(),
            v: v.to_vec(),
            block: len,
            stride,
        }
    }

    /// Each value rounded to f16, and that f16 widened back.
    fn halves(x: &[f32]) -> (Vec<f16>, Vec<f32>) {
        let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let w = h.iter().map(|v| v.to_f32()).collect();
        (h, w)
    }

    /// An f16 cache gives, bit for bit, what an f32 cache holding its values widened gives:
    /// single heads (the AVX-512 and the portable path), tiles, blocks of 16, sinks.
    #[test]
    fn f16_cache_equals_f32_of_its_values() {
        let mut s = 13u64;
        let (hd, total, block) = (64, 70, 16);
        let stride = 2 * hd;
        let (kc, vc) = random_kv(&mut s, total * stride);
        let ((kh, kw), (vh, vw)) = (halves(&kc), halves(&vc));
        let (kbh, vbh) = (blocks_of(&kh, block, stride), blocks_of(&vh, block, stride));
        let (kbw, vbw) = (blocks_of(&kw, block, stride), blocks_of(&vw, block, stride));
        let f16kv = whole(&slices(&kbh), &slices(&vbh), stride, block);
        let (ks, vs) = (slices(&kbw), slices(&vbw));
        let f32kv = whole(&ks, &vs, stride, block);
        let qs: Vec<Vec<f32>> = (0..MAX_TILE)
            .map(|_| (0..hd).map(|_| rng(&mut s) * 2.0 - 1.0).collect())
            .collect();
        for (lo, len, sink) in [
            (0, 1, None),
            (0, 16, Some(0.3)),
            (5, 40, None),
            (3, 67, None),
        ] {
            for col in [0, hd] {
                let (mut a, mut b) = (vec![0f32; hd], vec![0f32; hd]);
                head(
                    &qs[0],
                    &f16kv,
                    col,
                    lo,
                    len,
                    0.125,
                    sink,
                    &mut Vec::new(),
                    &mut a,
                );
                head(
                    &qs[0],
                    &f32kv,
                    col,
                    lo,
                    len,
                    0.125,
                    sink,
                    &mut Vec::new(),
                    &mut b,
                );
                assert_eq!(a, b, "lo {lo} len {len} col {col}");
                let mut sc = vec![0f32; len];
                head_scalar(&qs[0], &f16kv, col, lo, 0.125, sink, &mut sc, &mut a);
                head_scalar(&qs[0], &f32kv, col, lo, 0.125, sink, &mut sc, &mut b);
                assert_eq!(a, b, "scalar: lo {lo} len {len} col {col}");
            }
        }
        let ranges: Vec<(usize, usize)> = (0..MAX_TILE).map(|i| (i % 3, 50 + i)).collect();
        let mut outs = [
            vec![vec![0f32; hd]; MAX_TILE],
            vec![vec![0f32; hd]; MAX_TILE],
        ];
        for (which, out) in outs.iter_mut().enumerate() {
            let tile: Vec<Query> = out
                .iter_mut()
                .enumerate()
                .map(|(i, o)| Query {
                    q: &qs[i],
                    lo: ranges[i].0,
                    end: ranges[i].1,
                    sink: None,
                    out: o.as_mut_ptr(),
                })
                .collect();
            // SAFETY: each output is its own vector.
            unsafe {
                match which {
                    0 => heads(&tile, &f16kv, hd, 0.125, &mut Vec::new()),
                    _ => heads(&tile, &f32kv, hd, 0.125, &mut Vec::new()),
                }
            }
        }
        assert_eq!(outs[0], outs[1], "tiles");
    }

    /// The same rows in blocks of 16 (copied, from any start) give the same output bit for
    /// bit as in one block: the same products and sums in the same order.
    #[test]
    fn blocks_change_no_bit() {
        let mut s = 3u64;
        let (heads, hd, total) = (2, 64, 75);
        let stride = heads * hd;
        let (kc, vc) = random_kv(&mut s, total * stride);
        let q: Vec<f32> = (0..hd).map(|_| rng(&mut s) * 2.0 - 1.0).collect();
        let block = 16;
        let (kb, vb) = (blocks_of(&kc, block, stride), blocks_of(&vc, block, stride));
        let (ks, vs) = (slices(&kb), slices(&vb));
        let paged = whole(&ks, &vs, stride, block);
        let (k1, v1) = ([&kc[..]], [&vc[..]]);
        let one = whole(&k1, &v1, stride, total);
        for (lo, len) in [(0, 1), (0, 16), (0, 17), (5, 40), (16, 59), (31, 44)] {
            for col in [0, hd] {
                let (mut a, mut b) = (vec![0f32; hd], vec![0f32; hd]);
                head(
                    &q,
                    &paged,
                    col,
                    lo,
                    len,
                    0.125,
                    None,
                    &mut Vec::new(),
                    &mut a,
                );
                head(&q, &one, col, lo, len, 0.125, None, &mut Vec::new(), &mut b);
                assert_eq!(a, b, "lo {lo} len {len} col {col}");
                let mut sc = vec![0f32; len];
                head_scalar(&q, &paged, col, lo, 0.125, None, &mut sc, &mut a);
                let mut sc = vec![0f32; len];
                head_scalar(&q, &one, col, lo, 0.125, None, &mut sc, &mut b);
                assert_eq!(a, b, "scalar: lo {lo} len {len} col {col}");
            }
        }
    }

    /// A tile of queries (rows of a prompt, heads of one KV head; causal ranges, windows,
    /// sinks) gives each query what `head` gives it alone, bit for bit.
    #[test]
    fn tiles_equal_heads_alone() {
        let mut s = 9u64;
        // Head sizes of 4, 5, 6 and 8 slices of 16 and tiles of 1-16 queries: every way the
        // value pass splits a head's slices and a tile's queries.
        let cases = [
            (12, None, None),
            (16, Some(20), None),
            (5, None, Some(0.4)),
            (1, None, None),
            (2, Some(7), None),
            (3, None, None),
        ];
        for hd in [64, 80, 96, 128] {
            tiles_equal_heads_case(&mut s, hd, &cases);
        }
    }

    fn tiles_equal_heads_case(
        s: &mut u64,
        hd: usize,
        cases: &[(usize, Option<usize>, Option<f32>)],
    ) {
        let (total, block) = (90, 16);
        let stride = 2 * hd;
        let (kc, vc) = random_kv(s, total * stride);
        let (kb, vb) = (blocks_of(&kc, block, stride), blocks_of(&vc, block, stride));
        let (ks, vs) = (slices(&kb), slices(&vb));
        let kv = whole(&ks, &vs, stride, block);
        let qs: Vec<Vec<f32>> = (0..MAX_TILE)
            .map(|_| (0..hd).map(|_| rng(s) * 2.0 - 1.0).collect())
            .collect();
        for &(n, window, sink) in cases {
            let mut got = vec![vec![0f32; hd]; n];
            let ranges: Vec<(usize, usize)> = (0..n)
                .map(|i| {
                    let end = 60 + i / 3 * 7 + i % 3;
                    (window.map_or(0, |w: usize| end.saturating_sub(w)), end)
                })
                .collect();
            let tile: Vec<Query> = got
                .iter_mut()
                .enumerate()
                .map(|(i, o)| Query {
                    q: &qs[i],
                    lo: ranges[i].0,
                    end: ranges[i].1,
                    sink,
                    out: o.as_mut_ptr(),
                })
                .collect();
            // SAFETY: each output is its own vector.
            unsafe { heads(&tile, &kv, hd, 0.125, &mut Vec::new()) };
            for (i, g) in got.iter().enumerate() {
                let (lo, end) = ranges[i];
                let mut want = vec![0f32; hd];
                head(
                    &qs[i],
                    &kv,
                    hd,
                    lo,
                    end - lo,
                    0.125,
                    sink,
                    &mut Vec::new(),
                    &mut want,
                );
                assert_eq!(*g, want, "query {i} of {n}, head size {hd}");
            }
        }
    }

    /// The vector exp against f64 over the softmax range: relative error within 4e-7
    /// (the series is exact to 5e-9; r's reduction and ~8 fused steps round at 6e-8 each).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn exp512_is_accurate() {
        if !avx512() {
            return;
        }
        use std::arch::x86_64::*;
        let mut worst = 0f64;
        for i in 0..360_000 {
            let x = 80.0 - (i as f32) * 0.0005; // 80 .. -100
            let mut o = [0f32; 16];
            // SAFETY: AVX-512F checked above.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), exp512(_mm512_set1_ps(x))) };
            let want = (x as f64).exp();
            if want > 1e-30 {
                worst = worst.max(((o[0] as f64 - want) / want).abs());
            }
        }
        eprintln!("exp512: worst relative error {worst:.2e}");
        assert!(worst < 4e-7, "worst relative error {worst}");
    }

    /// SwiGLU's activation against f64 (the vector exp is within 4e-7, the division and
    /// products add a few roundings): 1e-6 relative, over gates -40..40 and odd lengths.
    #[test]
    fn silu_mul_is_accurate() {
        let mut s = 11u64;
        for n in [1, 15, 16, 17, 100, 4864] {
            let g: Vec<f32> = (0..n).map(|_| rng(&mut s) * 80.0 - 40.0).collect();
            let u: Vec<f32> = (0..n).map(|_| rng(&mut s) * 4.0 - 2.0).collect();
            let mut o = vec![0f32; n];
            silu_mul(&g, &u, &mut o);
            for i in 0..n {
                let (gd, ud) = (g[i] as f64, u[i] as f64);
                let want = gd / (1.0 + (-gd).exp()) * ud;
                let err = (o[i] as f64 - want).abs();
                assert!(
                    err <= 1e-6 * want.abs().max(1e-30),
                    "n {n} i {i}: {} vs {want}",
                    o[i]
                );
            }
        }
    }

    /// A sink against f64: `out = Σ_j e^(s_j) v_j / (Σ_j e^(s_j) + e^sink)`, with sinks below,
    /// among and above the scores (the last makes the sink take most of the weight, so the
    /// output shrinks toward 0). Within a few f32 roundings of the values' size (|v| <= 1).
    #[test]
    fn sink_joins_the_softmax() {
        let mut s = 5u64;
        let (hd, len, stride, scale) = (64, 23, 64, 0.125f32);
        let q: Vec<f32> = (0..hd).map(|_| rng(&mut s) * 2.0 - 1.0).collect();
        let kc: Vec<f32> = (0..len * stride).map(|_| rng(&mut s) * 6.0 - 3.0).collect();
        let vc: Vec<f32> = (0..len * stride).map(|_| rng(&mut s) * 2.0 - 1.0).collect();
        let scores: Vec<f64> = (0..len)
            .map(|j| {
                let k = &kc[j * stride..j * stride + hd];
                q.iter()
                    .zip(k)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        for sink in [-20.0f32, 0.3, 8.0] {
            let den: f64 = scores.iter().map(|x| x.exp()).sum::<f64>() + (sink as f64).exp();
            let mut got = vec![0f32; hd];
            let (ks, vs) = ([&kc[..]], [&vc[..]]);
            let kv = whole(&ks, &vs, stride, len);
            head(
                &q,
                &kv,
                0,
                0,
                len,
                scale,
                Some(sink),
                &mut Vec::new(),
                &mut got,
            );
            for (d, &g) in got.iter().enumerate() {
                let want: f64 = (0..len)
                    .map(|j| scores[j].exp() / den * vc[j * stride + d] as f64)
                    .sum();
                assert!(
                    (g as f64 - want).abs() <= 2e-6,
                    "sink {sink} dim {d}: {g} vs {want}"
                );
            }
        }
    }

    /// GPT-OSS's clamped SwiGLU against f64, inside and past the limit on both branches.
    #[test]
    fn clamped_swiglu_is_accurate() {
        let (alpha, limit) = (1.702f32, 7.0f32);
        let g = [-9.0f32, -1.5, 0.0, 0.8, 6.9, 7.0, 12.0];
        let u = [11.0f32, -8.0, 3.0, -0.4, 0.0, -7.5, 7.2];
        let mut o = [0f32; 7];
        clamped_swiglu(&g, &u, alpha, limit, &mut o);
        for i in 0..g.len() {
            let x = (g[i] as f64).min(7.0);
            let y = (u[i] as f64).clamp(-7.0, 7.0);
            let want = x / (1.0 + (-1.702f32 as f64 * x).exp()) * (y + 1.0);
            assert!(
                (o[i] as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{i}: {} vs {want}",
                o[i]
            );
        }
    }

    /// The AVX-512 head against the portable one: the same sums in another order, so
    /// within a few f32 roundings of the output's magnitude (values of |v| <= 1).
    #[test]
    fn avx512_head_matches_scalar() {
        let mut s = 7u64;
        for (hd, len) in [(64, 1), (64, 17), (128, 40), (16, 3)] {
            let stride = hd * 2 + 16;
            let q: Vec<f32> = (0..hd).map(|_| rng(&mut s) * 2.0 - 1.0).collect();
            let kc: Vec<f32> = (0..len * stride).map(|_| rng(&mut s) * 6.0 - 3.0).collect();
            let vc: Vec<f32> = (0..len * stride).map(|_| rng(&mut s) * 2.0 - 1.0).collect();
            let (mut a, mut b) = (vec![0f32; hd], vec![0f32; hd]);
            let mut sc = Vec::new();
            let (ks, vs) = ([&kc[..]], [&vc[..]]);
            let kv = whole(&ks, &vs, stride, len);
            for sink in [None, Some(-3.0), Some(0.7), Some(40.0)] {
                head(&q, &kv, 0, 0, len, 0.125, sink, &mut sc, &mut a);
                let mut sc2 = vec![0f32; len];
                head_scalar(&q, &kv, 0, 0, 0.125, sink, &mut sc2, &mut b);
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= 2e-6, "hd {hd} len {len}: {x} vs {y}");
                }
            }
        }
    }
}
