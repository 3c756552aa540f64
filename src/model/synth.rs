//! Deterministic synthetic models of real shapes and tensor types, for speed work and
//! GPU-versus-CPU parity where a real model cannot travel. Same spec and seed → same bytes.
//!
//! Weights are random blocks with sane scale fields: each matrix's values have a standard
//! deviation near 1/sqrt(inputs), so activations stay O(1) through the layers, and every
//! quant bit pattern occurs. Random weights cost exactly the kernel work of trained ones.

use crate::gguf::{GgufError, GgufWriter};
use crate::quant::GgmlType;
use crate::{Error, Result};
use half::f16;

/// Which tensor types a synthetic model uses, after a real file's mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeMix {
    /// As a Q4_K_M file: Q4_K matrices (Q5_0 where rows are not whole 256-blocks), Q6_K (or
    /// Q8_0) for `attn_v`/`ffn_down` on half of the layers, and for the output.
    Q4KM,
    /// As SmolLM2's Q4_1 file: Q4_1 matrices, Q8_0 embedding, tied output.
    Q4_1,
    /// As GPT-OSS's published files: F16 attention, Q8_0 embedding and output, F32 router,
    /// norms, biases and sinks, experts in [`EXPERT_TYPE`].
    GptOss,
    /// Every matrix F16 (an unquantized export): the exact-weights case.
    F16,
}

/// The experts' type of the GPT-OSS mix: MXFP4, as the published files hold them.
pub const EXPERT_TYPE: GgmlType = GgmlType::MXFP4;

#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    /// `qwen2` (Q/K/V biases, separate output), `llama` (no biases, tied output), `gemma3`
    /// (QK-norm, sandwich norms, tied output, sliding window), `phi3` (fused tensors,
    /// LongRoPE factors) or `gpt-oss` (biases, sinks, YaRN, a mixture of experts).
    pub arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Head size; 0 = `n_embd / n_head`.
    pub head_dim: usize,
    /// `attention.sliding_window` (gemma3's local layers).
    pub sliding_window: Option<usize>,
    pub vocab: usize,
    pub n_ctx: usize,
    pub rope_base: f32,
    pub mix: TypeMix,
    /// Experts of a mixture-of-experts feed-forward (each `n_ff` wide) and how many each
    /// token uses; 0 = a dense feed-forward.
    pub experts: usize,
    pub experts_used: usize,
}

/// The shape presets: the real models' shapes.
pub fn preset(name: &str) -> Option<SynthSpec> {
    let q = |n_layer, n_embd, n_ff, n_head, n_head_kv, vocab| SynthSpec {
        arch: "qwen2".into(),
        n_layer,
        n_embd,
        n_ff,
        n_head,
        n_head_kv,
        head_dim: 0,
        sliding_window: None,
        vocab,
        n_ctx: 32768,
        rope_base: 1_000_000.0,
        mix: TypeMix::Q4KM,
        experts: 0,
        experts_used: 0,
    };
    let gemma3 = |n_layer, n_embd, n_ff, n_head, n_head_kv, vocab| SynthSpec {
        arch: "gemma3".into(),
        head_dim: 256,
        sliding_window: Some(512),
        vocab,
        ..q(n_layer, n_embd, n_ff, n_head, n_head_kv, vocab)
    };
    Some(match name {
        "qwen2-0.5b" => q(24, 896, 4864, 14, 2, 151936),
        "qwen2-1.5b" => q(28, 1536, 8960, 12, 2, 151936),
        "qwen2-7b" => q(28, 3584, 18944, 28, 4, 152064),
        "smollm2-135m" => SynthSpec {
            arch: "llama".into(),
            n_layer: 30,
            n_embd: 576,
            n_ff: 1536,
            n_head: 9,
            n_head_kv: 3,
            head_dim: 0,
            sliding_window: None,
            vocab: 49152,
            n_ctx: 8192,
            rope_base: 100_000.0,
            mix: TypeMix::Q4_1,
            experts: 0,
            experts_used: 0,
        },
        "gemma3-270m" => gemma3(18, 640, 2048, 4, 1, 262144),
        "phi3-mini" => SynthSpec {
            arch: "phi3".into(),
            n_ctx: 131072,
            rope_base: 10_000.0,
            ..q(32, 3072, 8192, 32, 32, 32064)
        },
        "gemma3-4b" => gemma3(34, 2560, 10240, 8, 4, 262208),
        // 24 layers of 2880, 64 query heads of 64, 8 KV heads, window 128 on even layers,
        // 32 experts of 2880, 4 per token, o200k vocabulary (201088 with the specials).
        "gpt-oss-20b" => SynthSpec {
            arch: "gpt-oss".into(),
            head_dim: 64,
            sliding_window: Some(128),
            n_ctx: 131072,
            rope_base: 150_000.0,
            mix: TypeMix::GptOss,
            experts: 32,
            experts_used: 4,
            ..q(24, 2880, 2880, 64, 8, 201088)
        },
        _ => return None,
    })
}

