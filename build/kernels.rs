//! Compiles kernels/*.cu with nvcc when the `cuda` feature is on. (Owner: the CUDA work.)

pub fn compile() {}
