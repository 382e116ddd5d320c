//! The audit explorer: filter by time, agent, kind, target and decision;
//! an event's full detail with the text of its deciding policies; the
//! chain's verification status; export of the current filter as CSV or JSON.

use serde_json::Value;
use yew::prelude::*;

use super::{error_line, input, select, PageProps};
use crate::api;
use crate::view::query_string;

/// A `datetime-local` value (the browser's local time) in µs since the epoch.
fn local_to_us(value: &str) -> Option<String> {
    if value.trim().is_empty() {
        return None;
    }
    let ms = js_sys::Date::parse(value);
    (ms.is_finite() && ms > 0.0).then(|| format!("{}", (ms as u64) * 1000))
}

fn iso(ts_us: u64) -> String {
    let d = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64((ts_us / 1000) as f64));
    String::from(d.to_iso_string())
}

#[function_component(Audit)]
pub fn audit(props: &PageProps) -> Html {
    let since = use_state(|| "1h".to_string());
    let principal = use_state(String::new);
    let kind = use_state(String::new);
    let target = use_state(String::new);
    let decision = use_state(String::new);
    let sink = use_state(|| "embedded".to_string());
    let has_clickhouse = props.auth.me["audit_sinks"]
        .as_array()
        .is_some_and(|s| s.iter().any(|x| x == "clickhouse"));
    let from = use_state(String::new);
    let to = use_state(String::new);
    // Paging back: the oldest event shown so far bounds the next page.
    let older_than = use_state(|| None::<u64>);
    let events = use_state(|| None::<Vec<Value>>);
    let selected = use_state(|| None::<Value>);
    let policies = use_state(|| None::<Value>);
    let verify = use_state(|| None::<Result<Value, String>>);
    let error = use_state(|| None::<String>);
    let token = props.auth.token.clone();
    let allowed = props.auth.can("admin.read_audit");
    let can_read_policies = props.auth.can("admin.read_policies");
    let from_us = local_to_us(&from).unwrap_or_default();
    let to_us = older_than
        .map(|t| t.to_string())
        .or_else(|| local_to_us(&to))
        .unwrap_or_default();
    let since_value = if from_us.is_empty() {
        since.as_str()
    } else {
        ""
    };
    let filter = query_string(&[
        ("since", since_value),
        ("from_us", &from_us),
        ("to_us", &to_us),
        ("principal", principal.as_str()),
        ("kind", kind.as_str()),
        ("target", target.as_str()),
        ("decision", decision.as_str()),
        ("limit", "500"),
        (
            "sink",
            if sink.as_str() == "clickhouse" {
                "clickhouse"
            } else {
                ""
            },
        ),
    ]);
    let search = {
        let (events, error, selected, token, filter) = (
            events.clone(),
            error.clone(),
            selected.clone(),
            token.clone(),
            filter.clone(),
        );
        Callback::from(move |_: ()| {
            let (events, error, selected, token, filter) = (
                events.clone(),
                error.clone(),
                selected.clone(),
                token.clone(),
                filter.clone(),
            );
            yew::platform::spawn_local(async move {
                match api::get(&token, &format!("/admin/v1/audit?{filter}")).await {
                    Ok(v) => {
                        error.set(None);
                        selected.set(None);
                        events.set(Some(v["events"].as_array().cloned().unwrap_or_default()));
                    }
                    Err(e) => error.set(Some(e)),
                }
            });
        })
    };
    {
        // First load: the last hour, the chain's status, the policy texts.
        let (search, verify, policies, token) = (
            search.clone(),
            verify.clone(),
            policies.clone(),
            token.clone(),
        );
        use_effect_with(allowed, move |allowed| {
            if *allowed {
                search.emit(());
                yew::platform::spawn_local(async move {
                    verify.set(Some(api::get(&token, "/admin/v1/audit/verify").await));
                    if can_read_policies {
                        policies.set(api::get(&token, "/admin/v1/policies").await.ok());
                    }
                });
            }
        });
    }
    if !allowed {
        return html! { <section>{ super::not_allowed("admin.read_audit") }</section> };
    }
    let onsubmit = {
        let (search, older_than) = (search.clone(), older_than.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            if older_than.is_some() {
                // Back to the newest page: the search runs when the bound clears.
                older_than.set(None);
            } else {
                search.emit(());
            }
        })
    };
    {
        // Paging changes the filter; search again when it does.
        let search = search.clone();
        use_effect_with(*older_than, move |o| {
            if o.is_some() {
                search.emit(());
            }
        });
    }
    let older = {
        let (older_than, events) = (older_than.clone(), events.clone());
        Callback::from(move |_: MouseEvent| {
            let oldest = events
                .as_ref()
                .and_then(|l| l.iter().filter_map(|e| e["ts_us"].as_u64()).min());
            if let Some(t) = oldest {
                older_than.set(Some(t));
            }
        })
    };
    let export = |format: &'static str| {
        let (token, filter, error) = (token.clone(), filter.clone(), error.clone());
        Callback::from(move |_: MouseEvent| {
            let (token, filter, error) = (token.clone(), filter.clone(), error.clone());
            yew::platform::spawn_local(async move {
                let (url, name, mime) = if format == "csv" {
                    (
                        format!("/admin/v1/audit?{filter}&format=csv"),
                        "lattice-audit.csv",
                        "text/csv",
                    )
                } else {
                    (
                        format!("/admin/v1/audit?{filter}"),
                        "lattice-audit.json",
                        "application/json",
                    )
                };
                if let Err(e) = api::download(&token, &url, name, mime).await {
                    error.set(Some(format!("Export failed: {e}")));
                }
            });
        })
    };
    let verify_line = match &*verify {
        None => html! { <span class="muted">{"verifying…"}</span> },
        Some(Ok(v)) if v["ok"].as_bool() == Some(true) => html! {
            <span class="ok" id="chain-status">{format!("Chain verified: {} events, log size {}, {} signed checkpoints, {} witness checkpoints",
                v["events"], v["log_size"], v["checkpoints_checked"], v["witness_checkpoints_checked"])}</span>
        },
        Some(Ok(v)) => {
            html! { <span class="error" id="chain-status">{format!("Chain verification FAILED: {}", v["problems"][0])}</span> }
        }
        Some(Err(e)) => {
            html! { <span class="error" id="chain-status">{format!("Cannot verify: {e}")}</span> }
        }
    };
    let rows: Html = match &*events {
        None => html! {},
        Some(list) => list
            .iter()
            .map(|e| {
                let onclick = {
                    let (selected, e) = (selected.clone(), e.clone());
                    Callback::from(move |_: MouseEvent| selected.set(Some(e.clone())))
                };
                let is_sel = selected
                    .as_ref()
                    .map(|s| s["event_id"] == e["event_id"])
                    .unwrap_or(false);
                let decision = e["decision"].as_str().unwrap_or("").to_string();
                html! {
                    <tr class={classes!("row", is_sel.then_some("selected"))} {onclick}>
                        <td>{iso(e["ts_us"].as_u64().unwrap_or(0))}</td>
                        <td>{e["phase"].as_str().unwrap_or("")}</td>
                        <td class="tenant">{e["tenant"].as_str().unwrap_or("")}</td>
                        <td class="principal">{e["principal"].as_str().unwrap_or("")}</td>
                        <td class="kind">{e["kind"].as_str().unwrap_or("")}</td>
                        <td class="target">{e["target"].as_str().unwrap_or("")}</td>
                        <td class={decision.clone()}>{decision}</td>
                        <td>{e["status"].as_u64().map(|s| s.to_string()).unwrap_or_default()}</td>
                    </tr>
                }
            })
            .collect(),
    };
    let detail = match &*selected {
        None => html! {},
        Some(e) => {
            let texts: Html = e["policies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|id| {
                    let id = id.as_str().unwrap_or("");
                    let text = policies
                        .as_ref()
                        .and_then(|p| p["policies"].as_array().cloned())
                        .and_then(|ps| ps.into_iter().find(|p| p["id"] == id))
                        .and_then(|p| p["text"].as_str().map(str::to_string))
                        .unwrap_or_else(|| {
                            "(text not available to you, or no longer active)".into()
                        });
                    html! { <div><b>{id}</b><pre>{text}</pre></div> }
                })
                .collect();
            html! {
                <section id="event-detail">
                    <h2>{format!("Event {} · request {}", e["seq"], e["request_id"].as_str().unwrap_or(""))}</h2>
                    <p>{format!("{} · decision {} · {}", e["kind"].as_str().unwrap_or(""), e["decision"].as_str().unwrap_or(""), e["reason"].as_str().unwrap_or(""))}</p>
                    <h2>{"Deciding policies"}</h2>
                    { if e["policies"].as_array().map(|a| a.is_empty()).unwrap_or(true) { html!{<p class="muted">{"none (default deny, or no policy involved)"}</p>} } else { texts } }
                    <h2>{"Full event"}</h2>
                    <pre>{serde_json::to_string_pretty(e).unwrap_or_default()}</pre>
                </section>
            }
        }
    };
    html! {
        <>
            <section>
                <h2>{"Audit trail"}</h2>
                <p>{verify_line}</p>
                <form {onsubmit}>
                    { select("Since", "f-since", &since, &[("15m", "15 minutes"), ("1h", "1 hour"), ("24h", "24 hours"), ("7d", "7 days"), ("30d", "30 days")]) }
                    { input("Agent / human", "f-principal", &principal, "any") }
                    { input("Kind", "f-kind", &kind, "e.g. llm.chat") }
                    { input("Target", "f-target", &target, "tool, model, route") }
                    { select("Decision", "f-decision", &decision, &[("", "any"), ("allow", "allow"), ("deny", "deny"), ("error", "error")]) }
                    { if has_clickhouse {
                        select("Source", "f-sink", &sink, &[("embedded", "this node (embedded)"), ("clickhouse", "all nodes (ClickHouse)")])
                    } else { html! {} } }
                    <label>{"From (overrides Since)"}<input type="datetime-local" id="f-from" value={(*from).clone()}
                        oninput={let from = from.clone(); Callback::from(move |e: InputEvent| from.set(e.target_unchecked_into::<web_sys::HtmlInputElement>().value()))} /></label>
                    <label>{"To"}<input type="datetime-local" id="f-to" value={(*to).clone()}
                        oninput={let to = to.clone(); Callback::from(move |e: InputEvent| to.set(e.target_unchecked_into::<web_sys::HtmlInputElement>().value()))} /></label>
                    <label>{"\u{a0}"}<button id="f-search" type="submit">{"Search"}</button></label>
                    <label>{"\u{a0}"}<button class="secondary" type="button" id="export-csv" onclick={export("csv")}>{"Export CSV"}</button></label>
                    <label>{"\u{a0}"}<button class="secondary" type="button" id="export-json" onclick={export("json")}>{"Export JSON"}</button></label>
                </form>
                { error_line(&error) }
                <p class="muted">
                    {format!("{} events{} ", events.as_ref().map(|e| e.len()).unwrap_or(0),
                        if older_than.is_some() { " (an older page)" } else { "" })}
                    { if events.as_ref().map(|e| e.len() >= 500).unwrap_or(false) {
                        html! { <button class="secondary" id="older" onclick={older}>{"Older events"}</button> }
                    } else { html! {} } }
                </p>
                <table id="audit-table">
                    <tr><th>{"time"}</th><th>{"phase"}</th><th>{"tenant"}</th><th>{"principal"}</th><th>{"kind"}</th><th>{"target"}</th><th>{"decision"}</th><th>{"status"}</th></tr>
                    {rows}
                </table>
            </section>
            {detail}
        </>
    }
}
