//! f16 copies of the quantized matrices, made once at load, for the products of many rows
//! (a prompt chunk, a batched step of two or more sessions): the two-pass product's first
//! pass (dequantize to f16, kernels/gemm_f16.cu) then runs once per model instead of once per
//! product per step, and a batched step's products take the skinny f16 kernel from 2 rows.
//! The numbers are those of the two-pass product (the same f16 values); the cost is 2 bytes
//! a weight of device memory (Qwen2.5 7B: 15 GB), counted as `MemKind::WeightCopies`.
//! Made when they take at most a quarter of the card or of the context's budget. H100,
//! synthetic shapes (bench/RESULTS.md, session 12): 7B aggregate decode at 8 / 128 sessions
//! 512 / 4,734 -> 1,091 / 6,165 tok/s, pp512 12,844 -> 15,557; 0.5B 3,029 / 14,204 ->
//! 3,583 / 16,813, pp512 63,962 -> 69,827.

use super::super::moe::is_experts;
use super::super::{CudaDevice, DeviceBuffer, MemKind};
use super::CudaWeight;
use crate::backend::WeightTensor;
use crate::quant::GgmlType;
use crate::{Error, Result};

/// Whether copies of `bytes` are made where `room` bytes are available (the card, or the
/// context's budget when it has one): when they take at most a quarter of it, so that the
/// sessions' caches keep most of the room (a 7B's 15 GB on an 80 GB card: yes; on a 24 GB
/// card: no, its batched steps then dequantize per step). `LLORCH_CUDA_F16_WEIGHTS=1`: whenever
/// they fit; `0`: never.
fn wanted(bytes: u64, room: u64) -> bool {
    match std::env::var("LLORCH_CUDA_F16_WEIGHTS").as_deref() {
        Ok("1") => bytes <= room,
        Ok("0") => false,
        _ => bytes <= room / 4,
    }
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
        let mut b = match dev.alloc(w.rows * w.cols * 2, MemKind::WeightCopies) {
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
