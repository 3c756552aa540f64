//! x86-64 SIMD dot-product kernels. One set of kernels is written once (macro `kernels!`) and
//! compiled for each level with its own target features and byte-product primitive:
//!   AVX2:      pmaddubsw + pmaddwd  (u8 × i8 → i32 per 4 bytes; no saturation for |w| <= 128
//!              since 2*128*127 < 32767)
//!   AVX-VNNI / AVX-512 VNNI: vpdpbusd.
//! Weights are decoded per block to unsigned (or sign-folded) bytes; the integer dot of each
//! 32-value chunk is exact in i32 lanes, converted to f32 and scaled by weight scale × act d.
//! Every kernel takes N columns (const) so vec_dot_multi decodes a weight block once for N
//! activation vectors.

// The AVX-512 and AVX-VNNI intrinsics are stable since Rust 1.89 (the crate's declared MSRV
// is older; building this module needs 1.89).
#![allow(clippy::incompatible_msrv)]

use super::dot::{BlockQ8, SimdLevel};
use super::GgmlType;
use std::arch::x86_64::*;

macro_rules! dot_maddubs {
    ($acc:expr, $w:expr, $a:expr) => {
        _mm256_add_epi32(
            $acc,
            _mm256_madd_epi16(_mm256_maddubs_epi16($w, $a), _mm256_set1_epi16(1)),
        )
    };
}
macro_rules! dot_avxvnni {
    ($acc:expr, $w:expr, $a:expr) => {
        _mm256_dpbusd_avx_epi32($acc, $w, $a)
    };
}
macro_rules! dot_vnni512 {
    ($acc:expr, $w:expr, $a:expr) => {
        _mm256_dpbusd_epi32($acc, $w, $a)
    };
}
/// 32 bits → 32 bytes, 0xFF where the bit is set (AVX2: byte shuffle + bit test).
macro_rules! bits_avx2 {
    ($bits:expr) => {{
        let v = _mm256_shuffle_epi8(
            _mm256_set1_epi32($bits as i32),
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            ),
        );
        let bm = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(v, bm), bm)
    }};
}
/// The same with AVX-512BW/VL: one mask-to-vector instruction.
macro_rules! bits_avx512 {
    ($bits:expr) => {
        _mm256_movm_epi8($bits as __mmask32)
    };
}

