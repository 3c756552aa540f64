//! A grammar flattened for the matcher: every alternative laid out as a run of operations
//! ending in `End`, so that a position in the grammar is one index. Compiling checks what
//! would make the matcher loop or fail: undefined rules and left recursion (a rule that can
//! reach itself without consuming a byte).

use super::builder::{ByteSet, Rule, Sym};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Byte(ByteSet),
    Call(u32),
    End,
}

/// A compiled grammar.
#[derive(Debug)]
pub struct Program {
    pub(super) ops: Vec<Op>,
    /// Per rule, the positions where its alternatives start.
    pub(super) alts: Vec<Vec<u32>>,
    pub(super) root: u32,
}

impl Program {
    pub(super) fn compile(rules: Vec<Rule>, root: u32) -> Result<Program> {
        let mut defs = Vec::with_capacity(rules.len());
        let mut names = Vec::with_capacity(rules.len());
        for r in rules {
            match r.alts {
                Some(a) => defs.push(a),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "grammar: rule '{}' is used{} but never defined",
                        r.name,
                        r.used_at.map(|a| format!(" at {a}")).unwrap_or_default()
                    )))
                }
            }
            names.push(r.name);
        }
        check_left_recursion(&defs, &names)?;
        let mut ops = Vec::new();
        let mut alts = Vec::with_capacity(defs.len());
        for rule in &defs {
            let mut starts = Vec::with_capacity(rule.len());
            for alt in rule {
                starts.push(ops.len() as u32);
                ops.extend(alt.iter().map(|s| match s {
                    Sym::Byte(b) => Op::Byte(*b),
                    Sym::Rule(r) => Op::Call(*r),
                }));
                ops.push(Op::End);
            }
            alts.push(starts);
        }
        if ops.len() >= u32::MAX as usize / 2 {
            return Err(Error::InvalidArgument("grammar: too large".into()));
        }
        Ok(Program { ops, alts, root })
    }

    /// Rules in the grammar (generated ones included).
    pub fn n_rules(&self) -> usize {
        self.alts.len()
    }
}

/// Which rules can match the empty string (a fixed point).
fn nullable(defs: &[Vec<Vec<Sym>>]) -> Vec<bool> {
    let mut null = vec![false; defs.len()];
    let mut changed = true;
    while changed {
        changed = false;
        for (i, rule) in defs.iter().enumerate() {
            if null[i] {
                continue;
            }
            let n = rule.iter().any(|alt| {
                alt.iter().all(|s| match s {
                    Sym::Byte(_) => false,
                    Sym::Rule(r) => null[*r as usize],
                })
            });
            if n {
                null[i] = true;
                changed = true;
            }
        }
    }
    null
}

/// A rule that can call itself before consuming a byte would expand forever: find one (a
/// cycle in the graph "A may begin with B") and name it.
fn check_left_recursion(defs: &[Vec<Vec<Sym>>], names: &[String]) -> Result<()> {
    let null = nullable(defs);
    let mut edges: Vec<Vec<u32>> = vec![Vec::new(); defs.len()];
    for (i, rule) in defs.iter().enumerate() {
        for alt in rule {
            for s in alt {
                match s {
                    Sym::Byte(_) => break,
                    Sym::Rule(r) => {
                        edges[i].push(*r);
                        if !null[*r as usize] {
                            break;
                        }
                    }
                }
            }
        }
        edges[i].sort_unstable();
        edges[i].dedup();
    }
    // Iterative depth-first search with colours: 0 new, 1 on the path, 2 done.
    let mut colour = vec![0u8; defs.len()];
    for start in 0..defs.len() {
        if colour[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        colour[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&to) = edges[node].get(*next) {
                *next += 1;
                let to = to as usize;
                match colour[to] {
                    0 => {
                        colour[to] = 1;
                        stack.push((to, 0));
                    }
                    1 => {
                        return Err(Error::InvalidArgument(format!(
                            "grammar: rule '{}' is left-recursive (it can reach itself \
                             without consuming input; write the repetition with * or +, or \
                             make the repeated part non-empty)",
                            user_name(&names[to])
                        )))
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                stack.pop();
            }
        }
    }
    Ok(())
}

/// A generated rule's name without its number (`item*~3` → `item*`).
pub(super) fn user_name(name: &str) -> &str {
    name.split('~').next().unwrap_or(name)
}
