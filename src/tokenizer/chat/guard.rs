//! Guards in the compiled template. minijinja's operators (`+`, `*`, `~`, comparisons, indexing)
//! and list literals run inside its VM with no hook, and fuel counts instructions, not their
//! size: `{% set s = s + s %}` forty times asks for a terabyte in 160 instructions. So after
//! compiling we insert, before each such instruction, a call to one of our guard filters that
//! sees its operands, checks and pays for what the instruction is about to build or walk
//! (`limits::Budget`), and hands the operands back unchanged; the instruction itself then runs as
//! minijinja wrote it, with its own semantics. Raw template text becomes an ordinary `Emit` so
//! that all output goes through our formatter, which pays for what is written.
//!
//! Handing back: a guard filter receives the top `n` stack values and returns them as a list;
//! `UnpackList(n)` pushes a list back in reverse (so the guard returns them reversed), and for a
//! count on the stack (`*args` splats) `UnpackLists(1)` pushes them in order and then the count.

use super::limits::{Budget, NODE_COST};
use minijinja::machinery::{Instruction, Instructions};
use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error as JinjaError};
use std::sync::Arc;

/// `+`: string and list sizes.
const ADD: &str = "__llorch_guard_add";
/// `*`: repeated strings and lists.
const MUL: &str = "__llorch_guard_mul";
/// `~`: the text of both sides.
const CONCAT: &str = "__llorch_guard_concat";
/// Comparisons and `in`: they walk both sides.
const COMPARE: &str = "__llorch_guard_compare";
/// `x[i]` and `x[a:b]`: on strings and lazy sequences they walk `x`.
const INDEX: &str = "__llorch_guard_index";
/// Filter, test, function, method and macro calls: their arguments, walked and paid for.
const CALL: &str = "__llorch_guard_call";
const CALL_SPLAT: &str = "__llorch_guard_call_splat";
/// List and map literals, keyword arguments, `ns.x = v`: the depth of what they nest.
const NEST: &str = "__llorch_guard_nest";
const NEST_SPLAT: &str = "__llorch_guard_nest_splat";
/// `ns.x = v`: the stored value only (the namespace is checked when it is used).
const STORE: &str = "__llorch_guard_store";

/// Filters and tests that look at their arguments' surface only (a kind, a length, a first item),
/// so their calls need no walk: templates use them on the whole message list inside the message
/// loop, which would otherwise walk the list once per message.
const CONSTANT_FILTERS: &[&str] = &["length", "count", "first", "default", "d", "safe", "bool"];
const CONSTANT_TESTS: &[&str] = &[
    "defined",
    "undefined",
    "none",
    "string",
    "number",
    "integer",
    "float",
    "mapping",
    "sequence",
    "iterable",
    "boolean",
    "true",
    "false",
    "odd",
    "even",
    "safe",
    "escaped",
    "sameas",
    "filter",
    "test",
];

/// A local id that makes the VM look the filter up by name (it caches ids below 50).
const UNCACHED: u8 = !0;

/// The guarded copy of `code`.
pub fn rewrite<'s>(code: &Instructions<'s>) -> Instructions<'s> {
    let mut out = Instructions::new(code.name(), code.source());
    // Where each old instruction (and the end) starts in the new code: jump targets move there,
    // so a jump to a guarded instruction runs its guard.
    let mut start = Vec::with_capacity(code.len() + 1);
    for pc in 0..code.len() as u32 {
        let Some(instr) = code.get(pc) else { break };
        start.push(out.len() as u32);
        let line = code.get_line(pc).map(|l| l.min(u16::MAX as usize) as u16);
        let push = |out: &mut Instructions<'s>, i: Instruction<'s>| match line {
            Some(l) => out.add_with_line(i, l),
            None => out.add(i),
        };
        let guard = |name: &'static str, n: usize| -> Option<[Instruction<'s>; 2]> {
            let n16 = u16::try_from(n).ok()?;
            (n > 0).then(|| {
                [
                    Instruction::ApplyFilter(name, Some(n16), UNCACHED),
                    Instruction::UnpackList(n),
                ]
            })
        };
        let splat = |name: &'static str| {
            [
                Instruction::ApplyFilter(name, None, UNCACHED),
                Instruction::UnpackLists(1),
            ]
        };
        let guards: Option<[Instruction<'s>; 2]> = match instr {
            Instruction::Add => guard(ADD, 2),
            Instruction::Mul => guard(MUL, 2),
            Instruction::StringConcat => guard(CONCAT, 2),
            Instruction::Eq
            | Instruction::Ne
            | Instruction::Lt
            | Instruction::Lte
            | Instruction::Gt
            | Instruction::Gte
            | Instruction::In
            | Instruction::CompareAndPreserve(_) => guard(COMPARE, 2),
            Instruction::GetItem => guard(INDEX, 2),
            Instruction::Slice => guard(INDEX, 4),
            Instruction::ApplyFilter(name, _, _) if CONSTANT_FILTERS.contains(name) => None,
            Instruction::PerformTest(name, _, _) if CONSTANT_TESTS.contains(name) => None,
            Instruction::ApplyFilter(_, n, _)
            | Instruction::PerformTest(_, n, _)
            | Instruction::CallFunction(_, n)
            | Instruction::CallMethod(_, n)
            | Instruction::CallObject(n) => match n {
                Some(n) => guard(CALL, *n as usize),
                None => Some(splat(CALL_SPLAT)),
            },
            Instruction::BuildList(Some(n)) => guard(NEST, *n),
            Instruction::BuildList(None) => Some(splat(NEST_SPLAT)),
            Instruction::BuildMap(pairs) | Instruction::BuildKwargs(pairs) => {
                guard(NEST, pairs.saturating_mul(2))
            }
            Instruction::SetAttr(_) => guard(STORE, 2),
            _ => None,
        };
        for g in guards.into_iter().flatten() {
            push(&mut out, g);
        }
        match instr {
            Instruction::EmitRaw(text) => {
                push(&mut out, Instruction::LoadConst(Value::from(*text)));
                push(&mut out, Instruction::Emit);
            }
            other => {
                push(&mut out, other.clone());
            }
        }
    }
    start.push(out.len() as u32);
    let moved = |t: &mut u32| *t = start.get(*t as usize).copied().unwrap_or(*t);
    for pc in 0..out.len() as u32 {
        if let Some(
            Instruction::Jump(t)
            | Instruction::JumpIfFalse(t)
            | Instruction::JumpIfTrueOrPop(t)
            | Instruction::JumpIfFalseOrPop(t)
            | Instruction::Iterate(t)
            | Instruction::BuildMacro(_, t, _),
        ) = out.get_mut(pc)
        {
            moved(t);
        }
    }
    out
}

