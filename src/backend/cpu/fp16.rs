//! f16 keys and values for the CPU's KV cache: f32 rounded to f16 once, as a position is
//! written (round to nearest, ties to even), and widened back exactly as attention reads it.
//! x86-64: AVX-512F converts 16 values an instruction, F16C (AVX2 machines) 8; AArch64: NEON's
//! `fcvtl`/`fcvtn` 4 (base ARMv8, no extension needed); elsewhere, and for the tails, the
//! scalar conversion of the `half` crate (the reference the tests compare with, bit for bit).

// The AVX-512 intrinsics are stable since Rust 1.89 (as in quant/x86.rs).
#![allow(clippy::incompatible_msrv)]

pub use half::f16;

/// A conversion path: a vector instruction set, or the scalar code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Avx512,
    F16c,
    Neon,
    Scalar,
}

impl Path {
    pub const ALL: [Path; 4] = [Path::Avx512, Path::F16c, Path::Neon, Path::Scalar];

    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Path::F16c => is_x86_feature_detected!("f16c") && is_x86_feature_detected!("avx"),
            #[cfg(target_arch = "aarch64")]
            Path::Neon => true,
            Path::Scalar => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest this CPU runs (decided once).
    pub fn best() -> Path {
        static BEST: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            Path::ALL
                .into_iter()
                .find(|p| p.available())
                .unwrap_or(Path::Scalar)
        })
    }
}

/// `dst[i] = src[i]` rounded to f16 (nearest, ties to even; overflow to ±inf, NaN stays NaN).
pub fn narrow(src: &[f32], dst: &mut [f16]) {
    narrow_on(Path::best(), src, dst);
}

/// `dst[i] = src[i]` as f32 (exact: every f16 is an f32).
pub fn widen(src: &[f16], dst: &mut [f32]) {
    widen_on(Path::best(), src, dst);
}

/// [`narrow`] on `path` (the scalar code where this CPU lacks it).
pub fn narrow_on(path: Path, src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len());
    // SAFETY (each arm): the path's instructions are present; equal lengths checked above.
    let done = match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 if path.available() => unsafe { narrow_avx512(src, dst) },
        #[cfg(target_arch = "x86_64")]
        Path::F16c if path.available() => unsafe { narrow_f16c(src, dst) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => unsafe { narrow_neon(src, dst) },
        _ => 0,
    };
    narrow_scalar(&src[done..], &mut dst[done..]);
}

/// [`widen`] on `path` (the scalar code where this CPU lacks it).
pub fn widen_on(path: Path, src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    // SAFETY (each arm): the path's instructions are present; equal lengths checked above.
    let done = match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 if path.available() => unsafe { widen_avx512(src, dst) },
        #[cfg(target_arch = "x86_64")]
        Path::F16c if path.available() => unsafe { widen_f16c(src, dst) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => unsafe { widen_neon(src, dst) },
        _ => 0,
    };
    widen_scalar(&src[done..], &mut dst[done..]);
}

/// The portable [`narrow`].
fn narrow_scalar(src: &[f32], dst: &mut [f16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(s);
    }
}

/// The portable [`widen`].
fn widen_scalar(src: &[f16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// The whole 16-value groups of [`narrow`]; returns how many values were converted.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn narrow_avx512(src: &[f32], dst: &mut [f16]) -> usize {
    use std::arch::x86_64::*;
    let n = src.len() / 16 * 16;
    for i in (0..n).step_by(16) {
        let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_loadu_ps(src.as_ptr().add(i)),
        );
        _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h);
    }
    n
}

/// The whole 16-value groups of [`widen`]; returns how many values were converted.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_avx512(src: &[f16], dst: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let n = src.len() / 16 * 16;
    for i in (0..n).step_by(16) {
        let h = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
        _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
    }
    n
}

/// The whole 8-value groups of [`narrow`] with F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn narrow_f16c(src: &[f32], dst: &mut [f16]) -> usize {
    use std::arch::x86_64::*;
    let n = src.len() / 8 * 8;
    for i in (0..n).step_by(8) {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
        _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
    }
    n
}

/// The whole 8-value groups of [`widen`] with F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16c(src: &[f16], dst: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let n = src.len() / 8 * 8;
    for i in (0..n).step_by(8) {
        let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
    }
    n
}

/// The whole 4-value groups of [`narrow`]: `fcvtn` rounds by the FPCR's mode, nearest-even
/// unless a program changed it. (Rust's f16 vector types are not stable yet, so the
/// instruction is written out; its registers are plain 64/128-bit vectors.)
#[cfg(target_arch = "aarch64")]
unsafe fn narrow_neon(src: &[f32], dst: &mut [f16]) -> usize {
    use std::arch::aarch64::*;
    let n = src.len() / 4 * 4;
    for i in (0..n).step_by(4) {
        let f = vld1q_f32(src.as_ptr().add(i));
        let h: uint16x4_t;
        std::arch::asm!("fcvtn {h:v}.4h, {f:v}.4s", f = in(vreg) f, h = out(vreg) h,
            options(pure, nomem, nostack));
        vst1_u16(dst.as_mut_ptr().add(i) as *mut u16, h);
    }
    n
}

/// The whole 4-value groups of [`widen`] (`fcvtl`, exact).
#[cfg(target_arch = "aarch64")]
unsafe fn widen_neon(src: &[f16], dst: &mut [f32]) -> usize {
    use std::arch::aarch64::*;
    let n = src.len() / 4 * 4;
    for i in (0..n).step_by(4) {
        let h = vld1_u16(src.as_ptr().add(i) as *const u16);
        let f: float32x4_t;
        std::arch::asm!("fcvtl {f:v}.4s, {h:v}.4h", h = in(vreg) h, f = out(vreg) f,
            options(pure, nomem, nostack));
        vst1q_f32(dst.as_mut_ptr().add(i), f);
    }
    n
}
