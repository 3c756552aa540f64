//! Phi-3: Q, K and V in one fused `attn_qkv` tensor and gate/up in one fused `ffn_up` (bound
//! as row views, no copies), NeoX-style RoPE, SwiGLU, a sliding window on every layer when
//! the metadata sets one. LongRoPE: per-pair frequency divisors `rope_factors_short` (and
//! `_long`) and an attention factor on the rotation (`phi3.rope.scaling.attn_factor`).
//!
//! Which factors: Hugging Face switches to the long factors only for a sequence longer than
//! `rope.scaling.original_context_length`, rotating the whole sequence again. A KV cache
//! cannot rotate again, so the short factors are used: exact to the reference for sequences
//! within the original context (4096 tokens for Phi-3-mini-128k).

use super::hparams::HParams;
use super::recipe::{build_decoder, DecoderOptions, LayerAttention, Recipe, TensorTable};
use crate::backend::{Rope, RopeStyle};
use crate::gguf::Gguf;
use crate::{Error, Result};

pub fn build(g: &Gguf, hp: HParams) -> Result<Recipe> {
    let mut rope = Rope::plain(RopeStyle::Neox, hp.rope_dims, hp.rope_base);
    rope.freq_factors = TensorTable::new(g)
        .values("rope_factors_short.weight", hp.rope_dims / 2)?
        .map(Into::into);
    rope.mscale = attn_factor(g, &hp)?;
    let layer = LayerAttention {
        rope,
        window: hp.sliding_window,
    };
    let opts = DecoderOptions {
        layers: vec![layer; hp.n_layer],
        ..DecoderOptions::standard(
            &hp,
            Rope::plain(RopeStyle::Neox, hp.rope_dims, hp.rope_base),
        )
    };
    build_decoder(g, hp, opts)
}

/// The rotation's attention factor: the file's `phi3.rope.scaling.attn_factor`, else (a model
/// extended past its original context) LongRoPE's `sqrt(1 + ln(s) / ln(original))` with
/// `s = context_length / original`, else 1.
fn attn_factor(g: &Gguf, hp: &HParams) -> Result<f32> {
    if let Some(f) = g.get_f32("phi3.rope.scaling.attn_factor")? {
        if !(f.is_finite() && f > 0.0) {
            return Err(Error::BadModel(format!(
                "phi3.rope.scaling.attn_factor = {f} is not a positive number"
            )));
        }
        return Ok(f);
    }
    match g.get_u64("phi3.rope.scaling.original_context_length")? {
        Some(orig) if orig > 1 && hp.n_ctx_train as u64 > orig => {
            let s = hp.n_ctx_train as f64 / orig as f64;
            Ok((1.0 + s.ln() / (orig as f64).ln()).sqrt() as f32)
        }
        _ => Ok(1.0),
    }
}
