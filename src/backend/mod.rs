//! Compute backends: CPU always, CUDA with the `cuda` feature.
//!
//! A backend knows operations, not architectures: the layer recipe in `model/` speaks to it
//! through [`Ops`], naming activations by [`Slot`] and weights by [`WeightId`]. Each slot holds
//! `n_tokens` rows of its width for the current forward step.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

/// Which device a context computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// CUDA device by ordinal.
    Cuda(u32),
}

/// Options of a context (the C `llorch_context`).
#[derive(Debug, Clone)]
pub struct ContextOptions {
    pub device: Device,
    /// CPU worker threads; 0 = all cores.
    pub threads: usize,
    /// Bytes the context may allocate for weights, KV caches and scratch; 0 = no limit.
    pub memory_budget: u64,
}

impl Default for ContextOptions {
    fn default() -> Self {
        ContextOptions {
            device: Device::Cpu,
            threads: 0,
            memory_budget: 0,
        }
    }
}

/// Activation buffers of a forward step. Widths are set by the model's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The residual stream, `n_embd` wide.
    Hidden,
    /// Normalized input of a block, `n_embd` wide.
    Normed,
    /// Queries, `n_head * head_dim` wide.
    Q,
    /// Keys and values of the new tokens, `n_head_kv * head_dim` wide.
    K,
    V,
    /// Attention output before its projection, `n_head * head_dim` wide.
    Attn,
    /// Output of a projection back to `n_embd`.
    Proj,
    /// Feed-forward gate and up projections, `n_ff` wide.
    Gate,
    Up,
    /// The gated activation `silu(gate) * up`, `n_ff` wide.
    Act,
    /// Logits, `vocab` wide.
    Logits,
}

impl Slot {
    /// Every slot, in the order of [`Slot::index`].
    pub const ALL: [Slot; 11] = [
        Slot::Hidden,
        Slot::Normed,
        Slot::Q,
        Slot::K,
        Slot::V,
        Slot::Attn,
        Slot::Proj,
        Slot::Gate,
        Slot::Up,
        Slot::Act,
        Slot::Logits,
    ];

    /// Position in [`Slot::ALL`], for backends that keep their buffers in an array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Values per token row of this slot.
    pub fn width(self, hp: &crate::model::hparams::HParams) -> usize {
        match self {
            Slot::Hidden | Slot::Normed | Slot::Proj => hp.n_embd,
            Slot::Q | Slot::Attn => hp.q_dim(),
            Slot::K | Slot::V => hp.kv_dim(),
            Slot::Gate | Slot::Up | Slot::Act => hp.n_ff,
            Slot::Logits => hp.vocab,
        }
    }
}

/// Index of a weight tensor in the model's weight table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeightId(pub u32);

/// How rotary position embedding pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): llama-family GGUF files (their Q/K rows are stored permuted for it).
    Normal,
    /// Pairs (i, i + d/2): GPT-NeoX style, used by Qwen2.
    Neox,
}

/// Rotary embedding settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    pub style: RopeStyle,
    /// Dimensions rotated per head (from the front); the rest pass through.
    pub dims: usize,
    pub base: f32,
}

/// Attention shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// One projection of a shared input: `out = W · input (+ bias)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projection {
    pub w: WeightId,
    pub bias: Option<WeightId>,
    pub out: Slot,
}

/// The gate and up projections of a SwiGLU feed-forward (no biases).
fn gate_up((w_gate, w_up): (WeightId, WeightId), gate: Slot, up: Slot) -> [Projection; 2] {
    let proj = |w, out| Projection { w, bias: None, out };
    [proj(w_gate, gate), proj(w_up, up)]
}

/// The operations a layer recipe is written in. Rows of a slot are tokens; `pos0` is the
/// position of the first token of the step in the sequence.
pub trait Ops {
    /// Number of token rows in this step.
    fn n_tokens(&self) -> usize;
    /// `out[t] = table[tokens[t]]`, dequantized.
    fn embed(&mut self, table: WeightId, out: Slot);
    /// `out = x / rms(x) * w`, row by row.
    fn rms_norm(&mut self, x: Slot, w: WeightId, eps: f32, out: Slot);
    /// `out[t] = W · x[t]` (W has one row per output feature).
    fn matmul(&mut self, w: WeightId, x: Slot, out: Slot);
    /// `x[t] += b`.
    fn add_bias(&mut self, x: Slot, b: WeightId);
    /// Rotate each head of `x` in place for positions `pos0..pos0+n`.
    fn rope(&mut self, x: Slot, n_heads: usize, head_dim: usize, rope: Rope);
    /// Write this step's K and V into the layer's cache, then causal attention of Q over the
    /// cache (positions `0..pos0+t+1` for token t) into `out`.
    fn attention(&mut self, layer: usize, q: Slot, k: Slot, v: Slot, shape: AttnShape, out: Slot);
    /// `out = silu(gate) * up`.
    fn swiglu(&mut self, gate: Slot, up: Slot, out: Slot);
    /// `x += y`.
    fn add(&mut self, x: Slot, y: Slot);
    /// Keep only the last token row of `x` (the others are not needed for the logits).
    fn keep_last_row(&mut self, x: Slot);
    /// Record an intermediate value for verification (no-op unless taps are on).
    fn tap(&mut self, _name: &str, _layer: Option<usize>, _x: Slot) {}

