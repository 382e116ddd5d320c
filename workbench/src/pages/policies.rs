//! Policies: the active set and its invariants (proved when it was
//! loaded); a candidate set's check — schema errors, or each invariant's
//! answer (with a counterexample request when one breaks) and the semantic
//! diff against the live set, all from the gateway; a what-if form —
//! principal, action, resource → decision, with the deciding policies.

use serde_json::{json, Value};
use yew::prelude::*;

use super::{error_line, input, not_allowed, select, textarea, PageProps};
use crate::api;

const ACTIONS: [&str; 14] = [
    "call_tool",
    "list_tools",
    "read_resource",
    "get_prompt",
    "chat",
    "embed",
    "http_request",
    "admin.read_audit",
    "admin.read_policies",
    "admin.approve_tool",
    "admin.register_server",
    "admin.change_routes",
    "admin.change_policies",
    "admin.manage_keys",
];

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// The what-if resource as the policy engine's JSON.
fn resource(kind: &str, id: &str, server: &str, risk: &str, labels: &str) -> Value {
    match kind {
        "Tool" => {
            json!({"type": "Tool", "id": id, "server": server, "risk": if risk.is_empty() { "unknown" } else { risk }, "labels": list(labels)})
        }
        "Gateway" => json!({"type": "Gateway"}),
        "Tenant" => json!({"type": "Tenant", "id": id}),
        other => json!({"type": other, "id": id, "labels": list(labels)}),
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The live set's invariants, each proved when the set was loaded.
fn invariants_view(v: &Value) -> Html {
    let items: Vec<Html> = v["invariants"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            html! {
                <li><b class="allow">{"proved"}</b>{format!(" {} — {} ({}, {} ms)",
                    text(&i["id"]), text(&i["description"]), text(&i["claim"]), i["ms"])}</li>
            }
        })
        .collect();
    html! {
        <>
            <h3>{"Invariants"}</h3>
            <ul id="invariants">
                if items.is_empty() {
                    <li class="muted">{"None configured ([[invariants]] in the config)."}</li>
                } else {
                    { for items }
                }
            </ul>
        </>
    }
}

/// A valid candidate's answers: each invariant, then how it decides
/// differently from the live set.
fn candidate_view(v: &Value) -> Html {
    let invariants: Html = match v["invariants"].as_array() {
        Some(list) if list.is_empty() => html! { <p class="muted">{"No invariants configured."}</p> },
        Some(list) => list
            .iter()
            .map(|i| {
                let status = text(&i["status"]);
                let class = if status == "proved" { "allow" } else { "deny" };
                html! {
                    <li>
                        <b class={class}>{status}</b>{format!(" {} — {}", text(&i["id"]), text(&i["description"]))}
                        if status == "broken" {
                            <p>{text(&i["broken"])}{":"}</p><pre>{text(&i["counterexample"])}</pre>
                        }
                        if status == "unproved" { <p class="error">{text(&i["error"])}</p> }
                    </li>
                }
            })
            .collect::<Html>(),
        None => html! { <p class="error">{text(&v["invariants_error"])}</p> },
    };
    let diff: Html = match v["diff"].as_array() {
        Some(list) if list.is_empty() => {
            html! { <p class="muted">{"No request is decided differently from the live set."}</p> }
        }
        Some(list) => list
            .iter()
            .map(|d| {
                let change = text(&d["change"]).replace('_', " ");
                html! {
                    <li>
                        <b class={if change == "newly allowed" { "allow" } else { "deny" }}>{change}</b>
                        {format!(" {} · {} · {}", text(&d["principal"]), text(&d["action"]), text(&d["resource"]))}
                        <details><summary>{"example"}</summary><pre>{text(&d["example"])}</pre></details>
                    </li>
                }
            })
            .collect::<Html>(),
        None => html! { <p class="error">{text(&v["diff_error"])}</p> },
    };
    html! {
        <>
            <h3>{"Invariants"}</h3>
            <ul id="candidate-invariants">{invariants}</ul>
            <h3>{"Against the live set"}</h3>
            <ul id="candidate-diff">{diff}</ul>
        </>
    }
}

#[function_component(Policies)]
pub fn policies(props: &PageProps) -> Html {
    let active = use_state(|| None::<Result<Value, String>>);
    let candidate = use_state(String::new);
    let validation = use_state(|| None::<Result<Value, String>>);
    let p_id = use_state(String::new);
    let p_type = use_state(|| "Agent".to_string());
    let p_tenant = use_state(|| "default".to_string());
    let p_roles = use_state(String::new);
    let p_labels = use_state(String::new);
    let action = use_state(|| "call_tool".to_string());
    let r_type = use_state(|| "Tool".to_string());
    let r_id = use_state(String::new);
    let r_server = use_state(String::new);
    let r_risk = use_state(String::new);
    let r_labels = use_state(String::new);
    let context = use_state(String::new);
    let answer = use_state(|| None::<Value>);
    let error = use_state(|| None::<String>);
    let token = props.auth.token.clone();
    let allowed = props.auth.can("admin.read_policies");
    {
        let (active, token) = (active.clone(), token.clone());
        use_effect_with(allowed, move |allowed| {
            if *allowed {
                yew::platform::spawn_local(async move {
                    active.set(Some(api::get(&token, "/admin/v1/policies").await));
                });
            }
        });
    }
    if !allowed {
        return html! { <section>{ not_allowed("admin.read_policies") }</section> };
    }
    let validate = {
        let (token, candidate, validation) = (token.clone(), candidate.clone(), validation.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let text = (*candidate).clone();
            if text.trim().is_empty() {
                validation.set(Some(Err(
                    "Paste a candidate policy set (Cedar) to validate.".into(),
                )));
                return;
            }
            let (token, validation) = (token.clone(), validation.clone());
            yew::platform::spawn_local(async move {
                validation.set(Some(
                    api::post(
                        &token,
                        "/admin/v1/policies/validate",
                        &json!({"policies": text}),
                    )
                    .await,
                ));
            });
        })
    };
    let whatif = {
        let (token, answer, error) = (token.clone(), answer.clone(), error.clone());
        let fields = (
            p_id.clone(),
            p_type.clone(),
            p_tenant.clone(),
            p_roles.clone(),
            p_labels.clone(),
            action.clone(),
            r_type.clone(),
            r_id.clone(),
            r_server.clone(),
            r_risk.clone(),
            r_labels.clone(),
            context.clone(),
        );
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let (
                p_id,
                p_type,
                p_tenant,
                p_roles,
                p_labels,
                action,
                r_type,
                r_id,
                r_server,
                r_risk,
                r_labels,
                context,
            ) = &fields;
            if p_id.trim().is_empty() {
                error.set(Some(
                    "Name the principal (an agent's or a human's id).".into(),
                ));
                return;
            }
            if r_id.trim().is_empty() && r_type.as_str() != "Gateway" {
                error.set(Some(format!(
                    "Name the {} the action is on.",
                    r_type.as_str()
                )));
                return;
            }
            if r_type.as_str() == "Tool" && r_server.trim().is_empty() {
                error.set(Some("A tool belongs to a server: name the server.".into()));
                return;
            }
            let ctx: Value = if context.trim().is_empty() {
                json!({})
            } else {
                match serde_json::from_str(context) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        error.set(Some("Context must be a JSON object, e.g. {\"method\": \"GET\", \"path\": \"/x\"}.".into()));
                        return;
                    }
                }
            };
            let body = json!({
                "context": ctx,
                "principal": {"type": p_type.as_str(), "id": p_id.trim(), "tenant": p_tenant.trim(),
                    "roles": list(p_roles), "labels": list(p_labels)},
                "action": action.as_str(),
                "resource": resource(r_type, r_id.trim(), r_server.trim(), r_risk.trim(), r_labels),
            });
            let (token, answer, error) = (token.clone(), answer.clone(), error.clone());
            yew::platform::spawn_local(async move {
                match api::post(&token, "/admin/v1/policies/whatif", &body).await {
                    Ok(v) => {
                        error.set(None);
                        answer.set(Some(v));
                    }
                    Err(e) => {
                        answer.set(None);
                        error.set(Some(e));
                    }
                }
            });
        })
    };
    let active_view: Html = match &*active {
        Some(Ok(v)) => html! {
            <>
                { invariants_view(v) }
                <h3>{"Policies"}</h3>
                { for v["policies"].as_array().into_iter().flatten().map(|p| html! {
                    <div><b>{text(&p["id"])}</b><pre>{text(&p["text"])}</pre></div>
                }) }
            </>
        },
        Some(Err(e)) => html! { <p class="error">{e}</p> },
        None => html! { <p class="muted">{"loading…"}</p> },
    };
    let validation_view = match &*validation {
        Some(Ok(v)) if v["valid"] == true => html! {
            <div id="validation">
                <p class="ok">{format!("Valid: {} policies; adds {}, removes {}.",
                    v["policies"].as_array().map(|a| a.len()).unwrap_or(0), v["added"], v["removed"])}</p>
                { candidate_view(v) }
            </div>
        },
        Some(Ok(v)) => {
            html! { <div id="validation" class="error"><p>{"Invalid:"}</p><pre>{v["errors"].as_array().into_iter().flatten().filter_map(|e| e.as_str()).collect::<Vec<_>>().join("\n")}</pre></div> }
        }
        Some(Err(e)) => html! { <p class="error" id="validation">{e}</p> },
        None => html! {},
    };
    let answer_view = match &*answer {
        Some(v) => {
            let d = v["decision"].as_str().unwrap_or("").to_string();
            let texts: Html = v["policies"].as_array().into_iter().flatten().map(|p| html! {
                <div><b>{p["id"].as_str().unwrap_or("")}</b><pre>{p["text"].as_str().unwrap_or("")}</pre></div>
            }).collect();
            html! {
                <div id="whatif-answer">
                    <p>{"Decision: "}<b class={d.clone()} id="whatif-decision">{d}</b>{format!(" — {}", v["summary"].as_str().unwrap_or(""))}</p>
                    {texts}
                </div>
            }
        }
        None => html! {},
    };
    let ptypes = [("Agent", "agent"), ("Human", "human")];
    let actions: Vec<(&str, &str)> = ACTIONS.iter().map(|a| (*a, *a)).collect();
    let rtypes = [
        ("Tool", "Tool"),
        ("McpServer", "MCP server"),
        ("Model", "Model"),
        ("HttpRoute", "HTTP route"),
        ("Gateway", "Gateway"),
        ("Tenant", "Tenant"),
    ];
    html! {
        <>
            <section>
                <h2>{"What if…"}</h2>
                <form onsubmit={whatif}>
                    <div>
                        { input("Principal id", "wi-principal", &p_id, "agent or human id") }
                        { select("Type", "wi-ptype", &p_type, &ptypes) }
                        { input("Tenant", "wi-tenant", &p_tenant, "default") }
                        { input("Roles", "wi-roles", &p_roles, "comma-separated") }
                        { input("Labels", "wi-plabels", &p_labels, "comma-separated") }
                    </div>
                    <div>
                        { select("Action", "wi-action", &action, &actions) }
                        { select("Resource type", "wi-rtype", &r_type, &rtypes) }
                        { input("Resource id", "wi-resource", &r_id, "e.g. files__delete") }
                        { input("Server (tools)", "wi-server", &r_server, "e.g. files") }
                        { input("Risk (tools)", "wi-risk", &r_risk, "low / high") }
                        { input("Resource labels", "wi-rlabels", &r_labels, "comma-separated") }
                        { input("Context (JSON)", "wi-context", &context, "{\"method\": \"GET\", \"path\": \"/x\"}") }
                        <label>{"\u{a0}"}<button type="submit" id="wi-submit">{"Decide"}</button></label>
                    </div>
                </form>
                { error_line(&error) }
                {answer_view}
            </section>
            <section>
                <h2>{"Check a candidate set"}</h2>
                <form onsubmit={validate}>
                    { textarea("candidate", &candidate, "permit (principal, action, resource) when { … };") }
                    <button type="submit" id="validate">{"Validate"}</button>
                </form>
                {validation_view}
            </section>
            <section>
                <h2>{"Active policies"}</h2>
                {active_view}
            </section>
        </>
    }
}
