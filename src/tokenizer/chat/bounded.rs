//! Filters, string methods and `strftime_now` whose result can be far larger than their input
//! (a width, a count, a separator repeated per item). Each computes a bound on its result from
//! its arguments, checks and pays for it (`limits::Budget`), then calls the implementation
//! (minijinja's, or ours for `strftime_now`) with the same arguments, so the semantics stay
//! theirs. The other filters are linear in their input, which the call guard (`guard.rs`) has
//! already walked and paid for.

use super::limits::{Budget, NODE_COST};
use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{filters, Environment, Error as JinjaError, State};
use std::sync::Arc;

/// A check of a call's arguments before minijinja's filter runs.
type Check = fn(&Budget, &[Value]) -> Result<(), JinjaError>;

/// Register the bounded filters and the bounded Python string methods.
pub fn install(env: &mut Environment<'_>, budget: &Arc<Budget>) {
    let bounded: [(&str, Value, Check); 10] = [
        (
            "indent",
            Value::from_function(filters::indent),
            check_indent,
        ),
        ("batch", Value::from_function(filters::batch), check_batch),
        ("slice", Value::from_function(filters::slice), check_slice),
        (
            "format",
            Value::from_function(filters::format),
            check_printf,
        ),
        (
            "replace",
            Value::from_function(filters::replace),
            check_replace,
        ),
        ("join", Value::from_function(filters::join), check_join),
        ("trim", Value::from_function(filters::trim), check_trim),
        (
            "pprint",
            Value::from_function(filters::pprint),
            check_pprint,
        ),
        ("split", Value::from_function(filters::split), check_split),
        ("lines", Value::from_function(filters::lines), check_lines),
    ];
    for (name, original, check) in bounded {
        let b = budget.clone();
        env.add_filter(name, move |state: &State, args: Rest<Value>| {
            check(&b, &args)?;
            original.call(state, &args)
        });
    }

    // Each directive writes at most 9 bytes for its 2 (`%A`: "Wednesday").
    let b = budget.clone();
    env.add_function("strftime_now", move |format: String| {
        let most = (format.len() as u64).checked_mul(5);
        b.string("strftime_now's result", most)?;
        crate::tokenizer::strftime::strftime_now(format)
    });

    let b = budget.clone();
    env.set_unknown_method_callback(move |state, value, method, args| {
        if value.kind() == ValueKind::String {
            // Same checks, with the string as the filter's first argument.
            let with_self = |rest: &[Value]| [std::slice::from_ref(value), rest].concat();
            match method {
                "format" => check_format(&b, &with_self(args), Style::StrFormat)?,
                "replace" => check_replace(&b, &with_self(args))?,
                "strip" | "lstrip" | "rstrip" => check_trim(&b, &with_self(args))?,
                "split" => check_split(&b, &with_self(args))?,
                "splitlines" => check_lines(&b, &with_self(args))?,
                // minijinja-contrib 2.24 loops forever on `count('')`; Python counts the
                // boundaries between characters.
                "count" if args.first().and_then(Value::as_str) == Some("") && args.len() == 1 => {
                    let s = value.as_str().unwrap_or_default();
                    return Ok(Value::from(s.chars().count() + 1));
                }
                // `sep.join(items)` is `items|join(sep)`.
                "join" => {
                    let mut a = args.to_vec();
                    a.push(value.clone());
                    check_join(&b, &a)?
                }
                _ => {}
            }
        }
        minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
    });
}

/// The positional argument `i`, or the keyword argument `name`.
fn arg(args: &[Value], i: usize, name: &str) -> Option<Value> {
    let kwargs = args.last().filter(|v| v.is_kwargs());
    let positional = args.len() - usize::from(kwargs.is_some());
    if i < positional {
        return Some(args[i].clone());
    }
    kwargs
        .and_then(|k| k.get_item(&Value::from(name)).ok())
        .filter(|v| !v.is_undefined())
}

/// The text a filter will see for `v` (a string as is; anything else printed), with a bound on
/// its length when it is not a string.
fn text_len<'v>(b: &Budget, v: &'v Value) -> Result<(Option<&'v str>, u64), JinjaError> {
    match v.as_str() {
        Some(s) => Ok((Some(s), s.len() as u64)),
        None => Ok((None, b.measure(v, 0)?.text_bound(v))),
    }
}

/// `indent(width)`: every line gains `width` spaces.
fn check_indent(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    let Some(v) = args.first() else { return Ok(()) };
    let Some(width) = arg(args, 1, "width").map_or(Some(4), |w| w.as_usize()) else {
        return Ok(()); // not a width: minijinja's error
    };
    let (text, len) = text_len(b, v)?;
    let lines = match text {
        Some(s) => s.bytes().filter(|&c| c == b'\n').count() as u64 + 1,
        None => len + 1,
    };
    let total = lines
        .checked_mul(width as u64)
        .and_then(|n| n.checked_add(len));
    b.string("indent's result", total)
}

/// `batch(count, fill)`: minijinja reserves `count` items up front and pads to `count`.
fn check_batch(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    match args.get(1).and_then(Value::as_usize) {
        Some(count) => b.items("batch's count", Some(count as u64)),
        None => Ok(()),
    }
}

/// `slice(count, fill)`: `count` lists, however short the input.
fn check_slice(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    match args.get(1).and_then(Value::as_usize) {
        Some(count) => {
            b.items("slice's count", Some(count as u64))?;
            b.charge((count as u64).saturating_mul(NODE_COST))
        }
        None => Ok(()),
    }
}

/// `trim(chars)`, `strip(chars)`: each character trimmed is looked up among `chars` one by one.
fn check_trim(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    let (Some(v), Some(chars)) = (args.first(), args.get(1)) else {
        return Ok(());
    };
    let (_, len) = text_len(b, v)?;
    let (_, chars) = text_len(b, chars)?;
    b.charge(len.saturating_mul(chars))
}

