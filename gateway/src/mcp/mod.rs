//! The MCP door, `/mcp` and `/mcp/<server>`: one JSON-RPC message per POST
//! (answered as JSON, or as an event stream when a tool call streams
//! progress, log messages or server requests), a GET stream per session
//! (list changes and resource updates), DELETE to end a session.
//! `endpoint` takes the request and dispatches each message by method;
//! `tools` lists and calls tools; `catalog` federates prompts, resources
//! and completions; `stream` serves a session's GET stream; `relay` streams
//! a tool call and routes server-to-client requests; `results` checks what
//! comes back. The protocol itself (eras, session tokens, JSON-RPC, naming)
//! is `lattice-mcp`'s; the upstreams are `mcp_hub`'s.
//!
//! Must never: import `proxy` or another door, forward a call whose
//! decision is not recorded, or reveal a tool the principal may not call
//! (a tool that does not exist and one that may not be called are answered
//! alike; the audit tells them apart).

mod catalog;
mod endpoint;
mod relay;
mod results;
mod stream;
mod tools;

pub use endpoint::{metadata_url, protected_resource_metadata, serve};
