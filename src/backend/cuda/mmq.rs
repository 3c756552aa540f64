//! The products of a batched step on the tensor cores, reading the quantized weights directly
//! (kernels/mmq.cu: int8 mma of the weights' quants with the inputs' 16-bit chunk records):
//! which products take them, the switches, the launch.
//!
//! Each output is one thread's f32 sum over the chunks in order, so an input's results do not
//! depend on the other inputs of the step nor on their count (batch-invariant as long as the
//! step takes this path).

use super::fused::MvArgs;
use super::launch::dim;
use super::CudaDevice;
use crate::quant::GgmlType;
use crate::{Error, Result};
use std::ffi::c_void;

/// Weight-row slots of a block and stages of its ring (kernels/mmq.cu MQ_SLOTS, MQ_STAGES).
const SLOTS: usize = 32;
const STAGES: usize = 6;
/// Shared memory of the warps' partial sums at the end (kernels/mmq.cu MQ_RED_BYTES: 3 warps
/// x 2 x 8 x 4 floats x 32 lanes).
const RED_BYTES: usize = 3 * 2 * 8 * 4 * 32 * 4;
/// Inputs of one block (MQ_NT n8 tiles).
const INPUTS_PER_BLOCK: usize = 64;

/// The formats with a kernel (and the pairs of a Q4_K_M file's q/k/v).
const FORMATS: [GgmlType; 5] = [
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];
const PAIRS: [(GgmlType, GgmlType); 2] = [
    (GgmlType::Q5_0, GgmlType::Q8_0),
    (GgmlType::Q4_K, GgmlType::Q6_K),
];

/// The kernels kernels/mmq.cu defines.
pub(super) const KERNELS: [&str; 13] = [
    "mmq_prep",
    "mmq_q4_1",
    "mmq_q4_1_glu",
    "mmq_q5_0",
    "mmq_q5_0_glu",
    "mmq_q8_0",
    "mmq_q8_0_glu",
    "mmq_q4_k",
    "mmq_q4_k_glu",
    "mmq_q6_k",
    "mmq_q6_k_glu",
    "mmq_q5_0_q8_0",
    "mmq_q4_k_q6_k",
];

fn env_flag(name: &str, default: bool) -> bool {
    std::env::var(name).map_or(default, |v| v != "0")
}

/// Whether batched decode steps take these products (`LLORCH_CUDA_MMQ=1`; unset or 0: the
/// mat-vecs of several inputs and the two-pass GEMM). Off by default until the GPU tests
/// and the A/B of scripts/device-mmq.sh have run on a GPU (so far only the CPU emulator of
/// tests/emu has checked the kernels).
pub fn mmq_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| env_flag("LLORCH_CUDA_MMQ", false))
}

/// The fewest rows of a batched step that take them (`LLORCH_CUDA_MMQ_MIN`, default 8; fewer
/// rows keep the mat-vecs of several inputs).
pub fn mmq_min_rows() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("LLORCH_CUDA_MMQ_MIN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8)
            .max(2)
    })
}

/// Whether a prompt chunk's products take them too (`LLORCH_CUDA_MMQ_PROMPT=1`; default off:
/// the two-pass GEMM).
pub fn mmq_prompt() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| env_flag("LLORCH_CUDA_MMQ_PROMPT", false))
}

/// The kernel for products of these formats (a SwiGLU's: `glu`), if there is one: one
/// format, or a pair of [`PAIRS`] (not for a SwiGLU).
pub(super) fn mmq_kernel(types: &[GgmlType], glu: bool) -> Option<&'static str> {
    let &first = types.first()?;
    let name = |t: GgmlType| match t {
        GgmlType::Q4_1 => "q4_1",
        GgmlType::Q5_0 => "q5_0",
        GgmlType::Q8_0 => "q8_0",
        GgmlType::Q4_K => "q4_k",
        _ => "q6_k",
    };
    let want = if types.iter().all(|&t| t == first) {
        if !FORMATS.contains(&first) {
            return None;
        }
        format!("mmq_{}{}", name(first), if glu { "_glu" } else { "" })
    } else {
        let &(a, b) = PAIRS
            .iter()
            .find(|(a, b)| !glu && types.iter().all(|t| t == a || t == b))?;
        format!("mmq_{}_{}", name(a), name(b))
    };
    KERNELS.iter().find(|&&k| k == want).copied()
}

