//! Phi-3: Q, K and V in one fused `attn_qkv` tensor and gate/up in one fused `ffn_up` (bound
//! as row views, no copies), NeoX-style RoPE, SwiGLU, a sliding window on every layer when
//! the metadata sets one. LongRoPE: per-pair frequency divisors (`rope_factors_short`,
//! `rope_factors_long`) and an attention factor on the rotation.
//!
//! Which factors: Hugging Face uses the long ones for a sequence longer than the original
//! context (`rope.scaling.original_context_length`), for every position of that pass. A KV
//! cache cannot turn its keys again, so the choice is made per session: the long factors for
//! a session whose context exceeds the original one, the short ones otherwise. Exact to the
//! reference for every sequence a session of its size can hold.

use super::hparams::HParams;
use super::recipe::{build_decoder, DecoderOptions, LayerAttention, Recipe, TensorTable};
use crate::backend::{Rope, RopeStyle};
use crate::gguf::Gguf;
use crate::{Error, Result};

pub fn build(g: &Gguf, hp: HParams) -> Result<Recipe> {
    let t = TensorTable::new(g);
    let half = hp.rope_dims / 2;
    let mscale = attn_factor(g, &hp)?;
    let rope = |factors: Option<Vec<f32>>| Rope {
        freq_factors: factors.map(Into::into),
        mscale,
        ..Rope::plain(RopeStyle::Neox, hp.rope_dims, hp.rope_base)
    };
    let short = rope(t.values("rope_factors_short.weight", half)?);
    let original = g.get_u64("phi3.rope.scaling.original_context_length")?;
    let rope_long = match (t.values("rope_factors_long.weight", half)?, original) {
        (Some(long), Some(orig)) => Some((orig as usize, rope(Some(long)))),
        (Some(_), None) => {
            return Err(Error::BadModel(
                "phi3: rope_factors_long without phi3.rope.scaling.original_context_length".into(),
            ))
        }
        (None, _) => None,
    };
    let layer = LayerAttention {
        rope: short.clone(),
        rope_long,
        window: hp.sliding_window,
    };
    let opts = DecoderOptions {
        layers: vec![layer; hp.n_layer],
        ..DecoderOptions::standard(&hp, short)
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
