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

/// AVX-512 VNNI kernels on 16-bit activations, several rows and columns per pass.
///
/// Activations: per 32-value block, Y = round(x/d) with d = max|x|/32767 (error <= d/2, the
/// same as or below two 8-bit passes' d_hi/508), laid out so that one vpdpwssd covers four
/// blocks (see [`wide::PChunk`]). Weights are decoded to centred signed values and widened
/// to i16 in the same layout; each 32-bit lane sums 8 products of one block exactly in i32
/// (|Σ| <= 8·32767·4096 < 2^31) and is scaled by d_w × d_a of its block in f32 once per 128
/// values. Every column count computes each column with the same operations in the same
/// order (the decode kernel for a few columns, the tile for more): column t of a product
/// equals, bit for bit, column t alone, and a prompt row equals the same row decoded.
pub(crate) mod wide {
    // Kernel loops index several per-row/per-column arrays with the same counters.
    #![allow(
        clippy::missing_safety_doc,
        clippy::needless_range_loop,
        clippy::too_many_arguments
    )]
    use super::super::GgmlType;
    use std::arch::x86_64::*;

    /// 128 activations (four blocks) at 16 bits, laid out for vpdpwssd:
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

    /// Quantizes one column of `x.len()` = 64·`sums.len()`/2 values; `out` holds x.len()/128
    /// chunks rounded up (a last half chunk of two blocks in the layout of [`tail16`]);
    /// `sums[b]` = d_b·ΣY over block b (the activation sum the weight offsets multiply).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn quantize(x: &[f32], out: &mut [PChunk], sums: &mut [f32]) {
        let nb = x.len() / 32;
        debug_assert!(x.len() % 64 == 0 && out.len() == nb.div_ceil(4) && sums.len() == nb);
        let lim = _mm512_set1_epi32(32767);
        let nlim = _mm512_set1_epi32(-32767);
        if nb % 4 != 0 {
            *out.last_mut().unwrap() = PChunk::default();
        }
        for blk in 0..nb {
            let (ch, b) = (&mut out[blk / 4], blk % 4);
            // The last two blocks of a column of 4n + 2 go in the half chunk's layout.
            let tail = nb % 4 != 0 && blk / 4 == nb / 4;
            let p = x.as_ptr().add(blk * 32);
            let v0 = _mm512_loadu_ps(p);
            let v1 = _mm512_loadu_ps(p.add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            let d = amax / 32767.0;
            let id = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let mut ysum = _mm512_setzero_si512();
            for (h, v) in [v0, v1].into_iter().enumerate() {
                // |v/d| <= 32767 up to one rounding; the clamp also catches NaN's integer
                // indefinite value.
                let y = _mm512_cvtps_epi32(_mm512_mul_ps(v, id));
                let y = _mm512_max_epi32(_mm512_min_epi32(y, lim), nlim);
                ysum = _mm512_add_epi32(ysum, y);
                let y16 = _mm512_cvtepi32_epi16(y); // values 16h..16h+16
                let yp = ch.y.as_mut_ptr();
                if tail {
                    _mm256_storeu_si256(yp.add(32 * h + 16 * b) as *mut __m256i, y16);
                } else {
                    _mm_storeu_si128(
                        yp.add(32 * (2 * h) + 8 * b) as *mut __m128i,
                        _mm256_castsi256_si128(y16),
                    );
                    _mm_storeu_si128(
                        yp.add(32 * (2 * h + 1) + 8 * b) as *mut __m128i,
                        _mm256_extracti128_si256(y16, 1),
                    );
                }
            }
            if tail {
                ch.d[8 * b..8 * b + 8].fill(d);
            } else {
                ch.d[4 * b..4 * b + 4].fill(d);
            }
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

    /// A Q4_K / Q5_K super-block's 8 sub-block scales d·sc and offsets mid·s - dmin·m (one
    /// rounding), sc and m as `k_scale_min` reads them. Made by vector operations in
    /// registers: scalar stores read back as vectors stalled on store forwarding.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn prep_k(row: *const u8, sb: usize, q5: bool) -> (__m256, __m256) {
        let p = row.add(sb * if q5 { 176 } else { 144 });
        let (d, dmin) = (f16(p), f16(p.add(2)));
        // 16 bytes from the 12 scale bytes on (the rest is the block's own quants, unused).
        let q = _mm_loadu_si128(p.add(4) as *const __m128i);
        let dw = |i: i8| {
            _mm_setr_epi8(
                i,
                -1,
                -1,
                -1,
                i + 1,
                -1,
                -1,
                -1,
                i + 2,
                -1,
                -1,
                -1,
                i + 3,
                -1,
                -1,
                -1,
            )
        };
        // Bytes 0..4, 4..8, 8..12 as dwords.
        let (x1, x2, x3) = (
            _mm_shuffle_epi8(q, dw(0)),
            _mm_shuffle_epi8(q, dw(4)),
            _mm_shuffle_epi8(q, dw(8)),
        );
        let (m63, m15) = (_mm_set1_epi32(63), _mm_set1_epi32(15));
        // See `k_scale_min`: j < 4 from the low 6 bits; j >= 4 from nibbles of bytes 8..12
        // and the top 2 bits of bytes 0..8.
        let sc_lo = _mm_and_si128(x1, m63);
        let m_lo = _mm_and_si128(x2, m63);
        let sc_hi = _mm_or_si128(
            _mm_and_si128(x3, m15),
            _mm_slli_epi32(_mm_srli_epi32(x1, 6), 4),
        );
        let m_hi = _mm_or_si128(
            _mm_srli_epi32(x3, 4),
            _mm_slli_epi32(_mm_srli_epi32(x2, 6), 4),
        );
        let sc = _mm256_cvtepi32_ps(_mm256_inserti128_si256(
            _mm256_castsi128_si256(sc_lo),
            sc_hi,
            1,
        ));
        let m = _mm256_cvtepi32_ps(_mm256_inserti128_si256(
            _mm256_castsi128_si256(m_lo),
            m_hi,
            1,
        ));
        let s8 = _mm256_mul_ps(_mm256_set1_ps(d), sc);
        let mid = _mm256_set1_ps(if q5 { 16.0 } else { 8.0 });
        let o8 = _mm256_fmadd_ps(
            mid,
            s8,
            _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(_mm256_set1_ps(dmin), m)),
        );
        (s8, o8)
    }

    /// Chunk g of group sb of a row (values 64k..64k+64 with k = sb*group + g): centred
    /// weights, lane scales, and for types with an offset the per-block offsets
    /// (w = scale·q + offset). Q6_K: weights only (`to16` applies its scales); Q4_K and
    /// Q5_K decode through `kquant16`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn decode<const T: u8>(
        row: *const u8,
        sb: usize,
        g: usize,
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
            Q6_K => {
                // Chunk c of the super-block is half h = c/2, quarter pair j = c%2.
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
                (w, _mm512_setzero_ps(), [0.0; 2])
            }
            _ => unreachable!("Q4_K and Q5_K decode through kquant16"),
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

    /// Four blocks of a legacy type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) from block `b0` on
    /// straight into a [`WChunk16`]: each 128-bit lane
    /// b holds block b's bytes, and unpacking them against zero per lane puts block b's
    /// values 8m..8m+8 in lane b of vector m as i16, which is the layout (the same weights
    /// and scales as [`decode`] + [`to16`], fewer instructions), and the blocks' offsets
    /// (types with one; else zeros).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn legacy16<const T: u8>(row: *const u8, b0: usize) -> (WChunk16, __m128) {
        let ts = match T {
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            _ => 34,
        };
        let qs_at = match T {
            Q4_0 => 2,
            Q4_1 => 4,
            Q5_0 => 6,
            Q5_1 => 8,
            _ => 2,
        };
        let blk = |b: usize| row.add((b0 + b) * ts);
        let lane = |b: usize, at: usize| _mm_loadu_si128(blk(b).add(at) as *const __m128i);
        let gather = |at: usize| {
            let q = _mm512_castsi128_si512(lane(0, at));
            let q = _mm512_inserti32x4(q, lane(1, at), 1);
            let q = _mm512_inserti32x4(q, lane(2, at), 2);
            _mm512_inserti32x4(q, lane(3, at), 3)
        };
        let z = _mm512_setzero_si512();
        // The blocks' headers (scale, offset, high bits), 16 bytes each, one lane a block.
        let hdr = gather(0);
        let w = if T == Q8_0 {
            // Bytes 0..16 and 16..32 of each block; sign-extended by unpacking a byte with
            // itself and shifting the word right by 8.
            let (qa, qb) = (gather(qs_at), gather(qs_at + 16));
            let sx = |v: __m512i| _mm512_srai_epi16(v, 8);
            [
                sx(_mm512_unpacklo_epi8(qa, qa)),
                sx(_mm512_unpackhi_epi8(qa, qa)),
                sx(_mm512_unpacklo_epi8(qb, qb)),
                sx(_mm512_unpackhi_epi8(qb, qb)),
            ]
        } else {
            // Byte j holds value j (low nibble) and value j + 16 (high nibble).
            let q = gather(qs_at);
            let (lo, hi) = (_mm512_unpacklo_epi8(q, z), _mm512_unpackhi_epi8(q, z));
            let m4 = _mm512_set1_epi16(0xF);
            let mut w = [
                _mm512_and_si512(lo, m4),
                _mm512_and_si512(hi, m4),
                _mm512_srli_epi16(lo, 4),
                _mm512_srli_epi16(hi, 4),
            ];
            if matches!(T, Q5_0 | Q5_1) {
                // q = nib | bit<<4, centred q - 16; block b's 32 high bits on lane b's
                // words, value 8m + i takes bit 8m + i.
                // Each block's high bits: words 1-2 (Q5_0) or 2-3 (Q5_1) of its header lane.
                let o = if T == Q5_0 { 1 } else { 2 };
                let pair = |b: i32| (o + 8 * b) | (o + 8 * b + 1) << 16;
                let h = _mm512_castsi512_si128(_mm512_permutexvar_epi16(
                    _mm512_setr_epi32(
                        pair(0),
                        pair(1),
                        pair(2),
                        pair(3),
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                    ),
                    hdr,
                ));
                // Vector m's 32 words are bits 8m..8m + 8 of each block's 32 (lane b, word i:
                // bit 8m + i of block b): byte m of each block's bits, gathered by a byte
                // transpose, is vector m's mask.
                let t = _mm_shuffle_epi8(
                    h,
                    _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15),
                );
                let k = [
                    _mm_extract_epi32::<0>(t),
                    _mm_extract_epi32::<1>(t),
                    _mm_extract_epi32::<2>(t),
                    _mm_extract_epi32::<3>(t),
                ];
                let k16 = _mm512_set1_epi16(16);
                for (wm, &km) in w.iter_mut().zip(&k) {
                    // Centred q - 16 with q = nib | bit << 4: the nibble where the bit is set,
                    // else nibble - 16.
                    *wm = _mm512_mask_sub_epi16(*wm, !(km as u32), *wm, k16);
                }
            } else {
                let k8 = _mm512_set1_epi16(8);
                for wm in w.iter_mut() {
                    *wm = _mm512_sub_epi16(*wm, k8);
                }
            }
            w
        };
        // Word w of each block's header as 4 floats.
        let word4 = |w: i32| {
            let i = w | (w + 8) << 16;
            let j = (w + 16) | (w + 24) << 16;
            _mm_cvtph_ps(_mm512_castsi512_si128(_mm512_permutexvar_epi16(
                _mm512_setr_epi32(i, j, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                hdr,
            )))
        };
        let d4 = word4(0);
        let o = if has_off(T) {
            let m4 = word4(1);
            let mid = _mm_set1_ps(if T == Q5_1 { 16.0 } else { 8.0 });
            // As `decode`: mid·d + m, one rounding.
            _mm_fmadd_ps(mid, d4, m4)
        } else {
            _mm_setzero_ps()
        };
        let dw = _mm512_permutexvar_ps(
            _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
            _mm512_castps128_ps512(d4),
        );
        (WChunk16 { w, dw }, o)
    }

    /// Half `H` (sub-blocks 4H..4H + 4, values 128H..128H + 128) of a Q4_K / Q5_K
    /// super-block at `p` straight into a [`WChunk16`] (the same weights as [`decode`] +
    /// [`to16`], fewer instructions and constants): sub-blocks 4H, 4H + 1 are the low and high
    /// nibbles of quant bytes 64H..64H + 32, sub-blocks 4H + 2, 4H + 3 those of the next 32;
    /// lane b of vector m takes bytes 8m..8m + 8 of its half, shifted by 0 or 4. `s8`: the
    /// sub-block scales ([`prep_k`]).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn kquant16<const T: u8, const H: usize>(p: *const u8, s8: __m256) -> WChunk16 {
        let q5 = T == Q5_K;
        let z = _mm512_loadu_si512(p.add(if q5 { 48 } else { 16 } + 64 * H) as *const __m512i);
        // Qword m of each 32-byte half, for lanes (0, 1) and (2, 3).
        let base = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 0, 0);
        let cnt = _mm512_setr_epi64(
            0,
            0x0004_0004_0004_0004,
            0,
            0x0004_0004_0004_0004,
            0,
            0,
            0,
            0,
        );
        let cnt = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 0, 1, 1, 2, 2, 3, 3), cnt);
        let m15 = _mm512_set1_epi16(15);
        let qh = if q5 {
            _mm512_castsi256_si512(_mm256_loadu_si256(p.add(16) as *const __m256i))
        } else {
            _mm512_setzero_si512()
        };
        let mut w = [_mm512_setzero_si512(); 4];
        for (m, wm) in w.iter_mut().enumerate() {
            let idx = _mm512_add_epi64(base, _mm512_set1_epi64(m as i64));
            let b = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(_mm512_permutexvar_epi64(idx, z)));
            let nib = _mm512_and_si512(_mm512_srlv_epi16(b, cnt), m15);
            *wm = if q5 {
                // Value 8m + i of sub-block j = 4H + b: bit j of qh byte 8m + i; centred - 16.
                let hb = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(_mm512_permutexvar_epi64(
                    _mm512_set1_epi64(m as i64),
                    qh,
                )));
                let j = _mm512_permutexvar_epi64(
                    _mm512_setr_epi64(0, 0, 1, 1, 2, 2, 3, 3),
                    _mm512_setr_epi64(
                        0x0001_0001_0001_0001 * (4 * H) as i64,
                        0x0001_0001_0001_0001 * (4 * H + 1) as i64,
                        0x0001_0001_0001_0001 * (4 * H + 2) as i64,
                        0x0001_0001_0001_0001 * (4 * H + 3) as i64,
                        0,
                        0,
                        0,
                        0,
                    ),
                );
                let bit = _mm512_and_si512(_mm512_srlv_epi16(hb, j), _mm512_set1_epi16(1));
                _mm512_sub_epi16(
                    _mm512_or_si512(nib, _mm512_slli_epi16(bit, 4)),
                    _mm512_set1_epi16(16),
                )
            } else {
                _mm512_sub_epi16(nib, _mm512_set1_epi16(8))
            };
        }
        let i = 4 * H as i32;
        let dw = _mm512_permutexvar_ps(
            _mm512_setr_epi32(
                i,
                i,
                i,
                i,
                i + 1,
                i + 1,
                i + 1,
                i + 1,
                i + 2,
                i + 2,
                i + 2,
                i + 2,
                i + 3,
                i + 3,
                i + 3,
                i + 3,
            ),
            _mm512_castps256_ps512(s8),
        );
        WChunk16 { w, dw }
    }

    /// Runs `$body` for each 128-value chunk `$k2` of a row of `$nch` 64-value chunks with the
    /// chunk decoded to `$wc` (a [`WChunk16`]; zeros past the row) and its four blocks'
    /// offsets in `$o4` (an `__m128`: zeros for types without, and past the row). The one
    /// decoder of the decode kernel and the tile, so that both see the same weights. A
    /// macro: as functions (`#[inline]` is a hint) the decoding steps were not inlined and
    /// ran at half speed.
    macro_rules! each_chunk16 {
        // The last half chunk of a legacy row (an odd count of 64-value chunks), the body
        // written out again rather than the decoder chosen by a branch (which went through
        // memory): `$half` tells the body to use the two-vector products.
        (@tail $t:ident, $row:expr, $nch:expr, |$k2:ident, $wc:ident, $o4:ident, $half:ident| $body:block) => {{
            let (row, nch): (*const u8, usize) = ($row, $nch);
            if nch % 2 == 1 {
                let $k2 = nch / 2;
                let (w0, d0, o0) = decode::<$t>(row, 2 * $k2, 0);
                let $wc = tail16(w0, d0);
                let $o4 = _mm_setr_ps(o0[0], o0[1], 0.0, 0.0);
                let $half = true;
                $body
            }
        }};
        ($t:ident, $row:expr, $nch:expr, |$k2:ident, $wc:ident, $o4:ident, $half:ident| $body:block) => {{
            let (row, nch): (*const u8, usize) = ($row, $nch);
            let gb = group_bytes($t);
            if group($t) == 1 && $t != MXFP4 {
                for $k2 in 0..nch / 2 {
                    // Weights stream from memory once: ask for them ahead of use (this row's
                    // tail and the next row's start; a prefetch never faults).
                    for l in (0..2 * gb).step_by(64) {
                        let at = 2 * $k2 * gb + l + PF_AHEAD;
                        _mm_prefetch(row.wrapping_add(at) as *const i8, _MM_HINT_T0);
                    }
                    let ($wc, $o4) = legacy16::<$t>(row, 4 * $k2);
                    let $half = false;
                    $body
                }
                each_chunk16!(@tail $t, row, nch, |$k2, $wc, $o4, $half| $body);
            } else if group($t) == 1 {
                for $k2 in 0..nch / 2 {
                    for l in (0..2 * gb).step_by(64) {
                        let at = 2 * $k2 * gb + l + PF_AHEAD;
                        _mm_prefetch(row.wrapping_add(at) as *const i8, _MM_HINT_T0);
                    }
                    let (w0, d0, _) = decode::<$t>(row, 2 * $k2, 0);
                    let (w1, d1, _) = decode::<$t>(row, 2 * $k2 + 1, 0);
                    let $wc = to16::<$t>(w0, d0, w1, d1, row, 0.0);
                    let $o4 = _mm_setzero_ps();
                    let $half = false;
                    $body
                }
                each_chunk16!(@tail $t, row, nch, |$k2, $wc, $o4, $half| $body);
            } else {
                // K-quants: a super-block (256 values) is two chunks; `h` written out so that
                // each half's sub-block indices are constants.
                for sb in 0..nch / 4 {
                    for l in (0..gb).step_by(64) {
                        let at = sb * gb + l + PF_AHEAD;
                        _mm_prefetch(row.wrapping_add(at) as *const i8, _MM_HINT_T0);
                    }
                    // Q6_K: its d; Q4_K / Q5_K: scales and offsets from `prep_k`.
                    let d6 = if $t == Q6_K { f16(row.add(sb * 210 + 208)) } else { 0.0 };
                    let (s8, o8) = if $t == Q6_K {
                        (_mm256_setzero_ps(), _mm256_setzero_ps())
                    } else {
                        prep_k(row, sb, $t == Q5_K)
                    };
                    macro_rules! half {
                        ($h:literal) => {{
                            let $k2 = 2 * sb + $h;
                            let ($wc, $o4) = if $t == Q6_K {
                                let (w0, d0, _) = decode::<$t>(row, sb, 2 * $h);
                                let (w1, d1, _) = decode::<$t>(row, sb, 2 * $h + 1);
                                let q6sc = row.add(sb * 210 + 192 + 8 * $h);
                                (to16::<$t>(w0, d0, w1, d1, q6sc, d6), _mm_setzero_ps())
                            } else {
                                let o4 = if $h == 0 {
                                    _mm256_castps256_ps128(o8)
                                } else {
                                    _mm256_extractf128_ps(o8, 1)
                                };
                                (kquant16::<$t, $h>(row.add(sb * gb), s8), o4)
                            };
                            let $half = false;
                            $body
                        }};
                    }
                    half!(0);
                    half!(1);
                }
            }
        }};
    }

    /// The last chunk of a row of an odd number of 64-value chunks: its two blocks in two
    /// vectors, vector 0 holding both blocks' values 0..16 and vector 1 their values 16..32
    /// as i16, so 32-bit lanes 0..8 take block 0 and 8..16 block 1, four products a lane
    /// (two vpdpwssd instead of four for half the values); vectors 2 and 3 stay zero.
    /// From a decoded 64-value chunk (`w`: bytes in value order, `dw`: lanes 0..8 / 8..16
    /// the blocks' scales, as [`decode`] gives them). Activations: [`quantize`]'s last chunk.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tail16(w: __m512i, dw: __m512) -> WChunk16 {
        let lo = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 4, 5, 0, 0, 0, 0), w);
        let hi = _mm512_permutexvar_epi64(_mm512_setr_epi64(2, 3, 6, 7, 0, 0, 0, 0), w);
        let z = _mm512_setzero_si512();
        WChunk16 {
            w: [
                _mm512_cvtepi8_epi16(_mm512_castsi512_si256(lo)),
                _mm512_cvtepi8_epi16(_mm512_castsi512_si256(hi)),
                z,
                z,
            ],
            dw,
        }
    }

    /// acc + (Σ 8 products per lane of `regs`' and `mem`'s i16 vectors, exactly in i32) ×
    /// (`scale` · `mem`'s scale vector): one column's share of a weight chunk. `mem` points
    /// at four i16 vectors and then a scale vector, the layout both [`PChunk`] and
    /// [`WChunk16`] have, so the tile (activations in registers, weights from memory) and
    /// the decode kernel (weights in registers, activations from memory) run this one
    /// sequence of operations (both multiplications commute). Written out because the
    /// compiler turns a vpdpwssd chain started at zero into vpmaddwd + vpaddd and then runs
    /// out of registers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn chunk_fma(acc: __m512, regs: [__m512i; 4], scale: __m512, mem: *const u8) -> __m512 {
        let mut acc = acc;
        let (_t, _s): (__m512i, __m512);
        std::arch::asm!(
            "vpxord {t:z}, {t:z}, {t:z}",
            "vpdpwssd {t:z}, {r0:z}, zmmword ptr [{m}]",
            "vpdpwssd {t:z}, {r1:z}, zmmword ptr [{m} + 64]",
            "vpdpwssd {t:z}, {r2:z}, zmmword ptr [{m} + 128]",
            "vpdpwssd {t:z}, {r3:z}, zmmword ptr [{m} + 192]",
            "vmulps {s:z}, {sc:z}, zmmword ptr [{m} + 256]",
            "vcvtdq2ps {t:z}, {t:z}",
            "vfmadd231ps {acc:z}, {t:z}, {s:z}",
            t = out(zmm_reg) _t,
            s = out(zmm_reg) _s,
            acc = inout(zmm_reg) acc,
            r0 = in(zmm_reg) regs[0],
            r1 = in(zmm_reg) regs[1],
            r2 = in(zmm_reg) regs[2],
            r3 = in(zmm_reg) regs[3],
            sc = in(zmm_reg) scale,
            m = in(reg) mem,
            options(pure, readonly, nostack, preserves_flags),
        );
        acc
    }

    /// [`chunk_fma`] of a [`tail16`] chunk: its first two vectors.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn chunk_fma_half(
        acc: __m512,
        regs: [__m512i; 2],
        scale: __m512,
        mem: *const u8,
    ) -> __m512 {
        let mut acc = acc;
        let (_t, _s): (__m512i, __m512);
        std::arch::asm!(
            "vpxord {t:z}, {t:z}, {t:z}",
            "vpdpwssd {t:z}, {r0:z}, zmmword ptr [{m}]",
            "vpdpwssd {t:z}, {r1:z}, zmmword ptr [{m} + 64]",
            "vmulps {s:z}, {sc:z}, zmmword ptr [{m} + 256]",
            "vcvtdq2ps {t:z}, {t:z}",
            "vfmadd231ps {acc:z}, {t:z}, {s:z}",
            t = out(zmm_reg) _t,
            s = out(zmm_reg) _s,
            acc = inout(zmm_reg) acc,
            r0 = in(zmm_reg) regs[0],
            r1 = in(zmm_reg) regs[1],
            sc = in(zmm_reg) scale,
            m = in(reg) mem,
            options(pure, readonly, nostack, preserves_flags),
        );
        acc
    }

    // `chunk_fma` reads either chunk as four vectors and then the scales.
    const _: () = assert!(
        std::mem::offset_of!(PChunk, d) == 256 && std::mem::offset_of!(WChunk16, dw) == 256
    );

    /// `oacc[c]` + Σ_b offset_b·sum_b over blocks 16j..16j + 16 (`ov`: the row's offsets of
    /// those blocks; `sums`: C columns of `sl`, zero-padded): one step of the offset terms,
    /// which run in accumulators of their own, 16 blocks a vector, in ascending j.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn offset_group<const C: usize>(
        oacc: &mut [__m512; C],
        ov: __m512,
        sums: &[f32],
        sl: usize,
        j: usize,
    ) {
        for c in 0..C {
            let sv = _mm512_loadu_ps(sums.as_ptr().add(c * sl + 16 * j));
            oacc[c] = _mm512_fmadd_ps(ov, sv, oacc[c]);
        }
    }

    /// Each result: the sum of the lanes of acc (+ oacc for types with offsets).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn finish<const T: u8, const R: usize, const C: usize>(
        acc: &[[__m512; C]; R],
        oacc: &[[__m512; C]; R],
    ) -> [[f32; C]; R] {
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let v = if has_off(T) {
                    _mm512_add_ps(acc[r][c], oacc[r][c])
                } else {
                    acc[r][c]
                };
                out[r][c] = _mm512_reduce_add_ps(v);
            }
        }
        out
    }

    /// Few columns (decode): each 128 weights of the row decoded to 16 bits and used at once
    /// by every column, with [`tile`]'s arithmetic per column (the same operations in the
    /// same order), so a column's result does not depend on how many columns share the pass
    /// or which kernel runs it. `sums`: the columns' block sums, `sl` each.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn fused<const T: u8, const C: usize>(
        row: *const u8,
        acts: &[PChunk],
        nch: usize,
        sums: &[f32],
        sl: usize,
        out: &mut [f32],
    ) {
        let nch2 = nch.div_ceil(2);
        let mut acc = [_mm512_setzero_ps(); C];
        let mut oacc = [[_mm512_setzero_ps(); C]];
        // The offsets of blocks 16j..16j + 16 gathered in a register (through memory, the
        // loads waited for the stores): chunk k2 fills lanes 4(k2 % 4)..
        let mut ov = _mm512_setzero_ps();
        each_chunk16!(T, row, nch, |k2, wc, o4, half| {
            for c in 0..C {
                let a = acts.get_unchecked(c * nch2 + k2) as *const PChunk as *const u8;
                acc[c] = if half {
                    chunk_fma_half(acc[c], [wc.w[0], wc.w[1]], wc.dw, a)
                } else {
                    chunk_fma(acc[c], wc.w, wc.dw, a)
                };
            }
            if has_off(T) {
                ov = _mm512_mask_broadcast_f32x4(ov, 0xF << (4 * (k2 % 4)), o4);
                if k2 % 4 == 3 {
                    offset_group::<C>(&mut oacc[0], ov, sums, sl, k2 / 4);
                    ov = _mm512_setzero_ps();
                }
            }
        });
        if has_off(T) && nch2 % 4 != 0 {
            offset_group::<C>(&mut oacc[0], ov, sums, sl, nch2 / 4);
        }
        out.copy_from_slice(&finish::<T, 1, C>(&[acc], &oacc)[0]);
    }

    /// Many columns (prompt): R pre-decoded rows × C columns per pass, four vpdpwssd per
    /// 128 values (|Y·w| sums of 8 products per lane stay below 2^31: 8·32767·4096) and one
    /// scale multiply per 128.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const R: usize, const C: usize, const T: u8>(
        wc: &[WChunk16],
        acts: &[PChunk],
        nch: usize,
        tail: bool,
        offs: &[f32],
        sums: &[f32],
        sl: usize,
    ) -> [[f32; C]; R] {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let full = if tail { nch - 1 } else { nch };
        for k in 0..full {
            for c in 0..C {
                let a = acts.get_unchecked(c * nch + k);
                let ap = a.y.as_ptr() as *const __m512i;
                let av = [0, 1, 2, 3].map(|m| _mm512_load_si512(ap.add(m)));
                let da = _mm512_load_ps(a.d.as_ptr());
                for r in 0..R {
                    let w = wc.get_unchecked(r * nch + k) as *const WChunk16 as *const u8;
                    acc[r][c] = chunk_fma(acc[r][c], av, da, w);
                }
            }
        }
        if tail {
            let k = nch - 1;
            for c in 0..C {
                let a = acts.get_unchecked(c * nch + k);
                let ap = a.y.as_ptr() as *const __m512i;
                let av = [0, 1].map(|m| _mm512_load_si512(ap.add(m)));
                let da = _mm512_load_ps(a.d.as_ptr());
                for r in 0..R {
                    let w = wc.get_unchecked(r * nch + k) as *const WChunk16 as *const u8;
                    acc[r][c] = chunk_fma_half(acc[r][c], av, da, w);
                }
            }
        }
        let mut oacc = [[_mm512_setzero_ps(); C]; R];
        if has_off(T) {
            for j in 0..sl / 16 {
                for r in 0..R {
                    let ov = _mm512_loadu_ps(offs.as_ptr().add(r * sl + 16 * j));
                    offset_group::<C>(&mut oacc[r], ov, sums, sl, j);
                }
            }
        }
        finish::<T, R, C>(&acc, &oacc)
    }

    const TR: usize = 4;
    const TC: usize = 4;

    /// Columns at most handled by the decode kernel ([`fused`]); more go through the tile
    /// (same arithmetic, so the choice is only one of speed). 8 accumulators plus a decoded
    /// weight chunk fit the 32 vector registers.
    const FUSED_MAX: usize = 8;
    /// ... and only while their activations stay in L1 (the decode kernel reads them all
    /// for every row; the tile reuses them over 4 rows). Measured (`cargo bench --bench
    /// quant`, one core of a Zen 5 with 48 KiB of L1): a 4,864-value Q4_K row at 4 columns
    /// (48.6 KB) 169 GFLOP/s fused, 141 tiled; at 6 columns (73 KB) 142 fused, 157 tiled.
    const FUSED_MAX_ACT_BYTES: usize = 49 * 1024;

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
        let pacts = acts.pchunks;
        let nch2 = nch.div_ceil(2); // 128-value chunks per column
        if n <= FUSED_MAX && n * nch2 * std::mem::size_of::<PChunk>() <= FUSED_MAX_ACT_BYTES {
            for r in 0..rows {
                let rp = data.as_ptr().add(r * row_bytes);
                let mut o = [0f32; FUSED_MAX];
                let o = &mut o[..n];
                let a = pacts;
                match n {
                    1 => fused::<T, 1>(rp, a, nch, sums, sl, o),
                    2 => fused::<T, 2>(rp, a, nch, sums, sl, o),
                    3 => fused::<T, 3>(rp, a, nch, sums, sl, o),
                    4 => fused::<T, 4>(rp, a, nch, sums, sl, o),
                    5 => fused::<T, 5>(rp, a, nch, sums, sl, o),
                    6 => fused::<T, 6>(rp, a, nch, sums, sl, o),
                    7 => fused::<T, 7>(rp, a, nch, sums, sl, o),
                    _ => fused::<T, 8>(rp, a, nch, sums, sl, o),
                }
                for (t, &v) in o.iter().enumerate() {
                    out.put(r, t, v);
                }
            }
            return;
        }
        // Columns per pass over the rows: their activations (320 bytes per chunk) stay in L2
        // while every row tile of this task streams past them.
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
                    each_chunk16!(T, rp, nch, |k2, w, o4, _half| {
                        wc[r * nch2 + k2] = w;
                        if has_off(T) {
                            _mm_storeu_ps(offs.as_mut_ptr().add(r * sl + 4 * k2), o4);
                        }
                    });
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
                                nch % 2 == 1,
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

    /// Quantized activations of n columns ([`PChunk`]s, `nch` 64-value chunks per column
    /// rounded up to 128s) and their block sums (`sums.len()/n` per column, zero-padded).
    pub(crate) struct Acts<'a> {
        pub pchunks: &'a [PChunk],
        pub sums: &'a [f32],
        pub nch: usize,
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
