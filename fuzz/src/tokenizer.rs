//! Tokenizer cases on the real models' tokenizers (byte-level BPE and SentencePiece): random text
//! through encode and back, random bytes through `encode_bytes`, random token ids (in and out of
//! the vocabulary) through decode and the streaming decoder.
//! Properties: nothing panics; encoded ids are in the vocabulary; decode(encode(text)) is the
//! text; decode fails exactly when an id is out of range; streaming the tokens' bytes in any
//! steps gives exactly the lossy UTF-8 of the whole decode, in whole characters.

use crate::rng::Rng;
use llorch::tokenizer::{StreamDecoder, TokenType, Tokenizer};

/// Pieces random text is made of: scripts, spaces, digits, emoji, controls, special tokens.
const PIECES: &[&str] = &[
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "\r\n",
    "a",
    "Hello",
    " world",
    "don't",
    "'s",
    "123",
    "4567",
    "3.14",
    "é",
    "ñ",
    "ß",
    "你好",
    "日本語",
    "한국어",
    "Ελληνικά",
    "русский",
    "עברית",
    "العربية",
    "हिन्दी",
    "🙂",
    "👍🏽",
    "🇫🇷",
    "e\u{301}",
    "\u{200b}",
    "\u{feff}",
    "\u{0}",
    "\u{7f}",
    "\u{fffd}",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<s>",
    "</s>",
    "<unk>",
    "<pad>",
    "<0x0A>",
    "▁",
    "Ġ",
    "```",
    "    ",
    "!!!",
    "...",
    "--",
    "://",
    "@#$%",
];

/// Random text: pieces, random characters, and now and then a long run of one piece.
pub fn text(rng: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..rng.below(24) {
        match rng.below(8) {
            0 => s.push(char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('?')),
            1 if rng.one_in(8) => {
                let piece = *rng.pick(PIECES);
                s.push_str(&piece.repeat(1 + rng.below(300)))
            }
            _ => {
                let piece: &&str = rng.pick(PIECES);
                s.push_str(piece)
            }
        }
    }
    s
}

/// Random ids: mostly in the vocabulary, some just past it, some anywhere.
pub fn ids(rng: &mut Rng, vocab: usize) -> Vec<u32> {
    (0..rng.below(40))
        .map(|_| match rng.below(10) {
            0 => (vocab + rng.below(3)) as u32,
            1 => rng.next_u64() as u32,
            _ => rng.below(vocab) as u32,
        })
        .collect()
}

/// `text` through every encode mode and back. A byte the vocabulary has no token for becomes
/// the unknown token (SmolLM2 lacks a few, with `<|endoftext|>` as its unknown token, as in
/// its Hugging Face tokenizer): such text cannot come back, the rest must.
pub fn check_text(tok: &Tokenizer, text: &str) {
    let plain = tok.encode(text, false, false).unwrap();
    let lossless = !plain.iter().any(|&id| {
        matches!(
            tok.token_type(id),
            Some(TokenType::Unknown | TokenType::Control)
        )
    });
    for parse_special in [false, true] {
        for add_bos in [false, true] {
            let ids = tok
                .encode(text, parse_special, add_bos)
                .unwrap_or_else(|e| panic!("encode({text:?}) failed: {e}"));
            assert!(
                ids.iter().all(|&id| (id as usize) < tok.vocab_size()),
                "encode({text:?}) made an id outside the vocabulary: {ids:?}"
            );
            if add_bos || !lossless {
                continue;
            }
            let back = tok.decode(&ids).unwrap();
            // SentencePiece writes spaces as U+2581 and reads every U+2581 back as a space.
            let want = if uses_spm_spaces(tok) {
                text.replace('\u{2581}', " ")
            } else {
                text.to_string()
            };
            assert_eq!(
                String::from_utf8_lossy(&back),
                want,
                "decode(encode({text:?}, parse_special={parse_special})) = {ids:?}"
            );
        }
    }
}

/// Whether the tokenizer stores spaces as U+2581 (SentencePiece).
fn uses_spm_spaces(tok: &Tokenizer) -> bool {
    tok.encode(" ", false, false)
        .ok()
        .and_then(|ids| ids.first().and_then(|&id| tok.token_piece(id)))
        .is_some_and(|p| p.contains('\u{2581}'))
}

/// Ids through decode and the streaming decoder, fed in the steps `cuts` picks.
pub fn check_ids(tok: &Tokenizer, ids: &[u32], rng: &mut Rng) {
    let out_of_range = ids.iter().any(|&id| id as usize >= tok.vocab_size());
    let decoded = tok.decode(ids);
    assert_eq!(decoded.is_err(), out_of_range, "decode({ids:?})");
    for &id in ids {
        let _ = (tok.token_text(id), tok.token_piece(id), tok.token_type(id));
        assert_eq!(
            tok.token_bytes(id).is_err(),
            id as usize >= tok.vocab_size()
        );
    }
    let Ok(decoded) = decoded else { return };
    let mut all = Vec::new();
    for &id in ids {
        all.extend(tok.token_bytes(id).unwrap());
    }
    let mut d = StreamDecoder::new();
    let mut streamed = String::new();
    let mut at = 0;
    while at < all.len() {
        let step = 1 + rng.below(6);
        let end = (at + step).min(all.len());
        streamed.push_str(&d.push(&all[at..end]));
        at = end;
    }
    streamed.push_str(&d.flush());
    assert_eq!(
        streamed,
        String::from_utf8_lossy(&all),
        "streaming the bytes of {ids:?}"
    );
    // decode drops the space a SentencePiece model's first token carries for its prefix.
    assert!(all.ends_with(&decoded), "decode({ids:?})");
}

/// Raw bytes: Ok exactly when they are UTF-8.
pub fn check_bytes(tok: &Tokenizer, bytes: &[u8]) {
    let r = tok.encode_bytes(bytes, true, false);
    assert_eq!(r.is_ok(), std::str::from_utf8(bytes).is_ok(), "{bytes:?}");
}

/// One fuzzer case on `tok`: the first byte picks text, ids or bytes.
pub fn check(tok: &Tokenizer, data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut rng = Rng::from_bytes(data);
    match mode % 3 {
        0 => check_text(tok, &String::from_utf8_lossy(rest)),
        1 => {
            let ids: Vec<u32> = rest
                .chunks(4)
                .map(|c| {
                    let mut b = [0u8; 4];
                    b[..c.len()].copy_from_slice(c);
                    u32::from_le_bytes(b) % (tok.vocab_size() as u32 + 8)
                })
                .collect();
            check_ids(tok, &ids, &mut rng)
        }
        _ => check_bytes(tok, rest),
    }
}
