//! The prefix cache: full blocks of prompts, keyed by their tokens chained with the blocks
//! before them, shared read-only between sessions (an `Arc` each) and kept after their
//! sessions end while memory allows.
//!
//! A block's key hashes its element type, its parent's serial (the block before it in the
//! prompt; none for the first) and its tokens; a hit checks all three exactly (tokens equal, parent the block matched
//! just before), so a hash collision is a miss, never a wrong block. Idle blocks (used only
//! by the cache) are evicted least recently used first: when the budget is needed for new
//! blocks, or when more than [`MAX_IDLE_BYTES`] of them pile up. A lookup or registration
//! touches its chain from the last block to the first, so a chain's later blocks are older
//! and go first (a block whose parent is gone can no longer be reached).

use super::{Block, Elem};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Most bytes of idle cached blocks kept (with no memory budget, the only limit).
pub const MAX_IDLE_BYTES: u64 = 256 << 20;

/// What a cached block records of its place in a prompt.
pub(super) struct Entry {
    key: u64,
    /// Serial of the block before it (0: the first block of a prompt).
    parent: u64,
    tokens: Box<[u32]>,
    last_used: AtomicU64,
}

#[derive(Default)]
pub(super) struct Cache {
    map: HashMap<u64, Arc<Block>>,
    tick: u64,
}

fn key(elem: Elem, parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same key in every process (only this process uses it).
    let mut h = std::hash::DefaultHasher::new();
    elem.hash(&mut h);
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl Cache {
    /// (cached blocks, those no session uses).
    pub fn counts(&self) -> (usize, usize) {
        let idle = self.map.values().filter(|b| idle(b)).count();
        (self.map.len(), idle)
    }

    pub fn lookup(&mut self, tokens: &[u32], block: usize, elem: Elem) -> Vec<Arc<Block>> {
        let mut out: Vec<Arc<Block>> = Vec::new();
        let mut parent = 0;
        for chunk in tokens.chunks_exact(block) {
            let hit = self.map.get(&key(elem, parent, chunk)).filter(|b| {
                b.elem() == elem
                    && b.prefix
                        .as_ref()
                        .is_some_and(|e| e.parent == parent && *e.tokens == *chunk)
            });
            let Some(b) = hit else { break };
            parent = b.serial;
            out.push(b.clone());
        }
        self.touch(&out);
        out
    }

    pub fn register(
        &mut self,
        tokens: &[u32],
        block: usize,
        blocks: &mut [Arc<Block>],
    ) -> Vec<Arc<Block>> {
        let mut parent = 0;
        let mut chain = 0;
        for (b, chunk) in blocks.iter_mut().zip(tokens.chunks_exact(block)) {
            if let Some(e) = &b.prefix {
                // Already cached (adopted from the cache, or registered before).
                if e.parent != parent || *e.tokens != *chunk {
                    break;
                }
            } else {
                let k = key(b.elem(), parent, chunk);
                if self.map.contains_key(&k) {
                    // A twin computed meanwhile by another session, or a collision.
                    break;
                }
                // Shared but not cached (a fork's): leave it.
                let Some(own) = Arc::get_mut(b) else { break };
                own.prefix = Some(Entry {
                    key: k,
                    parent,
                    tokens: chunk.into(),
                    last_used: AtomicU64::new(0),
                });
                self.map.insert(k, b.clone());
            }
            parent = b.serial;
            chain += 1;
        }
        self.touch(&blocks[..chain]);
        // Idle blocks beyond the limit go, oldest first.
        let mut evicted = Vec::new();
        let mut idle_bytes: u64 = self
            .map
            .values()
            .filter(|b| idle(b))
            .map(|b| b.bytes())
            .sum();
        while idle_bytes > MAX_IDLE_BYTES {
            match self.evict_lru() {
                Some(b) => {
                    idle_bytes -= b.bytes();
                    evicted.push(b);
                }
                None => break,
            }
        }
        evicted
    }

    /// Mark a chain used now, its first block the most recent.
    fn touch(&mut self, chain: &[Arc<Block>]) {
        for b in chain.iter().rev() {
            self.tick += 1;
            if let Some(e) = &b.prefix {
                e.last_used.store(self.tick, Ordering::Relaxed);
            }
        }
    }

    /// Remove the least recently used block no session holds, handing it back (to be dropped
    /// outside the lock).
    pub fn evict_lru(&mut self) -> Option<Arc<Block>> {
        let (&k, _) = self
            .map
            .iter()
            .filter(|(_, b)| idle(b))
            .min_by_key(|(_, b)| {
                b.prefix
                    .as_ref()
                    .map_or(0, |e| e.last_used.load(Ordering::Relaxed))
            })?;
        debug_assert!(self.map[&k].prefix.as_ref().is_some_and(|e| e.key == k));
        self.map.remove(&k)
    }
}

/// Held by the cache alone.
fn idle(b: &Arc<Block>) -> bool {
    Arc::strong_count(b) == 1
}
