//! Reading and writing the first rows of a GPU state's KV cache (session save/restore, fork).
//! The cache is f16 (or f32), `[head][position][head_dim]` per layer; the rows travel as f32
//! `[position][head][head_dim]` (the CPU's layout), so a state saved on one device restores
//! on the other. f16 -> f32 is exact; f32 -> f16 rounds as the kernels' own store does.

use super::CudaState;
use crate::{Error, Result};
use half::f16;

impl CudaState {
    /// Appends the first `n` positions' keys and values to `out`: per layer, `n` rows of K
    /// then `n` rows of V, `kv_dim` f32 values a row. Waits for the GPU.
    pub fn kv_rows(&self, n: usize, out: &mut Vec<f32>) -> Result<()> {
        self.check_rows(n)?;
        if n > self.kv_cap {
            return Err(Error::InvalidArgument(format!(
                "{n} positions asked of a KV cache holding {}",
                self.kv_cap
            )));
        }
        let (n_kv, hd) = (self.dims.n_head_kv, self.dims.head_dim);
        for layer in &self.kv {
            let eb = layer.elem_bytes();
            let mut head = vec![0u8; n * hd * eb];
            for cache in [&layer.k, &layer.v] {
                let start = out.len();
                out.resize(start + n * n_kv * hd, 0.0);
                let rows = &mut out[start..];
                for h in 0..n_kv {
                    // A head's first n positions are contiguous.
                    self.dev
                        .download_at(cache, h * self.kv_cap * hd * eb, &mut head)?;
                    for (p, src) in head.chunks_exact(hd * eb).enumerate() {
                        let dst = &mut rows[(p * n_kv + h) * hd..][..hd];
                        for (d, b) in dst.iter_mut().zip(src.chunks_exact(eb)) {
                            *d = match *b {
                                [a, b] => f16::from_le_bytes([a, b]).to_f32(),
                                [a, b, c, e] => f32::from_le_bytes([a, b, c, e]),
                                _ => unreachable!("2- or 4-byte values"),
                            };
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Overwrites the first `n` positions' keys and values with `data` (as
    /// [`kv_rows`](Self::kv_rows) writes them). Waits for the GPU.
    pub fn set_kv_rows(&mut self, n: usize, data: &[f32]) -> Result<()> {
        self.check_rows(n)?;
        self.ensure_kv(n)?;
        let (n_kv, hd) = (self.dims.n_head_kv, self.dims.head_dim);
        let per = n * n_kv * hd;
        if data.len() != 2 * per * self.kv.len() {
            return Err(Error::InvalidArgument(format!(
                "{} KV values given for {n} positions of {} layers",
                data.len(),
                self.kv.len()
            )));
        }
        let mut rows = data.chunks_exact(per.max(1));
        for layer in &mut self.kv {
            let eb = layer.elem_bytes();
            let mut head = vec![0u8; n * hd * eb];
            for cache in [&mut layer.k, &mut layer.v] {
                let Some(src) = rows.next() else { break };
                for h in 0..n_kv {
                    for (p, dst) in head.chunks_exact_mut(hd * eb).enumerate() {
                        let row = &src[(p * n_kv + h) * hd..][..hd];
                        for (b, &x) in dst.chunks_exact_mut(eb).zip(row) {
                            if eb == 4 {
                                b.copy_from_slice(&x.to_le_bytes());
                            } else {
                                b.copy_from_slice(&f16::from_f32(x).to_le_bytes());
                            }
                        }
                    }
                    self.dev.write(cache, h * self.kv_cap * hd * eb, &head)?;
                }
            }
        }
        Ok(())
    }

    fn check_rows(&self, n: usize) -> Result<()> {
        if n > self.n_ctx {
            return Err(Error::ContextFull(format!(
                "{n} positions do not fit a KV cache of {}",
                self.n_ctx
            )));
        }
        Ok(())
    }
}
