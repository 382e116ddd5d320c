//! # lattice-load-tests — NOT BUILT YET
//!
//! Purpose: Bounded loopback load scenarios that measure the gateway; results go to docs/benchmarks.md.
//!
//! This crate holds only its purpose today. Nothing here works yet, and
//! nothing may depend on it until it does.
