//! Small tokenizers built in GGUF files written here: exact behaviour on hand-checkable
//! vocabularies, and every kind of inconsistent metadata or bad input is an error, not a panic.

use llorch::gguf::{Gguf, GgufWriter};
use llorch::tokenizer::{StreamDecoder, Tokenizer};
use llorch::Error;

/// The GPT-2 byte-level alphabet: the character that stands for each byte.
fn byte_char(b: u8) -> char {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    if printable(b as u32) {
        return char::from_u32(b as u32).unwrap();
    }
    let k = (0..b as u32).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + k).unwrap()
}

/// A byte-level BPE vocabulary: the 256 bytes, then "ab", "abc", "Ġab", "xyz", then
/// `<|end|>` (control) and `<tool>` (user-defined). Merges: `a b`, `ab c`, `Ġ ab`.
struct Bpe {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
    pre: Option<String>,
    eos: Option<u32>,
}

impl Bpe {
    fn new() -> Self {
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
        tokens.extend(["ab", "abc", "Ġab", "xyz", "<|end|>", "<tool>"].map(String::from));
        let mut types = vec![1; tokens.len()];
        types[260] = 3;
        types[261] = 4;
        Bpe {
            tokens,
            types,
            merges: ["a b", "ab c", "Ġ ab"].map(String::from).to_vec(),
            pre: None,
            eos: Some(260),
        }
    }
    fn writer(&self) -> GgufWriter {
        let mut w = GgufWriter::new();
        w.add_str("general.architecture", "test");
        w.add_str("tokenizer.ggml.model", "gpt2");
        if let Some(p) = &self.pre {
            w.add_str("tokenizer.ggml.pre", p);
        }
        w.add_str_array("tokenizer.ggml.tokens", &self.tokens);
        w.add_i32_array("tokenizer.ggml.token_type", &self.types);
        w.add_str_array("tokenizer.ggml.merges", &self.merges);
        if let Some(eos) = self.eos {
            w.add_u32("tokenizer.ggml.eos_token_id", eos);
        }
        w
    }
}

fn build(w: &GgufWriter) -> llorch::Result<Tokenizer> {
    let g = Gguf::from_bytes(w.to_bytes()).expect("writer output parses");
    Tokenizer::from_gguf(&g)
}

