//! Chat template cases: templates generated from a small grammar of Jinja (loops, conditions,
//! macros and calls, captures, namespaces, filters and methods with big and odd arguments,
//! operators on strings, lists and numbers), sometimes spliced into a real template.
//! Property: rendering answers within the time bound with the text or a clean error (`Ok`,
//! `InvalidArgument`), never a panic (`Internal`) or a crash.

use crate::rng::Rng;
use llorch::tokenizer::chat::{render_from, ChatMessage, TemplateOrigin};
use llorch::Error;
use std::time::{Duration, Instant};

/// A render must answer within this, the time limit included (issue 14: a second), with room
/// for a loaded machine.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(1500);

/// How a case ended, for the harness's tally.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Rendered,
    /// The limit named in the error (`fuel`, `size`, `work` …).
    Limit(String),
    /// Any other clean error (does not parse, undefined method, type errors …).
    Failed,
}

/// The messages every case renders.
pub fn messages() -> Vec<ChatMessage> {
    [
        ("system", "You are terse."),
        ("user", "Hi! <|im_start|> {{ not a tag }}"),
        ("assistant", "Hello.\n"),
        ("user", "Ünïcödé 🙂 and \"quotes\""),
    ]
    .iter()
    .map(|(r, c)| ChatMessage {
        role: r.to_string(),
        content: c.to_string(),
    })
    .collect()
}

/// Render `template` as a caller's; panics if it crashes the property.
pub fn check(template: &str, messages: &[ChatMessage]) -> Outcome {
    let t0 = Instant::now();
    let r = render_from(
        TemplateOrigin::Caller,
        template,
        messages,
        true,
        "<s>",
        "</s>",
    );
    let took = t0.elapsed();
    assert!(
        took < ANSWER_WITHIN,
        "rendering took {took:?}: {template:?} -> {r:?}"
    );
    match r {
        Ok(_) => Outcome::Rendered,
        Err(Error::InvalidArgument(m)) => match m.find(" limit exceeded") {
            Some(end) => {
                let start = m[..end].rfind(' ').map_or(0, |i| i + 1);
                Outcome::Limit(m[start..end].to_string())
            }
            None => Outcome::Failed,
        },
        Err(e) => panic!("not a clean error: {e:?} from {template:?}"),
    }
}

/// One fuzzer case: even first byte, a generated template seeded by the bytes; odd, the bytes
/// themselves as a template.
pub fn check_bytes(data: &[u8], real: &[&str]) -> Outcome {
    match data.first() {
        Some(b) if b % 2 == 0 => check(&generate(&mut Rng::from_bytes(data), real), &messages()),
        _ => check(&String::from_utf8_lossy(data), &messages()),
    }
}

/// A generated template; with `real` templates given, now and then generated statements
/// spliced between the tags of one of them.
pub fn generate(rng: &mut Rng, real: &[&str]) -> String {
    let mut g = Gen {
        rng,
        macros: Vec::new(),
        loops: 0,
    };
    let body = g.block(3);
    if !real.is_empty() && g.rng.one_in(3) {
        let base = *g.rng.pick(real);
        let cuts: Vec<usize> = base.match_indices("%}").map(|(i, _)| i + 2).collect();
        if !cuts.is_empty() {
            let at = *g.rng.pick(&cuts);
            return format!("{}{body}{}", &base[..at], &base[at..]);
        }
    }
    format!("{{% set ns = namespace(v=0, s='', l=[]) %}}{body}")
}

struct Gen<'r> {
    rng: &'r mut Rng,
    /// Macros defined so far (name, argument count).
    macros: Vec<(String, usize)>,
    /// Loops around the current statement.
    loops: usize,
}

