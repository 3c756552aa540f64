//! Launches of kernels/moe.cu (the router's top-k on the GPU, the gather and scatter of a
//! prompt's token rows around each expert's products), the tables of a model's expert
//! buffers, and a session's scratch for the mixture-of-experts feed-forward.

use super::device::CudaDevice;
use super::fused::{ExpertTable, MAX_SELECTED_EXPERTS};
use super::launch::{f32s, positive};
use super::memory::{DeviceBuffer, MemKind};
use crate::backend::WeightTensor;
use crate::{Error, Result};
use std::collections::HashMap;
use std::ffi::c_void;

/// Most experts `moe_route` ranks (kernels/moe.cu: 8 a lane of one warp).
pub const MAX_ROUTED_EXPERTS: usize = 256;

impl CudaDevice {
    /// The router's picks for `n_tok` tokens: `logits` (`n_tok` x `n_exp` f32) get `bias`
    /// (`n_exp` f32) added in place, then each token's `k` largest (NaN as -inf, ties to the
    /// lower expert, largest first) go to `ids` (`n_tok` x k i32) and the softmax of their
    /// logits to `weights` (`n_tok` x k f32), as the CPU's `route`.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_route(
        &self,
        logits: &DeviceBuffer,
        bias: Option<&DeviceBuffer>,
        n_tok: usize,
        n_exp: usize,
        k: usize,
        ids: &DeviceBuffer,
        weights: &DeviceBuffer,
    ) -> Result<()> {
        let n_i = positive(n_tok, "moe route tokens")?;
        if n_exp == 0 || n_exp > MAX_ROUTED_EXPERTS || k == 0 || k > n_exp.min(MAX_SELECTED_EXPERTS)
        {
            return Err(Error::InvalidArgument(format!(
                "moe route: top-{k} of {n_exp} experts (1 to {MAX_ROUTED_EXPERTS} experts, \
                 1 to {MAX_SELECTED_EXPERTS} picks)"
            )));
        }
        logits.check(self, f32s(n_tok * n_exp), "moe route logits")?;
        if let Some(b) = bias {
            b.check(self, f32s(n_exp), "moe route bias")?;
        }
        ids.check(self, f32s(n_tok * k), "moe route ids")?;
        weights.check(self, f32s(n_tok * k), "moe route weights")?;
        launch!(self, "moe_route", (n_tok.div_ceil(4) as u32, 1, 1), (128, 1, 1);
            logits.ptr(), bias.map_or(0, |b| b.ptr()), n_i, n_exp as i32, k as i32, ids.ptr(),
            weights.ptr())
    }

    /// `xg[j]` = row `picks[first + j] / k` of `x` for j < `count` (rows of `width` f32): an
    /// expert's tokens gathered for its products. The picks come from the router of the same
    /// step (their tokens are rows of `x`).
    #[allow(clippy::too_many_arguments)]
    pub fn moe_gather(
        &self,
        x: &DeviceBuffer,
        picks: &DeviceBuffer,
        first: usize,
        count: usize,
        k: usize,
        width: usize,
        xg: &DeviceBuffer,
    ) -> Result<()> {
        let (picks_at, k_i, w_i) = self.moe_rows_check(picks, first, count, k, width)?;
        xg.check(self, f32s(count * width), "moe gather out")?;
        x.check(self, f32s(width), "moe gather x")?;
        launch!(self, "moe_gather", (count as u32, 1, 1), (256, 1, 1);
            x.ptr(), picks_at, xg.ptr(), k_i, w_i)
    }

    /// `out[picks[first + j] / k] += weights[picks[first + j]] * y[j]` for j < `count`: an
    /// expert's outputs (rows of `width` f32, in its picks' order) weighed into their tokens'
    /// rows.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_scatter(
        &self,
        y: &DeviceBuffer,
        picks: &DeviceBuffer,
        first: usize,
        count: usize,
        weights: &DeviceBuffer,
        k: usize,
        width: usize,
        out: &DeviceBuffer,
    ) -> Result<()> {
        let (picks_at, k_i, w_i) = self.moe_rows_check(picks, first, count, k, width)?;
        y.check(self, f32s(count * width), "moe scatter y")?;
        weights.check(self, f32s(k), "moe scatter weights")?;
        out.check(self, f32s(width), "moe scatter out")?;
        launch!(self, "moe_scatter", (count as u32, 1, 1), (256, 1, 1);
            y.ptr(), picks_at, weights.ptr(), out.ptr(), k_i, w_i)
    }

    /// The checks gather and scatter share: the address of `picks[first]`, k and width.
    fn moe_rows_check(
        &self,
        picks: &DeviceBuffer,
        first: usize,
        count: usize,
        k: usize,
        width: usize,
    ) -> Result<(u64, i32, i32)> {
        if count == 0 || count > 65535 {
            return Err(Error::InvalidArgument(format!(
                "moe rows: {count} rows (1 to 65535)"
            )));
        }
        let end = first
            .checked_add(count)
            .ok_or_else(|| Error::InvalidArgument("moe rows: range overflows".into()))?;
        picks.check(self, f32s(end), "moe picks")?;
        let k_i = positive(k, "moe k")?;
        let w_i = positive(width, "moe row width")?;
        Ok((picks.ptr() + f32s(first), k_i, w_i))
    }
}

