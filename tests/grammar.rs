//! The grammar engine without a model: the EBNF front end, the JSON Schema compiler and the
//! matcher, on texts that must and must not match, and the errors of bad grammars and schemas.

use llorch::grammar::Constraint;

fn g(text: &str) -> Constraint {
    Constraint::grammar(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn s(schema: &str) -> Constraint {
    Constraint::json_schema(schema).unwrap_or_else(|e| panic!("{schema}: {e}"))
}

fn yes(c: &Constraint, texts: &[&str]) {
    for t in texts {
        assert!(c.matches(t.as_bytes()).unwrap(), "should match: {t:?}");
    }
}

fn no(c: &Constraint, texts: &[&str]) {
    for t in texts {
        assert!(!c.matches(t.as_bytes()).unwrap(), "should not match: {t:?}");
    }
}

fn grammar_err(text: &str) -> String {
    match Constraint::grammar(text) {
        Ok(_) => panic!("grammar accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

fn schema_err(schema: &str) -> String {
    match Constraint::json_schema(schema) {
        Ok(_) => panic!("schema accepted: {schema}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn ebnf_operators() {
    let c = g(r#"root ::= "a" ("b" | "cd")* "e"? [x-z]+ "#);
    yes(&c, &["ax", "abcdbxyz", "aezz", "acdcdey"]);
    no(&c, &["", "a", "abe", "axa", "ac", "aeex"]);
    let c = g(r#"root ::= "ab"{2} "c"{1,3} "d"{2,} "#);
    yes(&c, &["ababcdd", "ababcccddddd"]);
    no(&c, &["abcdd", "ababccccdd", "ababcd"]);
    // Rules used before their definition, recursion, comments, multi-line rules.
    let c = g("# balanced parentheses\nroot ::= item*\nitem ::= \"(\" root \")\"\n  | \"x\"\n");
    yes(&c, &["", "x", "(x)", "((x)x)()"]);
    no(&c, &["(", "(x", ")("]);
}

#[test]
fn ebnf_classes_and_utf8() {
    let c = g(r#"root ::= [^"\\\x00-\x1f]* "#);
    yes(&c, &["", "héllo wörld", "日本語", "emoji 😀", "tab-free"]);
    no(&c, &["a\"b", "back\\slash", "new\nline"]);
    let c = g(r#"root ::= [α-ω]+ "." "#);
    yes(&c, &["αβγ.", "ω."]);
    no(&c, &["a.", "Ω.", "αβ"]);
    // A character class with a multi-byte range stops at character boundaries: a prefix of a
    // character is a prefix of a match, but not a match.
    assert!(c.is_prefix("α".as_bytes().split_at(1).0));
    assert!(!c.matches("α".as_bytes().split_at(1).0).unwrap());
    let c = g(r#"root ::= "\u00e9\n\t\"" . "#);
    yes(&c, &["é\n\t\"x", "é\n\t\"€"]);
}

#[test]
fn ebnf_errors_say_where() {
    let e = grammar_err("root ::= \"a\"\nitem ::= \"b\" | (\"c\"\n");
    assert!(
        e.contains("line 2 column 16") && e.contains("not closed"),
        "{e}"
    );
    let e = grammar_err("root ::= foo");
    assert!(
        e.contains("'foo'") && e.contains("never defined") && e.contains("line 1"),
        "{e}"
    );
    let e = grammar_err("root ::= root \"a\" | \"b\"");
    assert!(e.contains("left-recursive") && e.contains("'root'"), "{e}");
    let e = grammar_err("root ::= (\"a\"?)*");
    assert!(e.contains("left-recursive"), "{e}");
    let e = grammar_err("item ::= \"a\"");
    assert!(e.contains("no rule named 'root'"), "{e}");
    let e = grammar_err("root ::= [z-a]");
    assert!(
        e.contains("line 1 column 13") && e.contains("reversed"),
        "{e}"
    );
    let e = grammar_err("root ::= \"\\q\"");
    assert!(e.contains("unknown escape '\\q'"), "{e}");
    let e = grammar_err("root ::= \"a\"{3,2}");
    assert!(e.contains("maximum below its minimum"), "{e}");
    let e = grammar_err("root ::= \"a\"{99999}");
    assert!(e.contains("too large"), "{e}");
    let e = grammar_err("root ::= \"a\" )");
    assert!(
        e.contains("line 1 column 14") && e.contains("unexpected"),
        "{e}"
    );
    let e = grammar_err("root ::= \"a\"\nroot ::= \"b\"");
    assert!(e.contains("defined twice"), "{e}");
    assert!(grammar_err("").contains("empty"));
}

#[test]
fn schema_object_required_and_optional() {
    let c = s(
        r#"{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"boolean"},
        "c":{"type":"null"}},"required":["b"],"additionalProperties":false}"#,
    );
    yes(
        &c,
        &[
            r#"{"b":true}"#,
            r#"{"a":1,"b":false}"#,
            r#"{"a":-20,"b":true,"c":null}"#,
            r#"{"b":true,"c":null}"#,
            "{\n  \"a\": 3,\n  \"b\": true\n}",
        ],
    );
    no(
        &c,
        &[
            "{}",
            r#"{"a":1}"#,
            r#"{"b":true,}"#,
            r#"{,"b":true}"#,
            r#"{"b":true,"d":1}"#,
            r#"{"b":1}"#,
            r#"{"a":01,"b":true}"#,
            // whitespace is bounded
            &format!("{{{}\"b\":true}}", " ".repeat(13)),
        ],
    );
}

#[test]
fn schema_strings_arrays_enums() {
    let c = s(
        r#"{"type":"array","items":{"type":"string","minLength":1,"maxLength":3},
        "minItems":1,"maxItems":2}"#,
    );
    yes(
        &c,
        &[
            r#"["a"]"#,
            r#"["abc", "é\n"]"#,
            r#"["\u00e9"]"#,
            r#"["\"\\"]"#,
        ],
    );
    no(
        &c,
        &[
            "[]",
            r#"[""]"#,
            r#"["abcd"]"#,
            r#"["a","b","c"]"#,
            r#"["\ud800"]"#,
            "[\"a\nb\"]",
        ],
    );
    let c = s(r#"{"enum":["red","green",3,null,{"k":[1]}]}"#);
    yes(&c, &[r#""red""#, "3", "null", r#"{"k":[1]}"#]);
    no(&c, &[r#""blue""#, "4", r#""Red""#]);
    let c = s(r#"{"const":"x"}"#);
    yes(&c, &[r#""x""#]);
    no(&c, &[r#""y""#]);
    let c = s(r#"{"type":["string","null"],"maxLength":2}"#);
    yes(&c, &["null", r#""ab""#]);
    no(&c, &[r#""abc""#, "1"]);
    let c = s(r#"{"anyOf":[{"type":"boolean"},{"type":"number"}]}"#);
    yes(&c, &["true", "-1.5e10", "0.25", "12"]);
    no(&c, &["1e999", "01", ".5", "\"1\""]);
}

#[test]
fn schema_integer_ranges() {
    for (lo, hi) in [
        (0i64, 9i64),
        (-5, 5),
        (7, 1234),
        (-1000, -37),
        (100, 100),
        (0, 999_999),
    ] {
        let c = s(&format!(
            r#"{{"type":"integer","minimum":{lo},"maximum":{hi}}}"#
        ));
        for x in (lo - 50)..=(hi + 50).min(lo + 3000) {
            assert_eq!(
                c.matches(x.to_string().as_bytes()).unwrap(),
                lo <= x && x <= hi,
                "{x} in {lo}..={hi}"
            );
        }
        no(&c, &["-0", "00", "+1"]);
    }
    let c = s(r#"{"type":"integer","exclusiveMinimum":0,"exclusiveMaximum":3}"#);
    yes(&c, &["1", "2"]);
    no(&c, &["0", "3"]);
}

#[test]
fn schema_refs_and_any() {
    let c = s(
        r##"{"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},
        "kids":{"type":"array","items":{"$ref":"#/$defs/node"}}},"required":["v"]}},
        "$ref":"#/$defs/node"}"##,
    );
    yes(
        &c,
        &[
            r#"{"v":1}"#,
            r#"{"v":1,"kids":[{"v":2},{"v":3,"kids":[]}]}"#,
        ],
    );
    no(&c, &[r#"{"v":1,"kids":[{}]}"#]);
    let c = s("{}");
    yes(&c, &["1", r#"{"a":[true,null,"x",{"b":{}}]}"#, "[]"]);
    no(&c, &["[1,]", "{a:1}"]);
    let c = s(r#"{"type":"object","additionalProperties":{"type":"integer"}}"#);
    yes(&c, &["{}", r#"{"x":1,"y":2}"#]);
    no(&c, &[r#"{"x":"1"}"#]);
}

#[test]
fn schema_errors_name_the_keyword() {
    for (schema, want) in [
        (
            r#"{"type":"string","format":"date"}"#,
            "unsupported keyword 'format'",
        ),
        (
            r#"{"oneOf":[{"type":"string"}]}"#,
            "unsupported keyword 'oneOf'",
        ),
        (
            r#"{"type":"number","minimum":0}"#,
            "unsupported keyword 'minimum'",
        ),
        (
            r#"{"type":"object","properties":{"a":{"type":"array","uniqueItems":true}}}"#,
            "at /properties/a: unsupported keyword 'uniqueItems'",
        ),
        (
            r#"{"type":"object","required":["x"]}"#,
            "required property 'x'",
        ),
        (r#"{"type":"strin"}"#, "unknown type 'strin'"),
        (r#"{"$ref":"http://x/y"}"#, "only local references"),
        (r##"{"$ref":"#/nowhere"}"##, "points at nothing"),
        (
            r#"{"type":"integer","minimum":5,"maximum":4}"#,
            "no integer",
        ),
        (
            r#"{"type":"array","minItems":3,"maxItems":2}"#,
            "maxItems is below minItems",
        ),
        (r#"{"enum":[]}"#, "'enum' must be a non-empty array"),
        (
            r#"{"type":"string","enum":[1]}"#,
            "not of the schema's type",
        ),
        ("false", "matches nothing"),
        (r#"{"type":"object""#, "not valid JSON"),
    ] {
        let e = schema_err(schema);
        assert!(e.contains(want), "{schema}: {e} (wanted {want})");
    }
}

/// `pattern` against a regex engine (fancy-regex, which agrees with ECMA-262 on these
/// patterns and this alphabet, once \w is spelt out): the JSON encoding of a string matches the compiled schema
/// exactly when the regex finds the pattern in the string.
#[test]
fn schema_pattern_agrees_with_a_regex_engine() {
    let alphabet: Vec<char> = "ab12-_ .\"\\Zé\n".chars().collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for pat in [
        "^[a-z]+$",
        "^a(b|1)*Z?$",
        "^(?:ab){1,2}[^a]$",
        "a.b",
        "^\\d{1,2}-\\d$",
        "^[\\w .]{0,4}$",
        "\"|\\\\",
        "^[é\\n]+$",
        "^a+?b*1{1,}2?$",
        "^\\S\\s\\.$",
    ] {
        let schema = serde_json::json!({ "type": "string", "pattern": pat }).to_string();
        let c = s(&schema);
        // ECMA-262's \w is ASCII; the regex crate's is Unicode.
        let re = fancy_regex::Regex::new(&pat.replace("\\w", "0-9A-Za-z_")).unwrap();
        let mut hits = 0;
        for _ in 0..6000 {
            let len = (next() % 7) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let want = re.is_match(&text).unwrap();
            let json = serde_json::to_string(&text).unwrap();
            assert_eq!(c.matches(json.as_bytes()).unwrap(), want, "{pat} on {json}");
            hits += want as u32;
        }
        assert!(hits > 0, "{pat}: no sample matched (a weak test)");
    }
    for (pat, want) in [
        ("(?=a)", "lookaround"),
        ("\\1", "unsupported escape"),
        ("a\\b", "unsupported escape '\\b'"),
        ("^a|b$", "top-level '|'"),
        ("a^b", "unsupported anchor"),
        ("*a", "nothing to repeat"),
        ("(ab", "not closed"),
        ("[\\n]", ""),
    ] {
        let schema = serde_json::json!({ "type": "string", "pattern": pat }).to_string();
        match Constraint::json_schema(&schema) {
            Ok(_) => assert!(want.is_empty(), "{pat} accepted"),
            Err(e) => assert!(
                !want.is_empty() && e.to_string().contains(want),
                "{pat}: {e}"
            ),
        }
    }
    let e = schema_err(r#"{"type":"string","pattern":"a","maxLength":3}"#);
    assert!(e.contains("'pattern' together with"), "{e}");
}

/// Grammars that make the matcher track many stacks: 300 nested optional levels run (the
/// matcher does not recurse per level, so a test thread's small stack is enough); a grammar
/// with more ways to continue than the matcher keeps is an error saying why, never a hang.
#[test]
fn deep_and_ambiguous_grammars_are_safe() {
    let c = g(r#"root ::= ("a"?){0,300} "b""#);
    yes(&c, &["b", "aab", &format!("{}b", "a".repeat(250))]);
    no(&c, &["", "aa"]);
    // After k a's, each of the 2^k sequences of pending "b"/"c" is a stack.
    let c = g(r#"root ::= "a" root "b" | "a" root "c" | "x""#);
    yes(&c, &["aaxbc", "x"]);
    let e = c
        .matches("a".repeat(14).as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("too ambiguous"), "{e}");
}

/// Mutated grammars and schemas (bytes replaced, inserted, deleted, cut) are compiled and, when
/// they compile, run over random bytes: an error or a result each time, never a panic.
#[test]
fn mutated_grammars_and_schemas_never_panic() {
    let seeds: [&str; 4] = [
        "root ::= \"a\" (\"b\" | [c-e]+)* x{1,3} .\nx ::= [^\"\\\\\\x00-\\x1f] | \"\\u00e9\"\n",
        r##"{"type":"object","properties":{"a":{"type":"array","items":{"enum":[1,"x",null]},
            "maxItems":3},"b":{"type":"string","pattern":"^[a-z]{1,3}(x|y)?$"},
            "c":{"anyOf":[{"type":"integer","minimum":-5,"maximum":300},{"$ref":"#/$defs/d"}]}},
            "required":["a"],"$defs":{"d":{"type":["string","null"],"maxLength":2}}}"##,
        "root ::= item+ \nitem ::= \"(\" root? \")\" | [0-9]{2,}",
        r#"{"type":"array","items":{"type":"number"},"minItems":1}"#,
    ];
    let pieces: &[&[u8]] = &[
        b"\"",
        b"[",
        b"]",
        b"(",
        b")",
        b"{",
        b"}",
        b"|",
        b"*",
        b"?",
        b"\\",
        b"::=",
        b"{9999}",
        b"-",
        b"^",
        b"$",
        b"\"type\"",
        b":",
        b",",
        b"\xff",
        b"\xce",
        b"0",
        b"root",
        b"#",
    ];
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut compiled, mut total) = (0, 0);
    for round in 0..3000 {
        let base = seeds[round % seeds.len()];
        let mut t = base.as_bytes().to_vec();
        for _ in 0..1 + next() % 3 {
            let at = (next() % (t.len() as u64 + 1)) as usize;
            let p = pieces[(next() % pieces.len() as u64) as usize];
            match next() % 4 {
                0 => t.splice(at..at, p.iter().copied()).for_each(drop),
                1 if at < t.len() => t[at] = p[0],
                2 if at < t.len() => drop(t.remove(at)),
                _ => t.truncate(at),
            }
        }
        let text = String::from_utf8_lossy(&t);
        let c = if base.starts_with('{') {
            Constraint::json_schema(&text)
        } else {
            Constraint::grammar(&text)
        };
        total += 1;
        if let Ok(c) = c {
            compiled += 1;
            for _ in 0..5 {
                let len = (next() % 12) as usize;
                let alphabet = b"ab(){}[]\"0123-,.xyz\xc3\xa9 ";
                let bytes: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                let _ = c.matches(&bytes);
                let _ = c.is_prefix(&bytes);
            }
        }
    }
    // Both paths were exercised.
    assert!(
        compiled > 100 && compiled < total,
        "{compiled} of {total} compiled"
    );
}

/// Repetitions multiply: a grammar or schema that would write out too many symbols is an error,
/// not gigabytes; many optional properties stay linear.
#[test]
fn size_limits() {
    let e = grammar_err(r#"root ::= ("ab"{10000}){10000}"#);
    assert!(e.contains("too large"), "{e}");
    let e = schema_err(
        r#"{"type":"array","minItems":10000,"items":{"type":"string","minLength":10000}}"#,
    );
    assert!(e.contains("too large"), "{e}");
    let props: Vec<String> = (0..3000)
        .map(|i| format!(r#""p{i}":{{"type":"boolean"}}"#))
        .collect();
    let c = s(&format!(
        r#"{{"type":"object","properties":{{{}}}}}"#,
        props.join(",")
    ));
    yes(&c, &["{}", r#"{"p5":true,"p2999":false}"#]);
    no(&c, &[r#"{"p2999":false,"p5":true}"#]);
}
