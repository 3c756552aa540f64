//! Compute backends: CPU always, CUDA with the `cuda` feature.
