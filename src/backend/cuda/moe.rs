//! Launches of kernels/moe.cu (the router's top-k on the GPU; a step's picks grouped by
//! expert, the experts' biases and the weighted sum on the device; the gather and scatter of
//! token rows; one token's MXFP4 expert mat-vecs) and of mma_matmul.cu's grouped expert
//! products, the tables of a model's expert buffers, and a session's scratch for the
//! mixture-of-experts feed-forward.

use super::device::CudaDevice;
use super::fused::{ExpertArgs, ExpertTable, ExpertsRef, MAX_SELECTED_EXPERTS};
use super::launch::{dim, f32s, positive, row_bytes, type_suffix, MMA_TILES, MOE_MMA_TILES};
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

    /// The `n_picks` picks of `ids` (i32 expert ids of tokens t * k + j, the router's) grouped
    /// by expert on the device: `offsets` (n_exp + 1 i32) each expert's first grouped row,
    /// `src` (n_picks i32) the pick of each grouped row, `pos` (n_picks i32) the grouped row of
    /// each pick (-1 for an id outside 0..n_exp), each expert's picks in token order.
    pub fn moe_group(
        &self,
        ids: &DeviceBuffer,
        n_picks: usize,
        n_exp: usize,
        g: &MoeGroups,
    ) -> Result<()> {
        let n_i = positive(n_picks, "moe group picks")?;
        if n_exp == 0 || n_exp > MAX_ROUTED_EXPERTS {
            return Err(Error::InvalidArgument(format!(
                "moe group: {n_exp} experts (1 to {MAX_ROUTED_EXPERTS})"
            )));
        }
        ids.check(self, f32s(n_picks), "moe group ids")?;
        g.offsets
            .check(self, f32s(n_exp + 1), "moe group offsets")?;
        g.src.check(self, f32s(n_picks), "moe group src")?;
        g.pos.check(self, f32s(n_picks), "moe group pos")?;
        launch!(self, "moe_group", (1, 1, 1), (256, 1, 1);
            ids.ptr(), n_i, n_exp as i32, g.offsets.ptr(), g.src.ptr(), g.pos.ptr())
    }

    /// The products of grouped rows with their experts, on the tensor cores
    /// (kernels/mma_matmul.cu's `mma_moe_*`, the rounding of [`matmul_mma`](Self::matmul_mma)):
    /// `out[r]` = `x[r]` · (expert e's matrix)ᵀ for each expert e's rows of `g` (one or two
    /// products of one format and shape sharing the input: a gate and an up). `x`: `n_rows`
    /// grouped rows of `cols` f32; each out: `n_rows` rows of `rows` f32; `n_tok`: the step's
    /// tokens (the most rows an expert can have).
    pub fn moe_mma(
        &self,
        prods: &[(ExpertsRef, &DeviceBuffer)],
        x: &DeviceBuffer,
        g: &MoeGroups,
        n_tok: usize,
        n_rows: usize,
    ) -> Result<()> {
        let Some(&(e, _)) = prods.first() else {
            return Err(Error::InvalidArgument("moe mma: no product".into()));
        };
        if prods.len() > 2 {
            return Err(Error::InvalidArgument(format!(
                "moe mma: {} products (1 or 2)",
                prods.len()
            )));
        }
        let n_exp = e.table.len();
        let rb = row_bytes(e.ty, e.cols, "moe mma")?;
        let (rows_i, k_i) = (
            positive(e.rows, "moe mma rows")?,
            positive(e.cols, "moe mma k")?,
        );
        positive(n_tok, "moe mma tokens")?;
        if n_exp == 0 || n_exp > MAX_ROUTED_EXPERTS || e.cols % 32 != 0 {
            return Err(Error::InvalidArgument(format!(
                "moe mma: {n_exp} experts of {} columns (1 to {MAX_ROUTED_EXPERTS}, a multiple of 32)",
                e.cols
            )));
        }
        x.check(self, f32s(n_rows * e.cols), "moe mma x")?;
        g.offsets.check(self, f32s(n_exp + 1), "moe mma offsets")?;
        for (i, (p, out)) in prods.iter().enumerate() {
            if (p.ty, p.rows, p.cols, p.table.len()) != (e.ty, e.rows, e.cols, n_exp) {
                return Err(Error::InvalidArgument(format!(
                    "moe mma: product {i} is not of product 0's format and shape"
                )));
            }
            self.check_table(p.table, rb * e.rows as u64, "moe mma weights")?;
            out.check(self, f32s(n_rows * e.rows), "moe mma out")?;
        }
        let (w1, y1) = prods
            .get(1)
            .map_or((0, 0), |(p, o)| (p.table.ptr(), o.ptr()));
        let t = moe_tile(n_rows, n_exp);
        let tl = MMA_TILES[t];
        let grid = (
            n_tok.div_ceil(tl.tokens) as u32,
            dim(e.rows.div_ceil(tl.rows), "moe mma row tiles")? as u32,
            (prods.len() * n_exp) as u32,
        );
        if grid.1 > 65535 {
            return Err(Error::InvalidArgument(format!(
                "moe mma: {} rows is too many for one launch",
                e.rows
            )));
        }
        let name = tl.moe_kernel(type_suffix(e.ty)?);
        let smem = tl.smem_bytes(e.ty) as u32;
        launch!(self, &name, grid, (tl.threads() as u32, 1, 1), raise_shared = smem;
            e.table.ptr(), w1, x.ptr(), prods[0].1.ptr(), y1, g.offsets.ptr(), n_exp as i32,
            rows_i, k_i, rb as i64)
    }

    /// `out[r] += bias[e]` for the grouped rows r of `g` (`n_rows` rows of `width` f32), e the
    /// expert of row r's pick (`ids`: the router's), bias a table of each expert's row; one or
    /// two (table, out) pairs.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_bias(
        &self,
        prods: &[(&ExpertTable, &DeviceBuffer)],
        ids: &DeviceBuffer,
        g: &MoeGroups,
        n_exp: usize,
        n_rows: usize,
        width: usize,
    ) -> Result<()> {
        if prods.is_empty() || prods.len() > 2 {
            return Err(Error::InvalidArgument(format!(
                "moe bias: {} products (1 or 2)",
                prods.len()
            )));
        }
        let rows_i = positive(n_rows, "moe bias rows")?;
        let w_i = positive(width, "moe bias width")?;
        ids.check(self, f32s(n_rows), "moe bias ids")?;
        g.offsets.check(self, f32s(n_exp + 1), "moe bias offsets")?;
        g.src.check(self, f32s(n_rows), "moe bias src")?;
        for (t, out) in prods {
            if t.len() != n_exp {
                return Err(Error::InvalidArgument(format!(
                    "moe bias: {} bias rows for {n_exp} experts",
                    t.len()
                )));
            }
            self.check_table(t, f32s(width), "moe bias rows")?;
            out.check(self, f32s(n_rows * width), "moe bias out")?;
        }
        let (b1, y1) = prods.get(1).map_or((0, 0), |(t, o)| (t.ptr(), o.ptr()));
        launch!(self, "moe_bias", (rows_i as u32, prods.len() as u32, 1), (256, 1, 1);
            prods[0].1.ptr(), y1, prods[0].0.ptr(), b1, ids.ptr(), g.src.ptr(), g.offsets.ptr(),
            n_exp as i32, w_i)
    }

    /// `out[t]` = Σ over token t's k picks, in ascending expert order (the CPU's), of
    /// `weights[i]` · `y[pos[i]]`: the grouped expert outputs (rows of `width` f32) weighed
    /// back into the step's `n_tok` token rows.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_combine(
        &self,
        y: &DeviceBuffer,
        ids: &DeviceBuffer,
        g: &MoeGroups,
        weights: &DeviceBuffer,
        n_tok: usize,
        k: usize,
        width: usize,
        out: &DeviceBuffer,
    ) -> Result<()> {
        let n_i = positive(n_tok, "moe combine tokens")?;
        let w_i = positive(width, "moe combine width")?;
        if k == 0 || k > MAX_SELECTED_EXPERTS {
            return Err(Error::InvalidArgument(format!(
                "moe combine: {k} picks a token (1 to {MAX_SELECTED_EXPERTS})"
            )));
        }
        let picks = n_tok * k;
        y.check(self, f32s(picks * width), "moe combine y")?;
        ids.check(self, f32s(picks), "moe combine ids")?;
        g.pos.check(self, f32s(picks), "moe combine pos")?;
        weights.check(self, f32s(picks), "moe combine weights")?;
        out.check(self, f32s(n_tok * width), "moe combine out")?;
        launch!(self, "moe_combine", (n_i as u32, 1, 1), (256, 1, 1);
            y.ptr(), ids.ptr(), g.pos.ptr(), weights.ptr(), out.ptr(), k as i32, w_i)
    }

    /// [`expert_matvec`](Self::expert_matvec) of MXFP4 experts (kernels/moe.cu's
    /// `moe_matvec_mxfp4`, `a` checked there): a block per (product, slot, run of rows), the
    /// grid about [`MOE_MV_BLOCKS_PER_SM`] blocks a multiprocessor.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn moe_matvec_mxfp4(
        &self,
        a: ExpertArgs,
        rec: &DeviceBuffer,
        n_sel: usize,
        n_mat: usize,
        rows: usize,
        row_bytes: usize,
        k: usize,
    ) -> Result<()> {
        let target = self.sm_count() as usize * MOE_MV_BLOCKS_PER_SM;
        let per = (rows * n_sel * n_mat).div_ceil(target).max(1);
        let smem = moe_mv_shared(row_bytes, k);
        let grid = (rows.div_ceil(per) as u32, n_sel as u32, n_mat as u32);
        launch!(self, "moe_matvec_mxfp4", grid, (256, 1, 1), shared = smem as u32;
            a, rec.ptr(), per as i32)
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

/// The tile ([`MMA_TILES`] index, one of [`MOE_MMA_TILES`]) of the grouped expert products
/// for `n_rows` picks over `n_exp` experts: the smallest that holds an expert's average rows
/// (an expert's weights are read once per token tile). gpt-oss-20b pp512 (64 rows an expert
/// on average): 7,460 tok/s with 64x64, 6,859 with 128x64, 5,562 with 32x64 (H100).
fn moe_tile(n_rows: usize, n_exp: usize) -> usize {
    let avg = n_rows.div_ceil(n_exp.max(1));
    MOE_MMA_TILES
        .iter()
        .rev()
        .copied()
        .find(|&t| MMA_TILES[t].tokens >= avg)
        .unwrap_or(MOE_MMA_TILES[0])
}

/// Bytes of a row a warp of `moe_matvec_mxfp4` stages (kernels/moe.cu's `moe_mv_buf`).
fn moe_mv_buf(row_bytes: usize) -> usize {
    (row_bytes.div_ceil(16) + 1) * 16 + 16
}

/// Dynamic shared memory of `moe_matvec_mxfp4`: the input's chunk records, a row a warp.
fn moe_mv_shared(row_bytes: usize, k: usize) -> usize {
    k / 32 * 80 + 8 * moe_mv_buf(row_bytes)
}

/// Whether `moe_matvec_mxfp4` takes MXFP4 rows of `row_bytes` (`k` values): rows of up to
/// 127 16-byte pieces (4 a lane), shared memory within the default 48 KiB.
/// `LLORCH_MOE_MATVEC=0` keeps decode.cu's expert_matvec.
pub(super) fn moe_matvec_takes(row_bytes: usize, k: usize) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("LLORCH_MOE_MATVEC").map_or(true, |v| v != "0"));
    on && row_bytes <= 16 * (32 * 4 - 1) && moe_mv_shared(row_bytes, k) <= 48 << 10
}

