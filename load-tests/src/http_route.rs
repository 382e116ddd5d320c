//! HTTP tool route scenario: the latency the gateway adds (authentication,
//! policy and audit on) over a direct call to the same upstream, at a fixed
//! rate, and requests/s at saturation, with and without the gateway.
//!
//! `cargo run --release -p lattice-load-tests --bin lattice-load-http --
//!    --lattice target/release/lattice [--rate 1000] [--seconds 10]
//!    [--saturation-seconds 5] [--concurrency 32] [--clickhouse yes]`
//!
//! With `--clickhouse yes` the gateway also ships its audit to a local
//! ClickHouse (Debian's server, started here), and the scenario reports the
//! audit events/s the gateway wrote at saturation and how long ClickHouse
//! took to hold them all.

use anyhow::{bail, Context, Result};
use lattice_load_tests::http_get::{fixed_rate, saturation, wait_ok};
use lattice_load_tests::{free_port, print_added, print_saturation, start_gateway, Proc};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Arguments (`--help` lists them with their defaults).
#[derive(clap::Parser)]
#[command(
    about = "The latency the gateway adds on an HTTP tool route, and requests/s at saturation"
)]
struct Args {
    /// The `lattice` binary to measure (a release build).
    #[arg(long, default_value = "target/release/lattice")]
    lattice: PathBuf,
    /// Also ship the audit to a local ClickHouse (Debian's server, started here).
    #[arg(long, default_value = "no", value_parser = ["yes", "no"])]
    clickhouse: String,
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
}

fn parse_args() -> Result<Args> {
    let a = <Args as clap::Parser>::parse();
    if a.seconds > 120 || a.saturation_seconds > 120 || a.rate > 50_000 {
        bail!("bounded scenario: at most 120 s and 50,000 requests/s");
    }
    Ok(a)
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
    let ch_dir = tempfile::tempdir()?;
    let clickhouse = match args.clickhouse == "yes" {
        true => Some(lattice_audit::testkit::ClickHouseServer::start(
            ch_dir.path().to_path_buf(),
        )?),
        false => None,
    };
    let extra = match &clickhouse {
        Some(ch) => format!(
            "{route}\n[audit.clickhouse]\nurl = \"{}\"\nflush_interval_ms = 100\n",
            ch.url()
        ),
        None => route.clone(),
    };
    let gateway = start_gateway(&args.lattice, dir.path(), starter, &extra).await?;
    let store = dir.path().join("data/audit.db");
    let events = || -> Result<u64> { Ok(lattice_audit::Store::open_read_only(&store)?.count()?) };
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
    let before = events()?;
    let started = Instant::now();
    let via_sat = saturation(
        &client,
        &via,
        Some(&auth),
        args.concurrency,
        args.saturation_seconds,
    )
    .await;
    let written = events()? - before;
    let took = started.elapsed().as_secs_f64();
    print_saturation(direct_sat, via_sat);
    println!(
        "\naudit events written by the gateway during saturation: {written} in {took:.1} s = {:.0} events/s",
        written as f64 / took
    );
    if let Some(ch) = &clickhouse {
        let total = events()?;
        let shipped = || -> Result<u64> {
            Ok(ch
                .query("SELECT count() FROM audit_events FORMAT TSV")?
                .trim()
                .parse()?)
        };
        while shipped()? < total {
            if started.elapsed() > Duration::from_secs(120) {
                bail!("ClickHouse did not catch up within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "ClickHouse held all {total} events {:.1} s after saturation began: {:.0} events/s end to end",
            started.elapsed().as_secs_f64(),
            written as f64 / started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
