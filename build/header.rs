//! Generates the C header from src/ffi with cbindgen. (Owner: the C API work.)
//!
//! The committed include/llorch.h is the source of truth; the build writes a fresh copy to
//! $OUT_DIR/llorch.h, and tests/ffi_header.rs fails when the two differ.

use std::path::Path;

/// The header text generated from `root`/src/ffi with `root`/cbindgen.toml.
#[allow(dead_code)] // used by tests/ffi_header.rs too
pub fn render(root: &Path) -> Result<String, String> {
    let mut config = cbindgen::Config::from_file(root.join("cbindgen.toml"))?;
    config.after_includes = Some(version_macros());
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .generate()
        .map_err(|e| format!("cbindgen: {e}"))?;
    let mut buf = Vec::new();
    bindings.write(&mut buf);
    String::from_utf8(buf).map_err(|e| e.to_string())
}

/// The release version of Cargo.toml as macros, placed before `LLORCH_ABI_VERSION` (which
/// cbindgen writes from the constant in src/ffi/mod.rs).
fn version_macros() -> String {
    format!(
        "\n// The release of llorch this header belongs to (Cargo.toml's version); the library's\n\
         // own is `llorch_version()`. Compatibility is the ABI version's business, not this one's.\n\
         #define LLORCH_VERSION_MAJOR {}\n\
         #define LLORCH_VERSION_MINOR {}\n\
         #define LLORCH_VERSION_PATCH {}\n\
         #define LLORCH_VERSION_STRING \"{}\"",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION"),
    )
}

#[allow(dead_code)]
pub fn generate() {
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    match render(Path::new(&root)) {
        Ok(text) => {
            if let Err(e) = std::fs::write(Path::new(&out).join("llorch.h"), text) {
                println!("cargo:warning=cannot write llorch.h: {e}");
            }
        }
        // A header problem must not break the library build; the header test reports it.
        Err(e) => println!("cargo:warning=header generation failed: {e}"),
    }
}
