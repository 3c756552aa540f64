//! f16 copies of the quantized matrices, made once at load, for the products of many rows
//! (a prompt chunk, a batched step of many sessions): the two-pass product's first pass
//! (dequantize to f16, kernels/gemm_f16.cu) then runs once per model instead of once per
//! product per step. The numbers are those of the two-pass product (the same f16 values,
//! the same GEMM); the cost is 2 bytes a weight of device memory (Qwen2.5 7B: 15 GB).
//!
//! Off unless `LLORCH_CUDA_F16_WEIGHTS=1`: written in session 11, when no GPU time was left to
//! run it (scripts/device-mmq.sh holds its A/B). Once measured, the intended default is on
//! when the copies take at most a quarter of the card or of the context's budget.

use super::super::moe::is_experts;
use super::super::{CudaDevice, DeviceBuffer, MemKind};
use super::CudaWeight;
use crate::backend::WeightTensor;
use crate::quant::GgmlType;
use crate::{Error, Result};

/// Whether copies of `bytes` are made where `room` bytes are available (the card, or the
/// context's budget when it has one): `LLORCH_CUDA_F16_WEIGHTS=1` and they fit in it.
fn wanted(bytes: u64, room: u64) -> bool {
    std::env::var("LLORCH_CUDA_F16_WEIGHTS").is_ok_and(|v| v == "1") && bytes <= room
}

/// Whether a tensor (file name `name`, uploaded as `rows` rows of type `ty`) is a matrix the
/// two-pass product multiplies: a quantized layer matrix or output head, not an expert (the
/// mixture kernels read those) nor the token embedding of a model with its own output head
/// (`own_head`: it is only looked up).
fn multiplied(name: &str, ty: GgmlType, rows: usize, own_head: bool) -> bool {
    let quantized = matches!(
        ty,
        GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K
    );
    let embedding_only = own_head && name == "token_embd.weight";
    rows > 1 && quantized && !is_experts(name) && !embedding_only
}

/// The copies, by weight id (None where there is none). Out of memory (card or budget) is
/// not an error: the model then has none and the products dequantize per step as before.
pub(super) fn f16_copies(
    dev: &CudaDevice,
    tensors: &[WeightTensor],
    weights: &[CudaWeight],
) -> Result<Vec<Option<DeviceBuffer>>> {
    let mut out: Vec<Option<DeviceBuffer>> = weights.iter().map(|_| None).collect();
    if !super::gemm_enabled() {
        return Ok(out);
    }
    let own_head = tensors.iter().any(|t| t.name == "output.weight");
    let chosen: Vec<usize> = (0..weights.len())
        .filter(|&i| multiplied(&tensors[i].name, weights[i].ty, weights[i].rows, own_head))
        .collect();
    let bytes: u64 = chosen
        .iter()
        .map(|&i| weights[i].rows as u64 * weights[i].cols as u64 * 2)
        .sum();
    let room = match dev.inner.budget {
        0 => dev.total_memory(),
        b => b.min(dev.total_memory()),
    };
    if bytes == 0 || !wanted(bytes, room) {
        return Ok(out);
    }
    for i in chosen {
        let w = &weights[i];
        let mut b = match dev.alloc(w.rows * w.cols * 2, MemKind::Weights) {
            Ok(b) => b,
            Err(Error::OutOfMemory(_)) => return Ok(weights.iter().map(|_| None).collect()),
            Err(e) => return Err(e),
        };
        dev.dequant_f16(w.ty, &w.buf, w.rows, w.cols, &mut b)?;
        out[i] = Some(b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    #[test]
    fn copies_only_the_quantized_matrices_that_are_multiplied() {
        assert!(multiplied("blk.0.ffn_up.weight", Q4_K, 4864, true));
        assert!(multiplied("output.weight", Q6_K, 151936, true));
        // A tied embedding is the output head; an untied one is only looked up.
        assert!(multiplied("token_embd.weight", Q8_0, 151936, false));
        assert!(!multiplied("token_embd.weight", Q8_0, 151936, true));
        // Experts (the mixture kernels), float formats (their own split products), vectors.
        assert!(!multiplied("blk.0.ffn_up_exps.weight", Q4_K, 2880, true));
        assert!(!multiplied("blk.0.attn_q.weight", F16, 896, true));
        assert!(!multiplied("blk.0.attn_q.weight", MXFP4, 896, true));
        assert!(!multiplied("blk.0.attn_q.bias", Q8_0, 1, true));
    }
}
