//! Audit throughput: events/s the embedded store sustains, events/s the
//! ClickHouse shipper moves from the store into a local ClickHouse server,
//! and the two together, through the same pipeline the gateway uses (and
//! the same allocator). With the embedded store it also reports the CPU
//! time per event of the audit writer thread and of the store thread it
//! hands the SQLite store to (together, and each after the table): CPU
//! time, unlike a rate, is not moved by time stolen from the machine, so
//! it compares builds across noisy runs. The events are the gateway's: a
//! decision and an outcome per call, request ids UUIDv7.
//!
//! `cargo run --release -p lattice-load-tests --bin lattice-load-audit --
//!    [--events 200000] [--producers 2]`

use anyhow::{bail, Context, Result};
use lattice_audit::clickhouse::ClickHouseConfig;
use lattice_audit::testkit::ClickHouseServer;
use lattice_audit::{AuditEvent, AuditPipeline, NoteSigner, Phase, PipelineConfig};
use std::path::Path;
use std::time::{Duration, Instant};

/// The gateway's allocator (`app/src/main.rs`), so the pipeline is
/// measured as the gateway runs it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU time (user + system) of this process's thread named `name`.
fn thread_cpu(name: &str) -> Option<Duration> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim_end() != name {
            continue;
        }
        let ticks = lattice_load_tests::stat_cpu_ticks(&dir.join("stat"))?;
        return Some(Duration::from_millis(ticks * 10));
    }
    None
}

fn pipeline(db: &Path, clickhouse: Option<ClickHouseConfig>) -> Result<AuditPipeline> {
    Ok(AuditPipeline::start(PipelineConfig {
        db_path: db.to_path_buf(),
        node: "bench".into(),
        origin: "lattice/bench/audit".into(),
        queue_capacity: 100_000,
        batch_max: 10_000,
        checkpoint_every: 100_000,
        checkpoint_interval: Duration::from_secs(1),
        witness_file: None,
        signer: NoteSigner::generate("lattice/bench/audit"),
        clickhouse,
        retention: Default::default(),
    })?)
}

/// Pushes `events` events (half decisions, half outcomes) from `producers`
/// threads as fast as the queue accepts them; returns when all are written.
fn push(p: &AuditPipeline, events: u64, producers: u64) -> Result<Duration> {
    let start = Instant::now();
    let calls = events / 2 / producers;
    let threads: Vec<_> = (0..producers)
        .map(|_| {
            let h = p.handle();
            std::thread::spawn(move || {
                for i in 0..calls {
                    // As the gateway makes them: UUIDv7, in time order
                    // (ids such as `r-0-10` land all over the request
                    // index; measured, that cost the store thread ~10%
                    // more CPU per event).
                    let id = uuid::Uuid::now_v7().to_string();
                    let mut e = AuditEvent::new(Phase::Decision, &id, "http.request");
                    e.tenant = "bench".into();
                    e.principal = format!("agent-{}", i % 50);
                    e.target = "echo".into();
                    e.decision = "allow".into();
                    let slot = loop {
                        match h.record_decision(e.clone()) {
                            Ok((s, _)) => break s,
                            Err(_) => std::thread::yield_now(),
                        }
                    };
                    let mut o = AuditEvent::new(Phase::Outcome, &id, "http.request");
                    o.status = Some(200);
                    o.latency_us = Some(300);
                    let _ = slot.record(o);
                }
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a producer panicked"))?;
    }
    p.handle().flush()?;
    Ok(start.elapsed())
}

fn wait_count(ch: &ClickHouseServer, n: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        // The table appears when the shipper first connects.
        let count = ch.query("SELECT count() FROM audit_events").ok();
        if count.and_then(|c| c.parse::<u64>().ok()).unwrap_or(0) >= n {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("ClickHouse never reached {n} rows")
}

/// Arguments (`--help` lists them with their defaults).
#[derive(clap::Parser)]
#[command(
    about = "Audit events/s through the pipeline alone: the embedded store, ClickHouse, both"
)]
struct Args {
    /// Events each measurement writes.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Threads producing them.
    #[arg(long, default_value_t = 2)]
    producers: u64,
}

fn main() -> Result<()> {
    let Args { events, producers } = clap::Parser::parse();
    if events > 5_000_000 || producers == 0 {
        bail!("bounded scenario: at most 5,000,000 events, at least one producer");
    }
    let dir = tempfile::tempdir()?;
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();

    // 1. The embedded store alone.
    let db = dir.path().join("embedded.db");
    let p = pipeline(&db, None)?;
    let took = push(&p, events, producers)?;
    // The writer thread and the store thread it hands the SQLite store to.
    let writer = thread_cpu("audit-writer").context("the audit writer thread is not running")?;
    let store = thread_cpu("audit-store").context("the audit store thread is not running")?;
    p.shutdown()?;
    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / events as f64;
    println!(
        "| embedded store (segments, one synced write per batch; SQLite filled behind) | {events} | {:.2} s | {:.0} | {:.1} µs |",
        took.as_secs_f64(),
        rate(events, took),
        per_event(writer + store)
    );
    let split = format!(
        "embedded store: the writer thread {:.2} µs and the store thread {:.2} µs of CPU per event",
        per_event(writer),
        per_event(store)
    );

    // 2. Shipping a backlog of that store into ClickHouse.
    let ch_dir = dir.path().join("clickhouse");
    std::fs::create_dir_all(&ch_dir)?;
    let ch = ClickHouseServer::start(ch_dir)?;
    let config = ClickHouseConfig {
        url: ch.url(),
        database: "default".into(),
        user: "default".into(),
        password: String::new(),
        batch_max: 100_000,
        flush_interval: Duration::from_millis(50),
        max_backlog_events: u64::MAX,
        ca_file: None,
    };
    let start = Instant::now();
    let p = pipeline(&db, Some(config.clone()))?;
    wait_count(&ch, events)?;
    let took = start.elapsed();
    p.shutdown()?;
    println!(
        "| ClickHouse shipper, from a backlog | {events} | {:.2} s | {:.0} |",
        took.as_secs_f64(),
        rate(events, took)
    );

    // 3. Both at once: written locally and shipped as it arrives.
    ch.query("TRUNCATE TABLE audit_events")?;
    let db2 = dir.path().join("both.db");
    let p = pipeline(&db2, Some(config))?;
    let start = Instant::now();
    push(&p, events, producers)?;
    wait_count(&ch, events)?;
    let took = start.elapsed();
    p.shutdown()?;
    println!(
        "| embedded + ClickHouse, end to end | {events} | {:.2} s | {:.0} |",
        took.as_secs_f64(),
        rate(events, took)
    );
    println!("\n{split}");
    Ok(())
}
