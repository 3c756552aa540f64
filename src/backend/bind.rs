//! The one place a backend is chosen: weights bound to the context's device, and a
//! session's state created from them. A state holds its own reference to the weights it
//! was made from, so a step never pairs a model with a state of another device.

use super::cpu::{CpuModel, CpuScratch, CpuSeq, CpuState, CpuStep};
use super::kvpool::KvPool;
use super::{Context, Device, Dims, KvType, Logits, Ops, Tap, WeightTensor};
use crate::gguf::Gguf;
use crate::{Error, Result};
use std::sync::Arc;

/// Weights bound to a device. Shared by the model's sessions.
pub enum Weights {
    Cpu(Arc<CpuModel>),
    #[cfg(feature = "cuda")]
    Cuda(Arc<super::cuda::CudaModel>),
}

/// What a forward step hands back.
pub enum Out<'a> {
    Nothing,
    /// The logits (the last row, or every row with `Logits::All`), appended.
    Logits(&'a mut Vec<f32>),
    /// The index of the last row's largest logit (the first on ties, NaNs never win, 0 when
    /// all are NaN: `sampling::argmax`), picked where the logits are, so that a greedy step
    /// moves 4 bytes from the GPU instead of the whole row.
    Argmax(&'a mut Option<u32>),
}

impl Out<'_> {
    pub fn reborrow(&mut self) -> Out<'_> {
        match self {
            Out::Nothing => Out::Nothing,
            Out::Logits(v) => Out::Logits(v),
            Out::Argmax(p) => Out::Argmax(p),
        }
    }
}

/// Prompt tokens per CPU forward step during prefill.
const CPU_PREFILL_CHUNK: usize = 256;

