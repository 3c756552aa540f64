//! Loading a model for a subcommand: path or known model name, device, threads.

use llorch::backend::Context;
use llorch::backend::{ContextOptions, Device};
use llorch::model::Model;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The options every model-running command takes (flattened into its arguments).
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// A GGUF file, or a model name that scripts/fetch-model knows (fetched if absent)
    #[arg(
        short,
        long,
        value_name = "PATH|NAME",
        default_value = "qwen2.5-coder-0.5b"
    )]
    pub model: String,
    /// CPU threads (0: all cores)
    #[arg(short, long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// cpu or cuda:N
    #[arg(long, value_name = "DEV", default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
}

impl ModelArgs {
    /// Resolve the model and load it.
    pub fn load(&self) -> Result<Arc<Model>, String> {
        self.load_file(&model_path(&self.model)?)
    }

    /// Load the model from its resolved path on the chosen device.
    pub fn load_file(&self, path: &Path) -> Result<Arc<Model>, String> {
        let ctx = Context::new(ContextOptions {
            device: self.device,
            threads: self.threads,
            memory_budget: 0,
        })
        .map_err(|e| e.to_string())?;
        Model::load(&ctx, path, None).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Resolve `-m`: an existing file, else a model name fetched through scripts/fetch-model.
pub fn model_path(name: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(name);
    if p.is_file() || name.ends_with(".gguf") {
        return Ok(p);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-model");
    let out = std::process::Command::new(&script)
        .arg(name)
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

/// `--kv-type`'s value: auto, f16 or f32.
pub fn parse_kv_type(s: &str) -> Result<llorch::session::KvType, String> {
    llorch::session::KvType::parse(s).map_err(|e| e.to_string())
}
