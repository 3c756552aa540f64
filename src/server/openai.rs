//! The OpenAI request and response shapes: parsing and checking a request body (a 400 naming
//! the field for anything wrong), and the JSON of responses, stream chunks and errors.

use crate::sampling::SamplingParams;
use crate::session::StopReason;
use crate::tokenizer::chat::ChatMessage;
use serde_json::{json, Map, Value};

/// An error answered as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about the request field `param`.
    pub fn field(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            param: Some(param.to_string()),
            code: None,
        }
    }

    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn body(&self) -> Value {
        let kind = match self.status {
            400..=499 => "invalid_request_error",
            503 => "unavailable_error",
            _ => "server_error",
        };
        json!({"error": {
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// What to generate from.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// `/v1/chat/completions`: messages, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// `/v1/completions`: raw text.
    Text(String),
}

/// A checked completion request.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Prompt,
    /// None: until the context is full (chat), 16 (completions, as OpenAI's default).
    pub max_tokens: Option<u32>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
}

/// The most stop strings a request may give.
const MAX_STOP: usize = 16;

/// Parses the body of `/v1/chat/completions` (`chat`) or `/v1/completions`. `vocab` bounds
/// the token ids of `logit_bias`.
pub fn parse_request(body: &[u8], chat: bool, vocab: usize) -> Result<Request, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, format!("the body is not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(ApiError::new(400, "the body must be a JSON object"));
    };
    // Present and not null.
    let get = |k: &str| o.get(k).filter(|v| !v.is_null());
    if let Some(m) = get("model") {
        if !m.is_string() {
            return Err(ApiError::field("model", "'model' must be a string"));
        }
    }
    for (k, why) in [
        ("tools", "tool calls are not supported"),
        ("functions", "function calls are not supported"),
        ("suffix", "'suffix' is not supported"),
    ] {
        if get(k).is_some() {
            return Err(ApiError::field(k, why));
        }
    }
    for k in ["logprobs", "echo"] {
        match get(k) {
            None | Some(Value::Bool(false)) => {}
            Some(_) => return Err(ApiError::field(k, format!("'{k}' is not supported"))),
        }
    }
    for k in ["n", "best_of"] {
        if let Some(n) = get(k) {
            if n.as_u64() != Some(1) {
                return Err(ApiError::field(
                    k,
                    format!("'{k}' must be 1 (one choice per request), got {n}"),
                ));
            }
        }
    }
    if let Some(f) = get("response_format") {
        if f.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::field(
                "response_format",
                "only {\"type\": \"text\"} is supported",
            ));
        }
    }

    let prompt = if chat {
        Prompt::Chat(messages(get("messages"))?)
    } else {
        Prompt::Text(text_prompt(get("prompt"))?)
    };
    let max_tokens = match (get("max_completion_tokens"), get("max_tokens")) {
        (Some(v), _) => Some(positive_u32(v, "max_completion_tokens")?),
        (None, Some(v)) => Some(positive_u32(v, "max_tokens")?),
        (None, None) => None,
    };
    let mut sampling = SamplingParams {
        temperature: 1.0, // OpenAI's default
        ..SamplingParams::default()
    };
    if let Some(t) = get("temperature") {
        sampling.temperature = number_in(t, "temperature", 0.0, 2.0)?;
    }
    if let Some(p) = get("top_p") {
        sampling.top_p = number_in(p, "top_p", 0.0, 1.0)?;
        if sampling.top_p == 0.0 {
            return Err(ApiError::field("top_p", "'top_p' must be > 0"));
        }
    }
    if let Some(p) = get("presence_penalty") {
        sampling.presence_penalty = number_in(p, "presence_penalty", -2.0, 2.0)?;
    }
    if let Some(p) = get("frequency_penalty") {
        sampling.frequency_penalty = number_in(p, "frequency_penalty", -2.0, 2.0)?;
    }
    if let Some(b) = get("logit_bias") {
        sampling.logit_bias = logit_bias(b, vocab)?;
    }
    let seed = match get("seed") {
        None => None,
        // Any 64-bit integer; a negative one is taken bit for bit.
        Some(s) => Some(
            s.as_u64()
                .or_else(|| s.as_i64().map(|i| i as u64))
                .ok_or_else(|| ApiError::field("seed", "'seed' must be an integer"))?,
        ),
    };
    let stop = match get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::field("stop", "'stop' must be a string or strings"))?,
        Some(_) => {
            return Err(ApiError::field(
                "stop",
                "'stop' must be a string or strings",
            ))
        }
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::field(
            "stop",
            format!("at most {MAX_STOP} stop strings, got {}", stop.len()),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::field("stop", "stop strings must not be empty"));
    }
    let stream = match get("stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::field("stream", "'stream' must be a boolean")),
    };
    let include_usage = match get("stream_options") {
        None => false,
        Some(Value::Object(so)) => match so.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::field(
                    "stream_options",
                    "'stream_options.include_usage' must be a boolean",
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::field(
                "stream_options",
                "'stream_options' must be an object",
            ))
        }
    };
    Ok(Request {
        prompt,
        max_tokens,
        sampling,
        stop,
        seed,
        stream,
        include_usage,
    })
}

