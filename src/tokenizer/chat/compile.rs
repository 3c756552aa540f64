//! What compiling a template may cost, checked before minijinja compiles it.
//!
//! Nesting: minijinja parses `a + b + c …`, `x.a.a …` and `x|e|e …` in loops, so a long one
//! makes a tree as deep as it is long, which the compiler, constant folding and dropping the tree
//! then walk recursively: 200,000 `+1` overflow any stack. So a tag may hold at most
//! `OPERATORS_PER_TAG` operators (the parser bounds the other nesting itself, to 150 levels).
//!
//! Constant folding: minijinja folds constant expressions while it compiles (`'-' * 20` becomes
//! one string), with no limit of ours: `('a' * 100000000) ~ ('a' * 100000000) ~ …` is built
//! before the first instruction runs, and an operand is folded again for each operator above it.
//! So we walk the parsed template and bound, without evaluating them, the strings and lists every
//! folded expression builds and the copying that costs. Only numbers are evaluated (by minijinja
//! itself: they allocate nothing), because a repeat count is one.

use super::limits::{mib, ITEMS, NODE_COST, STRING_BYTES, WORK};
use minijinja::machinery::ast::{BinOpKind, CallArg, Expr, Stmt, UnaryOpKind};
use minijinja::machinery::{tokenize, Token, WhitespaceConfig};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Value, ValueKind};

/// Operators in one `{{ }}` or `{% %}` tag: real templates use tens.
pub const OPERATORS_PER_TAG: usize = 1000;

/// Check the tags of `source` for operators (the limit passed, in words). A source that does
/// not lex passes: the parser reports it.
pub fn check_source(source: &str, ws: WhitespaceConfig) -> Result<(), String> {
    let mut in_tag = 0usize;
    for token in tokenize(source, false, SyntaxConfig, ws) {
        let Ok((token, span)) = token else {
            return Ok(());
        };
        let operator = match token {
            Token::VariableStart | Token::BlockStart | Token::VariableEnd | Token::BlockEnd => {
                in_tag = 0;
                continue;
            }
            Token::Ident(word) => {
                matches!(word, "and" | "or" | "not" | "in" | "is" | "if" | "else")
            }
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::FloorDiv
            | Token::Pow
            | Token::Mod
            | Token::Dot
            | Token::Tilde
            | Token::Pipe
            | Token::Eq
            | Token::Ne
            | Token::Gt
            | Token::Gte
            | Token::Lt
            | Token::Lte
            | Token::BracketOpen
            | Token::ParenOpen
            | Token::BraceOpen => true,
            _ => false,
        };
        in_tag += usize::from(operator);
        if in_tag > OPERATORS_PER_TAG {
            return Err(format!(
                "expression limit exceeded: the tag at line {} has more than {OPERATORS_PER_TAG} \
                 operators",
                span.start_line
            ));
        }
    }
    Ok(())
}

/// Why a parsed template is refused.
pub enum Refused {
    /// Constant folding would pass a limit (named in the words).
    Limit(String),
    /// A construct minijinja 2.24 runs wrongly: `break`/`continue` anywhere but directly in a
    /// loop's body. Inside `with` it panics; inside `set`, `filter` or `autoescape` blocks it
    /// leaves their capture or escaping open, losing the rest of the text; in a loop's `else`
    /// it loops until the fuel runs out.
    Unsupported(String),
}

impl From<String> for Refused {
    fn from(limit: String) -> Self {
        Refused::Limit(limit)
    }
}

/// Check the parsed template: every constant expression within the limits, loop controls
/// only where minijinja handles them.
pub fn check_tree(template: &Stmt<'_>) -> Result<(), Refused> {
    let mut walk = Walk {
        cost: 0,
        in_loop: false,
    };
    walk.stmt(template)
}

/// What a folded expression evaluates to, as far as size goes.
enum Shape {
    /// A number, bool or none (its value when minijinja can compute it without allocating).
    Scalar(Option<Value>),
    /// A string (`items` 0) or a list or map of `items`, with `bytes` of strings in it.
    Sized { bytes: u64, items: u64 },
}

