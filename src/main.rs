//! The `llorch` command-line tool: `llorch <command> [args]`.

mod cli;

type Run = fn(&[String]) -> Result<(), String>;

/// The subcommands: name, one-line description, entry point. Adding a command is one line
/// here (plus its `pub mod` in src/cli/mod.rs).
const COMMANDS: &[(&str, &str, Run)] = &[
    (
        "info",
        "Show a GGUF file: version, architecture, hyper-parameters, tokenizer, tensors",
        cli::info::run,
    ),
    (
        "run",
        "Generate text from a prompt, streamed",
        cli::run::run,
    ),
    (
        "serve",
        "OpenAI-compatible HTTP server (chat and text completions, streamed or whole)",
        cli::serve::run,
    ),
    (
        "perplexity",
        "Perplexity of a text file",
        cli::perplexity::run,
    ),
    (
        "bench",
        "Prompt-processing and decoding speed (tokens/s)",
        cli::bench::run,
    ),
    (
        "synth",
        "Write a deterministic synthetic model of a real shape",
        cli::synth::run,
    ),
    (
        "tokenize",
        "Print the token ids of a text",
        cli::tokenize::run,
    ),
    (
        "chat-template",
        "Render JSON messages (stdin) with the model's chat template",
        cli::chat_template::run,
    ),
];

fn usage() -> String {
    let mut s = format!(
        "llorch {} - LLM inference engine\n\nUsage: llorch <command> [args]\n       llorch <command> --help\n\nCommands:\n",
        llorch::VERSION
    );
    for (name, help, _) in COMMANDS {
        s += &format!("  {name:<14} {help}\n");
    }
    s
}

fn real_main() -> Result<(), String> {
    let args = std::env::args_os()
        .skip(1)
        .enumerate()
        .map(|(i, a)| {
            a.into_string()
                .map_err(|a| format!("argument {} is not valid UTF-8: {a:?}", i + 1))
        })
        .collect::<Result<Vec<String>, String>>()?;
    let Some(cmd) = args.first() else {
        eprint!("{}", usage());
        return Err("no command given".into());
    };
    match cmd.as_str() {
        "-h" | "--help" | "help" => cli::print_out(&usage()),
        "-V" | "--version" => cli::print_out(&format!("llorch {}\n", llorch::VERSION)),
        _ => match COMMANDS.iter().find(|(name, _, _)| name == cmd) {
            Some((_, _, run)) => run(&args[1..]),
            None => Err(format!("unknown command '{cmd}' (see llorch --help)")),
        },
    }
}

fn main() {
    // A panic is a bug; still report it as an error line and a non-zero exit.
    let result = std::panic::catch_unwind(real_main)
        .unwrap_or_else(|_| Err("internal error (panic); please report this".into()));
    if let Err(msg) = result {
        eprintln!("llorch: error: {msg}");
        std::process::exit(1);
    }
}
