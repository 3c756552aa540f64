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

            /// Q8_0: signed weights, so the sign moves onto the activations.
            #[target_feature(enable = $feat)]
            unsafe fn k_q8_0<const N: usize>(
                rp: *const u8,
                ap: *const BlockQ8,
                nb: usize,
                out: &mut [f32],
            ) {
                let mut acc = [_mm256_setzero_ps(); N];
                for i in 0..nb {
                    let p = rp.add(i * 34);
                    let d = f16(p);
                    let w = _mm256_loadu_si256(p.add(2) as *const __m256i);
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
            drive!(q8_0, k_q8_0);

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
