//! `llorch serve`: an OpenAI-compatible HTTP server over one model (tokio + axum).
//!
//! `POST /v1/chat/completions` and `/v1/completions` (whole or streamed as server-sent
//! events), `GET /v1/models`, `/health`, `/metrics` (Prometheus). Requests run through the
//! [`scheduler`]: up to N sequences at once, the rest queued. A client that goes away cancels
//! its generation; SIGTERM (or Ctrl-C) stops accepting connections, lets what is in flight
//! finish for a grace period, then cancels the rest.

pub mod metrics;
pub mod openai;
mod routes;
pub mod scheduler;

use crate::model::Model;
use crate::session::DEFAULT_MAX_CTX;
use metrics::Metrics;
use scheduler::Scheduler;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    /// 0: any free port (the one taken is in the "listening on" line).
    pub port: u16,
    /// The model's name in requests and responses.
    pub model_id: String,
    /// Sequences generating at once; more requests wait in a queue.
    pub max_parallel: usize,
    /// Context of each sequence in tokens (prompt and reply); 0 = the model's, at most
    /// [`DEFAULT_MAX_CTX`].
    pub n_ctx: u32,
    /// The sequences' KV cache type.
    pub kv_type: crate::session::KvType,
    /// After SIGTERM, how long requests in flight may go on before they are cancelled.
    pub grace: Duration,
}

/// What the routes share.
pub(crate) struct App {
    model: Arc<Model>,
    model_id: String,
    /// When the server started (the model's `created`).
    created: u64,
    n_ctx: u32,
    scheduler: Scheduler,
    metrics: Metrics,
    shutting_down: AtomicBool,
    next_id: AtomicU64,
}

impl App {
    /// A seed for a request that gives none: differs between requests and runs.
    fn random_seed(&self) -> u64 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos
            ^ self
                .next_id
                .load(Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serves `model` until SIGTERM or Ctrl-C (then as described in the module's doc).
pub fn serve(model: Arc<Model>, options: ServeOptions) -> Result<(), String> {
    let n_ctx = match options.n_ctx {
        0 => model.context_length().min(DEFAULT_MAX_CTX),
        n if n > model.context_length() => {
            return Err(format!(
                "a context of {n} tokens exceeds the model's training context of {}",
                model.context_length()
            ))
        }
        n => n,
    };
    let scheduler = Scheduler::new(model.clone(), options.max_parallel, n_ctx, options.kv_type)
        .map_err(|e| format!("the sequence slots: {e}"))?;
    let app = Arc::new(App {
        model,
        model_id: options.model_id.clone(),
        created: unix_now(),
        n_ctx,
        scheduler,
        metrics: Metrics::default(),
        shutting_down: AtomicBool::new(false),
        next_id: AtomicU64::new(0),
    });
    // The HTTP side needs little CPU: the model's thread pool does the work.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let result = rt.block_on(run(app.clone(), options));
    // Tasks still holding the app go with the runtime; the scheduler's threads are joined
    // when the last reference goes, outside the runtime.
    drop(rt);
    drop(app);
    result
}

async fn run(app: Arc<App>, options: ServeOptions) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind((options.host.as_str(), options.port))
        .await
        .map_err(|e| format!("listening on {}:{}: {e}", options.host, options.port))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("the listening address: {e}"))?;
    eprintln!(
        "llorch serve: listening on http://{addr} (model {}, {} parallel sequences of {} tokens)",
        app.model_id,
        app.scheduler.max_parallel(),
        app.n_ctx
    );
    let stopping = Arc::new(tokio::sync::Notify::new());
    let on_signal = {
        let (app, stopping, grace) = (app.clone(), stopping.clone(), options.grace);
        async move {
            stop_signal().await;
            app.shutting_down.store(true, Ordering::SeqCst);
            eprintln!(
                "llorch serve: stopping: no new connections; {} running and {} queued requests \
                 have {:.1} s to finish",
                app.scheduler.running(),
                app.scheduler.queue_depth(),
                grace.as_secs_f64()
            );
            stopping.notify_one();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let left = app.scheduler.running() + app.scheduler.queue_depth();
                if left > 0 {
                    eprintln!("llorch serve: grace period over: cancelling {left} requests");
                }
                app.scheduler.cancel_all();
            });
        }
    };
    let server =
        axum::serve(listener, routes::router(app.clone())).with_graceful_shutdown(on_signal);
    // A connection that outlives the grace period by far (a client that never reads) does
    // not keep the process alive.
    let deadline = async {
        stopping.notified().await;
        tokio::time::sleep(options.grace + Duration::from_secs(5)).await;
    };
    tokio::select! {
        r = server => r.map_err(|e| format!("serving: {e}"))?,
        _ = deadline => eprintln!("llorch serve: connections still open after the grace period; exiting"),
    }
    eprintln!("llorch serve: stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C (SIGINT).
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                eprintln!("llorch serve: cannot watch SIGTERM ({e}); Ctrl-C still stops");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