impl Shape {
    /// Bytes of its text when printed (`~`): see `Size::text_bound`.
    fn text(&self) -> u64 {
        match self {
            Shape::Scalar(_) => 400,
            Shape::Sized { bytes, items: 0 } => *bytes,
            Shape::Sized { bytes, items } => bytes
                .saturating_mul(10)
                .saturating_add(items.saturating_mul(48)),
        }
    }
    fn bytes(&self) -> u64 {
        match self {
            Shape::Scalar(_) => 8,
            Shape::Sized { bytes, .. } => *bytes,
        }
    }
    fn items(&self) -> u64 {
        match self {
            Shape::Scalar(_) => 0,
            Shape::Sized { items, .. } => *items,
        }
    }
}

/// The walk over the compiled statements.
struct Walk {
    /// Bytes folding copies and compares, in all.
    cost: u64,
    /// Directly in a loop's body (`if` blocks in between are fine).
    in_loop: bool,
}

impl Walk {
    fn stmt(&mut self, s: &Stmt<'_>) -> Result<(), Refused> {
        match s {
            Stmt::Template(t) => self.body(&t.children),
            Stmt::EmitExpr(e) => self.expr(&e.expr),
            Stmt::EmitRaw(_) => Ok(()),
            Stmt::Continue(_) | Stmt::Break(_) if !self.in_loop => {
                Err(Refused::Unsupported(format!(
                    "`{{% {} %}}` is supported only directly in a loop's body (not in its else, \
                     nor in a with, set, filter, autoescape or block)",
                    if matches!(s, Stmt::Break(_)) {
                        "break"
                    } else {
                        "continue"
                    }
                )))
            }
            Stmt::Continue(_) | Stmt::Break(_) => Ok(()),
            Stmt::ForLoop(f) => {
                self.exprs([&f.target, &f.iter].into_iter().chain(&f.filter_expr))?;
                self.inside(&f.body, true)?;
                self.inside(&f.else_body, false)
            }
            Stmt::IfCond(i) => {
                self.expr(&i.expr)?;
                self.body(&i.true_body)?;
                self.body(&i.false_body)
            }
            Stmt::WithBlock(w) => {
                self.exprs(w.assignments.iter().flat_map(|(a, b)| [a, b]))?;
                self.inside(&w.body, false)
            }
            Stmt::Set(s) => self.exprs([&s.target, &s.expr]),
            Stmt::SetBlock(s) => {
                self.exprs(std::iter::once(&s.target).chain(&s.filter))?;
                self.inside(&s.body, false)
            }
            Stmt::AutoEscape(a) => {
                self.expr(&a.enabled)?;
                self.inside(&a.body, false)
            }
            Stmt::FilterBlock(f) => {
                self.expr(&f.filter)?;
                self.inside(&f.body, false)
            }
            Stmt::Block(b) => self.inside(&b.body, false),
            Stmt::Import(i) => self.exprs([&i.expr, &i.name]),
            Stmt::FromImport(i) => self.exprs(
                std::iter::once(&i.expr).chain(
                    i.names
                        .iter()
                        .flat_map(|(a, b)| std::iter::once(a).chain(b)),
                ),
            ),
            Stmt::Extends(e) => self.expr(&e.name),
            Stmt::Include(i) => self.expr(&i.name),
            Stmt::Macro(m) => {
                self.exprs(m.args.iter().chain(&m.defaults))?;
                self.inside(&m.body, false)
            }
            Stmt::CallBlock(c) => {
                self.expr(&c.call.expr)?;
                self.args(&c.call.args)?;
                self.exprs(c.macro_decl.args.iter().chain(&c.macro_decl.defaults))?;
                self.inside(&c.macro_decl.body, false)
            }
            Stmt::Do(d) => {
                self.expr(&d.call.expr)?;
                self.args(&d.call.args)
            }
        }
    }

