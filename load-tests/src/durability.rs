//! The cost of durability: the same HTTP route through two gateways side by
//! side — `audit.durability = "durable"` (the default: a call is forwarded
//! once its decision is committed and synced) and `"async"` (forwarded once
//! queued) — in the same run, rounds interleaved, beside the disk's own
//! sync latency measured in that run (4 KiB appends made durable as the
//! audit segments make them, in the durable gateway's data directory). The
//! floor of a durable record is one synced write per batch; the target is
//! durable p50 ≤ async p50 + sync p50 + 0.05 ms, and saturation ≥ 85% of
//! async.
//!
//! `cargo run --release -p lattice-load-tests --bin lattice-load-durability --
//!    --lattice target/release/lattice [--rate 1000] [--seconds 10]
//!    [--saturation-seconds 5] [--concurrency 32] [--rounds 3]`

use anyhow::{bail, Context, Result};
use lattice_load_tests::http_get::{fixed_rate, quiet, saturation, wait_ok};
use lattice_load_tests::{free_port, percentile, start_gateway, Fixed, Proc};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Arguments (`--help` lists them with their defaults).
#[derive(clap::Parser)]
#[command(about = "The cost of durability: durable and asynchronous audit side by side")]
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
    /// Rounds, interleaved.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn parse_args() -> Result<Args> {
    let a = <Args as clap::Parser>::parse();
    if a.seconds > 60 || a.saturation_seconds > 60 || a.rate > 50_000 || a.rounds > 10 {
        bail!("bounded scenario: at most 60 s per run, 10 rounds, 50,000 requests/s");
    }
    Ok(a)
}

/// (p50, p99) ms of `n` durable 4 KiB appends made as the audit segments
/// make them: into a file written full of zeros first, each one direct and
/// synchronous (`O_DIRECT | O_DSYNC`), or, where the filesystem refuses
/// that, a buffered write and `fdatasync`. Also says which.
fn sync_latency(dir: &Path, n: usize) -> Result<(f64, f64, &'static str)> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const BLOCK: usize = 4096;
    let path = dir.join("sync-probe");
    let mut f = std::fs::File::create(&path)?;
    f.write_all(&vec![0u8; n * BLOCK])?;
    f.sync_all()?;
    let (f, direct) = match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(&path)
    {
        Ok(d) => (d, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (f, false),
        Err(e) => return Err(e.into()),
    };
    // A block-aligned 4 KiB, as O_DIRECT needs.
    let raw = vec![7u8; 2 * BLOCK];
    let off = (BLOCK - raw.as_ptr().addr() % BLOCK) % BLOCK;
    let block = &raw[off..off + BLOCK];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        f.write_all_at(block, (i * BLOCK) as u64)?;
        if !direct {
            f.sync_data()?;
        }
        samples.push(start.elapsed());
    }
    std::fs::remove_file(&path)?;
    samples.sort();
    let how = if direct {
        "direct + O_DSYNC"
    } else {
        "fdatasync"
    };
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99), how))
}

/// The median of some figures.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

