//! Qwen3 (dense): no Q/K/V biases, a per-head RMSNorm of queries and keys before RoPE
//! (`attn_q_norm`, `attn_k_norm`), NeoX-style RoPE; head size from `attention.key_length`.

use super::hparams::HParams;
use super::recipe::{build_decoder, DecoderOptions, Recipe};
use crate::backend::{Rope, RopeStyle};
use crate::gguf::Gguf;
use crate::Result;

pub fn build(g: &Gguf, hp: HParams) -> Result<Recipe> {
    let rope = Rope::plain(RopeStyle::Neox, hp.rope_dims, hp.rope_base);
    let opts = DecoderOptions {
        qk_norm: true,
        ..DecoderOptions::standard(&hp, rope)
    };
    build_decoder(g, hp, opts)
}
