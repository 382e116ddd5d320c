//! The shell: login state, navigation between pages (kept in the URL's
//! fragment, `#/audit`), and the header with who is logged in.

use serde_json::Value;
use std::rc::Rc;
use yew::prelude::*;

use crate::api;
use crate::pages;

/// The logged-in human: the token and what `whoami` said.
#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub token: String,
    pub me: Value,
}

impl Auth {
    /// Whether the policies let this human take an admin action.
    pub fn can(&self, action: &str) -> bool {
        self.me["can"][action].as_bool().unwrap_or(false)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Overview,
    Chat,
    Audit,
    Mcp,
    Models,
    Policies,
    Registry,
}

const PAGES: [(Page, &str, &str); 7] = [
    (Page::Overview, "overview", "Overview"),
    (Page::Chat, "chat", "Chat"),
    (Page::Audit, "audit", "Audit"),
    (Page::Mcp, "mcp", "MCP servers & tools"),
    (Page::Models, "models", "Models"),
    (Page::Policies, "policies", "Policies"),
    (Page::Registry, "registry", "Registry"),
];

fn page_from_hash() -> Page {
    let hash = web_sys::window()
        .and_then(|w| w.location().hash().ok())
        .unwrap_or_default();
    let slug = hash.trim_start_matches('#').trim_start_matches('/');
    PAGES
        .iter()
        .find(|(_, s, _)| *s == slug)
        .map_or(Page::Overview, |(p, _, _)| *p)
}

fn set_hash(slug: &str) {
    if let Some(w) = web_sys::window() {
        let _ = w.location().set_hash(&format!("/{slug}"));
    }
}

#[function_component(App)]
pub fn app() -> Html {
    let auth = use_state(|| None::<Rc<Auth>>);
    let page = use_state(page_from_hash);
    let checking = use_state(|| api::saved_token().is_some());
    {
        // A token kept in this tab logs in again after a reload.
        let (auth, checking) = (auth.clone(), checking.clone());
        use_effect_with((), move |_| {
            if let Some(token) = api::saved_token() {
                yew::platform::spawn_local(async move {
                    if let Ok(me) = api::get(&token, "/admin/v1/whoami").await {
                        auth.set(Some(Rc::new(Auth { token, me })));
                    } else {
                        api::save_token(None);
                    }
                    checking.set(false);
                });
            }
        });
    }
    let on_login = {
        let auth = auth.clone();
        Callback::from(move |a: Auth| {
            api::save_token(Some(&a.token));
            auth.set(Some(Rc::new(a)));
        })
    };
    let logout = {
        let auth = auth.clone();
        Callback::from(move |_: MouseEvent| {
            api::save_token(None);
            auth.set(None);
        })
    };
    if *checking {
        return html! { <main><p class="muted">{"Checking your session…"}</p></main> };
    }
    let Some(a) = (*auth).clone() else {
        return html! { <pages::login::Login on_login={on_login} /> };
    };
    let nav: Html = PAGES
        .iter()
        .map(|(p, slug, title)| {
            let onclick = {
                let page = page.clone();
                let (p, slug) = (*p, *slug);
                Callback::from(move |_: MouseEvent| {
                    set_hash(slug);
                    page.set(p);
                })
            };
            let class = if *page == *p { "active" } else { "" };
            html! { <a class={class} id={format!("nav-{slug}")} {onclick}>{*title}</a> }
        })
        .collect();
    let me = &a.me;
    let body = match *page {
        Page::Overview => html! { <pages::overview::Overview auth={a.clone()} /> },
        Page::Chat => html! { <pages::chat::Chat auth={a.clone()} /> },
        Page::Audit => html! { <pages::audit::Audit auth={a.clone()} /> },
        Page::Mcp => html! { <pages::mcp::Mcp auth={a.clone()} /> },
        Page::Models => html! { <pages::models::Models auth={a.clone()} /> },
        Page::Policies => html! { <pages::policies::Policies auth={a.clone()} /> },
        Page::Registry => html! { <pages::registry::Registry auth={a.clone()} /> },
    };
    html! {
        <>
            <header>
                <h1>{"Lattice"}</h1>
                <nav>{nav}</nav>
                <span class="who" id="who">
                    {format!("{} ({}, tenant {})", me["principal"].as_str().unwrap_or("?"),
                        me["type"].as_str().unwrap_or("?"), me["tenant"].as_str().unwrap_or("?"))}
                </span>
                <button class="secondary" onclick={logout}>{"Log out"}</button>
            </header>
            <main>{body}</main>
        </>
    }
}