/// Bytes of a weight-row slot of one stage in kernels/mmq.cu (`MqGeo<T>::SLOT`): a stage's
/// blocks (8 chunks, 4 for Q8_0) from up to 15 bytes past a 16-byte boundary, in an odd
/// number of 16-byte words.
fn slot_bytes(ty: GgmlType) -> usize {
    let stage = match ty {
        GgmlType::Q8_0 => 4 * 34,
        GgmlType::Q5_0 => 8 * 22,
        GgmlType::Q4_1 => 8 * 20,
        GgmlType::Q4_K => 144,
        _ => 210,
    };
    16 * (((stage + 30) / 16) | 1)
}

/// Bytes of `n` inputs of `k` values in the tensor cores' fragment order (kernels/mmq.cu
/// mmq_prep): per 32-value chunk and group of 8 inputs, 512 bytes of int8 planes and 64 of
/// scales and sums. At most the bytes of `n.next_multiple_of(8)` chunk-record rows
/// ([`CudaDevice::input_record_bytes`]: 80 a chunk).
pub fn mmq_input_bytes(n: usize, k: usize) -> usize {
    k.div_ceil(32) * n.div_ceil(8) * 576
}

/// Dynamic shared memory of a kernel whose widest format has `slot`-byte slots: the ring, or
/// the partial sums that reuse it at the end if they need more.
fn shared_bytes(slot: usize) -> usize {
    (STAGES * SLOTS * slot).max(RED_BYTES)
}

/// The most dynamic shared memory an mmq kernel takes (the limit is raised at load).
pub(super) fn mmq_shared_max() -> usize {
    shared_bytes(FORMATS.iter().map(|&t| slot_bytes(t)).max().unwrap_or(0))
}

impl CudaDevice {
    /// The mmq launch over `n` inputs (chunk records at `input`, `a.x_stride` apart) for the
    /// products `rows` (each matrix's rows; a SwiGLU's (`glu`): gate and up, equal) of formats
    /// `types`. `a` is checked by the caller (fused.rs, as for the mat-vecs).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_mmq(
        &self,
        a: MvArgs,
        glu: bool,
        input: u64,
        n: usize,
        types: &[GgmlType],
        rows: &[usize],
    ) -> Result<()> {
        let name = mmq_kernel(types, glu).ok_or_else(|| {
            Error::Unsupported(format!("tensor-core products of {types:?}: no kernel"))
        })?;
        let weight_tiles: usize = if glu {
            rows[0].div_ceil(SLOTS / 2)
        } else {
            rows.iter().map(|r| r.div_ceil(SLOTS)).sum()
        };
        let n_xt = n.div_ceil(INPUTS_PER_BLOCK);
        let nt_n = n.min(INPUTS_PER_BLOCK).div_ceil(8);
        let blocks = dim(weight_tiles * n_xt, "mmq blocks")?;
        let smem = shared_bytes(types.iter().map(|&t| slot_bytes(t)).max().unwrap_or(0));
        launch!(self, name, (blocks as u32, 1, 1), (128, 1, 1), shared = smem as u32;
            a, input, dim(n, "mmq inputs")?, n_xt as i32, nt_n as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_and_slots_match_the_cuda_file() {
        use GgmlType::*;
        // The slot sizes kernels/mmq.cu's MqGeo computes (its formula by hand).
        assert_eq!(slot_bytes(Q8_0), 176); // 136 + 15 -> 10 words -> 11
        assert_eq!(slot_bytes(Q5_0), 208); // 176 + 15 -> 12 -> 13
        assert_eq!(slot_bytes(Q4_1), 176); // 160 + 15 -> 11
        assert_eq!(slot_bytes(Q4_K), 176); // 144 + 15 -> 10 -> 11
        assert_eq!(slot_bytes(Q6_K), 240); // 210 + 15 -> 15
        assert_eq!(mmq_shared_max(), 6 * 32 * 240);
        assert_eq!(shared_bytes(176), 6 * 32 * 176);
        assert!(RED_BYTES <= shared_bytes(176));
        // Every format and pair has its kernel; the others and mixed SwiGLUs none.
        for t in FORMATS {
            assert!(mmq_kernel(&[t, t], false).is_some());
            assert!(mmq_kernel(&[t, t], true).is_some());
        }
        assert_eq!(
            mmq_kernel(&[Q4_K, Q4_K, Q6_K], false),
            Some("mmq_q4_k_q6_k")
        );
        assert_eq!(
            mmq_kernel(&[Q5_0, Q8_0, Q5_0], false),
            Some("mmq_q5_0_q8_0")
        );
        assert_eq!(mmq_kernel(&[Q4_K, Q6_K], true), None);
        assert_eq!(mmq_kernel(&[Q4_K, Q8_0], false), None);
        assert_eq!(mmq_kernel(&[F16], false), None);
        assert_eq!(mmq_kernel(&[MXFP4], false), None);
    }
}
