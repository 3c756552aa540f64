//! The decoder recipe shared by the architectures: which tensors a layer has and the order of
//! operations. Architectures (`qwen2.rs`, `llama.rs`) choose the options; backends only see
//! [`Ops`] calls.

use super::hparams::HParams;
use crate::backend::{AttnShape, Ops, Projection, Rope, Slot, WeightId};
use crate::gguf::{Gguf, TensorInfo};
use crate::quant::GgmlType;
use crate::{Error, Result};

/// A weight tensor as the backends see it: `rows` output features of `cols` inputs each,
/// stored in the file's block format (`info` locates its bytes in the file).
#[derive(Debug, Clone)]
pub struct WeightTensor {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub info: TensorInfo,
}

impl WeightTensor {
    /// Bytes of one row, checked against the tensor's data (what every backend binds).
    pub fn row_bytes(&self, data: &[u8]) -> Result<usize> {
        let row_bytes = self.ty.bytes_for(self.cols as u64).ok_or_else(|| {
            Error::BadModel(format!(
                "tensor '{}': row of {} values",
                self.name, self.cols
            ))
        })? as usize;
        if row_bytes.checked_mul(self.rows) != Some(data.len()) {
            return Err(Error::BadModel(format!(
                "tensor '{}': {} bytes for {}x{}",
                self.name,
                data.len(),
                self.rows,
                self.cols
            )));
        }
        Ok(row_bytes)
    }

    /// A one-row tensor (norm weight, bias) as f32.
    pub fn to_f32(&self, data: &[u8]) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.cols];
        crate::quant::dequantize(self.ty, data, &mut v)
            .map_err(|e| Error::BadModel(format!("tensor '{}': {e}", self.name)))?;
        Ok(v)
    }
}

/// The weights of one decoder layer.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: WeightId,
    pub wq: WeightId,
    pub wk: WeightId,
    pub wv: WeightId,
    pub bq: Option<WeightId>,
    pub bk: Option<WeightId>,
    pub bv: Option<WeightId>,
    pub wo: WeightId,
    pub ffn_norm: WeightId,
    pub gate: WeightId,
    pub up: WeightId,
    pub down: WeightId,
}

/// Everything the forward pass needs: hyper-parameters, rotary settings and the weights.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub hp: HParams,
    pub rope: Rope,
    pub tensors: Vec<WeightTensor>,
    pub tok_embd: WeightId,
    pub output_norm: WeightId,
    /// The output projection; the token embedding when the model ties them.
    pub output: WeightId,
    pub layers: Vec<LayerWeights>,
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

    /// The tensor `name` with GGUF dims `[cols, rows]` (or `[cols]` when `rows` is None).
    pub fn optional(
        &mut self,
        name: &str,
        cols: usize,
        rows: Option<usize>,
    ) -> Result<Option<WeightId>> {
        let Some(info) = self.g.tensor(name) else {
            return Ok(None);
        };
        let want: Vec<u64> = match rows {
            Some(r) => vec![cols as u64, r as u64],
            None => vec![cols as u64],
        };
        if info.dims != want {
            return Err(Error::BadModel(format!(
                "tensor '{name}' has shape {:?}, expected {want:?}",
                info.dims
            )));
        }
        let id = WeightId(self.tensors.len() as u32);
        self.tensors.push(WeightTensor {
            name: name.to_string(),
            ty: info.ty,
            rows: rows.unwrap_or(1),
            cols,
            info: info.clone(),
        });
        Ok(Some(id))
    }

    pub fn required(&mut self, name: &str, cols: usize, rows: Option<usize>) -> Result<WeightId> {
        self.optional(name, cols, rows)?
            .ok_or_else(|| Error::BadModel(format!("missing tensor '{name}'")))
    }
}

/// Options an architecture sets on the shared decoder.
pub struct DecoderOptions {
    pub rope: Rope,
    /// Q/K/V projections carry biases (Qwen2).
    pub qkv_bias: bool,
}

