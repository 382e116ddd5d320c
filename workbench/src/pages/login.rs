//! Login with an API key (`lat_...`) or a JWT. The token is checked with
//! `whoami` before it is kept; a refusal shows the gateway's reason.

use yew::prelude::*;

use crate::api;
use crate::app::Auth;

#[derive(Properties, PartialEq)]
pub struct LoginProps {
    pub on_login: Callback<Auth>,
}

#[function_component(Login)]
pub fn login(props: &LoginProps) -> Html {
    let token = use_state(String::new);
    let error = use_state(|| None::<String>);
    let busy = use_state(|| false);
    let onsubmit = {
        let (token, error, busy, on_login) = (
            token.clone(),
            error.clone(),
            busy.clone(),
            props.on_login.clone(),
        );
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let t = token.trim().to_string();
            if t.is_empty() {
                error.set(Some("Paste an API key (lat_…) or a JWT to log in.".into()));
                return;
            }
            if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                error.set(Some(
                    "A token has no spaces or line breaks: paste it whole, without `Bearer`."
                        .into(),
                ));
                return;
            }
            let (error, busy, on_login) = (error.clone(), busy.clone(), on_login.clone());
            busy.set(true);
            yew::platform::spawn_local(async move {
                match api::get(&t, "/admin/v1/whoami").await {
                    Ok(me) => {
                        error.set(None);
                        on_login.emit(Auth { token: t, me });
                    }
                    Err(e) => error.set(Some(format!("Login refused: {e}"))),
                }
                busy.set(false);
            });
        })
    };
    let oninput = {
        let token = token.clone();
        Callback::from(move |e: InputEvent| {
            token.set(
                e.target_unchecked_into::<web_sys::HtmlInputElement>()
                    .value(),
            );
        })
    };
    html! {
        <main>
            <section class="login">
                <h2>{"Lattice workbench"}</h2>
                <p class="muted">{"Log in with your API key or a JWT from your identity provider. What you may see and do is decided by the gateway's policies, and everything you do is audited."}</p>
                <form {onsubmit}>
                    <label>{"API key or JWT"}
                        <input id="token" type="password" autocomplete="off" size="60" value={(*token).clone()} {oninput} />
                    </label>
                    <div><button id="login" type="submit" disabled={*busy}>{ if *busy { "Checking…" } else { "Log in" } }</button></div>
                </form>
                { super::error_line(&error) }
            </section>
        </main>
    }
}