fn messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let bad = |m: String| ApiError::field("messages", m);
    let list = match v {
        None => return Err(bad("'messages' is required".into())),
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(_) => return Err(bad("'messages' must be a non-empty array".into())),
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("messages[{i}].role must be a string")))?;
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                // Content parts: only text parts, joined.
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(
                        |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                            _ => Err(bad(format!(
                                "messages[{i}].content: only text parts are supported"
                            ))),
                        },
                    )
                    .collect::<Result<Vec<_>, _>>()?
                    .concat(),
                _ => {
                    return Err(bad(format!(
                        "messages[{i}].content must be a string or text parts"
                    )))
                }
            };
            Ok(ChatMessage {
                role: role.to_string(),
                content,
            })
        })
        .collect()
}

fn text_prompt(v: Option<&Value>) -> Result<String, ApiError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().unwrap_or_default().to_string())
        }
        None => Err(ApiError::field("prompt", "'prompt' is required")),
        Some(_) => Err(ApiError::field(
            "prompt",
            "'prompt' must be a string (or an array of one string)",
        )),
    }
}

fn positive_u32(v: &Value, name: &str) -> Result<u32, ApiError> {
    v.as_u64()
        .filter(|&n| n >= 1)
        .map(|n| n.min(u32::MAX as u64) as u32)
        .ok_or_else(|| ApiError::field(name, format!("'{name}' must be an integer >= 1, got {v}")))
}

fn number_in(v: &Value, name: &str, lo: f64, hi: f64) -> Result<f32, ApiError> {
    v.as_f64()
        .filter(|x| (lo..=hi).contains(x))
        .map(|x| x as f32)
        .ok_or_else(|| {
            ApiError::field(
                name,
                format!("'{name}' must be a number in [{lo}, {hi}], got {v}"),
            )
        })
}

fn logit_bias(v: &Value, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let bad = |m: String| ApiError::field("logit_bias", m);
    let Value::Object(map) = v else {
        return Err(bad(
            "'logit_bias' must be an object of token id: bias".into()
        ));
    };
    map.iter()
        .map(|(k, b)| {
            let id: u32 = k
                .parse()
                .ok()
                .filter(|&id: &u32| (id as usize) < vocab)
                .ok_or_else(|| {
                    bad(format!(
                        "logit_bias key '{k}' is not a token id below the vocabulary size {vocab}"
                    ))
                })?;
            let bias = b
                .as_f64()
                .filter(|x| (-100.0..=100.0).contains(x))
                .ok_or_else(|| {
                    bad(format!(
                        "logit_bias['{k}'] must be a number in [-100, 100], got {b}"
                    ))
                })?;
            Ok((id, bias as f32))
        })
        .collect()
}

/// OpenAI's `finish_reason` of a stop reason (None: cancelled, no normal end).
pub fn finish_reason(r: StopReason) -> Option<&'static str> {
    match r {
        StopReason::Eos | StopReason::StopString => Some("stop"),
        StopReason::Limit | StopReason::ContextFull => Some("length"),
        StopReason::Cancelled => None,
    }
}

pub fn usage(prompt_tokens: u32, completion_tokens: u32) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens as u64 + completion_tokens as u64,
    })
}

