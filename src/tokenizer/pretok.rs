//! Pre-tokenizers of byte-level BPE models: hand-written scanners, each equivalent to the split
//! regex its model was trained with (leftmost alternative wins, as in a backtracking regex engine).
//!
//! GPT-2:   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! Llama 3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//!           ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//! Qwen2:   as Llama 3 with `\p{N}` (one digit per piece).
//! SmolLM:  decimal digits (\p{Nd}) isolated one per piece, then GPT-2 on the rest.
//! `\s` is Unicode White_Space (Rust's `char::is_whitespace`), `\p{L}`/`\p{N}` general categories.

use crate::{Error, Result};
use unicode_general_category::{get_general_category, GeneralCategory as G};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    Gpt2,
    Llama3,
    Qwen2,
    SmolLm,
}

impl PreTokenizer {
    /// The split named by `tokenizer.ggml.pre` (absent: the GPT-2 default).
    pub fn from_name(pre: Option<&str>) -> Result<Self> {
        Ok(match pre {
            None | Some("default") | Some("gpt2") | Some("gpt-2") => PreTokenizer::Gpt2,
            Some("llama-bpe") | Some("llama3") => PreTokenizer::Llama3,
            Some("qwen2") => PreTokenizer::Qwen2,
            Some("smollm") => PreTokenizer::SmolLm,
            Some(other) => {
                return Err(Error::Unsupported(format!(
                    "tokenizer.ggml.pre = '{other}': this pre-tokenizer split is not implemented \
                     (known: default, gpt2, llama-bpe, qwen2, smollm)"
                )))
            }
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cls {
    Letter,
    /// \p{Nd}
    Digit,
    /// \p{Nl}, \p{No}
    OtherNum,
    Space,
    Other,
}

impl Cls {
    #[inline]
    fn is_num(self) -> bool {
        matches!(self, Cls::Digit | Cls::OtherNum)
    }
}

#[inline]
fn class(c: char) -> Cls {
    if c.is_ascii() {
        let b = c as u8;
        return if b.is_ascii_alphabetic() {
            Cls::Letter
        } else if b.is_ascii_digit() {
            Cls::Digit
        } else if matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
            Cls::Space
        } else {
            Cls::Other
        };
    }
    if c.is_whitespace() {
        return Cls::Space;
    }
    match get_general_category(c) {
        G::UppercaseLetter
        | G::LowercaseLetter
        | G::TitlecaseLetter
        | G::ModifierLetter
        | G::OtherLetter => Cls::Letter,
        G::DecimalNumber => Cls::Digit,
        G::LetterNumber | G::OtherNumber => Cls::OtherNum,
        _ => Cls::Other,
    }
}

/// Reusable scratch space: the characters of one fragment with their classes.
#[derive(Default)]
pub struct Scratch {
    chars: Vec<(char, Cls)>,
    offs: Vec<usize>,
}

/// Split `text` into pre-tokens; calls `f` with each piece (never empty).
pub fn split<'t>(pre: PreTokenizer, text: &'t str, sc: &mut Scratch, mut f: impl FnMut(&'t str)) {
    sc.chars.clear();
    sc.offs.clear();
    for (i, c) in text.char_indices() {
        sc.chars.push((c, class(c)));
        sc.offs.push(i);
    }
    sc.offs.push(text.len());
    let cs = &sc.chars[..];
    let n = cs.len();
    let mut emit = |a: usize, b: usize| f(&text[sc.offs[a]..sc.offs[b]]);
    match pre {
        PreTokenizer::Gpt2 => {
            let mut i = 0;
            while i < n {
                let e = gpt2_at(cs, i, n);
                emit(i, e);
                i = e;
            }
        }
        PreTokenizer::SmolLm => {
            // Each decimal digit is its own piece; GPT-2 runs on the text between digits.
            let mut i = 0;
            while i < n {
                if cs[i].1 == Cls::Digit {
                    emit(i, i + 1);
                    i += 1;
                    continue;
                }
                let end = (i..n).find(|&k| cs[k].1 == Cls::Digit).unwrap_or(n);
                while i < end {
                    let e = gpt2_at(cs, i, end);
                    emit(i, e);
                    i = e;
                }
            }
        }
        PreTokenizer::Llama3 | PreTokenizer::Qwen2 => {
            let max_digits = if pre == PreTokenizer::Llama3 { 3 } else { 1 };
            let mut i = 0;
            while i < n {
                let e = llama3_at(cs, i, n, max_digits);
                emit(i, e);
                i = e;
            }
        }
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d` at `i` (which holds an apostrophe): the match length.
#[inline]
fn contraction(cs: &[(char, Cls)], i: usize, n: usize, ignore_case: bool) -> Option<usize> {
    let low = |k: usize| -> Option<char> {
        if k >= n {
            return None;
        }
        let c = cs[k].0;
        Some(if ignore_case {
            c.to_ascii_lowercase()
        } else {
            c
        })
    };
    match low(i + 1)? {
        's' | 't' | 'm' | 'd' => Some(2),
        'r' | 'v' if low(i + 2) == Some('e') => Some(3),
        'l' if low(i + 2) == Some('l') => Some(3),
        _ => None,
    }
}

#[inline]
fn run(cs: &[(char, Cls)], mut k: usize, n: usize, p: impl Fn(Cls) -> bool) -> usize {
    while k < n && p(cs[k].1) {
        k += 1;
    }
    k
}

/// `\s+(?!\S)|\s+` at `i` (a whitespace character).
#[inline]
fn trailing_space(cs: &[(char, Cls)], i: usize, n: usize) -> usize {
    let k = run(cs, i, n, |c| c == Cls::Space);
    // At the end, or a single space before a non-space: the whole run. Otherwise leave the last
    // whitespace character to prefix the next piece.
    if k == n || k - i == 1 {
        k
    } else {
        k - 1
    }
}

fn gpt2_at(cs: &[(char, Cls)], i: usize, n: usize) -> usize {
    let c = cs[i].0;
    if c == '\'' {
        if let Some(len) = contraction(cs, i, n, false) {
            return i + len;
        }
    }
    // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+`
    let j = if c == ' ' && i + 1 < n { i + 1 } else { i };
    match cs[j].1 {
        Cls::Letter => return run(cs, j, n, |c| c == Cls::Letter),
        Cls::Digit | Cls::OtherNum => return run(cs, j, n, Cls::is_num),
        Cls::Other => return run(cs, j, n, |c| c == Cls::Other),
        Cls::Space => {}
    }
    trailing_space(cs, i, n)
}

fn llama3_at(cs: &[(char, Cls)], i: usize, n: usize, max_digits: usize) -> usize {
    let (c, cl) = cs[i];
    if c == '\'' {
        if let Some(len) = contraction(cs, i, n, true) {
            return i + len;
        }
    }
    // `[^\r\n\p{L}\p{N}]?\p{L}+`
    if cl == Cls::Letter {
        return run(cs, i, n, |c| c == Cls::Letter);
    }
    if c != '\r' && c != '\n' && !cl.is_num() && i + 1 < n && cs[i + 1].1 == Cls::Letter {
        return run(cs, i + 1, n, |c| c == Cls::Letter);
    }
    // `\p{N}{1,3}` (Qwen2: `\p{N}`)
    if cl.is_num() {
        let end = run(cs, i, n, Cls::is_num);
        return end.min(i + max_digits);
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let j = if c == ' ' && i + 1 < n { i + 1 } else { i };
    if cs[j].1 == Cls::Other {
        let k = run(cs, j, n, |c| c == Cls::Other);
        let mut k2 = k;
        while k2 < n && matches!(cs[k2].0, '\r' | '\n') {
            k2 += 1;
        }
        return k2;
    }
    // Only whitespace is left. `\s*[\r\n]+`: up to the last line break of the run.
    let k = run(cs, i, n, |c| c == Cls::Space);
    if let Some(p) = (i..k).rev().find(|&p| matches!(cs[p].0, '\r' | '\n')) {
        return p + 1;
    }
    trailing_space(cs, i, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(pre: PreTokenizer, s: &str) -> Vec<String> {
        let mut v = Vec::new();
        let mut sc = Scratch::default();
        split(pre, s, &mut sc, |p| v.push(p.to_string()));
        assert_eq!(v.concat(), s, "pieces must cover the text");
        v
    }

    #[test]
    fn gpt2_split() {
        let p = pieces(PreTokenizer::Gpt2, "Hello world's  end!!\n\n  x 123");
        assert_eq!(
            p,
            ["Hello", " world", "'s", " ", " end", "!!", "\n\n ", " x", " 123"]
        );
    }

    #[test]
    fn llama3_split() {
        let p = pieces(PreTokenizer::Llama3, "I'M 12345 (x):\n\n  y");
        assert_eq!(
            p,
            ["I", "'M", " ", "123", "45", " (", "x", "):\n\n", " ", " y"]
        );
        // `\s*[\r\n]+` takes the spaces before the line break; the run after it stays whitespace.
        let p = pieces(PreTokenizer::Qwen2, "a  \n  b12");
        assert_eq!(p, ["a", "  \n", " ", " b", "1", "2"]);
    }

    #[test]
    fn smollm_digits() {
        let p = pieces(PreTokenizer::SmolLm, "x 12 Ⅻ");
        assert_eq!(p, ["x", " ", "1", "2", " Ⅻ"]);
    }
}
