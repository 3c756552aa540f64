//! The decoder recipe shared by the architectures: which tensors a layer has, the options of
//! each layer, and the order of operations. An architecture file (`qwen2.rs`, `gemma3.rs` …)
//! maps its GGUF names and metadata onto [`DecoderOptions`]; backends only see [`Ops`] calls.

use super::hparams::HParams;
use crate::backend::{
    Activation, AttnIn, AttnShape, Expert, Glu, Linear, Logits, Moe, Norm, NormIn, Ops, Projection,
    Rope, Slot, WeightId, WeightTensor,
};
use crate::gguf::Gguf;
use crate::{Error, Result};

/// The weights and options of one decoder layer.
#[derive(Debug, Clone)]
pub struct Layer {
    pub attn_norm: Norm,
    /// Q, K and V projections (with biases where the family has them).
    pub qkv: [Projection; 3],
    /// Per-head RMSNorm of the queries and keys before RoPE (Gemma 3, Qwen3).
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub rope: Rope,
    /// A second rope for sessions whose context exceeds the given length (LongRoPE's long
    /// factors): chosen per session, so every position of a sequence turns alike.
    pub rope_long: Option<(usize, Rope)>,
    pub attn: AttnShape,
    /// The attention's output projection (with a bias: GPT-OSS).
    pub wo: Linear,
    /// Norm of the attention output before the residual add ("sandwich" norms: Gemma).
    pub post_attn_norm: Option<Norm>,
    pub ffn_norm: Norm,
    pub ffn: Ffn,
    /// Norm of the feed-forward output before the residual add (Gemma).
    pub post_ffn_norm: Option<Norm>,
}

/// A layer's feed-forward.
#[derive(Debug, Clone)]
pub enum Ffn {
    /// One gated feed-forward: `down · act(gate · x, up · x)`.
    Dense {
        gate: WeightId,
        up: WeightId,
        down: WeightId,
        act: Activation,
    },
    /// A mixture of experts (GPT-OSS): a router picks each token's experts.
    Moe(Moe),
}

/// Everything the forward pass needs: hyper-parameters, the weight table and the layers.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub hp: HParams,
    pub tensors: Vec<WeightTensor>,
    pub tok_embd: WeightId,
    /// Factor on the embedding rows (Gemma: sqrt(n_embd)).
    pub embd_scale: Option<f32>,
    pub output_norm: Norm,
    /// The output projection; the token embedding when the model ties them.
    pub output: WeightId,
    /// `cap * tanh(logits / cap)` on the logits.
    pub logit_softcap: Option<f32>,
    pub layers: Vec<Layer>,
}

/// Collects weight tensors by name, checking each tensor's type and shape.
pub struct TensorTable<'a> {
    g: &'a Gguf,
    pub tensors: Vec<WeightTensor>,
}

impl<'a> TensorTable<'a> {
    pub fn new(g: &'a Gguf) -> Self {
        TensorTable {
            g,
            tensors: Vec::new(),
        }
    }

    /// Whether the file has a tensor of this name.
    pub fn has(&self, name: &str) -> bool {
        self.g.tensor(name).is_some()
    }

    /// A small vector the recipe itself uses (rope frequency factors), read as f32 now rather
    /// than bound to a backend; its length must be `len`.
    pub fn values(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        let Some(info) = self.g.tensor(name) else {
            return Ok(None);
        };
        if info.dims != [len as u64] {
            return Err(Error::BadModel(format!(
                "tensor '{name}' has shape {:?}, expected [{len}]",
                info.dims
            )));
        }
        let mut v = vec![0f32; len];
        crate::quant::dequantize(info.ty, self.g.tensor_data(info), &mut v)
            .map_err(|e| Error::BadModel(format!("tensor '{name}': {e}")))?;
        Ok(Some(v))
    }

