//! Constrained output on a real model (SmolLM2-135M): every output generated under a JSON
//! Schema parses and validates against it, over 5 schemas x 10 seeds x 3 temperatures and
//! greedy; a grammar-constrained output matches its grammar; the C API takes a schema and a
//! grammar and names what is wrong with bad ones.
//!
//! The schemas bound every string, array and number, so each output has a bounded length
//! (under 600 bytes with the bounded whitespace): `MAX_TOKENS` tokens of at least one byte
//! each always complete it, so every generation must end with a complete value (stop reason
//! Eos), never at the token limit.
//!
//! The validator below is written for this test, independently of the schema compiler.

mod common;

use llorch::backend::{Context, ContextOptions};
use llorch::ffi::llorch_status::*;
use llorch::ffi::*;
use llorch::grammar::Constraint;
use llorch::model::Model;
use llorch::sampling::SamplingParams;
use llorch::session::{GenerateParams, StopReason};
use serde_json::Value;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::null_mut;
use std::sync::Arc;

const MAX_TOKENS: u32 = 640;

const SCHEMAS: &[(&str, &str)] = &[
    (
        "Describe a person as JSON with name, age, email and membership.",
        r#"{"type":"object","properties":{
            "name":{"type":"string","minLength":1,"maxLength":20},
            "age":{"type":"integer","minimum":0,"maximum":120},
            "email":{"type":"string","pattern":"^[a-z0-9._]{1,12}@[a-z]{1,10}\\.(com|org|net)$"},
            "is_member":{"type":"boolean"}},
          "required":["name","age","is_member"],"additionalProperties":false}"#,
    ),
    (
        "List one to four colours as a JSON array.",
        r#"{"type":"array","items":{"enum":["red","green","blue","black","white"]},
          "minItems":1,"maxItems":4}"#,
    ),
    (
        "Give a JSON record of a book: title, tags, rating and metadata.",
        r#"{"type":"object","properties":{
            "title":{"type":"string","maxLength":24},
            "tags":{"type":"array","items":{"type":"string","maxLength":8},"maxItems":3},
            "rating":{"type":"number"},
            "meta":{"type":["object","null"],"properties":{"draft":{"type":"boolean"}},
                    "required":["draft"],"additionalProperties":false}},
          "required":["title","rating","meta"],"additionalProperties":false}"#,
    ),
    (
        "Answer with JSON: what is 6 times 7?",
        r#"{"type":"object","properties":{
            "answer":{"anyOf":[{"type":"integer","minimum":-50,"maximum":50},
                               {"type":"string","maxLength":10},{"type":"null"}]},
            "confident":{"type":"boolean"}},
          "required":["answer"],"additionalProperties":false}"#,
    ),
    (
        "Plan an event as JSON: kind, day, hour and notes.",
        r##"{"$defs":{"day":{"enum":["mon","tue","wed","thu","fri","sat","sun"]}},
          "type":"object","properties":{
            "kind":{"const":"event"},
            "day":{"$ref":"#/$defs/day"},
            "hour":{"type":"integer","minimum":0,"maximum":23},
            "notes":{"type":"array","items":{"type":"string","maxLength":12},"maxItems":2}},
          "required":["kind","day","hour"],"additionalProperties":false}"##,
    ),
];

// ---------------------------------------------------------------------------------------------
// A JSON Schema validator for the keywords the schemas above use.

