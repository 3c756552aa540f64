//! Quantize → dequantize round trips, checked against the error bound of each quantizer
//! (derived in src/quant/quantize.rs: every value lies on or inside its block's grid, so the
//! error is at most half a grid step).

use half::f16;
use llorch::quant::{dequantize, quantize, GgmlType, QuantError};

mod common;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Test vectors: gaussian-ish weights, an offset block, outliers, constants, zeros, tiny values.
fn inputs(n: usize) -> Vec<Vec<f32>> {
    let mut rng = Rng(42);
    let mut v = Vec::new();
    v.push(
        (0..n)
            .map(|_| (rng.unit() + rng.unit() + rng.unit()) * 0.05)
            .collect(),
    );
    v.push((0..n).map(|_| 3.0 + rng.unit()).collect::<Vec<_>>());
    v.push(
        (0..n)
            .map(|i| {
                if i % 97 == 5 {
                    40.0 * rng.unit()
                } else {
                    rng.unit()
                }
            })
            .collect(),
    );
    v.push(vec![0.0; n]);
    v.push(vec![-1.25; n]);
    v.push((0..n).map(|_| rng.unit() * 1e-3).collect());
    v.push((0..n).map(|_| rng.unit() * 1000.0).collect());
    v
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// f32 arithmetic slop in the quantizer and dequantizer: a few roundings of values of
/// magnitude <= amax + offset, far below any grid step in these tests.
fn slop(block: &[f32]) -> f32 {
    block.iter().fold(0.0f32, |m, v| m.max(v.abs())) * 4.0 * f32::EPSILON
}

/// The per-value error bound of `ty` for value `i` of the block starting at `x`.
fn bound(ty: GgmlType, x: &[f32], b: &[u8], i: usize) -> f32 {
    use GgmlType::*;
    match ty {
        // d >= amax/127 rounded up to f16: error <= d/2.
        Q8_0 => h(b, 0) / 2.0,
        // d >= amax/15: error <= d/2.
        Q5_0 => h(b, 0) / 2.0,
        // grid m + k*d, k = 0..15, with d >= (max - m)/15: values above m are inside the grid;
        // values below m (m = f16(min) rounded up) are at most min - m away.
        Q4_1 => {
            let mn = x.iter().fold(f32::INFINITY, |a, v| a.min(*v));
            h(b, 0) / 2.0 + (h(b, 2) - mn).max(0.0)
        }
        // step S_j = sc_j*d with S_j < (max_j - min_j + dmin)/15 + d, error <= S_j/2; also
        // check the decoded step directly.
        Q4_K => {
            let (d, dmin) = (h(b, 0), h(b, 2));
            let j = i / 32;
            let s = &x[32 * j..32 * j + 32];
            let mn = s.iter().fold(0.0f32, |a, v| a.min(*v));
            let mx = s.iter().fold(f32::NEG_INFINITY, |a, v| a.max(*v));
            ((mx - mn + dmin) / 15.0 + d) / 2.0
        }
        // step S_k = sc_k*d < amax_k/31 + d per 16 values; error <= S_k/2.
        Q6_K => {
            let k = i / 16;
            let am = x[16 * k..16 * k + 16]
                .iter()
                .fold(0.0f32, |a, v| a.max(v.abs()));
            (am / 31.0 + h(b, 208)) / 2.0
        }
        // Scale X = 2^(e-127) with amax <= 6X: the E2M1 grid's gaps are X/2 up to 2X, X up
        // to 4X and 2X up to 6X, and the error is at most half the gap around the value.
        MXFP4 => {
            let xs = mxfp4_scale(b);
            let a = x[i].abs();
            xs * if a <= 2.0 * xs {
                0.25
            } else if a <= 4.0 * xs {
                0.5
            } else {
                1.0
            }
        }
        _ => unreachable!(),
    }
}

/// X = 2^(e-127) of an MXFP4 block.
fn mxfp4_scale(b: &[u8]) -> f32 {
    2f64.powi(b[0] as i32 - 127) as f32
}

#[test]
fn round_trip_within_bounds() {
    use GgmlType::*;
    for ty in [Q8_0, Q4_1, Q5_0, Q4_K, Q6_K, MXFP4] {
        let n = 256 * 8;
        let (bs, ts) = (ty.block_size(), ty.type_size());
        for (case, x) in inputs(n).iter().enumerate() {
            let mut q = vec![0u8; n / bs * ts];
            quantize(ty, x, &mut q).unwrap();
            let mut y = vec![0.0f32; n];
            dequantize(ty, &q, &mut y).unwrap();
            let mut worst = 0.0f32; // worst error / bound ratio
            let mut sum_sq = 0.0f64;
            for blk in 0..n / bs {
                let xb = &x[blk * bs..(blk + 1) * bs];
                let b = &q[blk * ts..(blk + 1) * ts];
                for i in 0..bs {
                    let err = (xb[i] - y[blk * bs + i]).abs();
                    let bnd = bound(ty, xb, b, i) + slop(xb);
                    assert!(
                        err <= bnd,
                        "{} case {case} block {blk} value {i}: x={} y={} err={err} > bound {bnd}",
                        ty.name(),
                        xb[i],
                        y[blk * bs + i]
                    );
                    if bnd > 0.0 {
                        worst = worst.max(err / bnd);
                    }
                    sum_sq += (err as f64).powi(2);
                }
            }
            let rms = (sum_sq / n as f64).sqrt();
            eprintln!(
                "{} case {case}: rms err {rms:.3e}, worst err/bound {worst:.3}",
                ty.name()
            );
            if case == 3 {
                assert!(
                    y.iter().all(|v| *v == 0.0),
                    "{}: zeros must stay zero",
                    ty.name()
                );
            }
        }
    }
}

/// The rounding really is to nearest: quantization error on smooth data is well below the
/// bound on average (a truncating quantizer would sit near the bound).
#[test]
fn typical_error_is_small() {
    use GgmlType::*;
    let mut rng = Rng(7);
    let n = 256 * 16;
    let x: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
    // Uniform data in [-1, 1]: mean |err| of rounding to a step S is S/4. Steps: Q8_0 ≈ 2/254,
    // Q5_0 ≈ 2/30, Q4_1 ≈ 2/15, Q6_K ≈ 2/62, Q4_K ≈ (2 + dmin)/15 + d. Allow 1.3× for f16/scale
    // rounding up.
    for (ty, step) in [
        (Q8_0, 2.0 / 254.0),
        (Q5_0, 2.0 / 30.0),
        (Q4_1, 2.0 / 15.0),
        (Q6_K, 2.0 / 62.0),
        (Q4_K, 2.2 / 15.0),
    ] {
        let mut q = vec![0u8; n / ty.block_size() * ty.type_size()];
        quantize(ty, &x, &mut q).unwrap();
        let mut y = vec![0.0f32; n];
        dequantize(ty, &q, &mut y).unwrap();
        let mean: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / n as f64;
        eprintln!(
            "{}: mean |err| {mean:.4e}, step/4 {:.4e}",
            ty.name(),
            step / 4.0
        );
        assert!(mean <= step / 4.0 * 1.3, "{}: mean err {mean}", ty.name());
    }
}

#[test]
fn bad_input_is_an_error() {
    let mut dst = vec![0u8; 34];
    let mut x = vec![0.5f32; 32];
    x[7] = f32::NAN;
    let e = quantize(GgmlType::Q8_0, &x, &mut dst).unwrap_err();
    assert!(matches!(e, QuantError::BadValue { index: 7, .. }), "{e}");
    x[7] = 1e9; // needs a scale above f16's 65504
    let e = quantize(GgmlType::Q8_0, &x, &mut dst).unwrap_err();
    assert!(e.to_string().contains("f16"), "{e}");
    let e = quantize(GgmlType::Q8_0, &x[..31], &mut dst).unwrap_err();
    assert!(matches!(e, QuantError::NotWholeBlocks { .. }), "{e}");
    let e = quantize(GgmlType::Q8_0, &[0.0; 32], &mut dst[..33]).unwrap_err();
    assert!(matches!(e, QuantError::SizeMismatch { .. }), "{e}");
    let mut x = vec![0.5f32; 64];
    x[40] = f32::INFINITY;
    let e = quantize(GgmlType::MXFP4, &x, &mut [0u8; 34]).unwrap_err();
    assert!(matches!(e, QuantError::BadValue { index: 40, .. }), "{e}");
    let e = quantize(GgmlType::Q2_K, &[0.0; 256], &mut [0u8; 84]).unwrap_err();
    assert!(matches!(e, QuantError::Unsupported { .. }), "{e}");
}

/// MXFP4's exponent is the smallest that fits the block maximum: amax <= 6X, and a scale half
/// as large would not fit (amax > 3X), except at the bottom of the E8M0 range.
#[test]
fn mxfp4_scale_is_the_smallest_that_fits() {
    for (case, x) in inputs(32 * 64).iter().enumerate() {
        let mut q = vec![0u8; 64 * 17];
        quantize(GgmlType::MXFP4, x, &mut q).unwrap();
        for (xb, b) in x.chunks(32).zip(q.chunks(17)) {
            let a = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let xs = mxfp4_scale(b);
            assert!(a <= 6.0 * xs, "case {case}: amax {a} > 6·{xs}");
            assert!(
                a > 3.0 * xs || b[0] == 0,
                "case {case}: amax {a} fits 6·{xs}/2"
            );
        }
    }
    // Exactly 6·2^k fits at k; a hair more needs k + 1. The E8M0 range's ends: the largest
    // finite f32 needs e = 253 and decodes finite; values far below 2^-127 give e = 0.
    let one = |amax: f32| -> (u8, Vec<f32>) {
        let mut x = vec![0.0f32; 32];
        x[3] = -amax;
        let mut q = [0u8; 17];
        quantize(GgmlType::MXFP4, &x, &mut q).unwrap();
        let mut y = vec![0.0f32; 32];
        dequantize(GgmlType::MXFP4, &q, &mut y).unwrap();
        (q[0], y)
    };
    assert_eq!(one(6.0).0, 127);
    assert_eq!(one(6.0).1[3], -6.0);
    assert_eq!(one(f32::from_bits(6f32.to_bits() + 1)).0, 128);
    assert_eq!(one(0.75).0, 124); // 0.75 = 6 · 2^-3
    let big = 3.4 * 2f32.powi(126);
    assert_eq!(
        one(big),
        (253, {
            let mut y = vec![0.0; 32];
            y[3] = -3.0 * 2f32.powi(126);
            y
        })
    );
    // 3.5·2^126 and above round to 2^128: out of f32's range, an error rather than infinity.
    let mut x = vec![0.0f32; 32];
    x[9] = f32::MAX;
    let e = quantize(GgmlType::MXFP4, &x, &mut [0u8; 17]).unwrap_err();
    assert!(e.to_string().contains("f32 range"), "{e}");
    let (e, y) = one(1e-40);
    assert_eq!(e, 0);
    assert!(
        y.iter().all(|&v| v == 0.0 || v == -2f32.powi(-128)),
        "{y:?}"
    );
}

/// Rounding to the nearest E2M1 value, ties to the even code (codes 0, 2, 4, 6 of each sign:
/// 0, 1, 2, 4), with X = 1 (the block maximum 6).
#[test]
fn mxfp4_rounds_to_nearest_ties_to_even() {
    let cases: [(f32, f32); 16] = [
        (6.0, 6.0),
        (0.25, 0.0),
        (0.26, 0.5),
        (0.75, 1.0),
        (1.25, 1.0),
        (1.3, 1.5),
        (1.75, 2.0),
        (2.5, 2.0),
        (2.51, 3.0),
        (3.5, 4.0),
        (4.99, 4.0),
        (5.0, 4.0),
        (5.01, 6.0),
        (-5.0, -4.0),
        (-0.1, 0.0),
        (-1.75, -2.0),
    ];
    let mut x = [0.0f32; 32];
    for (i, &(v, _)) in cases.iter().enumerate() {
        x[2 * i] = v;
    }
    let mut q = [0u8; 17];
    quantize(GgmlType::MXFP4, &x, &mut q).unwrap();
    assert_eq!(q[0], 127, "X = 1");
    let mut y = [0.0f32; 32];
    dequantize(GgmlType::MXFP4, &q, &mut y).unwrap();
    for (i, &(v, want)) in cases.iter().enumerate() {
        assert_eq!(y[2 * i], want, "{v} rounds to {want}");
    }
    // Zero is code 0, never the negative zero code 8: -0.1 is value 28, the high nibble of
    // byte 1 + 12.
    assert_eq!(q[1 + 12] >> 4, 0, "-0.1 -> code 0");
}

/// Values that MXFP4 represents come back unchanged: dequantize → quantize → dequantize is the
/// identity on random blocks and on the reference reader's golden blocks (a scale that is
/// half as large holds every value of the grid up to 3X, so the smallest scale that fits
/// still represents the block exactly), and the bytes come back identical when the block's
/// largest code is above 3X (the scale is then the same) and no code is a negative zero.
#[test]
fn mxfp4_round_trip_is_exact_on_representable_values() {
    let mut rng = Rng(0x4D58);
    let n_blocks = 2000;
    let mut blocks: Vec<u8> = (0..n_blocks * 17).map(|_| rng.next() as u8).collect();
    for (i, b) in blocks.chunks_mut(17).enumerate() {
        // Every exponent whose codes all decode finite (from e = 253 on, 4X is 2^128).
        b[0] = (rng.next() % 253) as u8;
        if i % 2 == 0 {
            // Byte-exact case: a largest code above 3X (4X or 6X), no negative zero.
            for q in &mut b[1..] {
                for sh in [0, 4] {
                    if (*q >> sh) & 15 == 8 {
                        *q ^= 8 << sh;
                    }
                }
            }
            b[1 + (i / 2) % 16] |= 6;
        }
    }
    let golden = std::fs::read(common::golden_dir().join("quant/MXFP4.blocks")).unwrap();
    for (what, src) in [("random", &blocks), ("golden", &golden)] {
        let n = src.len() / 17 * 32;
        let mut y = vec![0.0f32; n];
        dequantize(GgmlType::MXFP4, src, &mut y).unwrap();
        let mut q = vec![0u8; src.len()];
        quantize(GgmlType::MXFP4, &y, &mut q).unwrap();
        let mut y2 = vec![0.0f32; n];
        dequantize(GgmlType::MXFP4, &q, &mut y2).unwrap();
        for i in 0..n {
            // (A negative zero comes back as zero.)
            assert!(y2[i] == y[i], "{what} value {i}: {} -> {}", y[i], y2[i]);
        }
        if what == "random" {
            for (i, (a, b)) in src.chunks(17).zip(q.chunks(17)).enumerate().step_by(2) {
                assert_eq!(a, b, "block {i}");
            }
        }
    }
}
