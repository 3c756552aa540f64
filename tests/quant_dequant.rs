//! Dequantization against the golden fixtures (independent reference decoder output).

mod common;

use llorch::quant::{dequantize, GgmlType, QuantError};

fn golden(ty: GgmlType) -> (Vec<u8>, Vec<f32>) {
    let dir = common::golden_dir().join("quant");
    let blocks = std::fs::read(dir.join(format!("{}.blocks", ty.name()))).unwrap();
    let f = std::fs::read(dir.join(format!("{}.f32", ty.name()))).unwrap();
    let vals = f
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (blocks, vals)
}

#[test]
fn matches_golden_bit_for_bit() {
    use GgmlType::*;
    for ty in [
        F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, MXFP4,
    ] {
        let (blocks, want) = golden(ty);
        assert_eq!(
            want.len(),
            64 * ty.block_size(),
            "{}: fixture size",
            ty.name()
        );
        let mut got = vec![f32::NAN; want.len()];
        dequantize(ty, &blocks, &mut got).unwrap();
        // Every product in these formats (f16 scale × small integer) is exact in f32, and at
        // most one rounding (the min/offset add) follows, in the same order as the
        // reference: so the match must be exact.
        let mut bad = 0;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if g.to_bits() != w.to_bits() && !(g.is_nan() && w.is_nan()) {
                if bad < 5 {
                    eprintln!("{} [{i}]: got {g} want {w}", ty.name());
                }
                bad += 1;
            }
        }
        assert_eq!(
            bad,
            0,
            "{}: {bad} of {} values differ",
            ty.name(),
            want.len()
        );
        // Not a trivial fixture: many distinct values.
        let mut distinct: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() > 16,
            "{}: only {} distinct values",
            ty.name(),
            distinct.len()
        );
    }
}

#[test]
fn f32_passthrough() {
    let vals = [1.5f32, -0.0, f32::MAX, 1e-40, -3.25];
    let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = [0.0f32; 5];
    dequantize(GgmlType::F32, &bytes, &mut out).unwrap();
    assert_eq!(out.map(f32::to_bits), vals.map(f32::to_bits));
}

#[test]
fn bad_sizes_are_errors_not_panics() {
    let src = vec![0u8; 144];
    let mut dst = vec![0.0f32; 256];
    // Wrong byte count.
    let e = dequantize(GgmlType::Q4_K, &src[..143], &mut dst).unwrap_err();
    assert!(
        matches!(
            e,
            QuantError::SizeMismatch {
                got: 143,
                want: 144,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("Q4_K"), "{e}");
    // Not a whole number of blocks.
    let e = dequantize(GgmlType::Q4_K, &src, &mut dst[..255]).unwrap_err();
    assert!(
        matches!(
            e,
            QuantError::NotWholeBlocks {
                n: 255,
                block: 256,
                ..
            }
        ),
        "{e}"
    );
    // A type without a dequantizer.
    let e = dequantize(GgmlType::Q8_K, &[0u8; 292], &mut dst).unwrap_err();
    assert!(matches!(e, QuantError::Unsupported { .. }), "{e}");
    // Empty input is fine.
    dequantize(GgmlType::Q8_0, &[], &mut []).unwrap();
}
