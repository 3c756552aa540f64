//! Quantize-from-f32 for Q8_0, Q4_1, Q5_0, Q4_K, Q6_K and MXFP4.
//!
//! All quantizers round to nearest on a grid whose scales are rounded *up* to f16 (and, for
//! the K-quants, whose 6/8-bit sub-block scales and mins are rounded up), so every input value
//! lies inside the representable range and the error is at most half a grid step:
//!   Q8_0:  |err| <= d/2,  d >= amax/127 (amax over the 32-value block)
//!   Q5_0:  |err| <= d/2,  d >= amax/15 (grid -16..15, only -15..15 used)
//!   Q4_1:  |err| <= d/2 + |min - m|,  m = f16(min), d >= (max - m)/15
//!   Q4_K:  |err| <= S_j/2,  S_j < (max_j - min_j + dmin)/15 + d, min_j = min(0, min of sub-block)
//!   Q6_K:  |err| <= S_k/2,  S_k < amax_k/31 + d  (per 16 values)
//! (d, dmin the f16 super-block scales). The tests check exactly these bounds.
//!
//! MXFP4 (32 values, a power-of-two scale X = 2^(e-127), E2M1 codes 0, ±0.5, ±1, ±1.5, ±2,
//! ±3, ±4, ±6): X is the smallest power of two with amax <= 6X, so the block maximum fits and
//! nothing saturates, and each value rounds to its nearest code (ties to the even code, as
//! IEEE rounding does): |err| <= X/4 below 2X, X/2 below 4X, X up to 6X, and X < amax/3 (a
//! smaller X would fit) unless e is clamped at 0. The reference reader's quantizer takes
//! X = 2^(floor(log2 amax) - 2) (the OCP MX spec's rule): the same X except when amax lies in
//! (6X, 8X), where it clips the maximum to 6X (an error of up to 2X) and this rule doubles X
//! instead, erring at most X on every value of that block (all below 4·2X): coarser steps
//! for the block's small values, but no value far off. Values of 3.5·2^126 or more (which
//! round to 2^128, beyond f32) are an error.

use super::{check_sizes, GgmlType, QuantError, MXFP4_VALUES};
use half::f16;

/// Quantizes `src` into whole blocks of `ty` in `dst` (`dst.len()` = blocks × type size).
/// Errors: unsupported type, sizes, a non-finite input or a scale beyond the f16 range.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    use GgmlType::*;
    let f: fn(&[f32], &mut [u8]) -> Result<(), &'static str> = match ty {
        Q8_0 => q8_0,
        Q4_1 => q4_1,
        Q5_0 => q5_0,
        Q4_K => q4_k,
        Q6_K => q6_k,
        MXFP4 => mxfp4,
        _ => {
            return Err(QuantError::Unsupported {
                ty: ty.name(),
                op: "quantize",
            })
        }
    };
    check_sizes(ty, src.len(), dst.len(), "destination")?;
    if let Some((index, &value)) = src.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(QuantError::BadValue {
            ty: ty.name(),
            index,
            value,
            why: "not finite",
        });
    }
    let (bs, ts) = (ty.block_size(), ty.type_size());
    for (k, (x, o)) in src
        .chunks_exact(bs)
        .zip(dst.chunks_exact_mut(ts))
        .enumerate()
    {
        f(x, o).map_err(|why| {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            QuantError::BadValue {
                ty: ty.name(),
                index: k * bs,
                value: amax,
                why,
            }
        })?;
    }
    Ok(())
}

const TOO_BIG: &str = "block scale exceeds the f16 range";

/// The smallest f16 >= x (x >= 0, finite), or an error past the f16 range.
fn f16_up(x: f32) -> Result<f16, &'static str> {
    let mut h = f16::from_f32(x);
    if h.to_f32() < x {
        h = f16::from_bits(h.to_bits() + 1);
    }
    if h.is_finite() {
        Ok(h)
    } else {
        Err(TOO_BIG)
    }
}

fn put16(o: &mut [u8], at: usize, h: f16) {
    o[at..at + 2].copy_from_slice(&h.to_le_bytes());
}

