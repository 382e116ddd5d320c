//! GET load against one URL, shared by the HTTP scenarios: open-loop at a
//! fixed rate (each request its own task: no coordinated omission) and
//! closed-loop saturation.

use anyhow::{bail, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{closed_loop, Fixed};

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

/// Open-loop load: request i is sent at start + i/rate.
pub async fn fixed_rate(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    rate: u64,
    seconds: u64,
) -> Fixed {
    let total = (rate * seconds) as usize;
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + Duration::from_nanos(i as u64 * 1_000_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let req = get(client, url, auth);
        tasks.push(tokio::spawn(async move {
            // Each request is its own task, so a slow answer never delays the
            // next send (no coordinated omission); latency counts from the
            // send itself, not from the 1 ms-granular timer's deadline.
            let sent = Instant::now();
            let ok = send(req).await;
            (sent.elapsed(), ok)
        }));
    }
    let mut lat = Vec::with_capacity(total);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((d, true)) => lat.push(d),
            _ => errors += 1,
        }
    }
    Fixed::from_samples(lat, errors, total)
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
