//! Chat templates: the model's Jinja template rendered with minijinja, set up the way Hugging
//! Face renders them (`trim_blocks`, `lstrip_blocks`, `raise_exception`, `strftime_now`,
//! Python-style `tojson` and string methods). Sandboxed: no loader, so a template can reach no
//! file and no network.
//!
//! A template is code from the file (or the caller), so it renders within limits
//! (`chat/limits.rs`): instructions (minijinja's fuel), the size of every string and list it
//! builds, nesting depth, the work it does and the time it takes. The compiled template is guarded
//! (`chat/guard.rs`), filters that can outgrow their input are bounded (`chat/bounded.rs`,
//! `chat/json.rs`), and it runs on a thread of our own with a stack we choose, so a caller's
//! small stack is no concern. A template over a limit is a clean error naming the limit.

mod bounded;
mod compile;
mod guard;
mod json;
pub mod limits;

use crate::{Error, Result};
use limits::Budget;
use minijinja::machinery::{self, CodeGenerator, Vm, WhitespaceConfig};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use std::sync::{mpsc, Arc, OnceLock};

/// How long past the time limit the caller waits for the thread to report it.
const BACKSTOP_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// Whose template it is, which decides whose fault a failure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateOrigin {
    /// The model's own (`tokenizer.chat_template`): a faulty one is `Error::BadModel`.
    Model,
    /// Passed by the caller: a faulty one is `Error::InvalidArgument`.
    Caller,
}

impl TemplateOrigin {
    fn error(self, msg: String) -> Error {
        match self {
            TemplateOrigin::Model => Error::BadModel(format!("the model's {msg}")),
            TemplateOrigin::Caller => Error::InvalidArgument(msg),
        }
    }
}

/// One chat message for template rendering.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Render the model's `template` over `messages`. `bos_token`/`eos_token` are the texts
/// templates may reference.
pub fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    render_from(
        TemplateOrigin::Model,
        template,
        messages,
        add_generation_prompt,
        bos_token,
        eos_token,
    )
}

/// Render `template` (from `origin`) over `messages`, on a thread of its own.
pub fn render_from(
    origin: TemplateOrigin,
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    if template.len() > limits::TEMPLATE_BYTES {
        return Err(origin.error(format!(
            "chat template is {} bytes: template size limit exceeded ({})",
            template.len(),
            limits::mib(limits::TEMPLATE_BYTES as u64)
        )));
    }
    let job = Job {
        template: template.to_string(),
        messages: messages.to_vec(),
        add_generation_prompt,
        bos_token: bos_token.to_string(),
        eos_token: eos_token.to_string(),
    };
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("llorch-chat-template".into())
        .stack_size(limits::STACK_BYTES)
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run()))
                .unwrap_or_else(|p| Err(Failure::Panic(panic_text(p.as_ref()))));
            let _ = tx.send(outcome);
        })
        .map_err(|e| Error::Internal(format!("cannot start the chat template thread: {e}")))?;
    // The budget reads the clock at every guard; this wait is the backstop should a single
    // step of minijinja outlast it (the thread is then left to finish on its own).
    match rx.recv_timeout(limits::TIME + BACKSTOP_GRACE) {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(Failure::Parse(m))) => {
            Err(origin.error(format!("chat template does not parse: {m}")))
        }
        Ok(Err(Failure::Limit(m))) => Err(origin.error(format!("chat template stopped: {m}"))),
        Ok(Err(Failure::Raised(m))) => Err(Error::InvalidArgument(format!(
            "the chat template rejected the messages: {m}"
        ))),
        Ok(Err(Failure::Failed(m))) => Err(origin.error(format!("chat template failed: {m}"))),
        Ok(Err(Failure::Panic(m))) => Err(Error::Internal(format!(
            "chat template renderer panicked: {m}"
        ))),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(origin.error(format!(
            "chat template stopped: time limit exceeded: rendering took over {:?}",
            limits::TIME + BACKSTOP_GRACE
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::Internal(
            "the chat template thread ended without an answer".into(),
        )),
    }
}

