//! Templates generated from the fuzzer's bytes, or the bytes as a template, rendered (fuzz/src/
//! chat_template.rs: the properties); generated statements are sometimes spliced into the real
//! models' templates.
#![no_main]

use std::sync::OnceLock;

fn real_templates() -> &'static [String] {
    static ALL: OnceLock<Vec<String>> = OnceLock::new();
    ALL.get_or_init(|| {
        llorch_fuzz::models::open_all()
            .iter()
            .filter_map(|g| {
                g.get_str("tokenizer.chat_template")
                    .ok()
                    .flatten()
                    .map(String::from)
            })
            .collect()
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let real: Vec<&str> = real_templates().iter().map(String::as_str).collect();
    llorch_fuzz::chat_template::check_bytes(data, &real);
});
