//! CPU dot products of quantized weight rows with 8-bit quantized activations, with the SIMD
//! path chosen once at run time (or forced with `LLORCH_SIMD=scalar|avx2|avx512|neon`).

use super::{check_sizes, scalar, GgmlType, QuantError};
use std::sync::OnceLock;

/// 32 activations quantized to 8 bits: value_i ≈ d*qs_i, and s = d*Σqs_i (lets offset and
/// min terms of the weight formats be applied once per block instead of per value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

/// Quantizes `x` to 8 bits per value, one block per 32 values: d = max|x|/127, qs = round(x/d),
/// so |x_i - d*qs_i| <= d/2. Callers pass `x.len() == 32*out.len()`; blocks of `out` without
/// 32 input values are zeroed (no panic).
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    let mut chunks = x.chunks_exact(32);
    for o in out.iter_mut() {
        let Some(xb) = chunks.next() else {
            *o = BlockQ8::default();
            continue;
        };
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in o.qs.iter_mut().zip(xb) {
            // |v*id| <= 127 up to one rounding, so the clamp only guards NaN/rounding.
            *q = (v * id).round().clamp(-127.0, 127.0) as i8;
            sum += *q as i32;
        }
        o.d = d;
        o.s = d * sum as f32;
    }
}

/// An instruction-set level for the dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// Portable Rust; the reference the others are tested against.
    Scalar,
    /// AVX2 + FMA + F16C (pmaddubsw for the byte products).
    Avx2,
    /// AVX2 with AVX-VNNI (vpdpbusd on 256-bit registers).
    Avx2Vnni,
    /// AVX-512 F/BW/VL + VNNI.
    Avx512,
    /// AArch64 Advanced SIMD (smull for the byte products); bit-equal to `Scalar`.
    Neon,
    /// AArch64 Advanced SIMD with the dotprod extension (sdot); bit-equal to `Scalar`.
    NeonDotprod,
}

impl SimdLevel {
    pub const ALL: [SimdLevel; 6] = [
        SimdLevel::Scalar,
        SimdLevel::Avx2,
        SimdLevel::Avx2Vnni,
        SimdLevel::Avx512,
        SimdLevel::Neon,
        SimdLevel::NeonDotprod,
    ];

    /// Whether this CPU can run the level.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            match self {
                SimdLevel::Scalar => true,
                SimdLevel::Avx2 => avx2,
                SimdLevel::Avx2Vnni => avx2 && is_x86_feature_detected!("avxvnni"),
                SimdLevel::Avx512 => {
                    avx2 && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512vnni")
                }
                SimdLevel::Neon | SimdLevel::NeonDotprod => false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            match self {
                SimdLevel::Scalar => true,
                SimdLevel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
                SimdLevel::NeonDotprod => {
                    std::arch::is_aarch64_feature_detected!("neon")
                        && std::arch::is_aarch64_feature_detected!("dotprod")
                }
                _ => false,
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            self == SimdLevel::Scalar
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx2Vnni => "avx2-vnni",
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Neon => "neon",
            SimdLevel::NeonDotprod => "neon-dotprod",
        }
    }
}

/// The level in use: the best available, or `LLORCH_SIMD` (scalar|avx2|avx2-novnni|neon)
/// capped at what the CPU has (`neon`: the plain path even where dotprod exists). Decided once.
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = |cands: &[SimdLevel]| {
            cands
                .iter()
                .copied()
                .find(|l| l.available())
                .unwrap_or(SimdLevel::Scalar)
        };
        use SimdLevel::*;
        match std::env::var("LLORCH_SIMD").ok().as_deref() {
            Some("scalar") => Scalar,
            Some("avx2") => best(&[Avx2Vnni, Avx2]),
            Some("avx2-novnni") => best(&[Avx2]),
            Some("neon") => best(&[Neon]),
            _ => best(&[Avx512, Avx2Vnni, Avx2, NeonDotprod, Neon]),
        }
    })
}

