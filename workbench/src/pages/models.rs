//! Models and backends: each route with its strategy and its backends'
//! health, ejection, requests in flight, reported load and latency; a form
//! to add a run-time route to one backend.

use serde_json::{json, Value};
use yew::prelude::*;

use super::{error_line, input, not_allowed, select, PageProps};
use crate::api;
use crate::view::micros;

#[function_component(Models)]
pub fn models(props: &PageProps) -> Html {
    let routes = use_state(|| None::<Result<serde_json::Value, String>>);
    let error = use_state(|| None::<String>);
    let notice = use_state(|| None::<String>);
    let name = use_state(String::new);
    let backend = use_state(String::new);
    let kind = use_state(|| "vllm".to_string());
    let url = use_state(String::new);
    let tick = use_state(|| 0u32);
    let token = props.auth.token.clone();
    let allowed = props.auth.can("admin.change_routes");
    {
        let (routes, token) = (routes.clone(), token.clone());
        use_effect_with(*tick, move |_| {
            if allowed {
                yew::platform::spawn_local(async move {
                    routes.set(Some(api::get(&token, "/admin/v1/models").await));
                });
            }
        });
    }
    if !allowed {
        return html! { <section>{ not_allowed("admin.change_routes") }</section> };
    }
    let add = {
        let (token, error, notice, tick) =
            (token.clone(), error.clone(), notice.clone(), tick.clone());
        let (name, backend, kind, url) = (name.clone(), backend.clone(), kind.clone(), url.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let (n, b, u) = (
                name.trim().to_string(),
                backend.trim().to_string(),
                url.trim().to_string(),
            );
            if n.is_empty() || b.is_empty() || u.is_empty() {
                error.set(Some(
                    "A route needs a model name, a backend name and the backend's URL.".into(),
                ));
                return;
            }
            let body = json!({
                "backends": [{"name": b, "kind": *kind, "url": u}],
                "models": [{"name": n, "backends": [b]}],
            });
            let (token, error, notice, tick) =
                (token.clone(), error.clone(), notice.clone(), tick.clone());
            yew::platform::spawn_local(async move {
                match api::post(&token, "/admin/v1/models", &body).await {
                    Ok(_) => {
                        error.set(None);
                        notice.set(Some(format!("Added route {n}.")));
                    }
                    Err(e) => error.set(Some(format!("Route refused: {e}"))),
                }
                tick.set(*tick + 1);
            });
        })
    };
    let rows: Html = match &*routes {
        Some(Ok(v)) => v["models"].as_array().into_iter().flatten().flat_map(|m| {
            m["backends"].as_array().cloned().unwrap_or_default().into_iter().map(move |b| html! {
                <tr>
                    <td>{m["name"].as_str().unwrap_or("")}</td>
                    <td>{m["strategy"].as_str().unwrap_or("")}</td>
                    <td class="backend">{backend_cell(&b)}</td>
                    <td class={if b["available"] == true { "allow" } else { "deny" }}>
                        {if b["available"] == true { "available" } else if b["ejected"] == true { "ejected" } else { "unhealthy" }}
                    </td>
                    <td>{b["outstanding"].to_string()}</td>
                    <td>{b["reported_load"].to_string()}</td>
                    <td>{micros(b["latency_ewma_us"].as_u64().unwrap_or(0))}</td>
                    <td class="source">{m["source"].as_str().unwrap_or("")}</td>
                </tr>
            }).collect::<Vec<_>>()
        }).collect(),
        Some(Err(e)) => html! { <tr><td colspan="8" class="error">{e}</td></tr> },
        None => html! {},
    };
    let refresh = {
        let tick = tick.clone();
        Callback::from(move |_: MouseEvent| tick.set(*tick + 1))
    };
    html! {
        <>
            { match &*notice { Some(n) => html! { <p class="ok">{n}</p> }, None => html! {} } }
            <section>
                <h2>{"Model routes and backends"}</h2>
                <button class="secondary" id="routes-refresh" onclick={refresh}>{"Refresh"}</button>
                <table id="routes">
                    <tr><th>{"model"}</th><th>{"strategy"}</th><th>{"backend"}</th><th>{"state"}</th><th>{"in flight"}</th><th>{"reported load"}</th><th>{"latency (EWMA)"}</th><th>{"source"}</th></tr>
                    {rows}
                </table>
            </section>
            <section>
                <h2>{"Add a route"}</h2>
                <form onsubmit={add}>
                    { input("Model name", "route-name", &name, "e.g. llama-3-8b") }
                    { input("Backend name", "route-backend", &backend, "e.g. gpu-1") }
                    { select("Kind", "route-kind", &kind, &[("vllm", "vLLM"), ("mlx", "MLX"), ("lattice", "Lattice worker"), ("openai", "OpenAI-compatible")]) }
                    { input("Backend URL", "route-url", &url, "http://10.0.0.5:8000") }
                    <label>{"\u{a0}"}<button type="submit" id="route-add">{"Add"}</button></label>
                </form>
                { error_line(&error) }
            </section>
        </>
    }
}

/// A backend's name, kind and location; for a worker that joined by
/// itself, also its node, how it was found and when it joined.
fn backend_cell(b: &Value) -> String {
    let text = |k: &str| b[k].as_str().unwrap_or("").to_string();
    let mut cell = format!("{} ({}, {})", text("name"), text("kind"), text("location"));
    if let Some(node) = b["node"].as_str() {
        cell.push_str(&format!(
            " · discovered: node {node}, {}, via {}",
            text("device"),
            text("found_via")
        ));
    }
    cell
}