    /// The tensor `name` with GGUF dims `[cols, rows]` (or `[cols]` when `rows` is None).
    pub fn optional(
        &mut self,
        name: &str,
        cols: usize,
        rows: Option<usize>,
    ) -> Result<Option<WeightId>> {
        Ok(self
            .split(name, cols, rows, &[rows.unwrap_or(1)])?
            .map(|ids| ids[0]))
    }

    pub fn required(&mut self, name: &str, cols: usize, rows: Option<usize>) -> Result<WeightId> {
        self.optional(name, cols, rows)?
            .ok_or_else(|| Error::BadModel(format!("missing tensor '{name}'")))
    }

    /// The tensor `name` of dims `[cols, sum(parts)]` as consecutive row views of `parts`
    /// rows each (a fused tensor such as Phi-3's `attn_qkv`), without copying; `rows` None
    /// is a vector `[cols]`.
    pub fn split(
        &mut self,
        name: &str,
        cols: usize,
        rows: Option<usize>,
        parts: &[usize],
    ) -> Result<Option<Vec<WeightId>>> {
        let want = match rows {
            Some(r) => vec![cols, r],
            None => vec![cols],
        };
        self.views(name, &want, parts, "")
    }

    /// The tensor `name` of `n` stacked items of dims `item` (`[cols, rows]` matrices or
    /// `[cols]` vectors: a mixture's experts and their biases), i.e. of dims `item` then `n`,
    /// as `n` views, without copying. `count_key` is the metadata key that gave `n`, for the
    /// error of a tensor with another count.
    pub fn stacked(
        &mut self,
        name: &str,
        item: &[usize],
        n: usize,
        count_key: &str,
    ) -> Result<Option<Vec<WeightId>>> {
        let rows = item.get(1).copied().unwrap_or(1);
        let want: Vec<usize> = item.iter().copied().chain([n]).collect();
        let why = format!(" ('{count_key}' = {n})");
        self.views(name, &want, &vec![rows; n], &why)
    }

    /// The tensor `name`, which must have dims `want` (GGUF order: the row length first), as
    /// consecutive views of `parts` rows of `want[0]` values; `why` ends a shape error.
    pub fn views(
        &mut self,
        name: &str,
        want: &[usize],
        parts: &[usize],
        why: &str,
    ) -> Result<Option<Vec<WeightId>>> {
        let Some(info) = self.g.tensor(name) else {
            return Ok(None);
        };
        let want: Vec<u64> = want.iter().map(|&d| d as u64).collect();
        if info.dims != want {
            return Err(Error::BadModel(format!(
                "tensor '{name}' has shape {:?}, expected {want:?}{why}",
                info.dims
            )));
        }
        let cols = want[0] as usize;
        let mut ids = Vec::with_capacity(parts.len());
        let mut row0 = 0;
        for &n in parts {
            ids.push(WeightId(self.tensors.len() as u32));
            self.tensors.push(WeightTensor {
                name: name.to_string(),
                ty: info.ty,
                rows: n,
                cols,
                row0,
                info: info.clone(),
            });
            row0 += n;
        }
        Ok(Some(ids))
    }
}

/// The attention settings of one layer: its rotary embedding and sliding window.
#[derive(Debug, Clone)]
pub struct LayerAttention {
    pub rope: Rope,
    /// The rope of sessions with a context longer than the given length, if it differs.
    pub rope_long: Option<(usize, Rope)>,
    pub window: Option<usize>,
}

impl LayerAttention {
    /// One rope, no window.
    pub fn global(rope: Rope) -> Self {
        LayerAttention {
            rope,
            rope_long: None,
            window: None,
        }
    }
}

