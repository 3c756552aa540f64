//! Text, token ids or raw bytes through the real models' tokenizers (fuzz/src/tokenizer.rs: the
//! properties); the first byte picks the tokenizer.
#![no_main]

use llorch::tokenizer::Tokenizer;
use std::sync::OnceLock;

fn tokenizers() -> &'static [Tokenizer] {
    static ALL: OnceLock<Vec<Tokenizer>> = OnceLock::new();
    ALL.get_or_init(|| {
        llorch_fuzz::models::open_all()
            .iter()
            .filter_map(|g| Tokenizer::from_gguf(g).ok())
            .collect()
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let all = tokenizers();
    if let Some((&pick, rest)) = data.split_first() {
        llorch_fuzz::tokenizer::check(&all[pick as usize % all.len()], rest);
    }
});
