//! One module per page. Each takes the logged-in human (`Auth`) and talks
//! to the gateway itself.

use std::rc::Rc;
use yew::prelude::*;

use crate::app::Auth;

pub mod audit;
pub mod chat;
pub mod login;
pub mod mcp;
pub mod models;
pub mod overview;
pub mod policies;
pub mod registry;

/// Every page's properties.
#[derive(Properties, PartialEq)]
pub struct PageProps {
    pub auth: Rc<Auth>,
}

/// A text input bound to a state handle.
pub fn input(label: &str, id: &str, value: &UseStateHandle<String>, placeholder: &str) -> Html {
    let oninput = {
        let value = value.clone();
        Callback::from(move |e: InputEvent| {
            value.set(
                e.target_unchecked_into::<web_sys::HtmlInputElement>()
                    .value(),
            );
        })
    };
    html! {
        <label>{label}
            <input id={id.to_string()} value={(**value).clone()} placeholder={placeholder.to_string()} {oninput} />
        </label>
    }
}

/// A select bound to a state handle: (value, label) options.
pub fn select(
    label: &str,
    id: &str,
    value: &UseStateHandle<String>,
    options: &[(&str, &str)],
) -> Html {
    let onchange = {
        let value = value.clone();
        Callback::from(move |e: Event| {
            value.set(
                e.target_unchecked_into::<web_sys::HtmlSelectElement>()
                    .value(),
            );
        })
    };
    let current = (**value).clone();
    html! {
        <label>{label}
            <select id={id.to_string()} {onchange}>
                { for options.iter().map(|(v, l)| html! {
                    <option value={v.to_string()} selected={current == *v}>{*l}</option>
                }) }
            </select>
        </label>
    }
}

/// A textarea bound to a state handle.
pub fn textarea(id: &str, value: &UseStateHandle<String>, placeholder: &str) -> Html {
    let oninput = {
        let value = value.clone();
        Callback::from(move |e: InputEvent| {
            value.set(
                e.target_unchecked_into::<web_sys::HtmlTextAreaElement>()
                    .value(),
            );
        })
    };
    html! {
        <textarea id={id.to_string()} value={(**value).clone()} placeholder={placeholder.to_string()} {oninput} />
    }
}

/// An error line, or nothing.
pub fn error_line(e: &Option<String>) -> Html {
    match e {
        Some(e) => html! { <p class="error" role="alert">{e}</p> },
        None => html! {},
    }
}

/// The notice shown where the policies do not allow a page's action.
pub fn not_allowed(action: &str) -> Html {
    html! { <p class="muted">{format!("Your policies do not allow `{action}`, so this section is hidden.")}</p> }
}
