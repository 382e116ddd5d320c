//! The registry's errors: each names the entry (or file, or URL) it is
//! about and what is wrong, in words an operator can act on.
//!
//! Must never: carry a secret (a private key) in its text.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RegistryError {
    /// Not JSON at all.
    #[error("{origin}: not JSON: {message} (line {line}, column {column})")]
    Json {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// JSON that its kind's schema refuses; every violation, one per line.
    #[error("{origin}: {entry} does not match the {kind} schema:\n{violations}")]
    Schema {
        origin: String,
        entry: String,
        kind: &'static str,
        violations: String,
    },
    /// Valid JSON of no kind this registry knows.
    #[error("{origin}: {message}")]
    Kind { origin: String, message: String },
    /// The same name and version twice in one catalog.
    #[error("{name}@{version} is in the catalog twice ({first} and {second})")]
    Duplicate {
        name: String,
        version: String,
        first: String,
        second: String,
    },
    #[error("no entry {0} in the catalog")]
    NotFound(String),
    /// A policy pack whose own policies, cases or invariants fail.
    #[error("policy pack {entry}: {message}")]
    Pack { entry: String, message: String },
    /// A key file or a trusted key that cannot be used.
    #[error("key {origin}: {message}")]
    Key { origin: String, message: String },
    /// Signing or verifying.
    #[error("{entry}: {message}")]
    Signature { entry: String, message: String },
    /// A remote registry that could not be read.
    #[error("registry {url}: {message}")]
    Remote { url: String, message: String },
    /// An install, update or removal refused: what is wrong, and nothing
    /// was changed.
    #[error("{entry}: {message}")]
    Install { entry: String, message: String },
    /// The gateway's config or state store, as the installer met them.
    #[error("{0}")]
    Gateway(String),
    #[error("{0} is not installed")]
    NotInstalled(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> RegistryError {
    RegistryError::Io {
        path: path.display().to_string(),
        source,
    }
}
