//! # lattice-inference-router — NOT BUILT YET
//!
//! Purpose: OpenAI-compatible inference routing to vLLM, MLX and Lattice workers with health checks, strategies and usage accounting. See issue #4.
//!
//! This crate holds only its purpose today. Nothing here works yet, and
//! nothing may depend on it until it does.
