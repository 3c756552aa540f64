//! JSON Schema → grammar. What is supported, per type:
//! - `object`: `properties` (written in the schema's order), `required`,
//!   `additionalProperties` (`false`, `true` or absent: only the declared properties are written;
//!   a schema with no `properties`: a map of string keys to such values);
//! - `array`: `items`, `minItems`, `maxItems`;
//! - `string`: `minLength`, `maxLength` (in characters; an escape such as `\n` is one), or
//!   `pattern` (the regular-expression subset of [`super::regex`]);
//! - `integer`: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`;
//! - `number`, `boolean`, `null`; a list of types (`["string", "null"]`);
//! - `enum`, `const`, `anyOf`, `allOf` of one schema, local `$ref` (`#/$defs/...`, recursion
//!   allowed); `{}` or `true`: any JSON value.
//!
//! Annotations (`title`, `description`, `default`, `examples`, `$schema`, `$id`, `$comment`,
//! `$defs`, `definitions`, `deprecated`, `readOnly`, `writeOnly`) are ignored. Any other keyword
//! is an error that names it and where it is (`format`, `oneOf`, ...): an output
//! that ignored it could fail validation.
//!
//! Bounds that keep a small model from looping: whitespace between tokens is at most
//! [`WS_MAX`] bytes, numbers have at most 16 digits before the point, 16 after it and a
//! two-digit exponent (so every number parses as a finite double).

use super::builder::{Builder, ByteSet, Sym};
use super::program::Program;
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The most whitespace (spaces, tabs, newlines) written between two JSON tokens.
pub const WS_MAX: u32 = 12;
/// Integer digits at most (so also the default bounds of an integer: ±(10^16 - 1)).
const INT_DIGITS: u32 = 16;
const FRACTION_DIGITS: u32 = 16;

const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "$defs",
    "definitions",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Compiles a JSON Schema given as JSON text.
pub fn compile(text: &str) -> Result<Program> {
    let schema: Value = serde_json::from_str(text)
        .map_err(|e| Error::InvalidArgument(format!("json schema: not valid JSON: {e}")))?;
    let orders = key_orders(text)?;
    let mut c = Compiler {
        b: Builder::new(),
        doc: &schema,
        orders,
        refs: HashMap::new(),
        ws: Vec::new(),
        string: None,
        any: None,
    };
    c.ws =
        c.b.repeat("ws", vec![ws_byte()], 0, Some(WS_MAX))
            .map_err(|e| bad("", &e.to_string()))?;
    let body = c.value(&schema, "")?;
    let root = c.b.rule_id("root", None);
    c.b.define(root, vec![body])?;
    c.b.finish(root)
}

fn bad(path: &str, why: &str) -> Error {
    let at = if path.is_empty() { "/" } else { path };
    Error::InvalidArgument(format!("json schema: at {at}: {why}"))
}

fn ws_byte() -> Sym {
    let mut s = ByteSet::range(b' ', b' ');
    s.insert(b'\t');
    s.insert(b'\n');
    Sym::Byte(s)
}

fn lit(s: &str) -> Vec<Sym> {
    Builder::literal(s.as_bytes())
}

fn cat(parts: impl IntoIterator<Item = Vec<Sym>>) -> Vec<Sym> {
    parts.into_iter().flatten().collect()
}

struct Compiler<'a> {
    b: Builder,
    doc: &'a Value,
    /// The key order of each object of the schema text, by path.
    orders: HashMap<String, Vec<String>>,
    /// `$ref` targets already compiled (or being compiled: recursion) → their rule.
    refs: HashMap<String, u32>,
    ws: Vec<Sym>,
    /// Any JSON string (one rule for all).
    string: Option<u32>,
    /// Any JSON value (one rule for all).
    any: Option<u32>,
}

