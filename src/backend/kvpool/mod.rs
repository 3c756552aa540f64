//! KV memory from one paged pool per model: fixed-size blocks of positions, allocated as a
//! session's context fills, given back when it is dropped, reset or rewound, and accounted
//! in the context's memory budget (each block holds its own [`Reservation`]).
//!
//! **Admission.** A generation asks up front for every block it may need (its prompt and
//! `max_tokens`, capped by the context) and gets a [`Grant`]: budget set aside and handed out
//! block by block as it goes. Once admitted, a generation never waits again and never fails
//! for memory half-way, so generating sessions cannot wait on each other. When the budget
//! is exhausted the request joins a FIFO queue; idle prefix-cache blocks are evicted first
//! (least recently used). It waits while some admitted generation is in flight (it will end
//! and give back what it did not use) or blocks are being freed; it fails with
//! [`Error::Busy`] at once if the caller asked not to wait, after [`IDLE_GRACE`] when no
//! generation is in flight and nothing is freed (the memory is held by idle sessions, which
//! only their owners can free: waiting could be forever), or when nothing in the pool moved
//! for [`MAX_STALL`] (a generation begun through the pull form and left unread); and with
//! [`Error::OutOfMemory`] if it could not fit even with this pool empty.
//!
//! **Blocks.** A block holds [`Layout::block`] positions of every layer: per layer, the K rows
//! then the V rows, `kv_dim` values each (so a layer's keys of a block are contiguous, as
//! attention reads them), in the element type of the session that allocates it ([`Elem`]:
//! f32, or f16 at half the bytes, each charged to the budget as what it is). The prefix
//! cache keeps the types apart: a session only ever reads blocks of its own type. Sessions hold blocks through `Arc`: a block referenced once is
//! the session's own and writable (`Arc::get_mut`); a shared one (the prefix cache, a fork)
//! is read-only, and a session about to write into it copies it first.
//!
//! **Prefix cache** (see `prefix`): full blocks of prompts keyed by their tokens, chained with
//! the blocks before them, kept after their sessions end while memory allows.
//!
//! **On a GPU.** A GPU session's cache is made of device pages of [`BLOCK_POSITIONS`]
//! positions (`cuda/kv_pages.rs`: the backend's arena, accounted by the device's memory
//! manager in the same budget), found through the session's page table; it grows in the
//! pool's line ([`KvPool::admit_whole`]). The prefix cache holds a first prompt's full pages
//! as device blocks ([`Rows::Device`], `cuda/model/prefix_blocks.rs`), which later sessions
//! put in their own page tables, shared (copied before a write, as here).

mod prefix;

use super::{Context, Reservation};
use crate::backend::cpu::fp16::f16;
use crate::{Error, Result};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Positions per block: the smallest the prefix cache allows where kernels differ by column
/// count (a prompt resumed after cached blocks must start a prefill chunk of more than
/// `quant::WIDE_INVARIANT_COLS` rows: see `session::kv_memory`; it also divides the CPU's
/// prefill chunk). Measured: with blocks of
/// 16, decoding and prefill run within noise of the whole contiguous cache they replace
/// (bench/RESULTS.md), so larger blocks would only add unused memory per session and
/// coarser prompt sharing.
pub const BLOCK_POSITIONS: usize = 16;

/// How long a request waits with nothing allocated or freed in the pool before it gives up
/// with `Error::Busy` (the generations in flight are not moving: e.g. begun through the pull
/// form and left unread).
pub const MAX_STALL: Duration = Duration::from_secs(30);

/// How long a request waits when no generation is in flight and nothing moves (an owner
/// may be about to free a session it just finished with) before it fails with `Busy`.
pub const IDLE_GRACE: Duration = Duration::from_millis(250);

/// How often a waiting request looks again (a backstop: frees also wake it).
const POLL: Duration = Duration::from_millis(50);

/// The element type of a block's keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    /// IEEE half precision, rounded to nearest-even from the f32 the step computes.
    F16,
}

impl Elem {
    /// "f32" or "f16".
    pub fn name(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F16 => "f16",
        }
    }

    /// Bytes of one value.
    pub fn size(self) -> u64 {
        match self {
            Elem::F32 => 4,
            Elem::F16 => 2,
        }
    }
}