pub const PRESETS: &[&str] = &[
    "qwen2-0.5b",
    "qwen2-1.5b",
    "qwen2-7b",
    "smollm2-135m",
    "gemma3-270m",
    "gemma3-4b",
    "phi3-mini",
    "gpt-oss-20b",
];

/// xorshift64*: fast, deterministic, good enough for weights.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            c.copy_from_slice(&r[..c.len()]);
        }
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// Random blocks of `ty` for `rows` rows of `cols` values with value spread near `std`.
fn random_matrix(
    rng: &mut Rng,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    std: f32,
) -> Result<Vec<u8>> {
    let n = (rows as u64) * (cols as u64);
    let bytes = ty.bytes_for(n).ok_or_else(|| {
        Error::InvalidArgument(format!("{cols} columns are not whole {} blocks", ty.name()))
    })?;
    let mut out = vec![0u8; bytes as usize];
    if ty == GgmlType::F32 {
        for c in out.chunks_mut(4) {
            c.copy_from_slice(&(rng.unit() * std * 1.73).to_le_bytes());
        }
        return Ok(out);
    }
    if ty == GgmlType::F16 {
        for c in out.chunks_mut(2) {
            put_f16(c, 0, rng.unit() * std * 1.73);
        }
        return Ok(out);
    }
    rng.fill(&mut out);
    let ts = ty.type_size();
    // Each format's scale: the value spread divided by the spread of its integer codes.
    for b in out.chunks_mut(ts) {
        match ty {
            GgmlType::Q8_0 => put_f16(b, 0, std / 74.0),
            GgmlType::Q5_0 => put_f16(b, 0, std / 9.2),
            GgmlType::Q4_0 => put_f16(b, 0, std / 4.6),
            GgmlType::Q4_1 => {
                put_f16(b, 0, std / 4.6);
                put_f16(b, 2, -7.5 * std / 4.6);
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                let codes = if ty == GgmlType::Q4_K { 4.6 } else { 9.2 };
                // Zero-mean values: the mean of d*sc*q (q uniform) equals the mean of dmin*m
                // when dmin = d * mean(q) (7.5 for 4-bit codes, 15.5 for 5-bit).
                let (mean_q, d) = (
                    if ty == GgmlType::Q4_K { 7.5 } else { 15.5 },
                    std / (36.0 * codes),
                );
                put_f16(b, 0, d);
                put_f16(b, 2, d * mean_q);
            }
            GgmlType::Q6_K => put_f16(b, 208, std / (18.5 * 74.0)),
            // MXFP4: the doubled code values' rms is sqrt(274/8) = 5.85; the scale 2^(e-128)
            // is the power of two nearest std / 5.85.
            GgmlType::MXFP4 => b[0] = (128.0 + (std / 5.85).log2().round()).clamp(0.0, 254.0) as u8,
            other => {
                return Err(Error::Unsupported(format!(
                    "synthetic {} weights",
                    other.name()
                )))
            }
        }
    }
    Ok(out)
}