/// round(x / step) clamped to [lo, hi]; 0 for a zero step.
fn q(x: f32, step: f32, lo: f32, hi: f32) -> i32 {
    if step > 0.0 {
        (x / step).round().clamp(lo, hi) as i32
    } else {
        0
    }
}

fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

fn q8_0(x: &[f32], o: &mut [u8]) -> Result<(), &'static str> {
    let d = f16_up(amax(x) / 127.0)?;
    put16(o, 0, d);
    for (b, v) in o[2..].iter_mut().zip(x) {
        *b = q(*v, d.to_f32(), -127.0, 127.0) as i8 as u8;
    }
    Ok(())
}

fn q5_0(x: &[f32], o: &mut [u8]) -> Result<(), &'static str> {
    let d = f16_up(amax(x) / 15.0)?;
    put16(o, 0, d);
    let qv: Vec<u32> = x
        .iter()
        .map(|v| (q(*v, d.to_f32(), -16.0, 15.0) + 16) as u32)
        .collect();
    let mut qh = 0u32;
    for (j, v) in qv.iter().enumerate() {
        qh |= ((v >> 4) & 1) << j;
    }
    o[2..6].copy_from_slice(&qh.to_le_bytes());
    for j in 0..16 {
        o[6 + j] = ((qv[j] & 0xF) | (qv[j + 16] & 0xF) << 4) as u8;
    }
    Ok(())
}

fn q4_1(x: &[f32], o: &mut [u8]) -> Result<(), &'static str> {
    let mn = x.iter().fold(f32::INFINITY, |m, v| m.min(*v));
    let mx = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let m = f16::from_f32(mn);
    if !m.is_finite() {
        return Err(TOO_BIG);
    }
    let mf = m.to_f32();
    let d = f16_up(((mx - mf) / 15.0).max(0.0))?;
    put16(o, 0, d);
    put16(o, 2, m);
    let qv: Vec<i32> = x.iter().map(|v| q(v - mf, d.to_f32(), 0.0, 15.0)).collect();
    for j in 0..16 {
        o[4 + j] = (qv[j] | qv[j + 16] << 4) as u8;
    }
    Ok(())
}

fn q4_k(x: &[f32], o: &mut [u8]) -> Result<(), &'static str> {
    let mut mn = [0f32; 8];
    let mut mx = [0f32; 8];
    for j in 0..8 {
        let s = &x[32 * j..32 * j + 32];
        mn[j] = s.iter().fold(0.0f32, |m, v| m.min(*v)); // min <= 0: the format subtracts mins
        mx[j] = s.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    }
    // Mins first (rounded up so each sub-block's grid starts at or below its minimum) ...
    let dmin = f16_up(mn.iter().fold(0.0f32, |m, v| m.max(-v)) / 63.0)?;
    let dminf = dmin.to_f32();
    let mut mi = [0u8; 8];
    let mut big_m = [0f32; 8];
    for j in 0..8 {
        mi[j] = if dminf > 0.0 {
            (-mn[j] / dminf).ceil().clamp(0.0, 63.0) as u8
        } else {
            0
        };
        big_m[j] = mi[j] as f32 * dminf;
    }
    // ... then scales rounded up so 15 steps reach each sub-block's maximum.
    let need: Vec<f32> = (0..8)
        .map(|j| ((mx[j] + big_m[j]) / 15.0).max(0.0))
        .collect();
    let d = f16_up(need.iter().fold(0.0f32, |m, v| m.max(*v)) / 63.0)?;
    let df = d.to_f32();
    let mut si = [0u8; 8];
    for j in 0..8 {
        si[j] = if df > 0.0 {
            (need[j] / df).ceil().clamp(0.0, 63.0) as u8
        } else {
            0
        };
    }
    put16(o, 0, d);
    put16(o, 2, dmin);
    let s = &mut o[4..16];
    for j in 0..4 {
        s[j] = si[j] | (si[j + 4] >> 4) << 6;
        s[j + 4] = mi[j] | (mi[j + 4] >> 4) << 6;
        s[j + 8] = (si[j + 4] & 0xF) | (mi[j + 4] & 0xF) << 4;
    }
    let mut qv = [0u8; 256];
    for j in 0..8 {
        let step = si[j] as f32 * df;
        for l in 0..32 {
            qv[32 * j + l] = q(x[32 * j + l] + big_m[j], step, 0.0, 15.0) as u8;
        }
    }
    for g in 0..4 {
        for l in 0..32 {
            o[16 + 32 * g + l] = qv[64 * g + l] | qv[64 * g + 32 + l] << 4;
        }
    }
    Ok(())
}

