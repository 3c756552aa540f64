//! The vocabulary side: a byte trie of every token's text, walked once per matcher state to
//! find all the tokens that can continue the output (tokens sharing a prefix share the walk),
//! and the per-generation matcher that masks logits with it.

use super::matcher::{Dfa, DEAD};
use super::program::Program;
use crate::tokenizer::{TokenType, Tokenizer};
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// Tokens longer than this (in bytes) are left out of the trie: never allowed under a
/// constraint (no real vocabulary has text tokens this long).
const MAX_TOKEN_BYTES: usize = 1024;
/// Masks kept per generation before the cache is emptied (each is vocab/8 bytes).
const MAX_MASKS: usize = 1024;

/// All text tokens of a vocabulary as a trie, stored flat in depth-first order so that a
/// node's subtree is the run of nodes up to `skip[node]`.
pub struct VocabTrie {
    /// The byte on the edge into each node.
    byte: Vec<u8>,
    /// Depth of each node (1 for children of the root).
    depth: Vec<u16>,
    /// The first node after each node's subtree.
    skip: Vec<u32>,
    /// Tokens ending at each node: `tokens[tok_start[i]..tok_start[i + 1]]`.
    tok_start: Vec<u32>,
    tokens: Vec<u32>,
    max_depth: usize,
    /// End-of-generation tokens: allowed where the output is complete.
    eog: Vec<u32>,
    n_vocab: usize,
}

impl VocabTrie {
    pub fn new(tok: &Tokenizer) -> Result<VocabTrie> {
        let n_vocab = tok.vocab_size();
        let mut entries: Vec<(Vec<u8>, u32)> = Vec::with_capacity(n_vocab);
        let mut eog = Vec::new();
        for id in 0..n_vocab as u32 {
            if tok.is_eog(id) {
                eog.push(id);
                continue;
            }
            // Control and unused tokens are not text (a control token "decodes" to its name).
            let text = matches!(
                tok.token_type(id),
                Some(TokenType::Normal | TokenType::Byte | TokenType::UserDefined)
            );
            if !text {
                continue;
            }
            let b = tok.token_bytes(id)?;
            if !b.is_empty() && b.len() <= MAX_TOKEN_BYTES {
                entries.push((b, id));
            }
        }
        entries.sort_unstable();
        let mut t = VocabTrie {
            byte: Vec::new(),
            depth: Vec::new(),
            skip: Vec::new(),
            tok_start: Vec::new(),
            tokens: Vec::new(),
            max_depth: 0,
            eog,
            n_vocab,
        };
        // `path[d]` is the node at depth d + 1 on the way to the previous token.
        let mut path: Vec<u32> = Vec::new();
        let mut prev: &[u8] = &[];
        let mut ends: Vec<Vec<u32>> = Vec::new();
        for (bytes, id) in &entries {
            let common = prev.iter().zip(bytes).take_while(|(a, b)| a == b).count();
            let common = common.min(path.len());
            for node in path.drain(common..) {
                t.skip[node as usize] = t.byte.len() as u32;
            }
            for (d, &b) in bytes.iter().enumerate().skip(common) {
                path.push(t.byte.len() as u32);
                t.byte.push(b);
                t.depth.push(d as u16 + 1);
                t.skip.push(0);
                ends.push(Vec::new());
            }
            if let Some(&last) = path.last() {
                ends[last as usize].push(*id);
            }
            t.max_depth = t.max_depth.max(bytes.len());
            prev = bytes;
        }
        for node in path.drain(..) {
            t.skip[node as usize] = t.byte.len() as u32;
        }
        for e in ends {
            t.tok_start.push(t.tokens.len() as u32);
            t.tokens.extend(e);
        }
        t.tok_start.push(t.tokens.len() as u32);
        Ok(t)
    }

    pub fn n_nodes(&self) -> usize {
        self.byte.len()
    }