/// The GPT-2 byte-to-character map of byte-level BPE vocabularies.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(b) {
        return b as char;
    }
    let k = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + k).unwrap()
}

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Build the synthetic model file.
pub fn build(spec: &SynthSpec, seed: u64) -> Result<GgufWriter> {
    let head_dim = match spec.head_dim {
        0 if spec.n_head > 0 => spec.n_embd / spec.n_head,
        d => d,
    };
    if spec.n_head == 0
        || spec.n_head_kv == 0
        || head_dim == 0
        || head_dim % 2 != 0
        || (spec.head_dim == 0 && spec.n_embd % spec.n_head != 0)
        || spec.n_head % spec.n_head_kv != 0
    {
        return Err(Error::InvalidArgument(format!(
            "{} heads, {} KV heads and width {} do not fit together",
            spec.n_head, spec.n_head_kv, spec.n_embd
        )));
    }
    if spec.vocab < 512 || spec.n_layer == 0 || spec.n_ff == 0 {
        return Err(Error::InvalidArgument(
            "vocabulary (>= 512), layers and FFN width must be positive".into(),
        ));
    }
    let gerr = |e: GgufError| Error::Internal(e.to_string());
    let mut rng = Rng::new(seed);
    let mut w = GgufWriter::new();
    let a = spec.arch.as_str();
    let gemma = a == "gemma3";
    // Phi-3: fused attn_qkv and gate+up, LongRoPE factors (original context 4096).
    let phi3 = a == "phi3";
    // GPT-OSS: Q/K/V/output biases, sinks, YaRN, a mixture of `experts` in every layer.
    let gpt_oss = a == "gpt-oss";
    if gpt_oss != (spec.experts > 0) || spec.experts_used > spec.experts {
        return Err(Error::InvalidArgument(format!(
            "{a} with {} experts, {} per token: only gpt-oss has experts here, and a token \
             uses 1 to all of them",
            spec.experts, spec.experts_used
        )));
    }
    w.add_str("general.architecture", a);
    w.add_str(
        "general.name",
        &format!(
            "synthetic {a} {}L {}d seed {seed}",
            spec.n_layer, spec.n_embd
        ),
    );
    w.add_u32(&format!("{a}.block_count"), spec.n_layer as u32);
    w.add_u32(&format!("{a}.context_length"), spec.n_ctx as u32);
    w.add_u32(&format!("{a}.embedding_length"), spec.n_embd as u32);
    w.add_u32(&format!("{a}.feed_forward_length"), spec.n_ff as u32);
    w.add_u32(&format!("{a}.attention.head_count"), spec.n_head as u32);
    w.add_u32(
        &format!("{a}.attention.head_count_kv"),
        spec.n_head_kv as u32,
    );
    w.add_u32(&format!("{a}.rope.dimension_count"), head_dim as u32);
    w.add_f32(&format!("{a}.rope.freq_base"), spec.rope_base);
    w.add_f32(&format!("{a}.attention.layer_norm_rms_epsilon"), 1e-6);
    if spec.head_dim != 0 {
        w.add_u32(&format!("{a}.attention.key_length"), head_dim as u32);
        w.add_u32(&format!("{a}.attention.value_length"), head_dim as u32);
    }
    if let Some(win) = spec.sliding_window {
        w.add_u32(&format!("{a}.attention.sliding_window"), win as u32);
    }
    if phi3 {
        w.add_u32("phi3.rope.scaling.original_context_length", 4096);
    }
    if gpt_oss {
        w.add_u32("gpt-oss.expert_count", spec.experts as u32);
        w.add_u32("gpt-oss.expert_used_count", spec.experts_used as u32);
        w.add_u32("gpt-oss.expert_feed_forward_length", spec.n_ff as u32);
        w.add_str("gpt-oss.rope.scaling.type", "yarn");
        w.add_f32("gpt-oss.rope.scaling.factor", 32.0);
        w.add_u32("gpt-oss.rope.scaling.original_context_length", 4096);
    }

    // A byte-level vocabulary: the 256 byte tokens, three control tokens, then fillers.
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut types = vec![1i32; 256];
    for s in specials {
        tokens.push(s.to_string());
        types.push(3);
    }
    while tokens.len() < spec.vocab {
        tokens.push(format!("[synth{}]", tokens.len()));
        types.push(1);
    }
    w.add_str("tokenizer.ggml.model", "gpt2");
    w.add_str(
        "tokenizer.ggml.pre",
        if a == "llama" { "smollm" } else { "qwen2" },
    );
    w.add_str_array("tokenizer.ggml.tokens", &tokens);
    w.add_i32_array("tokenizer.ggml.token_type", &types);
    w.add_str_array::<&str>("tokenizer.ggml.merges", &[]);
    w.add_u32("tokenizer.ggml.bos_token_id", 256);
    w.add_u32("tokenizer.ggml.eos_token_id", 258);
    w.add_u32("tokenizer.ggml.padding_token_id", 256);
    w.add_bool("tokenizer.ggml.add_bos_token", false);
    w.add_str("tokenizer.chat_template", CHATML);

    let (e, ff, kv) = (spec.n_embd, spec.n_ff, spec.n_head_kv * head_dim);
    let q = spec.n_head * head_dim;
    let k_quant_fits = |cols: usize| cols % 256 == 0;
    let (main, more_bits, output, embd) = match spec.mix {
        TypeMix::Q4KM => (
            GgmlType::Q4_K,
            GgmlType::Q6_K,
            GgmlType::Q6_K,
            GgmlType::Q4_K,
        ),
        TypeMix::Q4_1 => (
            GgmlType::Q4_1,
            GgmlType::Q4_1,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
        ),
        TypeMix::GptOss => (GgmlType::F16, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q8_0),
        TypeMix::F16 => (GgmlType::F16, GgmlType::F16, GgmlType::F16, GgmlType::F16),
    };
    // Q4_K_M falls back to Q5_0 (and Q8_0 for the "more bits" tensors) where a row is not
    // whole 256-value blocks, as the real Qwen 0.5B file does.
    let pick = |cols: usize, more: bool| -> GgmlType {
        match (spec.mix, k_quant_fits(cols), more) {
            (TypeMix::Q4KM, false, false) => GgmlType::Q5_0,
            (TypeMix::Q4KM, false, true) => GgmlType::Q8_0,
            (_, _, true) => more_bits,
            _ => main,
        }
    };
    let add = |w: &mut GgufWriter,
               rng: &mut Rng,
               name: &str,
               ty: GgmlType,
               cols: usize,
               rows: usize|
     -> Result<()> {
        let std = 1.0 / (cols as f32).sqrt();
        let data = random_matrix(rng, ty, rows, cols, std)?;
        w.add_tensor(name, &[cols as u64, rows as u64], ty, data)
            .map_err(gerr)
    };
    let embd_ty = if k_quant_fits(e) {
        embd
    } else if spec.mix == TypeMix::Q4KM {
        GgmlType::Q5_0
    } else {
        embd
    };
    let data = random_matrix(&mut rng, embd_ty, spec.vocab, e, 1.0)?;
    w.add_tensor(
        "token_embd.weight",
        &[e as u64, spec.vocab as u64],
        embd_ty,
        data,
    )
    .map_err(gerr)?;
    let norm = |rng: &mut Rng, n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|_| (1.0 + 0.1 * rng.unit()).to_le_bytes())
            .collect()
    };
    let nd = norm(&mut rng, e);
    w.add_tensor("output_norm.weight", &[e as u64], GgmlType::F32, nd)
        .map_err(gerr)?;
    if phi3 {
        // Divisors from 1 (fast pairs) up to ~16 (slow ones), as LongRoPE tables run.
        for (name, top) in [
            ("rope_factors_short.weight", 4.0f32),
            ("rope_factors_long.weight", 16.0),
        ] {
            let half = head_dim / 2;
            let f: Vec<u8> = (0..half)
                .flat_map(|i| (1.0 + (top - 1.0) * i as f32 / half as f32).to_le_bytes())
                .collect();
            w.add_tensor(name, &[half as u64], GgmlType::F32, f)
                .map_err(gerr)?;
        }
    }
    if spec.arch == "qwen2" || phi3 || gpt_oss {
        let out_ty = if k_quant_fits(e) {
            output
        } else {
            GgmlType::Q8_0
        };
        add(&mut w, &mut rng, "output.weight", out_ty, e, spec.vocab)?;
    }
    let n = spec.n_layer;
    for l in 0..n {
        // Q4_K_M's "more bits" layers: the first and last eighth, and every third between.
        let more = l < n / 8 || l >= 7 * n / 8 || (l - n / 8) % 3 == 2;
        let b = |s: &str| format!("blk.{l}.{s}");
        let nd = norm(&mut rng, e);
        w.add_tensor(&b("attn_norm.weight"), &[e as u64], GgmlType::F32, nd)
            .map_err(gerr)?;
        let nd = norm(&mut rng, e);
        // GPT-OSS files name the feed-forward's input norm `post_attention_norm`.
        let ffn_norm = if gpt_oss {
            "post_attention_norm.weight"
        } else {
            "ffn_norm.weight"
        };
        w.add_tensor(&b(ffn_norm), &[e as u64], GgmlType::F32, nd)
            .map_err(gerr)?;
        if phi3 {
            add(
                &mut w,
                &mut rng,
                &b("attn_qkv.weight"),
                pick(e, more),
                e,
                q + 2 * kv,
            )?;
        } else {
            add(&mut w, &mut rng, &b("attn_q.weight"), pick(e, false), e, q)?;
            add(&mut w, &mut rng, &b("attn_k.weight"), pick(e, false), e, kv)?;
            add(&mut w, &mut rng, &b("attn_v.weight"), pick(e, more), e, kv)?;
        }
        add(
            &mut w,
            &mut rng,
            &b("attn_output.weight"),
            pick(q, false),
            q,
            e,
        )?;
        if gpt_oss {
            gpt_oss_layer(&mut w, &mut rng, l, spec)?;
        } else {
            if phi3 {
                add(
                    &mut w,
                    &mut rng,
                    &b("ffn_up.weight"),
                    pick(e, false),
                    e,
                    2 * ff,
                )?;
            } else {
                add(
                    &mut w,
                    &mut rng,
                    &b("ffn_gate.weight"),
                    pick(e, false),
                    e,
                    ff,
                )?;
                add(&mut w, &mut rng, &b("ffn_up.weight"), pick(e, false), e, ff)?;
            }
            add(
                &mut w,
                &mut rng,
                &b("ffn_down.weight"),
                pick(ff, more),
                ff,
                e,
            )?;
        }
        if gemma {
            let norms = [
                ("attn_q_norm.weight", head_dim),
                ("attn_k_norm.weight", head_dim),
                ("post_attention_norm.weight", e),
                ("post_ffw_norm.weight", e),
            ];
            for (s, d) in norms {
                let nd = norm(&mut rng, d);
                w.add_tensor(&b(s), &[d as u64], GgmlType::F32, nd)
                    .map_err(gerr)?;
            }
        }
        if spec.arch == "qwen2" || gpt_oss {
            for (s, d) in [("attn_q.bias", q), ("attn_k.bias", kv), ("attn_v.bias", kv)] {
                let data = random_matrix(&mut rng, GgmlType::F32, 1, d, 0.1)?;
                w.add_tensor(&b(s), &[d as u64], GgmlType::F32, data)
                    .map_err(gerr)?;
            }
        }
    }
    Ok(w)
}

