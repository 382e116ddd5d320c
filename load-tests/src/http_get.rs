//! GET load against one URL, shared by the HTTP scenarios: open-loop at a
//! fixed rate (each request its own task: no coordinated omission) and
//! closed-loop saturation; and what one target adds at p99 over another,
//! round by round, against a budget (`added_p99`).
//!
//! Must never: call a budget met or missed that the rounds cannot tell
//! from chance, or pair p99s of different rounds.

use anyhow::{bail, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::compare::{median, paired::judge, quiet_disk, targets::settle};
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

/// One target of an interleaved comparison: a name, a URL, its bearer,
/// and the gateway's process (waited on to be idle before any target is
/// measured).
pub struct Target {
    pub name: String,
    pub url: String,
    pub auth: String,
    pub pid: u32,
}

/// Before any measurement: every gateway (`pids`) idle and the disk
/// written back, so what one gateway still does after its saturation run
/// (its audit store's fill and checkpoints, a trace exporter's backlog)
/// never lands in the next one's figures. Without it (2026-12-07, the
/// trace export scenario, 8 rounds) two fixed-rate runs that followed
/// another gateway's saturation run had p99s near 10 and 41 ms over the
/// gateway without traces; with it, in 6 rounds, none more than 0.52 ms
/// over.
pub async fn quiet(pids: &[u32]) {
    for pid in pids {
        settle(*pid).await;
    }
    quiet_disk();
}

/// Measures each target at a fixed rate, then at saturation, round after
/// round interleaved (A, B, C, A, B, C...) so drift on a shared machine
/// hits all alike, each measurement on a quiet machine (`quiet`); prints
/// the medians of the rounds as a table. Returns each target's p99 (ms) at
/// the fixed rate, round by round, in the order given.
pub async fn compare(
    client: &reqwest::Client,
    targets: &[Target],
    rate: u64,
    seconds: u64,
    saturation_seconds: u64,
    concurrency: usize,
    rounds: usize,
) -> Result<Vec<Vec<f64>>> {
    for t in targets {
        wait_ok(client, &t.url, Some(&t.auth)).await?;
        let _ = fixed_rate(client, &t.url, Some(&t.auth), rate, 1).await; // warm-up
    }
    let n = targets.len();
    let mut fixed: Vec<Vec<Fixed>> = (0..n).map(|_| Vec::new()).collect();
    let mut sat: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut errors = vec![0usize; n];
    let pids: Vec<u32> = targets.iter().map(|t| t.pid).collect();
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            quiet(&pids).await;
            let f = fixed_rate(client, &t.url, Some(&t.auth), rate, seconds).await;
            errors[i] += f.errors;
            fixed[i].push(f);
            quiet(&pids).await;
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
    println!(
        "{rounds} rounds; fixed {rate} requests/s for {seconds} s, then {concurrency} clients for {saturation_seconds} s; medians of the rounds\n"
    );
    println!("| target | p50 ms | p90 ms | p99 ms | saturation requests/s | errors |");
    println!("|---|---|---|---|---|---|");
    for (i, t) in targets.iter().enumerate() {
        let pick = |f: fn(&Fixed) -> f64| median(&fixed[i].iter().map(f).collect::<Vec<_>>());
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.0} | {} |",
            t.name,
            pick(|f| f.p50),
            pick(|f| f.p90),
            pick(|f| f.p99),
            median(&sat[i]),
            errors[i]
        );
    }
    Ok(fixed
        .iter()
        .map(|rounds| rounds.iter().map(|f| f.p99).collect())
        .collect())
}

/// What `other` adds at p99 over `base` (ms, the same round's two runs
/// paired), in words: the median and spread of the rounds' differences,
/// and, given a `budget` (ms), whether the rounds show it within (a
/// one-sided sign test at 5% on the rounds within and over the budget),
/// over, or cannot tell yet.
pub fn added_p99(base: &[f64], other: &[f64], budget: Option<f64>) -> String {
    let added: Vec<f64> = base
        .iter()
        .zip(other)
        .filter(|(b, o)| b.is_finite() && o.is_finite())
        .map(|(b, o)| o - b)
        .collect();
    let n = added.len();
    if n == 0 {
        return "no round measured both".into();
    }
    let lo = added.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = added.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let figure = format!(
        "{:.3} ms [{lo:.3} to {hi:.3}] over {n} rounds",
        median(&added)
    );
    let Some(budget) = budget else {
        return figure;
    };
    let within = added.iter().filter(|a| **a <= budget).count();
    let verdict = judge(within, n, ("within", "over"), &format!("{budget} ms"));
    format!("{figure}, within {budget} ms in {within} of {n}: {verdict}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::added_p99;

    /// The verdict is a table of rounds: within, over, undecided, and the
    /// rounds a target has no figure in left out.
    #[test]
    fn added_p99_verdicts() {
        let base = [0.5; 6];
        let table: [(&[f64], &str); 5] = [
            (
                &[0.55, 0.56, 0.57, 0.58, 0.59, 0.54],
                "0.065 ms [0.040 to 0.090] over 6 rounds, within 0.1 ms in 6 of 6: shown within 0.1 ms (p = 0.016)",
            ),
            (
                &[0.9, 0.8, 0.7, 0.95, 0.85, 0.75],
                "0.325 ms [0.200 to 0.450] over 6 rounds, within 0.1 ms in 0 of 6: shown over 0.1 ms (p = 0.016)",
            ),
            (
                &[0.55, 0.9, 0.56, 0.8, 0.57, 0.7],
                "0.135 ms [0.050 to 0.400] over 6 rounds, within 0.1 ms in 3 of 6: not decided against 0.1 ms (p = 0.656)",
            ),
            (
                &[0.55, 0.56, 0.57, 0.58, 0.59, f64::NAN],
                "0.070 ms [0.050 to 0.090] over 5 rounds, within 0.1 ms in 5 of 5: shown within 0.1 ms (p = 0.031)",
            ),
            (&[f64::NAN; 6], "no round measured both"),
        ];
        for (other, want) in table {
            assert_eq!(added_p99(&base, other, Some(0.1)), want, "{other:?}");
        }
        assert_eq!(
            added_p99(&base, &[0.55, 0.9, 0.56, 0.8, 0.57, 0.7], None),
            "0.135 ms [0.050 to 0.400] over 6 rounds"
        );
    }
}
