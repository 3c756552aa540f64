//! Subcommands of the `llorch` tool, one file each, and the small helpers they share.
//!
//! Each command is `src/cli/<name>.rs` exposing `pub fn run(args: &[String]) -> Result<(), String>`
//! (the arguments after the command name). To add one: declare it below and add one line to
//! the `COMMANDS` table in src/main.rs.

pub mod bench;
pub mod chat_template;
pub mod common;
pub mod info;
pub mod perplexity;
pub mod run;
pub mod serve;
pub mod synth;
pub mod tokenize;

use std::io::Write;

/// Parsed command-line arguments: positionals, boolean flags and `--name value` options.
#[derive(Debug, Default)]
pub struct Args {
    pub positional: Vec<String>,
    flags: Vec<&'static str>,
    options: Vec<(&'static str, String)>,
    /// `-h` or `--help` was given.
    pub help: bool,
}

impl Args {
    /// Parse `args` given the known flags and options (long names with their dashes, e.g.
    /// "--tensors"). Options take `--name value` or `--name=value`; `--` ends options; an
    /// unknown `-x` is an error.
    pub fn parse(
        args: &[String],
        flags: &[&'static str],
        options: &[&'static str],
    ) -> Result<Args, String> {
        let mut out = Args::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--" {
                out.positional.extend(it.by_ref().cloned());
                break;
            }
            if a == "-h" || a == "--help" {
                out.help = true;
                continue;
            }
            if !a.starts_with('-') || a == "-" {
                out.positional.push(a.clone());
                continue;
            }
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (a.as_str(), None),
            };
            if let Some(&f) = flags.iter().find(|&&f| f == name) {
                if inline.is_some() {
                    return Err(format!("flag {f} takes no value"));
                }
                out.flags.push(f);
            } else if let Some(&o) = options.iter().find(|&&o| o == name) {
                let v = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("option {o} needs a value"))?,
                };
                out.options.push((o, v));
            } else {
                return Err(format!("unknown option '{a}'"));
            }
        }
        Ok(out)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    /// The last value given for an option.
    #[allow(dead_code)] // for the commands that take options (tokenize, run, bench …)
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// An option parsed as `T`, with an error naming the option.
    #[allow(dead_code)] // for the commands that take options
    pub fn option_as<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        self.option(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| format!("option {name}: '{v}': {e}"))
            })
            .transpose()
    }

    /// The last value given under any of `names` (aliases such as `-p` and `--prompt`).
    pub fn value(&self, names: &[&str]) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| names.contains(n))
            .map(|(_, v)| v.as_str())
    }

    /// Every value given under any of `names`, in order (repeatable options).
    pub fn values(&self, names: &[&str]) -> Vec<&str> {
        self.options
            .iter()
            .filter(|(n, _)| names.contains(n))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value under `names` parsed as `T`, or `default`; the error names the option.
    pub fn parsed<T: std::str::FromStr>(&self, names: &[&str], default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.value(names) {
            None => Ok(default),
            Some(v) => v
                .parse::<T>()
                .map_err(|e| format!("option {}: '{v}': {e}", names[names.len() - 1])),
        }
    }

    /// Exactly `n` positional arguments, or an error naming what is expected.
    pub fn expect_positional(&self, n: usize, what: &str) -> Result<&[String], String> {
        if self.positional.len() != n {
            return Err(format!(
                "expected {what}, got {} argument(s) (see --help)",
                self.positional.len()
            ));
        }
        Ok(&self.positional)
    }
}

/// Write to stdout; a closed pipe (`llorch info x | head`) is not an error.
pub fn print_out(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("writing output: {e}")),
        _ => Ok(()),
    }
}

/// Bytes in a human unit.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.2} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags_options_and_positionals() {
        let a = Args::parse(
            &strs(&["m.gguf", "--n", "5", "--x", "--seed=7", "--", "--y"]),
            &["--x"],
            &["--n", "--seed"],
        )
        .unwrap();
        assert_eq!(a.positional, ["m.gguf", "--y"]);
        assert!(a.flag("--x") && !a.help);
        assert_eq!(a.option("--n"), Some("5"));
        assert_eq!(a.option_as::<u64>("--seed").unwrap(), Some(7));
        assert_eq!(a.option_as::<u64>("--missing").unwrap(), None);
        assert!(Args::parse(&strs(&["-h"]), &[], &[]).unwrap().help);
        let e = Args::parse(&strs(&["--bogus"]), &[], &[]).unwrap_err();
        assert!(e.contains("unknown option '--bogus'"), "{e}");
        assert!(Args::parse(&strs(&["--n"]), &[], &["--n"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(Args::parse(&strs(&["--x=1"]), &["--x"], &[])
            .unwrap_err()
            .contains("takes no value"));
        let a = Args::parse(&strs(&["--n", "abc"]), &[], &["--n"]).unwrap();
        assert!(a
            .option_as::<u32>("--n")
            .unwrap_err()
            .contains("option --n: 'abc'"));
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(1000), "1000 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }
}
