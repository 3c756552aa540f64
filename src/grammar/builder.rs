//! The grammar's form in memory: named rules, each a list of alternatives, each a sequence of
//! symbols that are either one byte out of a set or a reference to a rule. Both front ends
//! (the EBNF text and JSON Schema) build it through [`Builder`], which lowers the conveniences
//! (literals, Unicode character classes, repetitions, groups) to that core.

use super::utf8;
use crate::{Error, Result};
use std::collections::HashMap;

/// A set of bytes (256 bits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ByteSet(pub [u64; 4]);

impl ByteSet {
    pub fn range(lo: u8, hi: u8) -> ByteSet {
        let mut s = ByteSet([0; 4]);
        for b in lo..=hi {
            s.insert(b);
        }
        s
    }
    pub fn insert(&mut self, b: u8) {
        self.0[(b >> 6) as usize] |= 1 << (b & 63);
    }
    #[inline]
    pub fn contains(&self, b: u8) -> bool {
        self.0[(b >> 6) as usize] & (1 << (b & 63)) != 0
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Sym {
    /// One byte out of the set.
    Byte(ByteSet),
    /// Whatever the rule matches.
    Rule(u32),
}

pub(super) struct Rule {
    pub name: String,
    /// `None` until defined (a rule may be used before its definition).
    pub alts: Option<Vec<Vec<Sym>>>,
    /// Where it was first used, for the "never defined" error.
    pub used_at: Option<String>,
}

/// The most a bounded repetition may count (each count is a rule).
pub const MAX_REPEAT: u32 = 10_000;

/// The most symbols a grammar may hold once its repetitions are written out (bounds the
/// memory a hostile grammar or schema can ask for: ~40 bytes each).
pub const MAX_SYMBOLS: usize = 1 << 20;

/// The largest code point.
pub const MAX_CHAR: u32 = 0x10FFFF;

#[derive(Default)]
pub struct Builder {
    pub(super) rules: Vec<Rule>,
    by_name: HashMap<String, u32>,
    /// Character classes already lowered (the same class is one rule).
    classes: HashMap<Vec<(u32, u32)>, Sym>,
    fresh: u32,
    /// Symbols in the rules so far (checked against [`MAX_SYMBOLS`]).
    size: usize,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    /// The id of the rule called `name`, created (undefined) on first mention; `at` says
    /// where it is used, for the error if it is never defined.
    pub fn rule_id(&mut self, name: &str, at: Option<String>) -> u32 {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = self.rules.len() as u32;
        self.rules.push(Rule {
            name: name.to_string(),
            alts: None,
            used_at: at,
        });
        self.by_name.insert(name.to_string(), id);
        id
    }

    /// Defines rule `id`; a second definition is an error naming the rule.
    pub fn define(&mut self, id: u32, alts: Vec<Vec<Sym>>) -> Result<()> {
        let r = &mut self.rules[id as usize];
        if r.alts.is_some() {
            return Err(Error::InvalidArgument(format!(
                "grammar: rule '{}' is defined twice",
                r.name
            )));
        }
        self.size += alts.iter().map(Vec::len).sum::<usize>();
        r.alts = Some(alts);
        Ok(())
    }

    /// A new rule with a generated name (`base` plus a number), defined as `alts`.
    pub fn fresh(&mut self, base: &str, alts: Vec<Vec<Sym>>) -> u32 {
        self.fresh += 1;
        let name = format!("{base}~{}", self.fresh);
        let id = self.rule_id(&name, None);
        self.size += alts.iter().map(Vec::len).sum::<usize>();
        self.rules[id as usize].alts = Some(alts);
        id
    }

    /// An error if `more` symbols would make the grammar larger than [`MAX_SYMBOLS`].
    fn room_for(&self, more: usize) -> Result<()> {
        if self.size.saturating_add(more) > MAX_SYMBOLS {
            return Err(Error::InvalidArgument(format!(
                "grammar: too large (more than {MAX_SYMBOLS} symbols once repetitions are \
                 written out)"
            )));
        }
        Ok(())
    }

    /// The bytes of `s`, one symbol each.
    pub fn literal(s: &[u8]) -> Vec<Sym> {
        s.iter().map(|&b| Sym::Byte(ByteSet::range(b, b))).collect()
    }

    /// One character (UTF-8) in the given code-point ranges (inclusive), or outside them when
    /// `negated`. An empty class is an error.
    pub fn class(&mut self, ranges: &[(u32, u32)], negated: bool) -> Result<Sym> {
        let merged = normalize(ranges, negated);
        if merged.is_empty() {
            return Err(Error::InvalidArgument(
                "grammar: a character class matches no character".into(),
            ));
        }
        if let Some(s) = self.classes.get(&merged) {
            return Ok(s.clone());
        }
        // ASCII and the one-byte sequences in one set; longer sequences as alternatives.
        let mut ascii = ByteSet([0; 4]);
        let mut alts = Vec::new();
        for &(a, b) in &merged {
            for seq in utf8::sequences(a, b) {
                if seq.len() == 1 {
                    for x in seq[0].0..=seq[0].1 {
                        ascii.insert(x);
                    }
                } else {
                    alts.push(
                        seq.iter()
                            .map(|&(lo, hi)| Sym::Byte(ByteSet::range(lo, hi)))
                            .collect(),
                    );
                }
            }
        }
        let sym = if alts.is_empty() {
            Sym::Byte(ascii)
        } else {
            if ascii != ByteSet([0; 4]) {
                alts.insert(0, vec![Sym::Byte(ascii)]);
            }
            Sym::Rule(self.fresh("class", alts))
        };
        self.classes.insert(merged, sym.clone());
        Ok(sym)
    }

    /// `alts` as one symbol sequence: inline when there is one alternative, else a new rule.
    pub fn group(&mut self, base: &str, mut alts: Vec<Vec<Sym>>) -> Vec<Sym> {
        if alts.len() == 1 {
            return alts.pop().unwrap_or_default();
        }
        vec![Sym::Rule(self.fresh(base, alts))]
    }

    /// `item` repeated `min` to `max` times (`None`: unbounded). A bounded repetition is a
    /// chain of nested optional rules (so the matcher counts without a counter).
    pub fn repeat(
        &mut self,
        base: &str,
        item: Vec<Sym>,
        min: u32,
        max: Option<u32>,
    ) -> Result<Vec<Sym>> {
        let too_big = |n: u32| {
            Error::InvalidArgument(format!(
                "grammar: repetition count {n} is too large (at most {MAX_REPEAT})"
            ))
        };
        if min > MAX_REPEAT {
            return Err(too_big(min));
        }
        if let Some(m) = max {
            if m > MAX_REPEAT {
                return Err(too_big(m));
            }
            if m < min {
                return Err(Error::InvalidArgument(format!(
                    "grammar: repetition {{{min},{m}}} has its maximum below its minimum"
                )));
            }
        }
        let mut out = Vec::new();
        if item.is_empty() {
            return Ok(out);
        }
        // Each count is a copy of the item (inline or in its own rule).
        let copies = max.unwrap_or(min).max(min) as usize + 1;
        self.room_for(item.len().saturating_mul(copies))?;
        for _ in 0..min {
            out.extend(item.iter().cloned());
        }
        match max {
            None => {
                // R ::= item R | (empty): right recursion, which the matcher runs in constant
                // stack depth.
                let id = self.rule_id(&format!("{base}*~{}", self.fresh + 1), None);
                self.fresh += 1;
                let mut again = item.clone();
                again.push(Sym::Rule(id));
                self.rules[id as usize].alts = Some(vec![again, vec![]]);
                out.push(Sym::Rule(id));
            }
            Some(m) => {
                // O_1 ::= item | (empty); O_k ::= item O_{k-1} | (empty).
                let mut inner: Option<u32> = None;
                for _ in min..m {
                    let mut seq = item.clone();
                    seq.extend(inner.map(Sym::Rule));
                    inner = Some(self.fresh(&format!("{base}?"), vec![seq, vec![]]));
                }
                out.extend(inner.map(Sym::Rule));
            }
        }
        Ok(out)
    }

    /// Finishes with `root` as the start rule.
    pub fn finish(self, root: u32) -> Result<super::program::Program> {
        self.room_for(0)?;
        super::program::Program::compile(self.rules, root)
    }
}

/// Code-point ranges sorted, merged, and complemented when `negated` (inclusive ranges).
pub fn normalize(ranges: &[(u32, u32)], negated: bool) -> Vec<(u32, u32)> {
    let mut r: Vec<(u32, u32)> = ranges.iter().map(|&(a, b)| (a, b.min(MAX_CHAR))).collect();
    r.retain(|&(a, b)| a <= b);
    r.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (a, b) in r {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    if !negated {
        return merged;
    }
    let mut inv = Vec::new();
    let mut next = 0u32;
    for &(a, b) in &merged {
        if a > next {
            inv.push((next, a - 1));
        }
        next = b + 1;
    }
    if next <= MAX_CHAR {
        inv.push((next, MAX_CHAR));
    }
    inv
}
