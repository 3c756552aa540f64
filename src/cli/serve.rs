//! `llorch serve`: the OpenAI-compatible HTTP server (src/server/).

use super::common::{model_path, ModelArgs};

/// OpenAI-compatible HTTP server (chat and text completions, streamed or whole)
///
/// Serve the model over HTTP with OpenAI's API: POST /v1/chat/completions, /v1/completions
/// (streamed with "stream": true), GET /v1/models, /health, /metrics (Prometheus).
/// SIGTERM or Ctrl-C stops accepting connections and lets requests in flight finish for the
/// grace period, then cancels them. One log line per request goes to stderr.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port, printed at start)
    #[arg(long, value_name = "N", default_value_t = 8080)]
    port: u16,
    /// Sequences generating at once, 1 to 1024; more requests wait
    #[arg(long, value_name = "N", default_value_t = 4)]
    parallel: usize,
    /// Context of each sequence in tokens, prompt and reply (0: the model's, at most 4096)
    #[arg(short, long, value_name = "N", default_value_t = 0)]
    ctx: u32,
    /// The KV caches' element type: auto (f32 on the CPU, f16 on a GPU), f16 (half the
    /// memory) or f32
    #[arg(long, value_name = "TYPE", default_value = "auto", value_parser = super::common::parse_kv_type)]
    kv_type: llorch::session::KvType,
    /// The model's name in the API (default: the file's name)
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// After SIGTERM, seconds for requests in flight (at most 86400)
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    grace: f64,
    #[command(flatten)]
    model: ModelArgs,
}

#[cfg(feature = "server")]
pub fn run(a: Args) -> Result<(), String> {
    use llorch::server::{serve, ServeOptions};
    if !(0.0..=86_400.0).contains(&a.grace) {
        return Err(format!(
            "option --grace: {} is not in [0, 86400] seconds",
            a.grace
        ));
    }
    if !(1..=1024).contains(&a.parallel) {
        return Err(format!(
            "option --parallel: {} is not in [1, 1024]",
            a.parallel
        ));
    }
    let path = model_path(&a.model.model)?;
    let name = a.name.unwrap_or_else(|| {
        path.file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned())
    });
    let options = ServeOptions {
        host: a.host,
        port: a.port,
        model_id: name,
        max_parallel: a.parallel,
        n_ctx: a.ctx,
        kv_type: a.kv_type,
        grace: std::time::Duration::from_secs_f64(a.grace),
    };
    let model = a.model.load_file(&path)?;
    serve(model, options)
}

#[cfg(not(feature = "server"))]
pub fn run(_: Args) -> Result<(), String> {
    Err("this llorch was built without the server (cargo build --features server)".into())
}
