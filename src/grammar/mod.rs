//! Constrained output: the generated text must match a grammar, given as GBNF-like EBNF text
//! ([`ebnf`]) or as a JSON Schema ([`schema`], compiled to the same grammar form).
//!
//! The pieces, in the order a generation uses them:
//! - [`builder`]: the grammar in memory (rules of byte-set and rule symbols); [`utf8`] lowers
//!   Unicode character classes to byte sequences, so everything after works on bytes;
//! - [`program`]: the grammar flattened, checked for undefined and left-recursive rules;
//! - [`matcher`]: a pushdown recognizer over bytes whose configurations are interned as
//!   states with lazily filled transition tables (a DFA over the states reached);
//! - [`vocab`]: a byte trie of the vocabulary, walked once per state to get the mask of the
//!   tokens that can continue the output (cached per state), and the per-generation matcher
//!   the session calls: mask the logits, accept the sampled token, end when complete.

pub mod builder;
pub mod ebnf;
pub mod matcher;
pub mod program;
pub mod regex;
pub mod schema;
mod utf8;
pub mod vocab;

use crate::Result;
use program::Program;
use std::sync::Arc;
pub use vocab::{TokenMatcher, VocabTrie};

/// A compiled output constraint. Cheap to clone (the grammar is shared).
#[derive(Clone)]
pub struct Constraint {
    program: Arc<Program>,
}

impl Constraint {
    /// From a JSON Schema (JSON text). Errors name the unsupported keyword and where it is.
    pub fn json_schema(schema: &str) -> Result<Constraint> {
        Ok(Constraint {
            program: Arc::new(schema::compile(schema)?),
        })
    }

    /// From grammar text (see [`ebnf`]). Errors give the line and column.
    pub fn grammar(text: &str) -> Result<Constraint> {
        Ok(Constraint {
            program: Arc::new(ebnf::compile(text)?),
        })
    }

    /// Whether `text` is a complete match.
    pub fn matches(&self, text: &[u8]) -> Result<bool> {
        matcher::matches(&self.program, text)
    }

    /// Whether `text` can still be continued into a match.
    pub fn is_prefix(&self, text: &[u8]) -> bool {
        matcher::is_prefix(&self.program, text)
    }

    /// A matcher for one generation over the vocabulary `trie`.
    pub fn matcher(&self, trie: Arc<VocabTrie>) -> TokenMatcher {
        TokenMatcher::new(self.program.clone(), trie)
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Constraint({} rules)", self.program.n_rules())
    }
}
