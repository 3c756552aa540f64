//! Compute backends: CPU always, CUDA with the `cuda` feature.
//!
//! A backend knows operations, not architectures: the layer recipe in `model/` speaks to it
//! through [`Ops`], naming activations by [`Slot`] and weights by [`WeightId`]. Each slot holds
//! `n_tokens` rows of its width for the current forward step.

mod bind;
pub mod context;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod kvpool;
mod state_rows;
mod weights;

pub use bind::{BatchScratch, Out, State, Weights};
pub use context::{Context, ContextOptions, Device, Reservation};
pub use state_rows::kv_values;
pub use weights::WeightTensor;

/// The element type of a session's KV cache (`SessionOptions::kv_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    /// The device's own choice: f32 on the CPU, f16 on a GPU (half the memory and decode
    /// bandwidth; its rounding is well under quantized weights' noise).
    #[default]
    Auto,
    /// f16 keys and values, rounded to nearest-even once as they are written: half the
    /// memory of f32.
    F16,
    /// f32 keys and values: exact, for f32/f16 weights whose results should match an f32
    /// reference (on a GPU, twice the cache memory and decode attention bandwidth).
    F32,
}

impl KvType {
    /// The name the CLI and the bindings use: "auto", "f16" or "f32".
    pub fn name(self) -> &'static str {
        match self {
            KvType::Auto => "auto",
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        }
    }

    /// The type of the values of a cache of this choice on `device`.
    pub fn elem(self, device: Device) -> kvpool::Elem {
        match (self, device) {
            (KvType::F16, _) | (KvType::Auto, Device::Cuda(_)) => kvpool::Elem::F16,
            (KvType::F32, _) | (KvType::Auto, Device::Cpu) => kvpool::Elem::F32,
        }
    }

    /// The type a name gives (see [`name`](Self::name)), or an error naming it.
    pub fn parse(s: &str) -> crate::Result<KvType> {
        [KvType::Auto, KvType::F16, KvType::F32]
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                crate::Error::InvalidArgument(format!(
                    "KV cache type {s:?}: expected auto, f16 or f32"
                ))
            })
    }
}

/// The sizes a backend allocates for: the model's widths and counts, nothing of how the
/// architecture uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dims {
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab: usize,
}

impl Dims {
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// Which logits a forward step produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every token's (perplexity, verification).
    All,
}

/// One recorded intermediate value (see [`Ops::tap`]).
#[derive(Debug, Clone)]
pub struct Tap {
    pub name: String,
    pub layer: Option<usize>,
    /// `rows` token rows of `data.len() / rows` values.
    pub rows: usize,
    pub data: Vec<f32>,
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
    pub fn width(self, hp: &Dims) -> usize {
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
    /// Pairs (i, i + d/2): GPT-NeoX style, used by Qwen2 and most later families.
    Neox,
}

/// Rotary embedding settings of a layer. Pair `i` of a head at position `p` turns by
/// `p * pos_scale * base^(-2i/dims) / freq_factors[i]`, and the rotated pair is multiplied by
/// `mscale` (LongRoPE's and YaRN's attention factor).
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub style: RopeStyle,
    /// Dimensions rotated per head (from the front); the rest pass through.
    pub dims: usize,
    pub base: f32,
    /// Linear position scaling (1 / factor); 1 = none.
    pub pos_scale: f32,
    /// Per-pair frequency divisors (`dims / 2` values: Llama 3's `rope_freqs`, LongRoPE's
    /// factors, YaRN's ramp), or none.
    pub freq_factors: Option<std::sync::Arc<[f32]>>,
    pub mscale: f32,
}

impl Rope {
    /// Plain RoPE: no scaling of any kind.
    pub fn plain(style: RopeStyle, dims: usize, base: f32) -> Rope {
        Rope {
            style,
            dims,
            base,
            pos_scale: 1.0,
            freq_factors: None,
            mscale: 1.0,
        }
    }

    /// The angle per position of each pair, in f32 as the references compute it:
    /// `1 / base^(2i/dims)`, divided by the pair's factor, times the position scale.
    pub fn inv_freq(&self) -> Vec<f32> {
        (0..self.dims / 2)
            .map(|i| {
                let f = 1.0 / self.base.powf(2.0 * i as f32 / self.dims as f32);
                let div = self.freq_factors.as_ref().map_or(1.0, |d| d[i]);
                f / div * self.pos_scale
            })
            .collect()
    }
}

