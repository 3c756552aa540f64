//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The golden references: `tests/golden/` of this repository (`$LLORCH_GOLDEN_DIR` overrides).
pub fn golden_dir() -> PathBuf {
    let p = std::env::var_os("LLORCH_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/golden"));
    assert!(
        p.is_dir(),
        "golden references not found at {} (set LLORCH_GOLDEN_DIR)",
        p.display()
    );
    p
}

/// Read and parse a golden JSON file.
pub fn golden_json(name: &str) -> serde_json::Value {
    let path = golden_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Path of a real model, fetched (and verified) by `scripts/fetch-model` if absent.
/// A failed fetch fails the test: it never silently skips.
pub fn model_path(name: &str) -> PathBuf {
    let out = Command::new(repo_root().join("scripts/fetch-model"))
        .arg(name)
        .output()
        .expect("cannot run scripts/fetch-model");
    assert!(
        out.status.success(),
        "scripts/fetch-model {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        Path::new(&path).is_file(),
        "fetch-model printed {} which is not a file",
        path.display()
    );
    path
}

pub const QWEN_05B: &str = "qwen2.5-coder-0.5b";
pub const SMOLLM2: &str = "smollm2-135m";
pub const GEMMA3: &str = "gemma3-270m";
pub const QWEN_15B: &str = "qwen2.5-coder-1.5b";

/// A tiny synthetic qwen2 model (2 layers, 64 wide, 512 tokens) with a context of `n_ctx`:
/// loads and generates in microseconds.
pub fn tiny_synth_spec(n_ctx: usize) -> llorch::model::synth::SynthSpec {
    llorch::model::synth::SynthSpec {
        arch: "qwen2".into(),
        n_layer: 2,
        n_embd: 64,
        n_ff: 256,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 0,
        sliding_window: None,
        vocab: 512,
        n_ctx,
        rope_base: 10000.0,
        mix: llorch::model::synth::TypeMix::Q4KM,
        experts: 0,
        experts_used: 0,
    }
}

/// A little-endian f32 file (the reference stages).
pub fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// ‖got − want‖ / ‖want‖, in f64.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// A JSON array of token ids.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Run the `llorch` binary with `stdin`: (success, stdout, stderr).
pub fn llorch(args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_llorch"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run llorch");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Our tap for a reference stage name (`l0.q`, `l3.out`, `embd`, `final_norm`).
pub fn find_tap<'t>(
    taps: &'t [llorch::backend::Tap],
    stage: &str,
) -> Option<&'t llorch::backend::Tap> {
    let (layer, name) = match stage.split_once('.') {
        Some((l, rest)) if l.starts_with('l') && l[1..].parse::<usize>().is_ok() => {
            (Some(l[1..].parse::<usize>().unwrap()), rest)
        }
        _ => (None, stage),
    };
    let ours = match name {
        "embd" => "embed",
        "attn_out" => "attn",
        "o_proj" => "attn_out",
        "attn_resid" => "attn_residual",
        "out" => "layer",
        "final_norm" => "output_norm",
        s => s,
    };
    taps.iter().find(|t| t.name == ours && t.layer == layer)
}

/// The HF transformers reference of tests/fixtures/embed (scripts/reference/embeddings_hf.py):
/// SmolLM2-135M's pooled final hidden states.
pub struct EmbedReference {
    pub texts: Vec<String>,
    pub ids: Vec<Vec<u32>>,
    pub dim: usize,
    /// [input][mean, last, cls][dim]
    pub data: Vec<f32>,
}

impl EmbedReference {
    pub fn load() -> EmbedReference {
        let dir = repo_root().join("tests/fixtures/embed");
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("smollm2-135m.json")).unwrap())
                .unwrap();
        assert_eq!(
            index["pooling_order"],
            serde_json::json!(["mean", "last", "cls"])
        );
        let inputs = index["inputs"].as_array().unwrap();
        EmbedReference {
            texts: inputs
                .iter()
                .map(|i| i["text"].as_str().unwrap().to_string())
                .collect(),
            ids: inputs.iter().map(|i| json_ids(&i["ids"])).collect(),
            dim: index["n_embd"].as_u64().unwrap() as usize,
            data: read_f32(&dir.join("smollm2-135m.bin")),
        }
    }

    /// Input `input`'s vector by `pooling`, not normalized.
    pub fn want(&self, input: usize, pooling: llorch::session::embed::Pooling) -> &[f32] {
        use llorch::session::embed::Pooling;
        let k = match pooling {
            Pooling::Mean => 0,
            Pooling::Last => 1,
            Pooling::Cls => 2,
        };
        let at = (input * 3 + k) * self.dim;
        &self.data[at..at + self.dim]
    }
}