/// Options an architecture sets on the shared decoder.
#[derive(Debug, Clone)]
pub struct DecoderOptions {
    /// Rope and window of each layer (`n_layer` entries).
    pub layers: Vec<LayerAttention>,
    /// Q/K/V projections must carry biases (Qwen2); otherwise they are used where present.
    pub qkv_bias: bool,
    /// Per-head RMSNorm of queries and keys (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// Norms after the attention and the feed-forward (`post_attention_norm`,
    /// `post_ffw_norm`).
    pub sandwich_norms: bool,
    /// The tensor of the feed-forward's input norm (`ffn_norm.weight`; GPT-OSS files call it
    /// `post_attention_norm.weight`).
    pub ffn_norm: &'static str,
    /// Learned attention sinks per query head (`attn_sinks.weight`: GPT-OSS).
    pub attn_sinks: bool,
    /// The feed-forward is a mixture of experts sized by `hp.moe` (GPT-OSS): router
    /// `ffn_gate_inp`, stacked experts `ffn_{gate,up,down}_exps`, biases where present.
    pub experts: bool,
    /// The feed-forward's activation (each expert's, with `experts`).
    pub act: Activation,
    pub embd_scale: Option<f32>,
    /// Attention score scale; default `1/sqrt(head_dim)`.
    pub attn_scale: Option<f32>,
    pub logit_softcap: Option<f32>,
}

impl DecoderOptions {
    /// The standard pre-norm decoder (Llama): SwiGLU, no biases required, no extra norms,
    /// `rope` on every layer, no window.
    pub fn standard(hp: &HParams, rope: Rope) -> Self {
        DecoderOptions {
            layers: vec![LayerAttention::global(rope); hp.n_layer],
            qkv_bias: false,
            qk_norm: false,
            sandwich_norms: false,
            ffn_norm: "ffn_norm.weight",
            attn_sinks: false,
            experts: false,
            act: Activation::Silu,
            embd_scale: None,
            attn_scale: None,
            logit_softcap: None,
        }
    }
}

/// Build the decoder: RMSNorm pre-norms, GQA attention with RoPE, a gated feed-forward, and
/// the options. Q/K/V come from `attn_q/k/v` or one fused `attn_qkv`; gate and up from
/// `ffn_gate`/`ffn_up` or one fused `ffn_up` of twice the width (Phi-3).
pub fn build_decoder(g: &Gguf, hp: HParams, opts: DecoderOptions) -> Result<Recipe> {
    if opts.layers.len() != hp.n_layer {
        return Err(Error::Internal(format!(
            "{} layer options for {} layers",
            opts.layers.len(),
            hp.n_layer
        )));
    }
    let mut t = TensorTable::new(g);
    let (e, q, kv) = (hp.n_embd, hp.q_dim(), hp.kv_dim());
    let norm = |t: &mut TensorTable, name: &str, width: usize| -> Result<Norm> {
        Ok(Norm {
            w: t.required(name, width, None)?,
            eps: hp.norm_eps,
        })
    };
    let tok_embd = t.required("token_embd.weight", e, Some(hp.vocab))?;
    let output_norm = norm(&mut t, "output_norm.weight", e)?;
    let output = t
        .optional("output.weight", e, Some(hp.vocab))?
        .unwrap_or(tok_embd);
    let mut layers = Vec::with_capacity(hp.n_layer);
    for (l, la) in opts.layers.into_iter().enumerate() {
        let n = |s: &str| format!("blk.{l}.{s}");
        let bias = |t: &mut TensorTable, s: &str, d: usize| -> Result<Option<WeightId>> {
            if opts.qkv_bias {
                t.required(&n(s), d, None).map(Some)
            } else {
                t.optional(&n(s), d, None)
            }
        };
        let (wq, wk, wv) = if t.has(&n("attn_qkv.weight")) {
            let ids = t
                .split(&n("attn_qkv.weight"), e, Some(q + 2 * kv), &[q, kv, kv])?
                .expect("present");
            (ids[0], ids[1], ids[2])
        } else {
            (
                t.required(&n("attn_q.weight"), e, Some(q))?,
                t.required(&n("attn_k.weight"), e, Some(kv))?,
                t.required(&n("attn_v.weight"), e, Some(kv))?,
            )
        };
        let proj = |w, bias, out| Projection { w, bias, out };
        let qkv = [
            proj(wq, bias(&mut t, "attn_q.bias", q)?, Slot::Q),
            proj(wk, bias(&mut t, "attn_k.bias", kv)?, Slot::K),
            proj(wv, bias(&mut t, "attn_v.bias", kv)?, Slot::V),
        ];
        let (q_norm, k_norm) = if opts.qk_norm {
            (
                Some(norm(&mut t, &n("attn_q_norm.weight"), hp.head_dim)?),
                Some(norm(&mut t, &n("attn_k_norm.weight"), hp.head_dim)?),
            )
        } else {
            (None, None)
        };
        let ffn = if opts.experts {
            Ffn::Moe(mixture(&mut t, &hp, l, opts.act)?)
        } else {
            dense(&mut t, &hp, l, opts.act)?
        };
        let sandwich = |t: &mut TensorTable, s: &str| -> Result<Option<Norm>> {
            opts.sandwich_norms.then(|| norm(t, &n(s), e)).transpose()
        };
        layers.push(Layer {
            attn_norm: norm(&mut t, &n("attn_norm.weight"), e)?,
            qkv,
            q_norm,
            k_norm,
            rope: la.rope,
            rope_long: la.rope_long,
            attn: AttnShape {
                n_head: hp.n_head,
                n_head_kv: hp.n_head_kv,
                head_dim: hp.head_dim,
                scale: opts.attn_scale.unwrap_or(1.0 / (hp.head_dim as f32).sqrt()),
                window: la.window,
                sinks: opts
                    .attn_sinks
                    .then(|| t.required(&n("attn_sinks.weight"), hp.n_head, None))
                    .transpose()?,
            },
            wo: Linear {
                w: t.required(&n("attn_output.weight"), q, Some(e))?,
                bias: t.optional(&n("attn_output.bias"), e, None)?,
            },
            post_attn_norm: sandwich(&mut t, "post_attention_norm.weight")?,
            ffn_norm: norm(&mut t, &n(opts.ffn_norm), e)?,
            ffn,
            post_ffn_norm: sandwich(&mut t, "post_ffw_norm.weight")?,
        });
    }
    Ok(Recipe {
        hp,
        tensors: t.tensors,
        tok_embd,
        embd_scale: opts.embd_scale,
        output_norm,
        output,
        logit_softcap: opts.logit_softcap,
        layers,
    })
}