/// Register the guard filters and the formatter.
pub fn install(env: &mut Environment<'_>, budget: &Arc<Budget>) {
    let checked = |env: &mut Environment<'_>,
                   name: &'static str,
                   in_order: bool,
                   check: fn(&Budget, &[Value]) -> Result<(), JinjaError>| {
        let b = budget.clone();
        env.add_filter(name, move |args: Rest<Value>| {
            check(&b, &args)?;
            let mut args = args.0;
            if !in_order {
                args.reverse();
            }
            Ok::<_, JinjaError>(Value::from(args))
        });
    };
    checked(env, ADD, false, check_add);
    checked(env, MUL, false, check_mul);
    checked(env, CONCAT, false, check_concat);
    checked(env, COMPARE, false, check_compare);
    checked(env, INDEX, false, check_index);
    checked(env, CALL, false, check_call);
    checked(env, CALL_SPLAT, true, check_call);
    checked(env, NEST, false, check_nest);
    checked(env, NEST_SPLAT, true, check_nest);
    checked(env, STORE, false, |b, args| {
        check_nest(b, args.get(..1).unwrap_or_default())
    });

    let b = budget.clone();
    env.set_formatter(move |out, state, value| {
        let size = b.measure(value, 0)?;
        // HTML escaping (`{% autoescape %}`) writes up to 5 bytes for 1 (`&amp;`).
        let escaped = match state.auto_escape() {
            AutoEscape::None => 1,
            _ => 5,
        };
        b.emit(size.text_bound(value).saturating_mul(escaped))?;
        minijinja::escape_formatter(out, state, value)
    });
}

fn is_list(v: &Value) -> bool {
    matches!(v.kind(), ValueKind::Seq | ValueKind::Iterable)
}

fn check_add(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    let [x, y] = args else { return Ok(()) };
    if let (Some(s), Some(t)) = (x.as_str(), y.as_str()) {
        return b.string("a + b", (s.len() as u64).checked_add(t.len() as u64));
    }
    if is_list(x) && is_list(y) {
        let n = b.count(x)?.checked_add(b.count(y)?);
        b.items("a + b", n)?;
        // minijinja concatenates lazily but copies once the chain is deep.
        return b.charge(n.unwrap_or(0).saturating_mul(NODE_COST));
    }
    Ok(())
}

fn check_mul(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    let [x, y] = args else { return Ok(()) };
    // Operand order as minijinja's `mul` tries it.
    if let Some((s, n)) = x.as_str().map(|s| (s, y)).or(y.as_str().map(|s| (s, x))) {
        if let Some(n) = n.as_usize() {
            return b.string("a string repeated", (s.len() as u64).checked_mul(n as u64));
        }
    } else if let Some((list, n)) = [(x, y), (y, x)].into_iter().find(|(l, _)| is_list(l)) {
        if let Some(n) = n.as_usize() {
            return b.items("a list repeated", b.count(list)?.checked_mul(n as u64));
        }
    }
    Ok(())
}

fn check_concat(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    let mut total = 0u64;
    for v in args {
        total = total.saturating_add(b.measure(v, 0)?.text_bound(v));
    }
    b.string("a ~ b", Some(total))
}

fn check_compare(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    for v in args {
        let size = b.measure(v, 0)?;
        b.charge(size.bytes)?;
    }
    Ok(())
}

fn check_index(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    let Some(x) = args.first() else { return Ok(()) };
    match x.kind() {
        // Characters are found by walking the string; slices copy.
        ValueKind::String => b.charge(x.as_str().map_or(0, str::len) as u64),
        ValueKind::Seq if args.len() == 2 => Ok(()),
        ValueKind::Seq | ValueKind::Iterable => b.charge(b.count(x)?.saturating_mul(NODE_COST)),
        _ => Ok(()),
    }
}

fn check_call(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    for v in args {
        let size = b.measure(v, 0)?;
        b.charge(size.bytes)?;
    }
    Ok(())
}

fn check_nest(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    for v in args {
        b.measure(v, 1)?;
    }
    Ok(())
}
