//! HTTP tool route scenario: the latency the gateway adds (authentication,
//! policy and audit on) over a direct call to the same upstream, at a fixed
//! rate, and requests/s at saturation, with and without the gateway.
//!
//! `cargo run --release -p lattice-load-tests --bin lattice-load-http --
//!    --lattice target/release/lattice [--rate 1000] [--seconds 10]
//!    [--saturation-seconds 5] [--concurrency 32]`

use anyhow::{bail, Context, Result};
use lattice_load_tests::http_get::{fixed_rate, saturation, wait_ok};
use lattice_load_tests::{free_port, print_added, print_saturation, start_gateway, Proc};
use std::path::PathBuf;
use std::process::{Command, Stdio};

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
