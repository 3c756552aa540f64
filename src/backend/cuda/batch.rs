//! Batched decoding on the GPU (continuous batching): one forward step for one token of each
//! of several sessions. The products run over all rows at once (each weight read once for
//! the batch); each row's attention reads its own session's KV cache through a table of the
//! rows' page tables in device memory (kernels/attention_batch.cu).
//!
//! Unlike the CPU's, a batched row's numbers are not bit for bit those of the row alone: the
//! products of several rows use the tensor-core kernels, a row alone the mat-vec kernels
//! (both accumulate in f32; different summation orders).

use super::model::{CudaModel, CudaState, CudaStep, DecodeGraph};
use super::{f32s, positive, CudaDevice, DeviceBuffer, MemKind, RopeParams};
use crate::backend::{Dims, Ops, Out};
use crate::{Error, Result};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

/// Bytes of one table entry: a row's page table (u64, bit 0 set for an f32 cache).
pub(super) const TABLE_ENTRY: usize = 8;

/// The working state of the batched steps of one model: activation buffers (a state with a
/// one-position cache of its own), the table of the rows' caches, the picks.
pub struct CudaBatch {
    st: CudaState,
    /// `rows` entries, one a row.
    tab: DeviceBuffer,
    rows: usize,
    picks: DeviceBuffer,
    /// The table last uploaded (the same sessions step after step: no upload then).
    tab_host: Vec<u64>,
    /// A captured step per batch size (a power of two; a smaller batch is padded with rows
    /// that write the batch state's own one-position cache and are ignored).
    graphs: HashMap<usize, Option<DecodeGraph>>,
}

/// Most rows of a batched GPU step (the batcher's `MAX_SEQS`).
pub const MAX_BATCH_ROWS: usize = 128;

impl CudaBatch {
    /// Buffers for steps of up to [`MAX_BATCH_ROWS`] rows, allocated once: captured graphs
    /// hold their addresses.
    pub fn new(model: &CudaModel, dims: &Dims) -> Result<Self> {
        // Two positions (the padding rows use one), so that the state has the scratch of the
        // two-pass products (weights to f16, then the f16 GEMM): measured on an H100 against
        // the direct tensor-core products, 0.5B 8/32/128 sessions 1,897/5,543/12,100 tok/s
        // vs 1,449/4,327/9,592, 7B 387/1,469/4,123 vs 254/915/2,854.
        let mut st = CudaState::new(model, dims, 2)?;
        st.reserve_rows(MAX_BATCH_ROWS)?;
        st.ensure_kv(0, 1)?;
        let (tab, picks) = Self::tables(&st, MAX_BATCH_ROWS)?;
        Ok(CudaBatch {
            st,
            tab,
            rows: MAX_BATCH_ROWS,
            picks,
            tab_host: Vec::new(),
            graphs: HashMap::new(),
        })
    }

    fn tables(st: &CudaState, rows: usize) -> Result<(DeviceBuffer, DeviceBuffer)> {
        let dev = st.device();
        let tab = dev.alloc(rows * TABLE_ENTRY, MemKind::Scratch)?;
        let picks = dev.argmax_buffer(rows)?;
        Ok((tab, picks))
    }

