//! Dequantize-to-f32 for every block format llorch reads. Layouts follow the GGUF spec
//! (the `gguf` Python package's quants.py spells them out). Every product below is exact in
//! f32 (an f16 scale times a small integer), so results match the reference bit for bit.

use super::{
    check_sizes, e8m0_half, f16_at, k_scale_min, q3k_scales, GgmlType, QuantError, MXFP4_VALUES,
};

/// Decodes `src` (whole blocks of `ty`) into `dst`.
/// `dst.len()` must be a multiple of the block size and `src.len()` exactly blocks × type size.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    use GgmlType::*;
    check_sizes(ty, dst.len(), src.len(), "source")?;
    match ty {
        F32 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        F16 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        BF16 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Q8_1 | Q8_K => {
            return Err(QuantError::Unsupported {
                ty: ty.name(),
                op: "dequantize",
            })
        }
        _ => {
            let (bs, ts) = (ty.block_size(), ty.type_size());
            for (o, b) in dst.chunks_exact_mut(bs).zip(src.chunks_exact(ts)) {
                block(ty, b, o);
            }
        }
    }
    Ok(())
}

/// One block of a quantized type (sizes already checked).
fn block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    use GgmlType::*;
    match ty {
        Q4_0 => {
            // d, then 16 bytes: value j in the low nibble of byte j, value j+16 in the high one.
            let d = f16_at(b, 0);
            for j in 0..16 {
                y[j] = d * ((b[2 + j] & 0xF) as i32 - 8) as f32;
                y[j + 16] = d * ((b[2 + j] >> 4) as i32 - 8) as f32;
            }
        }
        Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for j in 0..16 {
                y[j] = d * (b[4 + j] & 0xF) as f32 + m;
                y[j + 16] = d * (b[4 + j] >> 4) as f32 + m;
            }
        }
        Q5_0 | Q5_1 => {
            // d, [m], qh (u32: bit j is the 5th bit of value j), then nibbles as in Q4_0.
            let d = f16_at(b, 0);
            let (m, o) = if ty == Q5_1 {
                (f16_at(b, 2), 4)
            } else {
                (0.0, 2)
            };
            let qh = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            for j in 0..16 {
                let lo = (b[o + 4 + j] & 0xF) as u32 | ((qh >> j) & 1) << 4;
                let hi = (b[o + 4 + j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
                if ty == Q5_0 {
                    y[j] = d * (lo as i32 - 16) as f32;
                    y[j + 16] = d * (hi as i32 - 16) as f32;
                } else {
                    y[j] = d * lo as f32 + m;
                    y[j + 16] = d * hi as f32 + m;
                }
            }
        }
        Q8_0 => {
            let d = f16_at(b, 0);
            for j in 0..32 {
                y[j] = d * (b[2 + j] as i8) as f32;
            }
        }
        MXFP4 => {
            // e8m0 exponent (halved: the table holds doubled e2m1 values), then nibbles.
            let d = e8m0_half(b[0]);
            for j in 0..16 {
                y[j] = d * MXFP4_VALUES[(b[1 + j] & 0xF) as usize] as f32;
                y[j + 16] = d * MXFP4_VALUES[(b[1 + j] >> 4) as usize] as f32;
            }
        }
        Q2_K => {
            // scales[16] (low nibble scale, high nibble min, per 16 values), qs[64], d, dmin.
            let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
            for (i, y) in y.iter_mut().enumerate() {
                let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                let q = (b[16 + h * 32 + l] >> (2 * s)) & 3;
                let sc = b[i / 16];
                let dl = d * (sc & 0xF) as f32;
                let ml = dmin * (sc >> 4) as f32;
                *y = dl * q as f32 - ml;
            }
        }
        Q3_K => {
            // hmask[32], qs[64], scales[12], d. A clear hmask bit subtracts 4.
            let d = f16_at(b, 108);
            let sc = q3k_scales(&b[96..108]);
            for (i, y) in y.iter_mut().enumerate() {
                let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                let lo = ((b[32 + h * 32 + l] >> (2 * s)) & 3) as i32;
                let hbit = ((b[l] >> (h * 4 + s)) & 1) as i32;
                let q = lo - 4 * (1 - hbit);
                *y = (d * sc[i / 16] as f32) * q as f32;
            }
        }
        Q4_K | Q5_K => {
            // d, dmin, scales[12] (6-bit scale and min per 32 values), [qh[32]], qs[128]:
            // qs byte g*32+l holds sub-block 2g in its low nibble and 2g+1 in its high one.
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let qs = if ty == Q5_K { 48 } else { 16 };
            for j in 0..8 {
                let (sc, m) = k_scale_min(&b[4..16], j);
                let dl = d * sc as f32;
                let ml = dmin * m as f32;
                for l in 0..32 {
                    let mut q = (b[qs + (j / 2) * 32 + l] >> (4 * (j % 2))) & 0xF;
                    if ty == Q5_K {
                        q |= ((b[16 + l] >> j) & 1) << 4;
                    }
                    y[j * 32 + l] = dl * q as f32 - ml;
                }
            }
        }
        Q6_K => {
            // ql[128], qh[64], scales[16] (i8 per 16 values), d. Per half h of 128 values:
            // value r has low bits in ql[h*64 + r%64] (nibble r/64), high bits in
            // qh[h*32 + r%32] (bit pair r/32).
            let d = f16_at(b, 208);
            for (i, y) in y.iter_mut().enumerate() {
                let (h, r) = (i / 128, i % 128);
                let lo = (b[h * 64 + r % 64] >> (4 * (r / 64))) & 0xF;
                let hi = (b[128 + h * 32 + r % 32] >> (2 * (r / 32))) & 3;
                let q = (lo | (hi << 4)) as i32 - 32;
                *y = (d * (b[192 + i / 16] as i8) as f32) * q as f32;
            }
        }
        F32 | F16 | BF16 | Q8_1 | Q8_K => unreachable!("handled by dequantize"),
    }
}