/// An RMSNorm: `x / rms(x) * w` (the weight as the file stores it), with its epsilon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Norm {
    pub w: WeightId,
    pub eps: f32,
}

/// The activation of a gated feed-forward: how its gate and up projections combine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `silu(gate) * up` (SwiGLU: Llama, Qwen, Phi-3).
    Silu,
    /// `gelu_tanh(gate) * up` (GeGLU with the tanh approximation: Gemma).
    GeluTanh,
    /// GPT-OSS's experts: `g = min(gate, limit)`, `u = clamp(up, -limit, limit)`, then
    /// `g * sigmoid(alpha * g) * (u + 1)`.
    ClampedSwiglu { alpha: f32, limit: f32 },
}

impl Activation {
    /// The name of the activation's stage (taps, the references' stage names).
    pub fn stage_name(self) -> &'static str {
        match self {
            Activation::Silu | Activation::ClampedSwiglu { .. } => "swiglu",
            Activation::GeluTanh => "geglu",
        }
    }
}

/// Attention shape of a layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Sliding window: each query sees only the last `window` positions (itself included).
    pub window: Option<usize>,
    /// Attention sinks (GPT-OSS): one learned logit per query head (`n_head` values) that
    /// joins each softmax's denominator with no value of its own.
    pub sinks: Option<WeightId>,
}

/// One projection of a shared input: `out = W · input (+ bias)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projection {
    pub w: WeightId,
    pub bias: Option<WeightId>,
    pub out: Slot,
}

/// A weight matrix with an optional bias: `W · x (+ b)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linear {
    pub w: WeightId,
    pub bias: Option<WeightId>,
}

/// One expert of a mixture of experts: a gated feed-forward
/// `down · act(gate · x, up · x)`, each product with its bias where the file has one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expert {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

/// A mixture-of-experts feed-forward (GPT-OSS). Per token: the router's logits pick the
/// `top_k` largest (ties to the lower index), their softmax weighs the chosen experts, and
/// the output is the weighted sum of those experts' outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Moe {
    pub router: Linear,
    pub experts: Vec<Expert>,
    pub top_k: usize,
    pub act: Activation,
}

/// The normalized input of a block: `normed = rms_norm(x) * norm`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormIn {
    pub x: Slot,
    pub norm: Norm,
    pub normed: Slot,
}

/// A gated feed-forward's first half: `out = act(W_gate · x) * (W_up · x)`, the two
/// projections kept in `gate` and `up`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Glu {
    pub gate: Projection,
    pub up: Projection,
    pub act: Activation,
    pub out: Slot,
}

/// The attention of a layer: `q`, `k`, `v` rotated (q and k) and attended into `out`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttnIn<'a> {
    pub layer: usize,
    pub q: Slot,
    pub k: Slot,
    pub v: Slot,
    pub rope: &'a Rope,
    pub shape: AttnShape,
    pub out: Slot,
}