/// A kernel: `out[c]` = row · column c for `out.len()` columns of `nb` blocks each.
type DotFn = unsafe fn(&[u8], &[BlockQ8], usize, &mut [f32]);

/// Per-type kernels of one level (None: use the scalar path).
fn table(level: SimdLevel) -> &'static [Option<DotFn>; 40] {
    static TABLES: OnceLock<[[Option<DotFn>; 40]; SimdLevel::ALL.len()]> = OnceLock::new();
    let t = TABLES.get_or_init(|| {
        let mut t = [[None; 40]; SimdLevel::ALL.len()];
        for (i, l) in SimdLevel::ALL.into_iter().enumerate() {
            if l.available() {
                #[cfg(target_arch = "x86_64")]
                super::x86::fill(l, &mut t[i]);
                #[cfg(target_arch = "aarch64")]
                super::aarch64::fill(l, &mut t[i]);
            }
        }
        t
    });
    &t[level as usize]
}

/// Whether `level` has a kernel of its own for `ty` (otherwise [`vec_dot_at`] runs the
/// scalar path on it).
pub fn has_kernel(level: SimdLevel, ty: GgmlType) -> bool {
    table(level)[ty as usize].is_some()
}

/// Whether `vec_dot`/`vec_dot_multi` accept this weight type.
pub fn supported_for_dot(ty: GgmlType) -> bool {
    scalar::supported(ty)
}

/// Checks a row of `ty` with `row_bytes` bytes against `n_blocks` activation blocks.
pub fn check_dot(ty: GgmlType, row_bytes: usize, n_blocks: usize) -> Result<(), QuantError> {
    if !supported_for_dot(ty) {
        return Err(QuantError::Unsupported {
            ty: ty.name(),
            op: "vec_dot",
        });
    }
    check_sizes(ty, n_blocks.saturating_mul(32), row_bytes, "weight row").map(|_| ())
}

/// One weight row · one quantized activation vector (`acts.len()*32` values).
/// Returns NaN if the type is unsupported or the sizes disagree (see [`check_dot`]).
pub fn vec_dot(ty: GgmlType, row: &[u8], acts: &[BlockQ8]) -> f32 {
    vec_dot_at(simd_level(), ty, row, acts)
}

/// [`vec_dot`] on a given level (an unavailable level runs the scalar path).
pub fn vec_dot_at(level: SimdLevel, ty: GgmlType, row: &[u8], acts: &[BlockQ8]) -> f32 {
    let mut out = [0.0f32];
    if vec_dot_multi_at(level, ty, row, acts, 1, &mut out).is_err() {
        return f32::NAN;
    }
    out[0]
}

/// One weight row · `n_cols` activation vectors stored back to back in `acts` (each
/// `acts.len()/n_cols` blocks), into `out[..n_cols]`. Each weight block is decoded once and
/// reused across the columns. On bad sizes or an unsupported type, `out` is filled with NaN.
pub fn vec_dot_multi(ty: GgmlType, row: &[u8], acts: &[BlockQ8], n_cols: usize, out: &mut [f32]) {
    if vec_dot_multi_at(simd_level(), ty, row, acts, n_cols, out).is_err() {
        out.fill(f32::NAN);
    }
}

/// [`vec_dot_multi`] on a given level, reporting bad sizes as an error.
pub fn vec_dot_multi_at(
    level: SimdLevel,
    ty: GgmlType,
    row: &[u8],
    acts: &[BlockQ8],
    n_cols: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    if n_cols == 0 || acts.len() % n_cols != 0 || out.len() != n_cols {
        return Err(QuantError::SizeMismatch {
            ty: ty.name(),
            what: "activation columns",
            got: acts.len(),
            want: n_cols,
            blocks: out.len(),
        });
    }
    let nb = acts.len() / n_cols;
    check_dot(ty, row.len(), nb)?;
    // Tables of unavailable levels are empty, so they fall back to scalar.
    match table(level)[ty as usize] {
        // SAFETY: the table holds kernels only for levels whose CPU features are present,
        // and all sizes were checked above.
        Some(f) => unsafe { f(row, acts, nb, out) },
        None => scalar::dot(ty, row, acts, nb, out),
    }
    Ok(())
}