macro_rules! kernels {
    ($modname:ident, $feat:literal, $dotm:ident, $bitsm:ident, $cols:literal) => {
        pub(crate) mod $modname {
            #![allow(clippy::missing_safety_doc, unused_unsafe)]
            use super::super::dot::BlockQ8;
            use std::arch::x86_64::*;

            /// Columns processed together by vec_dot_multi (accumulators must fit the
            /// register file: 16 ymm with AVX2, 32 with AVX-512).
            const COLS: usize = $cols;

            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
                $dotm!(acc, w, a)
            }
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn bits(b: u32) -> __m256i {
                $bitsm!(b)
            }
            /// f16 at p (unaligned).
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn f16(p: *const u8) -> f32 {
                let h = (p as *const u16).read_unaligned();
                _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
            }
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
            }
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn act(b: &BlockQ8) -> __m256i {
                _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i)
            }
            /// 16 bytes of nibbles → 32 bytes: low nibbles (values 0..16), then high ones.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn nibbles16(p: *const u8) -> __m256i {
                let q = _mm_loadu_si128(p as *const __m128i);
                let v = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
                _mm256_and_si256(v, _mm256_set1_epi8(0xF))
            }
            /// Σ over 32 values of (signed w) × a: |w| times a with w's sign moved onto a.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn dot_signed(wabs: __m256i, w: __m256i, a: __m256i) -> __m256i {
                dot(_mm256_setzero_si256(), wabs, _mm256_sign_epi8(a, w))
            }

            /// Runs kernel `$k` over all columns, COLS at a time, then one at a time.
            macro_rules! drive {
                ($name:ident, $k:ident) => {
                    #[target_feature(enable = $feat)]
                    pub(crate) unsafe fn $name(
                        row: &[u8],
                        acts: &[BlockQ8],
                        nb: usize,
                        out: &mut [f32],
                    ) {
                        let n = out.len();
                        let mut c = 0;
                        while c + COLS <= n {
                            $k::<COLS>(
                                row.as_ptr(),
                                acts.as_ptr().add(c * nb),
                                nb,
                                &mut out[c..c + COLS],
                            );
                            c += COLS;
                        }
                        while c < n {
                            $k::<1>(
                                row.as_ptr(),
                                acts.as_ptr().add(c * nb),
                                nb,
                                &mut out[c..c + 1],
                            );
                            c += 1;
                        }
                    }
                };
            }

            /// Q4_0 / Q4_1 / Q5_0 / Q5_1: one 32-value block per activation block.
            /// Quants are centred (q - mid, mid = 8 or 16) and dotted signed, so the integer
            /// part carries no large offset: w = d*(q - mid) + (m + mid*d), and the small
            /// remaining offset (zero for Q4_0/Q5_0) goes through the activation sums s.
            /// Splitting w = d*q + m instead would make two large sums that cancel, losing
            /// f32 precision on activations with outliers.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn legacy<
                const N: usize,
                const TS: usize,
                const HAS_M: bool,
                const HAS_H: bool,
            >(
                rp: *const u8,
                ap: *const BlockQ8,
                nb: usize,
                out: &mut [f32],
                mid: i8,
            ) {
                let mut acc = [_mm256_setzero_ps(); N];
                let mut off = [0.0f32; N];
                for i in 0..nb {
                    let p = rp.add(i * TS);
                    let d = f16(p);
                    let o = if HAS_M { 4 } else { 2 };
                    let mut w;
                    if HAS_H {
                        let qh = (p.add(o) as *const u32).read_unaligned();
                        w = nibbles16(p.add(o + 4));
                        w = _mm256_or_si256(w, _mm256_and_si256(bits(qh), _mm256_set1_epi8(0x10)));
                    } else {
                        w = nibbles16(p.add(o));
                    }
                    let w = _mm256_sub_epi8(w, _mm256_set1_epi8(mid));
                    let wabs = _mm256_abs_epi8(w);
                    let m = if HAS_M {
                        f16(p.add(2)) + mid as f32 * d
                    } else {
                        0.0
                    };
                    let dv = _mm256_set1_ps(d);
                    for c in 0..N {
                        let b = &*ap.add(c * nb + i);
                        let s = dot_signed(wabs, w, act(b));
                        let t = _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(b.d));
                        acc[c] = _mm256_fmadd_ps(t, dv, acc[c]);
                        if HAS_M {
                            off[c] = m.mul_add(b.s, off[c]);
                        }
                    }
                }
                for c in 0..N {
                    out[c] = hsum(acc[c]) + off[c];
                }
            }
            #[target_feature(enable = $feat)]
            unsafe fn k_q4_0<const N: usize>(
                rp: *const u8,
                ap: *const BlockQ8,
                nb: usize,
                out: &mut [f32],
            ) {
                legacy::<N, 18, false, false>(rp, ap, nb, out, 8)
            }
            #[target_feature(enable = $feat)]
            unsafe fn k_q4_1<const N: usize>(
                rp: *const u8,
                ap: *const BlockQ8,
                nb: usize,
                out: &mut [f32],
            ) {
                legacy::<N, 20, true, false>(rp, ap, nb, out, 8)
            }
            #[target_feature(enable = $feat)]
            unsafe fn k_q5_0<const N: usize>(
                rp: *const u8,
                ap: *const BlockQ8,
                nb: usize,
                out: &mut [f32],
            ) {
                legacy::<N, 22, false, true>(rp, ap, nb, out, 16)
            }
            #[target_feature(enable = $feat)]
            unsafe fn k_q5_1<const N: usize>(
                rp: *const u8,
                ap: *const BlockQ8,
                nb: usize,
                out: &mut [f32],
            ) {
                legacy::<N, 24, true, true>(rp, ap, nb, out, 16)
            }
            drive!(q4_0, k_q4_0);
            drive!(q4_1, k_q4_1);
            drive!(q5_0, k_q5_0);
            drive!(q5_1, k_q5_1);

            /// Q8_0 and MXFP4: one 32-value block of signed weights per activation block, the
            /// sign moved onto the activations. Q8_0: an f16 scale, then 32 bytes. MXFP4: an
            /// E8M0 exponent (a power-of-two scale), then 16 bytes of E2M1 codes, each looked
            /// up as its doubled value (-12..12) by a byte shuffle.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn signed_block<const N: usize, const MX: bool>(
                rp: *const u8,
                ap: *const BlockQ8,
                nb: usize,
                out: &mut [f32],
            ) {
                let mut acc = [_mm256_setzero_ps(); N];
                let t = &super::super::MXFP4_VALUES;
                let table =
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(t.as_ptr() as *const __m128i));
                for i in 0..nb {
                    let (d, w) = if MX {
                        let p = rp.add(i * 17);
                        (
                            super::super::e8m0_half(*p),
                            _mm256_shuffle_epi8(table, nibbles16(p.add(1))),
                        )
                    } else {
                        let p = rp.add(i * 34);
                        (f16(p), _mm256_loadu_si256(p.add(2) as *const __m256i))
                    };
                    let wabs = _mm256_abs_epi8(w);
                    let dv = _mm256_set1_ps(d);
                    for c in 0..N {
                        let b = &*ap.add(c * nb + i);
                        let s = dot_signed(wabs, w, act(b));
                        let t = _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(b.d));
                        acc[c] = _mm256_fmadd_ps(t, dv, acc[c]);
                    }
                }
                for c in 0..N {
                    out[c] = hsum(acc[c]);
                }
            }
            #[target_feature(enable = $feat)]
            unsafe fn k_q8_0<const N: usize>(
                rp: *const u8,
                ap: *const BlockQ8,
                nb: usize,
                out: &mut [f32],
            ) {
                signed_block::<N, false>(rp, ap, nb, out)
            }
            #[target_feature(enable = $feat)]
            unsafe fn k_mxfp4<const N: usize>(
                rp: *const u8,
                ap: *const BlockQ8,
                nb: usize,
                out: &mut [f32],
            ) {
                signed_block::<N, true>(rp, ap, nb, out)
            }
            drive!(q8_0, k_q8_0);
            drive!(mxfp4, k_mxfp4);

            /// Q4_K / Q5_K: 8 sub-blocks of 32 with 6-bit scale and min. As in `legacy`, quants
            /// are centred (q - mid) and dotted signed; the per-sub-block offset
            /// mid*scale - min goes through the activation sums s.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn kquant<const N: usize, const Q5: bool>(
                rp: *const u8,
                ap: *const BlockQ8,
                nb: usize,
                out: &mut [f32],
            ) {
                const TS: [usize; 2] = [144, 176];
                let ts = TS[Q5 as usize];
                let qs_off = if Q5 { 48 } else { 16 };
                let mut acc0 = [_mm256_setzero_ps(); N];
                let mut acc1 = [_mm256_setzero_ps(); N];
                let mut off = [0.0f32; N];
                let m4 = _mm256_set1_epi8(0xF);
                for i in 0..nb / 8 {
                    let p = rp.add(i * ts);
                    let d = f16(p);
                    let dmin = f16(p.add(2));
                    let s = std::slice::from_raw_parts(p.add(4), 12);
                    let mid = if Q5 { 16i8 } else { 8 };
                    let mut sc = [0f32; 8];
                    let mut offc = [0f32; 8];
                    for j in 0..8 {
                        let (a, b) = super::super::k_scale_min(s, j);
                        sc[j] = d * a as f32;
                        offc[j] = (mid as f32).mul_add(sc[j], -(dmin * b as f32));
                    }
                    for c in 0..N {
                        let bs = ap.add(c * nb + i * 8);
                        let mut t = 0.0f32;
                        for j in 0..8 {
                            t = offc[j].mul_add((*bs.add(j)).s, t);
                        }
                        off[c] += t;
                    }
                    let qh = if Q5 {
                        _mm256_loadu_si256(p.add(16) as *const __m256i)
                    } else {
                        _mm256_setzero_si256()
                    };
                    for g in 0..4 {
                        let q = _mm256_loadu_si256(p.add(qs_off + 32 * g) as *const __m256i);
                        let mut lo = _mm256_and_si256(q, m4);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                        if Q5 {
                            let b0 = _mm256_set1_epi8(1 << (2 * g));
                            let b1 = _mm256_set1_epi8(2 << (2 * g));
                            let h16 = _mm256_set1_epi8(0x10);
                            lo = _mm256_or_si256(
                                lo,
                                _mm256_and_si256(
                                    _mm256_cmpeq_epi8(_mm256_and_si256(qh, b0), b0),
                                    h16,
                                ),
                            );
                            hi = _mm256_or_si256(
                                hi,
                                _mm256_and_si256(
                                    _mm256_cmpeq_epi8(_mm256_and_si256(qh, b1), b1),
                                    h16,
                                ),
                            );
                        }
                        let lo = _mm256_sub_epi8(lo, _mm256_set1_epi8(mid));
                        let hi = _mm256_sub_epi8(hi, _mm256_set1_epi8(mid));
                        let (labs, habs) = (_mm256_abs_epi8(lo), _mm256_abs_epi8(hi));
                        let (d0, d1) = (_mm256_set1_ps(sc[2 * g]), _mm256_set1_ps(sc[2 * g + 1]));
                        for c in 0..N {
                            let b0 = &*ap.add(c * nb + i * 8 + 2 * g);
                            let b1 = &*ap.add(c * nb + i * 8 + 2 * g + 1);
                            let s0 = dot_signed(labs, lo, act(b0));
                            let s1 = dot_signed(habs, hi, act(b1));
                            let t0 = _mm256_mul_ps(_mm256_cvtepi32_ps(s0), _mm256_set1_ps(b0.d));
                            let t1 = _mm256_mul_ps(_mm256_cvtepi32_ps(s1), _mm256_set1_ps(b1.d));
                            acc0[c] = _mm256_fmadd_ps(t0, d0, acc0[c]);
                            acc1[c] = _mm256_fmadd_ps(t1, d1, acc1[c]);
                        }
                    }
                }
                for c in 0..N {
                    out[c] = hsum(_mm256_add_ps(acc0[c], acc1[c])) + off[c];
                }
            }
            #[target_feature(enable = $feat)]
            unsafe fn k_q4_k<const N: usize>(
                rp: *const u8,
                ap: *const BlockQ8,
                nb: usize,
                out: &mut [f32],
            ) {
                kquant::<N, false>(rp, ap, nb, out)
            }
            #[target_feature(enable = $feat)]
            unsafe fn k_q5_k<const N: usize>(
                rp: *const u8,
                ap: *const BlockQ8,
                nb: usize,
                out: &mut [f32],
            ) {
                kquant::<N, true>(rp, ap, nb, out)
            }
            drive!(q4_k, k_q4_k);
            drive!(q5_k, k_q5_k);

            /// Q6_K: 6-bit q - 32 (signed, sign moved onto the activations), i8 scale per 16
            /// values: lanes 0..4 of a chunk's dot cover its first 16 values, lanes 4..8 the rest.
            #[target_feature(enable = $feat)]
            unsafe fn k_q6_k<const N: usize>(
                rp: *const u8,
                ap: *const BlockQ8,
                nb: usize,
                out: &mut [f32],
            ) {
                let mut acc = [[_mm256_setzero_ps(); N]; 2];
                let m4 = _mm256_set1_epi8(0xF);
                let m30 = _mm256_set1_epi8(0x30);
                let k32 = _mm256_set1_epi8(32);
                for i in 0..nb / 8 {
                    let p = rp.add(i * 210);
                    let d = f16(p.add(208));
                    for h in 0..2 {
                        let qla = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
                        let qlb = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
                        let qhv = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
                        let ws = [
                            _mm256_or_si256(
                                _mm256_and_si256(qla, m4),
                                _mm256_and_si256(_mm256_slli_epi16(qhv, 4), m30),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(qlb, m4),
                                _mm256_and_si256(_mm256_slli_epi16(qhv, 2), m30),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(qla, 4), m4),
                                _mm256_and_si256(qhv, m30),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(qlb, 4), m4),
                                _mm256_and_si256(_mm256_srli_epi16(qhv, 2), m30),
                            ),
                        ];
                        for k in 0..4 {
                            let ch = 4 * h + k;
                            let w = _mm256_sub_epi8(ws[k], k32);
                            let wabs = _mm256_abs_epi8(w);
                            let s0 = d * (*p.add(192 + 2 * ch) as i8) as f32;
                            let s1 = d * (*p.add(193 + 2 * ch) as i8) as f32;
                            let sv = _mm256_set_m128(_mm_set1_ps(s1), _mm_set1_ps(s0));
                            for c in 0..N {
                                let b = &*ap.add(c * nb + i * 8 + ch);
                                let s = dot_signed(wabs, w, act(b));
                                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(b.d));
                                acc[k & 1][c] = _mm256_fmadd_ps(t, sv, acc[k & 1][c]);
                            }
                        }
                    }
                }
                for c in 0..N {
                    out[c] = hsum(_mm256_add_ps(acc[0][c], acc[1][c]));
                }
            }
            drive!(q6_k, k_q6_k);
        }
    };
}

