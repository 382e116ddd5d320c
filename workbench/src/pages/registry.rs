//! The Lattice Registry: search the catalog (bundled and the config's
//! catalogs), open an entry to see its trust and exactly what installing
//! it would change (the diff of the config and the files it writes, or
//! why the gateway would refuse it), install it, and uninstall what is
//! installed. All under `admin.install`.

use serde_json::{json, Value};
use yew::prelude::*;

use super::{error_line, input, not_allowed, select, PageProps};
use crate::api;

fn slug(name: &str) -> String {
    name.replace(['/', '.', '@'], "-")
}

#[function_component(Registry)]
pub fn registry(props: &PageProps) -> Html {
    let allowed = props.auth.can("admin.install");
    let search = use_state(String::new);
    let kind = use_state(String::new);
    let entries = use_state(|| None::<Result<Value, String>>);
    let installed = use_state(|| None::<Result<Value, String>>);
    let shown = use_state(|| None::<Result<Value, String>>);
    let notice = use_state(|| None::<String>);
    let error = use_state(|| None::<String>);
    let busy = use_state(|| false);
    let tick = use_state(|| 0u32);
    let token = props.auth.token.clone();
    {
        let (entries, installed, token, search, kind) = (
            entries.clone(),
            installed.clone(),
            token.clone(),
            search.clone(),
            kind.clone(),
        );
        use_effect_with(*tick, move |_| {
            yew::platform::spawn_local(async move {
                if !allowed {
                    return;
                }
                let url = format!(
                    "/admin/v1/registry/catalog?search={}&kind={}",
                    js_sys::encode_uri_component(&search),
                    js_sys::encode_uri_component(&kind)
                );
                entries.set(Some(api::get(&token, &url).await));
                installed.set(Some(api::get(&token, "/admin/v1/registry/installed").await));
            });
        });
    }
    if !allowed {
        return html! { <section>{ not_allowed("admin.install") }</section> };
    }
    let refresh = {
        let tick = tick.clone();
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            tick.set(*tick + 1);
        })
    };
    let show = |name: String| {
        let (token, shown, error) = (token.clone(), shown.clone(), error.clone());
        Callback::from(move |_: MouseEvent| {
            let (token, shown, error, name) =
                (token.clone(), shown.clone(), error.clone(), name.clone());
            shown.set(None);
            yew::platform::spawn_local(async move {
                error.set(None);
                let r = api::get(&token, &format!("/admin/v1/registry/entries/{name}")).await;
                shown.set(Some(r));
            });
        })
    };
    let change = |name: String, install: bool| {
        let (token, notice, error, tick, shown, busy) = (
            token.clone(),
            notice.clone(),
            error.clone(),
            tick.clone(),
            shown.clone(),
            busy.clone(),
        );
        Callback::from(move |_: MouseEvent| {
            let (token, notice, error, tick, shown, busy, name) = (
                token.clone(),
                notice.clone(),
                error.clone(),
                tick.clone(),
                shown.clone(),
                busy.clone(),
                name.clone(),
            );
            busy.set(true);
            yew::platform::spawn_local(async move {
                let r = if install {
                    api::post(
                        &token,
                        "/admin/v1/registry/installed",
                        &json!({"name": name}),
                    )
                    .await
                } else {
                    api::call(
                        &token,
                        "DELETE",
                        &format!("/admin/v1/registry/installed/{name}"),
                        None,
                    )
                    .await
                };
                busy.set(false);
                match r {
                    Ok(v) => {
                        error.set(None);
                        notice.set(Some(if install {
                            format!(
                                "Installed {} ({}).",
                                v["installed"].as_str().unwrap_or(""),
                                v["trust"].as_str().unwrap_or("")
                            )
                        } else {
                            format!(
                                "Uninstalled {}: the files are as they were.",
                                v["uninstalled"].as_str().unwrap_or("")
                            )
                        }));
                        // Show the entry again: now installed, or not.
                        let r =
                            api::get(&token, &format!("/admin/v1/registry/entries/{name}")).await;
                        shown.set(Some(r));
                    }
                    Err(e) => error.set(Some(format!(
                        "{} refused: {e}",
                        if install { "Install" } else { "Uninstall" }
                    ))),
                }
                tick.set(*tick + 1);
            });
        })
    };
    let entry_rows: Html = match &*entries {
        Some(Ok(v)) => v["entries"].as_array().into_iter().flatten().map(|e| {
            let name = e["name"].as_str().unwrap_or("").to_string();
            html! {
                <tr id={format!("entry-{}", slug(&name))}>
                    <td>{e["kind"].as_str().unwrap_or("")}</td>
                    <td>{&name}</td>
                    <td>{e["version"].as_str().unwrap_or("")}</td>
                    <td>{e["description"].as_str().unwrap_or("")}</td>
                    <td class={if e["trusted"] == true { "allow" } else { "deny" }}>{e["trust"].as_str().unwrap_or("")}</td>
                    <td>{e["installed"].as_str().unwrap_or("")}</td>
                    <td><button id={format!("show-{}", slug(&name))} onclick={show(name.clone())}>{"Show"}</button></td>
                </tr>
            }
        }).collect(),
        Some(Err(e)) => html! { <tr><td colspan="7" class="error">{e}</td></tr> },
        None => html! {},
    };
    let installed_rows: Html = match &*installed {
        Some(Ok(v)) => v["installed"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                let name = i["name"].as_str().unwrap_or("").to_string();
                html! {
                    <tr id={format!("installed-{}", slug(&name))}>
                        <td>{i["kind"].as_str().unwrap_or("")}</td>
                        <td>{&name}</td>
                        <td>{i["version"].as_str().unwrap_or("")}</td>
                        <td>{i["by"].as_str().unwrap_or("")}</td>
                        <td>{i["trust"].as_str().unwrap_or("")}</td>
                    </tr>
                }
            })
            .collect(),
        Some(Err(e)) => html! { <tr><td colspan="5" class="error">{e}</td></tr> },
        None => html! {},
    };
    let detail: Html = match &*shown {
        None => html! {},
        Some(Err(e)) => html! { <section id="reg-entry"><p class="error">{e}</p></section> },
        Some(Ok(v)) => {
            let name = v["name"].as_str().unwrap_or("").to_string();
            let installed = v["installed"].as_str();
            let preview = &v["install"];
            let refused = preview["refused"].as_str();
            html! {
                <section id="reg-entry">
                    <h2>{format!("{name} {}", v["version"].as_str().unwrap_or(""))}</h2>
                    <p>{v["entry"]["description"].as_str().unwrap_or("")}</p>
                    <p class={if v["trusted"] == true { "allow" } else { "deny" }} id="reg-trust">{v["trust"].as_str().unwrap_or("")}</p>
                    { match installed {
                        Some(ver) => html! {
                            <>
                                <p id="reg-installed-version">{format!("Installed: version {ver}.")}</p>
                                <button id="reg-uninstall" disabled={*busy} onclick={change(name.clone(), false)}>{"Uninstall"}</button>
                            </>
                        },
                        None => html! {
                            <>
                                <h3>{"What installing it changes"}</h3>
                                <pre id="reg-diff" class="diff">{preview["diff"].as_str().unwrap_or("")}</pre>
                                { for preview["notes"].as_array().into_iter().flatten().map(|n| html! { <p class="muted">{n.as_str().unwrap_or("")}</p> }) }
                                { match refused {
                                    Some(r) => html! { <p class="error" id="reg-refused">{format!("The gateway would refuse it: {r}")}</p> },
                                    None => html! { <button id="reg-install" disabled={*busy} onclick={change(name.clone(), true)}>{"Install"}</button> },
                                } }
                            </>
                        },
                    } }
                </section>
            }
        }
    };
    html! {
        <>
            { match &*notice { Some(n) => html! { <p class="ok" id="notice">{n}</p> }, None => html! {} } }
            { error_line(&error) }
            <section>
                <h2>{"Catalog"}</h2>
                <form onsubmit={refresh}>
                    { input("Search", "reg-search", &search, "name, title or description") }
                    { select("Kind", "reg-kind", &kind, &[("", "any"), ("server", "MCP servers"), ("policy-pack", "policy packs"), ("model-preset", "model presets"), ("template", "templates")]) }
                    <label>{"\u{a0}"}<button type="submit" id="reg-go">{"Search"}</button></label>
                </form>
                <table id="reg-entries"><tr><th>{"kind"}</th><th>{"name"}</th><th>{"latest"}</th><th>{"description"}</th><th>{"trust"}</th><th>{"installed"}</th><th></th></tr>{entry_rows}</table>
            </section>
            {detail}
            <section>
                <h2>{"Installed"}</h2>
                <table id="reg-installed"><tr><th>{"kind"}</th><th>{"name"}</th><th>{"version"}</th><th>{"by"}</th><th>{"trust"}</th></tr>{installed_rows}</table>
            </section>
        </>
    }
}
