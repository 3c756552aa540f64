//! The tokenizers of the real models against the golden ids (HF tokenizers built from the
//! same GGUF metadata), decode round trips, streaming detokenization and chat templates.

mod common;

use common::*;
use llorch::gguf::Gguf;
use llorch::tokenizer::chat::ChatMessage;
use llorch::tokenizer::{chat, StreamDecoder, Tokenizer};

fn load(model: &str) -> (Gguf, Tokenizer) {
    let g = Gguf::open(&model_path(model)).expect("open model");
    let t = Tokenizer::from_gguf(&g).expect("tokenizer from metadata");
    (g, t)
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
            let want = common::json_ids(&c["ids"]);
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

/// The whole Apache-2.0 text (12 KB: the per-call word cache is on) must encode to the
/// golden token count, and equal the text encoded in chunks of 500–1000 bytes (under the cache
/// threshold). Chunks are cut before a space between two letters, a piece boundary in every
/// split here (a letter run ends there and " word" starts a piece; for SentencePiece a word
/// starts at the `▁`).
fn check_long_text(model: &str, golden_count: Option<usize>) {
    let (_g, tok) = load(model);
    let text = std::fs::read_to_string(golden_dir().join("Apache-2.0.txt")).unwrap();
    assert!(text.len() > 4096);
    let whole = tok.encode(&text, true, false).unwrap();
    if let Some(n) = golden_count {
        assert_eq!(whole.len(), n, "{model}: token count of Apache-2.0.txt");
    }
    let mut parts = Vec::new();
    let mut start = 0;
    let b = text.as_bytes();
    for i in 1..b.len() - 1 {
        if i - start > 500
            && b[i] == b' '
            && b[i - 1].is_ascii_alphabetic()
            && b[i + 1].is_ascii_alphabetic()
        {
            parts.extend(tok.encode(&text[start..i], true, false).unwrap());
            start = i;
        }
    }
    parts.extend(tok.encode(&text[start..], true, false).unwrap());
    assert!(text.len() / start < 30, "too few chunks");
    assert_eq!(whole, parts, "{model}: whole text vs chunk by chunk");
    assert_eq!(
        String::from_utf8(tok.decode(&whole).unwrap()).unwrap(),
        text
    );
}

#[test]
fn long_text_qwen() {
    let n = golden_json("qwen25coder05b.json")["perplexity"][0]["text_tokens"]
        .as_u64()
        .unwrap();
    check_long_text(QWEN_05B, Some(n as usize));
}

#[test]
fn long_text_smollm() {
    let n = golden_json("smollm2_135m.json")["perplexity"][0]["text_tokens"]
        .as_u64()
        .unwrap();
    check_long_text(SMOLLM2, Some(n as usize));
}

#[test]
fn long_text_gemma() {
    check_long_text(GEMMA3, None);
}

/// The prompt ids of the model goldens: plain prompts, and chat-rendered haiku prompts
/// (template + special tokens + BOS rule end to end).
#[test]
fn model_golden_prompt_ids() {
    for (model, file) in [
        (QWEN_05B, "qwen25coder05b.json"),
        (SMOLLM2, "smollm2_135m.json"),
    ] {
        let (g, tok) = load(model);
        let gold = golden_json(file);
        for p in gold["prompts"].as_array().unwrap() {
            let text = p["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text, true, true).unwrap(),
                common::json_ids(&p["ids"]),
                "{model} {text:?}"
            );
        }
        let template = g.get_str("tokenizer.chat_template").unwrap().unwrap();
        for h in gold["haiku"].as_array().into_iter().flatten() {
            let word = h["word"].as_str().unwrap();
            let user = format!(
                "Write a haiku about GPU computing that includes the word \"{word}\". Output only the haiku."
            );
            let msgs = [ChatMessage {
                role: "user".into(),
                content: user,
            }];
            let prompt = chat::render(template, &msgs, true, "", "").unwrap();
            assert_eq!(
                tok.encode(&prompt, true, true).unwrap(),
                common::json_ids(&h["prompt_ids"]),
                "{model} {word}"
            );
        }
    }
}
