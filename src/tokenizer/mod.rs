//! Tokenizers built only from GGUF metadata (`tokenizer.ggml.*`): byte-level BPE and
//! SentencePiece; special tokens; UTF-8-safe incremental detokenization; chat templates.
//! (Agreed interface; the implementation fills in the bodies.)
//!
//! Encoding runs in three stages: special/user-defined tokens written in the text are cut out
//! as single tokens (leftmost, longest match); each remaining fragment is split by the model's
//! pre-tokenizer (BPE) or has its spaces turned into `▁` (SentencePiece); the pieces are merged
//! (ranked merges, or highest piece score) into ids.

mod bpe;
pub mod chat;
mod pretok;
mod spm;
mod strftime;
mod table;
pub(crate) use table::hash_bytes;

pub use pretok::PreTokenizer;

use crate::gguf::Gguf;
use crate::{Error, Result};
use bpe::{Bpe, BpeScratch};
use spm::{Spm, SpmScratch, NONE};
use table::{Arena, FxHashMap, StrTable};

/// `tokenizer.ggml.token_type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
    /// Tokens that ordinary text pieces may become (merge results, whole pieces).
    fn is_text(self) -> bool {
        matches!(self, TokenType::Normal | TokenType::Undefined)
    }
}

/// The `tokenizer.ggml.*` metadata a tokenizer is built from (borrowed from the file).
/// Public so that tokenizers can be built and tested without a GGUF file.
#[derive(Debug, Clone, Default)]
pub struct TokenizerMeta<'a> {
    /// `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub model: &'a str,
    pub pre: Option<&'a str>,
    pub tokens: Vec<&'a str>,
    pub token_type: Option<Vec<i32>>,
    pub scores: Option<Vec<f32>>,
    pub merges: Option<Vec<&'a str>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub sep: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.llorch.space_prefix` (SentencePiece; see `SpacePrefix`): where the `▁`
    /// of `add_space_prefix` goes. Absent: the start of the text, as SentencePiece does.
    pub space_prefix: Option<&'a str>,
    /// `tokenizer.llorch.lstrip_ids` / `rstrip_ids`: special tokens that swallow the
    /// whitespace before / after them when matched in text (HF added tokens' lstrip/rstrip).
    pub lstrip: Option<Vec<i32>>,
    pub rstrip: Option<Vec<i32>>,
}

/// Where a SentencePiece tokenizer puts its space prefix (`tokenizer.llorch.space_prefix`);
/// the fragments are the pieces of text between special tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpacePrefix {
    /// `text_start`: before the fragment that starts the text (SentencePiece itself).
    TextStart,
    /// `each_fragment`: before every fragment (HF's `Prepend("▁")` normalizer: Phi-3,
    /// Llama 2 tokenizer.json).
    EachFragment,
    /// `text_start_unless_space`: before the fragment that starts the text unless it starts
    /// with a space (HF's `Metaspace` pre-tokenizer, prepend_scheme `first`).
    TextStartUnlessSpace,
    /// `each_fragment_unless_space`: `Metaspace` with prepend_scheme `always`.
    EachFragmentUnlessSpace,
}

impl SpacePrefix {
    fn from_name(name: Option<&str>) -> Result<Self> {
        Ok(match name {
            None | Some("text_start") => SpacePrefix::TextStart,
            Some("each_fragment") => SpacePrefix::EachFragment,
            Some("text_start_unless_space") => SpacePrefix::TextStartUnlessSpace,
            Some("each_fragment_unless_space") => SpacePrefix::EachFragmentUnlessSpace,
            Some(other) => {
                return Err(bad(format!(
                    "tokenizer.llorch.space_prefix = {other:?} (known: text_start, \
                     each_fragment, text_start_unless_space, each_fragment_unless_space)"
                )))
            }
        })
    }
}

