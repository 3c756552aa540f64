//! The CUDA backend: one device, one memory manager, the embedded kernels and safe launches.
//!
//! The driver is loaded at run time (cudarc's dynamic loading), so this compiles and links on
//! machines without CUDA; [`CudaDevice::open`] answers [`Error::NoDevice`] there.
//! Every device allocation goes through [`CudaDevice::alloc`], which accounts it against the
//! optional budget; out of memory is [`Error::OutOfMemory`] with the numbers, never a crash.
//! Buffers free themselves (and their accounting) on drop.
//!
//! Work is issued in order on the handle's stream (each session has its own); writes and
//! downloads wait for it. A kernel fault shows up as an error from the next download or
//! [`CudaDevice::synchronize`]. A decode step (one token) is captured once as a CUDA graph and
//! replayed for every later token (see `model.rs`).

mod device;
#[macro_use]
mod launch;
mod batch;
mod fused;
mod kv_pages;
mod memory;
mod mmq;
mod model;
mod moe;

pub use batch::CudaBatch;
pub use device::CudaDevice;
pub use fused::{
    attention_scratch_floats, mmq_supported, Epilogue, ExpertInput, ExpertOut, ExpertTable,
    ExpertsRef, MatRef, MatVecOut, NewKv, Norm, ProductPath, ATTN_SPLITS, MAX_SELECTED_EXPERTS,
};
pub use kv_pages::{KvCache, KvLayer, KvPage, PageArena, KV_PAGE};
pub use launch::{
    gemm_enabled, gemm_parts, matmul_uses_gemm, matmul_uses_mma, GemmTile, MmaTile, RopeParams,
    ATTN_TILED_MIN_TOKENS, GEMM_TILES, MMA_MIN_TOKENS, MMA_TILES,
};
pub use memory::{DeviceBuffer, MemKind, MemoryReport};
pub use mmq::{mmq_enabled, mmq_input_bytes, mmq_min_rows, mmq_prompt};
pub use model::{
    prefix_cache_enabled, set_lookahead, set_prefix_cache, CudaModel, CudaState, CudaStep,
    MAX_STEP_TOKENS,
};

use crate::Error;
use cudarc::driver::result::DriverError;
use cudarc::driver::sys::CUresult;
use launch::{f32s, positive};

/// The fatbins of kernels/*.cu, compiled by build/kernels.rs.
mod fatbins {
    include!(concat!(env!("OUT_DIR"), "/cuda_kernels.rs"));
}

/// A driver error as a crate error; device out-of-memory becomes [`Error::OutOfMemory`].
fn drv(what: &str, e: DriverError) -> Error {
    if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        Error::OutOfMemory(format!("CUDA {what}: {e}"))
    } else {
        Error::Internal(format!("CUDA {what}: {e}"))
    }
}
