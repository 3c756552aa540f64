//! A session's KV cache on the GPU, in pages: fixed blocks of [`KV_PAGE`] positions of every
//! layer, found through the session's page table in device memory (kernels/attn_common.cuh:
//! a page holds, per layer, the K rows then the V rows, each `[n_kv][KV_PAGE][head_dim]`).
//!
//! A page is the KV pool's block (`backend::kvpool`): the prefix cache holds a session's
//! pages themselves, and a later session whose prompt starts alike puts them in its own
//! table, nothing copied. A page used by more than one holder (`Arc` count above one) is
//! read-only: a session about to write into one copies it first ([`KvCache::prepare`]).
//!
//! Pages come from the model's [`PageArena`]: device allocations of [`SLAB_PAGES`] pages
//! each, accounted as [`MemKind::KvCache`] (so in the context's budget). A cache grows a page
//! at a time as its context fills (no copy of what it holds, unlike a cache grown whole), and
//! gives pages back when rewound or dropped; a slab is freed when its last page is (up to
//! [`SPARE_SLABS`] empty ones kept for the next growth).

use super::device::CudaDevice;
use super::memory::{DeviceBuffer, MemKind};
use crate::backend::kvpool::BLOCK_POSITIONS;
use crate::{Error, Result};
use parking_lot::Mutex;
use std::sync::Arc;

/// Positions a page holds: the KV pool's block (`KV_PAGE` of kernels/attn_common.cuh).
pub const KV_PAGE: usize = BLOCK_POSITIONS;

/// Pages an arena allocates at once: a growing context calls the allocator once every 256
/// positions, and a page given back is reused by the next session without a device free
/// (which waits for the whole device).
pub const SLAB_PAGES: usize = 16;

/// Empty slabs an arena keeps for the next growth instead of freeing them (a device
/// allocation takes up to a millisecond: a session reset and fed again, as a benchmark's
/// repetitions or a server's turns, would pay it every time). Freed when a growth does not
/// fit ([`PageArena::trim`]).
pub const SPARE_SLABS: usize = 2;

/// Where a model's pages of one shape come from (see the module's notes).
pub struct PageArena {
    dev: CudaDevice,
    page_bytes: usize,
    slabs: Mutex<Vec<Option<Slab>>>,
}

struct Slab {
    buf: DeviceBuffer,
    /// Indices of the pages not handed out.
    free: Vec<u16>,
}

impl Slab {
    /// No page of it handed out.
    fn unused(&self) -> bool {
        self.free.len() == SLAB_PAGES
    }
}

impl PageArena {
    /// An arena of pages of `page_bytes` bytes (a multiple of 256: pages stay aligned).
    pub fn new(dev: &CudaDevice, page_bytes: usize) -> Arc<PageArena> {
        Arc::new(PageArena {
            dev: dev.clone(),
            page_bytes,
            slabs: Mutex::new(Vec::new()),
        })
    }

    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    /// A page (contents undefined). `Error::OutOfMemory` when a new slab does not fit.
    pub fn page(self: &Arc<Self>) -> Result<KvPage> {
        let mut slabs = self.slabs.lock();
        // A slab in use first, so that empty ones can go back to the device.
        let in_use = |s: &Slab| !s.free.is_empty() && !s.unused();
        let pick = slabs
            .iter()
            .position(|s| s.as_ref().is_some_and(in_use))
            .or_else(|| {
                slabs
                    .iter()
                    .position(|s| s.as_ref().is_some_and(|s| !s.free.is_empty()))
            });
        let found = pick.and_then(|i| slabs[i].as_mut()?.free.pop().map(|p| (i, p)));
        let (slab, idx) = match found {
            Some(f) => f,
            None => {
                let bytes = self
                    .page_bytes
                    .checked_mul(SLAB_PAGES)
                    .ok_or_else(|| Error::OutOfMemory("a KV page slab's size overflows".into()))?;
                let buf = self.dev.alloc(bytes, MemKind::KvCache)?;
                let new = Slab {
                    buf,
                    free: (1..SLAB_PAGES as u16).rev().collect(),
                };
                let i = match slabs.iter().position(Option::is_none) {
                    Some(i) => {
                        slabs[i] = Some(new);
                        i
                    }
                    None => {
                        slabs.push(Some(new));
                        slabs.len() - 1
                    }
                };
                (i, 0)
            }
        };
        let base = slabs[slab].as_ref().map_or(0, |s| s.buf.ptr());
        Ok(KvPage {
            arena: self.clone(),
            addr: base + (idx as usize * self.page_bytes) as u64,
            slab: slab as u32,
            idx,
        })
    }

