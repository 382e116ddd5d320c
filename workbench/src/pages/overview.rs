//! Live traffic: requests/s, deny rate, error rate, p50/p99 latency, top
//! agents, tools and models over the last five minutes, polled every two
//! seconds; a requests/s line of the recent polls and a per-minute bar chart
//! of decisions.

use gloo_timers::callback::Interval;
use serde_json::Value;
use yew::prelude::*;

use super::PageProps;
use crate::api;
use crate::view::{micros, percent};

const SAMPLES: usize = 60;

fn count(pairs: &Value, key: &str) -> u64 {
    pairs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p[0] == key)
        .map(|p| p[1].as_u64().unwrap_or(0))
        .sum()
}

fn top(title: &str, id: &str, pairs: &Value) -> Html {
    let rows: Html = pairs
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let name = match p[0].as_str().unwrap_or("") {
                "" => "(unauthenticated)",
                n => n,
            };
            html! { <tr><td>{name}</td><td>{p[1].as_u64().unwrap_or(0)}</td></tr> }
        })
        .collect();
    html! {
        <div>
            <h2>{title}</h2>
            <table id={id.to_string()}><tr><th>{"name"}</th><th>{"calls"}</th></tr>{rows}</table>
        </div>
    }
}

fn line(samples: &[f64]) -> Html {
    let (w, h) = (600.0, 120.0);
    let max = samples.iter().cloned().fold(1.0_f64, f64::max);
    let points: Vec<String> = samples
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = i as f64 * w / (SAMPLES - 1) as f64;
            format!("{x:.1},{:.1}", h - v / max * (h - 10.0))
        })
        .collect();
    html! {
        <svg class="chart" id="rps-chart" width="600" height="120" viewBox="0 0 600 120">
            <polyline points={points.join(" ")} />
            <text x="6" y="14" fill="#8a98a8" font-size="11">{format!("max {max:.1}/s")}</text>
        </svg>
    }
}

fn bars(per_minute: &Value) -> Html {
    // (minute, decision, count) rows → stacked bars per minute.
    let rows: Vec<(u64, String, u64)> = per_minute
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r[0].as_u64().unwrap_or(0),
                r[1].as_str().unwrap_or("").to_string(),
                r[2].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let mut minutes: Vec<u64> = rows.iter().map(|r| r.0).collect();
    minutes.dedup();
    let total = |m: u64| rows.iter().filter(|r| r.0 == m).map(|r| r.2).sum::<u64>();
    let max = minutes.iter().map(|m| total(*m)).max().unwrap_or(1).max(1) as f64;
    let (h, bw) = (120.0, 40.0);
    let rects: Html = minutes
        .iter()
        .enumerate()
        .flat_map(|(i, m)| {
            let mut y = h;
            rows.iter()
                .filter(|r| r.0 == *m)
                .map(|r| {
                    let bh = r.2 as f64 / max * (h - 10.0);
                    y -= bh;
                    html! { <rect class={r.1.clone()} x={format!("{}", i as f64 * (bw + 6.0))} y={format!("{y:.1}")}
                        width={bw.to_string()} height={format!("{bh:.1}")} /> }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    html! {
        <svg class="chart" id="minute-chart" width="600" height="120" viewBox="0 0 600 120">{rects}</svg>
    }
}

#[function_component(Overview)]
pub fn overview(props: &PageProps) -> Html {
    let stats = use_state(|| None::<Value>);
    let error = use_state(|| None::<String>);
    let samples = use_mut_ref(Vec::<f64>::new);
    let allowed = props.auth.can("admin.read_audit");
    {
        let (stats, error, samples, token) = (
            stats.clone(),
            error.clone(),
            samples.clone(),
            props.auth.token.clone(),
        );
        use_effect_with(allowed, move |allowed| {
            let poll = move || {
                let (stats, error, samples, token) =
                    (stats.clone(), error.clone(), samples.clone(), token.clone());
                yew::platform::spawn_local(async move {
                    match api::get(&token, "/admin/v1/stats?since=300").await {
                        Ok(v) => {
                            let window = v["window_s"].as_f64().unwrap_or(300.0).max(1.0);
                            let calls: u64 = v["overall"]["decisions"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|p| p[1].as_u64().unwrap_or(0))
                                .sum();
                            let mut s = samples.borrow_mut();
                            s.push(calls as f64 / window);
                            if s.len() > SAMPLES {
                                s.remove(0);
                            }
                            drop(s);
                            error.set(None);
                            stats.set(Some(v));
                        }
                        Err(e) => error.set(Some(e)),
                    }
                });
            };
            let interval = allowed.then(|| {
                poll();
                Interval::new(2_000, poll)
            });
            move || drop(interval)
        });
    }
    if !allowed {
        return html! { <section>{ super::not_allowed("admin.read_audit") }</section> };
    }
    let Some(v) = (*stats).clone() else {
        return html! { <section><p class="muted">{"Loading…"}</p>{ super::error_line(&error) }</section> };
    };
    let o = &v["overall"];
    let window = v["window_s"].as_f64().unwrap_or(300.0).max(1.0);
    let decisions = &o["decisions"];
    let calls = ["allow", "deny", "error"]
        .iter()
        .map(|d| count(decisions, d))
        .sum::<u64>();
    let tile = |id: &str, k: &str, val: String| {
        html! {
            <div class="tile" id={id.to_string()}><div class="v">{val}</div><div class="k">{k.to_string()}</div></div>
        }
    };
    html! {
        <>
            <section>
                <h2>{"Last 5 minutes"}</h2>
                { super::error_line(&error) }
                <div class="tiles">
                    { tile("tile-rps", "requests/s", format!("{:.2}", calls as f64 / window)) }
                    { tile("tile-deny", "deny rate", percent(count(decisions, "deny"), calls)) }
                    { tile("tile-error", "error rate (5xx)", percent(o["server_errors"].as_u64().unwrap_or(0), o["outcomes"].as_u64().unwrap_or(0))) }
                    { tile("tile-p50", "p50 latency", micros(o["latency_p50_us"].as_u64().unwrap_or(0))) }
                    { tile("tile-p99", "p99 latency", micros(o["latency_p99_us"].as_u64().unwrap_or(0))) }
                    { tile("tile-tokens", "tokens in / out", format!("{} / {}", o["tokens_in"], o["tokens_out"])) }
                </div>
            </section>
            <section class="cols">
                <div><h2>{"Requests/s (polled every 2 s)"}</h2>{ line(&samples.borrow()) }</div>
                <div><h2>{"Decisions per minute"}</h2>{ bars(&o["per_minute"]) }</div>
            </section>
            <section class="cols">
                { top("Top agents", "top-agents", &o["top_principals"]) }
                { top("Top tools", "top-tools", &v["top_tools"]) }
                { top("Top models", "top-models", &v["top_models"]) }
            </section>
        </>
    }
}
