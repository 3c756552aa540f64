//! Reading and writing the first rows of a CPU state's KV cache (session save/restore, fork).

use super::CpuState;
use crate::{Error, Result};

impl CpuState {
    /// Appends the first `n` positions' keys and values to `out`: per layer, `n` rows of K
    /// then `n` rows of V, `kv_dim` f32 values a row (the layout of [`State::kv_rows`]).
    ///
    /// [`State::kv_rows`]: crate::backend::State::kv_rows
    pub fn kv_rows(&self, n: usize, out: &mut Vec<f32>) -> Result<()> {
        let len = self.kv_len(n)?;
        for (k, v) in self.kv.k.iter().zip(&self.kv.v) {
            out.extend_from_slice(&k[..len]);
            out.extend_from_slice(&v[..len]);
        }
        Ok(())
    }

    /// Overwrites the first `n` positions' keys and values with `data` (as
    /// [`kv_rows`](Self::kv_rows) writes them).
    pub fn set_kv_rows(&mut self, n: usize, data: &[f32]) -> Result<()> {
        let len = self.kv_len(n)?;
        if data.len() != 2 * len * self.dims.n_layer {
            return Err(Error::InvalidArgument(format!(
                "{} KV values given for {n} positions of {} layers",
                data.len(),
                self.dims.n_layer
            )));
        }
        let mut rows = data.chunks_exact(len);
        for (k, v) in self.kv.k.iter_mut().zip(self.kv.v.iter_mut()) {
            if let (Some(kr), Some(vr)) = (rows.next(), rows.next()) {
                k[..len].copy_from_slice(kr);
                v[..len].copy_from_slice(vr);
            }
        }
        Ok(())
    }

    /// Values of `n` positions of one layer's K (or V), checked against the cache's length.
    fn kv_len(&self, n: usize) -> Result<usize> {
        if n > self.kv.n_ctx {
            return Err(Error::ContextFull(format!(
                "{n} positions do not fit a KV cache of {}",
                self.kv.n_ctx
            )));
        }
        Ok(n * self.dims.kv_dim())
    }
}
