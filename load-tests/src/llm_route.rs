//! LLM route scenario: what the gateway adds (authentication, policy per
//! backend, limits, audit with usage) to a streamed chat completion's time to
//! first token and per chunk, against a zero-latency `lattice-mock-vllm`
//! backend, and requests/s at saturation, each with and without the gateway.
//!
//! `cargo run --release -p lattice-load-tests --bin lattice-load-llm --
//!    --lattice target/release/lattice [--rate 1000] [--seconds 10]
//!    [--chunks 200] [--streams 200] [--saturation-seconds 5] [--concurrency 32]
//!    [--keep DIR]` (`--keep`: leave the gateway's config and audit store in DIR)
//! (`lattice-mock-vllm` is expected beside `lattice`).

use anyhow::{bail, Context, Result};
use lattice_load_tests::{
    closed_loop, percentile, print_added, print_saturation, start_gateway, start_mock_vllm, Fixed,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments (`--help` lists them with their defaults).
#[derive(clap::Parser)]
#[command(
    about = "What the gateway adds to a streamed chat's time to first token and per chunk, and chats/s at saturation"
)]
struct Args {
    /// The `lattice` binary to measure (a release build).
    #[arg(long, default_value = "target/release/lattice")]
    lattice: PathBuf,
    /// Keep the gateway's config and data (audit store) here for inspection.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Streamed chats/s of the fixed-rate runs (time to first token).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of each fixed-rate run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Tokens of each sequential stream (time per chunk).
    #[arg(long, default_value_t = 200)]
    chunks: usize,
    /// Sequential streams each way.
    #[arg(long, default_value_t = 200)]
    streams: usize,
    /// Seconds of each saturation run.
    #[arg(long, default_value_t = 5)]
    saturation_seconds: u64,
    /// Closed-loop clients at saturation.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

fn parse_args() -> Result<Args> {
    let a = <Args as clap::Parser>::parse();
    if a.seconds > 120 || a.saturation_seconds > 120 || a.rate > 20_000 || a.streams > 10_000 {
        bail!("bounded scenario: at most 120 s, 20,000 requests/s, 10,000 streams");
    }
    Ok(a)
}

fn chat(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    words: usize,
    stream: bool,
) -> reqwest::RequestBuilder {
    let content = vec!["w"; words].join(" ");
    let body = format!(
        r#"{{"model":"bench-model","stream":{stream},"max_tokens":100000,"messages":[{{"role":"user","content":"{content}"}}]}}"#
    );
    let req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    match auth {
        Some(a) => req.header("authorization", a),
        None => req,
    }
}

/// Sends a streamed chat; returns (time to the first body chunk, time from
/// the first chunk to the end, chunks read) or None on any failure.
async fn stream_once(req: reqwest::RequestBuilder) -> Option<(Duration, Duration, usize)> {
    let sent = Instant::now();
    let mut r = req.send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    let first = r.chunk().await.ok()??;
    let ttft = sent.elapsed();
    let mut events = first.windows(2).filter(|w| w == b"\n\n").count();
    while let Some(c) = r.chunk().await.ok()? {
        events += c.windows(2).filter(|w| w == b"\n\n").count();
    }
    Some((ttft, sent.elapsed() - ttft, events))
}

/// Open-loop streamed chats at `rate`; time to first token.
async fn ttft_at_rate(
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
        tokio::time::sleep_until(
            (start + Duration::from_nanos(i as u64 * 1_000_000_000 / rate)).into(),
        )
        .await;
        let req = chat(client, url, auth, 4, true);
        tasks.push(tokio::spawn(stream_once(req)));
    }
    let mut lat = Vec::with_capacity(total);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Some((ttft, _, _))) => lat.push(ttft),
            _ => errors += 1,
        }
    }
    Fixed::from_samples(lat, errors, total)
}

/// Sequential long streams: median microseconds per chunk after the first.
async fn per_chunk(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    chunks: usize,
    streams: usize,
) -> Result<(f64, usize)> {
    let mut per = Vec::with_capacity(streams);
    let mut events = 0;
    for _ in 0..streams {
        let (_, rest, n) = stream_once(chat(client, url, auth, chunks, true))
            .await
            .context("a stream failed")?;
        events = n;
        per.push(rest / n.max(1) as u32);
    }
    per.sort();
    Ok((percentile(&per, 0.5) * 1000.0, events))
}

/// Closed-loop plain chats.
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
        let req = chat(&client, &url, auth.as_deref().map(String::as_str), 4, false);
        async move {
            match req.send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let tmp = tempfile::tempdir()?;
    let dir = match &args.keep {
        Some(p) => {
            std::fs::create_dir_all(p)?;
            p.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    let (backend, _mock) = start_mock_vllm(&args.lattice)?;
    let gateway = start_gateway(
        &args.lattice,
        &dir,
        "permit (principal in Lattice::Role::\"agent\", action in [Lattice::Action::\"chat\", Lattice::Action::\"embed\"], resource);\n",
        &format!(
            "[[backends]]\nname = \"bench\"\nkind = \"vllm\"\nurl = \"http://{backend}\"\n\n[[models]]\nname = \"bench-model\"\nbackends = [\"bench\"]\n"
        ),
    )
    .await?;
    let (gw_port, auth) = (gateway.port, gateway.auth.clone());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let direct = format!("http://{backend}/v1/chat/completions");
    let via = format!("http://127.0.0.1:{gw_port}/v1/chat/completions");
    let started = Instant::now();
    while stream_once(chat(&client, &via, Some(&auth), 1, true))
        .await
        .is_none()
    {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the gateway never served the model (is the key active?)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!(
        "time to first token: streamed chats at {} requests/s for {} s each",
        args.rate, args.seconds
    );
    let _ = ttft_at_rate(&client, &direct, None, args.rate, 1).await;
    let d = ttft_at_rate(&client, &direct, None, args.rate, args.seconds).await;
    let _ = ttft_at_rate(&client, &via, Some(&auth), args.rate, 1).await;
    let g = ttft_at_rate(&client, &via, Some(&auth), args.rate, args.seconds).await;
    print_added(&d, &g);

    println!(
        "\nper chunk: {} sequential streams of {} tokens each way",
        args.streams, args.chunks
    );
    let (dc, n) = per_chunk(&client, &direct, None, args.chunks, args.streams).await?;
    let (gc, _) = per_chunk(&client, &via, Some(&auth), args.chunks, args.streams).await?;
    println!("| path | events per stream | median µs per chunk |");
    println!("|---|---|---|");
    println!("| direct | {n} | {dc:.2} |");
    println!("| through lattice | {n} | {gc:.2} |");
    println!("| added by lattice | | {:.2} |", gc - dc);

    println!(
        "\nsaturation: {} concurrent clients, plain chats, {} s each",
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
