//! Gemma 3 (text): sandwich norms (before and after attention and feed-forward), QK-norm,
//! GeGLU with the tanh GELU, embedding scaled by sqrt(n_embd), tied output. Five of every six
//! layers attend locally (a sliding window, rope base 10000); every sixth is global (the
//! file's rope base, with the file's linear scaling if any). GGUF stores Q/K unpermuted:
//! RoPE rotates halves.

use super::hparams::HParams;
use super::recipe::{build_decoder, DecoderOptions, LayerAttention, Recipe};
use crate::backend::{Activation, Rope, RopeStyle};
use crate::gguf::Gguf;
use crate::{Error, Result};

/// Layer `i` is global when `(i + 1) % GLOBAL_EVERY == 0` (Gemma 3's 5:1 pattern).
const GLOBAL_EVERY: usize = 6;
/// Rope base of the local layers (fixed by the architecture; not in the metadata).
const LOCAL_ROPE_BASE: f32 = 10_000.0;

pub fn build(g: &Gguf, hp: HParams) -> Result<Recipe> {
    let window = hp.sliding_window.ok_or_else(|| {
        Error::BadModel("gemma3: missing metadata key 'gemma3.attention.sliding_window'".into())
    })?;
    let pos_scale = super::hparams::linear_rope_scale(g, &hp.arch)?;
    let layers = (0..hp.n_layer)
        .map(|i| {
            if (i + 1) % GLOBAL_EVERY == 0 {
                let mut rope = Rope::plain(RopeStyle::Neox, hp.rope_dims, hp.rope_base);
                rope.pos_scale = pos_scale;
                LayerAttention::global(rope)
            } else {
                let rope = Rope::plain(RopeStyle::Neox, hp.rope_dims, LOCAL_ROPE_BASE);
                LayerAttention {
                    window: Some(window),
                    ..LayerAttention::global(rope)
                }
            }
        })
        .collect();
    let opts = DecoderOptions {
        layers,
        qk_norm: true,
        sandwich_norms: true,
        act: Activation::GeluTanh,
        embd_scale: Some((hp.n_embd as f32).sqrt()),
        // query_pre_attn_scalar = head_dim for the 270M-12B models (the 27B's differs and
        // is not in the metadata).
        attn_scale: Some(1.0 / (hp.head_dim as f32).sqrt()),
        ..DecoderOptions::standard(
            &hp,
            Rope::plain(RopeStyle::Neox, hp.rope_dims, hp.rope_base),
        )
    };
    build_decoder(g, hp, opts)
}
