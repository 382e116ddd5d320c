//! # lattice-mcp — NOT BUILT YET
//!
//! Purpose: MCP federation: upstream MCP servers (stdio, streamable HTTP, legacy SSE), one federated endpoint, per-call schema validation, tool pinning. See issue #3.
//!
//! This crate holds only its purpose today. Nothing here works yet, and
//! nothing may depend on it until it does.