/// Whether a file tensor is a stacked expert tensor (GGUF's `*_exps.weight` / `*_exps.bias`),
/// which the recipe takes as one view per expert.
fn is_experts(name: &str) -> bool {
    name.contains("_exps.")
}

/// The tables of the experts' buffers of every stacked expert tensor (`tensors` as bound,
/// `bufs` their uploads in the same order), by the weight id of expert 0: consecutive views
/// of one such tensor, each view one expert.
pub(super) fn expert_tables(
    dev: &CudaDevice,
    tensors: &[WeightTensor],
    bufs: &[&DeviceBuffer],
) -> Result<HashMap<u32, ExpertTable>> {
    let mut tables = HashMap::new();
    let mut i = 0;
    while i < tensors.len() {
        let t = &tensors[i];
        let mut end = i + 1;
        while end < tensors.len()
            && tensors[end].name == t.name
            && tensors[end].row0 == tensors[end - 1].row0 + tensors[end - 1].rows
        {
            end += 1;
        }
        if is_experts(&t.name) && t.row0 == 0 {
            tables.insert(i as u32, dev.expert_table(&bufs[i..end])?);
        }
        i = end;
    }
    Ok(tables)
}

/// The sizes a session's mixture scratch is made for: the most experts of a layer, and the
/// widest row an expert reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeShape {
    pub n_exp: usize,
    pub width: usize,
}

/// The most experts and the widest expert row of `tensors` (none without experts).
pub(super) fn moe_shape(tensors: &[WeightTensor]) -> Option<MoeShape> {
    let mats = tensors.iter().filter(|t| is_experts(&t.name) && t.rows > 1);
    let width = mats.clone().map(|t| t.rows.max(t.cols)).max()?;
    let n_exp = mats
        .filter(|t| t.row0 == 0)
        .map(|t| t.info.dims.last().copied().unwrap_or(1));
    Some(MoeShape {
        n_exp: n_exp.max().unwrap_or(1) as usize,
        width,
    })
}

/// A session's buffers for the mixture-of-experts feed-forward of up to `tokens` token rows.
pub(super) struct MoeScratch {
    pub shape: MoeShape,
    pub tokens: usize,
    /// Router logits, `tokens` x n_exp.
    pub logits: DeviceBuffer,
    /// Each token's picks (i32) and their weights, `tokens` x [`MAX_SELECTED_EXPERTS`].
    pub ids: DeviceBuffer,
    pub weights: DeviceBuffer,
    /// The picks grouped by expert (indices t * k + j, i32), `tokens` x k.
    pub picks: DeviceBuffer,
    /// Rows of `width` f32 (`rows` of them: `tokens`, at least [`MAX_SELECTED_EXPERTS`]): an
    /// expert's gathered input, its gate, up, activation and output.
    pub xg: DeviceBuffer,
    pub gate: DeviceBuffer,
    pub up: DeviceBuffer,
    pub act: DeviceBuffer,
    pub y: DeviceBuffer,
    /// Chunk records of one token's input, or of its picked experts' activations.
    pub rec: DeviceBuffer,
}

impl MoeScratch {
    pub fn new(dev: &CudaDevice, shape: MoeShape, tokens: usize) -> Result<Self> {
        let rows = tokens.max(MAX_SELECTED_EXPERTS);
        let picks = tokens * MAX_SELECTED_EXPERTS;
        let row_f32s = |n: usize| dev.alloc(n * shape.width * 4, MemKind::Scratch);
        Ok(MoeScratch {
            shape,
            tokens,
            logits: dev.alloc(tokens * shape.n_exp * 4, MemKind::Scratch)?,
            ids: dev.alloc(picks * 4, MemKind::Scratch)?,
            weights: dev.alloc(picks * 4, MemKind::Scratch)?,
            picks: dev.alloc(picks * 4, MemKind::Scratch)?,
            xg: row_f32s(rows)?,
            gate: row_f32s(rows)?,
            up: row_f32s(rows)?,
            act: row_f32s(rows)?,
            y: row_f32s(rows)?,
            rec: dev.alloc(
                CudaDevice::input_record_bytes(MAX_SELECTED_EXPERTS * shape.width),
                MemKind::Scratch,
            )?,
        })
    }
}