/// Layer `l`'s GPT-OSS tensors past the attention's matrices: the output projection's bias,
/// the sinks, the router and its bias, and the experts stacked `[cols, rows, experts]` with
/// their biases `[rows, experts]`.
fn gpt_oss_layer(w: &mut GgufWriter, rng: &mut Rng, l: usize, spec: &SynthSpec) -> Result<()> {
    let (e, ff, n) = (spec.n_embd, spec.n_ff, spec.experts);
    let name = |s: &str| format!("blk.{l}.{s}");
    let mut put = |rng: &mut Rng, s: &str, ty, dims: &[usize], std: f32| -> Result<()> {
        let rows: usize = dims[1..].iter().product();
        let data = random_matrix(rng, ty, rows, dims[0], std)?;
        let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        w.add_tensor(&name(s), &dims, ty, data)
            .map_err(|e| Error::Internal(e.to_string()))
    };
    let f32_ = GgmlType::F32;
    put(rng, "attn_output.bias", f32_, &[e], 0.1)?;
    // Sinks of the size of the scores (a few units), as trained ones run.
    put(rng, "attn_sinks.weight", f32_, &[spec.n_head], 1.0)?;
    put(
        rng,
        "ffn_gate_inp.weight",
        f32_,
        &[e, n],
        1.0 / (e as f32).sqrt(),
    )?;
    put(rng, "ffn_gate_inp.bias", f32_, &[n], 0.1)?;
    for (s, cols, rows) in [("gate", e, ff), ("up", e, ff), ("down", ff, e)] {
        let std = 1.0 / (cols as f32).sqrt();
        put(
            rng,
            &format!("ffn_{s}_exps.weight"),
            EXPERT_TYPE,
            &[cols, rows, n],
            std,
        )?;
        put(rng, &format!("ffn_{s}_exps.bias"), f32_, &[rows, n], 0.1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random MXFP4 weights have the asked-for spread: the scale is the power of two nearest
    /// std / 5.85, so the measured spread is within a factor sqrt(2) of it (plus sampling
    /// noise, small over 184k values).
    #[test]
    fn mxfp4_matrix_has_the_asked_for_spread() {
        let (rows, cols) = (64, 2880);
        for std in [1.0 / (2880f32).sqrt(), 0.3, 1.0] {
            let data = random_matrix(&mut Rng::new(3), GgmlType::MXFP4, rows, cols, std).unwrap();
            let mut v = vec![0f32; rows * cols];
            crate::quant::dequantize(GgmlType::MXFP4, &data, &mut v).unwrap();
            let rms = (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
            let ratio = rms / std as f64;
            assert!(
                (0.7..=1.42).contains(&ratio),
                "std {std}: rms {rms} ({ratio})"
            );
        }
    }
}