kernels!(avx2, "avx2,fma,f16c", dot_maddubs, bits_avx2, 4);
kernels!(avxvnni, "avx2,fma,f16c,avxvnni", dot_avxvnni, bits_avx2, 4);
kernels!(
    avx512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    dot_vnni512,
    bits_avx512,
    8
);

type DotFn = unsafe fn(&[u8], &[BlockQ8], usize, &mut [f32]);

/// Fills the per-type kernel table of `level` (caller checked it is available).
pub(crate) fn fill(level: SimdLevel, t: &mut [Option<DotFn>; 40]) {
    use GgmlType::*;
    macro_rules! set {
        ($m:ident) => {{
            t[Q4_0 as usize] = Some($m::q4_0);
            t[Q4_1 as usize] = Some($m::q4_1);
            t[Q5_0 as usize] = Some($m::q5_0);
            t[Q5_1 as usize] = Some($m::q5_1);
            t[Q8_0 as usize] = Some($m::q8_0);
            t[MXFP4 as usize] = Some($m::mxfp4);
            t[Q4_K as usize] = Some($m::q4_k);
            t[Q5_K as usize] = Some($m::q5_k);
            t[Q6_K as usize] = Some($m::q6_k);
        }};
    }
    match level {
        SimdLevel::Scalar => {}
        SimdLevel::Avx2 => set!(avx2),
        SimdLevel::Avx2Vnni => set!(avxvnni),
        SimdLevel::Avx512 => set!(avx512),
        SimdLevel::Neon | SimdLevel::NeonDotprod => {}
    }
}

/// F32/F16/BF16 row · f32 values with AVX2/FMA/F16C, 2×8 f32 accumulators.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f32(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let (rp, xp) = (row.as_ptr(), x.as_ptr());
    let load = |i: usize| -> __m256 {
        match ty {
            GgmlType::F32 => _mm256_loadu_ps(rp.add(4 * i) as *const f32),
            GgmlType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(rp.add(2 * i) as *const __m128i)),
            _ => _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(rp.add(2 * i) as *const __m128i)),
                16,
            )),
        }
    };
    let mut a0 = _mm256_setzero_ps();
    let mut a1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        a0 = _mm256_fmadd_ps(load(i), _mm256_loadu_ps(xp.add(i)), a0);
        a1 = _mm256_fmadd_ps(load(i + 8), _mm256_loadu_ps(xp.add(i + 8)), a1);
        i += 16;
    }
    let v = _mm256_add_ps(a0, a1);
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let mut sum = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
    let tail = &row[i * ty.type_size()..];
    sum += super::scalar::dot_f32(ty, tail, &x[i..]);
    sum
}

