//! Hostile chat templates (issue 14, item 5): each ends in a clean error naming the limit it
//! passed, within a second, through the Rust API, the C API (from a thread with a 256 KiB stack)
//! and the CLI; the caller's template is `InvalidArgument`, the model's `BadModel`. Real
//! templates stay far below every limit.

mod common;

use common::*;
use llorch::ffi::llorch_status::*;
use llorch::ffi::*;
use llorch::gguf::Gguf;
use llorch::model::synth::build;
use llorch::tokenizer::chat::{self, ChatMessage, TemplateOrigin};
use llorch::Error;
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

/// Every hostile template must end this fast (issue 14: "within a second").
const SECOND: Duration = Duration::from_secs(1);

/// (what, template, the limit its error must name). Each reproduces an abort, stack overflow,
/// panic or endless loop of the renderer before the limits.
const HOSTILE: &[(&str, &str, &str)] = &[
    (
        "indent by a trillion",
        "{{ 'a\\nb'|indent(1000000000000) }}",
        "size",
    ),
    (
        "indent by 2^64-1 (a panic before)",
        "{{ 'a\\nb'|indent(18446744073709551615) }}",
        "size",
    ),
    (
        "indent width by keyword",
        "{{ 'a\\nb'|indent(width=1000000000000) }}",
        "size",
    ),
    (
        "batch of a trillion",
        "{{ [1, 2, 3]|batch(1000000000000) }}",
        "size",
    ),
    (
        "batch filled to a trillion",
        "{{ [1, 2, 3]|batch(1000000000000, 'x') }}",
        "size",
    ),
    (
        "slice into a trillion",
        "{{ [1, 2, 3]|slice(1000000000000) }}",
        "size",
    ),
    (
        "printf width",
        "{{ '%1000000000000s'|format('x') }}",
        "size",
    ),
    (
        "printf precision",
        "{{ '%.1000000000f'|format(1.5) }}",
        "size",
    ),
    (
        "str.format width",
        "{{ '{:>1000000000000}'.format('x') }}",
        "size",
    ),
    (
        "a string doubled 40 times with +",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
        "size",
    ),
    (
        "a string doubled 40 times with ~",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        "size",
    ),
    (
        "a string doubled 40 times by a recursive macro",
        "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}{{ d('ab', 40) }}",
        // Each call pays for its string argument: the work runs out at 4 MB, before the size.
        "work",
    ),
    (
        "a 100M-character string printed 100 times",
        "{% set s = 'a' * 100000000 %}{% for i in range(100) %}{{ s }}{% endfor %}",
        "size",
    ),
    (
        "an 8M-character string built at run time, printed 100 times",
        "{% set s = 'a' * (8000000 * messages|length) %}{% for i in range(100) %}{{ s }}{% endfor %}",
        "output",
    ),
    (
        "a million messages",
        "{{ messages * 1000000 }}",
        "size",
    ),
    (
        "range(100000)|list * 100000",
        "{{ range(100000)|list * 100000 }}",
        "size",
    ),
    (
        "a list nested 100k deep, printed",
        "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}",
        "depth",
    ),
    (
        "a list nested 100k deep, tojson'd",
        "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l|tojson }}",
        "depth",
    ),
    (
        "namespaces chained 100k deep",
        "{% set ns = namespace(cur=namespace()) %}{% for i in range(100000) %}{% set n = namespace() %}{% set n.x = ns.cur %}{% set ns.cur = n %}{% endfor %}{{ ns.cur|length }}",
        "depth",
    ),
    (
        "a namespace holding itself, printed",
        "{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}",
        "depth",
    ),
    (
        "a recursive macro",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "recursion",
    ),
    (
        "a recursive loop",
        "{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}",
        "recursion",
    ),
    (
        "two nested range(100000) loops",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "fuel",
    ),
    (
        "replace every character boundary by a megabyte",
        "{{ ('a' * 1000000)|replace('', 'b' * 1000000) }}",
        "size",
    ),
    (
        "join with a 100 KB separator",
        "{{ range(100000)|join('x' * 100000) }}",
        "size",
    ),
    (
        "two 8 MB constants joined while compiling",
        "{{ ('a' * 8000000) ~ ('a' * 8000000) }}",
        "size",
    ),
    (
        "a list shared a million times over, compared with itself",
        "{% set l = [1] * 1000 %}{% set m = [l] * 1000 %}{% set n = [m] * 1000 %}{{ n == n }}",
        "work",
    ),
    (
        "a list shared a million times over, tojson'd",
        "{% set l = [1] * 1000 %}{% set m = [l] * 1000 %}{% set n = [m] * 1000 %}{{ n|tojson }}",
        "work",
    ),
    (
        "strip with a 4M-character set (quadratic)",
        "{{ ('a' * 4000000).strip('b' * 4000000 ~ 'a') }}",
        "work",
    ),
    (
        "tojson indented by a trillion",
        "{{ [[1]]|tojson(indent=1000000000000) }}",
        "size",
    ),
    (
        "select over the characters of a 6 MB string",
        "{{ ('ab' * 3000000)|select('odd')|list|length }}",
        "work",
    ),
    (
        "splitting a 6 MB string at every character",
        "{{ ('ab' * 3000000).split('')|length }}",
        "work",
    ),
    (
        "title-casing an 8 MB string",
        "{{ ('ab c' * 2000000).title()|length }}",
        "work",
    ),
    (
        "strftime_now with a 12 MB format",
        "{{ strftime_now('%A' * 4000000)|length }}",
        "size",
    ),
    (
        "HTML-escaping 8M ampersands",
        "{% autoescape true %}{{ '&' * 8000000 }}{% endautoescape %}",
        "output",
    ),
    (
        "raw text captured 100k times",
        "{% set x %}{% for i in range(100000) %}0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789{% endfor %}{% endset %}{{ x|length }}",
        "output",
    ),
];

