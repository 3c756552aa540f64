//! Block formats: layout, dequantize-to-f32, quantize-from-f32, and the CPU dot products.
//! Knows nothing of files or models. (Owner: quant work; this is the agreed interface.)

/// Tensor element types of GGUF (ggml type ids).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
    MXFP4 = 39,
}

impl GgmlType {
    /// The type for a ggml type id, or None for ids this build does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            30 => BF16,
            39 => MXFP4,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            BF16 => "BF16",
            MXFP4 => "MXFP4",
        }
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | MXFP4 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
            MXFP4 => 17,
        }
    }

    /// Bytes of `n` values, or None if `n` is not a whole number of blocks or overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if n % bs != 0 {
            return None;
        }
        (n / bs).checked_mul(self.type_size() as u64)
    }
}

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod dequant;
mod dot;
mod quantize;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use dequant::dequantize;
pub use dot::{
    check_dot, quantize_q8, simd_level, supported_for_dot, vec_dot, vec_dot_at, vec_dot_f32,
    vec_dot_multi, vec_dot_multi_at, wide_matmul, wide_matmul_strided, wide_supported, Acts16,
    BlockQ8, SimdLevel, WIDE_INVARIANT_COLS,
};
pub use dot::{has_kernel, quantize_column, vec_dot_f32_at, Acts16Col};
pub use quantize::quantize;

/// What went wrong converting blocks, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    /// A value count that is not a whole number of blocks.
    #[error("{ty}: {n} values is not a whole number of {block}-value blocks")]
    NotWholeBlocks {
        ty: &'static str,
        n: usize,
        block: usize,
    },
    /// A byte buffer whose length does not match the value count.
    #[error("{ty}: {what} has {got} bytes, expected {want} ({blocks} blocks)")]
    SizeMismatch {
        ty: &'static str,
        what: &'static str,
        got: usize,
        want: usize,
        blocks: usize,
    },
    /// The type does not support this operation.
    #[error("{ty}: {op} is not supported for this type")]
    Unsupported { ty: &'static str, op: &'static str },
    /// An input value that cannot be represented (NaN, infinity, scale beyond f16).
    #[error("{ty}: cannot quantize value {value} at index {index}: {why}")]
    BadValue {
        ty: &'static str,
        index: usize,
        value: f32,
        why: &'static str,
    },
}

impl From<QuantError> for crate::Error {
    fn from(e: QuantError) -> Self {
        match e {
            QuantError::Unsupported { .. } => crate::Error::Unsupported(e.to_string()),
            _ => crate::Error::InvalidArgument(e.to_string()),
        }
    }
}

/// Checks that `n_values` values of `ty` occupy exactly `n_bytes` bytes; returns the block count.
pub(crate) fn check_sizes(
    ty: GgmlType,
    n_values: usize,
    n_bytes: usize,
    what: &'static str,
) -> Result<usize, QuantError> {
    let bs = ty.block_size();
    if n_values % bs != 0 {
        return Err(QuantError::NotWholeBlocks {
            ty: ty.name(),
            n: n_values,
            block: bs,
        });
    }
    let blocks = n_values / bs;
    let want = blocks.saturating_mul(ty.type_size());
    if n_bytes != want {
        return Err(QuantError::SizeMismatch {
            ty: ty.name(),
            what,
            got: n_bytes,
            want,
            blocks,
        });
    }
    Ok(blocks)
}

/// Reads a little-endian f16 at `b[0..2]`.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block's 12 scale bytes.
#[inline(always)]
pub(crate) fn k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The E2M1 value of each 4-bit MXFP4 code, doubled so that all are integers: codes 0..7 are
/// 0, 0.5, 1, 1.5, 2, 3, 4, 6 and codes 8..15 their negatives (OCP MX v1.0). The block scale
/// [`e8m0_half`] is halved to match, so value = e8m0_half(e) * MXFP4_VALUES[code] exactly.
pub(crate) const MXFP4_VALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half the scale 2^(e-127) of an E8M0 exponent byte: 2^(e-128), as the f32 bit pattern (a
/// subnormal for e < 2, so that e = 0 and 1 stay exact; e = 255 gives 2^127 rather than the
/// spec's NaN, as the reference reader does).
#[inline(always)]
pub(crate) fn e8m0_half(e: u8) -> f32 {
    let e = e as u32;
    f32::from_bits(if e < 2 {
        0x0020_0000 << e
    } else {
        (e - 1) << 23
    })
}

/// The 16 signed 6-bit scales of a Q3_K block's 12 scale bytes.
#[inline(always)]
pub(crate) fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let lo = if i < 8 { s[i] & 0xF } else { s[i - 8] >> 4 };
        let hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = ((lo | (hi << 4)) as i8) - 32;
    }
    out
}