    fn body(&mut self, body: &[Stmt<'_>]) -> Result<(), Refused> {
        body.iter().try_for_each(|s| self.stmt(s))
    }

    /// A body directly in a loop (`in_loop`) or in a block of its own.
    fn inside(&mut self, body: &[Stmt<'_>], in_loop: bool) -> Result<(), Refused> {
        let outer = std::mem::replace(&mut self.in_loop, in_loop);
        let r = self.body(body);
        self.in_loop = outer;
        r
    }

    fn exprs<'e, 'a: 'e>(
        &mut self,
        es: impl IntoIterator<Item = &'e Expr<'a>>,
    ) -> Result<(), Refused> {
        es.into_iter().try_for_each(|e| self.expr(e))
    }

    fn args(&mut self, args: &[CallArg<'_>]) -> Result<(), Refused> {
        self.exprs(args.iter().map(|a| match a {
            CallArg::Pos(e)
            | CallArg::Kwarg(_, e)
            | CallArg::PosSplat(e)
            | CallArg::KwargSplat(e) => e,
        }))
    }

    /// An expression the compiler compiles: it tries to fold it (evaluating every constant part
    /// once), and compiles the parts of what does not fold in turn. So a constant is paid for
    /// once for each expression above it up to the nearest call, filter or attribute.
    fn expr(&mut self, e: &Expr<'_>) -> Result<(), Refused> {
        let mut cost = 0u64;
        let folded = fold(e, &mut cost)?;
        self.cost = self.cost.saturating_add(cost);
        if self.cost > WORK {
            return Err(Refused::Limit(format!(
                "work limit exceeded: folding the template's constant expressions would copy or \
                 compare more than {}",
                mib(WORK)
            )));
        }
        if folded.is_some() {
            return Ok(());
        }
        match e {
            Expr::Var(_) | Expr::Const(_) => Ok(()),
            Expr::Slice(s) => self.exprs(
                std::iter::once(&s.expr)
                    .chain(&s.start)
                    .chain(&s.stop)
                    .chain(&s.step),
            ),
            Expr::UnaryOp(u) => self.expr(&u.expr),
            Expr::BinOp(b) => self.exprs([&b.left, &b.right]),
            Expr::Compare(c) => {
                self.exprs(std::iter::once(&c.expr).chain(c.ops.iter().map(|o| &o.expr)))
            }
            Expr::IfExpr(i) => self.exprs(
                [&i.test_expr, &i.true_expr]
                    .into_iter()
                    .chain(&i.false_expr),
            ),
            Expr::Filter(f) => {
                self.exprs(&f.expr)?;
                self.args(&f.args)
            }
            Expr::Test(t) => {
                self.expr(&t.expr)?;
                self.args(&t.args)
            }
            Expr::GetAttr(g) => self.expr(&g.expr),
            Expr::GetItem(g) => self.exprs([&g.expr, &g.subscript_expr]),
            Expr::Call(c) => {
                self.expr(&c.expr)?;
                self.args(&c.args)
            }
            Expr::List(l) => self.exprs(&l.items),
            Expr::Map(m) => self.exprs(m.keys.iter().chain(&m.values)),
        }
    }
}

/// One evaluation of `e` by minijinja's folding (`Expr::as_const`): its shape if it folds, and
/// the bytes it copies and compares added to `cost`. Like `as_const`, it looks into operators
/// only: a call, filter or attribute does not fold, and neither does what is under it.
fn fold(e: &Expr<'_>, cost: &mut u64) -> Result<Option<Shape>, String> {
    let shape = match e {
        Expr::Const(c) => Some(of_value(&c.value)),
        // A list or map folds only when every item is a literal.
        Expr::List(l) if l.items.iter().all(|i| matches!(i, Expr::Const(_))) => {
            Some(sized(l.items.iter()))
        }
        Expr::Map(m)
            if m.keys
                .iter()
                .chain(&m.values)
                .all(|i| matches!(i, Expr::Const(_))) =>
        {
            Some(sized(m.keys.iter().chain(&m.values)))
        }
        Expr::UnaryOp(u) => match (fold(&u.expr, cost)?, &u.op) {
            (Some(Shape::Scalar(Some(_))), _) => Some(Shape::Scalar(e.as_const())),
            (Some(Shape::Scalar(None)), _) | (Some(_), UnaryOpKind::Not) => {
                Some(Shape::Scalar(None))
            }
            _ => None,
        },
        // Both sides are evaluated before either is looked at.
        Expr::BinOp(b) => match (fold(&b.left, cost)?, fold(&b.right, cost)?) {
            (Some(l), Some(r)) => binop(e, &b.op, l, r, cost)?,
            _ => None,
        },
        Expr::Compare(c) => {
            let mut shapes = vec![fold(&c.expr, cost)?];
            for op in &c.ops {
                shapes.push(fold(&op.expr, cost)?);
            }
            match shapes.into_iter().collect::<Option<Vec<_>>>() {
                Some(shapes) => {
                    *cost = cost.saturating_add(shapes.iter().map(walk_cost).sum());
                    Some(Shape::Scalar(None))
                }
                None => None,
            }
        }
        _ => None,
    };
    Ok(shape)
}

/// `l op r` folded.
fn binop(
    e: &Expr<'_>,
    op: &BinOpKind,
    l: Shape,
    r: Shape,
    cost: &mut u64,
) -> Result<Option<Shape>, String> {
    match (&l, &r) {
        // Numbers only (literals all the way down): minijinja computes it, allocating nothing.
        (Shape::Scalar(Some(_)), Shape::Scalar(Some(_))) => {
            return Ok(Some(Shape::Scalar(e.as_const())))
        }
        (Shape::Scalar(_), Shape::Scalar(_)) => return Ok(Some(Shape::Scalar(None))),
        _ => {}
    }
    let built = match op {
        BinOpKind::Add => match (&l, &r) {
            (Shape::Sized { .. }, Shape::Sized { .. }) => Shape::Sized {
                bytes: l.bytes().saturating_add(r.bytes()),
                items: l.items().saturating_add(r.items()),
            },
            _ => return Ok(None), // a string plus a number: minijinja's error, at run time
        },
        BinOpKind::Mul => {
            let (what, n) = match (&l, &r) {
                (Shape::Sized { .. }, Shape::Scalar(n)) => (&l, n),
                (Shape::Scalar(n), Shape::Sized { .. }) => (&r, n),
                _ => return Ok(None),
            };
            let n = match n {
                Some(v) => match v.as_usize() {
                    Some(n) => n as u64,
                    None => return Ok(None), // not a count: minijinja's error
                },
                None => {
                    return Err(
                        "size limit exceeded: a constant repeated a number of times \
                                that only running tells (a comparison or a negation)"
                            .into(),
                    )
                }
            };
            Shape::Sized {
                bytes: what.bytes().saturating_mul(n),
                items: what.items().saturating_mul(n),
            }
        }
        BinOpKind::Concat => Shape::Sized {
            bytes: l.text().saturating_add(r.text()),
            items: 0,
        },
        BinOpKind::Eq
        | BinOpKind::Ne
        | BinOpKind::Lt
        | BinOpKind::Lte
        | BinOpKind::Gt
        | BinOpKind::Gte
        | BinOpKind::In => {
            *cost = cost.saturating_add(walk_cost(&l).saturating_add(walk_cost(&r)));
            return Ok(Some(Shape::Scalar(None)));
        }
        // One side or the other.
        BinOpKind::ScAnd | BinOpKind::ScOr => {
            return Ok(Some(Shape::Sized {
                bytes: l.bytes().max(r.bytes()),
                items: l.items().max(r.items()),
            }))
        }
        // Arithmetic on a string or list: minijinja's error, at run time.
        BinOpKind::Sub | BinOpKind::Div | BinOpKind::FloorDiv | BinOpKind::Rem | BinOpKind::Pow => {
            return Ok(None)
        }
    };
    if built.bytes() > STRING_BYTES || built.items() > ITEMS {
        return Err(format!(
            "size limit exceeded: a constant expression would build {} bytes and {} items \
             (limits: {} a string, {ITEMS} items a list)",
            built.bytes(),
            built.items(),
            mib(STRING_BYTES)
        ));
    }
    // Strings are copied; lists repeat and join lazily.
    if built.items() == 0 {
        *cost = cost.saturating_add(built.bytes());
    }
    Ok(Some(built))
}
/// The shape of a literal: a string, or a number, bool or none.
fn of_value(v: &Value) -> Shape {
    match v.kind() {
        ValueKind::String => Shape::Sized {
            bytes: v.as_str().map_or(0, str::len) as u64,
            items: 0,
        },
        _ => Shape::Scalar(Some(v.clone())),
    }
}

/// A list or map of literals.
fn sized<'e, 'a: 'e>(items: impl Iterator<Item = &'e Expr<'a>>) -> Shape {
    let (mut bytes, mut n) = (0u64, 0u64);
    for i in items {
        if let Expr::Const(c) = i {
            bytes = bytes.saturating_add(of_value(&c.value).bytes());
        }
        n += 1;
    }
    Shape::Sized { bytes, items: n }
}

/// What comparing a value costs: its bytes and `NODE_COST` an item.
fn walk_cost(s: &Shape) -> u64 {
    s.bytes()
        .saturating_add(s.items().saturating_mul(NODE_COST))
}
