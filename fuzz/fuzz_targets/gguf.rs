//! Any bytes as a GGUF file (fuzz/src/gguf.rs: the properties).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    llorch_fuzz::gguf::check(data);
});