impl Compiler<'_> {
    fn value(&mut self, schema: &Value, path: &str) -> Result<Vec<Sym>> {
        let obj = match schema {
            Value::Bool(true) => return self.any(),
            Value::Bool(false) => return Err(bad(path, "the schema `false` matches nothing")),
            Value::Object(o) => o,
            _ => return Err(bad(path, "a schema must be an object or a boolean")),
        };
        let keys: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| !ANNOTATIONS.contains(k))
            .collect();
        let alone = |kw: &str| -> Result<()> {
            match keys.iter().find(|&&k| k != kw && k != "type") {
                Some(k) => Err(bad(
                    path,
                    &format!("unsupported keyword '{k}' beside '{kw}' (only 'type' may be)"),
                )),
                None => Ok(()),
            }
        };
        if let Some(r) = obj.get("$ref") {
            alone("$ref")?;
            let r = r
                .as_str()
                .ok_or_else(|| bad(path, "'$ref' must be a string"))?;
            return self.reference(r, path);
        }
        if let Some(v) = obj.get("const") {
            alone("const")?;
            self.check_type_of(obj, v, path)?;
            return Ok(lit(&v.to_string()));
        }
        if let Some(v) = obj.get("enum") {
            alone("enum")?;
            let vals = v
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| bad(path, "'enum' must be a non-empty array"))?;
            let mut alts = Vec::new();
            for v in vals {
                self.check_type_of(obj, v, path)?;
                alts.push(lit(&v.to_string()));
            }
            return Ok(self.b.group("enum", alts));
        }
        for (kw, union) in [("anyOf", true), ("allOf", false)] {
            if let Some(v) = obj.get(kw) {
                alone(kw)?;
                if obj.contains_key("type") {
                    return Err(bad(
                        path,
                        &format!("unsupported keyword 'type' beside '{kw}'"),
                    ));
                }
                let subs = v
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| bad(path, &format!("'{kw}' must be a non-empty array")))?;
                if !union && subs.len() > 1 {
                    return Err(bad(
                        path,
                        "unsupported keyword 'allOf' with more than one schema",
                    ));
                }
                let mut alts = Vec::new();
                for (i, s) in subs.iter().enumerate() {
                    alts.push(self.value(s, &format!("{path}/{kw}/{i}"))?);
                }
                return Ok(self.b.group(kw, alts));
            }
        }
        let types: Vec<&str> = match obj.get("type") {
            None => match infer_type(&keys) {
                Some(t) => vec![t],
                None if keys.is_empty() => return self.any(),
                None => {
                    return Err(bad(path, &format!("unsupported keyword '{}'", keys[0])));
                }
            },
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) if !ts.is_empty() => strings(ts, "type", path)?,
            Some(_) => return Err(bad(path, "'type' must be a string or an array of strings")),
        };
        // Every keyword must belong to one of the types.
        for k in &keys {
            if *k != "type" && !types.iter().any(|t| keywords_of(t).contains(k)) {
                return Err(bad(path, &format!("unsupported keyword '{k}'")));
            }
        }
        let mut alts = Vec::new();
        for t in types {
            alts.push(match t {
                "object" => self.object(obj, path)?,
                "array" => self.array(obj, path)?,
                "string" => self.string(obj, path)?,
                "integer" => self.integer(obj, path)?,
                "number" => self.number(obj, path)?,
                "boolean" => self.b.group("boolean", vec![lit("true"), lit("false")]),
                "null" => lit("null"),
                other => return Err(bad(path, &format!("unknown type '{other}'"))),
            });
        }
        Ok(self.b.group("type", alts))
    }

    /// `enum`/`const` values must be of the schema's `type`, if it has one.
    fn check_type_of(&self, obj: &Map<String, Value>, v: &Value, path: &str) -> Result<()> {
        let Some(t) = obj.get("type") else {
            return Ok(());
        };
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if ok {
            Ok(())
        } else {
            Err(bad(
                path,
                &format!("value {v} is not of the schema's type {t}"),
            ))
        }
    }

    fn reference(&mut self, r: &str, path: &str) -> Result<Vec<Sym>> {
        if let Some(&id) = self.refs.get(r) {
            return Ok(vec![Sym::Rule(id)]);
        }
        let Some(pointer) = r.strip_prefix('#') else {
            return Err(bad(
                path,
                &format!("unsupported '$ref' {r:?}: only local references (#/...)"),
            ));
        };
        let target = self
            .doc
            .pointer(pointer)
            .ok_or_else(|| bad(path, &format!("'$ref' {r:?} points at nothing")))?;
        let id = self.b.rule_id(&format!("ref:{r}"), Some(path.to_string()));
        self.refs.insert(r.to_string(), id);
        let body = self.value(target, pointer)?;
        self.b.define(id, vec![body])?;
        Ok(vec![Sym::Rule(id)])
    }

    fn object(&mut self, obj: &Map<String, Value>, path: &str) -> Result<Vec<Sym>> {
        let empty = Map::new();
        let props = match obj.get("properties") {
            None => &empty,
            Some(Value::Object(p)) => p,
            Some(_) => return Err(bad(path, "'properties' must be an object")),
        };
        let required: Vec<&str> = match obj.get("required") {
            None => vec![],
            Some(Value::Array(a)) => strings(a, "required", path)?,
            Some(_) => return Err(bad(path, "'required' must be an array")),
        };
        for r in &required {
            if !props.contains_key(*r) {
                return Err(bad(
                    path,
                    &format!("required property '{r}' is not in 'properties'"),
                ));
            }
        }
        let ws = self.ws.clone();
        if props.is_empty() {
            // No declared properties: `{}`, or a map when additionalProperties allows more.
            let value = match obj.get("additionalProperties") {
                Some(Value::Bool(false)) => return Ok(cat([lit("{"), ws, lit("}")])),
                None | Some(Value::Bool(true)) => self.any()?,
                Some(s) => self.value(s, &format!("{path}/additionalProperties"))?,
            };
            let key = self.any_string()?;
            let pair = cat([key, ws.clone(), lit(":"), ws.clone(), value, ws.clone()]);
            let more = self
                .b
                .repeat("pair", cat([lit(","), ws.clone(), pair.clone()]), 0, None)?;
            let body = self.b.repeat("pairs", cat([pair, more]), 0, Some(1))?;
            return Ok(cat([lit("{"), ws, body, lit("}")]));
        }
        if let Some(a) = obj.get("additionalProperties") {
            if !a.is_boolean() && !a.is_object() {
                return Err(bad(
                    path,
                    "'additionalProperties' must be a boolean or a schema",
                ));
            }
        }
        // Each property: "name" ws ":" ws value ws; required ones always, optional ones may be
        // left out, in the declared order.
        let mut names: Vec<&String> = props.keys().collect();
        if let Some(order) = self.orders.get(&format!("{path}/properties")) {
            names.sort_by_key(|n| order.iter().position(|o| o == *n));
        }
        let mut items = Vec::new();
        for name in names {
            let s = &props[name];
            let key = serde_json::to_string(name).map_err(|e| bad(path, &e.to_string()))?;
            let v = self.value(s, &format!("{path}/properties/{name}"))?;
            let pair = cat([lit(&key), ws.clone(), lit(":"), ws.clone(), v, ws.clone()]);
            items.push((pair, required.contains(&name.as_str())));
        }
        // after[i]: the properties from i on when one was written already (each after a comma),
        // a rule each so that the whole stays linear in the number of properties.
        let mut after: Vec<Vec<Sym>> = vec![Vec::new(); items.len() + 1];
        for i in (0..items.len()).rev() {
            let with_comma = cat([lit(","), ws.clone(), items[i].0.clone()]);
            let this = if items[i].1 {
                with_comma
            } else {
                self.b.repeat("prop", with_comma, 0, Some(1))?
            };
            let rest = cat([this, after[i + 1].clone()]);
            after[i] = vec![Sym::Rule(self.b.fresh("props", vec![rest]))];
        }
        // first[i]: the properties from i on when none was written yet.
        let mut first: Vec<Vec<Sym>> = vec![Vec::new(); items.len() + 1];
        for i in (0..items.len()).rev() {
            let written = cat([items[i].0.clone(), after[i + 1].clone()]);
            first[i] = if items[i].1 {
                written
            } else {
                let rest = first[i + 1].clone();
                vec![Sym::Rule(self.b.fresh("props", vec![written, rest]))]
            };
        }
        Ok(cat([lit("{"), ws, first.swap_remove(0), lit("}")]))
    }

    fn array(&mut self, obj: &Map<String, Value>, path: &str) -> Result<Vec<Sym>> {
        let min = count(obj, "minItems", path)?.unwrap_or(0);
        let max = count(obj, "maxItems", path)?;
        if max.is_some_and(|m| m < min) {
            return Err(bad(path, "maxItems is below minItems"));
        }
        let ws = self.ws.clone();
        let item = match obj.get("items") {
            None => self.any()?,
            Some(s) => self.value(s, &format!("{path}/items"))?,
        };
        let item = cat([item, ws.clone()]);
        if max == Some(0) {
            return Ok(cat([lit("["), ws, lit("]")]));
        }
        let more = self.b.repeat(
            "items",
            cat([lit(","), ws.clone(), item.clone()]),
            min.saturating_sub(1),
            max.map(|m| m - 1),
        )?;
        let body = cat([item, more]);
        let body = if min == 0 {
            self.b.repeat("items", body, 0, Some(1))?
        } else {
            body
        };
        Ok(cat([lit("["), ws, body, lit("]")]))
    }

    /// One character of a JSON string: anything but `"`, `\` and controls, or an escape (a
    /// `\u` escape never names a lone surrogate, so each is one character).
    fn string_char(&mut self) -> Result<Vec<Sym>> {
        // Each pair of bytes is an inclusive ASCII range.
        let mut set = |pairs: &[u8]| {
            let r: Vec<(u32, u32)> = pairs
                .chunks(2)
                .map(|p| (p[0] as u32, p[1] as u32))
                .collect();
            self.b.class(&r, false)
        };
        let hex = set(b"09afAF")?;
        let not_d = set(b"09acACefEF")?;
        let d = set(b"ddDD")?;
        let low = set(b"07")?;
        let simple = set(b"\"\"\\\\//bbffnnrrtt")?;
        let plain = self
            .b
            .class(&[(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)], true)?;
        let u = vec![
            vec![not_d, hex.clone(), hex.clone(), hex.clone()],
            vec![d, low, hex.clone(), hex],
        ];
        let u = self.b.group("unicode", u);
        let escaped = vec![vec![simple], cat([lit("u"), u])];
        let escaped = self.b.group("escape", escaped);
        let ch = vec![vec![plain], cat([lit("\\"), escaped])];
        Ok(self.b.group("char", ch))
    }

    fn any_string(&mut self) -> Result<Vec<Sym>> {
        if let Some(id) = self.string {
            return Ok(vec![Sym::Rule(id)]);
        }
        let ch = self.string_char()?;
        let body = cat([lit("\""), self.b.repeat("string", ch, 0, None)?, lit("\"")]);
        let id = self.b.fresh("string", vec![body]);
        self.string = Some(id);
        Ok(vec![Sym::Rule(id)])
    }

    fn string(&mut self, obj: &Map<String, Value>, path: &str) -> Result<Vec<Sym>> {
        let min = count(obj, "minLength", path)?.unwrap_or(0);
        let max = count(obj, "maxLength", path)?;
        if max.is_some_and(|m| m < min) {
            return Err(bad(path, "maxLength is below minLength"));
        }
        if let Some(p) = obj.get("pattern") {
            let p = p
                .as_str()
                .ok_or_else(|| bad(path, "'pattern' must be a string"))?;
            if obj.contains_key("minLength") || obj.contains_key("maxLength") {
                return Err(bad(
                    path,
                    "unsupported keyword 'pattern' together with minLength/maxLength \
                     (bound the length in the pattern)",
                ));
            }
            let ch = self.string_char()?;
            let body = super::regex::compile(&mut self.b, p, &ch)
                .map_err(|e| bad(path, &format!("pattern {p:?}: {e}")))?;
            return Ok(cat([lit("\""), body, lit("\"")]));
        }
        if min == 0 && max.is_none() {
            return self.any_string();
        }
        let ch = self.string_char()?;
        let body = self
            .b
            .repeat("string", ch, min, max)
            .map_err(|e| bad(path, &e.to_string()))?;
        Ok(cat([lit("\""), body, lit("\"")]))
    }

    fn number(&mut self, _obj: &Map<String, Value>, _path: &str) -> Result<Vec<Sym>> {
        let digit = Sym::Byte(ByteSet::range(b'0', b'9'));
        let int = self.int_digits();
        let frac = cat([
            lit("."),
            self.b
                .repeat("fraction", vec![digit.clone()], 1, Some(FRACTION_DIGITS))?,
        ]);
        let frac = self.b.repeat("fraction", frac, 0, Some(1))?;
        let mut e = ByteSet::range(b'e', b'e');
        e.insert(b'E');
        let mut sign = ByteSet::range(b'+', b'+');
        sign.insert(b'-');
        let exp = cat([
            vec![Sym::Byte(e)],
            self.b.repeat("sign", vec![Sym::Byte(sign)], 0, Some(1))?,
            self.b.repeat("exponent", vec![digit], 1, Some(2))?,
        ]);
        let exp = self.b.repeat("exponent", exp, 0, Some(1))?;
        Ok(cat([int, frac, exp]))
    }

    /// `-?(0|[1-9][0-9]{0,15})`.
    fn int_digits(&mut self) -> Vec<Sym> {
        let minus = self
            .b
            .repeat("sign", lit("-"), 0, Some(1))
            .unwrap_or_default();
        let tail = self
            .b
            .repeat(
                "digits",
                vec![Sym::Byte(ByteSet::range(b'0', b'9'))],
                0,
                Some(INT_DIGITS - 1),
            )
            .unwrap_or_default();
        let nonzero = cat([vec![Sym::Byte(ByteSet::range(b'1', b'9'))], tail]);
        let mag = self.b.group("integer", vec![lit("0"), nonzero]);
        cat([minus, mag])
    }

    fn integer(&mut self, obj: &Map<String, Value>, path: &str) -> Result<Vec<Sym>> {
        let limit = 10i64.pow(INT_DIGITS) - 1;
        let bound = |kw: &str| -> Result<Option<f64>> {
            match obj.get(kw) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .map(Some)
                    .ok_or_else(|| bad(path, &format!("'{kw}' must be a number"))),
            }
        };
        let mut lo = -limit;
        let mut hi = limit;
        let clamp = |x: f64| x.clamp(-limit as f64 - 1.0, limit as f64 + 1.0) as i64;
        if let Some(m) = bound("minimum")? {
            lo = lo.max(clamp(m.ceil()));
        }
        if let Some(m) = bound("exclusiveMinimum")? {
            lo = lo.max(clamp(m.floor()) + 1);
        }
        if let Some(m) = bound("maximum")? {
            hi = hi.min(clamp(m.floor()));
        }
        if let Some(m) = bound("exclusiveMaximum")? {
            hi = hi.min(clamp(m.ceil()) - 1);
        }
        if lo > hi {
            return Err(bad(
                path,
                &format!("no integer of at most {INT_DIGITS} digits lies between the bounds"),
            ));
        }
        if lo == -limit && hi == limit {
            return Ok(self.int_digits());
        }
        let mut alts = Vec::new();
        if lo < 0 {
            // Negative numbers: "-" and a magnitude (never "-0").
            let (a, b) = ((-hi.min(-1)) as u64, (-lo) as u64);
            for d in digit_range(a, b) {
                alts.push(cat([lit("-"), d]));
            }
        }
        if hi >= 0 {
            alts.extend(digit_range(lo.max(0) as u64, hi as u64));
        }
        Ok(vec![Sym::Rule(self.b.fresh("integer", alts))])
    }

    /// Any JSON value (one rule, recursive).
    fn any(&mut self) -> Result<Vec<Sym>> {
        if let Some(id) = self.any {
            return Ok(vec![Sym::Rule(id)]);
        }
        let id = self.b.rule_id("value", None);
        self.any = Some(id);
        let ws = self.ws.clone();
        let value = vec![Sym::Rule(id)];
        let key = self.any_string()?;
        let pair = cat([
            key.clone(),
            ws.clone(),
            lit(":"),
            ws.clone(),
            value.clone(),
            ws.clone(),
        ]);
        let more = self
            .b
            .repeat("pair", cat([lit(","), ws.clone(), pair.clone()]), 0, None)?;
        let pairs = self.b.repeat("pairs", cat([pair, more]), 0, Some(1))?;
        let object = cat([lit("{"), ws.clone(), pairs, lit("}")]);
        let item = cat([value, ws.clone()]);
        let more = self
            .b
            .repeat("item", cat([lit(","), ws.clone(), item.clone()]), 0, None)?;
        let items = self.b.repeat("items", cat([item, more]), 0, Some(1))?;
        let array = cat([lit("["), ws, items, lit("]")]);
        let number = self.number(&Map::new(), "")?;
        self.b.define(
            id,
            vec![
                object,
                array,
                key,
                number,
                lit("true"),
                lit("false"),
                lit("null"),
            ],
        )?;
        Ok(vec![Sym::Rule(id)])
    }
}

