//! Trace export scenario (issue #19): what exporting traces costs a call,
//! and that a collector that is down costs it nothing. Three gateways on
//! the same HTTP route: without `[telemetry]`; exporting every call's
//! spans to a collector that takes them (a stand-in: the demo echo
//! upstream answers 200 to every POST, so only the gateway's side is
//! measured); exporting to a port where nothing listens. Measured
//! interleaved at a fixed rate and at saturation.
//!
//! `cargo run --release -p lattice-load-tests --bin lattice-load-traces --
//!    --lattice target/release/lattice [--rate 1000] [--seconds 10]
//!    [--saturation-seconds 5] [--concurrency 32] [--rounds 6]`

use anyhow::{bail, Context, Result};
use lattice_load_tests::http_get::{added_p99, compare, Target};
use lattice_load_tests::{free_port, start_gateway, Gateway, Proc};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Arguments (`--help` lists them with their defaults).
#[derive(clap::Parser)]
#[command(
    about = "What exporting traces costs a call, and that a collector that is down costs it nothing"
)]
struct Args {
    /// The `lattice` binary to measure (a release build).
    #[arg(long, default_value = "target/release/lattice")]
    lattice: PathBuf,
    /// Requests/s of the fixed-rate runs.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of each fixed-rate run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of each saturation run.
    #[arg(long, default_value_t = 5)]
    saturation_seconds: u64,
    /// Closed-loop clients at saturation.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Rounds, interleaved (what the exporter adds at p99 is judged round
    /// by round: two rounds cannot tell it from noise).
    #[arg(long, default_value_t = 6)]
    rounds: usize,
}

fn parse_args() -> Result<Args> {
    let a = <Args as clap::Parser>::parse();
    if a.seconds > 60 || a.saturation_seconds > 60 || a.rate > 20_000 || a.rounds > 12 {
        bail!("bounded scenario: at most 60 s a phase, 20,000 requests/s, 12 rounds");
    }
    Ok(a)
}

fn echo(lattice: &std::path::Path, port: u16) -> Result<Proc> {
    Ok(Proc(
        Command::new(lattice)
            .args(["demo-upstream", "--listen", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .spawn()
            .context("start the demo upstream")?,
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let (up_port, sink_port, dead_port) = (free_port()?, free_port()?, free_port()?);
    let _upstream = echo(&args.lattice, up_port)?;
    let _sink = echo(&args.lattice, sink_port)?;
    let starter = include_str!("../../examples/quickstart/policies/starter.cedar");
    let route = format!(
        "[[routes]]\nname = \"echo\"\nupstream = \"http://127.0.0.1:{up_port}\"\nlabels = [\"demo\"]\n"
    );
    let telemetry =
        |port: u16| format!("{route}\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:{port}\"\n");
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let off = start_gateway(&args.lattice, dirs[0].path(), starter, &route).await?;
    let up = start_gateway(
        &args.lattice,
        dirs[1].path(),
        starter,
        &telemetry(sink_port),
    )
    .await?;
    let down = start_gateway(
        &args.lattice,
        dirs[2].path(),
        starter,
        &telemetry(dead_port),
    )
    .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let target = |name: &str, g: &Gateway| Target {
        name: name.to_string(),
        url: format!("http://127.0.0.1:{}/tools/echo/bench", g.port),
        auth: g.auth.clone(),
        pid: g.pid(),
    };
    let p99s = compare(
        &client,
        &[
            target("no traces", &off),
            target("traces, collector up", &up),
            target("traces, collector down", &down),
        ],
        args.rate,
        args.seconds,
        args.saturation_seconds,
        args.concurrency,
        args.rounds,
    )
    .await?;
    println!(
        "\nadded at p99, round by round: exporting {}; with the collector down {}",
        added_p99(&p99s[0], &p99s[1], None),
        added_p99(&p99s[0], &p99s[2], None)
    );
    Ok(())
}