/// An F32/F16/BF16 row · f32 values, accumulated in f32. NaN on other types or a length
/// mismatch.
pub fn vec_dot_f32(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    vec_dot_f32_at(simd_level(), ty, row, x)
}

/// [`vec_dot_f32`] on a given level (an unavailable level runs the scalar path).
pub fn vec_dot_f32_at(level: SimdLevel, ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    use GgmlType::*;
    if !matches!(ty, F32 | F16 | BF16) || check_sizes(ty, x.len(), row.len(), "row").is_err() {
        return f32::NAN;
    }
    #[cfg(target_arch = "x86_64")]
    if level != SimdLevel::Scalar && level.available() && SimdLevel::Avx2.available() {
        // SAFETY: AVX2/FMA/F16C present; sizes checked.
        return unsafe { super::x86::dot_f32(ty, row, x) };
    }
    #[cfg(target_arch = "aarch64")]
    if level != SimdLevel::Scalar && level.available() {
        // SAFETY: NEON present (every AArch64 level has it); sizes checked.
        return unsafe { super::aarch64::dot_f32(ty, row, x) };
    }
    let _ = level;
    scalar::dot_f32(ty, row, x)
}

/// Activations at 16 bits per value (per-block scale) for the AVX-512 "wide" kernels:
/// `n` columns of `k` values each. Error per value <= max|x_block|/65534, as precise as two
/// 8-bit passes (value + residual), at the cost of one.
#[derive(Default)]
pub struct Acts16 {
    /// The columns' values, 128 a chunk ([`super::x86::wide::PChunk`]).
    #[cfg(target_arch = "x86_64")]
    pchunks: Vec<super::x86::wide::PChunk>,
    /// 64-value chunks per column.
    nch: usize,
    sums: Vec<f32>,
    n: usize,
}

/// Columns up to which a product computes each column with the same arithmetic as alone:
/// column t of such a product equals, bit for bit, the product of column t alone. Batched
/// decoding groups its sequences by this many so that a sequence's output does not depend
/// on what else is in the batch. The wide kernels compute every column alike whatever the
/// count (`usize::MAX`); elsewhere one.
pub const WIDE_INVARIANT_COLS: usize = {
    #[cfg(target_arch = "x86_64")]
    {
        usize::MAX
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        1
    }
};

/// Whether [`wide_matmul`] takes rows of `ty` with `k` values on this CPU (AVX-512 VNNI in
/// use, a supported type, `k` a multiple of 64).
pub fn wide_supported(ty: GgmlType, k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd_level() == SimdLevel::Avx512
            && super::x86::wide::supported(ty)
            && k % 64 == 0
            && k > 0
            && (!matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K) || k % 256 == 0)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ty, k);
        false
    }
}

