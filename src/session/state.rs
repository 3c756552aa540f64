//! A session's per-backend state (KV cache, activation buffers) and the dispatch of one
//! forward step to the backend the model is bound to.

use crate::backend::cpu::{CpuState, CpuStep, Tap};
use crate::model::recipe::{forward, Logits};
use crate::model::{Bound, Model};
use crate::Result;

/// What a forward step hands back.
pub(crate) enum Out<'a> {
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

pub(crate) enum State {
    Cpu(CpuState),
    #[cfg(feature = "cuda")]
    Cuda(crate::backend::cuda::CudaState),
}

impl State {
    /// Host bytes the KV cache of `n_ctx` positions takes, to account against the context's
    /// budget. A GPU's KV cache is accounted by the device's memory manager instead.
    pub fn host_kv_bytes(model: &Model, n_ctx: usize) -> u64 {
        match &model.bound {
            Bound::Cpu(_) => CpuState::kv_bytes(model.hparams(), n_ctx),
            #[cfg(feature = "cuda")]
            Bound::Cuda(_) => 0,
        }
    }

    pub fn new(model: &Model, n_ctx: usize) -> Result<Self> {
        match &model.bound {
            Bound::Cpu(_) => Ok(State::Cpu(CpuState::new(model.hparams(), n_ctx)?)),
            #[cfg(feature = "cuda")]
            Bound::Cuda(m) => Ok(State::Cuda(crate::backend::cuda::CudaState::new(
                m,
                model.hparams(),
                n_ctx,
            )?)),
        }
    }

    /// One forward step over `tokens` at positions `pos0..`; the logits it produces (the last
    /// row, or every row with `Logits::All`) are appended to `out`.
    /// Prompt tokens per forward step during prefill: the CPU's cache-sized chunks; on the
    /// GPU, steps as long as its buffers are sized for (longer products keep the tensor cores
    /// busier).
    pub fn prefill_chunk(&self) -> usize {
        match self {
            State::Cpu(_) => CPU_PREFILL_CHUNK,
            #[cfg(feature = "cuda")]
            State::Cuda(_) => crate::backend::cuda::MAX_STEP_TOKENS,
        }
    }

    pub fn step(
        &mut self,
        model: &Model,
        tokens: &[u32],
        pos0: usize,
        mode: Logits,
        cancelled: &dyn Fn() -> bool,
        out: Out,
    ) -> Result<()> {
        let vocab = model.vocab_size();
        match (&model.bound, self) {
            (Bound::Cpu(m), State::Cpu(st)) => {
                let mut step = CpuStep::new(m, st, tokens, pos0)?;
                forward(&mut step, &model.recipe, mode, cancelled)?;
                let rows = if mode == Logits::All { tokens.len() } else { 1 };
                match out {
                    Out::Nothing => {}
                    Out::Logits(v) => v.extend_from_slice(&st.logits(rows)[..rows * vocab]),
                    Out::Argmax(p) => {
                        let last = &st.logits(rows)[(rows - 1) * vocab..rows * vocab];
                        *p = Some(crate::sampling::argmax(last));
                    }
                }
            }
            #[cfg(feature = "cuda")]
            (Bound::Cuda(m), State::Cuda(st)) => {
                let mut step = crate::backend::cuda::CudaStep::new(m, st, tokens, pos0)?;
                if mode == Logits::Last && step.graphable() {
                    step.run_graphed(|s| forward(s, &model.recipe, mode, cancelled))?;
                } else {
                    let r = forward(&mut step, &model.recipe, mode, cancelled);
                    // A device error outranks a cancellation seen after it.
                    step.finish()?;
                    r?;
                }
                let rows = if mode == Logits::All { tokens.len() } else { 1 };
                match out {
                    Out::Nothing => {}
                    Out::Logits(v) => st.logits_into(rows, v)?,
                    Out::Argmax(p) => *p = Some(st.argmax_row(rows - 1)?),
                }
            }
            #[cfg(feature = "cuda")]
            _ => {
                return Err(crate::Error::Internal(
                    "session state and model are on different backends".into(),
                ))
            }
        }
        Ok(())
    }

    pub fn set_taps(&mut self, on: bool) {
        match self {
            State::Cpu(st) => st.taps = on.then(Vec::new),
            #[cfg(feature = "cuda")]
            State::Cuda(st) => st.taps = on.then(Vec::new),
        }
    }

    pub fn take_taps(&mut self) -> Vec<Tap> {
        match self {
            State::Cpu(st) => st.taps.as_mut().map(std::mem::take).unwrap_or_default(),
            #[cfg(feature = "cuda")]
            State::Cuda(st) => st.taps.as_mut().map(std::mem::take).unwrap_or_default(),
        }
    }
}