    fn release(&self, slab: u32, idx: u16) {
        let mut slabs = self.slabs.lock();
        let Some(Some(s)) = slabs.get_mut(slab as usize) else {
            return;
        };
        s.free.push(idx);
        if s.unused() {
            // The last page of the slab: kept as a spare, or its memory goes back to the device.
            let empty = slabs.iter().flatten().filter(|s| s.unused()).count();
            if empty > SPARE_SLABS {
                slabs[slab as usize] = None;
            }
        }
    }

    /// Give the empty slabs back to the device (a growth that did not fit).
    pub fn trim(&self) {
        for s in self.slabs.lock().iter_mut() {
            if s.as_ref().is_some_and(Slab::unused) {
                *s = None;
            }
        }
    }
}

/// One page of an arena, given back when dropped. Shared through `Arc` by the sessions and
/// the prefix cache that hold it.
pub struct KvPage {
    arena: Arc<PageArena>,
    addr: u64,
    slab: u32,
    idx: u16,
}

impl KvPage {
    /// The page's device address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    pub fn arena(&self) -> &Arc<PageArena> {
        &self.arena
    }
}

impl Drop for KvPage {
    fn drop(&mut self) {
        self.arena.release(self.slab, self.idx);
    }
}

/// One layer of a paged cache as the kernels take it: the page table's address, the layer,
/// the shape, and the positions the pages hold now.
#[derive(Debug, Clone, Copy)]
pub struct KvLayer {
    pub table: u64,
    pub layer: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions the cache's pages hold (writes and reads stay below).
    pub positions: usize,
    /// f32 values (a kv_type f32 session) rather than f16.
    pub f32: bool,
}

impl KvLayer {
    /// Bytes of one cached value.
    pub fn elem_bytes(&self) -> usize {
        if self.f32 {
            4
        } else {
            2
        }
    }

    /// The instance of the cache kernel `name` for this cache's type (kernels/attn_common.cuh:
    /// the f32 ones are `<name>_f32kv`).
    pub fn kernel(&self, name: &str) -> String {
        if self.f32 {
            format!("{name}_f32kv")
        } else {
            name.to_string()
        }
    }
}

/// A session's paged KV cache: its pages in position order and their table on the device.
pub struct KvCache {
    arena: Arc<PageArena>,
    /// Page addresses (u64 each), room for the whole context: its address never changes, so
    /// captured decode graphs stay valid as the cache grows.
    table: DeviceBuffer,
    pages: Vec<Arc<KvPage>>,
    n_ctx: usize,
    pub n_layer: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub f32: bool,
}

/// Bytes of a page of `n_layer` layers of `n_kv` heads of `head_dim` values.
pub fn page_bytes(n_layer: usize, n_kv: usize, head_dim: usize, f32: bool) -> Result<usize> {
    if head_dim == 0 || head_dim % 32 != 0 || head_dim > 256 {
        return Err(Error::Unsupported(format!(
            "attention head_dim {head_dim}: the CUDA kernel takes multiples of 32 up to 256"
        )));
    }
    if n_layer == 0 || n_kv == 0 {
        return Err(Error::InvalidArgument(
            "a KV cache of no layers or heads".into(),
        ));
    }
    let elem = if f32 { 4 } else { 2 };
    // Offsets inside a page are computed in 32-bit arithmetic by the kernels.
    (2 * n_layer)
        .checked_mul(n_kv)
        .and_then(|v| v.checked_mul(KV_PAGE * head_dim))
        .filter(|&v| v <= i32::MAX as usize)
        .map(|v| v * elem)
        .ok_or_else(|| Error::InvalidArgument("a KV page's size overflows".into()))
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KvCache({} pages of {} bytes, context {})",
            self.pages.len(),
            self.arena.page_bytes,
            self.n_ctx
        )
    }
}

