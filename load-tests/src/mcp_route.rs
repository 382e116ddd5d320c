//! MCP scenario: the latency a `tools/call` gains through the gateway
//! (authentication, policy, argument validation against the tool's
//! `inputSchema`, two audit events) over a direct call to the same
//! streamable-HTTP upstream's `echo` tool, at a fixed rate, and calls/s at
//! saturation. The upstream is `lattice-mock-mcp` (beside `lattice`; low
//! jitter) or, with `--everything PATH`, the real
//! `@modelcontextprotocol/server-everything`.
//!
//! `cargo run --release -p lattice-load-tests --bin lattice-load-mcp --
//!    --lattice target/release/lattice [--everything PATH] [--rate 500]
//!    [--seconds 10] [--saturation-seconds 5] [--concurrency 16]`

use anyhow::{bail, Context, Result};
use lattice_load_tests::{
    closed_loop, free_port, open_loop, print_added, print_saturation, start_gateway, Fixed, Proc,
};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments (`--help` lists them with their defaults).
#[derive(clap::Parser)]
#[command(about = "The latency a tools/call gains through the gateway, and calls/s at saturation")]
struct Args {
    /// The `lattice` binary to measure (a release build).
    #[arg(long, default_value = "target/release/lattice")]
    lattice: PathBuf,
    /// The real `@modelcontextprotocol/server-everything` as the upstream
    /// (its launcher, `test-peers/node_modules/.bin/mcp-server-everything`
    /// after `scripts/setup`), instead of `lattice-mock-mcp`.
    #[arg(long, value_name = "PATH")]
    everything: Option<PathBuf>,
    /// Calls/s of the fixed-rate runs.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds of each fixed-rate run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of each saturation run.
    #[arg(long, default_value_t = 5)]
    saturation_seconds: u64,
    /// Closed-loop clients at saturation.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

fn parse_args() -> Result<Args> {
    let a = <Args as clap::Parser>::parse();
    if a.seconds > 120 || a.saturation_seconds > 120 || a.rate > 10_000 {
        bail!("bounded scenario: at most 120 s and 10,000 calls/s");
    }
    Ok(a)
}

/// Where a call goes and with which headers.
#[derive(Clone)]
struct Target {
    url: Arc<String>,
    headers: Arc<Vec<(String, String)>>,
    tool: Arc<String>,
}

fn call(client: &reqwest::Client, t: &Target, id: u64) -> reqwest::RequestBuilder {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{}","arguments":{{"message":"load {id}"}}}}}}"#,
        t.tool
    );
    let mut req = client
        .post(t.url.as_str())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    for (k, v) in t.headers.iter() {
        req = req.header(k.as_str(), v.as_str());
    }
    req
}

/// One call; true when the answer holds the echoed result.
async fn send(req: reqwest::RequestBuilder, id: u64) -> bool {
    match req.send().await {
        Ok(r) if r.status().is_success() => match r.text().await {
            Ok(text) => text.contains(&format!("Echo: load {id}")),
            Err(_) => false,
        },
        _ => false,
    }
}

async fn fixed_rate(client: &reqwest::Client, t: &Target, rate: u64, seconds: u64) -> Fixed {
    open_loop(rate, seconds, |i| send(call(client, t, i), i)).await
}

/// Opens a session on the upstream directly (initialize, initialized).
async fn direct_session(client: &reqwest::Client, url: &str) -> Result<String> {
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"lattice-load-mcp","version":"0"}}}"#;
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init)
        .send()
        .await?;
    let session = r
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .context("no mcp-session-id from the upstream")?
        .to_string();
    r.text().await?;
    client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .body(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .send()
        .await?;
    Ok(session)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let up_port = free_port()?;
    let _upstream = Proc(match &args.everything {
        Some(everything) => Command::new(everything)
            .arg("streamableHttp")
            .env("PORT", up_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start mcp-server-everything (run scripts/setup)")?,
        None => Command::new(args.lattice.with_file_name("lattice-mock-mcp"))
            .args(["--listen", &format!("127.0.0.1:{up_port}")])
            .stdout(Stdio::null())
            .spawn()
            .context("start lattice-mock-mcp (beside the lattice binary)")?,
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let upstream_url = format!("http://127.0.0.1:{up_port}/mcp");
    let started = Instant::now();
    let session = loop {
        match direct_session(&client, &upstream_url).await {
            Ok(s) => break s,
            Err(e) if started.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let gateway = start_gateway(
        &args.lattice,
        dir.path(),
        "permit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n",
        &format!(
            "[[mcp_servers]]\nname = \"everything\"\nurl = \"http://127.0.0.1:{up_port}/mcp\"\nallow_private_network = true\n"
        ),
    )
    .await?;
    let (gw_port, auth) = (gateway.port, gateway.auth.clone());
    let direct = Target {
        url: Arc::new(upstream_url),
        headers: Arc::new(vec![
            ("mcp-session-id".into(), session),
            ("mcp-protocol-version".into(), "2025-06-18".into()),
        ]),
        tool: Arc::new("echo".into()),
    };
    let via = Target {
        url: Arc::new(format!("http://127.0.0.1:{gw_port}/mcp")),
        headers: Arc::new(vec![("authorization".into(), auth)]),
        tool: Arc::new("everything__echo".into()),
    };
    let started = Instant::now();
    while !send(call(&client, &via, 1), 1).await {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the gateway never served everything__echo");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    println!(
        "tools/call at {} calls/s for {} s each ({} `echo` over streamable HTTP)",
        args.rate,
        args.seconds,
        if args.everything.is_some() {
            "server-everything"
        } else {
            "lattice-mock-mcp"
        }
    );
    let _ = fixed_rate(&client, &direct, args.rate, 1).await;
    let d = fixed_rate(&client, &direct, args.rate, args.seconds).await;
    let _ = fixed_rate(&client, &via, args.rate, 1).await;
    let g = fixed_rate(&client, &via, args.rate, args.seconds).await;
    print_added(&d, &g);

    println!(
        "\nsaturation: {} concurrent clients for {} s each",
        args.concurrency, args.saturation_seconds
    );
    let mut results = Vec::new();
    for t in [&direct, &via] {
        let (client, t) = (client.clone(), t.clone());
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(10_000_000));
        results.push(
            closed_loop(args.concurrency, args.saturation_seconds, move || {
                let id = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                send(call(&client, &t, id), id)
            })
            .await,
        );
    }
    print_saturation(results[0], results[1]);
    Ok(())
}