impl Weights {
    /// Bind `tensors` of `gguf` on the context's device. `progress(fraction)` returning false
    /// cancels.
    pub fn bind(
        ctx: &Context,
        gguf: &Arc<Gguf>,
        tensors: &[WeightTensor],
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Weights> {
        match ctx.options.device {
            Device::Cpu => Ok(Weights::Cpu(Arc::new(CpuModel::new(
                gguf.clone(),
                tensors,
                ctx.pool.clone(),
                progress,
            )?))),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => {
                let dev = ctx.cuda.clone().ok_or_else(|| {
                    Error::Internal(format!("CUDA context without its device {n}"))
                })?;
                Ok(Weights::Cuda(Arc::new(super::cuda::CudaModel::new(
                    dev, gguf, tensors, progress,
                )?)))
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(n) => Err(Error::NoDevice(format!(
                "CUDA device {n}: not available in this build"
            ))),
        }
    }

    /// Host memory binding `tensors` on the context's device will take, to reserve against
    /// the context's budget before binding: on the CPU the mapped weights (their pages are
    /// read in) and the f32 copies of vectors; a GPU's weights are accounted by its memory
    /// manager instead.
    pub fn host_bytes(ctx: &Context, tensors: &[WeightTensor]) -> u64 {
        match ctx.options.device {
            Device::Cpu => tensors
                .iter()
                .map(|t| t.view_bytes() + if t.rows == 1 { t.cols as u64 * 4 } else { 0 })
                .sum(),
            Device::Cuda(_) => 0,
        }
    }

    /// A session's state (KV cache of `kv` elements for `n_ctx` positions, activation
    /// buffers). On the CPU the cache starts empty and grows in blocks of the model's `pool`;
    /// a GPU's holds pages of the device's arena for its first positions here, more later
    /// (accounted by the device's memory manager; `pool` is told when it is freed).
    pub fn new_state(
        &self,
        dims: &Dims,
        n_ctx: usize,
        kv: KvType,
        pool: &Arc<KvPool>,
    ) -> Result<State> {
        Ok(match self {
            Weights::Cpu(m) => State::Cpu(
                m.clone(),
                CpuState::new(dims, n_ctx, pool.clone(), kv.elem(Device::Cpu)),
            ),
            #[cfg(feature = "cuda")]
            Weights::Cuda(m) => {
                let f32 = kv.elem(Device::Cuda(0)) == super::kvpool::Elem::F32;
                let mut st = super::cuda::CudaState::with_kv(m, dims, n_ctx, f32)?;
                // Its cache is not the pool's blocks, but the pool's line waits for it.
                st.wake_on_drop(pool.clone());
                State::Cuda(m.clone(), st)
            }
        })
    }
}

/// The working buffers of batched steps (see [`State::step_batch`]), one per model.
pub enum BatchScratch {
    Cpu(CpuScratch),
    #[cfg(feature = "cuda")]
    Cuda(Box<super::cuda::CudaBatch>),
}

impl Default for BatchScratch {
    fn default() -> Self {
        BatchScratch::Cpu(CpuScratch::default())
    }
}

/// A session's state on the device of the weights it holds. (One per session: the variants'
/// sizes do not matter.)
#[allow(clippy::large_enum_variant)]
pub enum State {
    Cpu(Arc<CpuModel>, CpuState),
    #[cfg(feature = "cuda")]
    Cuda(Arc<super::cuda::CudaModel>, super::cuda::CudaState),
}

impl State {
    /// Prompt tokens per forward step during prefill: the CPU's cache-sized chunks; on the
    /// GPU, steps as long as its buffers are sized for (longer products keep the tensor cores
    /// busier).
    pub fn prefill_chunk(&self) -> usize {
        match self {
            State::Cpu(..) => CPU_PREFILL_CHUNK,
            #[cfg(feature = "cuda")]
            State::Cuda(..) => super::cuda::MAX_STEP_TOKENS,
        }
    }

    /// One forward step over `tokens` at positions `pos0..`: `forward` issues the step's
    /// operations (the architecture's recipe); what `out` asks for comes back.
    pub fn step(
        &mut self,
        tokens: &[u32],
        pos0: usize,
        mode: Logits,
        forward: &mut (dyn FnMut(&mut dyn Ops) -> Result<()> + Send),
        #[allow(unused_mut)] mut out: Out,
    ) -> Result<()> {
        let rows = if mode == Logits::All { tokens.len() } else { 1 };
        match self {
            State::Cpu(m, st) => {
                let mut step = CpuStep::new(m, st, tokens, pos0)?;
                m.run_step(|| forward(&mut step))?;
                let vocab = st.vocab();
                match out {
                    Out::Nothing => {}
                    Out::Logits(v) => v.extend_from_slice(st.logits(rows)),
                    Out::Argmax(p) => {
                        let last = &st.logits(rows)[(rows - 1) * vocab..];
                        *p = Some(crate::sampling::argmax(last));
                    }
                }
            }
            #[cfg(feature = "cuda")]
            State::Cuda(m, st) => {
                // A greedy decode step: maybe launched ahead already (CudaState::run_ahead).
                let decode =
                    tokens.len() == 1 && mode == Logits::Last && matches!(out, Out::Argmax(_));
                let key = decode.then(|| (tokens[0], pos0));
                if let (Some(id), Out::Argmax(p)) = (st.take_ahead(key)?, &mut out) {
                    **p = Some(id);
                    st.run_ahead(id, pos0 + 1);
                    return Ok(());
                }
                let mut step = super::cuda::CudaStep::new(m, st, tokens, pos0)?;
                if mode == Logits::Last && step.graphable() {
                    step.run_graphed(|s| forward(s))?;
                } else {
                    let r = forward(&mut step);
                    // A device error outranks a cancellation seen after it.
                    step.finish()?;
                    r?;
                }
                match out {
                    Out::Nothing => {}
                    Out::Logits(v) => st.logits_into(rows, v)?,
                    Out::Argmax(p) => {
                        let id = st.argmax_row(rows - 1)?;
                        *p = Some(id);
                        if decode {
                            st.run_ahead(id, pos0 + 1);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether this state's greedy decode steps may run one token ahead on the GPU (a session
    /// generating alone; see `CudaState::run_ahead`). Nothing on the CPU.
    pub fn allow_ahead(&mut self, on: bool) {
        #[cfg(feature = "cuda")]
        if let State::Cuda(_, st) = self {
            st.ahead_allowed = on;
            if !on {
                st.settle_ahead();
            }
        }
        #[cfg(not(feature = "cuda"))]
        let _ = on;
    }

    /// Wait for and drop a step launched ahead (before the state is used another way).
    pub(super) fn settle_ahead(&mut self) {
        #[cfg(feature = "cuda")]
        if let State::Cuda(_, st) = self {
            st.settle_ahead();
        }
    }

    /// Whether states of this kind step together in one forward ([`State::step_batch`]).
    pub fn batchable(&self) -> bool {
        true
    }

    /// Whether a batched step may carry a prompt chunk beside the decoding rows (the CPU);
    /// else prompt chunks run as steps of their own.
    pub fn batch_mixes_prompts(&self) -> bool {
        matches!(self, State::Cpu(..))
    }

    /// One forward step of several sessions' states of one model at once: `tokens[i]` at
    /// positions `pos0[i]..` of state i; row i of the last rows' results goes to `outs[i]`
    /// (`Logits::Last` for each). Each sequence's result is what its step alone gives, bit
    /// for bit (see `CpuStep::batch`). `scratch` holds the step's working buffers, shared
    /// by the batches of a model (sized for the largest). Taps are not recorded.
    pub fn step_batch(
        states: &mut [&mut State],
        tokens: &[&[u32]],
        pos0: &[usize],
        scratch: &mut BatchScratch,
        forward: &mut (dyn FnMut(&mut dyn Ops) -> Result<()> + Send),
        outs: &mut [Out],
    ) -> Result<()> {
        let (Some(first), true) = (states.first(), states.len() == tokens.len()) else {
            return Err(Error::Internal(
                "a batch step of no or mismatched sequences".into(),
            ));
        };
        #[cfg(feature = "cuda")]
        if let State::Cuda(model, _) = &**first {
            let model = model.clone();
            if tokens.iter().any(|t| t.len() != 1) {
                return Err(Error::Internal(
                    "a batched GPU step of prompt chunks".into(),
                ));
            }
            let mut cuda = Vec::with_capacity(states.len());
            for s in states.iter_mut() {
                s.settle_ahead();
                match &mut **s {
                    State::Cuda(m, st) if Arc::ptr_eq(m, &model) => cuda.push(st),
                    _ => {
                        return Err(Error::Internal(
                            "a batch step over states of different models".into(),
                        ))
                    }
                }
            }
            if !matches!(scratch, BatchScratch::Cuda(_)) {
                let dims = cuda[0].dims_pub().clone();
                *scratch =
                    BatchScratch::Cuda(Box::new(super::cuda::CudaBatch::new(&model, &dims)?));
            }
            let BatchScratch::Cuda(b) = scratch else {
                unreachable!("set above")
            };
            let toks: Vec<u32> = tokens.iter().map(|t| t[0]).collect();
            return b.step(&model, &mut cuda, &toks, pos0, forward, outs);
        }
        // (Refutable with the `cuda` feature.)
        #[allow(irrefutable_let_patterns)]
        let State::Cpu(model, st) = &**first
        else {
            return Err(Error::Internal(
                "a batch step on a backend without batches".into(),
            ));
        };
        let (model, dims) = (model.clone(), st.dims().clone());
        let mut seqs = Vec::with_capacity(states.len());
        for ((s, &toks), &p) in states.iter_mut().zip(tokens).zip(pos0) {
            match &mut **s {
                State::Cpu(m, st) if Arc::ptr_eq(m, &model) => seqs.push(CpuSeq {
                    kv: st.kv_mut(),
                    tokens: toks,
                    pos0: p,
                }),
                _ => {
                    return Err(Error::Internal(
                        "a batch step over states of different models".into(),
                    ))
                }
            }
        }
        if !matches!(scratch, BatchScratch::Cpu(_)) {
            *scratch = BatchScratch::default();
        }
        #[allow(irrefutable_let_patterns)]
        let BatchScratch::Cpu(w) = scratch
        else {
            unreachable!("set above")
        };
        let mut step = CpuStep::batch(&model, &dims, w, None, seqs)?;
        model.run_step(|| forward(&mut step))?;
        drop(step);
        let vocab = dims.vocab;
        let logits = w.logits(outs.len(), vocab);
        for (out, row) in outs.iter_mut().zip(logits.chunks(vocab)) {
            match out {
                Out::Nothing => {}
                Out::Logits(v) => v.extend_from_slice(row),
                Out::Argmax(p) => **p = Some(crate::sampling::argmax(row)),
            }
        }
        Ok(())
    }

    /// Whether taps are on (such steps run alone: a batch records none).
    pub fn taps_on(&self) -> bool {
        match self {
            State::Cpu(_, st) => st.taps.is_some(),
            #[cfg(feature = "cuda")]
            State::Cuda(_, st) => st.taps.is_some(),
        }
    }

    /// Record intermediate values of the next steps (for verification), or stop.
    pub fn set_taps(&mut self, on: bool) {
        *self.taps_mut() = on.then(Vec::new);
    }

    /// The intermediate values recorded since taps were turned on.
    pub fn take_taps(&mut self) -> Vec<Tap> {
        self.taps_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn taps_mut(&mut self) -> &mut Option<Vec<Tap>> {
        self.settle_ahead();
        match self {
            State::Cpu(_, st) => &mut st.taps,
            #[cfg(feature = "cuda")]
            State::Cuda(_, st) => &mut st.taps,
        }
    }
}
