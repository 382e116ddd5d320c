//! # lattice-gateway
//!
//! The runtime gateway as a library: one core that every call passes
//! through, a door per protocol, and the layers below them. Layers only
//! point down (ARCHITECTURE.md draws them; `tests/layers.rs` checks them):
//!
//! - **foundations** — `config` (parse → validate → build; a leaf),
//!   `error`, `metrics`, `demo`;
//! - **state and identity** — `state` (the one owner of `state.db`: keys,
//!   pins, run-time registrations), `identity` (API keys, JWT), `limits`;
//! - **node** — `mcp_hub` (MCP upstreams, supervised), `runtime` (the
//!   reloadable runtime and `Shared`), `change_audit`, `reload`;
//! - **core** — `enforce` (the steps as data, pure functions), `call` (one
//!   call's bookkeeping and the one way a decision is recorded), `respond`
//!   (every answer the gateway writes itself), `intake` (steps 1 and 2 for
//!   the doors that read the body);
//! - **doors** — `route` (HTTP tool routes), `mcp`, `llm`, `admin`, `ui`:
//!   functions over a `Call`; never import `proxy` or each other;
//! - **wiring** — `proxy` (Pingora's hooks and the dispatch to doors) and
//!   `server` (a running node).
//!
//! The `lattice` binary (package `lattice`, `app/`) is a thin CLI over this.
//!
//! Must never: forward a call that any step refused, turn an error into an
//! allow, pass the agent's credentials upstream, or block the request path
//! on audit I/O (it only enqueues).

pub mod admin;
pub mod call;
pub mod change_audit;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod demo;
pub mod discovered;
pub mod discovery;
pub mod egress;
pub mod enforce;
pub mod error;
pub mod identity;
pub mod intake;
pub mod invariants;
pub mod limits;
pub mod llm;
pub mod mcp;
pub mod mcp_hub;
pub mod metrics;
pub mod otlp;
pub mod outage;
pub mod proxy;
pub mod reload;
pub mod respond;
pub mod route;
pub mod runtime;
pub mod server;
pub mod spans;
pub mod state;
pub mod tls;
pub mod transparency;
pub mod ui;

pub use error::{GatewayError, McpRefusal, Rejection};
