//! llorch: an LLM inference engine shipped as a C-ABI shared library.
//!
//! One request flows one way: file → [`gguf`] reader → [`model`] (weights bound to a
//! [`backend`]) → [`session`] (tokens, KV cache) → forward pass → logits → [`sampling`] →
//! text pieces → callback. The C ABI lives in [`ffi`] and only calls safe Rust; the HTTP
//! server of `llorch serve` in `server` (feature `server`).

pub mod backend;
pub mod error;
pub mod ffi;
pub mod gguf;
pub mod grammar;
pub mod model;
pub mod quant;
pub mod sampling;
#[cfg(feature = "server")]
pub mod server;
pub mod session;
pub mod tokenizer;

pub use error::{Error, Result};

/// The library version, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