fn messages() -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: "user".into(),
        content: "hi".into(),
    }]
}

/// Render `template` as the caller's: the error, and how long it took.
fn render_caller(template: &str) -> (Result<String, Error>, Duration) {
    let t0 = Instant::now();
    let r = chat::render_from(
        TemplateOrigin::Caller,
        template,
        &messages(),
        true,
        "<s>",
        "</s>",
    );
    (r, t0.elapsed())
}

/// Whether `msg` names `limit` as the one exceeded. The wall-clock limit is the backstop of
/// every other: on a loaded machine the heavy templates can reach it before their work or
/// size limit, and that is the same clean, named, bounded stop.
fn names_limit(msg: &str, limit: &str) -> bool {
    msg.contains(&format!("{limit} limit exceeded")) || msg.contains("time limit exceeded")
}

#[test]
fn hostile_templates_end_in_a_clean_error_naming_the_limit() {
    let mut failures = Vec::new();
    for (what, template, limit) in HOSTILE {
        let (r, took) = render_caller(template);
        match r {
            Err(Error::InvalidArgument(m)) if names_limit(&m, limit) && took < SECOND => {}
            other => failures.push(format!("{what}: {other:?} after {took:?}, want {limit:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_models_own_template_is_a_bad_model() {
    let model_err = |t: &str| chat::render(t, &messages(), true, "", "").unwrap_err();
    let e = model_err("{{ 'a\\nb'|indent(1000000000000) }}");
    assert!(
        matches!(&e, Error::BadModel(m) if m.contains("size limit exceeded")),
        "{e:?}"
    );
    // A template that does not parse is the model's fault too; one that rejects the messages
    // (`raise_exception`) is the caller's.
    let e = model_err("{% if %}");
    assert!(
        matches!(&e, Error::BadModel(m) if m.contains("does not parse")),
        "{e:?}"
    );
    let e = model_err("{{ raise_exception('no system message') }}");
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("no system message")),
        "{e:?}"
    );
}

#[test]
fn oversized_and_overnested_sources_are_refused_before_parsing() {
    let long_chain = format!("{{{{ {} }}}}", vec!["1"; 200_000].join("+"));
    let (r, took) = render_caller(&long_chain);
    assert!(
        matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("expression limit exceeded")),
        "{r:?}"
    );
    assert!(took < SECOND, "{took:?}");
    for chain in [".a", "|e", "[0]", "()"] {
        let t = format!("{{{{ x{} }}}}", chain.repeat(200_000));
        let (r, _) = render_caller(&t);
        assert!(
            matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("expression limit exceeded")),
            "{chain}: {r:?}"
        );
    }
    // Just under the limit a chain still renders.
    let ok = format!("{{{{ {} }}}}", vec!["1"; 1000].join("+"));
    assert_eq!(render_caller(&ok).0.unwrap(), "1000");
    let (r, _) = render_caller(&"x".repeat(2 << 20));
    assert!(
        matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("template size limit exceeded")),
        "{r:?}"
    );
}