impl KvCache {
    /// An empty cache for up to `n_ctx` positions, its pages from `arena` (whose pages must
    /// be of this shape).
    pub fn new(
        dev: &CudaDevice,
        arena: Arc<PageArena>,
        n_ctx: usize,
        n_layer: usize,
        n_kv_heads: usize,
        head_dim: usize,
        f32: bool,
    ) -> Result<KvCache> {
        if n_ctx == 0 || n_ctx > i32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "a KV cache of {n_ctx} positions"
            )));
        }
        if page_bytes(n_layer, n_kv_heads, head_dim, f32)? != arena.page_bytes {
            return Err(Error::Internal(
                "a KV cache of another shape than its arena's pages".into(),
            ));
        }
        let mut table = dev.alloc(n_ctx.div_ceil(KV_PAGE) * 8, MemKind::KvCache)?;
        // Null entries past the pages: a kernel sent beyond them faults at once.
        dev.fill_bytes(&mut table, 0)?;
        Ok(KvCache {
            arena,
            table,
            pages: Vec::new(),
            n_ctx,
            n_layer,
            n_kv_heads,
            head_dim,
            f32,
        })
    }

    /// A cache of one model shape with an arena of its own, holding `positions` positions
    /// already (tests and benchmarks of single kernels).
    pub fn standalone(
        dev: &CudaDevice,
        n_layer: usize,
        n_kv_heads: usize,
        head_dim: usize,
        positions: usize,
        f32: bool,
    ) -> Result<KvCache> {
        let arena = PageArena::new(dev, page_bytes(n_layer, n_kv_heads, head_dim, f32)?);
        let mut c = KvCache::new(dev, arena, positions, n_layer, n_kv_heads, head_dim, f32)?;
        c.prepare(dev, 0, positions)?;
        Ok(c)
    }

    /// Positions the pages hold now.
    pub fn capacity(&self) -> usize {
        self.pages.len() * KV_PAGE
    }

    /// The most positions it may hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn page_bytes(&self) -> usize {
        self.arena.page_bytes
    }

    pub fn arena(&self) -> &Arc<PageArena> {
        &self.arena
    }

    /// Layer `layer` as the kernels take it.
    pub fn layer(&self, layer: usize) -> KvLayer {
        KvLayer {
            table: self.table.ptr(),
            layer,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            positions: self.capacity(),
            f32: self.f32,
        }
    }

    /// The page table's address with bit 0 set for an f32 cache (a batched step's entry:
    /// kernels/attention_batch.cu).
    pub fn table_ref(&self) -> u64 {
        self.table.ptr() | self.f32 as u64
    }

    pub fn pages(&self) -> &[Arc<KvPage>] {
        &self.pages
    }

    /// Make positions `start..end` writable (`end` at most the context): pages added up to
    /// `end`, and private copies of shared pages from `start`'s on, in `dev`'s stream order.
    /// On error (out of memory) the cache is as it was, less nothing it held.
    pub fn prepare(&mut self, dev: &CudaDevice, start: usize, end: usize) -> Result<()> {
        if end > self.n_ctx {
            return Err(Error::ContextFull(format!(
                "{end} positions do not fit the context of {}",
                self.n_ctx
            )));
        }
        let have = self.pages.len();
        let want = end.div_ceil(KV_PAGE);
        let first = start / KV_PAGE;
        // Shared pages about to be written: copied (the copies replace them below).
        let mut copies = Vec::new();
        let mut new = Vec::with_capacity(want.saturating_sub(have));
        let taken = (|| -> Result<()> {
            for i in first..have.min(want) {
                if Arc::strong_count(&self.pages[i]) > 1 {
                    copies.push((i, Arc::new(self.arena.page()?)));
                }
            }
            for _ in have..want {
                new.push(Arc::new(self.arena.page()?));
            }
            Ok(())
        })();
        if let Err(e) = taken {
            // What was taken goes back, and the arena's spare slabs to the device: the
            // memory is short.
            drop((copies, new));
            self.arena.trim();
            return Err(e);
        }
        if copies.is_empty() && new.is_empty() {
            return Ok(());
        }
        for (i, page) in &copies {
            dev.raw_copy(page.addr, self.pages[*i].addr, self.arena.page_bytes)?;
        }
        let lo = copies.first().map_or(have, |c| c.0);
        for (i, page) in copies {
            self.pages[i] = page;
        }
        self.pages.extend(new);
        self.write_table(dev, lo)
    }

    /// Put `pages` (the prefix cache's: shared, read-only) first in the cache, in place of
    /// the pages it holds there (given back). The caller has waited for the kernels that use
    /// those.
    pub fn adopt(&mut self, dev: &CudaDevice, pages: Vec<Arc<KvPage>>) -> Result<()> {
        if pages.len() * KV_PAGE > self.n_ctx
            || pages.iter().any(|p| !Arc::ptr_eq(&p.arena, &self.arena))
        {
            return Err(Error::Internal(
                "cached pages of another shape or beyond the context".into(),
            ));
        }
        let n = pages.len();
        let rest = self.pages.split_off(n.min(self.pages.len()));
        self.pages = pages;
        self.pages.extend(rest);
        self.write_table(dev, 0)
    }

    /// Share `other`'s pages (a fork: each copies a page before writing into it), in place
    /// of this cache's. The caller has waited for the kernels that use either.
    pub fn share(&mut self, dev: &CudaDevice, other: &KvCache) -> Result<()> {
        if !Arc::ptr_eq(&self.arena, &other.arena) || other.pages.len() * KV_PAGE > self.n_ctx {
            return Err(Error::Internal(
                "pages shared between caches of other shapes or contexts".into(),
            ));
        }
        self.pages = other.pages.clone();
        self.write_table(dev, 0)
    }

    /// Give back the pages past the first `n` positions. The caller has waited for the
    /// kernels that use them.
    pub fn truncate(&mut self, n: usize) {
        self.pages.truncate(n.div_ceil(KV_PAGE));
    }

    /// Upload the table's entries from page `lo` on (waits for the copy).
    fn write_table(&mut self, dev: &CudaDevice, lo: usize) -> Result<()> {
        let bytes: Vec<u8> = self.pages[lo..]
            .iter()
            .flat_map(|p| p.addr.to_le_bytes())
            .collect();
        dev.write(&mut self.table, lo * 8, &bytes)
    }

    /// Page `i`'s bytes to the host (waits for the device).
    pub fn download_page(&self, dev: &CudaDevice, i: usize, out: &mut [u8]) -> Result<()> {
        let p = self.page_checked(i, out.len())?;
        dev.raw_download(p, out)
    }

    /// Page `i`'s bytes from the host (a private page: see [`prepare`](Self::prepare);
    /// waits for the copy).
    pub fn upload_page(&mut self, dev: &CudaDevice, i: usize, data: &[u8]) -> Result<()> {
        let p = self.page_checked(i, data.len())?;
        if Arc::strong_count(&self.pages[i]) > 1 {
            return Err(Error::Internal("a write into a shared KV page".into()));
        }
        dev.raw_upload(p, data)
    }

    /// Every page's bytes, in order (tests compare caches with this).
    pub fn bytes(&self, dev: &CudaDevice) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.pages.len() * self.arena.page_bytes];
        for (i, chunk) in out.chunks_exact_mut(self.arena.page_bytes).enumerate() {
            self.download_page(dev, i, chunk)?;
        }
        Ok(out)
    }

    /// Set every byte of every page to `value` (tests poison caches with this).
    pub fn fill(&self, dev: &CudaDevice, value: u8) -> Result<()> {
        for p in &self.pages {
            dev.raw_fill(p.addr, value, self.arena.page_bytes)?;
        }
        dev.synchronize()
    }

    fn page_checked(&self, i: usize, bytes: usize) -> Result<u64> {
        match self.pages.get(i) {
            Some(p) if bytes == self.arena.page_bytes => Ok(p.addr),
            _ => Err(Error::InvalidArgument(format!(
                "KV page {i} of {} ({bytes} bytes of {})",
                self.pages.len(),
                self.arena.page_bytes
            ))),
        }
    }
}
