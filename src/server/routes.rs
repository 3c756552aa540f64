//! The HTTP routes: the two completion endpoints (streamed as server-sent events or whole),
//! the model list, health and metrics. One log line per request.

use super::metrics::Gauges;
use super::openai::{self, ApiError, Meta, Prompt};
use super::scheduler::{Job, Ticket, Update};
use super::App;
use crate::session::{GenerateParams, GenerateStats};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Request bodies above this are refused (413) before they are read whole.
const MAX_BODY_BYTES: usize = 32 << 20;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    json_response(
        404,
        &ApiError::new(404, format!("no route for {method} {}", uri.path())).body(),
    )
}

async fn health() -> Response {
    json_response(200, &json!({"status": "ok"}))
}

async fn models(State(app): State<Arc<App>>) -> Response {
    json_response(
        200,
        &json!({"object": "list", "data": [{
            "id": app.model_id, "object": "model", "created": app.created, "owned_by": "llorch",
        }]}),
    )
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let batch = app.scheduler.batch_stats();
    let text = app.metrics.render(&Gauges {
        queue_depth: app.scheduler.queue_depth(),
        running: app.scheduler.running(),
        max_parallel: app.scheduler.max_parallel(),
        steps: batch.steps,
        step_seqs: batch.seqs,
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn chat(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    complete(app, body, true).await
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    complete(app, body, false).await
}

/// The outcome of a request whose client went away before its end.
const CLIENT_GONE: &str = "client gone: cancelled";

/// What one request did, logged (one line) and counted when it is dropped: after its answer,
/// or when its client went away first (hyper then drops the handler or the body stream).
struct RequestLog {
    app: Arc<App>,
    route: &'static str,
    arrived: Instant,
    /// The HTTP status answered; 499 (client closed the request) until one is.
    status: u16,
    stream: bool,
    prompt_tokens: u32,
    completion_tokens: u32,
    ttft: Option<f64>,
    outcome: String,
}

impl RequestLog {
    fn new(app: Arc<App>, route: &'static str) -> RequestLog {
        RequestLog {
            app,
            route,
            arrived: Instant::now(),
            status: 499,
            stream: false,
            prompt_tokens: 0,
            completion_tokens: 0,
            ttft: None,
            outcome: CLIENT_GONE.into(),
        }
    }

    fn error(&mut self, e: &ApiError) -> Response {
        self.status = e.status;
        self.outcome = format!("error: {}", e.message);
        json_response(e.status, &e.body())
    }

    fn first_piece(&mut self) {
        if self.ttft.is_none() {
            let t = self.arrived.elapsed().as_secs_f64();
            self.ttft = Some(t);
            self.app.metrics.ttft.observe(t);
        }
    }

    /// The generation's end: counts its tokens.
    fn done(&mut self, st: &GenerateStats) {
        let m = &self.app.metrics;
        m.prompt_tokens
            .fetch_add(st.prompt_tokens as u64, Ordering::Relaxed);
        m.generated_tokens
            .fetch_add(st.generated_tokens as u64, Ordering::Relaxed);
        if st.generated_tokens > 0 && st.generate_seconds > 0.0 {
            m.decode_rate
                .observe(st.generated_tokens as f64 / st.generate_seconds);
        }
        self.prompt_tokens = st.prompt_tokens;
        self.completion_tokens = st.generated_tokens;
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let m = &self.app.metrics;
        m.count_request(self.route, self.status);
        if self.outcome == CLIENT_GONE || self.outcome.contains("shutting down") {
            m.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        eprintln!(
            "llorch serve: POST {} {} stream={} prompt={} completion={} ttft={} time={:.3}s {}",
            self.route,
            self.status,
            self.stream,
            self.prompt_tokens,
            self.completion_tokens,
            self.ttft.map_or("-".into(), |t| format!("{t:.3}s")),
            self.arrived.elapsed().as_secs_f64(),
            self.outcome
        );
    }
}

/// A checked request, ready for the scheduler.
struct Prepared {
    job: Job,
    stream: bool,
    include_usage: bool,
}

/// Parse, render the chat template, tokenize and check the size (CPU work: off the runtime's
/// threads).
fn prepare(app: &App, body: &[u8], chat: bool) -> Result<Prepared, ApiError> {
    let model = &app.model;
    let req = openai::parse_request(body, chat, model.vocab_size())?;
    let (text, field) = match &req.prompt {
        Prompt::Chat(messages) => (
            model
                .apply_chat_template(messages, true, None)
                .map_err(|e| ApiError::field("messages", format!("chat template: {e}")))?,
            "messages",
        ),
        Prompt::Text(t) => (t.clone(), "prompt"),
    };
    // Special tokens written by the chat template (or a raw prompt) are tokens.
    let ids = model
        .tokenizer()
        .encode(&text, true, true)
        .map_err(|e| ApiError::field(field, e.to_string()))?;
    if ids.is_empty() {
        return Err(ApiError::field(field, format!("'{field}' is empty")));
    }
    if ids.len() >= app.n_ctx as usize {
        let mut e = ApiError::field(
            field,
            format!(
                "the prompt is {} tokens; the context holds {} tokens, the reply included",
                ids.len(),
                app.n_ctx
            ),
        );
        e.code = Some("context_length_exceeded");
        return Err(e);
    }
    let params = GenerateParams {
        // Chat goes on until the end of the turn or of the context, as OpenAI's does.
        max_tokens: req.max_tokens.unwrap_or(if chat { app.n_ctx } else { 16 }),
        sampling: req.sampling,
        constraint: None,
        stop: req.stop,
        parse_special: true,
        ..Default::default()
    };
    let seed = req.seed.unwrap_or_else(|| app.random_seed());
    Ok(Prepared {
        job: Job {
            prompt: ids,
            params,
            seed,
        },
        stream: req.stream,
        include_usage: req.include_usage,
    })
}

async fn complete(app: Arc<App>, body: Result<Bytes, BytesRejection>, chat: bool) -> Response {
    let route = if chat {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    let mut log = RequestLog::new(app.clone(), route);
    let body = match body {
        Ok(b) => b,
        Err(r) => return log.error(&ApiError::new(r.status().as_u16(), r.body_text())),
    };
    let prep_app = app.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(&prep_app, &body, chat)).await;
    let p = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return log.error(&e),
        Err(e) => return log.error(&ApiError::new(500, format!("internal error: {e}"))),
    };
    log.stream = p.stream;
    log.prompt_tokens = p.job.prompt.len() as u32;
    let meta = Meta {
        chat,
        id: format!(
            "{}-{}",
            if chat { "chatcmpl" } else { "cmpl" },
            app.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        created: super::unix_now(),
        model: app.model_id.clone(),
    };
    let ticket = app.scheduler.submit(p.job);
    if p.stream {
        log.status = 200;
        stream(ticket, meta, log, p.include_usage)
    } else {
        whole(ticket, meta, log).await
    }
}

/// The message of a generation that ended without a normal end.
fn abort_error(app: &App, e: Option<crate::Error>) -> ApiError {
    match e {
        None if app.shutting_down.load(Ordering::SeqCst) => ApiError::new(
            503,
            "the server is shutting down: the generation was cancelled",
        ),
        None => ApiError::new(500, "the generation was cancelled"),
        Some(e) => ApiError::new(500, format!("generation failed: {e}")),
    }
}

/// The non-streamed answer: wait for the whole text.
async fn whole(mut ticket: Ticket, meta: Meta, mut log: RequestLog) -> Response {
    let mut text = String::new();
    loop {
        match ticket.updates.recv().await {
            Some(Update::Piece(p)) => {
                log.first_piece();
                text.push_str(&p.text);
            }
            Some(Update::Done(st)) => {
                log.done(&st);
                let Some(finish) = openai::finish_reason(st.stop_reason) else {
                    let e = abort_error(&log.app, None);
                    return log.error(&e);
                };
                log.status = 200;
                log.outcome = format!("finish={finish}");
                let usage = openai::usage(st.prompt_tokens, st.generated_tokens);
                return json_response(200, &meta.response(&text, finish, usage));
            }
            Some(Update::Failed(e)) => {
                let e = abort_error(&log.app, Some(e));
                return log.error(&e);
            }
            None => {
                let e = abort_error(&log.app, None);
                return log.error(&e);
            }
        }
    }
}

/// One server-sent event.
fn sse(data: &str) -> String {
    format!("data: {data}\n\n")
}

/// Where a streamed answer stands.
struct Streaming {
    ticket: Ticket,
    meta: Meta,
    log: RequestLog,
    include_usage: bool,
    /// The role chunk was sent (chat).
    opened: bool,
    ended: bool,
}

impl Streaming {
    /// The next bytes of the event stream; None when it is over.
    async fn next(&mut self) -> Option<String> {
        if self.ended {
            return None;
        }
        let update = self.ticket.updates.recv().await;
        let mut out = String::new();
        match update {
            Some(Update::Piece(p)) => {
                self.log.first_piece();
                if self.meta.chat && !self.opened {
                    self.opened = true;
                    out += &sse(&self.meta.chunk(Some(""), true, None).to_string());
                }
                out += &sse(&self.meta.chunk(Some(&p.text), false, None).to_string());
                return Some(out);
            }
            Some(Update::Done(st)) => {
                self.ended = true;
                self.log.done(&st);
                let Some(finish) = openai::finish_reason(st.stop_reason) else {
                    return Some(self.error(None));
                };
                self.log.outcome = format!("finish={finish}");
                let role = self.meta.chat && !self.opened;
                out += &sse(&self.meta.chunk(None, role, Some(finish)).to_string());
                if self.include_usage {
                    let usage = openai::usage(st.prompt_tokens, st.generated_tokens);
                    out += &sse(&self.meta.usage_chunk(usage).to_string());
                }
                out += &sse("[DONE]");
            }
            Some(Update::Failed(e)) => {
                self.ended = true;
                return Some(self.error(Some(e)));
            }
            None => {
                self.ended = true;
                return Some(self.error(None));
            }
        }
        Some(out)
    }

    /// An error event ends a stream whose generation did not end normally (no `[DONE]`).
    fn error(&mut self, e: Option<crate::Error>) -> String {
        let e = abort_error(&self.log.app, e);
        self.log.outcome = format!("error: {}", e.message);
        sse(&e.body().to_string())
    }
}

/// The streamed answer: server-sent events, one chunk per piece, `data: [DONE]` at the end.
/// The client going away drops the stream, and with it the ticket: the generation stops.
fn stream(ticket: Ticket, meta: Meta, log: RequestLog, include_usage: bool) -> Response {
    let state = Streaming {
        ticket,
        meta,
        log,
        include_usage,
        opened: false,
        ended: false,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        let bytes = s.next().await?;
        Some((Ok::<_, Infallible>(bytes), s))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}
