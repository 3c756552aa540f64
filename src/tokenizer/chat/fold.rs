//! minijinja folds constant expressions while it compiles (`'-' * 20` becomes one string), with no
//! limit of ours: `('a' * 100000000) ~ ('a' * 100000000) ~ …` is built before the first
//! instruction runs, and an operand is folded again for each operator above it. So before
//! compiling we walk the parsed template and bound, without evaluating them, the strings and
//! lists every folded expression builds and the copying that costs. Only numbers are evaluated
//! (by minijinja itself: they allocate nothing), because a repeat count is one.

use super::limits::{mib, ITEMS, NODE_COST, STRING_BYTES, WORK};
use minijinja::machinery::ast::{BinOpKind, CallArg, Expr, Stmt, UnaryOpKind};
use minijinja::value::{Value, ValueKind};

/// Check every constant expression in `template`: the first limit passed, in words.
pub fn check(template: &Stmt<'_>) -> Result<(), String> {
    let mut walk = Walk { cost: 0 };
    walk.stmt(template)?;
    Ok(())
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

struct Walk {
    /// Bytes copied by folding so far.
    cost: u64,
}

impl Walk {
    fn stmt(&mut self, s: &Stmt<'_>) -> Result<(), String> {
        match s {
            Stmt::Template(t) => self.body(&t.children),
            Stmt::EmitExpr(e) => self.expr(&e.expr),
            Stmt::EmitRaw(_) | Stmt::Continue(_) | Stmt::Break(_) => Ok(()),
            Stmt::ForLoop(f) => {
                self.exprs([&f.target, &f.iter].into_iter().chain(&f.filter_expr))?;
                self.body(&f.body)?;
                self.body(&f.else_body)
            }
            Stmt::IfCond(i) => {
                self.expr(&i.expr)?;
                self.body(&i.true_body)?;
                self.body(&i.false_body)
            }
            Stmt::WithBlock(w) => {
                self.exprs(w.assignments.iter().flat_map(|(a, b)| [a, b]))?;
                self.body(&w.body)
            }
            Stmt::Set(s) => self.exprs([&s.target, &s.expr]),
            Stmt::SetBlock(s) => {
                self.exprs(std::iter::once(&s.target).chain(&s.filter))?;
                self.body(&s.body)
            }
            Stmt::AutoEscape(a) => {
                self.expr(&a.enabled)?;
                self.body(&a.body)
            }
            Stmt::FilterBlock(f) => {
                self.expr(&f.filter)?;
                self.body(&f.body)
            }
            Stmt::Block(b) => self.body(&b.body),
            Stmt::Import(i) => self.exprs([&i.expr, &i.name]),
            Stmt::FromImport(i) => self.exprs(
                std::iter::once(&i.expr)
                    .chain(i.names.iter().flat_map(|(a, b)| std::iter::once(a).chain(b))),
            ),
            Stmt::Extends(e) => self.expr(&e.name),
            Stmt::Include(i) => self.expr(&i.name),
            Stmt::Macro(m) => {
                self.exprs(m.args.iter().chain(&m.defaults))?;
                self.body(&m.body)
            }
            Stmt::CallBlock(c) => {
                self.expr(&c.call.expr)?;
                self.args(&c.call.args)?;
                self.exprs(c.macro_decl.args.iter().chain(&c.macro_decl.defaults))?;
                self.body(&c.macro_decl.body)
            }
            Stmt::Do(d) => {
                self.expr(&d.call.expr)?;
                self.args(&d.call.args)
            }
        }
    }

    fn body(&mut self, body: &[Stmt<'_>]) -> Result<(), String> {
        body.iter().try_for_each(|s| self.stmt(s))
    }

    fn exprs<'e, 'a: 'e>(
        &mut self,
        es: impl IntoIterator<Item = &'e Expr<'a>>,
    ) -> Result<(), String> {
        es.into_iter().try_for_each(|e| self.expr(e))
    }

    fn args(&mut self, args: &[CallArg<'_>]) -> Result<(), String> {
        self.exprs(args.iter().map(|a| match a {
            CallArg::Pos(e) | CallArg::Kwarg(_, e) | CallArg::PosSplat(e) | CallArg::KwargSplat(e) => e,
        }))
    }

    /// An expression the compiler starts on: fold what it would fold, walk the rest.
    fn expr(&mut self, e: &Expr<'_>) -> Result<(), String> {
        if self.fold(e, 1)?.is_some() {
            return Ok(());
        }
        match e {
            Expr::Var(_) | Expr::Const(_) => Ok(()),
            Expr::Slice(s) => {
                self.exprs(std::iter::once(&s.expr).chain(&s.start).chain(&s.stop).chain(&s.step))
            }
            Expr::UnaryOp(u) => self.expr(&u.expr),
            Expr::BinOp(b) => self.exprs([&b.left, &b.right]),
            Expr::Compare(c) => {
                self.exprs(std::iter::once(&c.expr).chain(c.ops.iter().map(|o| &o.expr)))
            }
            Expr::IfExpr(i) => self.exprs([&i.test_expr, &i.true_expr].into_iter().chain(&i.false_expr)),
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

    /// The shape of `e` if minijinja would fold it (`None`: it will not), paying for what each
    /// operator builds `times` over: once for each operator above it that tries to fold too.
    fn fold(&mut self, e: &Expr<'_>, times: u64) -> Result<Option<Shape>, String> {
        let shape = match e {
            Expr::Const(c) => Some(of_value(&c.value)),
            // A list or map folds only when every item is a literal.
            Expr::List(l) if l.items.iter().all(|i| matches!(i, Expr::Const(_))) => {
                Some(sized(l.items.iter()))
            }
            Expr::Map(m)
                if m.keys.iter().chain(&m.values).all(|i| matches!(i, Expr::Const(_))) =>
            {
                Some(sized(m.keys.iter().chain(&m.values)))
            }
            Expr::UnaryOp(u) => match (self.fold(&u.expr, times + 1)?, &u.op) {
                (Some(Shape::Scalar(Some(_))), _) => Some(Shape::Scalar(e.as_const())),
                (Some(Shape::Scalar(None)), _) => Some(Shape::Scalar(None)),
                (Some(_), UnaryOpKind::Not) => Some(Shape::Scalar(None)),
                _ => None,
            },
            Expr::BinOp(b) => {
                let left = self.fold(&b.left, times + 1)?;
                let right = self.fold(&b.right, times + 1)?;
                match (left, right) {
                    (Some(l), Some(r)) => self.binop(e, b.op, l, r, times)?,
                    _ => None,
                }
            }
            Expr::Compare(c) => {
                let mut all = self.fold(&c.expr, times + 1)?.map(|s| vec![s]);
                for op in &c.ops {
                    let s = self.fold(&op.expr, times + 1)?;
                    all = all.zip(s).map(|(mut v, s)| {
                        v.push(s);
                        v
                    });
                }
                match all {
                    Some(shapes) => {
                        let walked: u64 = shapes.iter().map(walk_cost).sum();
                        self.pay(walked, times)?;
                        Some(Shape::Scalar(None))
                    }
                    None => None,
                }
            }
            _ => None,
        };
        Ok(shape)
    }

    fn binop(
        &mut self,
        e: &Expr<'_>,
        op: BinOpKind,
        l: Shape,
        r: Shape,
        times: u64,
    ) -> Result<Option<Shape>, String> {
        match (&l, &r) {
            // Numbers only (literals all the way down): minijinja computes it, allocating nothing.
            (Shape::Scalar(Some(_)), Shape::Scalar(Some(_))) => {
                return Ok(Some(Shape::Scalar(e.as_const())))
            }
            (Shape::Scalar(_), Shape::Scalar(_)) => return Ok(Some(Shape::Scalar(None))),
            _ => {}
        }
        let shape = match op {
            BinOpKind::Add => match (&l, &r) {
                (Shape::Sized { .. }, Shape::Sized { .. }) => {
                    let s = Shape::Sized {
                        bytes: l.bytes().saturating_add(r.bytes()),
                        items: l.items().saturating_add(r.items()),
                    };
                    self.built("a + b", &s, times)?;
                    Some(s)
                }
                _ => None, // a string plus a number: minijinja's error, at run time
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
                        return Err(format!(
                            "size limit exceeded: a constant repeated a number of times that \
                             is only known by running (`{}` × a comparison or negation)",
                            what.bytes()
                        ))
                    }
                };
                let s = Shape::Sized {
                    bytes: what.bytes().saturating_mul(n),
                    items: what.items().saturating_mul(n),
                };
                self.built("a * n", &s, times)?;
                Some(s)
            }
            BinOpKind::Concat => {
                let s = Shape::Sized {
                    bytes: l.text().saturating_add(r.text()),
                    items: 0,
                };
                self.built("a ~ b", &s, times)?;
                Some(s)
            }
            BinOpKind::Eq
            | BinOpKind::Ne
            | BinOpKind::Lt
            | BinOpKind::Lte
            | BinOpKind::Gt
            | BinOpKind::Gte
            | BinOpKind::In => {
                self.pay(walk_cost(&l).saturating_add(walk_cost(&r)), times)?;
                Some(Shape::Scalar(None))
            }
            // One side or the other.
            BinOpKind::ScAnd | BinOpKind::ScOr => Some(Shape::Sized {
                bytes: l.bytes().max(r.bytes()),
                items: l.items().max(r.items()),
            }),
            // Arithmetic on a string or list: minijinja's error, at run time.
            BinOpKind::Sub
            | BinOpKind::Div
            | BinOpKind::FloorDiv
            | BinOpKind::Rem
            | BinOpKind::Pow => None,
        };
        Ok(shape)
    }

    /// A folded string or list `s`: within the size limits, and its bytes paid for.
    fn built(&mut self, what: &str, s: &Shape, times: u64) -> Result<(), String> {
        if s.bytes() > STRING_BYTES || s.items() > ITEMS {
            return Err(format!(
                "size limit exceeded: the constant expression {what} would be {} bytes and {} \
                 items (limits: {} a string, {ITEMS} items a list)",
                s.bytes(),
                s.items(),
                mib(STRING_BYTES)
            ));
        }
        // Lists repeat and join lazily; strings are copied.
        let copied = if s.items() == 0 { s.bytes() } else { 0 };
        self.pay(copied, times)
    }

    fn pay(&mut self, units: u64, times: u64) -> Result<(), String> {
        self.cost = self.cost.saturating_add(units.saturating_mul(times));
        if self.cost > WORK {
            return Err(format!(
                "work limit exceeded: folding the template's constant expressions would copy or \
                 compare more than {}",
                mib(WORK)
            ));
        }
        Ok(())
    }
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
