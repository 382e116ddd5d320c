//! The worker's one error type: what a model directory, a request or a
//! device refused, each naming the thing at fault.
//!
//! Must never: carry a request's prompt text (errors are logged).

use lattice_gpu_kernels::KernelError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A file of the model directory is missing or unreadable.
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
    /// `config.json` is malformed or lacks a field.
    #[error("config.json: {0}")]
    Config(String),
    /// The model is well-formed but the worker cannot serve it.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A tensor is missing, of the wrong shape or of an unknown dtype.
    #[error("tensor {name}: {detail}")]
    Tensor { name: String, detail: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

pub type Result<T> = std::result::Result<T, WorkerError>;

pub(crate) fn file_err(path: &std::path::Path, detail: impl std::fmt::Display) -> WorkerError {
    WorkerError::File {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}
