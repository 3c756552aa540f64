//! JSON Schema `pattern`: a regular expression (the ECMA-262 subset below) compiled to the
//! contents of a JSON string, between its quotes, whose *decoded* text the expression matches.
//! Characters that JSON must escape (`"`, `\`, controls) are written in their escaped form.
//!
//! Supported: literals, `.`, classes `[a-z]` `[^...]`, `\d \D \w \W \s \S`, escapes (`\n \t
//! \r \f \v \0 \xHH \uHHHH`, `\.` ...), groups `( )` `(?: )`, `|`, quantifiers `* + ? {n}
//! {n,} {n,m}` (lazy `?` suffixes allowed: same language), `^` at the start and `$` at the end
//! (a pattern is a search: without them, anything may come before or after). Unsupported, with
//! an error naming it: lookaround, back-references, `\b`, anchors elsewhere.

use super::builder::{normalize, Builder, Sym, MAX_CHAR};
use std::result::Result;

/// The symbols of a JSON string's contents matching `pat`; `any` is one JSON string
/// character (for the unanchored ends). Errors say what is unsupported or malformed.
pub fn compile(b: &mut Builder, pat: &str, any: &[Sym]) -> Result<Vec<Sym>, String> {
    let chars: Vec<char> = pat.chars().collect();
    let mut body = &chars[..];
    let anchored_start = body.first() == Some(&'^');
    if anchored_start {
        body = &body[1..];
    }
    // A trailing `$` that is not escaped (an even number of backslashes before it).
    let slashes = body
        .iter()
        .rev()
        .skip(1)
        .take_while(|&&c| c == '\\')
        .count();
    let anchored_end = body.last() == Some(&'$') && slashes % 2 == 0;
    if anchored_end {
        body = &body[..body.len() - 1];
    }
    let mut p = Parser { c: body, i: 0, b };
    let alts = p.alternatives()?;
    if p.i < p.c.len() {
        return Err(format!(
            "unmatched ')' at character {}",
            p.i + 1 + anchored_start as usize
        ));
    }
    if alts.len() > 1 && (anchored_start || anchored_end) {
        return Err("'^' or '$' with a top-level '|': write ^(a|b)$".into());
    }
    let mut out = Vec::new();
    let star =
        p.b.repeat("pattern", any.to_vec(), 0, None)
            .map_err(|e| e.to_string())?;
    if !anchored_start {
        out.extend(star.iter().cloned());
    }
    out.extend(p.b.group("pattern", alts));
    if !anchored_end {
        out.extend(star);
    }
    Ok(out)
}

struct Parser<'a, 'b> {
    c: &'a [char],
    i: usize,
    b: &'b mut Builder,
}

/// The JSON-encoded bytes of one character inside a string.
fn json_char(c: char) -> Vec<Sym> {
    let text = match c {
        '"' => "\\\"".to_string(),
        '\\' => "\\\\".to_string(),
        '\n' => "\\n".to_string(),
        '\r' => "\\r".to_string(),
        '\t' => "\\t".to_string(),
        '\u{8}' => "\\b".to_string(),
        '\u{c}' => "\\f".to_string(),
        c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32),
        c => c.to_string(),
    };
    Builder::literal(text.as_bytes())
}

impl Parser<'_, '_> {
    fn peek(&self) -> Option<char> {
        self.c.get(self.i).copied()
    }

    fn at(&self) -> String {
        format!("at character {}", self.i + 1)
    }

    fn alternatives(&mut self) -> Result<Vec<Vec<Sym>>, String> {
        let mut alts = vec![self.sequence()?];
        while self.peek() == Some('|') {
            self.i += 1;
            alts.push(self.sequence()?);
        }
        Ok(alts)
    }