fn expect_bad(w: &GgufWriter, what: &str, needle: &str) {
    match build(w) {
        Err(Error::BadModel(m)) => {
            assert!(m.contains(needle), "{what}: message {m:?} lacks {needle:?}")
        }
        Err(e) => panic!("{what}: expected BadModel, got {e:?}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

fn id(c: char) -> u32 {
    (0..=255u8).find(|&b| byte_char(b) == c).unwrap() as u32
}

#[test]
fn tiny_bpe_encodes_as_worked_by_hand() {
    let tok = build(&Bpe::new().writer()).unwrap();
    assert_eq!(tok.vocab_size(), 262);
    // "abc" → a b c → ab c → abc; " ab" → Ġ a b → Ġ ab → Ġab; "abd": ab d.
    assert_eq!(tok.encode("abc", true, true).unwrap(), [257]);
    assert_eq!(
        tok.encode("abc ab abd", true, false).unwrap(),
        [257, 258, 258, id('d')]
    );
    // Without the merges path "xyz" is three bytes even though the vocabulary has it whole
    // (GPT-2 split); control text only becomes the token with parse_special, user-defined always.
    assert_eq!(
        tok.encode("xyz", true, false).unwrap(),
        [id('x'), id('y'), id('z')]
    );
    assert_eq!(tok.encode("a<|end|>", true, false).unwrap(), [id('a'), 260]);
    assert_eq!(tok.encode("<|end|>", false, false).unwrap().len(), 7);
    assert_eq!(
        tok.encode("a<tool>b", false, false).unwrap(),
        [id('a'), 261, id('b')]
    );
    assert!(tok.is_eog(260) && !tok.is_eog(261));
    // Every byte value round-trips (0x00–0xFF as text where valid UTF-8).
    let s = "\u{0}\t\n é€😀 \u{7f}";
    assert_eq!(
        tok.decode(&tok.encode(s, true, false).unwrap()).unwrap(),
        s.as_bytes()
    );
}

/// End of generation by control-token text: `<|end|>` ends a reply (Phi-3) unless the
/// vocabulary speaks harmony (GPT-OSS: `<|return|>`), where it only closes a message and the
/// reply ends on `<|return|>` or `<|call|>`; a token the file names EOS always ends it.
#[test]
fn end_of_generation_tokens_by_text() {
    let mut bpe = Bpe::new();
    bpe.eos = None;
    let tok = build(&bpe.writer()).unwrap();
    assert!(tok.is_eog(260), "<|end|> ends a Phi-3 style reply");
    bpe.tokens
        .extend(["<|return|>", "<|call|>"].map(String::from));
    bpe.types.extend([3, 3]);
    let tok = build(&bpe.writer()).unwrap();
    assert!(
        tok.is_eog(262) && tok.is_eog(263),
        "<|return|> and <|call|> end a harmony reply"
    );
    assert!(
        !tok.is_eog(260),
        "<|end|> closes a harmony message, not the reply"
    );
    bpe.eos = Some(260);
    assert!(
        build(&bpe.writer()).unwrap().is_eog(260),
        "the file's EOS always ends it"
    );
    // As user-defined (not control) tokens they end nothing.
    bpe.eos = None;
    bpe.types[262] = 4;
    bpe.types[263] = 4;
    let tok = build(&bpe.writer()).unwrap();
    assert!(!tok.is_eog(262) && !tok.is_eog(263) && tok.is_eog(260));
}

#[test]
fn llama_bpe_takes_whole_vocabulary_words() {
    // Llama 3's ignore_merges: "xyz" is a vocabulary entry, so the pre-token is taken whole.
    let mut b = Bpe::new();
    b.pre = Some("llama-bpe".into());
    let tok = build(&b.writer()).unwrap();
    assert_eq!(tok.encode("xyz", true, false).unwrap(), [259]);
    assert_eq!(
        tok.encode("abc xyz", true, false).unwrap(),
        [257, id('Ġ'), id('x'), id('y'), id('z')]
    );
}

#[test]
fn unknown_pre_tokenizer_and_model_are_unsupported() {
    let mut b = Bpe::new();
    b.pre = Some("mystery".into());
    assert!(matches!(build(&b.writer()), Err(Error::Unsupported(m)) if m.contains("mystery")));
    let mut w = Bpe::new().writer();
    w.add_str("tokenizer.ggml.model", "bert");
    assert!(matches!(build(&w), Err(Error::Unsupported(m)) if m.contains("bert")));
}

#[test]
fn inconsistent_bpe_metadata_is_bad_model() {
    let mut b = Bpe::new();
    b.merges.push("q zz".into());
    expect_bad(&b.writer(), "merge names a missing token", "\"zz\"");
    let mut b = Bpe::new();
    b.merges.push("x y".into()); // "xy" is not a token
    expect_bad(&b.writer(), "merge result missing", "\"xy\"");
    let mut b = Bpe::new();
    b.merges.push("abc".into());
    expect_bad(&b.writer(), "merge without a space", "not two tokens");
    let mut b = Bpe::new();
    b.types.pop();
    expect_bad(
        &b.writer(),
        "token_type length",
        "token_type has 261 entries",
    );
    let mut b = Bpe::new();
    b.types[5] = 42;
    expect_bad(&b.writer(), "token type value", "unknown token type 42");

    let mut w = Bpe::new().writer();
    w.add_u32("tokenizer.ggml.eos_token_id", 262);
    expect_bad(&w, "eos beyond vocabulary", "eos_token_id = 262");
    let mut w = Bpe::new().writer();
    w.add_u32("tokenizer.ggml.padding_token_id", 1_000_000);
    expect_bad(&w, "pad beyond vocabulary", "padding_token_id");
    let mut w = Bpe::new().writer();
    w.add_bool("tokenizer.ggml.add_bos_token", true);
    expect_bad(&w, "add_bos without bos", "no bos_token_id");
    let mut w = Bpe::new().writer();
    w.add_f32_array("tokenizer.ggml.scores", &[0.0; 3]);
    expect_bad(&w, "scores length", "scores has 3 entries");
    let mut w = Bpe::new().writer();
    w.add_i32_array("tokenizer.ggml.tokens", &[1, 2]);
    expect_bad(&w, "tokens of the wrong type", "tokenizer.ggml.tokens");
    let mut w = GgufWriter::new();
    w.add_str("tokenizer.ggml.model", "gpt2");
    expect_bad(&w, "no tokens", "tokens is missing");
    let mut w = Bpe::new().writer();
    w.add_str_array::<&str>("tokenizer.ggml.tokens", &[]);
    expect_bad(&w, "empty vocabulary", "empty");
    let mut b = Bpe::new();
    b.merges.clear();
    let mut w = GgufWriter::new();
    w.add_str("tokenizer.ggml.model", "gpt2");
    w.add_str_array("tokenizer.ggml.tokens", &b.tokens);
    expect_bad(&w, "no merges", "merges is missing");
}

#[test]
fn bad_input_is_an_error() {
    let tok = build(&Bpe::new().writer()).unwrap();
    let e = tok.encode_bytes(b"ok\xC3(", true, false).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("offset 2")),
        "{e:?}"
    );
    assert_eq!(
        tok.encode_bytes("é".as_bytes(), true, false).unwrap().len(),
        2
    );
    assert!(matches!(tok.decode(&[1, 262]), Err(Error::InvalidArgument(m)) if m.contains("262")));
    assert!(tok.decode(&[u32::MAX]).is_err());
    assert!(tok.token_bytes(262).is_err());
    assert_eq!(tok.token_text(u32::MAX), "");
    assert!(!tok.is_eog(u32::MAX));
    assert_eq!(tok.encode("", true, true).unwrap(), Vec::<u32>::new());

    // A vocabulary without the byte 0x01 and no unknown token cannot encode it: an error.
    let mut b = Bpe::new();
    b.tokens[1] = "\u{1}".into(); // replaces the byte-level character of 0x01
    let tok = build(&b.writer()).unwrap();
    let e = tok.encode("a\u{1}", true, false).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("0x01")),
        "{e:?}"
    );
}

