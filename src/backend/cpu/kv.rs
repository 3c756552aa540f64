//! A CPU session's KV cache: its table of blocks from the model's pool (position `p` in block
//! `p / block`, row `p % block`), grown as the context fills, in f32 or f16 (rounded once,
//! as a position is written); and its rows read and written as plain f32 data (session
//! save/restore).

use super::attn::{Cache, Paged};
use super::fp16;
use super::CpuState;
use crate::backend::kvpool::{Block, Elem, Grant, KvPool, Layout, Rows};
use crate::{Error, Result};
use std::sync::Arc;

/// The CPU's pools make only host blocks (device blocks are a GPU model's).
const HOST_ONLY: &str = "a CPU cache holds host blocks";

/// The keys and values of a session's tokens.
pub struct CpuKv {
    pub(super) n_ctx: usize,
    pool: Arc<KvPool>,
    layout: Layout,
    elem: Elem,
    blocks: Vec<Arc<Block>>,
}

impl CpuKv {
    pub fn new(pool: Arc<KvPool>, n_ctx: usize, elem: Elem) -> CpuKv {
        CpuKv {
            n_ctx,
            layout: pool.layout(),
            elem,
            pool,
            blocks: Vec::new(),
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The type of the values (of every block of this cache).
    pub fn elem(&self) -> Elem {
        self.elem
    }

    pub fn blocks(&self) -> &[Arc<Block>] {
        &self.blocks
    }

    /// The blocks holding positions `start..end` (and any before them) when that range is
    /// about to be written: the missing ones plus copies of the shared ones it touches.
    pub fn blocks_needed(&self, start: usize, end: usize) -> usize {
        if end <= start {
            return 0;
        }
        let have = self.blocks.len();
        let want = self.layout.blocks_for(end);
        let shared = (start / self.layout.block..want.min(have))
            .filter(|&i| Arc::strong_count(&self.blocks[i]) > 1)
            .count();
        want.saturating_sub(have) + shared
    }

    /// Make positions `start..end` writable: allocate the blocks up to `end`, and copy the
    /// shared ones (cached or forked) that the range touches.
    pub fn grow(&mut self, start: usize, end: usize, mut grant: Option<&mut Grant>) -> Result<()> {
        if end <= start {
            return Ok(());
        }
        let want = self.layout.blocks_for(end);
        for i in start / self.layout.block..want.min(self.blocks.len()) {
            if Arc::strong_count(&self.blocks[i]) > 1 {
                self.blocks[i] = self.pool.copy(&self.blocks[i], grant.as_deref_mut())?;
            }
        }
        while self.blocks.len() < want {
            self.blocks
                .push(self.pool.alloc(self.elem, grant.as_deref_mut())?);
        }
        Ok(())
    }

    /// Whether positions `start..end` have blocks of this session's own (written by a step).
    pub fn writable(&mut self, start: usize, end: usize) -> bool {
        end <= self.blocks.len() * self.layout.block
            && (start / self.layout.block..self.layout.blocks_for(end))
                .all(|i| Arc::get_mut(&mut self.blocks[i]).is_some())
    }

    /// Write position `p`'s keys and values of `layer` (its block is the session's own: see
    /// [`writable`](Self::writable); a shared block is left alone).
    pub fn put(&mut self, layer: usize, p: usize, k: &[f32], v: &[f32]) {
        let l = self.layout;
        let row = p % l.block;
        if let Some(b) = self.blocks.get_mut(p / l.block).and_then(Arc::get_mut) {
            let (ka, va) = (l.k_at(layer, row), l.v_at(layer, row));
            let n = l.kv_dim;
            match b.data_mut() {
                Rows::F32(d) => {
                    d[ka..ka + n].copy_from_slice(k);
                    d[va..va + n].copy_from_slice(v);
                }
                Rows::F16(d) => {
                    fp16::narrow(k, &mut d[ka..ka + n]);
                    fp16::narrow(v, &mut d[va..va + n]);
                }
                Rows::Device(..) => unreachable!("{HOST_ONLY}"),
            }
        }
    }

    /// The keys and values of `layer`, each block's `block` rows of `kv_dim` values, for
    /// attention.
    pub fn layer(&self, layer: usize) -> Cache<'_> {
        match self.elem {
            Elem::F32 => Cache::F32(self.paged(layer, Rows::f32)),
            Elem::F16 => Cache::F16(self.paged(layer, Rows::f16)),
        }
    }

    fn paged<'a, T>(&'a self, layer: usize, values: fn(&Rows) -> Option<&[T]>) -> Paged<'a, T> {
        let l = self.layout;
        let n = l.block * l.kv_dim;
        let (ka, va) = (l.k_at(layer, 0), l.v_at(layer, 0));
        let (k, v) = self
            .blocks
            .iter()
            .map(|b| {
                let d = values(b.data()).expect("a session's blocks have its value type");
                (&d[ka..ka + n], &d[va..va + n])
            })
            .unzip();
        Paged {
            k,
            v,
            block: l.block,
            stride: l.kv_dim,
        }
    }

    /// Keep the blocks of the first `n` positions; the others go back to the pool (or stay in
    /// the prefix cache).
    pub fn truncate(&mut self, n: usize) {
        self.blocks.truncate(self.layout.blocks_for(n));
    }

    /// Start from `blocks` (cached ones holding the first positions). Only on an empty cache.
    pub fn adopt(&mut self, blocks: &[Arc<Block>]) -> Result<()> {
        if !self.blocks.is_empty() || blocks.iter().any(|b| b.elem() != self.elem) {
            return Err(Error::Internal(
                "cached KV blocks adopted by a session that has some, or of another type".into(),
            ));
        }
        self.blocks = blocks.to_vec();
        Ok(())
    }

    /// Offer the full blocks holding `tokens` (from position 0) to the prefix cache.
    pub fn register(&mut self, tokens: &[u32]) {
        self.pool.register(tokens, &mut self.blocks);
    }

    /// The same blocks as `other` (a fork): shared until one of them writes into one.
    /// False (nothing shared) where their value types differ.
    pub fn share(&mut self, other: &CpuKv) -> bool {
        if self.elem != other.elem {
            return false;
        }
        self.blocks = other.blocks.clone();
        true
    }

    /// The blocks of the first `n` positions, with the positions of each in use.
    fn runs(&self, n: usize) -> impl Iterator<Item = (&Block, usize)> {
        let b = self.layout.block;
        self.blocks
            .iter()
            .take(self.layout.blocks_for(n))
            .enumerate()
            .map(move |(i, blk)| (&**blk, b.min(n - i * b)))
    }
}