fn q6_k(x: &[f32], o: &mut [u8]) -> Result<(), &'static str> {
    // Per 16 values: step >= amax/31, so round(x/step) stays within -31..31.
    let need: Vec<f32> = x.chunks_exact(16).map(|s| amax(s) / 31.0).collect();
    let d = f16_up(need.iter().fold(0.0f32, |m, v| m.max(*v)) / 127.0)?;
    let df = d.to_f32();
    let mut qv = [0u8; 256];
    for k in 0..16 {
        let sc = if df > 0.0 {
            (need[k] / df).ceil().clamp(0.0, 127.0) as i8
        } else {
            0
        };
        o[192 + k] = sc as u8;
        let step = sc as f32 * df;
        for l in 0..16 {
            qv[16 * k + l] = (q(x[16 * k + l], step, -32.0, 31.0) + 32) as u8;
        }
    }
    put16(o, 208, d);
    o[..192].fill(0);
    for (i, v) in qv.iter().enumerate() {
        let (h, r) = (i / 128, i % 128);
        o[h * 64 + r % 64] |= (v & 0xF) << (4 * (r / 64));
        o[128 + h * 32 + r % 32] |= (v >> 4) << (2 * (r / 32));
    }
    Ok(())
}

/// MXFP4 (see the top of the file): the exponent byte, then code j in the low nibble of byte
/// 1 + j and code j + 16 in its high nibble.
fn mxfp4(x: &[f32], o: &mut [u8]) -> Result<(), &'static str> {
    let a = amax(x) as f64;
    // The smallest k with 6·2^k >= amax (exact comparisons in f64; log2 only guesses),
    // within the E8M0 range k = e - 127, e in 0..=254. Finite inputs need e <= 253.
    let fits = |k: i32| 6.0 * 2f64.powi(k) >= a;
    let mut k = if a > 0.0 {
        (a / 6.0).log2().ceil() as i32
    } else {
        -127
    };
    while k > -127 && fits(k - 1) {
        k -= 1;
    }
    while !fits(k) {
        k += 1;
    }
    let k = k.clamp(-127, 127);
    o[0] = (k + 127) as u8;
    // |v| / X (exact in f64) against the E2M1 magnitudes, in doubled units to stay integral.
    let inv = 2f64.powi(-k) * 2.0;
    let code = |v: f32| -> u8 {
        let t = (v.abs() as f64) * inv; // in 0..=12
        let m = &MXFP4_VALUES[..8];
        let mut i = 0;
        while i < 7 && t >= m[i + 1] as f64 {
            i += 1;
        }
        // Now m[i] <= t < m[i+1] (or i = 7): round to nearest, ties to the even code.
        if i < 7 {
            let (lo, hi) = (t - m[i] as f64, m[i + 1] as f64 - t);
            if hi < lo || (hi == lo && i % 2 == 1) {
                i += 1;
            }
        }
        if i == 0 {
            0 // zero has no sign
        } else {
            i as u8 | if v < 0.0 { 8 } else { 0 }
        }
    };
    for j in 0..16 {
        o[1 + j] = code(x[j]) | code(x[j + 16]) << 4;
    }
    // At X = 2^126 (e = 253) the codes 4X and 6X decode to 2^128 and more: infinity in f32.
    if k == 126 && o[1..].iter().any(|&b| b & 7 >= 6 || (b >> 4) & 7 >= 6) {
        return Err("block values round beyond the f32 range (MXFP4 codes of 2^128 or more)");
    }
    Ok(())
}