/// Build the standard pre-norm decoder (RMSNorm, GQA attention with RoPE, SwiGLU FFN).
pub fn build_decoder(g: &Gguf, hp: HParams, opts: DecoderOptions) -> Result<Recipe> {
    let mut t = TensorTable::new(g);
    let (e, q, kv, ff) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff);
    let tok_embd = t.required("token_embd.weight", e, Some(hp.vocab))?;
    let output_norm = t.required("output_norm.weight", e, None)?;
    let output = t
        .optional("output.weight", e, Some(hp.vocab))?
        .unwrap_or(tok_embd);
    let mut layers = Vec::with_capacity(hp.n_layer);
    for l in 0..hp.n_layer {
        let n = |s: &str| format!("blk.{l}.{s}");
        let bias = |t: &mut TensorTable, s: &str, d: usize| -> Result<Option<WeightId>> {
            if opts.qkv_bias {
                t.required(&n(s), d, None).map(Some)
            } else {
                t.optional(&n(s), d, None)
            }
        };
        layers.push(LayerWeights {
            attn_norm: t.required(&n("attn_norm.weight"), e, None)?,
            wq: t.required(&n("attn_q.weight"), e, Some(q))?,
            wk: t.required(&n("attn_k.weight"), e, Some(kv))?,
            wv: t.required(&n("attn_v.weight"), e, Some(kv))?,
            bq: bias(&mut t, "attn_q.bias", q)?,
            bk: bias(&mut t, "attn_k.bias", kv)?,
            bv: bias(&mut t, "attn_v.bias", kv)?,
            wo: t.required(&n("attn_output.weight"), q, Some(e))?,
            ffn_norm: t.required(&n("ffn_norm.weight"), e, None)?,
            gate: t.required(&n("ffn_gate.weight"), e, Some(ff))?,
            up: t.required(&n("ffn_up.weight"), e, Some(ff))?,
            down: t.required(&n("ffn_down.weight"), ff, Some(e))?,
        });
    }
    Ok(Recipe {
        hp,
        rope: opts.rope,
        tensors: t.tensors,
        tok_embd,
        output_norm,
        output,
        layers,
    })
}

/// Which logits a forward step produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every token's (perplexity, verification).
    All,
}

/// One forward step over the tokens bound to `ops`. `cancelled` is polled between layers so a
/// long prefill stops within one layer.
pub fn forward<O: Ops>(
    ops: &mut O,
    r: &Recipe,
    logits: Logits,
    cancelled: &dyn Fn() -> bool,
) -> Result<()> {
    let hp = &r.hp;
    let eps = hp.norm_eps;
    let attn = AttnShape {
        n_head: hp.n_head,
        n_head_kv: hp.n_head_kv,
        head_dim: hp.head_dim,
        scale: 1.0 / (hp.head_dim as f32).sqrt(),
    };
    ops.embed(r.tok_embd, Slot::Hidden);
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
        let qkv = [
            Projection {
                w: w.wq,
                bias: w.bq,
                out: Slot::Q,
            },
            Projection {
                w: w.wk,
                bias: w.bk,
                out: Slot::K,
            },
            Projection {
                w: w.wv,
                bias: w.bv,
                out: Slot::V,
            },
        ];
        ops.norm_matmul(Slot::Hidden, w.attn_norm, eps, Slot::Normed, &qkv);
        tap0(ops, "attn_norm", Slot::Normed);
        tap0(ops, "q", Slot::Q);
        tap0(ops, "k", Slot::K);
        tap0(ops, "v", Slot::V);
        ops.rope_attention(l, (Slot::Q, Slot::K, Slot::V), r.rope, attn, Slot::Attn);
        tap0(ops, "q_rope", Slot::Q);
        tap0(ops, "k_rope", Slot::K);
        tap0(ops, "attn", Slot::Attn);
        ops.matmul_add(w.wo, Slot::Attn, Slot::Proj, Slot::Hidden);
        tap0(ops, "attn_out", Slot::Proj);
        tap0(ops, "attn_residual", Slot::Hidden);
        ops.norm_swiglu(
            Slot::Hidden,
            w.ffn_norm,
            eps,
            Slot::Normed,
            (w.gate, w.up),
            Slot::Gate,
            Slot::Up,
            Slot::Act,
        );
        tap0(ops, "ffn_norm", Slot::Normed);
        tap0(ops, "gate", Slot::Gate);
        tap0(ops, "up", Slot::Up);
        tap0(ops, "swiglu", Slot::Act);
        ops.matmul_add(w.down, Slot::Act, Slot::Proj, Slot::Hidden);
        tap0(ops, "ffn_out", Slot::Proj);
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
    ops.norm_matmul(Slot::Hidden, r.output_norm, eps, Slot::Normed, &[head]);
    ops.tap("output_norm", None, Slot::Normed);
    Ok(())
}
