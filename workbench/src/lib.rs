//! # lattice-workbench
//!
//! Owns the operator's web console: a yew app, client-side rendered to
//! WebAssembly, that the gateway serves at `/ui/` (`scripts/build-workbench`
//! builds `workbench/dist`; the gateway embeds it). Pages: login, overview,
//! audit explorer, chat, MCP servers and tools, models, policies.
//!
//! Must never: hold data of its own or decide anything — every page reads
//! and writes through the gateway's admin API and `/v1/` with the logged-in
//! human's token, so the gateway's policies decide what a person sees and
//! does, and every action is audited there. The token lives in the tab's
//! `sessionStorage` only.
//!
//! `sse` and `view` are plain Rust, tested natively; the rest needs a browser.

mod api;
mod app;
mod pages;
pub mod sse;
pub mod view;

/// Mounts the app on the page's body (the wasm module's start function).
#[cfg_attr(target_arch = "wasm32", wasm_bindgen::prelude::wasm_bindgen(start))]
pub fn start() {
    yew::Renderer::<app::App>::new().render();
}
