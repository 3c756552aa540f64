//! `llorch synth`: write a deterministic synthetic model of a real shape.

use llorch::model::synth::{build, preset, SynthSpec, TypeMix, PRESETS};

/// Write a deterministic synthetic model of a real shape
///
/// Write a synthetic model (random weights, real shape and tensor types). Same preset, overrides
/// and seed give the same bytes. Presets: qwen2-0.5b, qwen2-1.5b, qwen2-7b (Q4_K_M mix),
/// smollm2-135m (Q4_1 mix), gemma3-270m, gemma3-4b, phi3-mini, gpt-oss-20b (gpt-oss mix).
/// The other options override the preset's shape.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The shape preset
    #[arg(long, value_name = "NAME")]
    preset: String,
    /// The GGUF file to write
    #[arg(short, long, value_name = "OUT.gguf")]
    output: String,
    /// RNG seed of the weights
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// qwen2, llama, gemma3, phi3 or gpt-oss
    #[arg(long, value_name = "ARCH")]
    arch: Option<String>,
    /// Layers
    #[arg(long, value_name = "N")]
    layers: Option<usize>,
    /// Embedding width
    #[arg(long, value_name = "N")]
    embd: Option<usize>,
    /// Feed-forward width
    #[arg(long, value_name = "N")]
    ff: Option<usize>,
    /// Attention heads
    #[arg(long, value_name = "N")]
    heads: Option<usize>,
    /// Key/value heads
    #[arg(long, value_name = "N")]
    kv_heads: Option<usize>,
    /// Vocabulary size
    #[arg(long, value_name = "N")]
    vocab: Option<usize>,
    /// Context length
    #[arg(long, value_name = "N")]
    ctx: Option<usize>,
    /// Tensor types: q4_k_m, q4_1, gpt-oss or f16
    #[arg(long, value_name = "MIX")]
    mix: Option<String>,
    /// Experts of a mixture-of-experts feed-forward (0: dense)
    #[arg(long, value_name = "N")]
    experts: Option<usize>,
    /// Experts each token uses
    #[arg(long, value_name = "K")]
    experts_used: Option<usize>,
}

pub fn run(a: Args) -> Result<(), String> {
    let name = a.preset;
    let mut spec: SynthSpec = preset(&name)
        .ok_or_else(|| format!("unknown preset '{name}' (known: {})", PRESETS.join(", ")))?;
    let (out, seed) = (a.output, a.seed);
    if let Some(arch) = a.arch {
        spec.arch = arch;
    }
    spec.n_layer = a.layers.unwrap_or(spec.n_layer);
    spec.n_embd = a.embd.unwrap_or(spec.n_embd);
    spec.n_ff = a.ff.unwrap_or(spec.n_ff);
    spec.n_head = a.heads.unwrap_or(spec.n_head);
    spec.n_head_kv = a.kv_heads.unwrap_or(spec.n_head_kv);
    spec.vocab = a.vocab.unwrap_or(spec.vocab);
    spec.n_ctx = a.ctx.unwrap_or(spec.n_ctx);
    spec.experts = a.experts.unwrap_or(spec.experts);
    spec.experts_used = a.experts_used.unwrap_or(spec.experts_used);
    if let Some(mix) = a.mix {
        spec.mix = match mix.as_str() {
            "q4_k_m" => TypeMix::Q4KM,
            "q4_1" => TypeMix::Q4_1,
            "gpt-oss" => TypeMix::GptOss,
            "f16" => TypeMix::F16,
            _ => {
                return Err(format!(
                    "unknown mix '{mix}' (q4_k_m, q4_1, gpt-oss or f16)"
                ))
            }
        };
    }
    let w = build(&spec, seed).map_err(|e| e.to_string())?;
    w.write_file(std::path::Path::new(&out))
        .map_err(|e| e.to_string())?;
    eprintln!("wrote {out}: {name} seed {seed}");
    Ok(())
}
