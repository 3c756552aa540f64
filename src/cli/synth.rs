//! `llorch synth`: write a deterministic synthetic model of a real shape.

use super::Args;
use llorch::model::synth::{build, preset, SynthSpec, TypeMix, PRESETS};

const USAGE: &str = "usage: llorch synth --preset NAME [--seed S] [overrides] -o OUT.gguf
Write a synthetic model (random weights, real shape and tensor types). Same preset, overrides
and seed give the same bytes. Presets: qwen2-0.5b, qwen2-1.5b, qwen2-7b (Q4_K_M mix),
smollm2-135m (Q4_1 mix), gemma3-270m, gemma3-4b, phi3-mini, gpt-oss-20b (gpt-oss mix).
Overrides: --arch qwen2|llama|gemma3|phi3|gpt-oss --layers N --embd N --ff N --heads N
           --kv-heads N --vocab N --ctx N --mix q4_k_m|q4_1|gpt-oss --experts N
           --experts-used K";

pub fn run(args: &[String]) -> Result<(), String> {
    let a = Args::parse(
        args,
        &[],
        &[
            "--preset",
            "-o",
            "--output",
            "--seed",
            "--arch",
            "--layers",
            "--embd",
            "--ff",
            "--heads",
            "--kv-heads",
            "--vocab",
            "--ctx",
            "--mix",
            "--experts",
            "--experts-used",
        ],
    )?;
    if a.help {
        println!("{USAGE}");
        return Ok(());
    }
    let name = a
        .value(&["--preset"])
        .map(String::from)
        .ok_or("--preset is required")?;
    let mut spec: SynthSpec = preset(&name)
        .ok_or_else(|| format!("unknown preset '{name}' (known: {})", PRESETS.join(", ")))?;
    let out = a
        .value(&["-o", "--output"])
        .map(String::from)
        .ok_or("an output path is required (-o OUT.gguf)")?;
    let seed = a.parsed(&["--seed"], 1u64)?;
    if let Some(arch) = a.value(&["--arch"]) {
        spec.arch = arch.to_string();
    }
    spec.n_layer = a.parsed(&["--layers"], spec.n_layer)?;
    spec.n_embd = a.parsed(&["--embd"], spec.n_embd)?;
    spec.n_ff = a.parsed(&["--ff"], spec.n_ff)?;
    spec.n_head = a.parsed(&["--heads"], spec.n_head)?;
    spec.n_head_kv = a.parsed(&["--kv-heads"], spec.n_head_kv)?;
    spec.vocab = a.parsed(&["--vocab"], spec.vocab)?;
    spec.n_ctx = a.parsed(&["--ctx"], spec.n_ctx)?;
    spec.experts = a.parsed(&["--experts"], spec.experts)?;
    spec.experts_used = a.parsed(&["--experts-used"], spec.experts_used)?;
    if let Some(mix) = a.value(&["--mix"]) {
        spec.mix = match mix {
            "q4_k_m" => TypeMix::Q4KM,
            "q4_1" => TypeMix::Q4_1,
            "gpt-oss" => TypeMix::GptOss,
            _ => return Err(format!("unknown mix '{mix}' (q4_k_m, q4_1 or gpt-oss)")),
        };
    }
    a.expect_positional(0, "no positional arguments")?;
    let w = build(&spec, seed).map_err(|e| e.to_string())?;
    w.write_file(std::path::Path::new(&out))
        .map_err(|e| e.to_string())?;
    eprintln!("wrote {out}: {name} seed {seed}");
    Ok(())
}