    // Fused operations. Each leaves every slot it names exactly as its default (a sequence
    // of the operations above) does, so taps and tests see the same values; a backend
    // overrides one to share work (normalize or quantize a common input once) or to cut
    // kernel launches.

    /// `normed = rms_norm(x) * norm`, then every projection of `normed`.
    fn norm_matmul(
        &mut self,
        x: Slot,
        norm: WeightId,
        eps: f32,
        normed: Slot,
        projs: &[Projection],
    ) {
        self.rms_norm(x, norm, eps, normed);
        for p in projs {
            self.matmul(p.w, normed, p.out);
            if let Some(b) = p.bias {
                self.add_bias(p.out, b);
            }
        }
    }

    /// The feed-forward input: `normed = rms_norm(x) * norm`, `gate = W_gate · normed`,
    /// `up = W_up · normed`, `act = silu(gate) * up`.
    #[allow(clippy::too_many_arguments)]
    fn norm_swiglu(
        &mut self,
        x: Slot,
        norm: WeightId,
        eps: f32,
        normed: Slot,
        (w_gate, w_up): (WeightId, WeightId),
        gate: Slot,
        up: Slot,
        act: Slot,
    ) {
        self.norm_matmul(x, norm, eps, normed, &gate_up((w_gate, w_up), gate, up));
        self.swiglu(gate, up, act);
    }

    /// `tmp = W · x`, then `acc += tmp` (a projection back into the residual stream).
    fn matmul_add(&mut self, w: WeightId, x: Slot, tmp: Slot, acc: Slot) {
        unfused::matmul_add(self, w, x, tmp, acc)
    }

    /// Rotate the heads of `q` and `k` in place, then [`attention`](Ops::attention).
    #[allow(clippy::too_many_arguments)]
    fn rope_attention(
        &mut self,
        layer: usize,
        (q, k, v): (Slot, Slot, Slot),
        rope: Rope,
        shape: AttnShape,
        out: Slot,
    ) {
        unfused::rope_attention(self, layer, (q, k, v), rope, shape, out)
    }
}

/// The fused operations as sequences of the plain ones: the defaults of [`Ops`], also for a
/// backend that fuses only some cases (e.g. one token) and falls back for the rest.
pub mod unfused {
    use super::{gate_up, AttnShape, Ops, Projection, Rope, Slot, WeightId};

    pub fn norm_matmul<O: Ops + ?Sized>(
        ops: &mut O,
        x: Slot,
        norm: WeightId,
        eps: f32,
        normed: Slot,
        projs: &[Projection],
    ) {
        ops.rms_norm(x, norm, eps, normed);
        for p in projs {
            ops.matmul(p.w, normed, p.out);
            if let Some(b) = p.bias {
                ops.add_bias(p.out, b);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn norm_swiglu<O: Ops + ?Sized>(
        ops: &mut O,
        x: Slot,
        norm: WeightId,
        eps: f32,
        normed: Slot,
        (w_gate, w_up): (WeightId, WeightId),
        gate: Slot,
        up: Slot,
        act: Slot,
    ) {
        norm_matmul(
            ops,
            x,
            norm,
            eps,
            normed,
            &gate_up((w_gate, w_up), gate, up),
        );
        ops.swiglu(gate, up, act);
    }

    pub fn matmul_add<O: Ops + ?Sized>(ops: &mut O, w: WeightId, x: Slot, tmp: Slot, acc: Slot) {
        ops.matmul(w, x, tmp);
        ops.add(acc, tmp);
    }

    pub fn rope_attention<O: Ops + ?Sized>(
        ops: &mut O,
        layer: usize,
        (q, k, v): (Slot, Slot, Slot),
        rope: Rope,
        shape: AttnShape,
        out: Slot,
    ) {
        ops.rope(q, shape.n_head, shape.head_dim, rope);
        ops.rope(k, shape.n_head_kv, shape.head_dim, rope);
        ops.attention(layer, q, k, v, shape, out);
    }
}
