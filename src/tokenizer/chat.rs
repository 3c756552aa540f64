//! Chat templates: the model's Jinja template rendered with minijinja, set up the way Hugging
//! Face renders them (`trim_blocks`, `lstrip_blocks`, `raise_exception`, Python-style `tojson`
//! and string methods). Sandboxed: no loader, so a template can reach no file and no network.

use crate::{Error, Result};
use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};

/// One chat message for template rendering.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Render `template` over `messages`. `bos_token`/`eos_token` are the texts templates may
/// reference.
pub fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_filter("tojson", tojson);
    env.add_template("chat", template).map_err(|e| {
        Error::InvalidArgument(format!("chat template does not parse: {}", describe(&e)))
    })?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| Error::Internal(format!("chat template: {e}")))?;
    let ctx = minijinja::context! {
        messages => Value::from_serialize(messages),
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    tmpl.render(ctx)
        .map_err(|e| Error::InvalidArgument(format!("chat template failed: {}", describe(&e))))
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

/// `tojson` as Python's `json.dumps(x, ensure_ascii=False, indent=indent)`, which the templates
/// were written against: `", "` and `": "` separators, no HTML escaping.
fn tojson(v: Value, indent: Option<usize>) -> std::result::Result<Value, minijinja::Error> {
    let mut out = String::new();
    write_json(&v, indent, 0, &mut out)?;
    Ok(Value::from(out))
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            out.push_str(&serde_json::to_string(s).unwrap_or_default());
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_json(it, indent, depth + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                let ks = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| k.to_string());
                out.push_str(&serde_json::to_string(&ks).unwrap_or_default());
                out.push_str(": ");
                write_json(&v.get_item(k)?, indent, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {} value", v.kind()),
            ))
        }
    }
    Ok(())
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
