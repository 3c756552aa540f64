//! `tojson` as Python's `json.dumps(x, ensure_ascii=False, indent=indent)`, which the templates
//! were written against: `", "` and `": "` separators, no HTML escaping. Bounded: the text grows
//! in a buffer that stops at the string limit (an indent of a billion spaces fails before it is
//! allocated) and nesting stops at the depth limit.

use super::limits::{Budget, DEPTH, STRING_BYTES};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use std::sync::Arc;

/// Register `tojson(indent=None)` (indent positional or by keyword, as Hugging Face passes it).
pub fn install(env: &mut Environment<'_>, budget: &Arc<Budget>) {
    let b = budget.clone();
    env.add_filter(
        "tojson",
        move |v: Value, indent: Option<usize>, kwargs: Kwargs| {
            let indent = match indent {
                Some(n) => Some(n),
                None => kwargs.get::<Option<usize>>("indent")?,
            };
            kwargs.assert_all_used()?;
            let mut out = Json {
                text: Vec::new(),
                indent,
                budget: &b,
            };
            out.value(&v, 0)?;
            b.string("tojson's result", Some(out.text.len() as u64))?;
            // Built from whole strings and ASCII only.
            let text = String::from_utf8(out.text)
                .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
            Ok::<_, JinjaError>(Value::from(text))
        },
    );
}

struct Json<'a> {
    text: Vec<u8>,
    indent: Option<usize>,
    budget: &'a Budget,
}

impl Json<'_> {
    /// Append `s`, unless the text would pass the string limit.
    fn push(&mut self, s: &str) -> Result<(), JinjaError> {
        self.room(s.len() as u64)?;
        self.text.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn room(&self, more: u64) -> Result<(), JinjaError> {
        let total = (self.text.len() as u64).saturating_add(more);
        if total > STRING_BYTES {
            return Err(self.budget.exceeded(
                "size",
                format!(
                    "tojson's result would pass {} bytes, over the string limit",
                    STRING_BYTES
                ),
            ));
        }
        Ok(())
    }

    /// A newline and the indentation of nesting level `depth`, when indenting.
    fn newline(&mut self, depth: usize) -> Result<(), JinjaError> {
        let Some(n) = self.indent else { return Ok(()) };
        let spaces = (n as u64).saturating_mul(depth as u64);
        self.room(spaces.saturating_add(1))?;
        self.text.push(b'\n');
        self.text.resize(self.text.len() + spaces as usize, b' ');
        Ok(())
    }

    fn value(&mut self, v: &Value, depth: usize) -> Result<(), JinjaError> {
        if depth > DEPTH {
            return Err(self.budget.exceeded(
                "depth",
                format!("tojson of a value nested deeper than {DEPTH} (or a cycle)"),
            ));
        }
        let sep = if self.indent.is_some() { "," } else { ", " };
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => self.push("null")?,
            ValueKind::Bool => self.push(if v.is_true() { "true" } else { "false" })?,
            ValueKind::Number => self.push(&v.to_string())?,
            ValueKind::String => self.string(v.as_str().unwrap_or_default())?,
            ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
                let is_map = v.kind() == ValueKind::Map;
                self.push(if is_map { "{" } else { "[" })?;
                let mut empty = true;
                for (i, item) in v.try_iter()?.enumerate() {
                    if i > 0 {
                        self.push(sep)?;
                    }
                    self.newline(depth + 1)?;
                    if is_map {
                        // A map's items are its keys.
                        match item.as_str() {
                            Some(s) => self.string(s)?,
                            None => self.string(&item.to_string())?,
                        }
                        self.push(": ")?;
                        self.value(&v.get_item(&item)?, depth + 1)?;
                    } else {
                        self.value(&item, depth + 1)?;
                    }
                    empty = false;
                }
                if !empty {
                    self.newline(depth)?;
                }
                self.push(if is_map { "}" } else { "]" })?;
            }
            _ => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot serialize a {} value", v.kind()),
                ))
            }
        }
        self.budget.charge(1)
    }

    /// `s` quoted and escaped, written through the limit.
    fn string(&mut self, s: &str) -> Result<(), JinjaError> {
        self.room(s.len() as u64)?;
        let budget = self.budget;
        let mut w = Capped(&mut self.text);
        serde_json::to_writer(&mut w, s).map_err(|_| {
            budget.exceeded(
                "size",
                format!("tojson's result would pass {STRING_BYTES} bytes, over the string limit"),
            )
        })
    }
}

/// A writer that refuses to grow past the string limit.
struct Capped<'a>(&'a mut Vec<u8>);

impl std::io::Write for Capped<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.0.len() + buf.len()) as u64 > STRING_BYTES {
            return Err(std::io::ErrorKind::OutOfMemory.into());
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