/// The type a schema without `type` is about, from its keywords.
fn infer_type(keys: &[&str]) -> Option<&'static str> {
    ["object", "array", "string", "integer"]
        .into_iter()
        .find(|t| keys.iter().any(|k| keywords_of(t).contains(k)))
}

fn keywords_of(t: &str) -> &'static [&'static str] {
    match t {
        "object" => &["properties", "required", "additionalProperties"],
        "array" => &["items", "minItems", "maxItems"],
        "string" => &["minLength", "maxLength", "pattern"],
        "integer" => &["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"],
        _ => &[],
    }
}

/// The entries of keyword `kw`'s array, which must be strings.
fn strings<'v>(a: &'v [Value], kw: &str, path: &str) -> Result<Vec<&'v str>> {
    a.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| bad(path, &format!("'{kw}' entries must be strings")))
        })
        .collect()
}

/// A non-negative integer keyword (minItems, maxLength ...).
fn count(obj: &Map<String, Value>, kw: &str, path: &str) -> Result<Option<u32>> {
    match obj.get(kw) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| bad(path, &format!("'{kw}' must be a non-negative integer"))),
    }
}

/// The decimal digit strings (no leading zero) of the integers in `a..=b`, as alternatives.
fn digit_range(a: u64, b: u64) -> Vec<Vec<Sym>> {
    let mut alts = Vec::new();
    let (la, lb) = (a.to_string().len(), b.to_string().len());
    for n in la..=lb {
        let lo = if n == la { a } else { 10u64.pow(n as u32 - 1) };
        let hi = if n == lb { b } else { 10u64.pow(n as u32) - 1 };
        alts.extend(same_length(
            lo.to_string().as_bytes(),
            hi.to_string().as_bytes(),
        ));
    }
    alts
}