const INTS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "-1",
    "7",
    "100",
    "100000",
    "1000000",
    "1000000000000",
    "9223372036854775807",
    "18446744073709551615",
    "340282366920938463463374607431768211455",
    "(10 ** 12)",
    "(2 ** 64)",
];
const STRINGS: &[&str] = &[
    "''",
    "'a'",
    "'ab'",
    "' x '",
    "'a\\nb\\nc'",
    "'<|im_start|>'",
    "'%s-%d'",
    "'%-10.3f'",
    "'%Y-%m-%d %A'",
    "('%A' * 100000)",
    "'%(k)s'",
    "'{}'",
    "'{0:>8}'",
    "'{:>100000}'",
    "'é€🙂'",
    "\"it's\"",
    "'&<>\"'",
    "('x' * 1000)",
    "('ab' * 3000000)",
];
const NAMES: &[&str] = &[
    "messages",
    "messages[0]",
    "messages[-1]",
    "messages[0].content",
    "m",
    "m.role",
    "m.content",
    "m['content']",
    "x",
    "ns",
    "ns.v",
    "ns.s",
    "ns.l",
    "loop.index",
    "loop.last",
    "bos_token",
    "eos_token",
    "add_generation_prompt",
    "nothing",
    "nothing.deeper",
    "range(5)",
    "[1, 2, 3]",
    "{'a': 1, 'b': [2]}",
    "(messages * 10)",
    "(range(1000) | list)",
];
const OPS: &[&str] = &[
    "+", "-", "*", "/", "//", "%", "**", "~", "==", "!=", "<", "<=", ">", ">=", "in", "not in",
    "and", "or",
];
/// Filters with argument shapes: `i` an int, `s` a string, `e` any expression.
const FILTERS: &[(&str, &str)] = &[
    ("indent", ""),
    ("indent", "i"),
    ("indent", "width=i, first=true"),
    ("batch", "i"),
    ("batch", "i, e"),
    ("slice", "i"),
    ("slice", "i, e"),
    ("format", "e"),
    ("format", "e, e"),
    ("replace", "s, s"),
    ("join", ""),
    ("join", "s"),
    ("trim", ""),
    ("trim", "s"),
    ("tojson", ""),
    ("tojson", "indent=i"),
    ("list", ""),
    ("sort", ""),
    ("unique", ""),
    ("length", ""),
    ("first", ""),
    ("last", ""),
    ("reverse", ""),
    ("map", "'upper'"),
    ("map", "attribute='role'"),
    ("map", "'indent', i"),
    ("select", "'odd'"),
    ("selectattr", "'role', 'equalto', 'user'"),
    ("items", ""),
    ("dictsort", ""),
    ("groupby", "'role'"),
    ("sum", ""),
    ("min", ""),
    ("max", ""),
    ("string", ""),
    ("upper", ""),
    ("title", ""),
    ("capitalize", ""),
    ("int", ""),
    ("float", ""),
    ("abs", ""),
    ("round", "i"),
    ("default", "e"),
    ("e", ""),
    ("pprint", ""),
    ("wordcount", ""),
    ("lines", ""),
    ("split", "s"),
    ("count", ""),
    ("bool", ""),
    ("attr", "'role'"),
    ("safe", ""),
    ("chain", "e"),
    ("zip", "e"),
    ("center", "i"),
];
const TESTS: &[&str] = &[
    "defined",
    "none",
    "string",
    "number",
    "mapping",
    "sequence",
    "odd",
    "divisibleby 3",
    "eq 1",
    "in [1, 'a']",
    "startingwith 'a'",
];
/// String and map methods with argument shapes, as `FILTERS`.
const METHODS: &[(&str, &str)] = &[
    ("strip", ""),
    ("strip", "s"),
    ("lstrip", "s"),
    ("split", ""),
    ("split", "s"),
    ("replace", "s, s"),
    ("replace", "s, s, i"),
    ("format", "e"),
    ("format", "e, e"),
    ("join", "e"),
    ("startswith", "s"),
    ("upper", ""),
    ("title", ""),
    ("count", "s"),
    ("find", "s"),
    ("splitlines", ""),
    ("items", ""),
    ("keys", ""),
    ("get", "s"),
    ("center", "i"),
];

