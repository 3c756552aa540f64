//! Loading a model for a subcommand: path or known model name, device, threads.

use super::Args;
use llorch::backend::Context;
use llorch::backend::{ContextOptions, Device};
use llorch::model::Model;
use std::path::PathBuf;
use std::sync::Arc;

pub const MODEL_HELP: &str =
    "  -m, --model PATH|NAME  a GGUF file, or a model name that scripts/fetch-model knows
                         (default: qwen2.5-coder-0.5b, fetched if absent)
  -t, --threads N        CPU threads (default: all cores)
      --device DEV       cpu (default) or cuda:N";

/// The options every model-running command takes.
const MODEL_OPTIONS: [&str; 5] = ["-m", "--model", "-t", "--threads", "--device"];

/// Parse a model-running command's arguments: its own flags and options plus `-m`, `-t`,
/// `--device`.
pub fn parse(
    args: &[String],
    flags: &[&'static str],
    options: &[&'static str],
) -> Result<Args, String> {
    let all: Vec<&'static str> = options.iter().copied().chain(MODEL_OPTIONS).collect();
    Args::parse(args, flags, &all)
}

/// Resolve `-m`: an existing file, else a model name fetched through scripts/fetch-model.
pub fn model_path(name: Option<String>) -> Result<PathBuf, String> {
    let name = name.unwrap_or_else(|| "qwen2.5-coder-0.5b".to_string());
    let p = PathBuf::from(&name);
    if p.is_file() || name.ends_with(".gguf") {
        return Ok(p);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-model");
    let out = std::process::Command::new(&script)
        .arg(&name)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| {
            format!(
                "'{name}' is not a file, and {} cannot run: {e}",
                script.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "'{name}' is not a file, and fetching it as a model name failed"
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

pub fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ => s
            .strip_prefix("cuda:")
            .or_else(|| (s == "cuda").then_some("0"))
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("unknown device '{s}' (cpu or cuda:N)")),
    }
}

/// Parse `-m`, `-t`, `--device` and load the model.
pub fn load(args: &Args) -> Result<Arc<Model>, String> {
    let path = model_path(args.value(&["-m", "--model"]).map(String::from))?;
    let threads = args.parsed(&["-t", "--threads"], 0usize)?;
    let device = parse_device(args.value(&["--device"]).unwrap_or("cpu"))?;
    let ctx = Context::new(ContextOptions {
        device,
        threads,
        memory_budget: 0,
    })
    .map_err(|e| e.to_string())?;
    Model::load(&ctx, &path, None).map_err(|e| format!("{}: {e}", path.display()))
}
