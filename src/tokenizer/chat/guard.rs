//! Guards in the compiled template. minijinja's operators (`+`, `*`, `~`, comparisons, indexing)
//! and list literals run inside its VM with no hook, and fuel counts instructions, not their
//! size: `{% set s = s + s %}` forty times asks for a terabyte in 160 instructions. So after
//! compiling we insert, before each such instruction, a call to one of our guard filters that
//! sees its operands, checks and pays for what the instruction is about to build or walk
//! (`limits::Budget`), and hands the operands back unchanged; the instruction itself then runs as
//! minijinja wrote it, with its own semantics. Raw template text becomes an ordinary `Emit` so
//! that all output goes through our formatter, which pays for what is written.
//!
//! Handing back: a guard filter receives the operands (the top `n` stack values, or a counted
//! `*args` splat) and returns them as a list, which `UnpackLists(1)` pushes back in order,
//! followed by their count: dropped again (`DiscardTop`) when the count was fixed.

use super::limits::{Budget, NODE_COST};
use minijinja::machinery::{Instruction, Instructions};
use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error as JinjaError};
use std::sync::Arc;

/// What a guard checks before the instruction it stands in front of; each is a filter.
#[derive(Clone, Copy)]
enum Check {
    /// `+`: string and list sizes.
    Add,
    /// `*`: repeated strings and lists.
    Mul,
    /// `~`: the text of both sides.
    Concat,
    /// Comparisons and `in`: both sides walked, their strings paid for a byte each.
    Compare,
    /// Calls of filters, tests, functions, methods and macros: their operands walked, their
    /// strings paid for at `CALL_BYTE` (most go through a string at a few ns a byte).
    Walk,
    /// Slices (`x[a:b]`): a string's characters are found a byte at a time.
    WalkSlice,
    /// Filters that go through their input item by item (a string's characters count as
    /// values) and `title` (case mapped a character at a time: 65 ns a byte here).
    WalkEach,
    /// Filters that count without walking a list (`length`): strings paid for, lists not walked.
    Shallow,
    /// `x[i]`: on strings and lazy sequences it walks `x`.
    Index,
    /// List and map literals, keyword arguments: the depth of what they nest.
    Nest,
    /// `ns.x = v`: the stored value's depth (the namespace is checked when it is used).
    Store,
}

impl Check {
    const ALL: [Check; 11] = [
        Check::Add,
        Check::Mul,
        Check::Concat,
        Check::Compare,
        Check::Walk,
        Check::WalkSlice,
        Check::WalkEach,
        Check::Shallow,
        Check::Index,
        Check::Nest,
        Check::Store,
    ];

    fn filter_name(self) -> &'static str {
        match self {
            Check::Add => "__llorch_guard_add",
            Check::Mul => "__llorch_guard_mul",
            Check::Concat => "__llorch_guard_concat",
            Check::Compare => "__llorch_guard_compare",
            Check::Walk => "__llorch_guard_walk",
            Check::WalkSlice => "__llorch_guard_walk_slice",
            Check::WalkEach => "__llorch_guard_walk_each",
            Check::Shallow => "__llorch_guard_shallow",
            Check::Index => "__llorch_guard_index",
            Check::Nest => "__llorch_guard_nest",
            Check::Store => "__llorch_guard_store",
        }
    }

    fn run(self, b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
        match self {
            Check::Add => check_add(b, args),
            Check::Mul => check_mul(b, args),
            Check::Concat => check_concat(b, args),
            Check::Compare => check_walk(b, args, 1),
            Check::Walk => check_walk(b, args, CALL_BYTE),
            Check::WalkSlice => check_walk(b, args, NODE_COST / 4),
            Check::WalkEach => check_walk(b, args, NODE_COST),
            Check::Shallow => check_shallow(b, args),
            Check::Index => check_index(b, args),
            Check::Nest => check_nest(b, args),
            Check::Store => check_nest(b, args.get(..1).unwrap_or_default()),
        }
    }
}

/// Filters and tests that look at no more than a value's kind or first item: no guard. (A
/// template calls them on the whole message list inside the message loop; walking the list each
/// time would make that loop quadratic.)
const CONSTANT_FILTERS: &[&str] = &["first", "default", "d", "bool"];
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
/// Filters that count without walking a list (they do count a string's characters).
const SHALLOW_FILTERS: &[&str] = &["length", "count", "wordcount"];
/// Filters that take their input item by item, calling a test or filter on each or collecting
/// them: on a string, each character is a value.
const EACH_FILTERS: &[&str] = &[
    "select",
    "reject",
    "selectattr",
    "rejectattr",
    "map",
    "list",
    "batch",
    "slice",
    "sort",
    "unique",
    "reverse",
    "groupby",
    "min",
    "max",
    "sum",
    "chain",
    "zip",
    "join",
    "last",
    "items",
    "dictsort",
    "title",
];

