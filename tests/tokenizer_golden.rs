//! The tokenizers of the real models against the golden ids (HF tokenizers built from the
//! same GGUF metadata), decode round trips, streaming detokenization and chat templates.

mod common;

use common::*;
use llorch::gguf::Gguf;
use llorch::model::ChatMessage;
use llorch::tokenizer::{chat, StreamDecoder, Tokenizer};
use serde_json::Value;

fn load(model: &str) -> (Gguf, Tokenizer) {
    let g = Gguf::open(&model_path(model)).expect("open model");
    let t = Tokenizer::from_gguf(&g).expect("tokenizer from metadata");
    (g, t)
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check_golden(model: &str, golden: &str) {
    let (_g, tok) = load(model);
    let gold = golden_json(golden);
    let mut failures = Vec::new();
    for (mode, add_bos) in [("tokenize", false), ("tokenize_special", true)] {
        let cases = gold[mode].as_array().unwrap();
        assert_eq!(cases.len(), 30, "{golden} {mode}");
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let want = ids_of(&c["ids"]);
            let got = tok.encode(text, true, add_bos).unwrap();
            if got != want {
                let pieces: Vec<String> = want.iter().map(|&i| tok.token_text(i)).collect();
                failures.push(format!(
                    "{mode} {text:?}\n  got  {got:?}\n  want {want:?} {pieces:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{model}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_ids_qwen() {
    check_golden(QWEN_05B, "tokenize_q05.json");
}

#[test]
fn golden_ids_smollm() {
    check_golden(SMOLLM2, "tokenize_smol.json");
}

#[test]
fn golden_ids_gemma() {
    check_golden(GEMMA3, "tokenize_gemma3.json");
}

/// A small deterministic generator for the random split points.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Streaming the ids in the given steps must give exactly the one-shot text.
fn stream(tok: &Tokenizer, ids: &[u32], cuts: &[usize]) -> String {
    let mut d = StreamDecoder::new();
    let mut out = String::new();
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&ids.len())) {
        let mut bytes = Vec::new();
        for &id in &ids[prev..c] {
            bytes.extend(tok.token_bytes(id).unwrap());
        }
        let s = d.push(&bytes);
        out.push_str(&s);
        prev = c;
    }
    out + &d.flush()
}

fn check_roundtrip(model: &str, golden: &str) {
    let (_g, tok) = load(model);
    let gold = golden_json(golden);
    let mut rng = Lcg(0x5eed);
    let mut long_text = String::new();
    for c in gold["tokenize"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        long_text.push_str(text);
        long_text.push('\n');
        for parse_special in [true, false] {
            let ids = tok.encode(text, parse_special, false).unwrap();
            let back = tok.decode(&ids).unwrap();
            assert_eq!(
                String::from_utf8(back).unwrap(),
                text,
                "{model} decode(encode({text:?}))"
            );
            // One step per token, then every single split point (each step may end mid-character).
            let each: Vec<usize> = (1..ids.len()).collect();
            assert_eq!(
                stream(&tok, &ids, &each),
                text,
                "{model} token by token {text:?}"
            );
            for cut in 0..=ids.len() {
                assert_eq!(
                    stream(&tok, &ids, &[cut]),
                    text,
                    "{model} split at {cut} {text:?}"
                );
            }
        }
    }
    // A long sequence: all the strings together, random step sizes.
    let ids = tok.encode(&long_text, true, false).unwrap();
    assert_eq!(
        String::from_utf8(tok.decode(&ids).unwrap()).unwrap(),
        long_text
    );
    for _ in 0..200 {
        let mut cuts = Vec::new();
        let mut at = 0;
        loop {
            at += 1 + rng.below(4);
            if at >= ids.len() {
                break;
            }
            cuts.push(at);
        }
        assert_eq!(
            stream(&tok, &ids, &cuts),
            long_text,
            "{model} random steps {cuts:?}"
        );
    }
}

#[test]
fn roundtrip_and_stream_qwen() {
    check_roundtrip(QWEN_05B, "tokenize_q05.json");
}

#[test]
fn roundtrip_and_stream_smollm() {
    check_roundtrip(SMOLLM2, "tokenize_smol.json");
}

#[test]
fn roundtrip_and_stream_gemma() {
    check_roundtrip(GEMMA3, "tokenize_gemma3.json");
}

fn check_chat(model: &str, golden: &str) {
    let (g, tok) = load(model);
    let template = g
        .get_str("tokenizer.chat_template")
        .unwrap()
        .expect("model has a chat template");
    let gold = golden_json(golden);
    let cases = gold["chat"].as_array().unwrap();
    assert!(!cases.is_empty());
    let bos = tok.bos_id().map(|i| tok.token_text(i)).unwrap_or_default();
    let eos = tok.eos_id().map(|i| tok.token_text(i)).unwrap_or_default();
    for c in cases {
        let messages: Vec<ChatMessage> = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage {
                role: m["role"].as_str().unwrap().into(),
                content: m["content"].as_str().unwrap().into(),
            })
            .collect();
        let agp = c["add_generation_prompt"].as_bool().unwrap();
        let got = chat::render(template, &messages, agp, &bos, &eos).unwrap();
        assert_eq!(
            got,
            c["rendered"].as_str().unwrap(),
            "{model} chat {messages:?}"
        );
    }
}

#[test]
fn chat_template_qwen() {
    check_chat(QWEN_05B, "tokenize_q05.json");
}

#[test]
fn chat_template_smollm() {
    check_chat(SMOLLM2, "tokenize_smol.json");
}

#[test]
fn gemma_has_no_template_and_eog_tokens() {
    let (g, tok) = load(GEMMA3);
    assert_eq!(g.get_str("tokenizer.chat_template").unwrap(), None);
    assert!(golden_json("tokenize_gemma3.json")["chat"]
        .as_array()
        .unwrap()
        .is_empty());
    let eot = tok.special_id("<end_of_turn>").unwrap();
    assert!(tok.is_eog(eot) && tok.is_eog(tok.eos_id().unwrap()));
    assert!(!tok.is_eog(tok.bos_id().unwrap()));
    assert!(!tok.is_eog(tok.special_id("<start_of_turn>").unwrap()));
}

#[test]
fn eog_tokens_qwen_smollm() {
    for model in [QWEN_05B, SMOLLM2] {
        let (_g, tok) = load(model);
        for t in ["<|im_end|>", "<|endoftext|>"] {
            assert!(tok.is_eog(tok.special_id(t).unwrap()), "{model} {t}");
        }
        assert!(
            !tok.is_eog(tok.special_id("<|im_start|>").unwrap()),
            "{model}"
        );
        let hello = tok.encode("Hello", false, false).unwrap();
        assert!(!tok.is_eog(hello[0]));
    }
}

#[test]
fn special_tokens_are_text_without_parse_special() {
    let (_g, tok) = load(QWEN_05B);
    let plain = tok.encode("<|im_start|>user", false, false).unwrap();
    assert!(
        !plain.contains(&tok.special_id("<|im_start|>").unwrap()),
        "{plain:?}"
    );
    assert_eq!(
        String::from_utf8(tok.decode(&plain).unwrap()).unwrap(),
        "<|im_start|>user"
    );
    let parsed = tok.encode("<|im_start|>user", true, false).unwrap();
    assert_eq!(parsed[0], 151644);
}
