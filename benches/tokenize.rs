//! Encode throughput on a large real text: `cargo bench --bench tokenize`.
//! The text is tests/golden/Apache-2.0.txt repeated to about 4 MB (override the golden
//! directory with LLORCH_GOLDEN_DIR). Models come from scripts/fetch-model, or are the GGUF
//! paths given as arguments (`cargo bench --bench tokenize -- a.gguf b.gguf`).

use llorch::gguf::Gguf;
use llorch::tokenizer::{Tokenizer, TokenizerMeta};
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
        .unwrap_or_else(|| root.join("tests/golden"));
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
    let given: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.ends_with(".gguf"))
        .collect();
    let models: Vec<(String, PathBuf)> = if given.is_empty() {
        ["qwen2.5-coder-0.5b", "smollm2-135m", "gemma3-270m"]
            .iter()
            .map(|n| (n.to_string(), model_path(n)))
            .collect()
    } else {
        given
            .iter()
            .map(|p| {
                (
                    p.rsplit('/').next().unwrap_or(p).to_string(),
                    PathBuf::from(p),
                )
            })
            .collect()
    };
    for (name, path) in models {
        let g = Gguf::open(&path).expect("open gguf");
        // Load: best of 5 (the machine is shared), metadata reading and building separately.
        let (mut read, mut load) = (f64::INFINITY, f64::INFINITY);
        let mut tok = None;
        for _ in 0..5 {
            let t0 = Instant::now();
            let meta = TokenizerMeta::from_gguf(&g).expect("tokenizer metadata");
            let r = t0.elapsed().as_secs_f64();
            tok = Some(Tokenizer::from_meta(&meta).expect("tokenizer"));
            read = read.min(r);
            load = load.min(t0.elapsed().as_secs_f64());
        }
        let tok = tok.expect("loaded");
        // Best of 3 runs: the machine is shared.
        let mut best = f64::INFINITY;
        let mut n = 0;
        for _ in 0..3 {
            let t = Instant::now();
            n = tok.encode(&text, false, false).expect("encode").len();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{name:20} vocab {:6}  load {:6.1} ms (metadata {:5.1} ms)  encode {:7.1} MB/s  ({n} tokens, {:.3} s)",
            tok.vocab_size(),
            load * 1e3,
            read * 1e3,
            mb / best,
            best
        );
    }
}