/// A block's keys and values (see the module's notes for their order).
pub enum Rows {
    F32(Box<[f32]>),
    F16(Box<[f16]>),
    /// Rows of `Elem` values in a device's memory, in the layout of the backend that made
    /// them, which also accounts their memory: a GPU's prefix-cache blocks
    /// ([`KvPool::device_block`]).
    Device(Elem, Box<dyn std::any::Any + Send + Sync>),
}

impl Rows {
    pub fn elem(&self) -> Elem {
        match self {
            Rows::F32(_) => Elem::F32,
            Rows::F16(_) => Elem::F16,
            Rows::Device(e, _) => *e,
        }
    }

    pub fn f32(&self) -> Option<&[f32]> {
        match self {
            Rows::F32(d) => Some(d),
            _ => None,
        }
    }

    pub fn f16(&self) -> Option<&[f16]> {
        match self {
            Rows::F16(d) => Some(d),
            _ => None,
        }
    }

    /// A device block's storage, as the backend that made it stored it.
    pub fn device<T: 'static>(&self) -> Option<&T> {
        match self {
            Rows::Device(_, d) => d.downcast_ref(),
            _ => None,
        }
    }
}

/// The shape of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub n_layer: usize,
    /// Values per position of one layer's K (or V).
    pub kv_dim: usize,
    /// Positions per block.
    pub block: usize,
}

impl Layout {
    /// Values of a block.
    pub fn values(&self) -> usize {
        2 * self.n_layer * self.block * self.kv_dim
    }

    /// Bytes of a block of `elem` values.
    pub fn bytes(&self, elem: Elem) -> u64 {
        self.values() as u64 * elem.size()
    }

    /// Offset in a block of row `row`'s keys of `layer` (its values: [`v_at`](Self::v_at)).
    pub fn k_at(&self, layer: usize, row: usize) -> usize {
        (2 * layer * self.block + row) * self.kv_dim
    }

    pub fn v_at(&self, layer: usize, row: usize) -> usize {
        ((2 * layer + 1) * self.block + row) * self.kv_dim
    }

    /// Blocks that hold `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block)
    }
}

/// One block of KV rows. Dropping the last reference gives its memory back to the budget.
pub struct Block {
    id: u32,
    /// Unique over the pool's life (ids are recycled; the prefix cache chains by serial).
    serial: u64,
    data: Rows,
    /// Set once the block is in the prefix cache (it is then read-only).
    prefix: Option<prefix::Entry>,
    bytes: Option<Reservation>,
    /// Bytes counted in the pool's `held` (0 for a device block, which the device's memory
    /// manager accounts).
    held: u64,
    shared: Arc<Shared>,
}

impl Block {
    /// The block's index in a device pool's per-layer storage (see the module's notes).
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn data(&self) -> &Rows {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut Rows {
        &mut self.data
    }

    pub fn elem(&self) -> Elem {
        self.data.elem()
    }

    /// Bytes of the block's values.
    pub fn bytes(&self) -> u64 {
        self.shared.layout.bytes(self.elem())
    }

    /// Whether the block is in the prefix cache.
    pub fn is_cached(&self) -> bool {
        self.prefix.is_some()
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // The bytes (and a device block's memory) first, so that a waiter woken below finds
        // them free.
        self.bytes.take();
        self.data = Rows::F32(Box::default());
        self.shared.held.fetch_sub(self.held, Ordering::SeqCst);
        self.shared.free_ids.lock().push(self.id);
        self.shared.moved();
    }
}

/// What blocks and grants share: the budget, ids, and the admission queue.
struct Shared {
    ctx: Arc<Context>,
    layout: Layout,
    free_ids: Mutex<Vec<u32>>,
    next_id: AtomicU32,
    next_serial: AtomicU64,
    /// Bytes this pool's blocks and grants hold in the context's budget.
    held: AtomicU64,
    /// Allocations and frees so far (waiters watch it for progress).
    events: AtomicU64,
    admissions: Mutex<Admissions>,
    wake: Condvar,
}

#[derive(Default)]
struct Admissions {
    /// Tickets of the waiting requests, first come first served.
    queue: VecDeque<u64>,
    next_ticket: u64,
    /// Grants alive: generations (or evals, restores) in flight.
    in_flight: usize,
}

impl Shared {
    /// Something was allocated or freed: wake the waiters.
    fn moved(&self) {
        self.events.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_all();
    }
}

/// Budget set aside for a generation's blocks, handed out one block at a time; what is left
/// goes back to the budget when it drops (and the next waiter is woken).
pub struct Grant {
    credit: Option<Reservation>,
    shared: Arc<Shared>,
}

impl Grant {
    /// Bytes not yet handed out.
    pub fn bytes_left(&self) -> u64 {
        self.credit.as_ref().map_or(0, |c| c.bytes())
    }