/// A SentencePiece vocabulary: control tokens, byte tokens, pieces with scores.
fn spm_writer(pieces: &[(&str, f32)], add_space_prefix: bool) -> GgufWriter {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (p, s) in pieces {
        tokens.push(p.to_string());
        types.push(1);
        scores.push(*s);
    }
    let mut w = GgufWriter::new();
    w.add_str("tokenizer.ggml.model", "llama");
    w.add_str_array("tokenizer.ggml.tokens", &tokens);
    w.add_i32_array("tokenizer.ggml.token_type", &types);
    w.add_f32_array("tokenizer.ggml.scores", &scores);
    w.add_u32("tokenizer.ggml.bos_token_id", 1);
    w.add_u32("tokenizer.ggml.eos_token_id", 2);
    w.add_u32("tokenizer.ggml.unknown_token_id", 0);
    w.add_bool("tokenizer.ggml.add_space_prefix", add_space_prefix);
    w
}

/// A tiny SentencePiece vocabulary after spm_writer's fixed tokens. ids: 259 ▁, 260 a,
/// 261 b, 262 ab, 263 ▁a, 264 ▁ab.
const TINY_SPM: [(&str, f32); 6] = [
    ("▁", -1.0),
    ("a", -1.0),
    ("b", -1.0),
    ("ab", -2.0),
    ("▁a", -3.0),
    ("▁ab", -4.0),
];

#[test]
fn tiny_spm_merges_by_score_with_byte_fallback() {
    // ids: 259 ▁, 260 a, 261 b, 262 ab, 263 ▁a, 264 ▁ab
    let pieces = TINY_SPM;
    let tok = build(&spm_writer(&pieces, true)).unwrap();
    // "▁ab": pairs (▁,a) -3 and (a,b) -2 → ab first, then (▁,ab) → ▁ab. BOS by default for SPM.
    assert_eq!(tok.encode("ab", false, true).unwrap(), [1, 264]);
    // "é" has no piece: its two UTF-8 bytes as <0xC3><0xA9>.
    assert_eq!(
        tok.encode("aé", false, false).unwrap(),
        [263, 3 + 0xC3, 3 + 0xA9]
    );
    // Control tokens as text only become tokens with parse_special; <0x41> never does.
    assert_eq!(tok.encode("a</s>", true, false).unwrap(), [263, 2]);
    assert_eq!(tok.encode("<0x41>", true, false).unwrap().len(), 7); // ▁ and six bytes
    let ids = tok.encode("ab ba é", false, false).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), "ab ba é".as_bytes());
    // Streaming splits the two bytes of é across pushes and still yields it whole.
    let mut d = StreamDecoder::new();
    let mut s = String::new();
    for &i in &ids {
        s += &d.push(&tok.token_bytes(i).unwrap());
    }
    assert_eq!(s + &d.flush(), " ab ba é"); // token bytes keep the prefix space

    let no_prefix = build(&spm_writer(&pieces, false)).unwrap();
    assert_eq!(no_prefix.encode("ab", false, false).unwrap(), [262]);
}

