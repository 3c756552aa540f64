//! Tokenizers built only from GGUF metadata (`tokenizer.ggml.*`): byte-level BPE and
//! SentencePiece; special tokens; UTF-8-safe incremental detokenization; chat templates.
//! (Agreed interface; the implementation fills in the bodies.)

use crate::gguf::Gguf;
use crate::Result;

pub struct Tokenizer {
    _todo: (),
}

impl Tokenizer {
    /// Build from `tokenizer.ggml.*` metadata; inconsistent metadata is `Error::BadModel`.
    pub fn from_gguf(_g: &Gguf) -> Result<Self> {
        todo!()
    }
    pub fn vocab_size(&self) -> usize {
        todo!()
    }
    /// Encode text. `parse_special`: special/control tokens written in the text become single
    /// tokens. `add_bos`: prepend BOS if the model's metadata asks for it.
    pub fn encode(&self, _text: &str, _parse_special: bool, _add_bos: bool) -> Result<Vec<u32>> {
        todo!()
    }
    /// The raw bytes a token stands for (control tokens decode to their text).
    pub fn token_bytes(&self, _id: u32) -> Result<Vec<u8>> {
        todo!()
    }
    /// Decode ids to bytes (may be invalid UTF-8 at a cut).
    pub fn decode(&self, _ids: &[u32]) -> Result<Vec<u8>> {
        todo!()
    }
    pub fn bos_id(&self) -> Option<u32> {
        todo!()
    }
    pub fn eos_id(&self) -> Option<u32> {
        todo!()
    }
    /// True for end-of-generation tokens (EOS, EOT, `<|im_end|>`, `<end_of_turn>` …).
    pub fn is_eog(&self, _id: u32) -> bool {
        todo!()
    }
    /// The text of a token, for printing (lossy).
    pub fn token_text(&self, _id: u32) -> String {
        todo!()
    }
}

pub mod chat {
    //! TEMPORARY stand-in (the tokenizer work replaces this module).
    use crate::model::ChatMessage;
    pub fn render(
        _t: &str,
        _m: &[ChatMessage],
        _g: bool,
        _b: &str,
        _e: &str,
    ) -> crate::Result<String> {
        todo!()
    }
}

/// TEMPORARY stand-in (the tokenizer work replaces it).
pub struct StreamDecoder;
impl StreamDecoder {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        todo!()
    }
    pub fn push(&mut self, _b: &[u8]) -> String {
        todo!()
    }
    pub fn flush(&mut self) -> String {
        todo!()
    }
}