/// Why a render failed, before it is told whose fault it is.
enum Failure {
    Parse(String),
    Limit(String),
    /// The template's own `raise_exception(...)`.
    Raised(String),
    Failed(String),
    Panic(String),
}

/// What the rendering thread owns.
struct Job {
    template: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    bos_token: String,
    eos_token: String,
}

impl Job {
    fn run(&self) -> std::result::Result<String, Failure> {
        let budget = Arc::new(Budget::starting_now());
        let raised = Arc::new(OnceLock::<String>::new());
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_fuel(Some(limits::FUEL));
        let r = raised.clone();
        env.add_function(
            "raise_exception",
            move |msg: String| -> std::result::Result<Value, minijinja::Error> {
                let _ = r.set(msg.clone());
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        guard::install(&mut env, &budget);
        bounded::install(&mut env, &budget);
        json::install(&mut env, &budget);
        // Parsed and compiled here rather than by `add_template`, to bound nesting and constant
        // folding first and to guard the instructions after.
        let ws = WhitespaceConfig {
            keep_trailing_newline: false,
            lstrip_blocks: true,
            trim_blocks: true,
        };
        compile::check_source(&self.template, ws).map_err(Failure::Limit)?;
        let ast = machinery::parse(&self.template, "chat", SyntaxConfig, ws)
            .map_err(|e| Failure::Parse(describe(&e)))?;
        compile::check_tree(&ast).map_err(|r| match r {
            compile::Refused::Limit(m) => Failure::Limit(m),
            compile::Refused::Unsupported(m) => Failure::Parse(m),
        })?;
        let mut codegen = CodeGenerator::new("chat", &self.template);
        codegen.compile_stmt(&ast);
        let (code, blocks) = codegen.finish();
        let code = guard::rewrite(&code);
        let blocks = blocks
            .iter()
            .map(|(name, block)| (*name, guard::rewrite(block)))
            .collect();
        let root = Value::from_serialize(minijinja::context! {
            messages => Value::from_serialize(&self.messages),
            add_generation_prompt => self.add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        });
        let mut text = String::new();
        let result = Vm::new(&env)
            .eval(
                &code,
                root,
                &blocks,
                &mut machinery::make_string_output(&mut text),
                AutoEscape::None,
            )
            .map(|_| ());
        if let Some(limit) = budget.tripped() {
            return Err(Failure::Limit(limit));
        }
        if let Err(e) = result {
            return Err(match e.kind() {
                ErrorKind::OutOfFuel => Failure::Limit(format!(
                    "fuel limit exceeded: more than {} instructions",
                    limits::FUEL
                )),
                _ if e.to_string().contains("recursion limit exceeded") => Failure::Limit(format!(
                    "recursion limit exceeded: macro calls or loops nested too deep ({})",
                    describe(&e)
                )),
                _ => match raised.get() {
                    Some(m) => Failure::Raised(m.clone()),
                    None => Failure::Failed(describe(&e)),
                },
            });
        }
        if text.len() as u64 > limits::OUTPUT_BYTES {
            return Err(Failure::Limit(format!(
                "output limit exceeded: {} bytes, over {}",
                text.len(),
                limits::mib(limits::OUTPUT_BYTES)
            )));
        }
        Ok(text)
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// The error with its cause chain and template line.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('need a system message') }}{% endif %}";
        let e = render(t, &[msg("user", "hi")], true, "", "").unwrap_err();
        assert!(e.to_string().contains("need a system message"), "{e}");
    }

    #[test]
    fn tojson_is_python_style() {
        let t =
            "{{ messages[0] | tojson }}|{{ messages | length }}|{{ messages[0].content.strip() }}";
        let out = render(t, &[msg("user", " <a> ")], false, "", "").unwrap();
        assert_eq!(out, r#"{"role": "user", "content": " <a> "}|1|<a>"#);
    }

    #[test]
    fn no_file_access() {
        let e = render("{% include 'x.txt' %}", &[], false, "", "").unwrap_err();
        assert!(e.to_string().contains("chat template"), "{e}");
    }
}
