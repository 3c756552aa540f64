//! Build steps: compile the CUDA kernels (feature `cuda`) and generate the C header.

#[path = "build/header.rs"]
mod header;
#[path = "build/kernels.rs"]
mod kernels;

fn main() {
    header::generate();
    kernels::compile();
}