    fn sequence(&mut self) -> Result<Vec<Sym>, String> {
        let mut seq = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            let atom = self.quantifier(atom)?;
            seq.extend(atom);
        }
        Ok(seq)
    }

    fn atom(&mut self) -> Result<Vec<Sym>, String> {
        let at = self.at();
        let c = self.peek().ok_or("unexpected end")?;
        self.i += 1;
        match c {
            '(' => {
                if self.peek() == Some('?') {
                    if self.c.get(self.i + 1) == Some(&':') {
                        self.i += 2;
                    } else {
                        return Err(format!("unsupported lookaround or group flag {at}"));
                    }
                }
                let alts = self.alternatives()?;
                if self.peek() != Some(')') {
                    return Err(format!("group not closed {at}"));
                }
                self.i += 1;
                Ok(self.b.group("pattern", alts))
            }
            '[' => {
                let negated = self.peek() == Some('^');
                if negated {
                    self.i += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let c = self.peek().ok_or(format!("class not closed {at}"))?;
                    if c == ']' && !first {
                        self.i += 1;
                        break;
                    }
                    first = false;
                    let lo = self.class_item(&mut ranges)?;
                    if let Some(lo) = lo {
                        if self.peek() == Some('-')
                            && self.c.get(self.i + 1).is_some_and(|&c| c != ']')
                        {
                            self.i += 1;
                            let hi = self
                                .class_item(&mut ranges)?
                                .ok_or(format!("a range ends in a class escape {at}"))?;
                            if hi < lo {
                                return Err(format!("character range reversed {at}"));
                            }
                            ranges.push((lo, hi));
                        } else {
                            ranges.push((lo, lo));
                        }
                    }
                }
                self.chars(&normalize(&ranges, negated), &at)
            }
            '.' => {
                // Any character but the line terminators.
                let r = [(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)];
                self.chars(&normalize(&r, true), &at)
            }
            '\\' => {
                let mut ranges = Vec::new();
                match self.escape(false, &mut ranges)? {
                    Some(ch) => Ok(json_char(char::from_u32(ch).unwrap_or('\u{FFFD}'))),
                    None => self.chars(&normalize(&ranges, false), &at),
                }
            }
            '^' | '$' => Err(format!(
                "unsupported anchor '{c}' {at} (only ^ first and $ last)"
            )),
            '*' | '+' | '?' | '{' => Err(format!("nothing to repeat before '{c}' {at}")),
            c => Ok(json_char(c)),
        }
    }

    /// One character of a class, or a class escape (`\d` ...) whose ranges go to `ranges`.
    fn class_item(&mut self, ranges: &mut Vec<(u32, u32)>) -> Result<Option<u32>, String> {
        let c = self.peek().ok_or("class not closed")?;
        self.i += 1;
        if c == '\\' {
            return self.escape(true, ranges);
        }
        Ok(Some(c as u32))
    }

    /// After a backslash: a character (`Some`), or a class escape added to `ranges` (`None`).
    fn escape(
        &mut self,
        in_class: bool,
        ranges: &mut Vec<(u32, u32)>,
    ) -> Result<Option<u32>, String> {
        let at = self.at();
        let e = self.peek().ok_or("pattern ends in a backslash")?;
        self.i += 1;
        let digit = [(0x30, 0x39)];
        let word = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)];
        let space = [
            (0x09, 0x0D),
            (0x20, 0x20),
            (0xA0, 0xA0),
            (0x1680, 0x1680),
            (0x2000, 0x200A),
            (0x2028, 0x2029),
            (0x202F, 0x202F),
            (0x205F, 0x205F),
            (0x3000, 0x3000),
            (0xFEFF, 0xFEFF),
        ];
        let class = |set: &[(u32, u32)], neg: bool, ranges: &mut Vec<(u32, u32)>| {
            ranges.extend(normalize(set, neg));
            Ok(None)
        };
        match e {
            'd' => class(&digit, false, ranges),
            'D' => class(&digit, true, ranges),
            'w' => class(&word, false, ranges),
            'W' => class(&word, true, ranges),
            's' => class(&space, false, ranges),
            'S' => class(&space, true, ranges),
            'n' => Ok(Some(0x0A)),
            'r' => Ok(Some(0x0D)),
            't' => Ok(Some(0x09)),
            'f' => Ok(Some(0x0C)),
            'v' => Ok(Some(0x0B)),
            '0' => Ok(Some(0)),
            'b' if in_class => Ok(Some(0x08)),
            'x' | 'u' => {
                let n = if e == 'x' { 2 } else { 4 };
                let digits: String = self.c.iter().skip(self.i).take(n).collect();
                let v = u32::from_str_radix(&digits, 16)
                    .ok()
                    .filter(|_| digits.len() == n)
                    .ok_or(format!("bad \\{e} escape {at}"))?;
                self.i += n;
                Ok(Some(v))
            }
            c if c.is_ascii_alphanumeric() => Err(format!("unsupported escape '\\{c}' {at}")),
            c => Ok(Some(c as u32)),
        }
    }

    /// One character out of `ranges`, in its JSON-encoded form.
    fn chars(&mut self, ranges: &[(u32, u32)], at: &str) -> Result<Vec<Sym>, String> {
        // Characters written as themselves: all but controls, '"' and '\'.
        let plain_set = normalize(&[(0x20, 0x21), (0x23, 0x5B), (0x5D, MAX_CHAR)], false);
        let mut plain = Vec::new();
        let mut alts = Vec::new();
        for &(a, z) in ranges {
            for &(pa, pz) in &plain_set {
                let (lo, hi) = (a.max(pa), z.min(pz));
                if lo <= hi {
                    plain.push((lo, hi));
                }
            }
            for c in (a..=z.min(0x5C)).filter(|&c| c < 0x20 || c == 0x22 || c == 0x5C) {
                alts.push(json_char(char::from_u32(c).unwrap_or(' ')));
            }
        }
        if !plain.is_empty() {
            let sym = self.b.class(&plain, false).map_err(|e| e.to_string())?;
            alts.insert(0, vec![sym]);
        }
        if alts.is_empty() {
            return Err(format!("a class matches no character {at}"));
        }
        Ok(self.b.group("pattern", alts))
    }

    fn quantifier(&mut self, atom: Vec<Sym>) -> Result<Vec<Sym>, String> {
        let at = self.at();
        let (min, max) = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                let close = self.c[self.i..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or(format!("'{{' not closed {at}"))?;
                let inner: String = self.c[self.i + 1..self.i + close].iter().collect();
                let num = |s: &str| {
                    s.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("bad count {{{inner}}} {at}"))
                };
                let (min, max) = match inner.split_once(',') {
                    None => (num(&inner)?, Some(num(&inner)?)),
                    Some((a, b)) if b.trim().is_empty() => (num(a)?, None),
                    Some((a, b)) => (num(a)?, Some(num(b)?)),
                };
                self.i += close;
                (min, max)
            }
            _ => return Ok(atom),
        };
        self.i += 1;
        if self.peek() == Some('?') {
            self.i += 1; // lazy: the same set of strings
        }
        if matches!(self.peek(), Some('*' | '+' | '?' | '{')) {
            return Err(format!("nested quantifier {}", self.at()));
        }
        self.b
            .repeat("pattern", atom, min, max)
            .map_err(|e| format!("{e} {at}"))
    }
}