impl Acts16 {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes room for `n` columns of `k` values (fill them through [`Acts16::parts_mut`]).
    pub fn reset(&mut self, k: usize, n: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use super::x86::wide::PChunk;
            self.pchunks.clear();
            self.pchunks
                .resize(n * (k / 64).div_ceil(2), PChunk::default());
        }
        self.nch = k / 64;
        // Sums per column padded to a multiple of 16 (zeros), for whole-vector loads.
        self.sums.clear();
        self.sums.resize(n * (k / 32).next_multiple_of(16), 0.0);
        self.n = n;
    }

    /// Columns prepared by the last `reset`.
    pub fn n_cols(&self) -> usize {
        self.n
    }

    /// Per column: (its chunk storage, its sums), to fill with [`quantize_column`].
    #[cfg(not(target_arch = "x86_64"))]
    pub fn parts_mut(&mut self) -> impl Iterator<Item = Acts16Col<'_>> {
        let (n, nch) = (self.n.max(1), self.nch);
        let sl = self.sums.len() / n;
        self.sums
            .chunks_mut(sl.max(1))
            .take(n)
            .map(move |sums| Acts16Col {
                sums: &mut sums[..2 * nch],
            })
    }

    /// Per column: (its chunk storage, its sums), to fill with [`quantize_column`].
    #[cfg(target_arch = "x86_64")]
    pub fn parts_mut(&mut self) -> impl Iterator<Item = Acts16Col<'_>> {
        let n = self.n.max(1);
        let nch = self.nch;
        let sl = self.sums.len() / n;
        let pl = self.pchunks.len() / n;
        self.sums
            .chunks_mut(sl.max(1))
            .zip(self.pchunks.chunks_mut(pl.max(1)))
            .take(n)
            .map(move |(sums, pchunks)| Acts16Col {
                pchunks,
                sums: &mut sums[..2 * nch],
            })
    }
}

/// One column of [`Acts16`] being filled.
pub struct Acts16Col<'a> {
    #[cfg(target_arch = "x86_64")]
    pchunks: &'a mut [super::x86::wide::PChunk],
    sums: &'a mut [f32],
}

/// Quantizes one column's values (`x.len()` = the `k` given to `reset`). Callers checked
/// [`wide_supported`] (never true off x86-64, where this panics as on x86-64 without AVX-512).
pub fn quantize_column(x: &[f32], col: Acts16Col<'_>) {
    assert_eq!(x.len(), col.sums.len() * 32, "column length");
    assert!(
        simd_level() == SimdLevel::Avx512,
        "wide kernels need AVX-512"
    );
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(x.len().div_ceil(128), col.pchunks.len(), "column length");
        // SAFETY: AVX-512 level in use (checked above); sizes match.
        unsafe { super::x86::wide::quantize(x, col.pchunks, col.sums) }
    }
}

/// `out[r*n + t]` = weight row r · activation column t, for `out.len()/n` rows of
/// `row_bytes` bytes in `data`. Caller checked [`wide_supported`]. Panics on size mismatch
/// (a programming error, not input data).
pub fn wide_matmul(ty: GgmlType, data: &[u8], row_bytes: usize, acts: &Acts16, out: &mut [f32]) {
    let n = acts.n.max(1);
    let rows = out.len() / n;
    assert_eq!(out.len(), rows * n, "output size");
    // SAFETY: `out` holds rows × n values at r*n + t.
    unsafe { wide_matmul_strided(ty, data, row_bytes, acts, rows, out.as_mut_ptr(), n, 1) }
}

