//! `llorch tokenize -m MODEL [--no-special] [--bos] [--pieces] [TEXT]`: the token ids of a text.

use super::print_out;
use llorch::gguf::Gguf;
use llorch::tokenizer::Tokenizer;
use std::io::Read;
use std::path::Path;

/// Print the token ids of a text
///
/// Print the token ids of TEXT (or of standard input when TEXT is absent or '-') as a JSON
/// array, using only the tokenizer in the model's metadata.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The text (absent or '-': standard input)
    #[arg(value_name = "TEXT")]
    text: Option<String>,
    #[command(flatten)]
    model: TokenizerModel,
    /// Special tokens written in the text (<|im_start|> …) stay plain text
    #[arg(long)]
    no_special: bool,
    /// Add BOS (and EOS) where the model's metadata asks for them
    #[arg(long)]
    bos: bool,
    /// Also print a second JSON array: the text of each token
    #[arg(long)]
    pieces: bool,
}

/// `-m FILE` of the commands that read only the tokenizer (no name lookup, no default).
#[derive(clap::Args, Debug)]
pub struct TokenizerModel {
    /// The GGUF model
    #[arg(short, long, value_name = "FILE")]
    model: Option<String>,
}

/// Open a model's tokenizer, with errors that name the file.
pub fn open_tokenizer(path: &str) -> Result<(Gguf, Tokenizer), String> {
    let g = Gguf::open(Path::new(path)).map_err(|e| format!("{path}: {e}"))?;
    let t = Tokenizer::from_gguf(&g).map_err(|e| format!("{path}: {e}"))?;
    Ok((g, t))
}

impl TokenizerModel {
    /// The model path, or an error saying none was given.
    pub fn path(&self) -> Result<&str, String> {
        self.model
            .as_deref()
            .ok_or_else(|| "no model given (-m MODEL.gguf)".to_string())
    }
}

pub fn run(a: Args) -> Result<(), String> {
    let path = a.model.path()?;
    let text: Vec<u8> = match a.text {
        None => read_stdin()?,
        Some(t) if t == "-" => read_stdin()?,
        Some(t) => t.into_bytes(),
    };
    let (_g, tok) = open_tokenizer(path)?;
    let ids = tok
        .encode_bytes(&text, !a.no_special, a.bos)
        .map_err(|e| e.to_string())?;
    let mut out = serde_json::to_string(&ids).map_err(|e| e.to_string())?;
    out.push('\n');
    if a.pieces {
        let pieces: Vec<String> = ids.iter().map(|&i| tok.token_text(i)).collect();
        out += &serde_json::to_string(&pieces).map_err(|e| e.to_string())?;
        out.push('\n');
    }
    print_out(&out)
}

fn read_stdin() -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading standard input: {e}"))?;
    Ok(buf)
}
