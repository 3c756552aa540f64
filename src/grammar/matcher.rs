//! The recognizer: a pushdown automaton over bytes. A configuration is the set of stacks the
//! grammar can be in after the bytes so far (several when alternatives are still open); each
//! stack holds grammar positions, the top one waiting for a byte. Configurations are interned
//! as numbered states and their transitions filled in lazily, so the matcher becomes a DFA
//! over the states actually reached: stepping a byte from a known state is one table load.

use super::program::{Op, Program};
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// A set of stacks, sorted and without duplicates (so equal configurations compare equal).
type Config = Vec<Vec<u32>>;

/// No stack survives: the bytes cannot be continued.
pub const DEAD: u32 = 0;
const UNKNOWN: u32 = u32::MAX;

/// More stacks than this in one configuration is an error (a grammar so ambiguous that
/// matching it would be slow). An object of n optional properties needs about 2n (each
/// property may come next, after whitespace or not).
const MAX_STACKS: usize = 16_384;
/// Steps of one expansion before it gives up (the same error).
const MAX_EXPAND_STEPS: usize = 1 << 20;
/// Stacks deeper than this are an error (nesting beyond any sane output).
const MAX_DEPTH: usize = 4096;
/// States kept before the cache is emptied (each has a 1 KiB transition row).
const MAX_STATES: usize = 16_384;

pub struct Dfa {
    program: Arc<Program>,
    configs: Vec<Config>,
    index: HashMap<Config, u32>,
    /// Per state, the next state for each byte (`UNKNOWN` until first asked).
    trans: Vec<[u32; 256]>,
    /// The first error met while expanding (too ambiguous, too deep); the state it hit is
    /// treated as dead.
    pub error: Option<String>,
}

impl Dfa {
    pub fn new(program: Arc<Program>) -> Dfa {
        let mut d = Dfa {
            program,
            configs: Vec::new(),
            index: HashMap::new(),
            trans: Vec::new(),
            error: None,
        };
        d.intern(Vec::new()); // state 0: dead
        d
    }

    /// The state before any byte.
    pub fn start(&mut self) -> u32 {
        let p = self.program.clone();
        let mut out = Vec::new();
        for &a in &p.alts[p.root as usize] {
            self.expand(vec![a], &mut out);
        }
        out.sort_unstable();
        out.dedup();
        self.intern(out)
    }

    /// The state after byte `b` from `s`.
    #[inline]
    pub fn next(&mut self, s: u32, b: u8) -> u32 {
        let t = self.trans[s as usize][b as usize];
        if t != UNKNOWN {
            return t;
        }
        let t = self.compute(s, b);
        self.trans[s as usize][b as usize] = t;
        t
    }

    /// Whether the bytes so far are a complete match.
    pub fn accepting(&self, s: u32) -> bool {
        self.configs[s as usize].iter().any(|st| st.is_empty())
    }

    /// Whether the match is complete and nothing may follow.
    pub fn finished(&self, s: u32) -> bool {
        let c = &self.configs[s as usize];
        !c.is_empty() && c.iter().all(|st| st.is_empty())
    }

    pub fn n_states(&self) -> usize {
        self.configs.len()
    }

    /// Forgets every state but `keep`, which becomes state 1 (bounds the memory of a long
    /// generation through many distinct states). Returns the new id of `keep`.
    pub fn reset_keeping(&mut self, keep: u32) -> u32 {
        if self.configs.len() <= MAX_STATES {
            return keep;
        }
        let c = self.configs[keep as usize].clone();
        self.configs.clear();
        self.index.clear();
        self.trans.clear();
        self.intern(Vec::new());
        self.intern(c)
    }

    fn intern(&mut self, c: Config) -> u32 {
        if let Some(&id) = self.index.get(&c) {
            return id;
        }
        let id = self.configs.len() as u32;
        self.index.insert(c.clone(), id);
        self.configs.push(c);
        self.trans.push(if id == DEAD {
            [DEAD; 256]
        } else {
            [UNKNOWN; 256]
        });
        id
    }