impl CpuState {
    /// Appends the first `n` positions' keys and values to `out`: per layer, `n` rows of K
    /// then `n` rows of V, `kv_dim` f32 values a row (the layout of [`State::kv_rows`]; f16
    /// values widened, exactly).
    ///
    /// [`State::kv_rows`]: crate::backend::State::kv_rows
    pub fn kv_rows(&self, n: usize, out: &mut Vec<f32>) -> Result<()> {
        self.kv_len(n)?;
        let l = self.kv.layout;
        if l.blocks_for(n) > self.kv.blocks.len() {
            return Err(Error::Internal(format!(
                "{n} positions asked of a KV cache holding {}",
                self.kv.blocks.len() * l.block
            )));
        }
        for layer in 0..l.n_layer {
            for at in [l.k_at(layer, 0), l.v_at(layer, 0)] {
                for (blk, rows) in self.kv.runs(n) {
                    let span = at..at + rows * l.kv_dim;
                    match blk.data() {
                        Rows::F32(d) => out.extend_from_slice(&d[span]),
                        Rows::F16(d) => {
                            let o = out.len();
                            out.resize(o + span.len(), 0.0);
                            fp16::widen(&d[span], &mut out[o..]);
                        }
                        Rows::Device(..) => unreachable!("{HOST_ONLY}"),
                    }
                }
            }
        }
        Ok(())
    }

    /// Replaces the cache with the first `n` positions' keys and values from `data` (as
    /// [`kv_rows`](Self::kv_rows) writes them), in new blocks paid from `grant` (f16 ones
    /// rounded to nearest-even, as a step writes them). On an error the cache is as it was.
    pub fn set_kv_rows(&mut self, n: usize, data: &[f32], grant: Option<&mut Grant>) -> Result<()> {
        let len = self.kv_len(n)?;
        let l = self.kv.layout;
        if data.len() != 2 * len * l.n_layer {
            return Err(Error::InvalidArgument(format!(
                "{} KV values given for {n} positions of {} layers",
                data.len(),
                l.n_layer
            )));
        }
        let mut fresh = CpuKv::new(self.kv.pool.clone(), self.kv.n_ctx, self.kv.elem);
        fresh.grow(0, n, grant)?;
        let mut rows = data.chunks_exact(len);
        for layer in 0..l.n_layer {
            for at in [l.k_at(layer, 0), l.v_at(layer, 0)] {
                let Some(src) = rows.next() else { break };
                for (i, blk) in fresh.blocks.iter_mut().enumerate() {
                    let p0 = i * l.block;
                    let rows = l.block.min(n - p0);
                    let dst = Arc::get_mut(blk).expect("new blocks are unshared");
                    let (span, from) = (
                        at..at + rows * l.kv_dim,
                        &src[p0 * l.kv_dim..(p0 + rows) * l.kv_dim],
                    );
                    match dst.data_mut() {
                        Rows::F32(d) => d[span].copy_from_slice(from),
                        Rows::F16(d) => fp16::narrow(from, &mut d[span]),
                        Rows::Device(..) => unreachable!("{HOST_ONLY}"),
                    }
                }
            }
        }
        self.kv.blocks = fresh.blocks;
        Ok(())
    }

    /// Values of `n` positions of one layer's K (or V), checked against the cache's length
    /// and its blocks.
    fn kv_len(&self, n: usize) -> Result<usize> {
        if n > self.kv.n_ctx {
            return Err(Error::ContextFull(format!(
                "{n} positions do not fit a KV cache of {}",
                self.kv.n_ctx
            )));
        }
        Ok(n * self.kv.layout.kv_dim)
    }
}