struct Round {
    sync: (f64, f64, &'static str),
    fixed: [Fixed; 3],
    saturated: [f64; 3],
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
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
    // Data directories on the working disk (not a tmpfs), as a gateway's.
    let base = std::env::current_dir()?;
    let durable_dir = tempfile::tempdir_in(&base)?;
    let async_dir = tempfile::tempdir_in(&base)?;
    let durable = start_gateway(&args.lattice, durable_dir.path(), starter, &route).await?;
    let asynchronous = start_gateway(
        &args.lattice,
        async_dir.path(),
        starter,
        &format!("{route}\n[audit]\ndurability = \"async\"\n"),
    )
    .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let targets = [
        (format!("http://127.0.0.1:{up_port}/bench"), None),
        (
            format!("http://127.0.0.1:{}/tools/echo/bench", durable.port),
            Some(durable.auth.clone()),
        ),
        (
            format!("http://127.0.0.1:{}/tools/echo/bench", asynchronous.port),
            Some(asynchronous.auth.clone()),
        ),
    ];
    for (url, auth) in &targets {
        wait_ok(&client, url, auth.as_deref()).await?;
    }
    let data = durable_dir.path().join("data");
    let mut rounds = Vec::new();
    // Every run starts with both gateways idle and the disk written back
    // (`http_get::quiet`): neither's audit catching up after a saturation
    // run lands in the other's figures.
    let pids = [durable.pid(), asynchronous.pid()];
    for round in 1..=args.rounds {
        quiet(&pids).await;
        let sync = sync_latency(&data, 500)?;
        let mut fixed = Vec::new();
        for (url, auth) in &targets {
            quiet(&pids).await;
            let _ = fixed_rate(&client, url, auth.as_deref(), args.rate, 1).await; // warm-up
            fixed.push(fixed_rate(&client, url, auth.as_deref(), args.rate, args.seconds).await);
        }
        let mut saturated = [0.0; 3];
        for (i, (url, auth)) in targets.iter().enumerate() {
            quiet(&pids).await;
            let (rps, errors) = saturation(
                &client,
                url,
                auth.as_deref(),
                args.concurrency,
                args.saturation_seconds,
            )
            .await;
            if errors > 0 {
                bail!("{errors} errors at saturation on {url}");
            }
            saturated[i] = rps;
        }
        let fixed: [Fixed; 3] = fixed
            .try_into()
            .map_err(|_| anyhow::anyhow!("three runs"))?;
        println!(
            "round {round}: sync p50/p99 {:.3}/{:.3} ms; p50/p99 ms at {} req/s: direct {:.3}/{:.3}, durable {:.3}/{:.3}, async {:.3}/{:.3}; saturation req/s: direct {:.0}, durable {:.0}, async {:.0}",
            sync.0, sync.1, args.rate,
            fixed[0].p50, fixed[0].p99, fixed[1].p50, fixed[1].p99, fixed[2].p50, fixed[2].p99,
            saturated[0], saturated[1], saturated[2],
        );
        for f in &fixed {
            if f.errors > 0 {
                bail!("{} errors at the fixed rate", f.errors);
            }
        }
        rounds.push(Round {
            sync,
            fixed,
            saturated,
        });
    }
    let m = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let (sync50, sync99) = (m(&|r| r.sync.0), m(&|r| r.sync.1));
    let sync_how = rounds.first().map_or("", |r| r.sync.2);
    println!("\nmedians of {} rounds", rounds.len());
    println!("| path | p50 ms | p99 ms | saturation req/s |");
    println!("|---|---|---|---|");
    for (i, name) in ["direct", "lattice, durable", "lattice, async"]
        .iter()
        .enumerate()
    {
        println!(
            "| {name} | {:.3} | {:.3} | {:.0} |",
            m(&|r| r.fixed[i].p50),
            m(&|r| r.fixed[i].p99),
            m(&|r| r.saturated[i])
        );
    }
    println!("| disk sync (4 KiB, {sync_how}) | {sync50:.3} | {sync99:.3} | |");
    let (d50, a50) = (m(&|r| r.fixed[1].p50), m(&|r| r.fixed[2].p50));
    let share = m(&|r| r.saturated[1] / r.saturated[2]);
    let latency_met = d50 <= a50 + sync50 + 0.05;
    println!(
        "\ndurable p50 {d50:.3} ms vs async p50 + sync p50 + 0.05 = {:.3} ms: {}",
        a50 + sync50 + 0.05,
        if latency_met { "met" } else { "missed" }
    );
    println!(
        "durable saturation = {:.0}% of async (target ≥ 85%): {}",
        share * 100.0,
        if share >= 0.85 { "met" } else { "missed" }
    );
    drop((durable, asynchronous));
    Ok(())
}