    fn compute(&mut self, s: u32, b: u8) -> u32 {
        let p = self.program.clone();
        let mut out = Vec::new();
        // Taken out while expanding (which needs `self`), put back after.
        let config = std::mem::take(&mut self.configs[s as usize]);
        for st in &config {
            let Some(&top) = st.last() else { continue };
            if let Op::Byte(set) = p.ops[top as usize] {
                if set.contains(b) {
                    let mut n = st.clone();
                    *n.last_mut().unwrap_or(&mut 0) = top + 1;
                    self.expand(n, &mut out);
                }
            }
        }
        self.configs[s as usize] = config;
        out.sort_unstable();
        out.dedup();
        if out.len() > MAX_STACKS {
            self.fail(format!(
                "the grammar is too ambiguous: more than {MAX_STACKS} ways to continue at once"
            ));
            return DEAD;
        }
        self.intern(out)
    }

    fn fail(&mut self, why: String) {
        self.error.get_or_insert(why);
    }

    /// Pushes into `out` every stack `stack` stands for once calls are entered and finished
    /// alternatives returned from, so that each top waits for a byte (or the stack is empty:
    /// the whole input matched). Left recursion was rejected at compile time, so this ends;
    /// it works from a list rather than by recursion, so no grammar can overflow the thread's
    /// stack, and gives up (an error) after a budget of steps.
    fn expand(&mut self, stack: Vec<u32>, out: &mut Config) {
        let p = self.program.clone();
        let mut work = vec![stack];
        let mut steps = 0usize;
        while let Some(mut stack) = work.pop() {
            loop {
                steps += 1;
                if out.len() > 2 * MAX_STACKS {
                    // Many paths lead to the same stacks: count the distinct ones.
                    out.sort_unstable();
                    out.dedup();
                }
                if out.len() > 2 * MAX_STACKS || steps > MAX_EXPAND_STEPS {
                    self.fail(format!(
                        "the grammar is too ambiguous: more than {MAX_STACKS} ways to continue \
                         at once"
                    ));
                    return;
                }
                let Some(&top) = stack.last() else {
                    out.push(stack);
                    break;
                };
                match p.ops[top as usize] {
                    Op::Byte(_) => {
                        out.push(stack);
                        break;
                    }
                    Op::End => {
                        stack.pop();
                    }
                    Op::Call(r) => {
                        stack.pop();
                        // A call in tail position returns straight to our caller: keeping its
                        // `End` would grow the stack on every turn of a right recursion.
                        if p.ops[top as usize + 1] != Op::End {
                            stack.push(top + 1);
                        }
                        if stack.len() >= MAX_DEPTH {
                            self.fail(format!("nesting deeper than {MAX_DEPTH} levels"));
                            return;
                        }
                        let alts = &p.alts[r as usize];
                        let Some((&last, others)) = alts.split_last() else {
                            break;
                        };
                        for &a in others {
                            let mut s = stack.clone();
                            s.push(a);
                            work.push(s);
                        }
                        stack.push(last);
                    }
                }
            }
        }
    }
}

/// Runs `bytes` from the start: whether they are a complete match (for tests and checks).
pub fn matches(program: &Arc<Program>, bytes: &[u8]) -> Result<bool> {
    let mut d = Dfa::new(program.clone());
    let mut s = d.start();
    for &b in bytes {
        s = d.next(s, b);
        if s == DEAD {
            break;
        }
    }
    if let Some(e) = d.error {
        return Err(Error::InvalidArgument(format!("grammar: {e}")));
    }
    Ok(s != DEAD && d.accepting(s))
}

/// Whether `bytes` can be continued into a match (a prefix of some match).
pub fn is_prefix(program: &Arc<Program>, bytes: &[u8]) -> bool {
    let mut d = Dfa::new(program.clone());
    let mut s = d.start();
    for &b in bytes {
        s = d.next(s, b);
    }
    s != DEAD
}
