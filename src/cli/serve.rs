//! `llorch serve`: the OpenAI-compatible HTTP server (src/server/).

use super::common;

const USAGE: &str = "usage: llorch serve [-m MODEL] [options]
Serve the model over HTTP with OpenAI's API: POST /v1/chat/completions, /v1/completions
(streamed with \"stream\": true), GET /v1/models, /health, /metrics (Prometheus).
SIGTERM or Ctrl-C stops accepting connections and lets requests in flight finish for the
grace period, then cancels them. One log line per request goes to stderr.
      --host ADDR        address to listen on (default 127.0.0.1)
      --port N           port (default 8080; 0 = any free port, printed at start)
      --parallel N       sequences generating at once; more requests wait (default 4)
  -c, --ctx N            context of each sequence in tokens, prompt and reply
                         (default: the model's, at most 4096)
      --name NAME        the model's name in the API (default: the file's name)
      --grace SECONDS    after SIGTERM, time for requests in flight (default 30)";

pub fn run(args: &[String]) -> Result<(), String> {
    let a = common::parse(
        args,
        &[],
        &[
            "--host",
            "--port",
            "--parallel",
            "-c",
            "--ctx",
            "--name",
            "--grace",
        ],
    )?;
    if a.help {
        println!("{USAGE}\n{}", common::MODEL_HELP);
        return Ok(());
    }
    a.expect_positional(0, "no positional arguments")?;
    serve(&a)
}

#[cfg(feature = "server")]
fn serve(a: &super::Args) -> Result<(), String> {
    use llorch::server::{serve, ServeOptions};
    let grace: f64 = a.parsed(&["--grace"], 30.0)?;
    if !(0.0..=86_400.0).contains(&grace) {
        return Err(format!(
            "option --grace: {grace} is not in [0, 86400] seconds"
        ));
    }
    let parallel = a.parsed(&["--parallel"], 4usize)?;
    if !(1..=1024).contains(&parallel) {
        return Err(format!("option --parallel: {parallel} is not in [1, 1024]"));
    }
    let path = common::model_path(a.value(&["-m", "--model"]).map(String::from))?;
    let name = a.value(&["--name"]).map(String::from).unwrap_or_else(|| {
        path.file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned())
    });
    let options = ServeOptions {
        host: a.value(&["--host"]).unwrap_or("127.0.0.1").to_string(),
        port: a.parsed(&["--port"], 8080u16)?,
        model_id: name,
        max_parallel: parallel,
        n_ctx: a.parsed(&["-c", "--ctx"], 0u32)?,
        grace: std::time::Duration::from_secs_f64(grace),
    };
    let model = common::load(a)?;
    serve(model, options)
}

#[cfg(not(feature = "server"))]
fn serve(_: &super::Args) -> Result<(), String> {
    Err("this llorch was built without the server (cargo build --features server)".into())
}