    fn take(&mut self, bytes: u64) -> Option<Reservation> {
        self.credit.as_mut()?.split(bytes)
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(c) = self.credit.take() {
            self.shared.held.fetch_sub(c.bytes(), Ordering::SeqCst);
        }
        self.shared.admissions.lock().in_flight -= 1;
        self.shared.moved();
    }
}

/// What a pool holds now (for tests and reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of one block of f32 values (a block of f16 values takes half), and its
    /// positions.
    pub block_bytes: u64,
    pub block_positions: usize,
    /// Bytes of blocks and unused grants in the context's budget.
    pub held_bytes: u64,
    /// Blocks in the prefix cache, and those of them no session uses.
    pub cached_blocks: usize,
    pub idle_cached_blocks: usize,
    /// Requests waiting for memory now.
    pub waiting: usize,
}

/// The KV pool of one model.
pub struct KvPool {
    shared: Arc<Shared>,
    cache: Mutex<prefix::Cache>,
}

impl KvPool {
    pub fn new(ctx: Arc<Context>, layout: Layout) -> Arc<KvPool> {
        Arc::new(KvPool {
            shared: Arc::new(Shared {
                ctx,
                layout,
                free_ids: Mutex::new(Vec::new()),
                next_id: AtomicU32::new(0),
                next_serial: AtomicU64::new(1),
                held: AtomicU64::new(0),
                events: AtomicU64::new(0),
                admissions: Mutex::new(Admissions::default()),
                wake: Condvar::new(),
            }),
            cache: Mutex::new(prefix::Cache::default()),
        })
    }

    pub fn layout(&self) -> Layout {
        self.shared.layout
    }

    pub fn stats(&self) -> PoolStats {
        let (cached_blocks, idle_cached_blocks) = self.cache.lock().counts();
        PoolStats {
            block_bytes: self.shared.layout.bytes(Elem::F32),
            block_positions: self.shared.layout.block,
            held_bytes: self.shared.held.load(Ordering::SeqCst),
            cached_blocks,
            idle_cached_blocks,
            waiting: self.shared.admissions.lock().queue.len(),
        }
    }

    /// Set aside the budget of `blocks` blocks of `elem` values (see the module's notes for when this waits
    /// and when it fails). `wait` false: `Error::Busy` at once instead of queueing. The
    /// `cancel` flag, set while waiting, ends the wait with `Error::Cancelled`.
    pub fn admit(
        &self,
        blocks: usize,
        elem: Elem,
        wait: bool,
        cancel: &AtomicBool,
    ) -> Result<Grant> {
        let sh = &self.shared;
        let bytes = (blocks as u64)
            .checked_mul(sh.layout.bytes(elem))
            .ok_or_else(|| Error::OutOfMemory(format!("{blocks} KV blocks")))?;
        let need = format!("the KV cache needs {bytes} bytes");
        let never = || {
            let budget = sh.ctx.options.memory_budget;
            let others = sh
                .ctx
                .used_bytes()
                .saturating_sub(sh.held.load(Ordering::SeqCst));
            (bytes > budget.saturating_sub(others)).then(|| {
                format!(
                    "{need} and only {} of the context's budget of {budget} bytes are not held \
                     by weights or other models",
                    budget.saturating_sub(others)
                )
            })
        };
        let credit = self.line(
            wait,
            cancel,
            &need,
            &mut || self.reserve(bytes, blocks),
            &never,
        )?;
        sh.held.fetch_add(bytes, Ordering::SeqCst);
        Ok(Grant {
            credit: Some(credit),
            shared: sh.clone(),
        })
    }

