//! The prefix cache on a GPU. A GPU session's cache is made of pages (kv_pages.rs) of the
//! pool's block size, so the model's pool caches the pages themselves: after a session's
//! first prompt, its full pages join the prefix cache as device blocks (`Rows::Device`
//! holding the page), and a later session whose prompt starts with cached blocks puts those
//! pages first in its own page table instead of computing those positions: nothing is
//! copied. A page held by more than one (the cache and its sessions) is read-only; a session
//! about to write into one (after a rewind) copies it first (`KvCache::prepare`). The lookup,
//! the chaining by tokens, the least-recently-used eviction of blocks no session uses (also
//! when a cache must grow and the memory is short: `KvPool::admit_whole`) are the pool's, as
//! on the CPU.
//!
//! Not bit for bit: the rows a session takes from the cache were computed in another
//! session's prompt, whose products ran over another number of rows; on the GPU the products'
//! kernels (and so their rounding) depend on the row count (the mat-vecs up to a few rows,
//! tensor-core tiles chosen by size), so a session served from the cache generates within
//! the GPU's batching tolerance of one served without it, not bit for bit (the CPU's is
//! exact: session::kv_memory). `LLORCH_CUDA_PREFIX_CACHE=0` or [`set_prefix_cache`] turns it off.

use super::super::KvPage;
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
        if self.kv.f32 {
            Elem::F32
        } else {
            Elem::F16
        }
    }

    /// Start this cache with prefix-cache blocks (the pool's lookup for this session's first
    /// prompt; blocks of `block` positions, this cache's pages): their pages become its
    /// first, shared. The blocks are held while the cache uses them, and begin the chain of
    /// [`kv_register`](Self::kv_register).
    pub fn kv_adopt(&mut self, blocks: &[Arc<Block>], block: usize) -> Result<()> {
        if block != super::KV_PAGE {
            return Err(Error::Internal(format!(
                "prefix-cache blocks of {block} positions for pages of {}",
                super::KV_PAGE
            )));
        }
        let mut pages = Vec::with_capacity(blocks.len());
        for b in blocks {
            let page = b.data().device::<Arc<KvPage>>().ok_or_else(|| {
                Error::Internal("a GPU session was offered a host KV block".into())
            })?;
            if b.elem() != self.kv_elem() {
                return Err(Error::Internal(format!(
                    "a cache of {} values was offered a block of {}",
                    self.kv_elem().name(),
                    b.elem().name()
                )));
            }
            pages.push(page.clone());
        }
        self.settle_ahead();
        self.dev.synchronize()?;
        self.kv.adopt(&self.dev, pages)?;
        self.prefix = blocks.to_vec();
        Ok(())
    }

    /// Share `other`'s pages (a fork of its session: each copies a page before writing
    /// into it); false where the caches differ in shape or value type (copy the rows then).
    pub fn kv_share(&mut self, other: &CudaState) -> bool {
        if !Arc::ptr_eq(self.kv.arena(), other.kv.arena()) || self.n_ctx < other.n_ctx {
            return false;
        }
        // Everything queued on either stream (a step launched ahead among it) has run: no
        // kernel writes a page once it is shared.
        self.settle_ahead();
        if self.dev.synchronize().is_err() || other.dev.synchronize().is_err() {
            return false;
        }
        if self.kv.share(&self.dev, &other.kv).is_err() {
            return false;
        }
        self.prefix = other.prefix.clone();
        true
    }

    /// Offer the full pages holding `tokens` (this session's first prompt, positions 0..)
    /// to the pool's prefix cache: the blocks it adopted, then blocks of its own next pages
    /// (shared from then on). The cache holds the chain's blocks while it uses them.
    pub fn kv_register(&mut self, tokens: &[u32], pool: &KvPool) {
        let block = pool.layout().block;
        if block != super::KV_PAGE {
            return;
        }
        let n = tokens.len().min(self.kv.capacity()) / block;
        let mut chain: Vec<Arc<Block>> = std::mem::take(&mut self.prefix);
        chain.truncate(n);
        let elem = self.kv_elem();
        for page in &self.kv.pages()[chain.len()..n] {
            chain.push(pool.device_block(elem, Box::new(page.clone())));
        }
        pool.register(&tokens[..chain.len() * block], &mut chain);
        self.prefix = chain;
    }
}
