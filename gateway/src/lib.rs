//! # lattice-gateway
//!
//! Owns the runtime gateway: configuration (parse → validate → runtime, hot
//! reload), identity (API keys in the embedded state store, JWT issuers),
//! the enforcement path (`enforce`: the ordered steps as data and pure
//! functions) and its Pingora glue (`proxy`), metrics, and the wiring of a
//! running node (`server`). The `lattice` binary is a thin CLI over this.
//!
//! Must never: forward a call that any step refused, turn an error into an
//! allow, pass the agent's credentials upstream, or block the request path
//! on audit I/O (it only enqueues).

pub mod admin;
pub mod admin_views;
pub mod change_audit;
pub mod config;
pub mod demo;
pub mod enforce;
pub mod error;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod llm_config;
pub mod llm_endpoint;
pub mod mcp_catalog;
pub mod mcp_config;
pub mod mcp_endpoint;
pub mod mcp_hub;
pub mod mcp_registry;
pub mod mcp_relay;
pub mod mcp_session;
pub mod metrics;
pub mod model_store;
pub mod pins;
pub mod proxy;
pub mod registry_store;
pub mod runtime;
pub mod server;
pub mod ui;

pub use error::{GatewayError, Rejection};