/// The operations a layer recipe is written in. Rows of a slot are tokens; `pos0` is the
/// position of the first token of the step in the sequence.
pub trait Ops {
    /// Number of token rows in this step.
    fn n_tokens(&self) -> usize;
    /// `out[t] = table[tokens[t]]`, dequantized.
    fn embed(&mut self, table: WeightId, out: Slot);
    /// `out = x / rms(x) * w`, row by row (`out` may be `x`).
    fn rms_norm(&mut self, x: Slot, norm: Norm, out: Slot);
    /// RMSNorm of each `head_dim` piece of each row of `x`, in place (QK-norm).
    fn rms_norm_heads(&mut self, x: Slot, head_dim: usize, norm: Norm);
    /// `out[t] = W · x[t]` (W has one row per output feature).
    fn matmul(&mut self, w: WeightId, x: Slot, out: Slot);
    /// `x[t] += b`.
    fn add_bias(&mut self, x: Slot, b: WeightId);
    /// Rotate each head of `x` in place for positions `pos0..pos0+n`.
    fn rope(&mut self, x: Slot, n_heads: usize, head_dim: usize, rope: &Rope);
    /// Write this step's K and V into the layer's cache, then causal attention of Q over the
    /// cache (positions `0..pos0+t+1` for token t, or the window's last ones) into `out`.
    fn attention(&mut self, layer: usize, q: Slot, k: Slot, v: Slot, shape: AttnShape, out: Slot);
    /// `out = act(gate) * up`.
    fn glu(&mut self, act: Activation, gate: Slot, up: Slot, out: Slot);
    /// `x += y`.
    fn add(&mut self, x: Slot, y: Slot);
    /// `x *= factor`.
    fn scale(&mut self, x: Slot, factor: f32);
    /// `x = cap * tanh(x / cap)` (logit soft-capping).
    fn softcap(&mut self, x: Slot, cap: f32);
    /// Keep only the last token row of `x` (the others are not needed for the logits).
    fn keep_last_row(&mut self, x: Slot);
    /// Record an intermediate value for verification (no-op unless taps are on).
    fn tap(&mut self, _name: &str, _layer: Option<usize>, _x: Slot) {}
    /// The mixture-of-experts feed-forward of `x` into `out` (both `n_embd` wide). With taps
    /// on it records, under `layer`, `router_logits` (with the router's bias) `[n, experts]`,
    /// `expert_ids` (as f32) and `expert_weights` `[n, top_k]` in the order picked (largest
    /// logit first); with `expert_taps` also each picked expert's `gate` and `up` (with
    /// biases), activation (`moe.act`'s stage name) and `expert_out` (its biased output,
    /// before the weighting), `[n, top_k, width]` in that order.
    fn moe(&mut self, layer: usize, moe: &Moe, x: Slot, out: Slot, expert_taps: bool);

    // Fused operations. Each leaves every slot it names exactly as its default (a sequence
    // of the operations above, in `unfused`) does, so taps and tests see the same values; a
    // backend overrides one to share work (normalize or quantize a common input once) or to
    // cut kernel launches.

    /// `normed = rms_norm(x) * norm`, then every projection of `normed`.
    fn norm_matmul(&mut self, input: NormIn, projs: &[Projection]) {
        unfused::norm_matmul(self, input, projs)
    }

    /// The feed-forward input: `normed = rms_norm(x) * norm`, then the gated activation of
    /// `normed`.
    fn norm_glu(&mut self, input: NormIn, glu: Glu) {
        unfused::norm_glu(self, input, glu)
    }

    /// `tmp = W · x`, then `acc += tmp` (a projection back into the residual stream).
    fn matmul_add(&mut self, w: WeightId, x: Slot, tmp: Slot, acc: Slot) {
        unfused::matmul_add(self, w, x, tmp, acc)
    }

    /// Rotate the heads of `q` and `k` in place, then [`attention`](Ops::attention).
    fn rope_attention(&mut self, a: &AttnIn) {
        unfused::rope_attention(self, a)
    }
}

/// The fused operations as sequences of the plain ones: the defaults of [`Ops`], also for a
/// backend that fuses only some cases (e.g. one token) and falls back for the rest.
pub mod unfused {
    use super::{AttnIn, Glu, NormIn, Ops, Projection, Slot, WeightId};

    pub fn norm_matmul<O: Ops + ?Sized>(ops: &mut O, input: NormIn, projs: &[Projection]) {
        ops.rms_norm(input.x, input.norm, input.normed);
        for p in projs {
            ops.matmul(p.w, input.normed, p.out);
            if let Some(b) = p.bias {
                ops.add_bias(p.out, b);
            }
        }
    }

    pub fn norm_glu<O: Ops + ?Sized>(ops: &mut O, input: NormIn, glu: Glu) {
        norm_matmul(ops, input, &[glu.gate, glu.up]);
        ops.glu(glu.act, glu.gate.out, glu.up.out, glu.out);
    }

    pub fn matmul_add<O: Ops + ?Sized>(ops: &mut O, w: WeightId, x: Slot, tmp: Slot, acc: Slot) {
        ops.matmul(w, x, tmp);
        ops.add(acc, tmp);
    }

    pub fn rope_attention<O: Ops + ?Sized>(ops: &mut O, a: &AttnIn) {
        let s = a.shape;
        ops.rope(a.q, s.n_head, s.head_dim, a.rope);
        ops.rope(a.k, s.n_head_kv, s.head_dim, a.rope);
        ops.attention(a.layer, a.q, a.k, a.v, s, a.out);
    }
}
