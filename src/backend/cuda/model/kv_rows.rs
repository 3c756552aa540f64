//! Reading and writing the first rows of a GPU state's KV cache (session save/restore, fork).
//! The cache is in pages of f16 (or f32) values (kv_pages.rs: per layer, K then V, each
//! `[head][position in the page][head_dim]`); the rows travel as f32
//! `[position][head][head_dim]` (the CPU's layout), so a state saved on one device restores
//! on the other. f16 -> f32 is exact; f32 -> f16 rounds as the kernels' own store does.

use super::{CudaState, KV_PAGE};
use crate::{Error, Result};
use half::f16;

impl CudaState {
    /// Appends the first `n` positions' keys and values to `out`: per layer, `n` rows of K
    /// then `n` rows of V, `kv_dim` f32 values a row. Waits for the GPU.
    pub fn kv_rows(&self, n: usize, out: &mut Vec<f32>) -> Result<()> {
        self.check_rows(n)?;
        if n > self.kv.capacity() {
            return Err(Error::InvalidArgument(format!(
                "{n} positions asked of a KV cache holding {}",
                self.kv.capacity()
            )));
        }
        let (n_layer, n_kv, hd) = (self.dims.n_layer, self.dims.n_head_kv, self.dims.head_dim);
        let eb = if self.kv.f32 { 4 } else { 2 };
        let kv_dim = n_kv * hd;
        let start = out.len();
        out.resize(start + 2 * n_layer * n * kv_dim, 0.0);
        let rows = &mut out[start..];
        let mut page = vec![0u8; self.kv.page_bytes()];
        for pi in 0..n.div_ceil(KV_PAGE) {
            self.kv.download_page(&self.dev, pi, &mut page)?;
            // The page's runs of `hd` values: (layer, K or V, head, row), in that order.
            for (run, src) in page.chunks_exact(hd * eb).enumerate() {
                let r = run % KV_PAGE;
                let h = run / KV_PAGE % n_kv;
                let lkv = run / KV_PAGE / n_kv; // 2 layer + (0: K, 1: V)
                let p = pi * KV_PAGE + r;
                if p >= n {
                    continue;
                }
                let dst = &mut rows[((lkv * n + p) * n_kv + h) * hd..][..hd];
                for (d, b) in dst.iter_mut().zip(src.chunks_exact(eb)) {
                    *d = match *b {
                        [a, b] => f16::from_le_bytes([a, b]).to_f32(),
                        [a, b, c, e] => f32::from_le_bytes([a, b, c, e]),
                        _ => unreachable!("2- or 4-byte values"),
                    };
                }
            }
        }
        Ok(())
    }

    /// Overwrites the first `n` positions' keys and values with `data` (as
    /// [`kv_rows`](Self::kv_rows) writes them). Waits for the GPU.
    pub fn set_kv_rows(&mut self, n: usize, data: &[f32]) -> Result<()> {
        self.check_rows(n)?;
        let (n_layer, n_kv, hd) = (self.dims.n_layer, self.dims.n_head_kv, self.dims.head_dim);
        let kv_dim = n_kv * hd;
        if data.len() != 2 * n_layer * n * kv_dim {
            return Err(Error::InvalidArgument(format!(
                "{} KV values given for {n} positions of {n_layer} layers",
                data.len()
            )));
        }
        self.settle_ahead();
        self.ensure_kv(0, n)?;
        let eb = if self.kv.f32 { 4 } else { 2 };
        let mut page = vec![0u8; self.kv.page_bytes()];
        for pi in 0..n.div_ceil(KV_PAGE) {
            // A partial last page keeps its rows past `n`.
            if (pi + 1) * KV_PAGE > n {
                self.kv.download_page(&self.dev, pi, &mut page)?;
            }
            for (run, dst) in page.chunks_exact_mut(hd * eb).enumerate() {
                let r = run % KV_PAGE;
                let h = run / KV_PAGE % n_kv;
                let lkv = run / KV_PAGE / n_kv;
                let p = pi * KV_PAGE + r;
                if p >= n {
                    continue;
                }
                let src = &data[((lkv * n + p) * n_kv + h) * hd..][..hd];
                for (b, &x) in dst.chunks_exact_mut(eb).zip(src) {
                    if eb == 4 {
                        b.copy_from_slice(&x.to_le_bytes());
                    } else {
                        b.copy_from_slice(&f16::from_f32(x).to_le_bytes());
                    }
                }
            }
            self.kv.upload_page(&self.dev, pi, &page)?;
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