/// Templates minijinja 2.24 panicked on (found by the fuzz job), and plain failures: each a
/// clean `InvalidArgument`, never an internal error.
#[test]
fn panics_and_failures_are_plain_errors() {
    let cases = [
        // `continue`/`break` in a `with` block in a loop panicked (a frame left on the stack).
        (
            "{% for m in range(2) %}{% with y = 1 %}{% continue %}{% endwith %}{% endfor %}",
            "does not parse",
        ),
        // ... and in a `set` block silently lost the rest of the text; in a loop's `else` it
        // looped until the fuel ran out.
        (
            "{% for m in [1, 2] %}{% set y %}{% break %}{% endset %}{% endfor %}",
            "does not parse",
        ),
        (
            "{% for m in [] %}{% else %}{% break %}{% endfor %}",
            "does not parse",
        ),
        // Sorting two error values (`chain` over numbers makes them) panicked.
        ("{{ (3 | chain(1)) | unique }}", "invalid value"),
        // No `center` in minijinja's Python methods; overflow is minijinja's own error.
        ("{{ 'x'.center(1000000000000) }}", "chat template failed"),
        ("{{ 2 ** 100000 }}", "chat template failed"),
        ("{{ 'a' * -1 }}", "chat template failed"),
    ];
    for (t, want) in cases {
        let (r, took) = render_caller(t);
        assert!(
            matches!(&r, Err(Error::InvalidArgument(m)) if m.contains(want)),
            "{t}: {r:?}"
        );
        assert!(took < SECOND, "{t}: {took:?}");
    }
}

#[test]
fn bounded_filters_keep_their_meaning() {
    let cases = [
        ("{{ 'a\\nb'|indent(2) }}", "a\n  b"),
        ("{{ 'a\\nb'|indent(width=2, first=true) }}", "  a\n  b"),
        ("{{ [1, 2, 3]|batch(2, 0)|list }}", "[[1, 2], [3, 0]]"),
        ("{{ [1, 2, 3]|slice(2)|list }}", "[[1, 2], [3]]"),
        ("{{ '%-4s|%.2f'|format('ab', 1.5) }}", "ab  |1.50"),
        ("{{ '{:>4}|{}'.format('ab', 1) }}", "  ab|1"),
        ("{{ 'abc'|replace('b', 'xy') }}", "axyc"),
        ("{{ 'a-b'.replace('-', '+') }}", "a+b"),
        ("{{ [1, 2]|join(', ') }}", "1, 2"),
        ("{{ ', '.join(['a', 'b']) }}", "a, b"),
        ("{{ '  x  '|trim }}|{{ 'xxaxx'.strip('x') }}", "x|a"),
        (
            "{{ 'a b  c'.split()|length }}{{ 'a,b'|split(',')|last }}{{ 'x\\ny'|lines|first }}",
            "3bx",
        ),
        ("{{ strftime_now('%Y')|length }}", "4"),
        // minijinja-contrib 2.24 looped forever here.
        ("{{ 'abc'.count('') }}|{{ 'abcb'.count('b') }}", "4|2"),
        ("{{ {'a': [1, {'b': none}]}|tojson(indent=2) }}", "{\n  \"a\": [\n    1,\n    {\n      \"b\": null\n    }\n  ]\n}"),
        ("{{ [1, 'é']|tojson }}", "[1, \"é\"]"),
        ("{{ '-' * 3 }}{{ [1] * 2 }}{{ 'a' + 'b' }}{{ 1 ~ 2 }}", "---[1, 1]ab12"),
        ("{% set ns = namespace(s='') %}{% for m in messages %}{% set ns.s = ns.s + m.content %}{% endfor %}{{ ns.s }}", "hi"),
        ("{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m('a') }}", "<a>"),
        ("{% macro w() %}[{{ caller() }}]{% endmacro %}{% call w() %}b{% endcall %}", "[b]"),
        ("{% set x %}raw {{ 1 }}{% endset %}{{ x }}", "raw 1"),
        ("{% for a, b in [[1, 2]] %}{{ a }}{{ b }}{% endfor %}", "12"),
        ("{{ [3, 1, 2]|sort|list }}{{ messages|length }}{{ messages[0].role }}", "[1, 2, 3]1user"),
        ("{% if 'h' in messages[0].content and messages[0] is mapping %}y{% endif %}", "y"),
    ];
    for (t, want) in cases {
        let (r, _) = render_caller(t);
        assert_eq!(
            r.as_deref().unwrap_or_else(|e| panic!("{t}: {e}")),
            want,
            "{t}"
        );
    }
}

/// The real templates of the golden models over 10,000 messages: far below every limit.
#[test]
fn real_templates_render_long_conversations() {
    for model in [QWEN_05B, SMOLLM2] {
        let g = Gguf::open(&model_path(model)).unwrap();
        let template = g.get_str("tokenizer.chat_template").unwrap().unwrap();
        let msgs: Vec<ChatMessage> = (0..10_000)
            .map(|i| ChatMessage {
                role: if i % 2 == 0 { "user" } else { "assistant" }.into(),
                content: format!("message {i}: {}", "some words ".repeat(10)),
            })
            .collect();
        let t0 = Instant::now();
        let out = chat::render(template, &msgs, true, "", "").unwrap();
        assert!(t0.elapsed() < SECOND, "{model}: {:?}", t0.elapsed());
        assert!(out.contains("message 0: ") && out.contains("message 9999: "));
        assert!(out.len() > msgs.len() * 110, "{model}: {} bytes", out.len());
    }
}

