//! SentencePiece vocabularies converted by `scripts/hf-to-gguf`: a Phi-3-style tokenizer (a
//! real SentencePiece BPE model with byte fallback, saved the way HF saves Phi-3) converted
//! from tokenizer.model and from tokenizer.json alone, against HF's token ids; and the
//! converter's refusal of a SentencePiece Unigram model. Fixtures: tests/fixtures/spm, built by
//! `scripts/reference/spm_tokenizer.py`.

mod common;

use llorch::gguf::Gguf;
use llorch::tokenizer::{TokenType, Tokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm")
}

fn reference() -> Value {
    let s = std::fs::read_to_string(dir().join("phi3/reference.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn load(file: &str) -> (Gguf, Tokenizer) {
    let g = Gguf::open(&dir().join("phi3").join(file)).expect("open converted GGUF");
    let t = Tokenizer::from_gguf(&g).expect("tokenizer from converted metadata");
    (g, t)
}

/// Every string, with and without BOS, must give HF's ids; returns the mismatches.
fn mismatches(tok: &Tokenizer, cases: &[Value], ids: &str) -> Vec<String> {
    let mut out = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        for (key, bos) in [(ids.to_string(), false), (format!("{ids}_bos"), true)] {
            let want = common::json_ids(&c[&key]);
            let got = tok.encode(text, true, bos).unwrap();
            if got != want {
                let p = |ids: &[u32]| -> Vec<String> {
                    ids.iter()
                        .map(|&i| tok.token_piece(i).unwrap_or("?").to_string())
                        .collect()
                };
                let short: String = text.chars().take(80).collect();
                let k = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
                let (g, w) = (
                    &got[k..got.len().min(k + 12)],
                    &want[k..want.len().min(k + 12)],
                );
                out.push(format!(
                    "{key} {short:?}: from token {k}\n  got  {g:?} {:?}\n  want {w:?} {:?}",
                    p(g),
                    p(w)
                ));
            }
        }
    }
    out
}

/// `ids`: the reference's key for the HF tokenizer.json form the file was converted from.
fn check(file: &str, ids: &str) {
    let (g, tok) = load(file);
    assert_eq!(
        g.get_str("tokenizer.ggml.model").unwrap(),
        Some("llama"),
        "{file}"
    );
    assert_eq!(
        tok.vocab_size(),
        1024,
        "{file}: 1000 pieces + 11 added, padded"
    );
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(1000), "{file}: <|endoftext|>");
    assert!(tok.adds_bos());
    assert_eq!(tok.token_type(0), Some(TokenType::Unknown));
    assert_eq!(tok.token_type(1), Some(TokenType::Control));
    assert_eq!(tok.token_piece(3 + 0x0A), Some("<0x0A>"));
    assert_eq!(tok.token_type(3 + 0x0A), Some(TokenType::Byte));
    assert_eq!(tok.token_type(1007), Some(TokenType::Control), "<|end|>");
    assert_eq!(tok.token_type(1023), Some(TokenType::Unused), "padding");
    assert!(
        tok.is_eog(1000) && tok.is_eog(1007),
        "<|endoftext|>, <|end|>"
    );

    let r = reference();
    let cases = r["cases"].as_array().unwrap();
    assert!(cases.len() >= 59);
    let bad = mismatches(&tok, cases, ids);
    assert!(
        bad.is_empty(),
        "{file}: {} of {} encodings differ from HF:\n{}",
        bad.len(),
        2 * cases.len(),
        bad.join("\n")
    );

    // Decoding gives HF's decoded text (special tokens as their text), and so the text
    // itself wherever HF's does.
    let mut round = 0;
    let dec = if ids == "ids" {
        "hf_decoded"
    } else {
        "metaspace_decoded"
    };
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want = c[dec].as_str().unwrap();
        let back = String::from_utf8(tok.decode(&common::json_ids(&c[ids])).unwrap()).unwrap();
        assert_eq!(back, want, "{file}: decode of {text:?}");
        round += usize::from(back == text);
    }
    assert!(round >= 40, "{file}: only {round} round trips");
    eprintln!(
        "{file}: {} strings x (no BOS, BOS) equal to HF; decode equal to HF's for all, \
         the text itself for {round}",
        cases.len()
    );
}

#[test]
fn phi3_spm_from_tokenizer_model() {
    check("phi3-spm.gguf", "ids");
}

#[test]
fn phi3_spm_from_tokenizer_json() {
    check("phi3-spm-json.gguf", "ids");
}

/// tokenizer.json as transformers 5 saves a Llama tokenizer (Metaspace, prepend_scheme
/// "first": no `▁` is added before text that starts with a space).
#[test]
fn phi3_spm_metaspace_form() {
    check("phi3-spm-metaspace.gguf", "metaspace_ids");
}

/// The conversions from tokenizer.model and from tokenizer.json alone hold the same pieces,
/// types and order of scores.
#[test]
fn tokenizer_model_and_json_agree() {
    let (a, ta) = load("phi3-spm.gguf");
    let (b, tb) = load("phi3-spm-json.gguf");
    let n = ta.vocab_size() as u32;
    assert_eq!(n, tb.vocab_size() as u32);
    for i in 0..n {
        assert_eq!(ta.token_piece(i), tb.token_piece(i), "token {i}");
        assert_eq!(ta.token_type(i), tb.token_type(i), "token {i}");
    }
    // The scores differ in scale (SentencePiece's own vs minus the first merge's rank, with
    // several merges per piece) but must order the normal pieces alike: that order is all
    // that merging by score uses.
    let order = |g: &Gguf| {
        let s = g.get_f32_array("tokenizer.ggml.scores").unwrap().unwrap();
        let mut ids: Vec<u32> = (0..n)
            .filter(|&i| ta.token_type(i) == Some(TokenType::Normal))
            .collect();
        ids.sort_by(|&x, &y| s[y as usize].total_cmp(&s[x as usize]).then(x.cmp(&y)));
        ids
    };
    assert_eq!(order(&a), order(&b));
    for g in [&a, &b] {
        assert_eq!(
            g.get_bool("tokenizer.ggml.add_space_prefix").unwrap(),
            Some(true)
        );
        assert_eq!(
            g.get_str("tokenizer.llorch.space_prefix").unwrap(),
            Some("each_fragment")
        );
    }
}

/// The converter refuses a SentencePiece Unigram model with a clear message (the engine's
/// `llama` tokenizer is BPE by score). The Python is `LLORCH_PYTHON` (scripts/test-all sets
/// it to a venv with gguf and numpy; then it must work), else python3, skipped where that
/// lacks gguf or numpy.
#[test]
fn converter_refuses_unigram() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let named = std::env::var("LLORCH_PYTHON").ok();
    let python = named.clone().unwrap_or_else(|| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import gguf, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            named.is_none(),
            "LLORCH_PYTHON={python} lacks gguf or numpy"
        );
        eprintln!("skipped: python3 with gguf and numpy is not available");
        return;
    }
    let out = std::env::temp_dir().join(format!("llorch-unigram-{}.gguf", std::process::id()));
    let o = Command::new(&python)
        .arg(root.join("scripts/hf-to-gguf"))
        .arg(dir().join("unigram"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "converted a Unigram model: {err}");
    assert!(!out.exists());
    assert!(
        err.contains("SentencePiece Unigram tokenizers are not supported"),
        "unclear message: {err}"
    );
}
