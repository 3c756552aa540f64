//! Fuzz cases and their properties, shared by the `cargo fuzz` targets (fuzz_targets/) and the
//! fixed-budget fuzz job of CI (tests/fuzz.rs includes these files).

pub mod chat_template;
pub mod gguf;
pub mod models;
pub mod rng;
pub mod tokenizer;