/// Layer `l`'s gated feed-forward: `ffn_gate` + `ffn_up`, or one fused `ffn_up` of twice the
/// width (Phi-3), and `ffn_down`.
fn dense(t: &mut TensorTable, hp: &HParams, l: usize, act: Activation) -> Result<Ffn> {
    let n = |s: &str| format!("blk.{l}.{s}");
    let (e, ff) = (hp.n_embd, hp.n_ff);
    let (gate, up) = if t.has(&n("ffn_gate.weight")) {
        (
            t.required(&n("ffn_gate.weight"), e, Some(ff))?,
            t.required(&n("ffn_up.weight"), e, Some(ff))?,
        )
    } else {
        let ids = t
            .split(&n("ffn_up.weight"), e, Some(2 * ff), &[ff, ff])?
            .ok_or_else(|| Error::BadModel(format!("missing tensor '{}'", n("ffn_gate.weight"))))?;
        (ids[0], ids[1])
    };
    Ok(Ffn::Dense {
        gate,
        up,
        down: t.required(&n("ffn_down.weight"), ff, Some(e))?,
        act,
    })
}

/// Layer `l`'s mixture of experts: the router `ffn_gate_inp` (+ bias), and each expert's
/// gate, up and down as views of the stacked `ffn_*_exps` tensors, with the per-expert rows
/// of `ffn_*_exps.bias` where present.
fn mixture(t: &mut TensorTable, hp: &HParams, l: usize, act: Activation) -> Result<Moe> {
    let count_key = format!("{}.expert_count", hp.arch);
    let mp = hp
        .moe
        .ok_or_else(|| Error::BadModel(format!("missing metadata key '{count_key}'")))?;
    let n = |s: &str| format!("blk.{l}.{s}");
    let (e, ff, n_exp) = (hp.n_embd, mp.n_ff_expert, mp.n_expert);
    let why = format!(" ('{count_key}' = {n_exp})");
    let router = t
        .views(&n("ffn_gate_inp.weight"), &[e, n_exp], &[n_exp], &why)?
        .ok_or_else(|| Error::BadModel(format!("missing tensor '{}'", n("ffn_gate_inp.weight"))))?;
    let router = Linear {
        w: router[0],
        bias: t.optional(&n("ffn_gate_inp.bias"), n_exp, None)?,
    };
    let mut matrices = |s: &str, cols: usize, rows: usize| -> Result<Vec<WeightId>> {
        t.stacked(&n(s), &[cols, rows], n_exp, &count_key)?
            .ok_or_else(|| Error::BadModel(format!("missing tensor '{}'", n(s))))
    };
    let (gate, up, down) = (
        matrices("ffn_gate_exps.weight", e, ff)?,
        matrices("ffn_up_exps.weight", e, ff)?,
        matrices("ffn_down_exps.weight", ff, e)?,
    );
    let mut biases = |s: &str, width: usize| -> Result<Vec<Option<WeightId>>> {
        let ids = t.stacked(&n(s), &[width], n_exp, &count_key)?;
        Ok(ids.map_or(vec![None; n_exp], |ids| ids.into_iter().map(Some).collect()))
    };
    let (gb, ub, db) = (
        biases("ffn_gate_exps.bias", ff)?,
        biases("ffn_up_exps.bias", ff)?,
        biases("ffn_down_exps.bias", e)?,
    );
    let experts = (0..n_exp)
        .map(|i| Expert {
            gate: Linear {
                w: gate[i],
                bias: gb[i],
            },
            up: Linear {
                w: up[i],
                bias: ub[i],
            },
            down: Linear {
                w: down[i],
                bias: db[i],
            },
        })
        .collect();
    Ok(Moe {
        router,
        experts,
        top_k: mp.n_expert_used,
        act,
    })
}