fn validate(v: &Value, s: &Value, root: &Value, path: &str) -> Result<(), String> {
    let fail = |why: String| Err(format!("{path}: {why} (value {v})"));
    let Some(s) = s.as_object() else {
        return Ok(()); // `true`
    };
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let target = root.pointer(&r[1..]).ok_or(format!("bad $ref {r}"))?;
        return validate(v, target, root, path);
    }
    if let Some(c) = s.get("const") {
        if v != c {
            return fail(format!("not the const {c}"));
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return fail("not in the enum".into());
        }
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        if !any.iter().any(|sub| validate(v, sub, root, path).is_ok()) {
            return fail("matches no anyOf branch".into());
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let is = |t: &str| match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        };
        if !types.iter().any(|t| is(t)) {
            return fail(format!("not of type {t}"));
        }
    }
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    if let Some(x) = v.as_f64() {
        if num("minimum").is_some_and(|m| x < m) || num("maximum").is_some_and(|m| x > m) {
            return fail("out of range".into());
        }
    }
    let count = |k: &str| s.get(k).and_then(Value::as_u64).map(|n| n as usize);
    if let Some(text) = v.as_str() {
        let n = text.chars().count();
        if count("minLength").is_some_and(|m| n < m) || count("maxLength").is_some_and(|m| n > m) {
            return fail(format!("{n} characters"));
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            if !fancy_regex::Regex::new(p).unwrap().is_match(text).unwrap() {
                return fail(format!("does not match the pattern {p}"));
            }
        }
    }
    if let Some(items) = v.as_array() {
        let n = items.len();
        if count("minItems").is_some_and(|m| n < m) || count("maxItems").is_some_and(|m| n > m) {
            return fail(format!("{n} items"));
        }
        if let Some(item) = s.get("items") {
            for (i, x) in items.iter().enumerate() {
                validate(x, item, root, &format!("{path}/{i}"))?;
            }
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(r.as_str().unwrap_or("")) {
                return fail(format!("missing required {r}"));
            }
        }
        for (k, x) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(x, ps, root, &format!("{path}/{k}"))?,
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return fail(format!("additional property {k}"));
                }
                None => {}
            }
        }
    }
    Ok(())
}

