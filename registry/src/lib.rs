//! # lattice-registry — NOT BUILT YET
//!
//! Purpose: Templates, modules and presets (MCP server definitions, policy packs, model presets) that install into a gateway's config.
//!
//! This crate holds only its purpose today. Nothing here works yet, and
//! nothing may depend on it until it does.
