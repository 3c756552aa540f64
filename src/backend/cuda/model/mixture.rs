//! The mixture-of-experts feed-forward of a CUDA step (GPT-OSS), as the CPU's
//! (`backend/cpu/moe.rs`) computes it: router logits (+ bias), each token's top-k experts and
//! the softmax of their logits (kernels/moe.cu, on the GPU), the picked experts' gate and up
//! (+ biases), their activation, down (+ bias), and the weighted sum.
//!
//! One token (decode) stays on the GPU from the router to the sum, so the step replays as a
//! graph: the experts' mat-vecs read the picks from device memory and only the picked
//! experts' rows (`expert_matvec`). Longer steps (a prompt) stay on the GPU too: the picks
//! grouped by expert there, each product one tensor-core launch over every expert's rows
//! (`moe_mma`); experts in F32/F16 (which `expert_matvec` does not take) go that way at one
//! token as well. Experts that are not the views of one stacked tensor (no device tables)
//! bring the picks to the host and run each expert's products with the mat-mul kernels.

use super::{as_bytes, pair, CudaModel, CudaStep};
use crate::backend::cuda::fused::{
    Epilogue, ExpertInput, ExpertOut, ExpertTable, ExpertsRef, MatVecOut,
};
use crate::backend::cuda::memory::DeviceBuffer;
use crate::backend::cuda::moe::MoeScratch;
use crate::backend::cuda::CudaDevice;
use crate::backend::{Activation, Expert, Linear, Moe, Slot, Tap, WeightId};
use crate::quant::GgmlType;
use crate::{Error, Result};

/// The device tables of one expert product: the experts' matrices, their biases if any.
#[derive(Clone, Copy)]
struct Tables<'m> {
    w: &'m ExpertTable,
    bias: Option<&'m ExpertTable>,
}

/// The tables of the experts' `which` product, when the experts are the views of one stacked
/// tensor in order (as the recipe makes them).
fn tables<'m>(
    m: &'m CudaModel,
    moe: &Moe,
    which: impl Fn(&Expert) -> Linear,
) -> Option<Tables<'m>> {
    let lin: Vec<Linear> = moe.experts.iter().map(which).collect();
    let table_of = |ids: &[WeightId]| -> Option<&'m ExpertTable> {
        let t = m.experts.get(&ids[0].0)?;
        let in_order = ids
            .iter()
            .enumerate()
            .all(|(i, w)| w.0 == ids[0].0 + i as u32);
        (in_order && t.len() == ids.len()).then_some(t)
    };
    let w: Vec<WeightId> = lin.iter().map(|l| l.w).collect();
    let bias = match lin
        .iter()
        .map(|l| l.bias)
        .collect::<Option<Vec<WeightId>>>()
    {
        Some(b) => Some(table_of(&b)?),
        None if lin.iter().all(|l| l.bias.is_none()) => None,
        None => return None,
    };
    Some(Tables {
        w: table_of(&w)?,
        bias,
    })
}

/// The experts of table `t`: matrices of `rows` x `cols` values of type `ty`.
fn experts<'t>(t: &Tables<'t>, ty: GgmlType, rows: usize, cols: usize) -> ExpertsRef<'t> {
    ExpertsRef {
        ty,
        table: t.w,
        rows,
        cols,
    }
}

