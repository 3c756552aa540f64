//! A session's per-backend state (KV cache, activation buffers) and the dispatch of one
//! forward step to the backend the model is bound to.

use crate::backend::cpu::{CpuState, CpuStep, Tap};
use crate::model::hparams::HParams;
use crate::model::recipe::{forward, Logits};
use crate::model::{Bound, Model};
use crate::Result;

pub(crate) enum State {
    Cpu(CpuState),
}

impl State {
    /// Bytes the KV cache of `n_ctx` positions takes on the model's backend.
    pub fn kv_bytes(hp: &HParams, n_ctx: usize) -> u64 {
        CpuState::kv_bytes(hp, n_ctx)
    }

    pub fn new(model: &Model, n_ctx: usize) -> Result<Self> {
        match &model.bound {
            Bound::Cpu(_) => Ok(State::Cpu(CpuState::new(model.hparams(), n_ctx)?)),
        }
    }

    /// One forward step over `tokens` at positions `pos0..`; the logits it produces (the last
    /// row, or every row with `Logits::All`) are appended to `out`.
    pub fn step(
        &mut self,
        model: &Model,
        tokens: &[u32],
        pos0: usize,
        mode: Logits,
        cancelled: &dyn Fn() -> bool,
        out: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let vocab = model.vocab_size();
        match (&model.bound, self) {
            (Bound::Cpu(m), State::Cpu(st)) => {
                let mut step = CpuStep::new(m, st, tokens, pos0)?;
                forward(&mut step, &model.recipe, mode, cancelled)?;
                if let Some(out) = out {
                    let rows = if mode == Logits::All { tokens.len() } else { 1 };
                    out.extend_from_slice(&st.logits(rows)[..rows * vocab]);
                }
            }
        }
        Ok(())
    }

    pub fn set_taps(&mut self, on: bool) {
        match self {
            State::Cpu(st) => st.taps = on.then(Vec::new),
        }
    }

    pub fn take_taps(&mut self) -> Vec<Tap> {
        match self {
            State::Cpu(st) => st.taps.as_mut().map(std::mem::take).unwrap_or_default(),
        }
    }
}
