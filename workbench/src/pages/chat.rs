//! Multi-model chat through the gateway: pick one or several models, send a
//! message, and watch each answer stream in side by side. Calls go to
//! `/v1/chat/completions` with the human's own token, so they are decided by
//! policy and audited like any agent's.

use serde_json::{json, Value};
use std::cell::RefCell;
use std::rc::Rc;
use yew::prelude::*;

use super::{error_line, PageProps};
use crate::api;

#[derive(Debug, Clone, Default)]
struct Column {
    model: String,
    /// (role, text) turns.
    turns: Vec<(String, String)>,
    streaming: bool,
    error: Option<String>,
}

#[function_component(Chat)]
pub fn chat(props: &PageProps) -> Html {
    let models = use_state(|| None::<Vec<String>>);
    let chosen = use_state(Vec::<String>::new);
    let prompt = use_state(String::new);
    let error = use_state(|| None::<String>);
    let columns = use_mut_ref(Vec::<Column>::new);
    let redraw = use_force_update();
    let token = props.auth.token.clone();
    {
        let (models, chosen, error, token) =
            (models.clone(), chosen.clone(), error.clone(), token.clone());
        use_effect_with((), move |_| {
            yew::platform::spawn_local(async move {
                match api::get(&token, "/v1/models").await {
                    Ok(v) => {
                        let ids: Vec<String> = v["data"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|m| m["id"].as_str().map(str::to_string))
                            .collect();
                        if let Some(first) = ids.first() {
                            chosen.set(vec![first.clone()]);
                        }
                        models.set(Some(ids));
                    }
                    Err(e) => error.set(Some(format!("Cannot list models: {e}"))),
                }
            });
        });
    }
    let send = {
        let (columns, chosen, prompt, error, redraw, token) = (
            columns.clone(),
            chosen.clone(),
            prompt.clone(),
            error.clone(),
            redraw.clone(),
            token.clone(),
        );
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let text = prompt.trim().to_string();
            if text.is_empty() {
                error.set(Some("Type a message first.".into()));
                return;
            }
            if chosen.is_empty() {
                error.set(Some("Pick at least one model.".into()));
                return;
            }
            error.set(None);
            prompt.set(String::new());
            // Keep one column per chosen model, in the order chosen.
            {
                let mut cols = columns.borrow_mut();
                cols.retain(|c| chosen.contains(&c.model));
                for m in chosen.iter() {
                    if !cols.iter().any(|c| &c.model == m) {
                        cols.push(Column {
                            model: m.clone(),
                            ..Column::default()
                        });
                    }
                }
            }
            let n = columns.borrow().len();
            for i in 0..n {
                let (model, messages) = {
                    let mut cols = columns.borrow_mut();
                    let c = &mut cols[i];
                    c.turns.push(("user".into(), text.clone()));
                    let messages: Vec<Value> = c
                        .turns
                        .iter()
                        .map(|(r, t)| json!({"role": r, "content": t}))
                        .collect();
                    c.turns.push(("assistant".into(), String::new()));
                    c.streaming = true;
                    c.error = None;
                    (c.model.clone(), Value::Array(messages))
                };
                let (columns, redraw, token): (Rc<RefCell<Vec<Column>>>, _, _) =
                    (columns.clone(), redraw.clone(), token.clone());
                yew::platform::spawn_local(async move {
                    let result = api::chat_stream(&token, &model, &messages, |piece| {
                        if let Some(c) = columns.borrow_mut().get_mut(i) {
                            if let Some(last) = c.turns.last_mut() {
                                last.1.push_str(piece);
                            }
                        }
                        redraw.force_update();
                    })
                    .await;
                    if let Some(c) = columns.borrow_mut().get_mut(i) {
                        c.streaming = false;
                        c.error = result.err();
                    }
                    redraw.force_update();
                });
            }
            redraw.force_update();
        })
    };
    let picker: Html = match &*models {
        None => html! { <span class="muted">{"loading models…"}</span> },
        Some(list) if list.is_empty() => html! { <span class="muted">{"No model is routed for you."}</span> },
        Some(list) => list
            .iter()
            .map(|m| {
                let onchange = {
                    let (chosen, m) = (chosen.clone(), m.clone());
                    Callback::from(move |_: Event| {
                        let mut next = (*chosen).clone();
                        if let Some(pos) = next.iter().position(|x| x == &m) {
                            next.remove(pos);
                        } else {
                            next.push(m.clone());
                        }
                        chosen.set(next);
                    })
                };
                html! {
                    <label class="inline">
                        <input type="checkbox" id={format!("model-{m}")} checked={chosen.contains(m)} {onchange} />
                        {m}
                    </label>
                }
            })
            .collect(),
    };
    let cols: Html = columns
        .borrow()
        .iter()
        .map(|c| {
            let turns: Html = c
                .turns
                .iter()
                .map(|(role, text)| html! { <div class={classes!("msg", role.clone())}>{text}</div> })
                .collect();
            html! {
                <section class="chat-column" data-model={c.model.clone()}>
                    <h2>{&c.model}{ if c.streaming { " · streaming…" } else { "" } }</h2>
                    {turns}
                    { error_line(&c.error) }
                </section>
            }
        })
        .collect();
    html! {
        <>
            <section>
                <h2>{"Chat"}</h2>
                <div>{picker}</div>
                <form onsubmit={send}>
                    { super::textarea("chat-input", &prompt, "Your message") }
                    <button id="chat-send" type="submit">{"Send"}</button>
                </form>
                { error_line(&error) }
            </section>
            <div class="cols">{cols}</div>
        </>
    }
}