/// The digit strings s of one length with lo <= s <= hi.
fn same_length(lo: &[u8], hi: &[u8]) -> Vec<Vec<Sym>> {
    let digit = |a: u8, b: u8| Sym::Byte(ByteSet::range(a, b));
    let n = lo.len();
    if n == 1 {
        return vec![vec![digit(lo[0], hi[0])]];
    }
    if lo[0] == hi[0] {
        return same_length(&lo[1..], &hi[1..])
            .into_iter()
            .map(|t| cat([vec![digit(lo[0], lo[0])], t]))
            .collect();
    }
    let lo_full = lo[1..].iter().all(|&c| c == b'0');
    let hi_full = hi[1..].iter().all(|&c| c == b'9');
    let mut alts = Vec::new();
    if !lo_full {
        let nines = vec![b'9'; n - 1];
        for t in same_length(&lo[1..], &nines) {
            alts.push(cat([vec![digit(lo[0], lo[0])], t]));
        }
    }
    let first = if lo_full { lo[0] } else { lo[0] + 1 };
    let last = if hi_full { hi[0] } else { hi[0] - 1 };
    if first <= last {
        let mut seq = vec![digit(first, last)];
        seq.extend((1..n).map(|_| digit(b'0', b'9')));
        alts.push(seq);
    }
    if !hi_full {
        let zeros = vec![b'0'; n - 1];
        for t in same_length(&zeros, &hi[1..]) {
            alts.push(cat([vec![digit(hi[0], hi[0])], t]));
        }
    }
    alts
}

