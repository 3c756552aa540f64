//! The shared library's SONAME, `libllorch.so.<ABI version>`: a program linked against one ABI
//! never loads a library of another. The ABI version is `LLORCH_ABI_VERSION` of src/ffi/mod.rs.

/// `LLORCH_ABI_VERSION` as written in `ffi_source` (the text of src/ffi/mod.rs).
pub fn abi_version(ffi_source: &str) -> Option<u32> {
    ffi_source.lines().find_map(|line| {
        line.trim()
            .strip_prefix("pub const LLORCH_ABI_VERSION: u32 = ")?
            .strip_suffix(';')?
            .parse()
            .ok()
    })
}

pub fn set() {
    println!("cargo:rerun-if-changed=src/ffi/mod.rs");
    // -soname is an ELF linker option; other targets keep the default name.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let path = std::path::Path::new(&root).join("src/ffi/mod.rs");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let abi = abi_version(&text).unwrap_or_else(|| {
        panic!(
            "{} has no `pub const LLORCH_ABI_VERSION: u32 = N;` line (build/soname.rs reads it)",
            path.display()
        )
    });
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libllorch.so.{abi}");
}