    /// [`admit`](Self::admit) for a cache whose memory the backend allocates (a GPU
    /// session's pages, from the device's arena): in the same line, `grow` is tried
    /// at its head, its `Error::OutOfMemory` meaning "not now", with `admit`'s answers for
    /// when to wait and when to give up; `never` says why the cache could not fit even if no
    /// other session held any (then `Error::OutOfMemory` at once). The grant holds no budget:
    /// it counts a generation in flight until it drops. Whoever frees such memory calls
    /// [`freed`](Self::freed), so that waiters look again.
    pub fn admit_whole(
        &self,
        need: &str,
        wait: bool,
        cancel: &AtomicBool,
        grow: &mut dyn FnMut() -> Result<()>,
        never: &dyn Fn() -> Option<String>,
    ) -> Result<Grant> {
        // Idle prefix-cache blocks (a GPU's are device memory too) give way first.
        let mut attempt = || loop {
            match grow() {
                Err(Error::OutOfMemory(why)) => {
                    if !self.evict_idle() {
                        return Err(Error::OutOfMemory(why));
                    }
                }
                r => return r,
            }
        };
        self.line(wait, cancel, need, &mut attempt, never)?;
        Ok(Grant {
            credit: None,
            shared: self.shared.clone(),
        })
    }

    /// Memory the waiters may want was freed outside this pool's blocks (a GPU session's
    /// cache, see [`admit_whole`](Self::admit_whole)).
    pub fn freed(&self) {
        self.shared.moved();
    }

    /// Wait in line (first come, first served) until `attempt` succeeds at its head, counting
    /// one more generation in flight; `attempt`'s `Error::OutOfMemory` is "not now" (see
    /// [`refusal`](Self::refusal) for when the wait ends).
    fn line<T>(
        &self,
        wait: bool,
        cancel: &AtomicBool,
        need: &str,
        attempt: &mut dyn FnMut() -> Result<T>,
        never: &dyn Fn() -> Option<String>,
    ) -> Result<T> {
        let sh = &self.shared;
        let mut adm = sh.admissions.lock();
        let ticket = adm.next_ticket;
        adm.next_ticket += 1;
        adm.queue.push_back(ticket);
        let mut seen = sh.events.load(Ordering::SeqCst);
        let mut moved_at = Instant::now();
        let result = loop {
            if adm.queue.front() == Some(&ticket) {
                match attempt() {
                    Ok(r) => {
                        adm.in_flight += 1;
                        break Ok(r);
                    }
                    Err(Error::OutOfMemory(why)) => {
                        let r = self.refusal(need, wait, adm.in_flight, moved_at, why, never);
                        if let Some(e) = r {
                            break Err(e);
                        }
                    }
                    Err(e) => break Err(e),
                }
            }
            if cancel.load(Ordering::Relaxed) {
                break Err(Error::Cancelled);
            }
            sh.wake.wait_for(&mut adm, POLL);
            let now = sh.events.load(Ordering::SeqCst);
            if now != seen {
                (seen, moved_at) = (now, Instant::now());
            }
        };
        adm.queue.retain(|&t| t != ticket);
        drop(adm);
        // The next in line may go now (or fail as this one did).
        sh.wake.notify_all();
        result
    }

    /// Why a request at the head of the queue that does not fit now stops waiting, if it
    /// does.
    fn refusal(
        &self,
        need: &str,
        wait: bool,
        in_flight: usize,
        moved_at: Instant,
        why: String,
        never: &dyn Fn() -> Option<String>,
    ) -> Option<Error> {
        if let Some(msg) = never() {
            return Some(Error::OutOfMemory(msg));
        }
        let held = self.shared.held.load(Ordering::SeqCst);
        let held = if held > 0 {
            format!("the model's sessions hold {held} bytes")
        } else {
            "other sessions hold the memory".to_string()
        };
        if !wait {
            return Some(Error::Busy(format!(
                "{need}; {held} ({why}), and the session asked not to wait"
            )));
        }
        if in_flight == 0 && moved_at.elapsed() > IDLE_GRACE {
            return Some(Error::Busy(format!(
                "{need}; idle sessions of the model hold the memory and no generation in \
                 flight will free any: free, reset or rewind a session"
            )));
        }
        if moved_at.elapsed() > MAX_STALL {
            return Some(Error::Busy(format!(
                "{need}; nothing was freed for {} s (a generation in flight is not being read)",
                MAX_STALL.as_secs()
            )));
        }
        None
    }