/// [`wide_matmul`] writing row r, column t to `out[r*rs + t*cs]` (e.g. rs = 1, cs = the
/// total row count: token-major output written by several row ranges in parallel).
///
/// # Safety
/// `out` must be valid for writes at every r*rs + t*cs (r < rows, t < columns), and no
/// other thread may access those places meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn wide_matmul_strided(
    ty: GgmlType,
    data: &[u8],
    row_bytes: usize,
    acts: &Acts16,
    rows: usize,
    out: *mut f32,
    rs: usize,
    cs: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let n = acts.n;
        let nch = acts.nch;
        assert!(
            wide_supported(ty, nch * 64),
            "wide kernel for {}",
            ty.name()
        );
        assert_eq!(ty.bytes_for(nch as u64 * 64), Some(row_bytes as u64));
        assert!(n > 0 && data.len() >= rows * row_bytes);
        let o = super::x86::wide::Out { ptr: out, rs, cs };
        let a = super::x86::wide::Acts {
            pchunks: &acts.pchunks,
            sums: &acts.sums,
            nch,
        };
        assert_eq!(a.pchunks.len(), n * nch.div_ceil(2));
        // SAFETY: features and type checked by wide_supported; sizes checked above; the
        // caller vouches for `out`.
        unsafe { super::x86::wide::gemm(ty, data, row_bytes, &a, n, rows, o) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ty, data, row_bytes, acts, rows, out, rs, cs);
        unreachable!("wide_supported is false off x86-64")
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod wide_tests {
    use super::*;

    fn rng(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// Every wide type and tile shape against an f64 dot of the dequantized weights with the
    /// unquantized activations. Bound: each activation is off by at most max|x_block|/65534,
    /// so a row's error is at most Σ_blocks Σ|w|·max|x_b|/65534; plus f32 rounding of the
    /// sums (relative 1e-5 of Σ|w·x| covers ~1000 additions at 2^-24 each).
    #[test]
    fn wide_matches_f64_reference() {
        if !wide_supported(GgmlType::Q8_0, 512) {
            eprintln!("no AVX-512 VNNI: skipped");
            return;
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let rows = 11;
        use GgmlType::*;
        // k = 576: a last half chunk (64 values) in the prompt layout (legacy types only;
        // K-quant rows are whole 256-value super-blocks).
        let cases = [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4, Q4_K, Q5_K, Q6_K]
            .map(|t| (t, 512))
            .into_iter()
            .chain([Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4].map(|t| (t, 576)));
        for (ty, k) in cases {
            assert!(wide_supported(ty, k), "{}", ty.name());
            let rb = ty.bytes_for(k as u64).unwrap() as usize;
            let ts = ty.type_size();
            let mut data: Vec<u8> = (0..rows * rb).map(|_| rng(&mut seed) as u8).collect();
            let fields: &[usize] = match ty {
                Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
                Q6_K => &[208],
                MXFP4 => &[],
                _ => &[0],
            };
            for b in data.chunks_exact_mut(ts) {
                if ty == MXFP4 {
                    b[0] = 110 + (rng(&mut seed) % 30) as u8; // scales 2^-18 .. 2^11
                }
                for &at in fields {
                    let v = 0.001 + (rng(&mut seed) % 1000) as f32 * 1e-5;
                    b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
                }
            }
            let mut wf = vec![0f32; rows * k];
            super::super::dequantize(ty, &data, &mut wf).unwrap();
            for n in [1, 2, 3, 4, 5, 7, 13] {
                let mut x: Vec<f32> = (0..n * k)
                    .map(|_| (rng(&mut seed) >> 40) as f32 / 8e6 - 1.0)
                    .collect();
                for i in 0..n * 3 {
                    let at = (rng(&mut seed) as usize) % x.len();
                    x[at] = if i % 2 == 0 { 300.0 } else { -40.0 };
                }
                let mut acts = Acts16::new();
                acts.reset(k, n);
                for (p, xs) in acts.parts_mut().zip(x.chunks(k)) {
                    quantize_column(xs, p);
                }
                let mut out = vec![0f32; rows * n];
                wide_matmul(ty, &data, rb, &acts, &mut out);
                for r in 0..rows {
                    for t in 0..n {
                        let (w, xs) = (&wf[r * k..(r + 1) * k], &x[t * k..(t + 1) * k]);
                        let exact: f64 = w.iter().zip(xs).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let mut bound = 0f64;
                        let mut mag = 0f64;
                        for (wb, xb) in w.chunks(32).zip(xs.chunks(32)) {
                            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                            let wsum: f64 = wb.iter().map(|v| v.abs() as f64).sum();
                            bound += wsum * amax / 65534.0;
                            mag += wb
                                .iter()
                                .zip(xb)
                                .map(|(&a, &b)| (a * b).abs() as f64)
                                .sum::<f64>();
                        }
                        let got = out[r * n + t] as f64;
                        let tol = bound * 1.001 + mag * 1e-5 + 1e-6;
                        assert!(
                            (got - exact).abs() <= tol,
                            "{} n={n} row {r} col {t}: {got} vs {exact} (tol {tol})",
                            ty.name()
                        );
                    }
                }
            }
        }
    }
}