/// The validator itself must reject what it should (else the test below could not fail).
#[test]
fn validator_rejects_bad_values() {
    let schema: Value = serde_json::from_str(SCHEMAS[0].1).unwrap();
    for bad in [
        r#"{"name":"","age":3,"is_member":true}"#,
        r#"{"name":"a","age":121,"is_member":true}"#,
        r#"{"name":"a","age":1.5,"is_member":true}"#,
        r#"{"name":"a","is_member":true}"#,
        r#"{"name":"a","age":3,"is_member":true,"x":1}"#,
        r#"{"name":"a","age":3,"is_member":true,"email":"a@b.de"}"#,
    ] {
        let v: Value = serde_json::from_str(bad).unwrap();
        assert!(validate(&v, &schema, &schema, "").is_err(), "{bad}");
    }
    let good: Value = serde_json::from_str(r#"{"name":"Al","age":30,"is_member":false}"#).unwrap();
    validate(&good, &schema, &schema, "").unwrap();
}

// ---------------------------------------------------------------------------------------------

fn smollm2() -> Arc<Model> {
    common::cpu_model(common::SMOLLM2)
}

/// Generates under `c`; the text (joined pieces), the stop reason and the token count.
fn run(
    m: &Arc<Model>,
    prompt: &str,
    c: &Constraint,
    temp: f32,
    seed: u64,
) -> (String, StopReason, u32) {
    let mut s = common::session(m, 1024, seed);
    let p = GenerateParams {
        max_tokens: MAX_TOKENS,
        sampling: SamplingParams {
            temperature: temp,
            ..Default::default()
        },
        constraint: Some(c.clone()),
        ..Default::default()
    };
    let mut text = String::new();
    let st = s
        .generate(prompt, &p, &mut |t, _| {
            text.push_str(t);
            true
        })
        .unwrap();
    (text, st.stop_reason, st.generated_tokens)
}

#[test]
fn every_output_validates_against_its_schema() {
    let m = smollm2();
    let (mut runs, mut tokens) = (0, 0);
    for (k, (ask, schema)) in SCHEMAS.iter().enumerate() {
        let c = Constraint::json_schema(schema).unwrap();
        let sv: Value = serde_json::from_str(schema).unwrap();
        let prompt = common::user_turn(&m, ask);
        let mut cases = vec![(0.0f32, 0u64)];
        for temp in [0.7f32, 1.0, 1.5] {
            cases.extend((1..=10u64).map(|seed| (temp, seed)));
        }
        let mut distinct = std::collections::HashSet::new();
        for (temp, seed) in cases {
            let (text, stop, n) = run(&m, &prompt, &c, temp, seed);
            let what = format!("schema {k}, temperature {temp}, seed {seed}: {text:?}");
            assert_eq!(stop, StopReason::Eos, "did not complete: {what}");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {what}"));
            validate(&v, &sv, &sv, "").unwrap_or_else(|e| panic!("{e}: {what}"));
            assert!(c.matches(text.as_bytes()).unwrap(), "{what}");
            distinct.insert(text);
            runs += 1;
            tokens += n;
        }
        // Sampling still samples under the mask: the outputs vary.
        assert!(
            distinct.len() > 5,
            "schema {k}: only {} distinct outputs",
            distinct.len()
        );
    }
    eprintln!("{runs} constrained generations, {tokens} tokens, all valid");
}

#[test]
fn grammar_output_matches_and_stops_when_complete() {
    let m = smollm2();
    let c = Constraint::grammar(
        r#"root ::= "The answer is " num "." 
           num  ::= [1-9] [0-9]{0,2} | "zero""#,
    )
    .unwrap();
    let prompt = common::user_turn(&m, "What is 6 times 7?");
    for (temp, seed) in [(0.0, 0), (0.8, 1), (1.2, 2), (1.5, 3)] {
        let (text, stop, _) = run(&m, &prompt, &c, temp, seed);
        assert_eq!(stop, StopReason::Eos, "{text:?}");
        let num = text
            .strip_prefix("The answer is ")
            .and_then(|t| t.strip_suffix('.'))
            .unwrap_or_else(|| panic!("{text:?}"));
        assert!(
            num == "zero"
                || (num.len() <= 3
                    && num.parse::<u32>().is_ok_and(|n| n > 0)
                    && !num.starts_with('0')),
            "{text:?}"
        );
    }
}

/// A SentencePiece vocabulary (Gemma 3: `▁` for spaces, byte-fallback tokens) under a schema.
#[test]
fn sentencepiece_vocabulary_validates_too() {
    let ctx = Context::new(ContextOptions::default()).unwrap();
    let m = Model::load(&ctx, &common::model_path(common::GEMMA3), None).unwrap();
    let schema = SCHEMAS[0].1;
    let c = Constraint::json_schema(schema).unwrap();
    let sv: Value = serde_json::from_str(schema).unwrap();
    // This file has no chat template: a plain prompt.
    let prompt = "A club member's record as JSON:\n";
    for (temp, seed) in [(0.0, 0), (1.0, 1), (1.5, 2)] {
        let (text, stop, _) = run(&m, prompt, &c, temp, seed);
        let what = format!("temperature {temp}, seed {seed}: {text:?}");
        assert_eq!(stop, StopReason::Eos, "did not complete: {what}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {what}"));
        validate(&v, &sv, &sv, "").unwrap_or_else(|e| panic!("{e}: {what}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Through the C ABI.

unsafe fn message(err: *mut llorch_error) -> String {
    let m = CStr::from_ptr(llorch_error_message(err))
        .to_string_lossy()
        .into_owned();
    llorch_error_free(err);
    m
}

unsafe extern "C" fn collect(ud: *mut c_void, text: *const c_char, len: usize, _t: i32) -> bool {
    let out = &mut *(ud as *mut Vec<u8>);
    out.extend_from_slice(std::slice::from_raw_parts(text as *const u8, len));
    true
}

#[test]
fn c_api_schema_grammar_and_errors() {
    unsafe {
        let mut err = null_mut();
        let mut cp = std::mem::zeroed::<llorch_context_params>();
        llorch_context_params_init(&mut cp);
        let mut ctx = null_mut();
        assert_eq!(llorch_context_new(&cp, &mut ctx, &mut err), LLORCH_OK);
        let path = CString::new(common::model_path(common::SMOLLM2).to_str().unwrap()).unwrap();
        let mut model = null_mut();
        let st = llorch_model_load(ctx, path.as_ptr(), None, null_mut(), &mut model, &mut err);
        assert_eq!(st, LLORCH_OK);
        let mut session = null_mut();
        assert_eq!(
            llorch_session_new(model, std::ptr::null(), &mut session, &mut err),
            LLORCH_OK
        );
        let prompt = CString::new(common::user_turn(
            &Model::load(
                &Context::new(ContextOptions::default()).unwrap(),
                &common::model_path(common::SMOLLM2),
                None,
            )
            .unwrap(),
            "Describe a person as JSON.",
        ))
        .unwrap();

        let mut gp = std::mem::zeroed::<llorch_generate_params>();
        llorch_generate_params_init(&mut gp);
        assert!(
            gp.json_schema.is_null() && gp.grammar.is_null(),
            "defaults: no constraint"
        );
        gp.max_tokens = MAX_TOKENS;
        gp.temperature = 1.0;
        let schema = CString::new(SCHEMAS[0].1).unwrap();
        gp.json_schema = schema.as_ptr();
        let mut out: Vec<u8> = Vec::new();
        let mut stats = std::mem::zeroed::<llorch_generate_stats>();
        llorch_generate_stats_init(&mut stats);
        let st = llorch_session_generate(
            session,
            prompt.as_ptr(),
            &gp,
            Some(collect),
            &mut out as *mut Vec<u8> as *mut c_void,
            &mut stats,
            &mut err,
        );
        assert_eq!(st, LLORCH_OK, "{}", message(err));
        assert_eq!(
            stats.stop_reason,
            llorch_stop_reason::LLORCH_STOP_EOS as i32
        );
        let sv: Value = serde_json::from_str(SCHEMAS[0].1).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        validate(&v, &sv, &sv, "").unwrap();

        // A grammar, through the pull form.
        llorch_session_reset(session, &mut err);
        let grammar = CString::new(r#"root ::= "yes" | "no""#).unwrap();
        gp.json_schema = std::ptr::null();
        gp.grammar = grammar.as_ptr();
        assert_eq!(
            llorch_session_begin(session, prompt.as_ptr(), &gp, &mut err),
            LLORCH_OK
        );
        let mut text = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            let (mut len, mut done) = (0usize, false);
            let st = llorch_session_next(
                session,
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
                &mut len,
                null_mut(),
                &mut done,
                &mut err,
            );
            assert_eq!(st, LLORCH_OK);
            if done {
                break;
            }
            text.extend_from_slice(&buf[..len]);
        }
        assert!(
            text == b"yes" || text == b"no",
            "{:?}",
            String::from_utf8_lossy(&text)
        );

        // Bad input: a clear error, nothing generated, the session still usable.
        let cases: [(Option<&str>, Option<&str>, &str); 4] = [
            (
                Some(r#"{"type":"string","format":"email"}"#),
                None,
                "unsupported keyword 'format'",
            ),
            (Some("{\"type\":"), None, "not valid JSON"),
            (None, Some("root ::= \"a\" |\n  (\"b\""), "line 2 column 3"),
            (Some("{}"), Some("root ::= \"a\""), "both set"),
        ];
        for (schema, grammar, want) in cases {
            let s = schema.map(|s| CString::new(s).unwrap());
            let g = grammar.map(|g| CString::new(g).unwrap());
            gp.json_schema = s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
            gp.grammar = g.as_ref().map_or(std::ptr::null(), |g| g.as_ptr());
            let st = llorch_session_generate(
                session,
                prompt.as_ptr(),
                &gp,
                None,
                null_mut(),
                std::ptr::null_mut(),
                &mut err,
            );
            assert_eq!(st, LLORCH_ERR_INVALID_ARGUMENT);
            let m = message(err);
            assert!(m.contains(want), "{m} (wanted {want})");
        }
        let mut n_past = 0u32;
        llorch_session_context_usage(session, &mut n_past, null_mut(), &mut err);
        assert!(n_past > 0, "the earlier turn is still there");

        llorch_session_free(session);
        llorch_model_free(model);
        llorch_context_free(ctx);
    }
}
