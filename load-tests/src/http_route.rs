//! HTTP tool route scenario: the latency the gateway adds (authentication,
//! policy and audit on) over a direct call to the same upstream, at a fixed
//! rate, and requests/s at saturation, with and without the gateway.
//!
//! `cargo run --release -p lattice-load-tests --bin lattice-load-http --
//!    --lattice target/release/lattice [--rate 1000] [--seconds 10]
//!    [--saturation-seconds 5] [--concurrency 32]`

use anyhow::{bail, Context, Result};
use lattice_load_tests::{
    closed_loop, free_port, print_added, print_saturation, start_gateway, Fixed, Proc,
};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    lattice: PathBuf,
    rate: u64,
    seconds: u64,
    saturation_seconds: u64,
    concurrency: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        lattice: PathBuf::from("target/release/lattice"),
        rate: 1000,
        seconds: 10,
        saturation_seconds: 5,
        concurrency: 32,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).context("missing value")?;
        match argv[i].as_str() {
            "--lattice" => a.lattice = PathBuf::from(value),
            "--rate" => a.rate = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            "--saturation-seconds" => a.saturation_seconds = value.parse()?,
            "--concurrency" => a.concurrency = value.parse()?,
            other => bail!("unknown argument {other}"),
        }
        i += 2;
    }
    if a.seconds > 120 || a.saturation_seconds > 120 || a.rate > 50_000 {
        bail!("bounded scenario: at most 120 s and 50,000 requests/s");
    }
    Ok(a)
}

async fn wait_ok(client: &reqwest::Client, url: &str, auth: Option<&str>) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if send(get(client, url, auth)).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} never answered 200")
}

fn get(client: &reqwest::Client, url: &str, auth: Option<&str>) -> reqwest::RequestBuilder {
    let req = client.get(url);
    match auth {
        Some(a) => req.header("authorization", a),
        None => req,
    }
}

/// Sends one request and reads the whole body; true on a 2xx.
async fn send(req: reqwest::RequestBuilder) -> bool {
    match req.send().await {
        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// Open-loop load: request i is sent at start + i/rate.
async fn fixed_rate(
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
async fn saturation(
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

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let up_port = free_port()?;
    let _upstream = Proc(
        Command::new(&args.lattice)
            .args(["demo-upstream", "--listen", &format!("127.0.0.1:{up_port}")])
            .stderr(Stdio::null())
            .spawn()
            .context("start the demo upstream")?,
    );
    let starter = include_str!("../../examples/quickstart/policies/starter.cedar");
    let route = format!(
        "[[routes]]\nname = \"echo\"\nupstream = \"http://127.0.0.1:{up_port}\"\nlabels = [\"demo\"]\n"
    );
    let gateway = start_gateway(&args.lattice, dir.path(), starter, &route).await?;
    let (gw_port, auth) = (gateway.port, gateway.auth.clone());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let direct = format!("http://127.0.0.1:{up_port}/bench");
    let via = format!("http://127.0.0.1:{gw_port}/tools/echo/bench");
    wait_ok(&client, &via, Some(&auth)).await?;

    println!(
        "fixed rate: {} requests/s for {} s each",
        args.rate, args.seconds
    );
    let _ = fixed_rate(&client, &direct, None, args.rate, 1).await; // warm-up
    let d = fixed_rate(&client, &direct, None, args.rate, args.seconds).await;
    let _ = fixed_rate(&client, &via, Some(&auth), args.rate, 1).await;
    let g = fixed_rate(&client, &via, Some(&auth), args.rate, args.seconds).await;
    print_added(&d, &g);

    println!(
        "\nsaturation: {} concurrent clients for {} s each",
        args.concurrency, args.saturation_seconds
    );
    let direct_sat = saturation(
        &client,
        &direct,
        None,
        args.concurrency,
        args.saturation_seconds,
    )
    .await;
    let via_sat = saturation(
        &client,
        &via,
        Some(&auth),
        args.concurrency,
        args.saturation_seconds,
    )
    .await;
    print_saturation(direct_sat, via_sat);
    Ok(())
}
