//! MCP servers and tools: each upstream's status; every tool with its
//! pinned hash; quarantined tools with the diff of what changed and an
//! approve button; a form to register a server.

use serde_json::{json, Map, Value};
use yew::prelude::*;

use super::{error_line, input, not_allowed, select, PageProps};
use crate::api;
use crate::view::short_hash;

fn show(v: &Value) -> String {
    match v {
        Value::Null => "(absent)".into(),
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

#[function_component(Mcp)]
pub fn mcp(props: &PageProps) -> Html {
    let servers = use_state(|| None::<Result<Value, String>>);
    let tools = use_state(|| None::<Result<Value, String>>);
    let notice = use_state(|| None::<String>);
    let error = use_state(|| None::<String>);
    let name = use_state(String::new);
    let transport = use_state(|| "stdio".to_string());
    let target = use_state(String::new);
    let args = use_state(String::new);
    let tick = use_state(|| 0u32);
    let token = props.auth.token.clone();
    let (can_servers, can_tools) = (
        props.auth.can("admin.register_server"),
        props.auth.can("admin.approve_tool"),
    );
    {
        let (servers, tools, token) = (servers.clone(), tools.clone(), token.clone());
        use_effect_with(*tick, move |_| {
            yew::platform::spawn_local(async move {
                if can_servers {
                    servers.set(Some(api::get(&token, "/admin/v1/mcp/servers").await));
                }
                if can_tools {
                    tools.set(Some(api::get(&token, "/admin/v1/mcp/tools").await));
                }
            });
        });
    }
    let approve = |tool: String| {
        let (token, notice, error, tick) =
            (token.clone(), notice.clone(), error.clone(), tick.clone());
        Callback::from(move |_: MouseEvent| {
            let (token, notice, error, tick, tool) = (
                token.clone(),
                notice.clone(),
                error.clone(),
                tick.clone(),
                tool.clone(),
            );
            yew::platform::spawn_local(async move {
                let url = format!("/admin/v1/mcp/tools/{tool}/approve");
                match api::post(&token, &url, &json!({})).await {
                    Ok(v) => {
                        error.set(None);
                        notice.set(Some(format!(
                            "Approved {tool} at {}; it is served again once the gateway picks the approval up (within seconds).",
                            short_hash(v["hash"].as_str().unwrap_or(""))
                        )));
                    }
                    Err(e) => error.set(Some(format!("Approval failed: {e}"))),
                }
                tick.set(*tick + 1);
            });
        })
    };
    let register = {
        let (token, notice, error, tick) =
            (token.clone(), notice.clone(), error.clone(), tick.clone());
        let (name, transport, target, args) = (
            name.clone(),
            transport.clone(),
            target.clone(),
            args.clone(),
        );
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let n = name.trim().to_string();
            let t = target.trim().to_string();
            if n.is_empty() || t.is_empty() {
                error.set(Some(
                    "A server needs a name and a command (stdio) or a URL.".into(),
                ));
                return;
            }
            let mut body = Map::new();
            body.insert("name".into(), n.clone().into());
            match transport.as_str() {
                "stdio" => {
                    body.insert("command".into(), t.into());
                    let a: Vec<Value> = args.split_whitespace().map(|s| s.into()).collect();
                    body.insert("args".into(), a.into());
                }
                other => {
                    body.insert("url".into(), t.into());
                    if other == "sse" {
                        body.insert("transport".into(), "sse".into());
                    }
                }
            }
            let (token, notice, error, tick) =
                (token.clone(), notice.clone(), error.clone(), tick.clone());
            yew::platform::spawn_local(async move {
                match api::post(&token, "/admin/v1/mcp/servers", &Value::Object(body)).await {
                    Ok(_) => {
                        error.set(None);
                        notice.set(Some(format!("Registered {n}.")));
                    }
                    Err(e) => error.set(Some(format!("Registration refused: {e}"))),
                }
                tick.set(*tick + 1);
            });
        })
    };
    let server_rows: Html = match &*servers {
        Some(Ok(v)) => v["servers"].as_array().into_iter().flatten().map(|s| html! {
            <tr>
                <td>{s["name"].as_str().unwrap_or("")}</td>
                <td>{s["transport"].to_string()}</td>
                <td class={if s["running"] == true { "allow" } else { "deny" }}>{if s["running"] == true { "running" } else { "down" }}</td>
                <td>{s["tools"].to_string()}</td>
                <td>{s["source"].as_str().unwrap_or("")}</td>
            </tr>
        }).collect(),
        Some(Err(e)) => html! { <tr><td colspan="5" class="error">{e}</td></tr> },
        None => html! {},
    };
    let tool_rows: Html = match &*tools {
        Some(Ok(v)) => v["tools"].as_array().into_iter().flatten().map(|t| {
            let name = t["name"].as_str().unwrap_or("").to_string();
            let quarantined = t["quarantined"] == true;
            let diff: Html = t["changes"].as_array().into_iter().flatten().map(|c| html! {
                <div class="diff">
                    <b>{c["field"].as_str().unwrap_or("")}</b>
                    <pre class="before">{format!("- {}", show(&c["before"]))}</pre>
                    <pre class="after">{format!("+ {}", show(&c["after"]))}</pre>
                </div>
            }).collect();
            html! {
                <tr id={format!("tool-{name}")}>
                    <td>{&name}</td>
                    <td><code>{short_hash(t["approved_hash"].as_str().unwrap_or("-"))}</code></td>
                    <td class={if quarantined { "quarantined" } else { "allow" }}>{if quarantined { "quarantined" } else { "approved" }}</td>
                    <td>
                        { if quarantined { html! {
                            <>
                                <div class="muted">{format!("pending {}", short_hash(t["pending_hash"].as_str().unwrap_or("")))}</div>
                                {diff}
                                <button id={format!("approve-{name}")} onclick={approve(name.clone())}>{"Approve this version"}</button>
                            </>
                        } } else { html! {} } }
                    </td>
                </tr>
            }
        }).collect(),
        Some(Err(e)) => html! { <tr><td colspan="4" class="error">{e}</td></tr> },
        None => html! {},
    };
    html! {
        <>
            { match &*notice { Some(n) => html! { <p class="ok" id="notice">{n}</p> }, None => html! {} } }
            { error_line(&error) }
            <section>
                <h2>{"MCP servers"}</h2>
                { if can_servers { html! {
                    <>
                        <table id="servers"><tr><th>{"name"}</th><th>{"transport"}</th><th>{"status"}</th><th>{"tools"}</th><th>{"source"}</th></tr>{server_rows}</table>
                        <h2>{"Register a server"}</h2>
                        <form onsubmit={register}>
                            { input("Name", "srv-name", &name, "e.g. github") }
                            { select("Transport", "srv-transport", &transport, &[("stdio", "stdio (command)"), ("http", "streamable HTTP (URL)"), ("sse", "legacy HTTP+SSE (URL)")]) }
                            { input("Command or URL", "srv-target", &target, "npx … or https://…") }
                            { input("Arguments (stdio)", "srv-args", &args, "space-separated") }
                            <label>{"\u{a0}"}<button type="submit" id="srv-add">{"Register"}</button></label>
                        </form>
                    </>
                } } else { not_allowed("admin.register_server") } }
            </section>
            <section>
                <h2>{"Tools and their pins"}</h2>
                { if can_tools { html! {
                    <table id="tools"><tr><th>{"tool"}</th><th>{"approved hash"}</th><th>{"status"}</th><th>{"change"}</th></tr>{tool_rows}</table>
                } } else { not_allowed("admin.approve_tool") } }
            </section>
        </>
    }
}