    /// Sets in `mask` (a bitset over the vocabulary) every text token whose bytes can follow
    /// state `s`. Returns how many trie nodes it visited.
    fn walk(&self, dfa: &mut Dfa, s: u32, mask: &mut [u64], states: &mut Vec<u32>) -> usize {
        states.clear();
        states.resize(self.max_depth + 1, DEAD);
        states[0] = s;
        let n = self.byte.len();
        let mut i = 0;
        let mut visited = 0;
        while i < n {
            visited += 1;
            let d = self.depth[i] as usize;
            let next = dfa.next(states[d - 1], self.byte[i]);
            if next == DEAD {
                i = self.skip[i] as usize;
                continue;
            }
            states[d] = next;
            for &t in &self.tokens[self.tok_start[i] as usize..self.tok_start[i + 1] as usize] {
                mask[t as usize / 64] |= 1 << (t % 64);
            }
            i += 1;
        }
        visited
    }
}

/// One generation's matcher: where the output stands in the grammar, and the masks of the
/// states seen so far.
pub struct TokenMatcher {
    dfa: Dfa,
    trie: Arc<VocabTrie>,
    state: u32,
    masks: HashMap<u32, Box<[u64]>>,
    scratch: Vec<u32>,
}

impl TokenMatcher {
    pub fn new(program: Arc<Program>, trie: Arc<VocabTrie>) -> TokenMatcher {
        let mut dfa = Dfa::new(program);
        let state = dfa.start();
        TokenMatcher {
            dfa,
            trie,
            state,
            masks: HashMap::new(),
            scratch: Vec::new(),
        }
    }

    /// The allowed tokens of the current state, computed once per state.
    fn mask(&mut self) -> Result<&[u64]> {
        if !self.masks.contains_key(&self.state) {
            // Bound memory: forget cached states and masks now and then (the current state is
            // kept), never in the middle of a walk.
            let before = self.dfa.n_states();
            self.state = self.dfa.reset_keeping(self.state);
            if self.dfa.n_states() < before || self.masks.len() >= MAX_MASKS {
                self.masks.clear();
            }
            let words = self.trie.n_vocab.div_ceil(64);
            let mut m = vec![0u64; words].into_boxed_slice();
            self.trie
                .walk(&mut self.dfa, self.state, &mut m, &mut self.scratch);
            if let Some(e) = &self.dfa.error {
                return Err(Error::InvalidArgument(format!("constrained output: {e}")));
            }
            if self.dfa.accepting(self.state) {
                for &t in &self.trie.eog {
                    m[t as usize / 64] |= 1 << (t % 64);
                }
            }
            self.masks.insert(self.state, m);
        }
        Ok(&self.masks[&self.state])
    }

    /// Sets to -inf the logits of every token that cannot continue the output (and of ids
    /// beyond the vocabulary). Error if no token can: the grammar needs bytes no token has.
    pub fn apply(&mut self, logits: &mut [f32]) -> Result<()> {
        let m = self.mask()?;
        let mut any = false;
        for (w, chunk) in logits.chunks_mut(64).enumerate() {
            let bits = m.get(w).copied().unwrap_or(0);
            any |= bits != 0;
            if bits == u64::MAX {
                continue;
            }
            for (k, x) in chunk.iter_mut().enumerate() {
                if bits & (1 << k) == 0 {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        if !any {
            return Err(Error::InvalidArgument(
                "constrained output: no token of the vocabulary can continue the output".into(),
            ));
        }
        Ok(())
    }

    /// Moves past `token`'s bytes (`bytes`); an end-of-generation token is taken where the
    /// output may end. Error if the token cannot continue the output.
    pub fn accept(&mut self, token: u32, bytes: &[u8]) -> Result<()> {
        let refuse = || {
            Error::InvalidArgument(format!(
                "constrained output: token {token} cannot continue the output (were all \
                 allowed tokens banned by a logit bias?)"
            ))
        };
        if self.trie.eog.contains(&token) {
            return if self.dfa.accepting(self.state) {
                Ok(())
            } else {
                Err(refuse())
            };
        }
        let mut s = self.state;
        for &b in bytes {
            s = self.dfa.next(s, b);
            if s == DEAD {
                return Err(refuse());
            }
        }
        if bytes.is_empty() {
            return Err(refuse());
        }
        self.state = s;
        Ok(())
    }

    /// Whether the output is complete and nothing more may follow (the generation ends).
    pub fn finished(&self) -> bool {
        self.dfa.finished(self.state)
    }

    /// Whether the output so far is a complete match.
    pub fn accepting(&self) -> bool {
        self.dfa.accepting(self.state)
    }
}