/// The real model's path (LLORCH_REAL_MODEL) and a GPU context, or None after saying why a
/// GPU test skips (the device machine's tests: cuda_embed; cuda_real can share it).
pub fn real_model_and_gpu() -> Option<(PathBuf, std::sync::Arc<llorch::backend::Context>)> {
    use llorch::backend::{Context, ContextOptions, Device};
    let Some(path) = std::env::var_os("LLORCH_REAL_MODEL") else {
        eprintln!("skipped: LLORCH_REAL_MODEL is not set (the real model file for the GPU check)");
        return None;
    };
    match Context::new(ContextOptions {
        device: Device::Cuda(0),
        ..Default::default()
    }) {
        Ok(c) => Some((path.into(), c)),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// A real model (fetched if absent) loaded on a default CPU context.
pub fn cpu_model(name: &str) -> std::sync::Arc<llorch::model::Model> {
    let ctx = llorch::backend::Context::new(llorch::backend::ContextOptions::default()).unwrap();
    llorch::model::Model::load(&ctx, &model_path(name), None).unwrap()
}

/// `user` as one user turn through the model's chat template, ready for the assistant.
pub fn user_turn(m: &llorch::model::Model, user: &str) -> String {
    let msgs = [llorch::tokenizer::chat::ChatMessage {
        role: "user".into(),
        content: user.into(),
    }];
    m.apply_chat_template(&msgs, true, None).unwrap()
}

/// A session of `m` with a context of `n_ctx` and sampling seed `seed`, other options default.
pub fn session(
    m: &std::sync::Arc<llorch::model::Model>,
    n_ctx: u32,
    seed: u64,
) -> llorch::session::Session {
    let opts = llorch::session::SessionOptions {
        n_ctx,
        seed,
        ..Default::default()
    };
    llorch::session::Session::new(m.clone(), opts).unwrap()
}

/// Feeds `prompt` to `s`, then picks `n` tokens greedily, feeding each back: the tokens picked.
pub fn greedy_tokens(s: &mut llorch::session::Session, prompt: &[u32], n: usize) -> Vec<u32> {
    use llorch::backend::Logits;
    let mut logits = s.eval(prompt, Logits::Last).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = llorch::sampling::argmax(&logits);
        out.push(t);
        logits = s.eval(&[t], Logits::Last).unwrap();
    }
    out
}

/// A CUDA context and a synthetic model of `preset`'s shape (seed 1, context `n_ctx`) written
/// to a folder of its own under the temporary directory (the caller removes it: the file's
/// parent). None, after saying why on stderr, where no GPU is present.
pub fn gpu_synth_file(
    test: &str,
    preset: &str,
    n_ctx: usize,
) -> Option<(std::sync::Arc<llorch::backend::Context>, PathBuf)> {
    use llorch::backend::{Context, ContextOptions, Device};
    let ctx = match Context::new(ContextOptions {
        device: Device::Cuda(0),
        threads: 0,
        memory_budget: 0,
    }) {
        Ok(c) => c,
        Err(llorch::Error::NoDevice(why)) => {
            eprintln!("{test}: skipped: no CUDA device ({why})");
            return None;
        }
        Err(e) => panic!("{test}: {e}"),
    };
    let dir = std::env::temp_dir().join(format!("llorch-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{preset}.gguf"));
    let mut spec = llorch::model::synth::preset(preset).unwrap();
    spec.n_ctx = n_ctx;
    llorch::model::synth::build(&spec, 1)
        .unwrap()
        .write_file(&path)
        .unwrap();
    Some((ctx, path))
}