/// The per-pick stages the scratch holds after a mixture: (tap name, buffer, row width).
fn pick_stages(
    sc: &MoeScratch,
    act: Activation,
    ff: usize,
    width: usize,
) -> [(&'static str, &DeviceBuffer, usize); 4] {
    [
        ("gate", &sc.gate, ff),
        ("up", &sc.up, ff),
        (act.stage_name(), &sc.act, ff),
        ("expert_out", &sc.y, width),
    ]
}

/// `out = act(g, u)` over `n` values.
fn activate(
    dev: &CudaDevice,
    act: Activation,
    g: &DeviceBuffer,
    u: &DeviceBuffer,
    n: usize,
    out: &mut DeviceBuffer,
) -> Result<()> {
    match act {
        Activation::Silu => dev.swiglu(g, u, n, out),
        Activation::GeluTanh => dev.geglu(g, u, n, out),
        Activation::ClampedSwiglu { alpha, limit } => {
            dev.clamped_swiglu(g, u, n, alpha, limit, out)
        }
    }
}

impl CudaStep<'_> {
    /// [`Ops::moe`](crate::backend::Ops::moe) on the GPU.
    pub(super) fn mixture(
        &mut self,
        layer: usize,
        moe: &Moe,
        x: Slot,
        out: Slot,
        expert_taps: bool,
    ) -> Result<()> {
        let n_exp = moe.experts.len();
        let Some(first) = moe.experts.first() else {
            return Err(Error::BadModel(
                "a mixture of experts without experts".into(),
            ));
        };
        let width = self.width(x);
        let ff = self.m.weight(first.gate.w).rows;
        let shape = self.st.moe.as_ref().map(|s| s.shape);
        if shape.map_or(true, |s| s.n_exp < n_exp || s.width < width.max(ff)) {
            return Err(Error::Internal(format!(
                "CUDA mixture scratch not sized for {n_exp} experts of rows {width}/{ff}"
            )));
        }
        let m = self.m;
        let tables = (
            tables(m, moe, |e| e.gate),
            tables(m, moe, |e| e.up),
            tables(m, moe, |e| e.down),
        );
        let quantized = [first.gate.w, first.up.w, first.down.w]
            .iter()
            .all(|&w| !matches!(self.m.weight(w).ty, GgmlType::F32 | GgmlType::F16));
        let all = match tables {
            (Some(g), Some(u), Some(d)) => Some([g, u, d]),
            _ => None,
        };
        if let (1, true, Some(t)) = (self.n, quantized, all) {
            return self.mixture_one(layer, moe, x, out, expert_taps, t);
        }
        if self.capturing {
            // A step of several rows may grow the scratch (and the fallback below reads the
            // picks back on the host): a graph cannot hold it. The step reruns without one.
            self.st.graph_ok = false;
            return Err(Error::Internal(
                "mixture of several rows in a captured step".into(),
            ));
        }
        let (n, k) = (self.n, moe.top_k);
        if self
            .st
            .moe
            .as_ref()
            .map_or(true, |s| n > s.tokens || n * k > s.rows)
        {
            let sh = shape.expect("checked above");
            // A captured decode step holds the old buffers' addresses.
            self.st.graph = None;
            self.st.moe = None; // the budget sees only the new buffers
            self.st.moe = Some(MoeScratch::new(&self.st.dev, sh, n, k)?);
        }
        match all {
            Some(t) => self.mixture_device(layer, moe, x, out, expert_taps, t),
            None => self.mixture_grouped(layer, moe, x, out, expert_taps),
        }
    }

    /// Router logits (+ bias) of the step's tokens and their picks, in the scratch.
    fn route(&mut self, moe: &Moe, x: Slot) -> Result<()> {
        let (n, n_exp, k) = (self.n, moe.experts.len(), moe.top_k);
        let width = self.width(x);
        let r = self.m.weight(moe.router.w);
        if r.rows != n_exp || r.cols != width {
            return Err(Error::BadModel(format!(
                "router of {}x{} for {n_exp} experts of input {width}",
                r.rows, r.cols
            )));
        }
        let bias = moe.router.bias.map(|b| &self.m.weight(b).buf);
        let st = &mut *self.st;
        let sc = st.moe.as_mut().expect("mixture scratch checked");
        let xb = &st.slots[x.index()];
        // In f32 (the picks follow the logits' order: no f16 rounding here). One token's F32
        // or F16 router on the fused mat-vec, which multiplies those in f32 (7 us a launch
        // on the plain one for gpt-oss-20b's 32 x 2880, H100 ncu).
        if n == 1 && matches!(r.ty, GgmlType::F32 | GgmlType::F16) {
            let prod = [MatVecOut {
                mat: self.m.mat(moe.router.w),
                bias: None,
                out: &sc.logits,
            }];
            st.dev
                .fused_matvec(xb, width, None, &prod, Epilogue::Plain, &sc.rec, false)?;
        } else if n == 1 {
            st.dev
                .matvec(r.ty, &r.buf, n_exp, width, xb, &mut sc.logits)?;
        } else {
            st.dev
                .matmul_f32(r.ty, &r.buf, n_exp, width, xb, n, &mut sc.logits)?;
        }
        st.dev
            .moe_route(&sc.logits, bias, n, n_exp, k, &sc.ids, &sc.weights)
    }

    /// The routing taps: `router_logits`, `expert_ids` (as f32), `expert_weights`.
    fn tap_route(&mut self, layer: usize, n_exp: usize, k: usize) -> Result<()> {
        if self.st.taps.is_none() {
            return Ok(());
        }
        let n = self.n;
        let st = &mut *self.st;
        let sc = st.moe.as_ref().expect("mixture scratch checked");
        let logits = st.dev.download_f32(&sc.logits, n * n_exp)?;
        let ids = st.dev.download_i32(&sc.ids, n * k)?;
        let weights = st.dev.download_f32(&sc.weights, n * k)?;
        let ids = ids.iter().map(|&e| e as f32).collect();
        let route = [
            ("router_logits", logits),
            ("expert_ids", ids),
            ("expert_weights", weights),
        ];
        self.record(layer, route);
        Ok(())
    }

    /// Record `taps` (name, `n` token rows) under `layer`, when taps are on.
    fn record<'n>(&mut self, layer: usize, taps: impl IntoIterator<Item = (&'n str, Vec<f32>)>) {
        let n = self.n;
        if let Some(all) = self.st.taps.as_mut() {
            all.extend(taps.into_iter().map(|(name, data)| Tap {
                name: name.into(),
                layer: Some(layer),
                rows: n,
                data,
            }));
        }
    }

    /// The experts' feed-forward width and the formats of their gate, up and down.
    fn expert_formats(&self, moe: &Moe) -> (usize, [GgmlType; 3]) {
        let e0 = &moe.experts[0];
        let ty = |w: WeightId| self.m.weight(w).ty;
        let ff = self.m.weight(e0.gate.w).rows;
        (ff, [ty(e0.gate.w), ty(e0.up.w), ty(e0.down.w)])
    }

    /// One token, on the GPU throughout (graph-safe).
    fn mixture_one(
        &mut self,
        layer: usize,
        moe: &Moe,
        x: Slot,
        out: Slot,
        expert_taps: bool,
        [gate, up, down]: [Tables<'_>; 3],
    ) -> Result<()> {
        let k = moe.top_k;
        let width = self.width(x);
        let (ff, [ty_g, ty_u, ty_d]) = self.expert_formats(moe);
        self.route(moe, x)?;
        let st = &mut *self.st;
        let (dev, slots) = (&st.dev, &st.slots);
        let sc = st.moe.as_mut().expect("mixture scratch checked");
        dev.prep_input(&slots[x.index()], width, None, &sc.rec)?;
        let gate_up = [
            ExpertOut {
                experts: experts(&gate, ty_g, ff, width),
                bias: gate.bias,
                out: &sc.gate,
            },
            ExpertOut {
                experts: experts(&up, ty_u, ff, width),
                bias: up.bias,
                out: &sc.up,
            },
        ];
        // Gate and up in one launch where they share a format.
        if ty_g == ty_u {
            dev.expert_matvec(&sc.ids, k, ExpertInput::Shared(&sc.rec), &gate_up)?;
        } else {
            for p in gate_up {
                dev.expert_matvec(&sc.ids, k, ExpertInput::Shared(&sc.rec), &[p])?;
            }
        }
        activate(dev, moe.act, &sc.gate, &sc.up, k * ff, &mut sc.act)?;
        dev.prep_input(&sc.act, k * ff, None, &sc.rec)?;
        let down_p = [ExpertOut {
            experts: experts(&down, ty_d, width, ff),
            bias: down.bias,
            out: &sc.y,
        }];
        dev.expert_matvec(&sc.ids, k, ExpertInput::PerExpert(&sc.rec), &down_p)?;
        dev.expert_combine(&sc.y, &sc.weights, k, width, &slots[out.index()], None)?;
        self.tap_route(layer, moe.experts.len(), k)?;
        if expert_taps {
            self.tap_picks(layer, moe.act, ff, width, k, false)?;
        }
        Ok(())
    }

    /// Any number of tokens, on the GPU throughout: the picks grouped by expert on the device,
    /// each product one launch over every expert's rows (`moe_mma`), the outputs weighed back
    /// into their tokens' rows (in expert order, as the CPU sums them).
    fn mixture_device(
        &mut self,
        layer: usize,
        moe: &Moe,
        x: Slot,
        out: Slot,
        expert_taps: bool,
        [gate, up, down]: [Tables<'_>; 3],
    ) -> Result<()> {
        let (n, n_exp, k) = (self.n, moe.experts.len(), moe.top_k);
        let width = self.width(x);
        let (ff, [ty_g, ty_u, ty_d]) = self.expert_formats(moe);
        self.route(moe, x)?;
        let rows = n * k;
        let st = &mut *self.st;
        let (dev, slots) = (&st.dev, &st.slots);
        let sc = st.moe.as_mut().expect("mixture scratch checked");
        let g = &sc.groups;
        dev.moe_group(&sc.ids, rows, n_exp, g)?;
        dev.moe_gather(&slots[x.index()], &g.src, 0, rows, k, width, &sc.xg)?;
        let pg = (experts(&gate, ty_g, ff, width), &sc.gate);
        let pu = (experts(&up, ty_u, ff, width), &sc.up);
        // Gate and up in one launch where they share a format.
        if ty_g == ty_u {
            dev.moe_mma(&[pg, pu], &sc.xg, g, n, rows)?;
        } else {
            dev.moe_mma(&[pg], &sc.xg, g, n, rows)?;
            dev.moe_mma(&[pu], &sc.xg, g, n, rows)?;
        }
        let biases: Vec<_> = [(gate.bias, &sc.gate), (up.bias, &sc.up)]
            .into_iter()
            .filter_map(|(b, o)| b.map(|b| (b, o)))
            .collect();
        if !biases.is_empty() {
            dev.moe_bias(&biases, &sc.ids, g, n_exp, rows, ff)?;
        }
        activate(dev, moe.act, &sc.gate, &sc.up, rows * ff, &mut sc.act)?;
        let g = &sc.groups;
        let pd = (experts(&down, ty_d, width, ff), &sc.y);
        dev.moe_mma(&[pd], &sc.act, g, n, rows)?;
        if let Some(b) = down.bias {
            dev.moe_bias(&[(b, &sc.y)], &sc.ids, g, n_exp, rows, width)?;
        }
        let ob = &slots[out.index()];
        dev.moe_combine(&sc.y, &sc.ids, g, &sc.weights, n, k, width, ob)?;
        self.tap_route(layer, n_exp, k)?;
        if expert_taps {
            self.tap_picks(layer, moe.act, ff, width, rows, true)?;
        }
        Ok(())
    }

    /// Records the per-pick stages of the scratch (`rows` picks, in pick order t * k + j):
    /// `grouped`: the rows lie grouped by expert (`mixture_device`), put back by the
    /// groups' positions.
    fn tap_picks(
        &mut self,
        layer: usize,
        act: Activation,
        ff: usize,
        width: usize,
        rows: usize,
        grouped: bool,
    ) -> Result<()> {
        if self.st.taps.is_none() {
            return Ok(());
        }
        let st = &mut *self.st;
        let sc = st.moe.as_ref().expect("mixture scratch checked");
        let pos = match grouped {
            true => Some(st.dev.download_i32(&sc.groups.pos, rows)?),
            false => None,
        };
        let mut got = Vec::new();
        for (name, b, w) in pick_stages(sc, act, ff, width) {
            let data = st.dev.download_f32(b, rows * w)?;
            let Some(pos) = &pos else {
                got.push((name, data));
                continue;
            };
            let mut picked = vec![f32::NAN; rows * w];
            for (i, &p) in pos.iter().enumerate() {
                if let Ok(p) = usize::try_from(p) {
                    picked[i * w..(i + 1) * w].copy_from_slice(&data[p * w..(p + 1) * w]);
                }
            }
            got.push((name, picked));
        }
        self.record(layer, got);
        Ok(())
    }

    /// Any number of tokens, experts without device tables: the picks come to the host, and each picked expert's products
    /// run once over its tokens' gathered rows, its outputs weighed back into theirs (the
    /// experts in order, as the CPU sums them).
    fn mixture_grouped(
        &mut self,
        layer: usize,
        moe: &Moe,
        x: Slot,
        out: Slot,
        expert_taps: bool,
    ) -> Result<()> {
        let (n, n_exp, k) = (self.n, moe.experts.len(), moe.top_k);
        let width = self.width(x);
        let ff = self.m.weight(moe.experts[0].gate.w).rows;
        self.route(moe, x)?;
        let m = self.m;
        let st = &mut *self.st;
        let sc = st.moe.as_mut().expect("mixture scratch checked");
        let ids = st.dev.download_i32(&sc.ids, n * k)?;
        // Each expert's picks (indices t * k + j) in token order, all experts back to back.
        let mut per: Vec<Vec<i32>> = vec![Vec::new(); n_exp];
        for (i, &e) in ids.iter().enumerate() {
            let e = usize::try_from(e)
                .ok()
                .filter(|&e| e < n_exp)
                .ok_or_else(|| Error::Internal(format!("router picked expert {e}")))?;
            per[e].push(i as i32);
        }
        let order: Vec<i32> = per.concat();
        st.dev.write(&mut sc.groups.src, 0, as_bytes(&order))?;
        let taps_on = st.taps.is_some() && expert_taps;
        let mut detail = taps_on.then(|| {
            [
                vec![0f32; n * k * ff],
                vec![0f32; n * k * ff],
                vec![0f32; n * k * ff],
                vec![0f32; n * k * width],
            ]
        });
        let (xb, ob) = pair(&mut st.slots, x, out)?;
        st.dev.zero_async(ob)?;
        let mut first = 0;
        for (e, picked) in per.iter().enumerate() {
            let c = picked.len();
            if c == 0 {
                continue;
            }
            let ex = &moe.experts[e];
            let dev = &st.dev;
            dev.moe_gather(xb, &sc.groups.src, first, c, k, width, &sc.xg)?;
            let product = |lin: Linear, xin: &DeviceBuffer, y: &mut DeviceBuffer| -> Result<()> {
                let w = m.weight(lin.w);
                dev.matmul(w.ty, &w.buf, w.rows, w.cols, xin, c, y)?;
                if let Some(b) = lin.bias {
                    dev.add_bias(y, &m.weight(b).buf, c, w.rows)?;
                }
                Ok(())
            };
            product(ex.gate, &sc.xg, &mut sc.gate)?;
            product(ex.up, &sc.xg, &mut sc.up)?;
            activate(dev, moe.act, &sc.gate, &sc.up, c * ff, &mut sc.act)?;
            product(ex.down, &sc.act, &mut sc.y)?;
            dev.moe_scatter(&sc.y, &sc.groups.src, first, c, &sc.weights, k, width, ob)?;
            if let Some(d) = detail.as_mut() {
                let bufs = [(&sc.gate, ff), (&sc.up, ff), (&sc.act, ff), (&sc.y, width)];
                for (dst, (b, w)) in d.iter_mut().zip(bufs) {
                    let rows = dev.download_f32(b, c * w)?;
                    for (j, &i) in picked.iter().enumerate() {
                        let i = i as usize;
                        dst[i * w..(i + 1) * w].copy_from_slice(&rows[j * w..(j + 1) * w]);
                    }
                }
            }
            first += c;
        }
        self.tap_route(layer, n_exp, k)?;
        if let Some(d) = detail {
            let names = ["gate", "up", moe.act.stage_name(), "expert_out"];
            self.record(layer, names.into_iter().zip(d));
        }
        Ok(())
    }
}