impl<'a> TokenizerMeta<'a> {
    pub fn from_gguf(g: &'a Gguf) -> Result<Self> {
        const P: &str = "tokenizer.ggml.";
        let key = |k: &str| format!("{P}{k}");
        let model = g
            .get_str(&key("model"))?
            .ok_or_else(|| Error::BadModel("tokenizer.ggml.model is missing".into()))?;
        let tokens = g
            .get_str_array(&key("tokens"))?
            .ok_or_else(|| Error::BadModel("tokenizer.ggml.tokens is missing".into()))?;
        Ok(TokenizerMeta {
            model,
            pre: g.get_str(&key("pre"))?,
            tokens,
            token_type: g.get_i32_array(&key("token_type"))?,
            scores: g.get_f32_array(&key("scores"))?,
            merges: g.get_str_array(&key("merges"))?,
            bos: g.get_u32(&key("bos_token_id"))?,
            eos: g.get_u32(&key("eos_token_id"))?,
            eot: g.get_u32(&key("eot_token_id"))?,
            eom: g.get_u32(&key("eom_token_id"))?,
            unk: g.get_u32(&key("unknown_token_id"))?,
            pad: g.get_u32(&key("padding_token_id"))?,
            // The GGUF spec spells it this way.
            sep: g.get_u32(&key("seperator_token_id"))?,
            add_bos: g.get_bool(&key("add_bos_token"))?,
            add_eos: g.get_bool(&key("add_eos_token"))?,
            add_space_prefix: g.get_bool(&key("add_space_prefix"))?,
            space_prefix: g.get_str("tokenizer.llorch.space_prefix")?,
            lstrip: g.get_i32_array("tokenizer.llorch.lstrip_ids")?,
            rstrip: g.get_i32_array("tokenizer.llorch.rstrip_ids")?,
        })
    }
}

enum Kind {
    Bpe {
        bpe: Bpe,
        pre: PreTokenizer,
        /// Llama 3 (`ignore_merges`): a pre-token that is itself a vocabulary entry is taken
        /// whole. Decoded bytes → id over the text tokens.
        whole: Option<StrTable>,
    },
    Spm(Spm),
}

/// Special and user-defined tokens found in text: leftmost, longest match.
struct Specials {
    table: StrTable,
    /// Distinct token lengths (longest first) for each first byte.
    lens: Vec<Vec<u32>>,
    /// Bit (b0 << 8 | b1) is set when some token of two or more bytes starts with b0 b1: most
    /// positions are rejected by this before any hashing (Gemma has 30 space-run tokens).
    prefix2: Vec<u64>,
}

pub struct Tokenizer {
    kind: Kind,
    /// Token text as stored in the file.
    text: Arena,
    /// The bytes each token decodes to.
    bytes: Arena,
    types: Vec<TokenType>,
    specials: Specials,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    space_prefix: SpacePrefix,
    /// Per token: LSTRIP | RSTRIP (whitespace the special token swallows when matched).
    strip: Vec<u8>,
    eog: Vec<u32>,
}

/// Scratch space of one encode call.
#[derive(Default)]
struct EncodeState<'t> {
    bpe: BpeScratch,
    spm: SpmScratch,
    pretok: pretok::Scratch,
    frag: String,
    /// Piece → (start, length) in `cached`.
    cache: Option<FxHashMap<&'t str, (u32, u32)>>,
    /// The same for SentencePiece words (which live in `frag`, so they are copied).
    spm_cache: Option<FxHashMap<Box<str>, (u32, u32)>>,
    cached: Vec<u32>,
}

/// End-of-turn tokens recognised by their text when the vocabulary has them as control tokens.
const EOG_TEXTS: &[&str] = &[
    "<|return|>",
    "<|call|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<|end_of_text|>",
    "</s>",
    "<eos>",
];

const LSTRIP: u8 = 1;
const RSTRIP: u8 = 2;

fn bad(msg: impl Into<String>) -> Error {
    Error::BadModel(format!("tokenizer: {}", msg.into()))
}

