//! The reader on the real models: architecture, tensor counts, data inside the file.

mod common;

use llorch::gguf::Gguf;
use std::collections::HashSet;

fn check(name: &str, arch: &str, n_tensors: usize) {
    let path = common::model_path(name);
    let g = Gguf::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        matches!(g.version(), 2 | 3),
        "{name}: version {}",
        g.version()
    );
    assert_eq!(
        g.get_str("general.architecture").unwrap(),
        Some(arch),
        "{name}"
    );
    assert_eq!(g.tensors().len(), n_tensors, "{name}");
    let file_len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(g.file_size(), file_len);
    assert_eq!(g.data_offset() % g.alignment(), 0);

    // Every tensor's bytes lie inside the file, are exactly its size, and no two overlap.
    let mut spans: Vec<(u64, u64, &str)> = Vec::new();
    for t in g.tensors() {
        let start = g.data_offset() + t.offset;
        assert!(
            start + t.size <= file_len,
            "{name}: tensor {} past the end",
            t.name
        );
        assert_eq!(
            t.ty.bytes_for(t.n_elements()),
            Some(t.size),
            "{name}: {}",
            t.name
        );
        assert_eq!(g.tensor_data(t).len() as u64, t.size, "{name}: {}", t.name);
        assert!(std::ptr::eq(g.tensor(&t.name).unwrap(), t));
        spans.push((start, start + t.size, &t.name));
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "{name}: {} overlaps {}", w[0].2, w[1].2);
    }
    // The biggest (last) tensor ends within one alignment of the end of the file.
    assert!(
        file_len - spans.last().unwrap().1 < g.alignment(),
        "{name}: trailing bytes"
    );
    let names: HashSet<&str> = g.tensors().iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains("token_embd.weight"), "{name}");

    // Tokenizer metadata the tokenizer and model code rely on.
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert!(tokens.len() > 40_000, "{name}: {} tokens", tokens.len());
    assert_eq!(g.array_len("tokenizer.ggml.tokens"), Some(tokens.len()));
    let embd = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        embd.dims[1] as usize,
        tokens.len(),
        "{name}: embedding rows = vocabulary"
    );
    let n_embd = g
        .get_u64(&format!("{arch}.embedding_length"))
        .unwrap()
        .unwrap();
    assert_eq!(embd.dims[0], n_embd, "{name}");
    let n_layer = g.get_u32(&format!("{arch}.block_count")).unwrap().unwrap();
    assert!(
        names.contains(format!("blk.{}.attn_q.weight", n_layer - 1).as_str()),
        "{name}"
    );
    assert!(g.get_str("tokenizer.ggml.model").unwrap().is_some());
    // Every metadata value decodes (metadata() walks all of it).
    assert!(g.metadata().len() >= 20, "{name}");
}

#[test]
fn qwen25_coder_05b() {
    check(common::QWEN_05B, "qwen2", 291);
}

#[test]
fn smollm2_135m() {
    check(common::SMOLLM2, "llama", 272);
}

#[test]
fn gemma3_270m() {
    check(common::GEMMA3, "gemma3", 236);
}

#[test]
fn qwen25_coder_15b() {
    check(common::QWEN_15B, "qwen2", 339);
}