    /// Reserve `bytes` in the context's budget, evicting idle prefix-cache blocks (least
    /// recently used first) while it does not fit.
    fn reserve(&self, bytes: u64, blocks: usize) -> Result<Reservation> {
        loop {
            match self
                .shared
                .ctx
                .reserve(bytes, &format!("{blocks} KV cache blocks"))
            {
                Ok(r) => return Ok(r),
                Err(e) => {
                    if !self.evict_idle() {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// A new block of `elem` values (zeroed), paid from `grant` where it has credit, else
    /// from the budget.
    pub fn alloc(&self, elem: Elem, grant: Option<&mut Grant>) -> Result<Arc<Block>> {
        let sh = &self.shared;
        let bb = sh.layout.bytes(elem);
        let bytes = match grant.and_then(|g| g.take(bb)) {
            Some(r) => r,
            None => {
                let r = self.reserve(bb, 1)?;
                sh.held.fetch_add(bb, Ordering::SeqCst);
                r
            }
        };
        let n = sh.layout.values();
        let no_memory = || {
            sh.held.fetch_sub(bb, Ordering::SeqCst);
            Error::OutOfMemory(format!(
                "cannot allocate a KV block of {bb} bytes of host memory"
            ))
        };
        let data = match elem {
            Elem::F32 => Rows::F32(zeroed(n).ok_or_else(no_memory)?),
            Elem::F16 => Rows::F16(zeroed(n).ok_or_else(no_memory)?),
        };
        Ok(self.new_block(data, Some(bytes), bb))
    }

    /// A block of `data` with a recycled id and a new serial; `held`: its bytes counted in
    /// the pool's held bytes (already added).
    fn new_block(&self, data: Rows, bytes: Option<Reservation>, held: u64) -> Arc<Block> {
        let sh = &self.shared;
        let id = match sh.free_ids.lock().pop() {
            Some(id) => id,
            None => sh.next_id.fetch_add(1, Ordering::SeqCst),
        };
        sh.events.fetch_add(1, Ordering::SeqCst);
        Arc::new(Block {
            id,
            serial: sh.next_serial.fetch_add(1, Ordering::SeqCst),
            data,
            prefix: None,
            bytes,
            held,
            shared: sh.clone(),
        })
    }

    /// A block of `elem` values whose rows the backend keeps in a device's memory (and
    /// accounts there): a GPU session's page, offered to the prefix cache. Outside grants and
    /// the pool's held bytes.
    pub fn device_block(
        &self,
        elem: Elem,
        storage: Box<dyn std::any::Any + Send + Sync>,
    ) -> Arc<Block> {
        self.new_block(Rows::Device(elem, storage), None, 0)
    }

    /// Drop the least recently used cached block that no session uses; whether there was
    /// one (its memory is free when this returns: dropped outside the cache's lock).
    pub fn evict_idle(&self) -> bool {
        let evicted = self.cache.lock().evict_lru();
        evicted.is_some()
    }

    /// A private copy of `block` (copy-on-write), paid as [`alloc`](Self::alloc).
    pub fn copy(&self, block: &Block, grant: Option<&mut Grant>) -> Result<Arc<Block>> {
        let mut b = self.alloc(block.elem(), grant)?;
        match (
            &mut Arc::get_mut(&mut b).expect("a new block is unshared").data,
            &block.data,
        ) {
            (Rows::F32(d), Rows::F32(s)) => d.copy_from_slice(s),
            (Rows::F16(d), Rows::F16(s)) => d.copy_from_slice(s),
            _ => unreachable!("a copy has its source's type; device blocks are never copied"),
        }
        Ok(b)
    }

    /// The cached blocks of `elem` values that hold the start of `tokens` (whole blocks, in
    /// order).
    pub fn lookup(&self, tokens: &[u32], elem: Elem) -> Vec<Arc<Block>> {
        self.cache
            .lock()
            .lookup(tokens, self.shared.layout.block, elem)
    }

    /// Put the full blocks of `blocks` (holding `tokens`, from position 0) in the prefix
    /// cache, as far as they can go (a block shared but not cached, or another block already
    /// cached for the same tokens, ends the chain).
    pub fn register(&self, tokens: &[u32], blocks: &mut [Arc<Block>]) {
        let evicted = self
            .cache
            .lock()
            .register(tokens, self.shared.layout.block, blocks);
        drop(evicted);
    }
}

/// Wakes a pool's waiters when dropped: held as the last field of a state whose memory the
/// backend allocates (a GPU session's pages), so that it drops after that memory is freed.
pub struct WakeOnDrop(pub Arc<KvPool>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.0.freed();
    }
}

/// `n` zero values, or None if the memory is not there.
fn zeroed<T: Default + Clone>(n: usize) -> Option<Box<[T]>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    v.resize(n, T::default());
    Some(v.into_boxed_slice())
}
