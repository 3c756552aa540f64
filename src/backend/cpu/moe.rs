//! The mixture-of-experts feed-forward on the CPU: the router's logits, the top-k experts of
//! each token and their softmax weights, then each expert's products run once over all the
//! tokens that picked it (their rows gathered), and the weighted sum of the expert outputs.

use super::{add_rows, attn, CpuStep};
use crate::backend::{Moe, Slot};

/// The picks of each token: `ids[t * k + j]` is token t's j-th expert (largest logit first,
/// ties to the lower index, as a stable sort gives), `weights` the softmax of the picked
/// logits in the same order.
pub fn route(logits: &[f32], n_exp: usize, k: usize) -> (Vec<usize>, Vec<f32>) {
    let n = logits.len() / n_exp;
    let (mut ids, mut weights) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k));
    let mut order: Vec<usize> = Vec::with_capacity(n_exp);
    for row in logits.chunks(n_exp) {
        order.clear();
        order.extend(0..n_exp);
        // NaN logits sort last (total order), so a broken row still picks k experts.
        order.sort_by(|&a, &b| {
            let key = |i: usize| {
                if row[i].is_nan() {
                    f32::NEG_INFINITY
                } else {
                    row[i]
                }
            };
            key(b).total_cmp(&key(a))
        });
        let top = &order[..k];
        let max = row[top[0]];
        let e: Vec<f32> = top.iter().map(|&i| (row[i] - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        ids.extend_from_slice(top);
        weights.extend(e.iter().map(|v| v / sum));
    }
    (ids, weights)
}

/// For each expert, the indices `t * k + j` of the picks that chose it, in token order.
pub fn picks_per_expert(ids: &[usize], n_exp: usize) -> Vec<Vec<usize>> {
    let mut per = vec![Vec::new(); n_exp];
    for (i, &e) in ids.iter().enumerate() {
        per[e].push(i);
    }
    per
}

/// `out` = the rows `rows` of `x` (rows of `width` values), one after another.
fn gather(x: &[f32], width: usize, rows: impl Iterator<Item = usize>, out: &mut Vec<f32>) {
    out.clear();
    for r in rows {
        out.extend_from_slice(&x[r * width..(r + 1) * width]);
    }
}

/// The per-pick values of the experts, `[tokens, k, width]` in pick order (layer-0 taps).
struct ExpertTaps {
    ff: usize,
    width: usize,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    out: Vec<f32>,
}

impl ExpertTaps {
    fn new(picks: usize, ff: usize, width: usize) -> Self {
        ExpertTaps {
            ff,
            width,
            gate: vec![0.0; picks * ff],
            up: vec![0.0; picks * ff],
            act: vec![0.0; picks * ff],
            out: vec![0.0; picks * width],
        }
    }

    fn put(&mut self, pick: usize, gate: &[f32], up: &[f32], act: &[f32], out: &[f32]) {
        let (f, w) = (self.ff, self.width);
        self.gate[pick * f..(pick + 1) * f].copy_from_slice(gate);
        self.up[pick * f..(pick + 1) * f].copy_from_slice(up);
        self.act[pick * f..(pick + 1) * f].copy_from_slice(act);
        self.out[pick * w..(pick + 1) * w].copy_from_slice(out);
    }
}

impl CpuStep<'_> {
    /// [`Ops::moe`](crate::backend::Ops::moe) on the CPU.
    pub(super) fn mixture(
        &mut self,
        layer: usize,
        moe: &Moe,
        x: Slot,
        out: Slot,
        expert_taps: bool,
    ) {
        let (n, width, m) = (self.n, self.width(x), self.m);
        let (n_exp, k) = (moe.experts.len(), moe.top_k);
        let xs = self.take(x);
        let mut logits = vec![0f32; n * n_exp];
        self.product(moe.router.w, &xs[..n * width], n, &mut logits, &|r| r);
        if let Some(b) = moe.router.bias {
            add_rows(&mut logits, m.vector(b));
        }
        let (ids, weights) = route(&logits, n_exp, k);
        let taps_on = self.taps.is_some();
        let ff = moe.experts.first().map_or(0, |e| m.weight(e.gate.w).rows);
        let mut detail = (taps_on && expert_taps).then(|| ExpertTaps::new(n * k, ff, width));
        let mut o = self.take(out);
        o[..n * width].fill(0.0);
        let (mut xg, mut g, mut u, mut a, mut y) = Default::default();
        for (e, picked) in picks_per_expert(&ids, n_exp).iter().enumerate() {
            if picked.is_empty() {
                continue;
            }
            let ex = &moe.experts[e];
            let rows = picked.len();
            gather(&xs, width, picked.iter().map(|&i| i / k), &mut xg);
            // Gathered row j is token picked[j] / k's (token order: groups stay whole).
            let row_of = |j: usize| picked[j] / k;
            self.linear(ex.gate, &xg, rows, &mut g, &row_of);
            self.linear(ex.up, &xg, rows, &mut u, &row_of);
            resize(&mut a, g.len());
            attn::glu(moe.act, &g, &u, &mut a);
            self.linear(ex.down, &a, rows, &mut y, &row_of);
            for (j, &i) in picked.iter().enumerate() {
                let yj = &y[j * width..(j + 1) * width];
                let t = i / k;
                for (acc, &v) in o[t * width..(t + 1) * width].iter_mut().zip(yj) {
                    *acc += weights[i] * v;
                }
                if let Some(d) = detail.as_mut() {
                    let r = j * ff..(j + 1) * ff;
                    d.put(i, &g[r.clone()], &u[r.clone()], &a[r], yj);
                }
            }
        }
        self.put(x, xs);
        self.put(out, o);
        let l = Some(layer);
        if taps_on {
            self.record("router_logits", l, n, logits);
            self.record("expert_ids", l, n, ids.iter().map(|&e| e as f32).collect());
            self.record("expert_weights", l, n, weights);
        }
        if let Some(d) = detail {
            self.record("gate", l, n, d.gate);
            self.record("up", l, n, d.up);
            self.record(moe.act.stage_name(), l, n, d.act);
            self.record("expert_out", l, n, d.out);
        }
    }
}

/// `v` resized to `len` values (contents to be overwritten).
fn resize(v: &mut Vec<f32>, len: usize) {
    v.clear();
    v.resize(len, 0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_picks_the_largest_and_softmaxes_them() {
        let logits = [
            0.5,
            2.0,
            -1.0,
            2.0,
            /* token 1 */ 3.0,
            f32::NAN,
            1.0,
            0.0,
        ];
        let (ids, w) = route(&logits, 4, 2);
        // Token 0: a tie between experts 1 and 3 goes to the lower index first.
        assert_eq!(ids, [1, 3, 0, 2]);
        assert_eq!(&w[..2], &[0.5, 0.5]);
        let e = (-2.0f32).exp();
        assert!((w[2] - 1.0 / (1.0 + e)).abs() < 1e-7 && (w[3] - e / (1.0 + e)).abs() < 1e-7);
    }

    #[test]
    fn picks_group_by_expert_in_token_order() {
        let per = picks_per_expert(&[1, 3, 3, 0, 1, 0], 4);
        assert_eq!(per, vec![vec![3, 5], vec![0, 4], vec![], vec![1, 2]]);
    }
}