/// The order of the keys of every object in a JSON text, by path (`/properties/a` ...):
/// `serde_json::Value` sorts keys, but properties are written in the order the schema gives.
fn key_orders(text: &str) -> Result<HashMap<String, Vec<String>>> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;
    type Orders = RefCell<HashMap<String, Vec<String>>>;
    struct Seed<'a> {
        path: String,
        out: &'a Orders,
    }
    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> std::result::Result<(), A::Error> {
            let mut i = 0;
            while a
                .next_element_seed(Seed {
                    path: format!("{}/{i}", self.path),
                    out: self.out,
                })?
                .is_some()
            {
                i += 1;
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> std::result::Result<(), A::Error> {
            let mut keys = Vec::new();
            while let Some(k) = a.next_key::<String>()? {
                a.next_value_seed(Seed {
                    path: format!("{}/{k}", self.path),
                    out: self.out,
                })?;
                keys.push(k);
            }
            self.out.borrow_mut().insert(self.path, keys);
            Ok(())
        }
    }
    let out = RefCell::new(HashMap::new());
    let mut d = serde_json::Deserializer::from_str(text);
    Seed {
        path: String::new(),
        out: &out,
    }
    .deserialize(&mut d)
    .map_err(|e| Error::InvalidArgument(format!("json schema: not valid JSON: {e}")))?;
    Ok(out.into_inner())
}
