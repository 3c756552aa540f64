//! The prefix cache on a GPU. A GPU session's cache is whole (one allocation per layer,
//! grown in place), not made of the pool's blocks, so the model's pool caches *copies*: after
//! a session's first prompt, its full blocks are copied out of its cache into blocks of
//! device memory (`Rows::Device`, one `DeviceBuffer` each, accounted as KV cache by the
//! device's memory manager: per layer K then V, each `[n_kv][block][head_dim]`), and a later
//! session whose prompt starts with cached blocks copies them into its cache (one kernel
//! launch, kernels/attention.cu `kv_blocks_copy`) instead of computing those positions. The
//! lookup, the chaining by tokens, the least-recently-used eviction (also when a cache must
//! grow and the memory is short: `KvPool::admit_whole`) are the pool's, as on the CPU.
//!
//! Not bit for bit: the rows a session takes from the cache were computed in another
//! session's prompt, whose products ran over another number of rows; on the GPU the products'
//! kernels (and so their rounding) depend on the row count (the mat-vecs up to a few rows,
//! tensor-core tiles chosen by size), so a session served from the cache generates within
//! the GPU's batching tolerance of one served without it, not bit for bit (the CPU's is
//! exact: session::kv_memory). `LLORCH_CUDA_PREFIX_CACHE=0` or [`set_prefix_cache`] turns it off.

use super::super::{CudaDevice, DeviceBuffer, MemKind};
use super::{switch, CudaState, OFF, ON, UNSET};
use crate::backend::kvpool::{Block, Elem, KvPool};
use crate::{Error, Result};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

static PREFIX_CACHE: AtomicU8 = AtomicU8::new(UNSET);

/// Whether GPU sessions use the prefix cache: on unless `LLORCH_CUDA_PREFIX_CACHE=0` or
/// [`set_prefix_cache`] turned it off.
pub fn prefix_cache_enabled() -> bool {
    switch(&PREFIX_CACHE, "LLORCH_CUDA_PREFIX_CACHE")
}

/// Turn the GPU's prefix cache on or off for the process (overrides
/// `LLORCH_CUDA_PREFIX_CACHE`; generations begun afterwards take it). Off, every prompt is
/// computed whole, so a session's results do not depend on what others computed before it.
pub fn set_prefix_cache(on: bool) {
    PREFIX_CACHE.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

impl CudaState {
    fn kv_elem(&self) -> Elem {
        if self.kv.first().is_some_and(|c| c.f32) {
            Elem::F32
        } else {
            Elem::F16
        }
    }

    /// Fill positions `0..blocks.len() * block` of this cache from prefix-cache blocks (the
    /// pool's lookup for this session's first prompt). Kept until
    /// [`kv_register`](Self::kv_register), whose chain they begin.
    pub fn kv_adopt(&mut self, blocks: &[Arc<Block>], block: usize) -> Result<()> {
        let end = blocks.len() * block;
        self.ensure_kv(end)?;
        let mut bufs = Vec::with_capacity(blocks.len());
        for b in blocks {
            let buf = b.data().device::<DeviceBuffer>().ok_or_else(|| {
                Error::Internal("a GPU session was offered a host KV block".into())
            })?;
            if b.elem() != self.kv_elem() {
                return Err(Error::Internal(format!(
                    "a cache of {} values was offered a block of {}",
                    self.kv_elem().name(),
                    b.elem().name()
                )));
            }
            bufs.push(buf);
        }
        self.dev
            .kv_blocks_copy(&mut self.copy_table, &bufs, &self.kv, 0, block, true)?;
        self.prefix = blocks.to_vec();
        Ok(())
    }

    /// Offer the full blocks of `tokens` (this session's first prompt, positions 0..) to the
    /// pool's prefix cache: the blocks it adopted, then copies of the rest of its cache's full
    /// blocks. Best effort: where the device has no memory for the copies, fewer (or none)
    /// are offered.
    pub fn kv_register(&mut self, tokens: &[u32], pool: &KvPool) {
        let block = pool.layout().block;
        let n = tokens.len().min(self.kv_cap) / block;
        let mut chain: Vec<Arc<Block>> = std::mem::take(&mut self.prefix);
        chain.truncate(n);
        let first = chain.len();
        let Some(bytes) = CudaDevice::kv_block_bytes(&self.kv, block) else {
            return;
        };
        let mut bufs = Vec::new();
        for _ in first..n {
            match self.dev.alloc(bytes, MemKind::KvCache) {
                Ok(b) => bufs.push(b),
                Err(_) => break,
            }
        }
        if !bufs.is_empty() {
            let refs: Vec<&DeviceBuffer> = bufs.iter().collect();
            if self
                .dev
                .kv_blocks_copy(
                    &mut self.copy_table,
                    &refs,
                    &self.kv,
                    first * block,
                    block,
                    false,
                )
                .is_err()
            {
                return;
            }
        }
        let elem = self.kv_elem();
        for b in bufs {
            chain.push(pool.device_block(elem, Box::new(b)));
        }
        pool.register(&tokens[..chain.len() * block], &mut chain);
    }
}
