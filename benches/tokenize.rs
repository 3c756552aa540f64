//! Encode throughput on a large real text: `cargo bench --bench tokenize`.
//! The text is shared/golden/Apache-2.0.txt repeated to about 4 MB (override the golden
//! directory with LLORCH_GOLDEN_DIR). Models come from scripts/fetch-model.

use llorch::gguf::Gguf;
use llorch::tokenizer::Tokenizer;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn model_path(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/fetch-model"))
        .arg(name)
        .output()
        .expect("fetch-model");
    assert!(
        out.status.success(),
        "fetch-model {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let golden = std::env::var_os("LLORCH_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/golden"));
    let base = std::fs::read_to_string(golden.join("Apache-2.0.txt")).expect("Apache-2.0.txt");
    let mut text = String::new();
    while text.len() < 4 << 20 {
        text.push_str(&base);
    }
    let mb = text.len() as f64 / 1e6;
    println!(
        "text: Apache-2.0.txt x{} = {:.2} MB",
        text.len() / base.len(),
        mb
    );
    for name in ["qwen2.5-coder-0.5b", "smollm2-135m", "gemma3-270m"] {
        let path = model_path(name);
        let g = Gguf::open(&path).expect("open gguf");
        let t0 = Instant::now();
        let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
        let load = t0.elapsed();
        // Best of 3 runs: the machine is shared.
        let mut best = f64::INFINITY;
        let mut n = 0;
        for _ in 0..3 {
            let t = Instant::now();
            n = tok.encode(&text, false, false).expect("encode").len();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{name:20} vocab {:6}  load {:6.1} ms  encode {:7.1} MB/s  ({n} tokens, {:.3} s)",
            tok.vocab_size(),
            load.as_secs_f64() * 1e3,
            mb / best,
            best
        );
    }
}
