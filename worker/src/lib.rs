//! # lattice-worker — Lattice Inference: a local LLM server
//!
//! Owns: reading a Hugging Face model directory (`model/`: config,
//! memory-mapped safetensors, the decoder's forward pass over any
//! `lattice_gpu_kernels::Kernels` device), and the tiny models the tests
//! and benchmarks make themselves (`testmodel`). The engine (continuous
//! batching, paged KV cache, prefix cache, sampling) and the OpenAI API
//! build on these (issue #15).
//!
//! Must never: link gateway code (the worker is a server of its own that
//! the gateway routes to as a backend, authenticated like any other), or
//! do a numeric step itself (kernels own arithmetic, so devices swap).

pub mod api;
pub mod cluster;
pub mod engine;
pub mod error;
pub mod grammar;
pub mod metrics;
pub mod model;
pub mod serve;
pub mod testmodel;
pub mod text;
pub mod upstream;

pub use error::{Result, WorkerError};
