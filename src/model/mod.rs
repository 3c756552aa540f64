//! Architectures: hyper-parameters from metadata, tensor names, the layer recipe.
