//! A session state's KV rows as plain f32 data, whatever the device (what session
//! save/restore and fork copy); and its KV blocks where the backend takes them from the
//! model's pool (the CPU; a GPU state's pages come from the device's arena, in the pool's
//! line).

use super::kvpool::{Block, Grant, KvPool};
use super::{Dims, State};
use crate::Result;
use std::sync::Arc;

impl State {
    /// The keys and values of the first `n` positions: per layer, `n` rows of K then `n` rows
    /// of V, `dims.kv_dim()` f32 values a row (positions in order, heads in order within a
    /// row). On the GPU this downloads them (f16 widened to f32, exactly).
    pub fn kv_rows(&self, n: usize) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        match self {
            State::Cpu(_, st) => st.kv_rows(n, &mut out)?,
            #[cfg(feature = "cuda")]
            State::Cuda(_, st) => st.kv_rows(n, &mut out)?,
        }
        Ok(out)
    }

    /// Overwrites the first `n` positions' keys and values with `data` (laid out as
    /// [`kv_rows`](Self::kv_rows) gives them; the length is checked). On the CPU in new
    /// blocks paid from `grant` (the old ones kept until then); on the GPU this uploads them
    /// (rounded to f16, as the kernels store them).
    pub fn set_kv_rows(&mut self, n: usize, data: &[f32], grant: Option<&mut Grant>) -> Result<()> {
        self.settle_ahead();
        match self {
            State::Cpu(_, st) => st.set_kv_rows(n, data, grant),
            #[cfg(feature = "cuda")]
            State::Cuda(_, st) => st.set_kv_rows(n, data),
        }
    }
}

impl State {
    /// Whether the KV cache comes in blocks from the model's pool (and so takes part in
    /// grants and the prefix cache).
    pub fn paged(&self) -> bool {
        matches!(self, State::Cpu(..))
    }

    /// Blocks to allocate before positions `start..end` are written (see
    /// [`kv_grow`](Self::kv_grow)); 0 where the cache is whole.
    pub fn kv_blocks_needed(&self, start: usize, end: usize) -> usize {
        match self {
            State::Cpu(_, st) => st.kv().blocks_needed(start, end),
            #[cfg(feature = "cuda")]
            State::Cuda(..) => 0,
        }
    }

    /// Make positions `start..end` writable: new blocks (a GPU's pages), copies of shared
    /// ones.
    pub fn kv_grow(&mut self, start: usize, end: usize, grant: Option<&mut Grant>) -> Result<()> {
        match self {
            State::Cpu(_, st) => st.kv_mut().grow(start, end, grant),
            #[cfg(feature = "cuda")]
            State::Cuda(_, st) => st.ensure_kv(start, end),
        }
    }

    /// For a cache whose memory the backend allocates (a GPU's): why growing it to hold `end`
    /// positions could never fit, even with no other session's cache beside it. None where it
    /// could, or the cache's blocks are the pool's.
    pub fn kv_never_fits(&self, end: usize) -> Option<String> {
        match self {
            State::Cpu(..) => {
                let _ = end;
                None
            }
            #[cfg(feature = "cuda")]
            State::Cuda(_, st) => st.kv_never_fits(end),
        }
    }

    /// Give back the blocks past the first `n` positions.
    pub fn kv_truncate(&mut self, n: usize) {
        self.settle_ahead();
        match self {
            State::Cpu(_, st) => st.kv_mut().truncate(n),
            #[cfg(feature = "cuda")]
            State::Cuda(_, st) => st.kv_truncate(n),
        }
    }

    /// Whether the state takes part in the prefix cache (the CPU's blocks; a GPU's cache
    /// through copies of them: cuda/model/prefix_blocks.rs).
    pub fn prefix_cache(&self) -> bool {
        match self {
            State::Cpu(..) => true,
            #[cfg(feature = "cuda")]
            State::Cuda(..) => super::cuda::prefix_cache_enabled(),
        }
    }

    /// Start an empty cache from cached blocks (the prefix cache's, of `block` positions:
    /// shared on the CPU, copied into a GPU's cache).
    pub fn kv_adopt(&mut self, blocks: &[Arc<Block>], block: usize) -> Result<()> {
        match self {
            State::Cpu(_, st) => {
                let _ = block;
                st.kv_mut().adopt(blocks)
            }
            #[cfg(feature = "cuda")]
            State::Cuda(_, st) => st.kv_adopt(blocks, block),
        }
    }

    /// Offer the full blocks holding `tokens` (from position 0) to `pool`'s prefix cache.
    pub fn kv_register(&mut self, tokens: &[u32], pool: &KvPool) {
        match self {
            State::Cpu(_, st) => {
                let _ = pool;
                st.kv_mut().register(tokens)
            }
            #[cfg(feature = "cuda")]
            State::Cuda(_, st) => st.kv_register(tokens, pool),
        }
    }

    /// Share `other`'s blocks (a fork: copied on the first write; a GPU's pages alike); false
    /// where the devices or the value types differ (copy the rows instead).
    pub fn kv_share(&mut self, other: &State) -> bool {
        match (self, other) {
            (State::Cpu(_, a), State::Cpu(_, b)) => a.kv_mut().share(b.kv()),
            #[cfg(feature = "cuda")]
            (State::Cuda(_, a), State::Cuda(_, b)) => a.kv_share(b),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

/// Values [`State::kv_rows`] gives for `n` positions, or None if that overflows.
pub fn kv_values(dims: &Dims, n: usize) -> Option<usize> {
    n.checked_mul(dims.kv_dim())?
        .checked_mul(dims.n_layer)?
        .checked_mul(2)
}