/// What a byte of a string costs a call (upper-casing 8 MB takes 50 ms here: 6 ns a byte).
const CALL_BYTE: u64 = 8;

/// A local id that makes the VM look the filter up by name (it caches ids below 50).
const UNCACHED: u8 = !0;

/// The guard to put before `instr`, and how many operands it takes (`None`: a counted splat).
fn guard_for(instr: &Instruction<'_>) -> Option<(Check, Option<usize>)> {
    let n = |n: &Option<u16>| n.map(usize::from);
    Some(match instr {
        Instruction::Add => (Check::Add, Some(2)),
        Instruction::Mul => (Check::Mul, Some(2)),
        Instruction::StringConcat => (Check::Concat, Some(2)),
        Instruction::Eq
        | Instruction::Ne
        | Instruction::Lt
        | Instruction::Lte
        | Instruction::Gt
        | Instruction::Gte
        | Instruction::In
        | Instruction::CompareAndPreserve(_) => (Check::Compare, Some(2)),
        Instruction::GetItem => (Check::Index, Some(2)),
        Instruction::Slice => (Check::WalkSlice, Some(4)),
        Instruction::ApplyFilter(name, _, _) if CONSTANT_FILTERS.contains(name) => return None,
        Instruction::ApplyFilter(name, count, _) if SHALLOW_FILTERS.contains(name) => {
            (Check::Shallow, n(count))
        }
        Instruction::ApplyFilter(name, count, _) | Instruction::CallMethod(name, count)
            if EACH_FILTERS.contains(name) =>
        {
            (Check::WalkEach, n(count))
        }
        Instruction::PerformTest(name, _, _) if CONSTANT_TESTS.contains(name) => return None,
        Instruction::ApplyFilter(_, count, _)
        | Instruction::PerformTest(_, count, _)
        | Instruction::CallFunction(_, count)
        | Instruction::CallMethod(_, count)
        | Instruction::CallObject(count) => (Check::Walk, n(count)),
        Instruction::BuildList(count) => (Check::Nest, *count),
        Instruction::BuildMap(pairs) | Instruction::BuildKwargs(pairs) => {
            (Check::Nest, Some(pairs.saturating_mul(2)))
        }
        Instruction::SetAttr(_) => (Check::Store, Some(2)),
        _ => return None,
    })
}

/// The instructions of a guard: call it, push its operands back.
fn guard<'s>(check: Check, operands: Option<usize>) -> Vec<Instruction<'s>> {
    let name = check.filter_name();
    match operands.map(u16::try_from) {
        // A literal too long to count in 16 bits is made of literals: nothing to check.
        Some(Ok(0)) | Some(Err(_)) => Vec::new(),
        Some(Ok(n)) => vec![
            Instruction::ApplyFilter(name, Some(n), UNCACHED),
            Instruction::UnpackLists(1),
            Instruction::DiscardTop,
        ],
        None => vec![
            Instruction::ApplyFilter(name, None, UNCACHED),
            Instruction::UnpackLists(1),
        ],
    }
}

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
        let mut push = |i: Instruction<'s>| {
            match line {
                Some(l) => out.add_with_line(i, l),
                None => out.add(i),
            };
        };
        if let Some((check, operands)) = guard_for(instr) {
            guard(check, operands).into_iter().for_each(&mut push);
        }
        match instr {
            Instruction::EmitRaw(text) => {
                push(Instruction::LoadConst(Value::from(*text)));
                push(Instruction::Emit);
            }
            other => {
                push(other.clone());
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
    for check in Check::ALL {
        let b = budget.clone();
        env.add_filter(check.filter_name(), move |args: Rest<Value>| {
            check.run(&b, &args)?;
            Ok::<_, JinjaError>(Value::from(args.0))
        });
    }
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

/// `x[i]`: a string's character and a lazy sequence's item are found by walking to them.
fn check_index(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    let Some(x) = args.first() else { return Ok(()) };
    match x.kind() {
        ValueKind::String => b.charge(x.as_str().map_or(0, str::len) as u64),
        ValueKind::Iterable => b.charge(b.count(x)?.saturating_mul(NODE_COST)),
        _ => Ok(()),
    }
}

/// Walk the operands and pay for their strings, `per_byte` a byte.
fn check_walk(b: &Budget, args: &[Value], per_byte: u64) -> Result<(), JinjaError> {
    for v in args {
        let size = b.measure(v, 0)?;
        b.charge(size.bytes.saturating_mul(per_byte))?;
    }
    Ok(())
}

/// Pay for the strings among the operands (a string's characters are counted one by one).
fn check_shallow(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    for v in args {
        b.charge(v.as_str().map_or(NODE_COST, |s| s.len() as u64))?;
    }
    Ok(())
}

fn check_nest(b: &Budget, args: &[Value]) -> Result<(), JinjaError> {
    for v in args {
        b.measure(v, 1)?;
    }
    Ok(())
}
