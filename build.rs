//! Build steps: compile the CUDA kernels (feature `cuda`), generate the C header, and name the
//! shared library by its ABI version (SONAME).

#[path = "build/header.rs"]
mod header;
#[path = "build/kernels.rs"]
mod kernels;
#[path = "build/soname.rs"]
mod soname;

fn main() {
    header::generate();
    kernels::compile();
    soname::set();
}
