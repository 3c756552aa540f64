//! The grammar text: GBNF-like EBNF.
//!
//! ```text
//! root   ::= object                     # the start rule is called root
//! object ::= "{" ws (pair ("," ws pair)*)? "}"
//! pair   ::= [a-z]+ ":" ws ("true" | "false")
//! ws     ::= [ \t\n]{0,4}
//! ```
//!
//! A rule is `name ::= alternatives`; it runs until the next `name ::=`. Alternatives are
//! separated by `|`; a sequence is items side by side; an item is a string literal `"..."`, a
//! character class `[a-z]` / `[^"\\]`, `.` (any character), a rule name or a group `( ... )`,
//! followed by any of `*`, `+`, `?`, `{n}`, `{n,}`, `{n,m}`. Escapes in literals and classes:
//! `\n \r \t \\ \" \' \[ \] \- \^ \/ \xHH \uHHHH \UHHHHHHHH` (code points, written as UTF-8).
//! `#` starts a comment to the end of the line.

use super::builder::{Builder, Sym, MAX_CHAR};
use super::program::Program;
use crate::{Error, Result};

/// Compiles grammar text; errors give the line and column.
pub fn compile(text: &str) -> Result<Program> {
    let mut p = Parser {
        src: text.as_bytes(),
        text,
        pos: 0,
        b: Builder::new(),
    };
    p.skip_space();
    if p.pos == p.src.len() {
        return Err(Error::InvalidArgument("grammar: empty (no rules)".into()));
    }
    while p.pos < p.src.len() {
        p.rule()?;
    }
    let root =
        p.b.rules
            .iter()
            .position(|r| r.name == "root" && r.alts.is_some())
            .ok_or_else(|| Error::InvalidArgument("grammar: no rule named 'root'".into()))?;
    p.b.finish(root as u32)
}

struct Parser<'a> {
    src: &'a [u8],
    text: &'a str,
    pos: usize,
    b: Builder,
}

fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