/// AVX-512 VNNI kernels on 16-bit activations, two 32-value blocks (one 64-byte chunk) per
/// instruction, several rows and columns per pass.
///
/// Activations: per 32-value block, Y = round(x/d) with d = max|x|/32767 (error <= d/2, the
/// same as or below two 8-bit passes' d_hi/508), stored as two byte planes: hi = (Y >> 8) + 128
/// (unsigned) and lo = Y & 255, so Y = 256*(hi - 128) + lo exactly. Weights are decoded to
/// centred signed bytes w. Per 4-value lane, vpdpbusd (u8 × i8) gives
///   t = ((-128·Σw + Σ hi·w) << 8) + Σ lo·w = Σ Y·w
/// exactly in i32 (|Σ (hi-128)·w| <= 4·128·128, shifted: < 2^24). The `-128·Σw` start value
/// depends only on the weights, so it is made once per weight chunk, not per column. Each
/// lane is then scaled by d_w × d_a of its block in f32 (lanes 0..8: first block, 8..16:
/// second; Q6_K: 4 lanes per 16-value scale).
pub(crate) mod wide {
    // Kernel loops index several per-row/per-column arrays with the same counters.
    #![allow(
        clippy::missing_safety_doc,
        clippy::needless_range_loop,
        clippy::too_many_arguments
    )]
    use super::super::GgmlType;
    use std::arch::x86_64::*;

    /// 64 activations (two blocks) at 16 bits, split into byte planes; `d` is each block's
    /// scale repeated over its 8 lanes.
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    pub(crate) struct AChunk {
        pub hi: [u8; 64],
        pub lo: [u8; 64],
        pub d: [f32; 16],
    }
    impl Default for AChunk {
        fn default() -> Self {
            AChunk {
                hi: [128; 64],
                lo: [0; 64],
                d: [0.0; 16],
            }
        }
    }

    /// Quantizes one column of `64*out.len()` values; `sums[b]` = d_b·ΣY over block b (the
    /// activation sum the weight offsets multiply).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn quantize(x: &[f32], out: &mut [AChunk], sums: &mut [f32]) {
        debug_assert!(x.len() == out.len() * 64 && sums.len() == out.len() * 2);
        let lim = _mm512_set1_epi32(32767);
        let nlim = _mm512_set1_epi32(-32767);
        let k128 = _mm512_set1_epi32(128);
        for (ci, ch) in out.iter_mut().enumerate() {
            for b in 0..2 {
                let p = x.as_ptr().add(ci * 64 + b * 32);
                let v0 = _mm512_loadu_ps(p);
                let v1 = _mm512_loadu_ps(p.add(16));
                let amax =
                    _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
                let d = amax / 32767.0;
                let id = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
                let mut ysum = _mm512_setzero_si512();
                for (h, v) in [v0, v1].into_iter().enumerate() {
                    // |v/d| <= 32767 up to one rounding; the clamp also catches NaN's
                    // integer indefinite value.
                    let y = _mm512_cvtps_epi32(_mm512_mul_ps(v, id));
                    let y = _mm512_max_epi32(_mm512_min_epi32(y, lim), nlim);
                    ysum = _mm512_add_epi32(ysum, y);
                    let hi = _mm512_add_epi32(_mm512_srai_epi32(y, 8), k128);
                    let at = b * 32 + h * 16;
                    _mm_storeu_si128(
                        ch.hi.as_mut_ptr().add(at) as *mut __m128i,
                        _mm512_cvtepi32_epi8(hi),
                    );
                    _mm_storeu_si128(
                        ch.lo.as_mut_ptr().add(at) as *mut __m128i,
                        _mm512_cvtepi32_epi8(y),
                    );
                }
                ch.d[b * 8..b * 8 + 8].fill(d);
                sums[ci * 2 + b] = d * _mm512_reduce_add_epi32(ysum) as f32;
            }
        }
    }

    /// 128 activations (four blocks) at 16 bits for the prompt tile, laid out for vpdpwssd:
    /// vector m (0..4) holds in its 128-bit lane b the values 8m..8m+8 of block b, so every
    /// 32-bit lane of the product sums stays within one block across the four vectors and
    /// one float scale per lane serves 128 values. `d`: block b's scale on lanes 4b..4b+4.
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    pub(crate) struct PChunk {
        pub y: [i16; 128],
        pub d: [f32; 16],
    }
    impl Default for PChunk {
        fn default() -> Self {
            PChunk {
                y: [0; 128],
                d: [0.0; 16],
            }
        }
    }

    /// [`quantize`] into the prompt layout: `x.len()` = 64·`sums.len()`/2, `out` holds
    /// x.len()/128 chunks rounded up (a last half chunk keeps zeros in blocks 2 and 3).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn quantize_tile(x: &[f32], out: &mut [PChunk], sums: &mut [f32]) {
        let nb = x.len() / 32;
        debug_assert!(x.len() % 64 == 0 && out.len() == nb.div_ceil(4) && sums.len() == nb);
        let lim = _mm512_set1_epi32(32767);
        let nlim = _mm512_set1_epi32(-32767);
        if nb % 4 != 0 {
            *out.last_mut().unwrap() = PChunk::default();
        }
        for blk in 0..nb {
            let (ch, b) = (&mut out[blk / 4], blk % 4);
            let p = x.as_ptr().add(blk * 32);
            let v0 = _mm512_loadu_ps(p);
            let v1 = _mm512_loadu_ps(p.add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            let d = amax / 32767.0;
            let id = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let mut ysum = _mm512_setzero_si512();
            for (h, v) in [v0, v1].into_iter().enumerate() {
                // As in `quantize`: the clamp only guards rounding and NaN.
                let y = _mm512_cvtps_epi32(_mm512_mul_ps(v, id));
                let y = _mm512_max_epi32(_mm512_min_epi32(y, lim), nlim);
                ysum = _mm512_add_epi32(ysum, y);
                let y16 = _mm512_cvtepi32_epi16(y); // values 16h..16h+16
                let yp = ch.y.as_mut_ptr();
                _mm_storeu_si128(
                    yp.add(32 * (2 * h) + 8 * b) as *mut __m128i,
                    _mm256_castsi256_si128(y16),
                );
                _mm_storeu_si128(
                    yp.add(32 * (2 * h + 1) + 8 * b) as *mut __m128i,
                    _mm256_extracti128_si256(y16, 1),
                );
            }
            ch.d[4 * b..4 * b + 4].fill(d);
            sums[blk] = d * _mm512_reduce_add_epi32(ysum) as f32;
        }
    }

    /// Type ids for the const-generic decoder.
    const Q4_0: u8 = 0;
    const Q4_1: u8 = 1;
    const Q5_0: u8 = 2;
    const Q5_1: u8 = 3;
    const Q8_0: u8 = 4;
    const Q4_K: u8 = 5;
    const Q5_K: u8 = 6;
    const Q6_K: u8 = 7;
    const MXFP4: u8 = 8;

    const fn has_off(t: u8) -> bool {
        matches!(t, Q4_1 | Q5_1 | Q4_K | Q5_K)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn f16(p: *const u8) -> f32 {
        let h = (p as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    }
    /// [a ×8, b ×8].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn two(a: f32, b: f32) -> __m512 {
        _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b))
    }
    /// 16 bytes at p0 and at p1 → their 64 nibbles in value order: p0's low nibbles, p0's
    /// high nibbles, then p1's.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn nibbles2(p0: *const u8, p1: *const u8) -> __m512i {
        let q = _mm512_broadcast_i32x4(_mm_loadu_si128(p0 as *const __m128i));
        let q = _mm512_mask_broadcast_i32x4(q, 0xFF00, _mm_loadu_si128(p1 as *const __m128i));
        let q = _mm512_mask_srli_epi16(q, 0xFF00_FF00, q, 4);
        _mm512_and_si512(q, _mm512_set1_epi8(0xF))
    }

    /// Chunks per group: a K-quant super-block holds 4, the legacy formats are taken one
    /// chunk (two blocks) at a time.
    const fn group(t: u8) -> usize {
        if matches!(t, Q4_K | Q5_K | Q6_K) {
            4
        } else {
            1
        }
    }

    /// Bytes of one group (see `group`).
    const fn group_bytes(t: u8) -> usize {
        match t {
            Q4_0 => 36,
            Q4_1 => 40,
            Q5_0 => 44,
            Q5_1 => 48,
            Q8_0 => 68,
            MXFP4 => 34,
            Q4_K => 144,
            Q5_K => 176,
            _ => 210,
        }
    }

    /// How far ahead (bytes) the decode kernel prefetches its row. 2 KiB: decoding Qwen2.5
    /// 0.5B read 26.5 t/s with 1 KiB and 28.9 with 2 KiB (medians of 5 alternations at load
    /// 7 on 2 cores, 2026-12-06; 4 KiB no better than 2), more reads in flight per core.
    const PF_AHEAD: usize = 2048;

    /// Per super-block values decoded once for its 4 chunks: K-quant sub-block scales and
    /// offsets (Q6_K: d in s[0]).
    #[derive(Clone, Copy, Default)]
    struct Pre {
        s: [f32; 8],
        o: [f32; 8],
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn prep<const T: u8>(row: *const u8, sb: usize) -> Pre {
        let mut pre = Pre::default();
        match T {
            Q4_K | Q5_K => {
                let p = row.add(sb * if T == Q5_K { 176 } else { 144 });
                let (d, dmin) = (f16(p), f16(p.add(2)));
                let sc: [u8; 12] = (p.add(4) as *const [u8; 12]).read_unaligned();
                let mid = if T == Q5_K { 16.0f32 } else { 8.0 };
                for j in 0..8 {
                    let (a, m) = super::super::k_scale_min(&sc, j);
                    pre.s[j] = d * a as f32;
                    pre.o[j] = mid.mul_add(pre.s[j], -(dmin * m as f32));
                }
            }
            Q6_K => pre.s[0] = f16(row.add(sb * 210 + 208)),
            _ => {}
        }
        pre
    }

    /// Chunk g of group sb of a row (values 64k..64k+64 with k = sb*group + g): centred
    /// weights, lane scales, and for types with an offset the per-block offsets
    /// (w = scale·q + offset).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn decode<const T: u8>(
        row: *const u8,
        sb: usize,
        g: usize,
        pre: &Pre,
    ) -> (__m512i, __m512, [f32; 2]) {
        let k = sb;
        match T {
            Q4_0 | Q4_1 | Q5_0 | Q5_1 => {
                let (ts, qh_at, qs_at) = match T {
                    Q4_0 => (18, 0, 2),
                    Q4_1 => (20, 0, 4),
                    Q5_0 => (22, 2, 6),
                    _ => (24, 4, 8),
                };
                let p0 = row.add(2 * k * ts);
                let p1 = p0.add(ts);
                let nib = nibbles2(p0.add(qs_at), p1.add(qs_at));
                let (d0, d1) = (f16(p0), f16(p1));
                let mid: f32 = if matches!(T, Q5_0 | Q5_1) { 16.0 } else { 8.0 };
                let w = if matches!(T, Q5_0 | Q5_1) {
                    let h0 = (p0.add(qh_at) as *const u32).read_unaligned() as u64;
                    let h1 = (p1.add(qh_at) as *const u32).read_unaligned() as u64;
                    // q = nib | bit<<4, centred q - 16: nib where the bit is set, else nib - 16.
                    _mm512_mask_sub_epi8(nib, !(h0 | h1 << 32), nib, _mm512_set1_epi8(16))
                } else {
                    _mm512_sub_epi8(nib, _mm512_set1_epi8(8))
                };
                let off = if has_off(T) {
                    [
                        mid.mul_add(d0, f16(p0.add(2))),
                        mid.mul_add(d1, f16(p1.add(2))),
                    ]
                } else {
                    [0.0; 2]
                };
                (w, two(d0, d1), off)
            }
            Q8_0 => {
                let p0 = row.add(2 * k * 34);
                let p1 = p0.add(34);
                let w = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256(p0.add(2) as *const __m256i)),
                    _mm256_loadu_si256(p1.add(2) as *const __m256i),
                    1,
                );
                (w, two(f16(p0), f16(p1)), [0.0; 2])
            }
            MXFP4 => {
                // Exponent byte, then 16 bytes of codes; each code's doubled E2M1 value by a
                // byte shuffle (the table repeated in every 128-bit lane).
                let p0 = row.add(2 * k * 17);
                let p1 = p0.add(17);
                let t = &super::super::MXFP4_VALUES;
                let table = _mm512_broadcast_i32x4(_mm_loadu_si128(t.as_ptr() as *const __m128i));
                let w = _mm512_shuffle_epi8(table, nibbles2(p0.add(1), p1.add(1)));
                let e8 = super::super::e8m0_half;
                (w, two(e8(*p0), e8(*p1)), [0.0; 2])
            }
            Q4_K | Q5_K => {
                let q5 = T == Q5_K;
                let p = row.add(sb * if q5 { 176 } else { 144 });
                let qs = p.add(if q5 { 48 } else { 16 } + 32 * g);
                let q = _mm512_broadcast_i64x4(_mm256_loadu_si256(qs as *const __m256i));
                let q = _mm512_mask_srli_epi16(q, 0xFFFF_0000, q, 4);
                let nib = _mm512_and_si512(q, _mm512_set1_epi8(0xF));
                let w = if q5 {
                    let qh =
                        _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(16) as *const __m256i));
                    let sel = _mm512_mask_blend_epi8(
                        0xFFFF_FFFF_0000_0000,
                        _mm512_set1_epi8((1u8 << (2 * g)) as i8),
                        _mm512_set1_epi8((2u8 << (2 * g)) as i8),
                    );
                    let bit = _mm512_test_epi8_mask(qh, sel);
                    _mm512_mask_sub_epi8(nib, !bit, nib, _mm512_set1_epi8(16))
                } else {
                    _mm512_sub_epi8(nib, _mm512_set1_epi8(8))
                };
                let dw = two(pre.s[2 * g], pre.s[2 * g + 1]);
                (w, dw, [pre.o[2 * g], pre.o[2 * g + 1]])
            }
            _ => {
                // Q6_K: chunk c of the super-block is half h = c/2, quarter pair j = c%2.
                let (h, j) = (g / 2, g % 2);
                let p = row.add(sb * 210);
                let ql = _mm512_loadu_si512(p.add(64 * h) as *const __m512i);
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    p.add(128 + 32 * h) as *const __m256i
                ));
                let m4 = _mm512_set1_epi8(0xF);
                let (lo, hb) = if j == 0 {
                    let cnt = _mm512_mask_blend_epi16(
                        0xFFFF_0000,
                        _mm512_set1_epi16(4),
                        _mm512_set1_epi16(2),
                    );
                    (_mm512_and_si512(ql, m4), _mm512_sllv_epi16(qh, cnt))
                } else {
                    let cnt = _mm512_mask_blend_epi16(
                        0xFFFF_0000,
                        _mm512_set1_epi16(0),
                        _mm512_set1_epi16(2),
                    );
                    (
                        _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                        _mm512_srlv_epi16(qh, cnt),
                    )
                };
                let q = _mm512_or_si512(lo, _mm512_and_si512(hb, _mm512_set1_epi8(0x30)));
                let w = _mm512_sub_epi8(q, _mm512_set1_epi8(32));
                let d = pre.s[0];
                let sc4 = (p.add(192 + 8 * h + 4 * j) as *const u32).read_unaligned();
                let sc = _mm_cvtepi32_ps(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(sc4 as i32)));
                let sc = _mm_mul_ps(sc, _mm_set1_ps(d));
                let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
                let dw = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(sc));
                (w, dw, [0.0; 2])
            }
        }
    }

    /// -128·Σw per lane (the start value that cancels the +128 bias of the hi plane).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn negc(w: __m512i) -> __m512i {
        let z = _mm512_setzero_si512();
        _mm512_sub_epi32(z, _mm512_dpbusd_epi32(z, _mm512_set1_epi8(-128), w))
    }

    /// Σ Y·w per lane as f32 scaled by the lanes' d_w·d_a, added to acc.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn step(
        acc: __m512,
        w: __m512i,
        negc: __m512i,
        dw: __m512,
        a: &AChunk,
        shl8: __m512i,
    ) -> __m512 {
        let hi = _mm512_load_si512(a.hi.as_ptr() as *const __m512i);
        let lo = _mm512_load_si512(a.lo.as_ptr() as *const __m512i);
        let t = _mm512_dpbusd_epi32(negc, hi, w);
        // << 8 per 32-bit lane as a byte shuffle (port 5, leaving port 0 to vpdpbusd).
        let t = _mm512_shuffle_epi8(t, shl8);
        let t = _mm512_dpbusd_epi32(t, lo, w);
        let s = _mm512_mul_ps(dw, _mm512_load_ps(a.d.as_ptr()));
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), s, acc)
    }

    /// Shuffle indices for << 8 per 32-bit lane: bytes [zero, b0, b1, b2] (an index with the
    /// top bit set gives 0; indices count within each 128-bit lane).
    static SHL8: [u8; 64] = {
        let mut t = [0u8; 64];
        let mut i = 0;
        while i < 64 {
            let j = i % 16;
            t[i] = if j % 4 == 0 { 0x80 } else { (j - 1) as u8 };
            i += 1;
        }
        t
    };
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn shl8() -> __m512i {
        _mm512_loadu_si512(SHL8.as_ptr() as *const __m512i)
    }

    /// Few columns (decode): each weight chunk is decoded in registers and used at once.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn fused<const T: u8, const C: usize>(
        row: *const u8,
        acts: &[AChunk],
        sums_t: &[f32],
        nch: usize,
        out: &mut [f32],
    ) {
        let shl8 = shl8();
        let mut acc = [_mm512_setzero_ps(); C];
        // Offset terms: two chains per column (lanes 2c and 2c + 1: the chunk's two blocks),
        // all columns in one vector FMA a chunk (`sums_t`: see `sums_by_chunk`), as narrow as
        // the columns allow (a 512-bit FMA costs one column more than two scalar ones; the
        // lanes' arithmetic is the same at every width).
        let mut off4 = _mm_setzero_ps();
        let mut off8 = _mm256_setzero_ps();
        let mut off16 = _mm512_setzero_ps();
        let gs = group(T);
        let gb = group_bytes(T);
        for sb in 0..nch / gs {
            // Weights stream from memory once: ask for them ahead of use (this row's tail
            // and the next row's start; a prefetch never faults).
            for l in (0..gb).step_by(64) {
                _mm_prefetch(
                    row.wrapping_add(sb * gb + l + PF_AHEAD) as *const i8,
                    _MM_HINT_T0,
                );
            }
            let pre = prep::<T>(row, sb);
            for g in 0..gs {
                let k = sb * gs + g;
                let (w, dw, o) = decode::<T>(row, sb, g, &pre);
                let nc = negc(w);
                for c in 0..C {
                    acc[c] = step(acc[c], w, nc, dw, acts.get_unchecked(c * nch + k), shl8);
                }
                if has_off(T) {
                    // [o0, o1] in every lane pair.
                    let pair = _mm_castps_pd(_mm_unpacklo_ps(_mm_set_ss(o[0]), _mm_set_ss(o[1])));
                    let st = sums_t.as_ptr().add(16 * k);
                    if C <= 2 {
                        let ov = _mm_castpd_ps(_mm_movedup_pd(pair));
                        off4 = _mm_fmadd_ps(ov, _mm_loadu_ps(st), off4);
                    } else if C <= 4 {
                        let ov = _mm256_castpd_ps(_mm256_broadcastsd_pd(pair));
                        off8 = _mm256_fmadd_ps(ov, _mm256_loadu_ps(st), off8);
                    } else {
                        let ov = _mm512_castpd_ps(_mm512_broadcastsd_pd(pair));
                        off16 = _mm512_fmadd_ps(ov, _mm512_loadu_ps(st), off16);
                    }
                }
            }
        }
        let mut offs = [0f32; 16];
        if C <= 2 {
            _mm_storeu_ps(offs.as_mut_ptr(), off4);
        } else if C <= 4 {
            _mm256_storeu_ps(offs.as_mut_ptr(), off8);
        } else {
            _mm512_storeu_ps(offs.as_mut_ptr(), off16);
        }
        for c in 0..C {
            out[c] = _mm512_reduce_add_ps(acc[c]) + (offs[2 * c] + offs[2 * c + 1]);
        }
    }

    /// A decoded weight chunk of the prompt tile: 128 centred weights as i16 in the
    /// [`PChunk`] layout, and per-lane scales (lanes 4b..4b+4: block b).
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct WChunk16 {
        w: [__m512i; 4],
        dw: __m512,
    }

    /// Two decoded 64-value chunks (blocks 0-1 in `wa`, 2-3 in `wb`; bytes in value order,
    /// lanes 0-7 / 8-15 scaled by `dwa` lanes 0 / 8) → one [`WChunk16`]. Q6_K has two
    /// scales per block (one per 16 values), which one lane cannot carry across the four
    /// vectors: its 8 signed 8-bit scales `q6sc` are multiplied into the weights
    /// instead (|sc·(q-32)| <= 128·32 fits i16) and `d6` is the lane scale.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn to16<const T: u8>(
        wa: __m512i,
        dwa: __m512,
        wb: __m512i,
        dwb: __m512,
        q6sc: *const u8,
        d6: f32,
    ) -> WChunk16 {
        let mut w = [_mm512_setzero_si512(); 4];
        let sc = if T == Q6_K {
            let s8 = _mm_cvtepi8_epi16(_mm_loadl_epi64(q6sc as *const __m128i));
            _mm512_broadcast_i32x4(s8)
        } else {
            _mm512_setzero_si512()
        };
        for (m, wm) in w.iter_mut().enumerate() {
            let m = m as i64;
            // Qword m of each block: block b's values 8m..8m+8.
            let idx = _mm512_setr_epi64(m, 4 + m, 8 + m, 12 + m, 0, 0, 0, 0);
            let q = _mm512_permutex2var_epi64(wa, idx, wb);
            *wm = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(q));
            if T == Q6_K {
                // Lane b (i16 elements 8b..8b+8) takes scale 2b + m/2.
                let h = (m / 2) as i16;
                let si = _mm512_set_epi16(
                    6 + h,
                    6 + h,
                    6 + h,
                    6 + h,
                    6 + h,
                    6 + h,
                    6 + h,
                    6 + h,
                    4 + h,
                    4 + h,
                    4 + h,
                    4 + h,
                    4 + h,
                    4 + h,
                    4 + h,
                    4 + h,
                    2 + h,
                    2 + h,
                    2 + h,
                    2 + h,
                    2 + h,
                    2 + h,
                    2 + h,
                    2 + h,
                    h,
                    h,
                    h,
                    h,
                    h,
                    h,
                    h,
                    h,
                );
                let s = _mm512_permutexvar_epi16(si, sc);
                *wm = _mm512_mullo_epi16(*wm, s);
            }
        }
        let dw = if T == Q6_K {
            _mm512_set1_ps(d6)
        } else {
            let idx = _mm512_setr_epi32(0, 0, 0, 0, 8, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24, 24);
            _mm512_permutex2var_ps(dwa, idx, dwb)
        };
        WChunk16 { w, dw }
    }

    /// Many columns (prompt): R pre-decoded rows × C columns per pass, four vpdpwssd per
    /// 128 values (|Y·w| sums of 8 products per lane stay below 2^31: 8·32767·4096) and one
    /// scale multiply per 128.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const R: usize, const C: usize, const T: u8>(
        wc: &[WChunk16],
        acts: &[PChunk],
        nch: usize,
        offs: &[f32],
        sums: &[f32],
        sl: usize,
    ) -> [[f32; C]; R] {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for k in 0..nch {
            for c in 0..C {
                let a = acts.get_unchecked(c * nch + k);
                let ap = a.y.as_ptr() as *const __m512i;
                let a0 = _mm512_load_si512(ap);
                let a1 = _mm512_load_si512(ap.add(1));
                let a2 = _mm512_load_si512(ap.add(2));
                let a3 = _mm512_load_si512(ap.add(3));
                let da = _mm512_load_ps(a.d.as_ptr());
                for r in 0..R {
                    let wr: *const WChunk16 = wc.get_unchecked(r * nch + k);
                    // Written out because the compiler turns a vpdpwssd chain started at
                    // zero into vpmaddwd + vpaddd and then runs out of registers; here the
                    // weights are memory operands and the accumulators stay in registers.
                    let (_t, _s): (__m512i, __m512);
                    std::arch::asm!(
                        "vpxord {t:z}, {t:z}, {t:z}",
                        "vpdpwssd {t:z}, {a0:z}, zmmword ptr [{w}]",
                        "vpdpwssd {t:z}, {a1:z}, zmmword ptr [{w} + 64]",
                        "vpdpwssd {t:z}, {a2:z}, zmmword ptr [{w} + 128]",
                        "vpdpwssd {t:z}, {a3:z}, zmmword ptr [{w} + 192]",
                        "vmulps {s:z}, {da:z}, zmmword ptr [{w} + 256]",
                        "vcvtdq2ps {t:z}, {t:z}",
                        "vfmadd231ps {acc:z}, {t:z}, {s:z}",
                        t = out(zmm_reg) _t,
                        s = out(zmm_reg) _s,
                        acc = inout(zmm_reg) acc[r][c],
                        a0 = in(zmm_reg) a0,
                        a1 = in(zmm_reg) a1,
                        a2 = in(zmm_reg) a2,
                        a3 = in(zmm_reg) a3,
                        da = in(zmm_reg) da,
                        w = in(reg) wr,
                        options(pure, readonly, nostack, preserves_flags),
                    );
                }
            }
        }
        if has_off(T) {
            // Offset terms Σ_b offset_b·sum_b, 16 blocks per vector (rows of `sl`, padded
            // with zeros), into the same accumulators before their one reduction.
            for i in (0..sl).step_by(16) {
                for c in 0..C {
                    let sv = _mm512_loadu_ps(sums.as_ptr().add(c * sl + i));
                    for r in 0..R {
                        let ov = _mm512_loadu_ps(offs.as_ptr().add(r * sl + i));
                        acc[r][c] = _mm512_fmadd_ps(ov, sv, acc[r][c]);
                    }
                }
            }
        }
        let mut out = [[0.0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
            }
        }
        out
    }

    const TR: usize = 4;
    const TC: usize = 4;

    /// Columns at most handled by the fused (decode) kernel; more go through the tile. The
    /// fused kernel computes each column exactly as alone (batched decoding relies on it);
    /// 8 accumulators plus the decoded weights fit the 32 vector registers.
    pub(crate) const FUSED_MAX: usize = 8;

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn gemm_t<const T: u8>(
        data: &[u8],
        row_bytes: usize,
        acts: &Acts<'_>,
        n: usize,
        rows: usize,
        out: Out,
    ) {
        let nch = acts.nch;
        let sums = acts.sums;
        let sl = sums.len() / n; // sums per column: 2 per chunk, zero-padded to 16s
        if n <= FUSED_MAX {
            let sums_t = acts.sums_t;
            assert!(!has_off(T) || sums_t.len() == 16 * nch, "sums by chunk");
            for r in 0..rows {
                let rp = data.as_ptr().add(r * row_bytes);
                let mut o = [0f32; FUSED_MAX];
                let o = &mut o[..n];
                let a = acts.chunks;
                match n {
                    1 => fused::<T, 1>(rp, a, sums_t, nch, o),
                    2 => fused::<T, 2>(rp, a, sums_t, nch, o),
                    3 => fused::<T, 3>(rp, a, sums_t, nch, o),
                    4 => fused::<T, 4>(rp, a, sums_t, nch, o),
                    5 => fused::<T, 5>(rp, a, sums_t, nch, o),
                    6 => fused::<T, 6>(rp, a, sums_t, nch, o),
                    7 => fused::<T, 7>(rp, a, sums_t, nch, o),
                    _ => fused::<T, 8>(rp, a, sums_t, nch, o),
                }
                for (t, &v) in o.iter().enumerate() {
                    out.put(r, t, v);
                }
            }
            return;
        }
        let pacts = acts.pchunks;
        let nch2 = nch.div_ceil(2); // 128-value chunks per column
                                    // Columns per pass over the rows: their activations (320 bytes per chunk) stay in
                                    // L2 while every row tile of this task streams past them.
        let cb = ((512 * 1024) / (nch2 * 320)).max(TC) / TC * TC;
        let zero = WChunk16 {
            w: [_mm512_setzero_si512(); 4],
            dw: _mm512_setzero_ps(),
        };
        let mut wc = vec![zero; TR * nch2];
        let mut offs = vec![0f32; TR * sl];
        for c0 in (0..n).step_by(cb) {
            let c1 = (c0 + cb).min(n);
            for r0 in (0..rows).step_by(TR) {
                let rr = TR.min(rows - r0);
                for r in 0..rr {
                    let rp = data.as_ptr().add((r0 + r) * row_bytes);
                    let gs = group(T);
                    let mut pend = (_mm512_setzero_si512(), _mm512_setzero_ps());
                    for sb in 0..nch / gs {
                        let pre = prep::<T>(rp, sb);
                        for g in 0..gs {
                            let k = sb * gs + g;
                            let (w, dw, o) = decode::<T>(rp, sb, g, &pre);
                            if has_off(T) {
                                offs[r * sl + 2 * k] = o[0];
                                offs[r * sl + 2 * k + 1] = o[1];
                            }
                            // Q6_K scales of this 128-value chunk (g = 2h + 1 is its second half).
                            let q6sc = rp.add(sb * 210 + 192 + 8 * (g / 2));
                            if k % 2 == 0 {
                                pend = (w, dw);
                                if k + 1 == nch {
                                    let z = _mm512_setzero_si512();
                                    wc[r * nch2 + k / 2] =
                                        to16::<T>(w, dw, z, _mm512_setzero_ps(), q6sc, pre.s[0]);
                                }
                            } else {
                                wc[r * nch2 + k / 2] =
                                    to16::<T>(pend.0, pend.1, w, dw, q6sc, pre.s[0]);
                            }
                        }
                    }
                }
                let mut c = c0;
                while c < c1 {
                    let cc = TC.min(c1 - c);
                    let a = &pacts[c * nch2..];
                    macro_rules! put {
                        ($r:literal, $c:literal, $rbase:expr) => {{
                            let res = tile::<$r, $c, T>(
                                &wc[$rbase * nch2..],
                                a,
                                nch2,
                                &offs[$rbase * sl..],
                                &sums[c * sl..],
                                sl,
                            );
                            for i in 0..$r {
                                for j in 0..$c {
                                    out.put(r0 + $rbase + i, c + j, res[i][j]);
                                }
                            }
                        }};
                    }
                    if rr == TR {
                        match cc {
                            1 => put!(4, 1, 0),
                            2 => put!(4, 2, 0),
                            3 => put!(4, 3, 0),
                            _ => put!(4, 4, 0),
                        }
                    } else {
                        for r in 0..rr {
                            match cc {
                                1 => put!(1, 1, r),
                                2 => put!(1, 2, r),
                                3 => put!(1, 3, r),
                                _ => put!(1, 4, r),
                            }
                        }
                    }
                    c += cc;
                }
            }
        }
    }

    /// Quantized activations of n columns: `chunks` (decode layout, n <= FUSED_MAX) or
    /// `pchunks` (prompt layout), `nch` 64-value chunks per column, padded sums per column.
    pub(crate) struct Acts<'a> {
        pub chunks: &'a [AChunk],
        pub pchunks: &'a [PChunk],
        pub sums: &'a [f32],
        /// The decode layout's sums by chunk ([`sums_by_chunk`]; n <= FUSED_MAX).
        pub sums_t: &'a [f32],
        pub nch: usize,
    }

    /// `n` (<= FUSED_MAX) columns' block sums (`sl` per column, two per chunk) by chunk: 16
    /// a chunk, column c's two at 2c, 2c + 1 (the lanes of the offset FMA in `fused`), zero
    /// past the columns. Made once per quantized input, shared by every product and task.
    pub(crate) fn sums_by_chunk(sums: &[f32], n: usize, nch: usize) -> Vec<f32> {
        let sl = sums.len() / n.max(1);
        let mut t = vec![0f32; 16 * nch];
        for k in 0..nch {
            for c in 0..n {
                t[16 * k + 2 * c] = sums[c * sl + 2 * k];
                t[16 * k + 2 * c + 1] = sums[c * sl + 2 * k + 1];
            }
        }
        t
    }

    /// Whether `ty` has a wide kernel.
    pub(crate) fn supported(ty: GgmlType) -> bool {
        use GgmlType as G;
        matches!(
            ty,
            G::Q4_0
                | G::Q4_1
                | G::Q5_0
                | G::Q5_1
                | G::Q8_0
                | G::MXFP4
                | G::Q4_K
                | G::Q5_K
                | G::Q6_K
        )
    }

    /// Where results go: row r, column t at `ptr[r*rs + t*cs]`.
    #[derive(Clone, Copy)]
    pub(crate) struct Out {
        pub ptr: *mut f32,
        pub rs: usize,
        pub cs: usize,
    }
    impl Out {
        #[inline(always)]
        unsafe fn put(self, r: usize, t: usize, v: f32) {
            *self.ptr.add(r * self.rs + t * self.cs) = v;
        }
    }

    /// Row r of `data` · column t into `out` for `rows` rows of `row_bytes`. `acts` holds n
    /// columns in the layout for n (see [`Acts`]). Caller checked the CPU
    /// features, the type (`supported`) and all sizes, and that `out` covers rows × n.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn gemm(
        ty: GgmlType,
        data: &[u8],
        row_bytes: usize,
        acts: &Acts<'_>,
        n: usize,
        rows: usize,
        out: Out,
    ) {
        use GgmlType as G;
        let f = match ty {
            G::Q4_0 => gemm_t::<Q4_0>,
            G::Q4_1 => gemm_t::<Q4_1>,
            G::Q5_0 => gemm_t::<Q5_0>,
            G::Q5_1 => gemm_t::<Q5_1>,
            G::Q8_0 => gemm_t::<Q8_0>,
            G::MXFP4 => gemm_t::<MXFP4>,
            G::Q4_K => gemm_t::<Q4_K>,
            G::Q5_K => gemm_t::<Q5_K>,
            _ => gemm_t::<Q6_K>,
        };
        f(data, row_bytes, acts, n, rows, out)
    }
}
