//! `llorch tokenize` and `llorch chat-template` on the real models.

mod common;

use common::*;

#[test]
fn tokenize_prints_golden_ids() {
    let m = model_path(QWEN_05B);
    let m = m.to_str().unwrap();
    let (ok, out, err) = llorch(
        &[
            "tokenize",
            "-m",
            m,
            "--pieces",
            "<|im_start|>user\nhi<|im_end|>",
        ],
        b"",
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "[151644,872,198,6023,151645]\n[\"<|im_start|>\",\"user\",\"\\n\",\"hi\",\"<|im_end|>\"]\n"
    );
    // --no-special: the markers are plain text; stdin when no TEXT.
    let (ok, out, _) = llorch(&["tokenize", "-m", m, "--no-special"], b"<|im_end|>");
    assert!(ok);
    let ids: Vec<u32> = serde_json::from_str(&out).unwrap();
    assert!(ids.len() > 1 && !ids.contains(&151645), "{ids:?}");
    // Gemma asks for BOS.
    let g = model_path(GEMMA3);
    let (ok, out, _) = llorch(
        &[
            "tokenize",
            "-m",
            g.to_str().unwrap(),
            "--bos",
            "Hello, world!",
        ],
        b"",
    );
    assert!(ok);
    assert_eq!(out, "[2,9259,236764,1902,236888]\n");
}

#[test]
fn tokenize_rejects_bad_input() {
    let m = model_path(QWEN_05B);
    let m = m.to_str().unwrap();
    let (ok, _, err) = llorch(&["tokenize", "-m", m], b"ab\xFFcd");
    assert!(
        !ok && err.contains("not valid UTF-8") && err.contains("offset 2"),
        "{err}"
    );
    let (ok, _, err) = llorch(&["tokenize", "x"], b"");
    assert!(!ok && err.contains("no model given"), "{err}");
    let (ok, _, err) = llorch(&["tokenize", "-m", "/nonexistent.gguf", "x"], b"");
    assert!(!ok && err.contains("/nonexistent.gguf"), "{err}");
}

#[test]
fn chat_template_renders_golden() {
    let gold = golden_json("tokenize_smol.json");
    let case = &gold["chat"][1];
    let m = model_path(SMOLLM2);
    let msgs = serde_json::to_vec(&case["messages"]).unwrap();
    let (ok, out, err) = llorch(&["chat-template", "-m", m.to_str().unwrap()], &msgs);
    assert!(ok, "{err}");
    assert_eq!(out, case["rendered"].as_str().unwrap());
    let (ok, out, _) = llorch(
        &[
            "chat-template",
            "-m",
            m.to_str().unwrap(),
            "--no-generation-prompt",
        ],
        &msgs,
    );
    assert!(ok);
    assert_eq!(
        out,
        case["rendered"]
            .as_str()
            .unwrap()
            .strip_suffix("<|im_start|>assistant\n")
            .unwrap()
    );
    // Gemma 3's file has no template: a clear error unless one is passed.
    let g = model_path(GEMMA3);
    let (ok, _, err) = llorch(&["chat-template", "-m", g.to_str().unwrap()], &msgs);
    assert!(!ok && err.contains("no chat template"), "{err}");
    let (ok, _, err) = llorch(
        &["chat-template", "-m", m.to_str().unwrap()],
        b"{\"role\": 1}",
    );
    assert!(!ok && err.contains("JSON list"), "{err}");
}
