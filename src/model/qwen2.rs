//! Qwen2 / Qwen2.5: biases on Q, K and V; NeoX-style RoPE; separate output matrix.

use super::hparams::HParams;
use super::recipe::{build_decoder, DecoderOptions, Recipe};
use crate::backend::{Rope, RopeStyle};
use crate::gguf::Gguf;
use crate::Result;

pub fn build(g: &Gguf, hp: HParams) -> Result<Recipe> {
    let rope = Rope::plain(RopeStyle::Neox, hp.rope_dims, hp.rope_base);
    let opts = DecoderOptions {
        qkv_bias: true,
        ..DecoderOptions::standard(&hp, rope)
    };
    build_decoder(g, hp, opts)
}