impl Parser<'_> {
    /// "line L column C" of byte `at` (columns in characters).
    fn where_(&self, at: usize) -> String {
        let before = self.text.get(..at).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        format!("line {line} column {col}")
    }

    fn err<T>(&self, at: usize, what: &str) -> Result<T> {
        Err(Error::InvalidArgument(format!(
            "grammar: {}: {what}",
            self.where_(at)
        )))
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            if c == b'#' {
                while self.peek().is_some_and(|c| c != b'\n') {
                    self.pos += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn name(&mut self) -> Option<&str> {
        let start = self.pos;
        while self.peek().is_some_and(is_name_byte) {
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.text[start..self.pos])
    }

    /// Whether a `name ::=` starts here (the end of the current rule).
    fn at_rule_start(&self) -> bool {
        let mut i = self.pos;
        while self.src.get(i).copied().is_some_and(is_name_byte) {
            i += 1;
        }
        if i == self.pos {
            return false;
        }
        while self.src.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
            i += 1;
        }
        self.src[i..].starts_with(b"::=")
    }

    fn rule(&mut self) -> Result<()> {
        let at = self.pos;
        let Some(name) = self.name().map(str::to_string) else {
            return self.err(at, "expected a rule name");
        };
        self.skip_space();
        if !self.src[self.pos..].starts_with(b"::=") {
            return self.err(
                self.pos,
                &format!("expected '::=' after rule name '{name}'"),
            );
        }
        self.pos += 3;
        let alts = self.alternatives(&name)?;
        if self.pos < self.src.len() && !self.at_rule_start() {
            return self.err(self.pos, "unexpected character");
        }
        let id = self.b.rule_id(&name, None);
        self.b.define(id, alts).map_err(|e| match e {
            Error::InvalidArgument(m) => {
                Error::InvalidArgument(format!("{m} ({})", self.where_(at)))
            }
            e => e,
        })
    }

    fn alternatives(&mut self, rule: &str) -> Result<Vec<Vec<Sym>>> {
        let mut alts = vec![self.sequence(rule)?];
        while self.peek() == Some(b'|') {
            self.pos += 1;
            alts.push(self.sequence(rule)?);
        }
        Ok(alts)
    }

    fn sequence(&mut self, rule: &str) -> Result<Vec<Sym>> {
        let mut seq = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                None | Some(b'|') | Some(b')') => return Ok(seq),
                _ if self.at_rule_start() => return Ok(seq),
                _ => {}
            }
            let item = self.primary(rule)?;
            let item = self.postfix(rule, item)?;
            seq.extend(item);
        }
    }

    fn primary(&mut self, rule: &str) -> Result<Vec<Sym>> {
        let at = self.pos;
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                let mut bytes = Vec::new();
                loop {
                    match self.peek() {
                        None => return self.err(at, "string literal not closed"),
                        Some(b'"') => {
                            self.pos += 1;
                            break;
                        }
                        Some(_) => {
                            let c = self.char_in(at)?;
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                Ok(Builder::literal(&bytes))
            }
            Some(b'[') => {
                self.pos += 1;
                let negated = self.peek() == Some(b'^');
                if negated {
                    self.pos += 1;
                }
                let mut ranges = Vec::new();
                loop {
                    match self.peek() {
                        None => return self.err(at, "character class not closed"),
                        Some(b']') => {
                            self.pos += 1;
                            break;
                        }
                        Some(_) => {
                            let lo = self.char_in(at)? as u32;
                            let mut hi = lo;
                            if self.peek() == Some(b'-')
                                && self.src.get(self.pos + 1) != Some(&b']')
                            {
                                self.pos += 1;
                                if self.peek().is_none() {
                                    return self.err(at, "character class not closed");
                                }
                                let r_at = self.pos;
                                hi = self.char_in(at)? as u32;
                                if hi < lo {
                                    return self.err(r_at, "character range is reversed");
                                }
                            }
                            ranges.push((lo, hi));
                        }
                    }
                }
                let sym = self
                    .b
                    .class(&ranges, negated)
                    .or_else(|_| self.err(at, "character class matches no character"))?;
                Ok(vec![sym])
            }
            Some(b'.') => {
                self.pos += 1;
                Ok(vec![self.b.class(&[(0, MAX_CHAR)], false)?])
            }
            Some(b'(') => {
                self.pos += 1;
                let alts = self.alternatives(rule)?;
                if self.peek() != Some(b')') {
                    return self.err(at, "group '(' not closed");
                }
                self.pos += 1;
                Ok(self.b.group(rule, alts))
            }
            Some(c) if is_name_byte(c) => {
                let name = self.name().unwrap_or_default().to_string();
                let used = self.where_(at);
                Ok(vec![Sym::Rule(self.b.rule_id(&name, Some(used)))])
            }
            Some(_) => {
                let c = self.text[self.pos..].chars().next().unwrap_or('?');
                self.err(at, &format!("unexpected '{c}'"))
            }
            None => self.err(at, "unexpected end of the grammar"),
        }
    }

    fn postfix(&mut self, rule: &str, mut item: Vec<Sym>) -> Result<Vec<Sym>> {
        loop {
            let at = self.pos;
            let (min, max) = match self.peek() {
                Some(b'*') => (0, None),
                Some(b'+') => (1, None),
                Some(b'?') => (0, Some(1)),
                Some(b'{') => {
                    self.pos += 1;
                    self.skip_space();
                    let min = self.number(at)?;
                    self.skip_space();
                    let max = if self.peek() == Some(b',') {
                        self.pos += 1;
                        self.skip_space();
                        if self.peek() == Some(b'}') {
                            None
                        } else {
                            Some(self.number(at)?)
                        }
                    } else {
                        Some(min)
                    };
                    self.skip_space();
                    if self.peek() != Some(b'}') {
                        return self.err(at, "expected '}' to close the repetition");
                    }
                    (min, max)
                }
                _ => return Ok(item),
            };
            self.pos += 1;
            item = self
                .b
                .repeat(rule, item, min, max)
                .or_else(|e| self.err(at, &e.to_string()))?;
        }
    }

    fn number(&mut self, at: usize) -> Result<u32> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.text[start..self.pos]
            .parse()
            .or_else(|_| self.err(at, "expected a repetition count"))
    }

    /// One character of a literal or class (escapes resolved).
    fn char_in(&mut self, at: usize) -> Result<char> {
        let c = self.text[self.pos..].chars().next().unwrap_or('\0');
        self.pos += c.len_utf8();
        if c != '\\' {
            return Ok(c);
        }
        let e_at = self.pos - 1;
        let Some(e) = self.peek() else {
            return self.err(at, "escape at the end of the grammar");
        };
        self.pos += 1;
        let hex = |p: &mut Self, n: usize| -> Result<char> {
            let digits = p.text.get(p.pos..p.pos + n).unwrap_or("");
            let v = u32::from_str_radix(digits, 16)
                .ok()
                .filter(|_| digits.len() == n && digits.bytes().all(|d| d.is_ascii_hexdigit()));
            p.pos += digits.len();
            match v.and_then(char::from_u32) {
                Some(c) => Ok(c),
                None => p.err(
                    e_at,
                    &format!("bad escape: expected {n} hex digits of a character"),
                ),
            }
        };
        Ok(match e {
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'\\' | b'"' | b'\'' | b'[' | b']' | b'-' | b'^' | b'/' => e as char,
            b'x' => hex(self, 2)?,
            b'u' => hex(self, 4)?,
            b'U' => hex(self, 8)?,
            _ => {
                let c = self.text[self.pos - 1..].chars().next().unwrap_or('?');
                return self.err(e_at, &format!("unknown escape '\\{c}'"));
            }
        })
    }
}