impl Gen<'_> {
    /// Statements, nesting at most `depth` more levels.
    fn block(&mut self, depth: usize) -> String {
        (0..1 + self.rng.below(4))
            .map(|_| self.stmt(depth))
            .collect()
    }

    fn stmt(&mut self, depth: usize) -> String {
        let d = depth.saturating_sub(1);
        let kinds = if depth == 0 { 4 } else { 15 };
        match self.rng.below(kinds) {
            // Text; now and then one that reads like half a tag (which seldom parses).
            0 if self.rng.one_in(20) => (*self.rng.pick(&[" {", "%}", "}}"])).into(),
            0 => (*self
                .rng
                .pick(&["text ", "\n", "<|im_start|>user\n", " ", "é"]))
            .into(),
            1 | 2 => format!("{{{{ {} }}}}", self.expr(3)),
            3 => {
                let target = self.rng.pick(&["x", "ns.v", "ns.s", "ns.l"]);
                format!("{{% set {target} = {} %}}", self.expr(3))
            }
            4 | 5 => {
                self.loops += 1;
                let cond = if self.rng.one_in(4) {
                    format!(" if {}", self.expr(1))
                } else {
                    String::new()
                };
                let recursive = self.rng.one_in(8);
                let mut body = self.block(d);
                if recursive {
                    body.push_str("{{ loop(m) }}");
                }
                let other = if self.rng.one_in(3) {
                    self.block(d)
                } else {
                    String::new()
                };
                self.loops -= 1;
                format!(
                    "{{% for m in {}{cond}{} %}}{body}{{% else %}}{other}{{% endfor %}}",
                    self.expr(2),
                    if recursive { " recursive" } else { "" }
                )
            }
            6 => format!(
                "{{% if {} %}}{}{{% elif {} %}}{}{{% else %}}{}{{% endif %}}",
                self.expr(2),
                self.block(d),
                self.expr(1),
                self.block(d),
                self.block(d)
            ),
            7 => {
                let name = format!("m{}", self.macros.len());
                let args = self.rng.below(3);
                self.macros.push((name.clone(), args));
                // Parameters with defaults come last.
                let defaults = self.rng.below(args + 1);
                let params: Vec<String> = (0..args)
                    .map(|i| {
                        if i >= args - defaults {
                            format!("a{i}={}", self.expr(1))
                        } else {
                            format!("a{i}")
                        }
                    })
                    .collect();
                let body = self.block(d);
                let recurse = if self.rng.one_in(4) {
                    format!("{{{{ {name}({}) }}}}", self.args(args))
                } else {
                    String::new()
                };
                format!(
                    "{{% macro {name}({}) %}}{body}{recurse}{{% endmacro %}}",
                    params.join(", ")
                )
            }
            8 if !self.macros.is_empty() => {
                let (name, n) = self.rng.pick(&self.macros).clone();
                format!("{{{{ {name}({}) }}}}", self.args(n))
            }
            9 => format!(
                "{{% filter {} %}}{}{{% endfilter %}}",
                self.rng
                    .pick(&["upper", "indent(4)", "indent(1000000000000)", "trim", "e"]),
                self.block(d)
            ),
            10 => format!("{{% set x %}}{}{{% endset %}}", self.block(d)),
            11 => format!(
                "{{% with y = {} %}}{}{{% endwith %}}",
                self.expr(2),
                self.block(d)
            ),
            12 if self.loops > 0 => (*self.rng.pick(&["{% break %}", "{% continue %}"])).into(),
            13 => format!(
                "{{% autoescape true %}}{}{{% endautoescape %}}",
                self.block(d)
            ),
            14 => format!("{{{{ raise_exception({}) }}}}", self.expr(1)),
            _ => format!("{{{{ {} }}}}", self.expr(2)),
        }
    }

    /// `n` arguments.
    fn args(&mut self, n: usize) -> String {
        (0..n).map(|_| self.expr(2)).collect::<Vec<_>>().join(", ")
    }

    /// Arguments of `shape`: `i` an int, `s` a string, `e` any expression; others verbatim.
    fn shaped(&mut self, shape: &str) -> String {
        shape
            .split(", ")
            .filter(|p| !p.is_empty())
            .map(|p| match p {
                "i" => (*self.rng.pick(INTS)).to_string(),
                "s" => (*self.rng.pick(STRINGS)).to_string(),
                "e" => self.expr(1),
                other => match other.strip_suffix("=i") {
                    Some(k) => format!("{k}={}", self.rng.pick(INTS)),
                    None => other.to_string(),
                },
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn expr(&mut self, depth: usize) -> String {
        if depth == 0 {
            return self.atom();
        }
        let d = depth - 1;
        match self.rng.below(10) {
            0 | 1 => self.atom(),
            2 => format!("({} {} {})", self.expr(d), self.rng.pick(OPS), self.expr(d)),
            3 => format!("(not {})", self.expr(d)),
            4 | 5 => {
                let (f, shape) = *self.rng.pick(FILTERS);
                let args = self.shaped(shape);
                let e = self.expr(d);
                if args.is_empty() {
                    format!("({e} | {f})")
                } else {
                    format!("({e} | {f}({args}))")
                }
            }
            6 => format!("({} is {})", self.expr(d), self.rng.pick(TESTS)),
            7 => {
                let (m, shape) = *self.rng.pick(METHODS);
                let args = self.shaped(shape);
                format!("({}).{m}({args})", self.expr(d))
            }
            8 => match self.rng.below(5) {
                0 => format!("range({})", self.shaped("i")),
                4 => format!("strftime_now({})", self.shaped("s")),
                1 => format!("namespace(v={})", self.expr(d)),
                2 => format!("dict(k={}, l={})", self.expr(d), self.expr(d)),
                _ => format!("[{}, {}]", self.expr(d), self.expr(d)),
            },
            _ => format!(
                "({} if {} else {})",
                self.expr(d),
                self.expr(d),
                self.expr(d)
            ),
        }
    }

    fn atom(&mut self) -> String {
        match self.rng.below(4) {
            0 => (*self.rng.pick(INTS)).into(),
            1 => (*self.rng.pick(STRINGS)).into(),
            2 => (*self
                .rng
                .pick(&["true", "false", "none", "1.5", "1e308", "-0.0"]))
            .into(),
            _ => (*self.rng.pick(NAMES)).into(),
        }
    }
}
