//! Portable scalar dot products: the reference every SIMD path is tested against, and the
//! path for types without a SIMD kernel (Q2_K and Q3_K on x86-64).
//!
//! Each weight block is decoded once into signed integers q and, per 16 values, a float scale
//! and min with w = scale*q - min; each 32-value activation block then contributes
//! scale*da*Σ q·a - min*da*Σ a per half, with the integer sums exact.

use super::dot::BlockQ8;
use super::{e8m0_half, f16_at, k_scale_min, q3k_scales, GgmlType, MXFP4_VALUES};

/// A decoded weight block: up to 256 values as small signed integers.
struct Decoded {
    q: [i8; 256],
    scale: [f32; 16],
    min: [f32; 16],
}

/// Decodes block `b` of `ty` (sizes already checked). Only dot-supported types reach here.
fn decode(ty: GgmlType, b: &[u8], o: &mut Decoded) {
    use GgmlType::*;
    half_scales(ty, b, &mut o.scale, &mut o.min);
    let q = &mut o.q;
    match ty {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 => {
            let (qh, qs) = match ty {
                Q4_0 => (0, 2),
                Q4_1 => (0, 4),
                Q5_0 => (u32::from_le_bytes([b[2], b[3], b[4], b[5]]), 6),
                _ => (u32::from_le_bytes([b[4], b[5], b[6], b[7]]), 8),
            };
            let bias = legacy_bias(ty);
            for j in 0..16 {
                let lo = (b[qs + j] & 0xF) as i32 | (((qh >> j) & 1) << 4) as i32;
                let hi = (b[qs + j] >> 4) as i32 | (((qh >> (j + 16)) & 1) << 4) as i32;
                q[j] = (lo - bias) as i8;
                q[j + 16] = (hi - bias) as i8;
            }
        }
        Q8_0 => {
            for j in 0..32 {
                q[j] = b[2 + j] as i8;
            }
        }
        MXFP4 => {
            for j in 0..16 {
                q[j] = MXFP4_VALUES[(b[1 + j] & 0xF) as usize];
                q[j + 16] = MXFP4_VALUES[(b[1 + j] >> 4) as usize];
            }
        }
        Q2_K => {
            for (i, q) in q.iter_mut().enumerate() {
                let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                *q = ((b[16 + h * 32 + l] >> (2 * s)) & 3) as i8;
            }
        }
        Q3_K => {
            for (i, q) in q.iter_mut().enumerate() {
                let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                let lo = ((b[32 + h * 32 + l] >> (2 * s)) & 3) as i8;
                let hbit = ((b[l] >> (h * 4 + s)) & 1) as i8;
                *q = lo - 4 * (1 - hbit);
            }
        }
        Q4_K | Q5_K => {
            let qs = if ty == Q5_K { 48 } else { 16 };
            let mid = if ty == Q5_K { 16 } else { 8 }; // centred, as for Q4_1
            for j in 0..8 {
                for l in 0..32 {
                    let mut v = (b[qs + (j / 2) * 32 + l] >> (4 * (j % 2))) & 0xF;
                    if ty == Q5_K {
                        v |= ((b[16 + l] >> j) & 1) << 4;
                    }
                    q[j * 32 + l] = v as i8 - mid;
                }
            }
        }
        Q6_K => {
            for (i, q) in q.iter_mut().enumerate() {
                let (h, r) = (i / 128, i % 128);
                let lo = (b[h * 64 + r % 64] >> (4 * (r / 64))) & 0xF;
                let hi = (b[128 + h * 32 + r % 32] >> (2 * (r / 32))) & 3;
                *q = (lo | (hi << 4)) as i8 - 32;
            }
        }
        _ => {}
    }
}

/// The centring offset of Q4_0/Q4_1 (8) and Q5_0/Q5_1 (16) quants.
pub(crate) fn legacy_bias(ty: GgmlType) -> i32 {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => 8,
        _ => 16,
    }
}