/// One forward step over the tokens bound to `ops`, for a session of `n_ctx` positions.
/// `cancelled` is polled between layers so a long prefill stops within one layer.
pub fn forward<O: Ops + ?Sized>(
    ops: &mut O,
    r: &Recipe,
    logits: Logits,
    n_ctx: usize,
    cancelled: &dyn Fn() -> bool,
) -> Result<()> {
    ops.embed(r.tok_embd, Slot::Hidden);
    if let Some(s) = r.embd_scale {
        ops.scale(Slot::Hidden, s);
    }
    ops.tap("embed", None, Slot::Hidden);
    for (l, w) in r.layers.iter().enumerate() {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let tap0 = |ops: &mut O, name: &str, s: Slot| {
            if l == 0 {
                ops.tap(name, Some(0), s)
            }
        };
        let attn_in = NormIn {
            x: Slot::Hidden,
            norm: w.attn_norm,
            normed: Slot::Normed,
        };
        ops.norm_matmul(attn_in, &w.qkv);
        tap0(ops, "attn_norm", Slot::Normed);
        tap0(ops, "q", Slot::Q);
        tap0(ops, "k", Slot::K);
        tap0(ops, "v", Slot::V);
        if let Some(n) = w.q_norm {
            ops.rms_norm_heads(Slot::Q, w.attn.head_dim, n);
            tap0(ops, "q_norm", Slot::Q);
        }
        if let Some(n) = w.k_norm {
            ops.rms_norm_heads(Slot::K, w.attn.head_dim, n);
            tap0(ops, "k_norm", Slot::K);
        }
        ops.rope_attention(&AttnIn {
            layer: l,
            q: Slot::Q,
            k: Slot::K,
            v: Slot::V,
            rope: match &w.rope_long {
                Some((after, long)) if n_ctx > *after => long,
                _ => &w.rope,
            },
            shape: w.attn,
            out: Slot::Attn,
        });
        tap0(ops, "q_rope", Slot::Q);
        tap0(ops, "k_rope", Slot::K);
        tap0(ops, "attn", Slot::Attn);
        let names = ("attn_out", "post_attn_norm");
        residual(ops, w.wo, Slot::Attn, w.post_attn_norm, &tap0, names);
        tap0(ops, "attn_residual", Slot::Hidden);
        let ffn_in = NormIn {
            x: Slot::Hidden,
            norm: w.ffn_norm,
            normed: Slot::Normed,
        };
        let names = ("ffn_out", "post_ffn_norm");
        match &w.ffn {
            Ffn::Dense {
                gate,
                up,
                down,
                act,
            } => {
                let proj = |w, out| Projection { w, bias: None, out };
                let glu = Glu {
                    gate: proj(*gate, Slot::Gate),
                    up: proj(*up, Slot::Up),
                    act: *act,
                    out: Slot::Act,
                };
                ops.norm_glu(ffn_in, glu);
                tap0(ops, "ffn_norm", Slot::Normed);
                tap0(ops, "gate", Slot::Gate);
                tap0(ops, "up", Slot::Up);
                tap0(ops, act.stage_name(), Slot::Act);
                let down = Linear {
                    w: *down,
                    bias: None,
                };
                residual(ops, down, Slot::Act, w.post_ffn_norm, &tap0, names);
            }
            Ffn::Moe(moe) => {
                ops.rms_norm(ffn_in.x, ffn_in.norm, ffn_in.normed);
                tap0(ops, "ffn_norm", Slot::Normed);
                ops.moe(l, moe, Slot::Normed, Slot::Proj, l == 0);
                add_to_stream(ops, w.post_ffn_norm, &tap0, names);
            }
        }
        ops.tap("layer", Some(l), Slot::Hidden);
    }
    if logits == Logits::Last {
        ops.keep_last_row(Slot::Hidden);
    }
    let head = Projection {
        w: r.output,
        bias: None,
        out: Slot::Logits,
    };
    let out_in = NormIn {
        x: Slot::Hidden,
        norm: r.output_norm,
        normed: Slot::Normed,
    };
    ops.norm_matmul(out_in, &[head]);
    ops.tap("output_norm", None, Slot::Normed);
    if let Some(cap) = r.logit_softcap {
        ops.softcap(Slot::Logits, cap);
    }
    Ok(())
}