/// A small synthetic model whose own chat template is `template`.
fn model_with_template(template: &str) -> PathBuf {
    let mut w = build(&tiny_synth_spec(64), 3).unwrap();
    w.add_str("tokenizer.chat_template", template);
    let path = std::env::temp_dir().join(format!(
        "llorch-chat-limits-{}-{}.gguf",
        std::process::id(),
        template.len()
    ));
    w.write_file(&path).unwrap();
    path
}

/// `llorch_model_apply_chat_template` on `model`: the status, the message and how long it took.
unsafe fn apply(
    model: *const llorch_model,
    template: Option<&CStr>,
) -> (llorch_status, String, Duration) {
    let (role, content) = (CString::new("user").unwrap(), CString::new("hi").unwrap());
    let msgs = [llorch_chat_message {
        role: role.as_ptr(),
        content: content.as_ptr(),
    }];
    let (mut out, mut err) = (null_mut(), null_mut());
    let t0 = Instant::now();
    let status = llorch_model_apply_chat_template(
        model,
        msgs.as_ptr(),
        1,
        true,
        template.map_or(null(), CStr::as_ptr),
        &mut out,
        &mut err,
    );
    let took = t0.elapsed();
    let msg = CStr::from_ptr(llorch_error_message(err))
        .to_string_lossy()
        .into_owned();
    llorch_error_free(err);
    llorch_string_free(out);
    (status, msg, took)
}

/// Through the C API, on a thread with a 256 KiB stack (minijinja's recursion alone needs more:
/// the renderer has a thread of its own): the model's hostile template is `BAD_MODEL`, the
/// caller's `INVALID_ARGUMENT`, each naming its limit within a second.
#[test]
fn c_api_on_a_small_stack() {
    let recursive = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
    let path = model_with_template(recursive);
    let failures = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || unsafe {
            let mut failures = Vec::new();
            let (mut ctx, mut model, mut err) = (null_mut(), null_mut(), null_mut());
            assert_eq!(llorch_context_new(null(), &mut ctx, &mut err), LLORCH_OK);
            let p = CString::new(path.to_str().unwrap()).unwrap();
            let status = llorch_model_load(ctx, p.as_ptr(), None, null_mut(), &mut model, &mut err);
            assert_eq!(status, LLORCH_OK);
            let (status, msg, took) = apply(model, None);
            if status != LLORCH_ERR_BAD_MODEL
                || !msg.contains("recursion limit exceeded")
                || took >= SECOND
            {
                failures.push(format!("model's template: {status:?} {msg:?} {took:?}"));
            }
            for (what, template, limit) in HOSTILE {
                let t = CString::new(*template).unwrap();
                let (status, msg, took) = apply(model, Some(&t));
                if status != LLORCH_ERR_INVALID_ARGUMENT
                    || !names_limit(&msg, limit)
                    || took >= SECOND
                {
                    failures.push(format!("{what}: {status:?} {msg:?} {took:?}"));
                }
            }
            llorch_model_free(model);
            llorch_context_free(ctx);
            let _ = std::fs::remove_file(&path);
            failures
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `llorch chat-template`: the model's hostile template and a hostile `--template FILE` end in
/// an error naming the limit, within a second of a normal render's time.
#[test]
fn cli_refuses_hostile_templates() {
    let model = model_with_template(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    );
    let m = model.to_str().unwrap();
    let run = |args: &[&str]| {
        let t0 = Instant::now();
        let (ok, _, err) = llorch(args, br#"[{"role": "user", "content": "hi"}]"#);
        (ok, err, t0.elapsed())
    };
    let good = std::env::temp_dir().join(format!("llorch-good-{}.j2", std::process::id()));
    std::fs::write(&good, "{{ messages[0].content }}").unwrap();
    let (ok, err, baseline) = run(&[
        "chat-template",
        "-m",
        m,
        "--template",
        good.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");

    let (ok, err, took) = run(&["chat-template", "-m", m]);
    assert!(
        !ok && err.contains("bad model") && err.contains("fuel limit exceeded"),
        "{err}"
    );
    assert!(
        took < baseline + SECOND,
        "{took:?} (a normal render: {baseline:?})"
    );

    let hostile = std::env::temp_dir().join(format!("llorch-hostile-{}.j2", std::process::id()));
    std::fs::write(&hostile, "{{ 'a\\nb'|indent(18446744073709551615) }}").unwrap();
    let (ok, err, took) = run(&[
        "chat-template",
        "-m",
        m,
        "--template",
        hostile.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("invalid argument") && err.contains("size limit exceeded"),
        "{err}"
    );
    assert!(
        took < baseline + SECOND,
        "{took:?} (a normal render: {baseline:?})"
    );
    for p in [&model, &good, &hostile] {
        let _ = std::fs::remove_file(p);
    }
}
