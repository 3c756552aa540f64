//! AArch64 NEON dot-product kernels, equal bit for bit to the scalar path (scalar.rs).
//!
//! Only the integer work is vectorized: each weight block is decoded once into 16-value
//! halves of signed bytes (the same integers the scalar path decodes), and each half's dot
//! with the 8-bit activations is an exact i32 sum, made with `sdot` where the CPU has the
//! dotprod extension and with widening multiplies (`smull` + pairwise adds) otherwise. The
//! float part repeats the scalar arithmetic operation for operation: per half
//! t = (scale·d)·isum - (min·d)·asum, four halves per vector (element-wise the same roundings;
//! Rust never fuses a multiply and an add), then added into the block's sum one half at a
//! time in the scalar order, and the block's sum into the output. Scales and mins come from
//! the scalar path's own [`half_scales`].
//!
//! The wide (16-bit activation) kernels stay x86-64 AVX-512 only: `wide_supported` is false
//! here, so the CPU backend takes its two 8-bit activation passes through these kernels.

use super::dot::{BlockQ8, SimdLevel};
use super::scalar::{dot_f32_from, half_scales, legacy_bias};
use super::{GgmlType, MXFP4_VALUES};
use std::arch::aarch64::*;

/// `acc + Σ w·a` per 4-byte group, with the dotprod extension (its intrinsic is not stable
/// Rust yet, so one instruction of inline assembly; the feature lets the assembler take it).
#[inline]
#[target_feature(enable = "dotprod")]
unsafe fn sdot(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    std::arch::asm!(
        "sdot {acc:v}.4s, {w:v}.16b, {a:v}.16b",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        a = in(vreg) a,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// The 16 products w·a of one half in i32 lanes that sum to its exact dot (each i16
/// product fits: |w·a| <= 128·128).
#[inline(always)]
unsafe fn dot16<const SDOT: bool>(w: int8x16_t, a: int8x16_t) -> int32x4_t {
    if SDOT {
        sdot(vdupq_n_s32(0), w, a)
    } else {
        let lo = vmull_s8(vget_low_s8(w), vget_low_s8(a));
        let hi = vmull_high_s8(w, a);
        vpadalq_s16(vpaddlq_s16(lo), hi)
    }
}

/// Σ a of one half in i32 lanes.
#[inline(always)]
unsafe fn sum16(a: int8x16_t) -> int32x4_t {
    vpaddlq_s16(vpaddlq_s8(a))
}

/// The lane totals of four partial-sum vectors: [Σx0, Σx1, Σx2, Σx3].
#[inline(always)]
unsafe fn totals(x: [int32x4_t; 4]) -> int32x4_t {
    vpaddq_s32(vpaddq_s32(x[0], x[1]), vpaddq_s32(x[2], x[3]))
}

/// A weight block decoded once for all columns: its 16-value halves (2 for 32-value blocks,
/// 16 for K-quants) and the scalar path's scale and min of each.
struct Block {
    q: [int8x16_t; 16],
    scale: [f32; 16],
    min: [f32; 16],
}

/// Per byte: (v >> shift) & mask.
#[inline(always)]
unsafe fn field(v: uint8x16_t, shift: i8, mask: u8) -> uint8x16_t {
    vandq_u8(vshlq_u8(v, vdupq_n_s8(-shift)), vdupq_n_u8(mask))
}

/// 16 bits → 16 bytes, `0x10` where the bit is set (the fifth bit of Q5 quants).
#[inline(always)]
unsafe fn bit4(bits: u32) -> uint8x16_t {
    let v = vcombine_u8(vdup_n_u8(bits as u8), vdup_n_u8((bits >> 8) as u8));
    let m = vld1q_u8([1u8, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128].as_ptr());
    vandq_u8(vtstq_u8(v, m), vdupq_n_u8(0x10))
}

#[inline(always)]
unsafe fn signed(v: uint8x16_t, minus: i8) -> int8x16_t {
    vsubq_s8(vreinterpretq_s8_u8(v), vdupq_n_s8(minus))
}

/// Decodes the quants of block `b` of `ty` into halves, value for value as scalar.rs does.
#[inline(always)]
unsafe fn decode(ty: GgmlType, b: *const u8, q: &mut [int8x16_t; 16]) {
    use GgmlType::*;
    let ld = |at: usize| vld1q_u8(b.add(at));
    match ty {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 => {
            let (qh, qs) = match ty {
                Q4_0 => (0, 2),
                Q4_1 => (0, 4),
                Q5_0 => ((b.add(2) as *const u32).read_unaligned(), 6),
                _ => ((b.add(4) as *const u32).read_unaligned(), 8),
            };
            let qh = u32::from_le(qh);
            let v = ld(qs);
            let (mut lo, mut hi) = (vandq_u8(v, vdupq_n_u8(0xF)), vshrq_n_u8::<4>(v));
            if matches!(ty, Q5_0 | Q5_1) {
                lo = vorrq_u8(lo, bit4(qh));
                hi = vorrq_u8(hi, bit4(qh >> 16));
            }
            let bias = legacy_bias(ty) as i8;
            q[0] = signed(lo, bias);
            q[1] = signed(hi, bias);
        }
        Q8_0 => {
            q[0] = vld1q_s8(b.add(2) as *const i8);
            q[1] = vld1q_s8(b.add(18) as *const i8);
        }
        MXFP4 => {
            let table = vld1q_s8(MXFP4_VALUES.as_ptr());
            let v = ld(1);
            q[0] = vqtbl1q_s8(table, vandq_u8(v, vdupq_n_u8(0xF)));
            q[1] = vqtbl1q_s8(table, vshrq_n_u8::<4>(v));
        }
        Q2_K | Q3_K => {
            // Value i: h = i/128, s = (i/32)%4, l = i%32; half j = i/16.
            let qs = if ty == Q2_K { 16 } else { 32 };
            for h in 0..2 {
                for l0 in [0, 16] {
                    let v = ld(qs + h * 32 + l0);
                    let hm = ld(l0); // Q3_K's high bits, bit h*4 + s of byte l
                    for s in 0..4 {
                        let lo = field(v, 2 * s as i8, 3);
                        q[h * 8 + s * 2 + l0 / 16] = if ty == Q2_K {
                            vreinterpretq_s8_u8(lo)
                        } else {
                            // lo - 4*(1 - hbit) = (lo | hbit << 2) - 4
                            let hb = vshlq_n_u8::<2>(field(hm, (h * 4 + s) as i8, 1));
                            signed(vorrq_u8(lo, hb), 4)
                        };
                    }
                }
            }
        }
        Q4_K | Q5_K => {
            let (qs, mid) = if ty == Q5_K { (48, 16) } else { (16, 8) };
            for j in 0..8 {
                for l0 in [0, 16] {
                    let mut v = field(ld(qs + (j / 2) * 32 + l0), 4 * (j % 2) as i8, 0xF);
                    if ty == Q5_K {
                        let hb = field(ld(16 + l0), j as i8, 1);
                        v = vorrq_u8(v, vshlq_n_u8::<4>(hb));
                    }
                    q[2 * j + l0 / 16] = signed(v, mid);
                }
            }
        }
        Q6_K => {
            // Value i = h*128 + r: low 4 bits at byte h*64 + r%64 (shift 4*(r/64)), high 2
            // bits at byte 128 + h*32 + r%32 (shift 2*(r/32)).
            for (j, qj) in q.iter_mut().enumerate() {
                let (h, r0) = (j / 8, (j % 8) * 16);
                let lo = field(ld(h * 64 + r0 % 64), 4 * (r0 / 64) as i8, 0xF);
                let hi = field(ld(128 + h * 32 + r0 % 32), 2 * (r0 / 32) as i8, 3);
                *qj = signed(vorrq_u8(lo, vshlq_n_u8::<4>(hi)), 32);
            }
        }
        _ => {}
    }
}

/// Four halves' terms (scale·d)·isum - (min·d)·asum, with `d` each half's activation scale.
#[inline(always)]
unsafe fn terms(
    scale: *const f32,
    min: *const f32,
    d: float32x4_t,
    isum: int32x4_t,
    asum: int32x4_t,
) -> float32x4_t {
    let t = vmulq_f32(vmulq_f32(vld1q_f32(scale), d), vcvtq_f32_s32(isum));
    let m = vmulq_f32(vmulq_f32(vld1q_f32(min), d), vcvtq_f32_s32(asum));
    vsubq_f32(t, m)
}

/// Σ over one decoded weight block of its halves · the activation blocks at `a`, summed as
/// scalar.rs sums them. `HAS_MIN`: types whose min is nonzero; the others (min = ±0) skip the
/// activation sums: (min·d)·0 is still NaN exactly when the scalar (min·d)·asum is (d not
/// finite), and otherwise ±0, which changes no nonzero sum and no sign of the result (the
/// output starts at +0).
#[inline(always)]
unsafe fn block_dot<const SDOT: bool, const HAS_MIN: bool>(
    blk: &Block,
    halves: usize,
    a: *const BlockQ8,
) -> f32 {
    let mut acc = 0.0f32;
    if halves == 2 {
        let x = [act(a, 0), act(a, 1)];
        let p = [dot16::<SDOT>(blk.q[0], x[0]), dot16::<SDOT>(blk.q[1], x[1])];
        // Lanes 2 and 3 repeat 0 and 1 and are not used.
        let t = terms(
            blk.scale.as_ptr(),
            blk.min.as_ptr(),
            vdupq_n_f32((*a).d),
            totals([p[0], p[1], p[0], p[1]]),
            asums::<HAS_MIN>([x[0], x[1], x[0], x[1]]),
        );
        acc += vgetq_lane_f32::<0>(t);
        acc += vgetq_lane_f32::<1>(t);
        return acc;
    }
    for g in (0..halves).step_by(4) {
        let x = [act(a, g), act(a, g + 1), act(a, g + 2), act(a, g + 3)];
        let p = [
            dot16::<SDOT>(blk.q[g], x[0]),
            dot16::<SDOT>(blk.q[g + 1], x[1]),
            dot16::<SDOT>(blk.q[g + 2], x[2]),
            dot16::<SDOT>(blk.q[g + 3], x[3]),
        ];
        let (a0, a1) = (&*a.add(g / 2), &*a.add(g / 2 + 1));
        let d = vcombine_f32(vdup_n_f32(a0.d), vdup_n_f32(a1.d));
        let t = terms(
            blk.scale.as_ptr().add(g),
            blk.min.as_ptr().add(g),
            d,
            totals(p),
            asums::<HAS_MIN>(x),
        );
        acc += vgetq_lane_f32::<0>(t);
        acc += vgetq_lane_f32::<1>(t);
        acc += vgetq_lane_f32::<2>(t);
        acc += vgetq_lane_f32::<3>(t);
    }
    acc
}

/// The 16 activations of half `h` (counted over the blocks at `a`).
#[inline(always)]
unsafe fn act(a: *const BlockQ8, h: usize) -> int8x16_t {
    vld1q_s8((*a.add(h / 2)).qs.as_ptr().add(16 * (h % 2)))
}

/// The activation sums of four halves (zeros for types without a min).
#[inline(always)]
unsafe fn asums<const HAS_MIN: bool>(x: [int8x16_t; 4]) -> int32x4_t {
    if HAS_MIN {
        totals([sum16(x[0]), sum16(x[1]), sum16(x[2]), sum16(x[3])])
    } else {
        vdupq_n_s32(0)
    }
}

/// `out[c]` = row · column c (columns of `nb` activation blocks, back to back), for type id
/// `T`. Sizes checked by the caller.
#[inline(always)]
unsafe fn run<const T: u32, const SDOT: bool>(
    row: &[u8],
    acts: &[BlockQ8],
    nb: usize,
    out: &mut [f32],
) {
    let Some(ty) = GgmlType::from_id(T) else {
        return;
    };
    let has_min = matches!(
        ty,
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q2_K | GgmlType::Q4_K | GgmlType::Q5_K
    );
    let halves = ty.block_size() / 16;
    let mut blk = Block {
        q: [vdupq_n_s8(0); 16],
        scale: [0.0; 16],
        min: [0.0; 16],
    };
    out.fill(0.0);
    for (wi, wb) in row.chunks_exact(ty.type_size()).enumerate() {
        decode(ty, wb.as_ptr(), &mut blk.q);
        half_scales(ty, wb, &mut blk.scale, &mut blk.min);
        for (c, o) in out.iter_mut().enumerate() {
            let a = acts.as_ptr().add(c * nb + wi * halves / 2);
            *o += if has_min {
                block_dot::<SDOT, true>(&blk, halves, a)
            } else {
                block_dot::<SDOT, false>(&blk, halves, a)
            };
        }
    }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn with_sdot<const T: u32>(row: &[u8], acts: &[BlockQ8], nb: usize, out: &mut [f32]) {
    run::<T, true>(row, acts, nb, out)
}

#[target_feature(enable = "neon")]
unsafe fn plain<const T: u32>(row: &[u8], acts: &[BlockQ8], nb: usize, out: &mut [f32]) {
    run::<T, false>(row, acts, nb, out)
}

type DotFn = unsafe fn(&[u8], &[BlockQ8], usize, &mut [f32]);

/// Fills the per-type kernel table of `level` (caller checked it is available): every type
/// the scalar path dots.
pub(crate) fn fill(level: SimdLevel, t: &mut [Option<DotFn>; 40]) {
    macro_rules! set {
        ($k:ident) => {{
            set!($k: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 MXFP4 Q2_K Q3_K Q4_K Q5_K Q6_K)
        }};
        ($k:ident: $($ty:ident)*) => {{
            $(t[GgmlType::$ty as usize] = Some($k::<{ GgmlType::$ty as u32 }>);)*
        }};
    }
    match level {
        SimdLevel::NeonDotprod => set!(with_sdot),
        SimdLevel::Neon => set!(plain),
        _ => {}
    }
}

/// Four f16 bit patterns → f32 (exact; `fcvtl` is base Advanced SIMD, but Rust's f16 vector
/// types are not stable yet, so one instruction of inline assembly).
#[inline(always)]
unsafe fn f16x4(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    std::arch::asm!(
        "fcvtl {o:v}.4s, {h:v}.4h",
        o = lateout(vreg) out,
        h = in(vreg) h,
        options(pure, nomem, nostack, preserves_flags),
    );
    out
}

/// F32/F16/BF16 row · f32 values (lengths checked by the caller), bit for bit as
/// scalar::dot_f32: its eight partial sums are two vectors here, each step a multiply then
/// an add, and the last partial chunk and the final sum are its own code.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_f32(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let whole = x.len() / 8 * 8;
    let ts = ty.type_size();
    let (rp, xp) = (row.as_ptr(), x.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 2];
    for i in (0..whole).step_by(8) {
        let p = rp.add(i * ts);
        let w = match ty {
            GgmlType::F32 => [0, 16].map(|at| vreinterpretq_f32_u8(vld1q_u8(p.add(at)))),
            GgmlType::F16 => {
                let h = vreinterpretq_u16_u8(vld1q_u8(p));
                [f16x4(vget_low_u16(h)), f16x4(vget_high_u16(h))]
            }
            _ => {
                // BF16: the upper half of an f32.
                let h = vreinterpretq_u16_u8(vld1q_u8(p));
                [
                    vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
                    vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
                ]
            }
        };
        for k in 0..2 {
            acc[k] = vaddq_f32(acc[k], vmulq_f32(w[k], vld1q_f32(xp.add(i + 4 * k))));
        }
    }
    let mut sums = [0.0f32; 8];
    vst1q_f32(sums.as_mut_ptr(), acc[0]);
    vst1q_f32(sums.as_mut_ptr().add(4), acc[1]);
    dot_f32_from(ty, &row[whole * ts..], &x[whole..], sums)
}
