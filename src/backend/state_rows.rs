//! A session state's KV rows as plain f32 data, whatever the device: what session
//! save/restore and fork copy.

use super::{Dims, State};
use crate::Result;

impl State {
    /// The keys and values of the first `n` positions: per layer, `n` rows of K then `n` rows
    /// of V, `dims.kv_dim()` f32 values a row (positions in order, heads in order within a
    /// row). On the GPU this downloads them (f16 widened to f32, exactly).
    pub fn kv_rows(&self, n: usize) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        match self {
            State::Cpu(_, st) => st.kv_rows(n, &mut out)?,
            #[cfg(feature = "cuda")]
            State::Cuda(_, st) => st.kv_rows(n, &mut out)?,
        }
        Ok(out)
    }

    /// Overwrites the first `n` positions' keys and values with `data` (laid out as
    /// [`kv_rows`](Self::kv_rows) gives them; the length is checked). On the GPU this uploads
    /// them (rounded to f16, as the kernels store them).
    pub fn set_kv_rows(&mut self, n: usize, data: &[f32]) -> Result<()> {
        match self {
            State::Cpu(_, st) => st.set_kv_rows(n, data),
            #[cfg(feature = "cuda")]
            State::Cuda(_, st) => st.set_kv_rows(n, data),
        }
    }
}

/// Values [`State::kv_rows`] gives for `n` positions, or None if that overflows.
pub fn kv_values(dims: &Dims, n: usize) -> Option<usize> {
    n.checked_mul(dims.kv_dim())?
        .checked_mul(dims.n_layer)?
        .checked_mul(2)
}