    /// One step of one token per state: `tokens[i]` at position `pos[i]` of `states[i]`;
    /// row i's result to `outs[i]`.
    pub fn step(
        &mut self,
        model: &Arc<CudaModel>,
        states: &mut [&mut CudaState],
        tokens: &[u32],
        pos: &[usize],
        forward: &mut (dyn FnMut(&mut dyn Ops) -> Result<()> + Send),
        outs: &mut [Out],
    ) -> Result<()> {
        let n = states.len();
        if n == 0 || tokens.len() != n || pos.len() != n || outs.len() != n {
            return Err(Error::Internal(
                "a batched GPU step of mismatched rows".into(),
            ));
        }
        let dims = self.st.dims().clone();
        if n > self.rows {
            return Err(Error::Internal(format!(
                "a batched GPU step of {n} rows (at most {})",
                self.rows
            )));
        }
        // Padded to a power of two: one captured graph per size.
        let rows = n.next_power_of_two().min(self.rows);
        // The table: each row's page table; padding rows use the batch state's own
        // one-position cache, at position 0.
        // (A session's cache grows here if a generation outran what it set aside.)
        for (st, &p) in states.iter_mut().zip(pos) {
            st.ensure_kv(p, p + 1)?;
        }
        let tab: Vec<u64> = (0..self.rows)
            .map(|r| match states.get(r) {
                Some(st) => st.kv_table_ref(),
                None => self.st.kv_table_ref(),
            })
            .collect();
        let mut toks = tokens.to_vec();
        let mut ps = pos.to_vec();
        toks.resize(rows, 0);
        ps.resize(rows, 0);
        // Each session's own stream may still be writing its cache (a prompt step): the
        // batch's stream reads it only after.
        for st in states.iter() {
            st.device().synchronize()?;
        }
        let dev = self.st.device().clone();
        if tab != self.tab_host {
            let bytes: Vec<u8> = tab.iter().flat_map(|v| v.to_le_bytes()).collect();
            // Forgotten first: a failed upload leaves the device's table unknown.
            self.tab_host.clear();
            dev.write(&mut self.tab, 0, &bytes)?;
            self.tab_host = tab;
        }
        let mut graph = self.graphs.remove(&rows).flatten();
        self.st.swap_graph(&mut graph);
        let step = CudaStep::batch(model, &mut self.st, &toks, &ps, &self.tab, self.rows);
        let r = match step {
            Ok(step) if step.graphable() => step.run_graphed(|s| forward(s)),
            Ok(mut step) => {
                let r = forward(&mut step);
                // A device error outranks a cancellation seen after it.
                step.finish().and(r)
            }
            Err(e) => Err(e),
        };
        self.st.swap_graph(&mut graph);
        self.graphs.insert(rows, graph);
        r?;
        let vocab = dims.vocab;
        let logits = self.st.logits_buffer();
        if outs.iter().any(|o| matches!(o, Out::Argmax(_))) {
            let picks = dev.argmax_into(logits, 0, n, vocab, &self.picks)?;
            for (o, p) in outs.iter_mut().zip(&picks) {
                if let Out::Argmax(slot) = o {
                    **slot = Some(p.unwrap_or(0));
                }
            }
        }
        if outs.iter().any(|o| matches!(o, Out::Logits(_))) {
            let all = dev.download_f32(logits, n * vocab)?;
            for (o, row) in outs.iter_mut().zip(all.chunks(vocab)) {
                if let Out::Logits(v) = o {
                    v.extend_from_slice(row);
                }
            }
        }
        Ok(())
    }
}

impl CudaDevice {
    /// Store each row's new K and V (`k`, `v`: `n_rows` rows of `n_kv * head_dim` f32) in
    /// its session's cache at its position (`tab`: the rows' page tables, see
    /// [`KvCache::table_ref`](super::KvCache::table_ref); `pos`: i32 per row).
    #[allow(clippy::too_many_arguments)]
    pub fn kv_store_batch(
        &self,
        k: &DeviceBuffer,
        v: &DeviceBuffer,
        n_rows: usize,
        tab: u64,
        layer: usize,
        pos: &DeviceBuffer,
        n_kv: usize,
        head_dim: usize,
    ) -> Result<()> {
        let blocks = positive(n_rows * n_kv, "kv_store_batch rows")?;
        k.check(self, f32s(n_rows * n_kv * head_dim), "kv_store_batch k")?;
        v.check(self, f32s(n_rows * n_kv * head_dim), "kv_store_batch v")?;
        pos.check(self, n_rows as u64 * 4, "kv_store_batch positions")?;
        launch!(self, "kv_store_batch", (blocks as u32, 1, 1), (head_dim as u32, 1, 1);
            k.ptr(), v.ptr(), tab, layer as i32, pos.ptr(), n_kv as i32, head_dim as i32)
    }