impl Tokenizer {
    /// Build from `tokenizer.ggml.*` metadata; inconsistent metadata is `Error::BadModel`.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        Self::from_meta(&TokenizerMeta::from_gguf(g)?)
    }

    /// Build from metadata already read.
    pub fn from_meta(m: &TokenizerMeta<'_>) -> Result<Self> {
        let n = m.tokens.len();
        if n == 0 {
            return Err(bad("tokenizer.ggml.tokens is empty"));
        }
        if n >= NONE as usize {
            return Err(bad(format!("{n} tokens is more than ids can hold")));
        }
        let types: Vec<TokenType> = match &m.token_type {
            None => vec![TokenType::Normal; n],
            Some(t) if t.len() != n => {
                return Err(bad(format!(
                    "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
                    t.len()
                )))
            }
            Some(t) => t
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    TokenType::from_i32(v)
                        .ok_or_else(|| bad(format!("token {i} has unknown token type {v}")))
                })
                .collect::<Result<_>>()?,
        };
        if let Some(s) = &m.scores {
            if s.len() != n {
                return Err(bad(format!(
                    "tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {n}",
                    s.len()
                )));
            }
        }
        let ids = [
            ("bos_token_id", m.bos),
            ("eos_token_id", m.eos),
            ("eot_token_id", m.eot),
            ("eom_token_id", m.eom),
            ("unknown_token_id", m.unk),
            ("padding_token_id", m.pad),
            ("seperator_token_id", m.sep),
        ];
        for (name, id) in ids {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(bad(format!(
                        "tokenizer.ggml.{name} = {id} is beyond the vocabulary ({n} tokens)"
                    )));
                }
            }
        }

        let total: usize = m.tokens.iter().map(|t| t.len()).sum();
        let mut text = Arena::with_capacity(n, total);
        for t in &m.tokens {
            text.push(t.as_bytes());
        }
        let mut bytes = Arena::with_capacity(n, total);
        let mut buf = Vec::new();

        let (kind, add_bos_default) = match m.model {
            "gpt2" => {
                let pre = PreTokenizer::from_name(m.pre)?;
                let inv = bpe::inverse_table();
                for (i, t) in m.tokens.iter().enumerate() {
                    buf.clear();
                    let raw = matches!(types[i], TokenType::Control | TokenType::UserDefined)
                        || !bpe::unbyte(t, &inv, &mut buf);
                    bytes.push(if raw { t.as_bytes() } else { &buf });
                }
                let lookup = StrTable::build(&text, |_| true);
                let merges = m.merges.as_ref().ok_or_else(|| {
                    bad("tokenizer.ggml.merges is missing (needed by model gpt2)")
                })?;
                let mut map: FxHashMap<u64, (u32, u32)> = FxHashMap::default();
                map.reserve(merges.len());
                let mut cat = Vec::new();
                for (rank, line) in merges.iter().enumerate() {
                    let (a, b) = line
                        .split_once(' ')
                        .ok_or_else(|| bad(format!("merge {rank} {line:?} is not two tokens")))?;
                    let find = |s: &[u8]| {
                        lookup.get(&text, s).ok_or_else(|| {
                            bad(format!(
                                "merge {rank} {line:?} names {:?}, which is not in the vocabulary",
                                String::from_utf8_lossy(s)
                            ))
                        })
                    };
                    let (ia, ib) = (find(a.as_bytes())?, find(b.as_bytes())?);
                    cat.clear();
                    cat.extend_from_slice(a.as_bytes());
                    cat.extend_from_slice(b.as_bytes());
                    let im = find(&cat)?;
                    map.entry(bpe::pair_key(ia, ib))
                        .or_insert((rank as u32, im));
                }
                let chars = bpe::byte_to_char_table();
                let mut byte_ids = [NONE; 256];
                for (b, c) in chars.iter().enumerate() {
                    let mut s = [0u8; 4];
                    byte_ids[b] = lookup
                        .get(&text, c.encode_utf8(&mut s).as_bytes())
                        .or(m.unk)
                        .unwrap_or(NONE);
                }
                let whole = pre
                    .whole_first()
                    .then(|| StrTable::build(&bytes, |i| types[i].is_text()));
                (
                    Kind::Bpe {
                        bpe: Bpe {
                            merges: map,
                            byte_ids,
                        },
                        pre,
                        whole,
                    },
                    false,
                )
            }
            "llama" => {
                let scores = m.scores.clone().ok_or_else(|| {
                    bad("tokenizer.ggml.scores is missing (needed by model llama)")
                })?;
                let mut byte_ids = [NONE; 256];
                let mut any_byte = false;
                for (i, t) in m.tokens.iter().enumerate() {
                    buf.clear();
                    match types[i] {
                        TokenType::Byte => {
                            let v = t
                                .strip_prefix("<0x")
                                .and_then(|h| h.strip_suffix('>'))
                                .and_then(|h| u8::from_str_radix(h, 16).ok())
                                .ok_or_else(|| {
                                    bad(format!("byte token {i} is {t:?}, not <0xNN>"))
                                })?;
                            if byte_ids[v as usize] == NONE {
                                byte_ids[v as usize] = i as u32;
                            }
                            any_byte = true;
                            buf.push(v);
                        }
                        TokenType::Control => buf.extend_from_slice(t.as_bytes()),
                        _ => {
                            // `▁` (E2 96 81) stands for a space.
                            let mut rest = t.as_bytes();
                            while let Some(k) = rest.windows(3).position(|w| w == "▁".as_bytes())
                            {
                                buf.extend_from_slice(&rest[..k]);
                                buf.push(b' ');
                                rest = &rest[k + 3..];
                            }
                            buf.extend_from_slice(rest);
                        }
                    }
                    bytes.push(&buf);
                }
                let table = StrTable::build(&text, |i| types[i].is_text());
                let crossing: Vec<(Vec<u8>, Vec<usize>)> = (0..n)
                    .filter(|&i| types[i].is_text())
                    .filter_map(|i| {
                        let t = m.tokens[i];
                        let offs: Vec<usize> = t
                            .match_indices('▁')
                            .map(|(k, _)| k)
                            .filter(|&k| k > 0)
                            .collect();
                        (!offs.is_empty()).then(|| (t.as_bytes().to_vec(), offs))
                    })
                    .collect();
                let spm = Spm {
                    scores,
                    table,
                    byte_ids: any_byte.then_some(byte_ids),
                    unk: m.unk,
                    crossing,
                };
                (Kind::Spm(spm), true)
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "tokenizer.ggml.model = '{other}' (supported: gpt2, llama)"
                )))
            }
        };

        // Control and unknown (`<unk>`) tokens match only with parse_special (HF matches them
        // as added tokens); user-defined ones always (they are
        // pieces of the vocabulary that the model was trained to see whole).
        let is_special = |i: usize| {
            matches!(
                types[i],
                TokenType::Control | TokenType::UserDefined | TokenType::Unknown
            ) && !text.get(i).is_empty()
        };
        let table = StrTable::build(&text, is_special);
        let mut lens = vec![Vec::new(); 256];
        let mut prefix2 = vec![0u64; 65536 / 64];
        for i in (0..n).filter(|&i| is_special(i)) {
            let t = text.get(i);
            lens[t[0] as usize].push(t.len() as u32);
            if t.len() >= 2 {
                let k = (t[0] as usize) << 8 | t[1] as usize;
                prefix2[k / 64] |= 1 << (k % 64);
            }
        }
        for l in &mut lens {
            l.sort_unstable_by(|a, b| b.cmp(a));
            l.dedup();
        }

        let add_bos = m.add_bos.unwrap_or(add_bos_default);
        if add_bos && m.bos.is_none() {
            return Err(bad(
                "tokenizer.ggml.add_bos_token is set but there is no bos_token_id",
            ));
        }
        let mut eog: Vec<u32> = [m.eos, m.eot, m.eom].into_iter().flatten().collect();
        let control = |i: usize| types[i] == TokenType::Control;
        // Harmony (GPT-OSS): a reply ends with `<|return|>` or a tool `<|call|>`; `<|end|>`
        // only closes one of its messages (the reasoning before the final answer), so it is
        // no end of generation there unless the file names it EOS.
        let harmony = (0..types.len()).any(|i| control(i) && text.get(i) == b"<|return|>");
        for i in 0..types.len() {
            let t = text.get(i);
            let eog_text = EOG_TEXTS.iter().any(|e| e.as_bytes() == t);
            if control(i) && eog_text && !(harmony && t == b"<|end|>") {
                eog.push(i as u32);
            }
        }
        eog.sort_unstable();
        eog.dedup();
        let mut strip = Vec::new();
        for (list, bit, name) in [
            (&m.lstrip, LSTRIP, "lstrip_ids"),
            (&m.rstrip, RSTRIP, "rstrip_ids"),
        ] {
            for &id in list.iter().flatten() {
                if id < 0 || id as usize >= n || !is_special(id as usize) {
                    return Err(bad(format!(
                        "tokenizer.llorch.{name} names {id}, which is no special token"
                    )));
                }
                strip.resize(n, 0);
                strip[id as usize] |= bit;
            }
        }

        Ok(Tokenizer {
            kind,
            text,
            bytes,
            types,
            specials: Specials {
                table,
                lens,
                prefix2,
            },
            bos: m.bos,
            eos: m.eos,
            eot: m.eot,
            pad: m.pad,
            add_bos,
            add_eos: m.add_eos.unwrap_or(false),
            add_space_prefix: m.add_space_prefix.unwrap_or(matches!(m.model, "llama")),
            space_prefix: SpacePrefix::from_name(m.space_prefix)?,
            strip,
            eog,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.types.len()
    }

    /// Encode text. `parse_special`: special/control tokens written in the text become single
    /// tokens. `add_bos`: prepend BOS if the model's metadata asks for it.
    pub fn encode(&self, text: &str, parse_special: bool, add_bos: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && self.add_bos {
            out.extend(self.bos);
        }
        let mut st = EncodeState {
            // Long texts repeat their words: remember each piece's ids for this call.
            cache: (text.len() > 1024).then(FxHashMap::default),
            spm_cache: (text.len() > 1024).then(FxHashMap::default),
            ..Default::default()
        };
        let b = text.as_bytes();
        let (mut start, mut i) = (0, 0);
        while i < b.len() {
            match self.special_at(b, i, parse_special) {
                Some((id, len)) => {
                    let strip = self.strip.get(id as usize).copied().unwrap_or(0);
                    let end = if strip & LSTRIP != 0 {
                        start + text[start..i].trim_end().len()
                    } else {
                        i
                    };
                    if start < end {
                        self.encode_fragment(&text[start..end], start == 0, &mut st, &mut out)?;
                    }
                    out.push(id);
                    i += len;
                    if strip & RSTRIP != 0 {
                        i = b.len() - text[i..].trim_start().len();
                    }
                    start = i;
                }
                None => i += 1,
            }
        }
        if start < b.len() {
            self.encode_fragment(&text[start..], start == 0, &mut st, &mut out)?;
        }
        if add_bos && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// Encode text that holds no special token. `at_start`: it begins the whole text.
    fn encode_fragment<'t>(
        &self,
        s: &'t str,
        at_start: bool,
        st: &mut EncodeState<'t>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        match &self.kind {
            Kind::Bpe { bpe, pre, whole } => {
                let mut missing = None;
                let EncodeState {
                    bpe: bsc,
                    pretok: psc,
                    cache,
                    cached,
                    ..
                } = st;
                pretok::split(pre, s, psc, |piece| {
                    if let Some(&(a, n)) = cache.as_ref().and_then(|c| c.get(piece)) {
                        out.extend_from_slice(&cached[a as usize..(a + n) as usize]);
                        return;
                    }
                    let first = out.len();
                    if let Some(id) = whole
                        .as_ref()
                        .and_then(|w| w.get(&self.bytes, piece.as_bytes()))
                    {
                        out.push(id);
                    } else if let Err(b) = bpe.encode_word(piece.as_bytes(), bsc, out) {
                        missing.get_or_insert(b);
                        return;
                    }
                    if let Some(c) = cache {
                        c.insert(piece, (cached.len() as u32, (out.len() - first) as u32));
                        cached.extend_from_slice(&out[first..]);
                    }
                })?;
                match missing {
                    None => Ok(()),
                    Some(b) => Err(Error::InvalidArgument(format!(
                        "text has byte 0x{b:02X}, which this model's vocabulary cannot encode \
                         (no byte token and no unknown token)"
                    ))),
                }
            }
            Kind::Spm(spm) => {
                st.frag.clear();
                let (each, unless_space) = match self.space_prefix {
                    SpacePrefix::TextStart => (false, false),
                    SpacePrefix::EachFragment => (true, false),
                    SpacePrefix::TextStartUnlessSpace => (false, true),
                    SpacePrefix::EachFragmentUnlessSpace => (true, true),
                };
                if self.add_space_prefix
                    && (at_start || each)
                    && !(unless_space && (s.starts_with(' ') || s.starts_with('▁')))
                {
                    st.frag.push('▁');
                }
                for c in s.chars() {
                    st.frag.push(if c == ' ' { '▁' } else { c });
                }
                let EncodeState {
                    spm: ssc,
                    frag,
                    spm_cache,
                    cached,
                    ..
                } = st;
                // Too many crossing pieces would make the cut test slow: encode whole.
                if spm.crossing.len() > 16 {
                    return spm.encode(&self.text, frag, ssc, out);
                }
                spm.words(frag, |w| {
                    if let Some(&(a, n)) = spm_cache.as_ref().and_then(|c| c.get(w)) {
                        out.extend_from_slice(&cached[a as usize..(a + n) as usize]);
                        return Ok(());
                    }
                    let first = out.len();
                    spm.encode(&self.text, w, ssc, out)?;
                    if let Some(c) = spm_cache {
                        c.insert(w.into(), (cached.len() as u32, (out.len() - first) as u32));
                        cached.extend_from_slice(&out[first..]);
                    }
                    Ok(())
                })
            }
        }
    }

    /// [`encode`](Self::encode) for raw bytes (the C API): invalid UTF-8 is an error that says
    /// where.
    pub fn encode_bytes(
        &self,
        text: &[u8],
        parse_special: bool,
        add_bos: bool,
    ) -> Result<Vec<u32>> {
        let s = std::str::from_utf8(text).map_err(|e| {
            Error::InvalidArgument(format!(
                "text to tokenize is not valid UTF-8 (bad byte at offset {})",
                e.valid_up_to()
            ))
        })?;
        self.encode(s, parse_special, add_bos)
    }

    /// The special or user-defined token written at byte `i`, longest first: (id, length).
    #[inline]
    fn special_at(&self, b: &[u8], i: usize, parse_special: bool) -> Option<(u32, usize)> {
        let lens = &self.specials.lens[b[i] as usize];
        if lens.is_empty() {
            return None;
        }
        let k = (b[i] as usize) << 8 | b.get(i + 1).copied().unwrap_or(0) as usize;
        let two = i + 1 < b.len() && self.specials.prefix2[k / 64] & (1 << (k % 64)) != 0;
        for &len in lens {
            let len = len as usize;
            if i + len > b.len() || (len >= 2 && !two) {
                continue;
            }
            if let Some(id) = self.specials.table.get(&self.text, &b[i..i + len]) {
                if parse_special || self.types[id as usize] == TokenType::UserDefined {
                    return Some((id, len));
                }
            }
        }
        None
    }

    /// The raw bytes a token stands for (control tokens decode to their text).
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        Ok(self.bytes_of(id)?.to_vec())
    }

    fn bytes_of(&self, id: u32) -> Result<&[u8]> {
        if (id as usize) < self.types.len() {
            Ok(self.bytes.get(id as usize))
        } else {
            Err(Error::InvalidArgument(format!(
                "token id {id} is out of range (vocabulary has {} tokens)",
                self.types.len()
            )))
        }
    }

    /// Decode ids to bytes (may be invalid UTF-8 at a cut). For SentencePiece models that add a
    /// space prefix, the space the first token carries for it is dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for (k, &id) in ids.iter().enumerate() {
            let b = self.bytes_of(id)?;
            let strip = k == 0 && self.add_space_prefix && matches!(self.kind, Kind::Spm(_));
            out.extend_from_slice(if strip {
                b.strip_prefix(b" ").unwrap_or(b)
            } else {
                b
            });
        }
        Ok(out)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }
    /// Whether `encode(.., add_bos = true)` prepends BOS (metadata `add_bos_token`).
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }
    /// True for end-of-generation tokens (EOS, EOT, `<|im_end|>`, `<end_of_turn>` …).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
    /// The text of a token, for printing (lossy).
    pub fn token_text(&self, id: u32) -> String {
        match self.bytes_of(id) {
            Ok(b) => String::from_utf8_lossy(b).into_owned(),
            Err(_) => String::new(),
        }
    }
    /// The token's string as stored in the file (`Ġhello`, `▁hello`, `<0x0A>` …).
    pub fn token_piece(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.types.len())
            .then(|| std::str::from_utf8(self.text.get(id as usize)).ok())
            .flatten()
    }
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }
    /// The id of a special or user-defined token written as `text`.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.specials.table.get(&self.text, text.as_bytes())
    }
}

/// Incremental detokenizer: feed token bytes, get back only complete UTF-8 characters; a
/// multi-byte character cut between tokens is held until its last byte arrives. Invalid bytes
/// come out as U+FFFD, exactly as `String::from_utf8_lossy` of the whole output would.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                }
                Err(e) => {
                    let v = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..start + v]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += v + bad;
                        }
                        None => {
                            // An incomplete character at the end: wait for the next token.
                            start += v;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// The held-back rest at the end of the stream (lossy).
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_holds_partial_chars() {
        let mut d = StreamDecoder::new();
        let s = "a€b".as_bytes(); // € is E2 82 AC
        assert_eq!(d.push(&s[..2]), "a");
        assert_eq!(d.push(&s[2..3]), "");
        assert_eq!(d.push(&s[3..]), "€b");
        assert_eq!(d.push(&[0xE2, 0x82]), "");
        assert_eq!(d.flush(), "\u{FFFD}");
        // Invalid bytes are replaced at once, not held.
        assert_eq!(d.push(&[0xFF, b'x']), "\u{FFFD}x");
    }
}