/// Blocks a multiprocessor that `moe_matvec_mxfp4`'s grid is sized for: gpt-oss-20b tg64
/// 337.7 tok/s with 4, 334.7 with 8 (H100, 2026-12-06).
const MOE_MV_BLOCKS_PER_SM: usize = 4;

/// A step's picks grouped by expert on the device ([`CudaDevice::moe_group`]'s output).
pub struct MoeGroups {
    /// Each expert's first grouped row, and the rows grouped (n_exp + 1 i32).
    pub offsets: DeviceBuffer,
    /// The pick (t * k + j) of each grouped row (i32).
    pub src: DeviceBuffer,
    /// The grouped row of each pick (i32, -1 for none).
    pub pos: DeviceBuffer,
}

/// Whether a file tensor is a stacked expert tensor (GGUF's `*_exps.weight` / `*_exps.bias`),
/// which the recipe takes as one view per expert.
pub(super) fn is_experts(name: &str) -> bool {
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

/// A session's buffers for the mixture-of-experts feed-forward of up to `tokens` token rows
/// and `rows` picks (`tokens` x top-k).
pub(super) struct MoeScratch {
    pub shape: MoeShape,
    pub tokens: usize,
    pub rows: usize,
    /// Router logits, `tokens` x n_exp.
    pub logits: DeviceBuffer,
    /// Each token's picks (i32) and their weights, `tokens` x [`MAX_SELECTED_EXPERTS`].
    pub ids: DeviceBuffer,
    pub weights: DeviceBuffer,
    /// The picks grouped by expert, `rows` of them (`src`: indices t * k + j, i32).
    pub groups: MoeGroups,
    /// Rows of `width` f32 (`rows` of them, at least [`MAX_SELECTED_EXPERTS`]): the gathered
    /// inputs of the picks, their gate, up, activation and output.
    pub xg: DeviceBuffer,
    pub gate: DeviceBuffer,
    pub up: DeviceBuffer,
    pub act: DeviceBuffer,
    pub y: DeviceBuffer,
    /// Chunk records of one token's input, or of its picked experts' activations.
    pub rec: DeviceBuffer,
}

impl MoeScratch {
    /// For `tokens` token rows of `k` picks each.
    pub fn new(dev: &CudaDevice, shape: MoeShape, tokens: usize, k: usize) -> Result<Self> {
        let rows = (tokens * k).max(MAX_SELECTED_EXPERTS);
        let row_f32s = |n: usize| dev.alloc(n * shape.width * 4, MemKind::Scratch);
        Ok(MoeScratch {
            shape,
            tokens,
            rows,
            logits: dev.alloc(tokens * shape.n_exp * 4, MemKind::Scratch)?,
            ids: dev.alloc(rows * 4, MemKind::Scratch)?,
            weights: dev.alloc(rows * 4, MemKind::Scratch)?,
            groups: MoeGroups {
                offsets: dev.alloc((shape.n_exp + 1) * 4, MemKind::Scratch)?,
                src: dev.alloc(rows * 4, MemKind::Scratch)?,
                pos: dev.alloc(rows * 4, MemKind::Scratch)?,
            },
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

#[cfg(test)]
mod tests {
    use super::moe_tile;

    /// The grouped products' tiles: gpt-oss-20b's 512-token prompt (4 of 32 experts a token)
    /// on the measured best, 64x64; a few tokens an expert on 32x64, many on 128x64.
    #[test]
    fn moe_tile_picks() {
        assert_eq!(moe_tile(512 * 4, 32), 2);
        assert_eq!(moe_tile(16 * 4, 32), 3);
        assert_eq!(moe_tile(512 * 8, 16), 1);
        assert_eq!(moe_tile(1, 0), 3);
    }
}
