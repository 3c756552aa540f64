//! Subcommands of the `llorch` tool, one file each, and the small helpers they share.
//!
//! The arguments are parsed by clap (derive): each command is `src/cli/<name>.rs` with a
//! `#[derive(clap::Args)] pub struct Args` (its doc comment is the command's help) and
//! `pub fn run(a: Args) -> Result<(), String>`. To add one: a variant in [`Command`] and a
//! line in [`main`].

pub mod bench;
pub mod chat_template;
pub mod common;
pub mod embed;
pub mod info;
pub mod perplexity;
pub mod run;
pub mod serve;
pub mod synth;
pub mod tokenize;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;

/// llorch - LLM inference engine
#[derive(Parser, Debug)]
#[command(name = "llorch", version = llorch::VERSION)]
// A repeated option keeps its last value (as `--seed 1 --seed 2` always did).
#[command(args_override_self = true, subcommand_required = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Info(info::Args),
    Run(run::Args),
    Serve(serve::Args),
    Perplexity(perplexity::Args),
    Bench(bench::Args),
    Synth(synth::Args),
    Tokenize(tokenize::Args),
    Embed(embed::Args),
    ChatTemplate(chat_template::Args),
}

/// Parse the command line and run the command. Help and version go to stdout (success);
/// a bad command line is an error of one line that names the bad argument, plus where to
/// find the help: the caller prints it after `llorch: error: ` and exits with status 1.
pub fn main(args: impl IntoIterator<Item = OsString>) -> Result<(), String> {
    let args: Vec<OsString> = args.into_iter().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return parse_error(e, &args),
    };
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Run(a) => run::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Embed(a) => embed::run(a),
        Command::ChatTemplate(a) => chat_template::run(a),
    }
}

/// What clap's error becomes: help and version printed, anything else one line of error.
fn parse_error(e: clap::Error, args: &[OsString]) -> Result<(), String> {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => print_out(&e.render().to_string()),
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprint!("{}", Cli::command().render_help());
            Err("no command given".into())
        }
        ErrorKind::InvalidSubcommand => {
            let cmd = args.get(1).map(|a| a.to_string_lossy()).unwrap_or_default();
            Err(format!("unknown command '{cmd}' (see llorch --help)"))
        }
        _ => {
            // The command whose help to point at: the first argument, when it names one.
            let sub = args
                .get(1)
                .and_then(|a| a.to_str())
                .filter(|s| Cli::command().find_subcommand(s).is_some());
            let help = match sub {
                Some(s) => format!("llorch {s} --help"),
                None => "llorch --help".into(),
            };
            Err(format!(
                "{} (see {help})",
                one_line(&e.render().to_string())
            ))
        }
    }
}

/// Clap's message without its "error: " prefix, usage block and blank lines: the first
/// paragraph and any tips, joined on one line.
fn one_line(rendered: &str) -> String {
    let mut paragraphs = rendered.split("\n\n").filter(|p| !p.starts_with("Usage:"));
    let first = paragraphs.next().unwrap_or_default();
    let mut parts = vec![first.strip_prefix("error: ").unwrap_or(first).to_string()];
    parts.extend(
        paragraphs
            .filter(|p| p.trim_start().starts_with("tip:"))
            .map(String::from),
    );
    let joined = parts.join("; ");
    joined.split_whitespace().collect::<Vec<_>>().join(" ")
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

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap's own checks: no two arguments share a name or short flag, and so on.
        Cli::command().debug_assert();
    }

    #[test]
    fn errors_are_one_line_naming_the_argument() {
        let err = |args: &[&str]| {
            let mut v = vec!["llorch"];
            v.extend(args);
            main(v.into_iter().map(OsString::from)).unwrap_err()
        };
        let e = err(&["info", "x.gguf", "--bogus"]);
        assert!(e.contains("'--bogus'") && !e.contains('\n'), "{e}");
        assert!(e.ends_with("(see llorch info --help)"), "{e}");
        let e = err(&["run", "-n", "abc", "-p", "x"]);
        assert!(e.contains("'abc'") && e.contains("--max-tokens"), "{e}");
        let e = err(&["info", "--tensor", "x"]);
        assert!(e.contains("tip:") && e.contains("'--tensors'"), "{e}");
        assert_eq!(err(&[]), "no command given");
        assert_eq!(
            err(&["frobnicate"]),
            "unknown command 'frobnicate' (see llorch --help)"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(1000), "1000 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }
}
