//! A session's KV memory from the model's pool (`backend::kvpool`): the grant a generation
//! gets up front, the first blocks of a prompt taken from the prefix cache, and the blocks
//! a prompt offers to it.
//!
//! **Exactness of the prefix cache.** A session served from the cache must generate what it
//! generates without it, bit for bit. Only blocks of a session's first prompt are cached
//! (fed from an empty cache in prefill chunks from position 0; never generated tokens, whose
//! rows were computed one at a time). A row's keys and values then depend only on the tokens
//! up to it and on how its prefill chunk computes it: the products compute each row of a
//! chunk alike whatever the other rows (bit for bit), except, where
//! `quant::WIDE_INVARIANT_COLS` is finite (not on AVX-512 machines, whose kernels compute
//! every column count alike), that a chunk of at most that many rows takes other kernels'
//! arithmetic. So a prompt resumed at a cached position `p` is fed in the chunks an uncached
//! prefill has (boundaries at multiples of the chunk from position 0, not from `p`), and
//! there `p` moves back one block where its first chunk would be small while the uncached
//! one is not ([`usable_prefix`]).

use super::{Generation, Session};
use crate::backend::kvpool::{Elem, Grant};
use crate::Result;

impl Session {
    /// Set aside the blocks for writing positions `start..end` of this session's cache
    /// (waiting in line for them unless the session fails when busy); None where the
    /// backend's cache is whole.
    pub(super) fn kv_admit(&self, start: usize, end: usize) -> Result<Option<Grant>> {
        let need = {
            let st = self.state.lock();
            if !st.paged() {
                return Ok(None);
            }
            st.kv_blocks_needed(start, end)
        };
        self.kv_grant(need).map(Some)
    }

    /// A grant of `blocks` blocks of this session's value type from the model's pool.
    pub(super) fn kv_grant(&self, blocks: usize) -> Result<Grant> {
        self.model
            .kv_pool
            .admit(blocks, self.kv_elem(), !self.fail_when_busy, &self.cancel)
    }

    /// The type of the values in this session's KV cache (its `kv_type` on its device).
    pub fn kv_elem(&self) -> Elem {
        self.kv_type.elem(self.model.ctx.options.device)
    }

    /// Before a generation's prompt is fed: its first blocks from the prefix cache (on a
    /// first turn), then the grant for the rest of the prompt and the tokens it may
    /// generate, and the prompt's blocks. Returns the prompt tokens already in the cache.
    pub(super) fn kv_prepare(&mut self, g: &mut Generation, prompt: &[u32]) -> Result<usize> {
        let (paged, taps, batchable, chunk, prefix) = {
            let st = self.state.lock();
            (
                st.paged(),
                st.taps_on(),
                st.batchable(),
                st.prefill_chunk(),
                st.prefix_cache(),
            )
        };
        g.cacheable =
            prefix && self.history.is_empty() && self.pending.is_none() && !taps && batchable;
        let pool = &self.model.kv_pool;
        let block = pool.layout().block;
        if !paged {
            // A GPU's cache grows now to what the generation may write, so that no step
            // allocates (or runs out of memory) half-way; in the pool's line, so that when the
            // memory is held by other sessions this waits (or is busy) as on the CPU. Cached
            // blocks are its first pages, shared (not bit for bit on a GPU:
            // cuda/model/prefix_blocks.rs).
            let cached = if g.cacheable {
                pool.lookup(prompt, self.kv_elem())
            } else {
                Vec::new()
            };
            let skip = cached_blocks_before_last(cached.len() * block, prompt.len(), block);
            let end = (self.history.len() + self.pending.is_some() as usize + prompt.len())
                .saturating_add(g.max_tokens as usize)
                .min(self.n_ctx);
            if skip > 0 {
                self.state.lock().kv_adopt(&cached[..skip / block], block)?;
                self.history.extend_from_slice(&prompt[..skip]);
            }
            let start = self.history.len();
            let state = &self.state;
            let grant = pool.admit_whole(
                &format!("a KV cache of {end} positions"),
                !self.fail_when_busy,
                &self.cancel,
                &mut || state.lock().kv_grow(start, end, None),
                &|| state.lock().kv_never_fits(end),
            )?;
            g.grant = Some(grant);
            return Ok(skip);
        }
        let mut skip = 0;
        if g.cacheable {
            let cached = pool.lookup(prompt, self.kv_elem());
            skip = usable_prefix(cached.len() * block, prompt.len(), block, chunk);
            if skip > 0 {
                self.state.lock().kv_adopt(&cached[..skip / block], block)?;
                self.history.extend_from_slice(&prompt[..skip]);
            }
        }
        let start = self.history.len();
        let fed_end = start + self.pending.is_some() as usize + prompt.len() - skip;
        let end = fed_end
            .saturating_add(g.max_tokens as usize)
            .min(self.n_ctx);
        let mut grant = self.kv_admit(start, end.max(fed_end))?;
        self.state.lock().kv_grow(start, fed_end, grant.as_mut())?;
        g.grant = grant;
        Ok(skip)
    }

    /// After a first prompt was fed: offer its full blocks to the prefix cache.
    pub(super) fn kv_offer(&mut self, g: &Generation) {
        if g.cacheable {
            self.state
                .lock()
                .kv_register(&self.history, &self.model.kv_pool);
        }
    }
}

/// Of `cached` positions (whole blocks of `block`), those before the last token of a prompt of
/// `len` tokens (whole blocks: the last token is always computed, its logits start the
/// generation).
fn cached_blocks_before_last(cached: usize, len: usize, block: usize) -> usize {
    cached.min(len.saturating_sub(1) / block * block)
}

/// Positions of a prompt of `len` tokens to take from `cached` cached ones (whole blocks of
/// `block`) so that the rest computes as it does without the cache, in prefill chunks of
/// `chunk` (see the module's notes). The last prompt token is always computed: its logits
/// start the generation.
pub fn usable_prefix(cached: usize, len: usize, block: usize, chunk: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let mut p = cached_blocks_before_last(cached, len, block);
    let w = crate::quant::WIDE_INVARIANT_COLS;
    if w == usize::MAX {
        // Every chunk size computes its rows alike (the AVX-512 kernels): any block will do.
        return p;
    }
    if block <= w {
        return 0;
    }
    if p % chunk != 0 {
        let k0 = p / chunk * chunk;
        let end = len.min(k0 + chunk);
        if end - p <= w && end - k0 > w {
            // Still within that chunk: p - block >= k0 (both multiples of the block).
            p -= block;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::usable_prefix;
    use crate::quant::WIDE_INVARIANT_COLS as W;

    /// The chunk a row falls in keeps its kind (more than W rows, or not) with the cache.
    /// (W is `usize::MAX` on x86-64, where every chunk has one kind.)
    #[test]
    #[allow(clippy::absurd_extreme_comparisons)]
    fn resumed_chunks_keep_their_kind() {
        let (block, chunk) = (16, 256);
        for len in 1..700 {
            for cached in (0..=len + 32).step_by(block) {
                let p = usable_prefix(cached, len, block, chunk);
                assert!(
                    p < len.max(1) && p % block == 0 && p <= cached,
                    "{len} {cached}"
                );
                for row in p..len {
                    let k0 = row / chunk * chunk;
                    let end = len.min(k0 + chunk);
                    let alone = end - k0;
                    let resumed = end - k0.max(p);
                    assert_eq!(
                        alone <= W,
                        resumed <= W,
                        "len {len} cached {cached} row {row}"
                    );
                }
            }
        }
    }
}
