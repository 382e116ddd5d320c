//! # lattice-registry — Lattice Registry
//!
//! The catalog of things that install into a gateway: **MCP server
//! entries** in the official registry's `server.json` format (with
//! Lattice's additions — labels, each tool's published definition hash and
//! risk — under `_meta`'s publisher-provided data), **policy packs** (Cedar
//! policies with their test cases and invariants), **model presets**
//! (`[[backends]]` and `[[models]]`) and **templates** (a whole starting
//! configuration). Each kind has a JSON Schema in `registry/schemas/`;
//! every entry is validated against it when read, from any source.
//!
//! - `entry`: one entry — parsed, validated, its kind, name and version.
//! - `sign`: publishers' Ed25519 keys, signatures over an entry's canonical
//!   JSON, and the trust decision for an entry.
//! - `catalog`: a set of entries (the bundled catalog compiled into the
//!   binary, or a directory), search, versions, `latest`.
//! - `pack`: a policy pack's own checks (its policies compile against the
//!   Lattice schema, its cases hold, its invariants are proved).
//! - `api`: the official registry API (`/v0.1/servers`, cursor
//!   pagination, search, versions) over a catalog, as an axum router; the
//!   other kinds under `/v0.1/lattice/...` in the same shape.
//! - `sync`: pulling every entry from a registry that speaks that API.
//! - `install`: entries into a gateway's config (checked as the gateway
//!   loads it, recorded, audited) and back out, byte for byte.
//! - `service`: the same for the gateway's admin API (trusted entries only).
//!
//! Must never: accept an entry its kind's schema refuses, or call an entry
//! trusted whose signature does not verify under a key the operator
//! trusts for the entry's namespace.

pub mod api;
pub mod catalog;
pub mod entry;
pub mod error;
pub mod fingerprint;
pub mod install;
pub mod pack;
pub mod service;
pub mod sign;
pub mod sync;

pub use catalog::Catalog;
pub use entry::{Entry, Kind};
pub use error::RegistryError;
pub use sign::{PublisherKey, Trust, TrustedKey};

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