/// A projection back into the residual stream: `Hidden += W · x (+ b)`, or with a post-norm
/// `Hidden += rms_norm(W · x (+ b))`. Taps (layer 0) the projection as `names.0` and the
/// normed one as `names.1`.
fn residual<O: Ops + ?Sized>(
    ops: &mut O,
    w: Linear,
    x: Slot,
    post_norm: Option<Norm>,
    tap0: &dyn Fn(&mut O, &str, Slot),
    names: (&str, &str),
) {
    if post_norm.is_none() && w.bias.is_none() {
        ops.matmul_add(w.w, x, Slot::Proj, Slot::Hidden);
        tap0(ops, names.0, Slot::Proj);
        return;
    }
    ops.matmul(w.w, x, Slot::Proj);
    if let Some(b) = w.bias {
        ops.add_bias(Slot::Proj, b);
    }
    add_to_stream(ops, post_norm, tap0, names);
}

/// `Hidden += Proj`, or with a post-norm `Hidden += rms_norm(Proj)`. Taps (layer 0) `Proj` as
/// `names.0` and the normed one as `names.1`.
fn add_to_stream<O: Ops + ?Sized>(
    ops: &mut O,
    post_norm: Option<Norm>,
    tap0: &dyn Fn(&mut O, &str, Slot),
    (proj_name, normed_name): (&str, &str),
) {
    tap0(ops, proj_name, Slot::Proj);
    if let Some(n) = post_norm {
        ops.rms_norm(Slot::Proj, n, Slot::Proj);
        tap0(ops, normed_name, Slot::Proj);
    }
    ops.add(Slot::Hidden, Slot::Proj);
}