/// The float scale and min of each 16-value half of block `b` (value = scale*q - min, with
/// q as [`decode`] makes it): the first 2 entries for 32-value blocks, all 16 for K-quants.
/// Shared with the NEON path, which must match this one bit for bit.
pub(crate) fn half_scales(ty: GgmlType, b: &[u8], scale: &mut [f32; 16], min: &mut [f32; 16]) {
    use GgmlType::*;
    match ty {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 => {
            let d = f16_at(b, 0);
            // q is centred (q - 8 or q - 16): the offset of Q4_0/Q5_0 folds in exactly, and
            // for Q4_1/Q5_1 the min becomes m + mid*d, so the integer sums and the min term
            // stay small instead of cancelling (precision on activations with outliers).
            let m = if matches!(ty, Q4_1 | Q5_1) {
                f16_at(b, 2) + legacy_bias(ty) as f32 * d
            } else {
                0.0
            };
            scale[..2].fill(d);
            min[..2].fill(-m);
        }
        Q8_0 => {
            scale[..2].fill(f16_at(b, 0));
            min[..2].fill(0.0);
        }
        MXFP4 => {
            scale[..2].fill(e8m0_half(b[0]));
            min[..2].fill(0.0);
        }
        Q2_K => {
            let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
            for (k, sc) in b[..16].iter().enumerate() {
                scale[k] = d * (sc & 0xF) as f32;
                min[k] = dmin * (sc >> 4) as f32;
            }
        }
        Q3_K => {
            let d = f16_at(b, 108);
            for (o, s) in scale.iter_mut().zip(q3k_scales(&b[96..108])) {
                *o = d * s as f32;
            }
            min.fill(0.0);
        }
        Q4_K | Q5_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let mid = if ty == Q5_K { 16.0 } else { 8.0 };
            for j in 0..8 {
                let (sc, m) = k_scale_min(&b[4..16], j);
                let s = d * sc as f32;
                scale[2 * j..2 * j + 2].fill(s);
                min[2 * j..2 * j + 2].fill(dmin * m as f32 - mid * s);
            }
        }
        Q6_K => {
            let d = f16_at(b, 208);
            for k in 0..16 {
                scale[k] = d * (b[192 + k] as i8) as f32;
                min[k] = 0.0;
            }
        }
        _ => {}
    }
}

/// Types the scalar path can dot.
pub(crate) fn supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | MXFP4 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K
    )
}

/// `out[c]` = row · column c, for `n_cols` columns of `nb` activation blocks each, stored back
/// to back in `acts`. Sizes already checked by the caller.
pub(crate) fn dot(ty: GgmlType, row: &[u8], acts: &[BlockQ8], nb: usize, out: &mut [f32]) {
    let per = ty.block_size() / 32; // activation blocks per weight block
    let mut dec = Decoded {
        q: [0; 256],
        scale: [0.0; 16],
        min: [0.0; 16],
    };
    out.fill(0.0);
    for (wi, wb) in row.chunks_exact(ty.type_size()).enumerate() {
        decode(ty, wb, &mut dec);
        for (c, o) in out.iter_mut().enumerate() {
            let col = &acts[c * nb + wi * per..c * nb + (wi + 1) * per];
            let mut acc = 0.0f32;
            for (k, a) in col.iter().enumerate() {
                for h in 0..2 {
                    let s = 2 * k + h;
                    let (mut isum, mut asum) = (0i32, 0i32);
                    for l in 0..16 {
                        isum += dec.q[s * 16 + l] as i32 * a.qs[h * 16 + l] as i32;
                        asum += a.qs[h * 16 + l] as i32;
                    }
                    acc += dec.scale[s] * a.d * isum as f32 - dec.min[s] * a.d * asum as f32;
                }
            }
            *o += acc;
        }
    }
}

/// A row of F32/F16/BF16 dotted with f32 values (lengths already checked). Eight partial
/// sums let the compiler vectorize.
pub(crate) fn dot_f32(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    dot_f32_from(ty, row, x, [0.0; 8])
}

/// [`dot_f32`] continuing from partial sums `acc` of the values before `row` (a SIMD path
/// that has done the whole 8-value chunks finishes here, in the same order).
pub(crate) fn dot_f32_from(ty: GgmlType, row: &[u8], x: &[f32], mut acc: [f32; 8]) -> f32 {
    match ty {
        GgmlType::F32 => {
            for (rc, xc) in row.chunks(32).zip(x.chunks(8)) {
                for (k, (r, v)) in rc.chunks_exact(4).zip(xc).enumerate() {
                    acc[k] += f32::from_le_bytes([r[0], r[1], r[2], r[3]]) * v;
                }
            }
        }
        GgmlType::F16 => {
            for (rc, xc) in row.chunks(16).zip(x.chunks(8)) {
                for (k, (r, v)) in rc.chunks_exact(2).zip(xc).enumerate() {
                    acc[k] += half::f16::from_le_bytes([r[0], r[1]]).to_f32() * v;
                }
            }
        }
        GgmlType::BF16 => {
            for (rc, xc) in row.chunks(16).zip(x.chunks(8)) {
                for (k, (r, v)) in rc.chunks_exact(2).zip(xc).enumerate() {
                    acc[k] += f32::from_bits((u16::from_le_bytes([r[0], r[1]]) as u32) << 16) * v;
                }
            }
        }
        _ => return f32::NAN,
    }
    acc.iter().sum()
}
