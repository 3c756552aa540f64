//! The `llorch` command-line tool: `llorch <command> [args]` (src/cli/).

mod cli;

fn main() {
    // A panic is a bug; still report it as an error line and a non-zero exit.
    let result = std::panic::catch_unwind(|| cli::main(std::env::args_os()))
        .unwrap_or_else(|_| Err("internal error (panic); please report this".into()));
    if let Err(msg) = result {
        eprintln!("llorch: error: {msg}");
        std::process::exit(1);
    }
}