#[test]
fn inconsistent_spm_metadata_is_bad_model() {
    let mut w = spm_writer(&[("a", 0.0)], false);
    w.add_f32_array("tokenizer.ggml.scores", &[]);
    expect_bad(&w, "scores length", "scores has 0 entries");
    let mut w = spm_writer(&[("a", 0.0)], false);
    let mut t: Vec<String> = (0..260).map(|i| format!("t{i}")).collect();
    t[3] = "<0xZZ>".into();
    w.add_str_array("tokenizer.ggml.tokens", &t);
    expect_bad(&w, "malformed byte token", "<0xZZ>");
    let mut w = GgufWriter::new();
    w.add_str("tokenizer.ggml.model", "llama");
    w.add_str_array("tokenizer.ggml.tokens", &["a", "b"]);
    expect_bad(&w, "no scores", "scores is missing");
}

/// llorch's keys for HF's rules (written by scripts/hf-to-gguf): where the space prefix goes
/// and the special tokens that swallow whitespace around them.
#[test]
fn spm_space_prefix_rules_and_strip() {
    // ids: 259 ▁, 260 a, 261 b, 262 ab, 263 ▁a, 264 ▁ab; 2 is </s> (control).
    let pieces = TINY_SPM;
    let with = |prefix: Option<&str>, lstrip: &[i32], rstrip: &[i32]| {
        let mut w = spm_writer(&pieces, true);
        if let Some(p) = prefix {
            w.add_str("tokenizer.llorch.space_prefix", p);
        }
        if !lstrip.is_empty() {
            w.add_i32_array("tokenizer.llorch.lstrip_ids", lstrip);
        }
        if !rstrip.is_empty() {
            w.add_i32_array("tokenizer.llorch.rstrip_ids", rstrip);
        }
        build(&w).unwrap()
    };
    // SentencePiece's own rule: only the text's start, always.
    let t = with(None, &[], &[]);
    assert_eq!(t.encode("a</s>a", true, false).unwrap(), [263, 2, 260]);
    assert_eq!(t.encode(" a", true, false).unwrap(), [259, 263]);
    assert_eq!(
        t.encode("a </s> a", true, false).unwrap(),
        [263, 259, 2, 263]
    );
    // HF's Prepend normalizer: every fragment between special tokens.
    let t = with(Some("each_fragment"), &[], &[]);
    assert_eq!(t.encode("a</s>a", true, false).unwrap(), [263, 2, 263]);
    assert_eq!(t.encode("</s>a", true, false).unwrap(), [2, 263]);
    // Metaspace: not before text that already starts with a space.
    let t = with(Some("text_start_unless_space"), &[], &[]);
    assert_eq!(t.encode(" a", true, false).unwrap(), [263]);
    assert_eq!(t.encode("a</s>a", true, false).unwrap(), [263, 2, 260]);
    let t = with(Some("each_fragment_unless_space"), &[], &[]);
    assert_eq!(t.encode("a</s> a", true, false).unwrap(), [263, 2, 263]);
    // rstrip / lstrip: the whitespace after / before the token goes (newlines too).
    let t = with(None, &[], &[2]);
    assert_eq!(t.encode("a</s> \n a", true, false).unwrap(), [263, 2, 260]);
    let t = with(None, &[2], &[]);
    assert_eq!(t.encode("a \n</s>", true, false).unwrap(), [263, 2]);
    // Without parse_special nothing is matched, so nothing is stripped.
    assert_eq!(t.encode("a </s>", false, false).unwrap().len(), 1 + 1 + 4);

    let mut w = spm_writer(&pieces, true);
    w.add_str("tokenizer.llorch.space_prefix", "sometimes");
    expect_bad(&w, "unknown space_prefix", "space_prefix");
    let mut w = spm_writer(&pieces, true);
    w.add_i32_array("tokenizer.llorch.rstrip_ids", &[260]);
    expect_bad(&w, "rstrip of a normal piece", "no special token");
}
