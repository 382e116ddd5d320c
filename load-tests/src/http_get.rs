//! GET load against one URL, shared by the HTTP scenarios: open-loop at a
//! fixed rate (each request its own task: no coordinated omission) and
//! closed-loop saturation.

use anyhow::{bail, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{closed_loop, open_loop, Fixed};

pub async fn wait_ok(client: &reqwest::Client, url: &str, auth: Option<&str>) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if send(get(client, url, auth)).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} never answered 200")
}

pub fn get(client: &reqwest::Client, url: &str, auth: Option<&str>) -> reqwest::RequestBuilder {
    let req = client.get(url);
    match auth {
        Some(a) => req.header("authorization", a),
        None => req,
    }
}

/// Sends one request and reads the whole body; true on a 2xx.
pub async fn send(req: reqwest::RequestBuilder) -> bool {
    match req.send().await {
        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// Open-loop GETs at a fixed rate (`crate::open_loop`).
pub async fn fixed_rate(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    rate: u64,
    seconds: u64,
) -> Fixed {
    open_loop(rate, seconds, |_| send(get(client, url, auth))).await
}

/// Closed-loop GETs.
pub async fn saturation(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    concurrency: usize,
    seconds: u64,
) -> (f64, usize) {
    let (client, url) = (client.clone(), Arc::new(url.to_string()));
    let auth = auth.map(|a| Arc::new(a.to_string()));
    closed_loop(concurrency, seconds, move || {
        let req = get(&client, &url, auth.as_deref().map(String::as_str));
        send(req)
    })
    .await
}

/// One target of an interleaved comparison: a name, a URL, its bearer.
pub struct Target {
    pub name: String,
    pub url: String,
    pub auth: String,
}

/// Measures each target at a fixed rate, then at saturation, round after
/// round interleaved (A, B, C, A, B, C...) so drift on a shared machine
/// hits all alike; prints the medians of the rounds as a table. Returns
/// each target's median p99, in the order given.
pub async fn compare(
    client: &reqwest::Client,
    targets: &[Target],
    rate: u64,
    seconds: u64,
    saturation_seconds: u64,
    concurrency: usize,
    rounds: usize,
) -> Result<Vec<f64>> {
    for t in targets {
        wait_ok(client, &t.url, Some(&t.auth)).await?;
        let _ = fixed_rate(client, &t.url, Some(&t.auth), rate, 1).await; // warm-up
    }
    let n = targets.len();
    let mut fixed: Vec<Vec<Fixed>> = (0..n).map(|_| Vec::new()).collect();
    let mut sat: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut errors = vec![0usize; n];
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let f = fixed_rate(client, &t.url, Some(&t.auth), rate, seconds).await;
            errors[i] += f.errors;
            fixed[i].push(f);
            let (rps, errs) = saturation(
                client,
                &t.url,
                Some(&t.auth),
                concurrency,
                saturation_seconds,
            )
            .await;
            errors[i] += errs;
            sat[i].push(rps);
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "{rounds} rounds; fixed {rate} requests/s for {seconds} s, then {concurrency} clients for {saturation_seconds} s; medians of the rounds\n"
    );
    println!("| target | p50 ms | p90 ms | p99 ms | saturation requests/s | errors |");
    println!("|---|---|---|---|---|---|");
    let mut p99s = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let pick = |f: fn(&Fixed) -> f64| median(fixed[i].iter().map(f).collect());
        let p99 = pick(|f| f.p99);
        println!(
            "| {} | {:.3} | {:.3} | {p99:.3} | {:.0} | {} |",
            t.name,
            pick(|f| f.p50),
            pick(|f| f.p90),
            median(sat[i].clone()),
            errors[i]
        );
        p99s.push(p99);
    }
    Ok(p99s)
}