    /// Plain RoPE (`p`, as [`rope`](Self::rope)) of each row's `q` (`n_heads` heads) and `k`
    /// (`n_kv` heads) in place, then [`kv_store_batch`](Self::kv_store_batch) of the rotated
    /// `k` and `v`: one launch (kernels/attention_batch.cu `rope_kv_batch`).
    #[allow(clippy::too_many_arguments)]
    pub fn rope_kv_batch(
        &self,
        q: &DeviceBuffer,
        k: &DeviceBuffer,
        v: &DeviceBuffer,
        n_rows: usize,
        tab: u64,
        layer: usize,
        pos: &DeviceBuffer,
        n_heads: usize,
        n_kv: usize,
        head_dim: usize,
        p: RopeParams,
    ) -> Result<()> {
        positive(n_rows, "rope_kv_batch rows")?;
        if p.rot_dim == 0
            || p.rot_dim % 2 != 0
            || p.rot_dim > head_dim
            || head_dim % 2 != 0
            || head_dim > 2048
            || n_rows > 65535
            || n_heads + n_kv > i32::MAX as usize
        {
            return Err(Error::InvalidArgument(format!(
                "rope_kv_batch: rotary {} of heads of {head_dim}, {n_rows} rows",
                p.rot_dim
            )));
        }
        q.check(self, f32s(n_rows * n_heads * head_dim), "rope_kv_batch q")?;
        k.check(self, f32s(n_rows * n_kv * head_dim), "rope_kv_batch k")?;
        v.check(self, f32s(n_rows * n_kv * head_dim), "rope_kv_batch v")?;
        pos.check(self, n_rows as u64 * 4, "rope_kv_batch positions")?;
        let grid = ((n_heads + n_kv) as u32, n_rows as u32, 1);
        launch!(self, "rope_kv_batch", grid, ((head_dim / 2) as u32, 1, 1);
            q.ptr(), k.ptr(), v.ptr(), tab, layer as i32, pos.ptr(), n_heads as i32, n_kv as i32,
            head_dim as i32, p.rot_dim as i32, p.base, p.pos_scale, p.neox as i32)
    }

    /// Attention of each row's query (`q`: `n_rows` rows of `n_heads * head_dim`) over its
    /// session's cache up to its position (sliding `window` if > 0; `sinks`: one logit per
    /// head joining each softmax's denominator, GPT-OSS) into `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_batch(
        &self,
        q: &DeviceBuffer,
        n_rows: usize,
        tab: u64,
        layer: usize,
        pos: &DeviceBuffer,
        n_heads: usize,
        n_kv: usize,
        head_dim: usize,
        scale: f32,
        window: usize,
        sinks: Option<&DeviceBuffer>,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        positive(n_rows, "attention_batch rows")?;
        if let Some(s) = sinks {
            s.check(self, f32s(n_heads), "attention_batch sinks")?;
        }
        let sinks_ptr = sinks.map_or(0, |s| s.ptr());
        if n_heads % n_kv.max(1) != 0 || head_dim % 32 != 0 || head_dim > 256 || n_rows > 65535 {
            return Err(Error::InvalidArgument(format!(
                "attention_batch: {n_heads} heads over {n_kv} KV heads of {head_dim}, {n_rows} rows"
            )));
        }
        q.check(self, f32s(n_rows * n_heads * head_dim), "attention_batch q")?;
        out.check(
            self,
            f32s(n_rows * n_heads * head_dim),
            "attention_batch out",
        )?;
        pos.check(self, n_rows as u64 * 4, "attention_batch positions")?;
        let window = super::launch::dim(window, "attention window")?;
        launch!(self, "attention_batch", (n_heads as u32, n_rows as u32, 1), (128, 1, 1);
            q.ptr(), tab, layer as i32, pos.ptr(), out.ptr(), n_heads as i32, n_kv as i32,
            head_dim as i32,
            scale, window, sinks_ptr)
    }
}
