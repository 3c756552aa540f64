//! CPU dot products of quantized weight rows with 8-bit quantized activations, with the SIMD
//! path chosen once at run time (or forced with `LLORCH_SIMD=scalar|avx2|avx512`).

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
}

impl SimdLevel {
    pub const ALL: [SimdLevel; 4] = [
        SimdLevel::Scalar,
        SimdLevel::Avx2,
        SimdLevel::Avx2Vnni,
        SimdLevel::Avx512,
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
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
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
        }
    }
}

/// The level in use: the best available, or `LLORCH_SIMD` (scalar|avx2|avx512) capped at
/// what the CPU has. Decided once.
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
            _ => best(&[Avx512, Avx2Vnni, Avx2]),
        }
    })
}

/// A kernel: `out[c]` = row · column c for `out.len()` columns of `nb` blocks each.
type DotFn = unsafe fn(&[u8], &[BlockQ8], usize, &mut [f32]);

/// Per-type kernels of one level (None: use the scalar path).
fn table(level: SimdLevel) -> &'static [Option<DotFn>; 40] {
    static TABLES: OnceLock<[[Option<DotFn>; 40]; 4]> = OnceLock::new();
    let t = TABLES.get_or_init(|| {
        let mut t = [[None; 40]; 4];
        #[cfg(target_arch = "x86_64")]
        for (i, l) in SimdLevel::ALL.into_iter().enumerate() {
            if l.available() {
                super::x86::fill(l, &mut t[i]);
            }
        }
        t
    });
    &t[level as usize]
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
    use GgmlType::*;
    if !matches!(ty, F32 | F16 | BF16) || check_sizes(ty, x.len(), row.len(), "row").is_err() {
        return f32::NAN;
    }
    #[cfg(target_arch = "x86_64")]
    if simd_level() != SimdLevel::Scalar && SimdLevel::Avx2.available() {
        // SAFETY: AVX2/FMA/F16C present; sizes checked.
        return unsafe { super::x86::dot_f32(ty, row, x) };
    }
    scalar::dot_f32(ty, row, x)
}