/// `split(sep)`: a value a piece (every character, for an empty `sep`), counted before it is
/// made.
fn check_split(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    let Some(s) = args.first().and_then(Value::as_str) else {
        return Ok(());
    };
    let pieces = match arg(args, 1, "sep").as_ref().and_then(Value::as_str) {
        Some("") => s.chars().count() + 2,
        Some(sep) => s.matches(sep).count() + 1,
        None => s.split_whitespace().count() + 1,
    };
    b.charge((pieces as u64).saturating_mul(NODE_COST))
}

/// `lines`, `splitlines()`: a value a line.
fn check_lines(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    let Some(s) = args.first().and_then(Value::as_str) else {
        return Ok(());
    };
    let lines = s.bytes().filter(|&c| c == b'\n').count() + 1;
    b.charge((lines as u64).saturating_mul(NODE_COST))
}

/// `pprint`: the value's debug form, a line a value indented four spaces a level.
fn check_pprint(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    let Some(v) = args.first() else { return Ok(()) };
    let size = b.measure(v, 0)?;
    let indent = (size.depth as u64).saturating_mul(4).saturating_add(1);
    let total = size
        .nodes
        .saturating_mul(indent)
        .saturating_add(size.text_bound(v));
    b.string("pprint's result", Some(total))
}

#[derive(Clone, Copy)]
enum Style {
    /// `"%-10s"|format(x)`
    Printf,
    /// `"{:>10}".format(x)`
    StrFormat,
}

/// The `format` filter (printf style).
fn check_printf(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    check_format(b, args, Style::Printf)
}

/// `format`: each field prints at most one argument padded to its width or precision.
fn check_format(b: &Budget, args: &[Value], style: Style) -> Result<(), JinjaError> {
    let Some(fmt) = args.first().and_then(Value::as_str) else {
        return Ok(());
    };
    let (fields, widths) = format_fields(fmt, style);
    let mut printed = 0u64;
    for v in &args[1..] {
        printed = printed.saturating_add(b.measure(v, 0)?.text_bound(v));
    }
    let total = fields
        .saturating_mul(printed)
        .saturating_add(widths)
        .saturating_add(fmt.len() as u64);
    b.string("format's result", Some(total))
}

/// The number of fields in a format string and the sum of the numbers in their specs (widths,
/// precisions, positions: an over-estimate of the padding they can ask for).
fn format_fields(fmt: &str, style: Style) -> (u64, u64) {
    let (open, close): (u8, &[u8]) = match style {
        // A printf spec ends at its conversion letter; `%(key)` names come before it.
        Style::Printf => (b'%', b"diouxXeEfFgGcrsa%"),
        Style::StrFormat => (b'{', b"}"),
    };
    let bytes = fmt.as_bytes();
    let (mut fields, mut widths, mut i) = (0u64, 0u64, 0usize);
    while i < bytes.len() {
        if bytes[i] != open {
            i += 1;
            continue;
        }
        fields += 1;
        i += 1;
        if matches!(style, Style::Printf) && bytes.get(i) == Some(&b'(') {
            while i < bytes.len() && bytes[i] != b')' {
                i += 1;
            }
        }
        let mut number = 0u64;
        while i < bytes.len() && !close.contains(&bytes[i]) {
            if bytes[i].is_ascii_digit() {
                number = number
                    .saturating_mul(10)
                    .saturating_add(u64::from(bytes[i] - b'0'));
            } else {
                widths = widths.saturating_add(number);
                number = 0;
            }
            i += 1;
        }
        widths = widths.saturating_add(number);
        i += 1; // the conversion letter or `}`
    }
    (fields, widths)
}

/// `replace(old, new)`: each occurrence of `old` (every character boundary when it is empty)
/// becomes `new`.
fn check_replace(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    let (Some(v), Some(old), Some(new)) = (args.first(), args.get(1), args.get(2)) else {
        return Ok(());
    };
    let (text, len) = text_len(b, v)?;
    let (old, _) = text_len(b, old)?;
    let (_, new_len) = text_len(b, new)?;
    let hits = match (text, old) {
        (Some(s), Some("")) => s.chars().count() as u64 + 1,
        (Some(s), Some(o)) => s.matches(o).count() as u64,
        _ => len + 1,
    };
    b.charge(len)?;
    b.string(
        "replace's result",
        hits.checked_mul(new_len).and_then(|n| n.checked_add(len)),
    )
}

/// `join(sep)`: each item printed, with `sep` between them.
fn check_join(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    let Some(v) = args.first() else { return Ok(()) };
    let sep = arg(args, 1, "d").map_or(Ok(0), |s| text_len(b, &s).map(|t| t.1))?;
    let (items, printed) = match v.as_str() {
        Some(s) => (s.chars().count() as u64, s.len() as u64),
        None => {
            let (mut items, mut printed) = (0u64, 0u64);
            for item in v.try_iter()? {
                items += 1;
                printed = printed.saturating_add(b.measure(&item, 1)?.text_bound(&item));
            }
            (items, printed)
        }
    };
    let total = items.saturating_mul(sep).saturating_add(printed);
    b.string("join's result", Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_fields_counts_fields_and_widths() {
        assert_eq!(format_fields("a %s b %-10.3f %%", Style::Printf), (3, 13));
        assert_eq!(format_fields("%(name)99s", Style::Printf), (1, 99));
        assert_eq!(format_fields("{0:>1000} {}", Style::StrFormat), (2, 1000));
        assert_eq!(format_fields("no fields 123", Style::StrFormat), (0, 0));
    }
}