/// The identity of one response: what every object and chunk of it repeats.
pub struct Meta {
    pub chat: bool,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        }
    }

    fn wrap(&self, chunk: bool, choices: Value) -> Map<String, Value> {
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id));
        o.insert("object".into(), json!(self.object(chunk)));
        o.insert("created".into(), json!(self.created));
        o.insert("model".into(), json!(self.model));
        o.insert("choices".into(), choices);
        o
    }

    /// The whole (non-streamed) response.
    pub fn response(&self, text: &str, finish: &str, usage: Value) -> Value {
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text},
                   "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
        };
        let mut o = self.wrap(false, json!([choice]));
        o.insert("usage".into(), usage);
        Value::Object(o)
    }

    /// A stream chunk carrying `text` (for chat, `role` opens the assistant's message), or
    /// the last one with the finish reason.
    pub fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let choice = if self.chat {
            let mut delta = Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null,
                   "finish_reason": finish})
        };
        Value::Object(self.wrap(true, json!([choice])))
    }

    /// The chunk after the last one when the client asked for the usage.
    pub fn usage_chunk(&self, usage: Value) -> Value {
        let mut o = self.wrap(true, json!([]));
        o.insert("usage".into(), usage);
        Value::Object(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str, chat: bool) -> ApiError {
        parse_request(body.as_bytes(), chat, 1000).unwrap_err()
    }

    #[test]
    fn good_requests_parse() {
        let r = parse_request(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "max_tokens":5,"temperature":0,"top_p":0.5,"seed":-1,"stop":"x",
                "logit_bias":{"7":-100},"stream":true,"stream_options":{"include_usage":true},
                "n":1,"user":"ignored"}"#,
            true,
            1000,
        )
        .unwrap();
        let Prompt::Chat(m) = &r.prompt else { panic!() };
        assert_eq!((m[0].content.as_str(), m[1].content.as_str()), ("hi", "ab"));
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.sampling.temperature, 0.0);
        assert_eq!(r.sampling.top_p, 0.5);
        assert_eq!(r.seed, Some(u64::MAX));
        assert_eq!(r.stop, ["x"]);
        assert_eq!(r.sampling.logit_bias, [(7, -100.0)]);
        assert!(r.stream && r.include_usage);
        let r = parse_request(br#"{"prompt":["once"]}"#, false, 1000).unwrap();
        assert!(matches!(r.prompt, Prompt::Text(ref t) if t == "once"));
        assert_eq!((r.max_tokens, r.sampling.temperature), (None, 1.0));
    }

    #[test]
    fn bad_requests_name_their_field() {
        for (body, chat, param) in [
            (r#"{"messages":[]}"#, true, "messages"),
            (r#"{"messages":[{"role":"user"}]}"#, true, "messages"),
            (r#"{"prompt":"x","temperature":3}"#, false, "temperature"),
            (
                r#"{"prompt":"x","temperature":"hot"}"#,
                false,
                "temperature",
            ),
            (r#"{"prompt":"x","top_p":0}"#, false, "top_p"),
            (r#"{"prompt":"x","max_tokens":0}"#, false, "max_tokens"),
            (r#"{"prompt":"x","max_tokens":-3}"#, false, "max_tokens"),
            (
                r#"{"prompt":"x","logit_bias":{"1000":1}}"#,
                false,
                "logit_bias",
            ),
            (
                r#"{"prompt":"x","logit_bias":{"5":101}}"#,
                false,
                "logit_bias",
            ),
            (r#"{"prompt":"x","stop":[""]}"#, false, "stop"),
            (r#"{"prompt":"x","stop":7}"#, false, "stop"),
            (r#"{"prompt":"x","n":2}"#, false, "n"),
            (r#"{"prompt":"x","seed":1.5}"#, false, "seed"),
            (r#"{"prompt":"x","stream":"yes"}"#, false, "stream"),
            (r#"{"prompt":"x","model":5}"#, false, "model"),
            (r#"{"prompt":5}"#, false, "prompt"),
            (r#"{}"#, false, "prompt"),
        ] {
            let e = err(body, chat);
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{body}");
            assert!(e.message.contains(param), "{body}: {}", e.message);
        }
        let e = err("{not json", true);
        assert_eq!((e.status, e.param), (400, None));
        assert!(e.message.contains("JSON"));
    }
}
