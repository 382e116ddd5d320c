//! # lattice-load-tests
//!
//! Bounded loopback load scenarios that measure the gateway. Each scenario is
//! a binary that starts what it needs (the `lattice` binary, upstreams) on
//! 127.0.0.1, sends a bounded number of requests for a bounded time, prints
//! its results, and stops everything it started. Results and the commands
//! that produced them go into `docs/benchmarks.md`.
//!
//! Must never: send traffic anywhere but loopback, or run unbounded.

pub mod compare;
pub mod http_get;

use std::process::{Child, Command};
use std::time::Duration;

pub use lattice_audit::testkit::free_port;

/// User + system CPU clock ticks (10 ms each) in a `/proc/.../stat` file
/// of a process or a thread.
pub fn stat_cpu_ticks(stat: &std::path::Path) -> Option<u64> {
    let s = std::fs::read_to_string(stat).ok()?;
    // Fields after the command name (which may hold spaces).
    let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A child process stopped with SIGTERM when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

/// The `p` quantile of sorted durations, in milliseconds (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

/// Closed-loop load: `concurrency` workers call `call` back to back for
/// `seconds`; returns (successful calls per second, failed calls).
pub async fn closed_loop<F, Fut>(concurrency: usize, seconds: u64, call: F) -> (f64, usize)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let (mut ok, mut err) = (0usize, 0usize);
                while std::time::Instant::now() < deadline {
                    if call().await {
                        ok += 1;
                    } else {
                        err += 1;
                    }
                }
                (ok, err)
            })
        })
        .collect();
    let (mut ok, mut err) = (0, 0);
    for w in workers {
        if let Ok((o, e)) = w.await {
            ok += o;
            err += e;
        }
    }
    (ok as f64 / seconds.max(1) as f64, err)
}

/// Open-loop load: call `i` is started at start + i/rate as its own task,
/// so a slow answer never delays the next send (no coordinated omission);
/// latency counts from the start of the call itself, not from the
/// 1 ms-granular timer's deadline. `call(i)` is true on success.
pub async fn open_loop<F, Fut>(rate: u64, seconds: u64, call: F) -> Fixed
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let total = (rate * seconds) as usize;
    let start = std::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total as u64 {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let fut = call(i);
        tasks.push(tokio::spawn(async move {
            let sent = std::time::Instant::now();
            let ok = fut.await;
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

/// Latency percentiles of a fixed-rate run.
pub struct Fixed {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub errors: usize,
    pub sent: usize,
}

impl Fixed {
    /// From the successful calls' latencies (any order).
    pub fn from_samples(mut latencies: Vec<Duration>, errors: usize, sent: usize) -> Self {
        latencies.sort();
        Self {
            p50: percentile(&latencies, 0.5),
            p90: percentile(&latencies, 0.9),
            p99: percentile(&latencies, 0.99),
            errors,
            sent,
        }
    }
}

/// Prints the direct and gateway runs and what the gateway adds, as a
/// Markdown table.
pub fn print_added(direct: &Fixed, via: &Fixed) {
    println!("| path | sent | errors | p50 ms | p90 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for (name, f) in [("direct", direct), ("through lattice", via)] {
        println!(
            "| {name} | {} | {} | {:.3} | {:.3} | {:.3} |",
            f.sent, f.errors, f.p50, f.p90, f.p99
        );
    }
    println!(
        "| added by lattice | | | {:.3} | {:.3} | {:.3} |",
        via.p50 - direct.p50,
        via.p90 - direct.p90,
        via.p99 - direct.p99
    );
}

/// Prints two saturation results as a Markdown table.
pub fn print_saturation(direct: (f64, usize), via: (f64, usize)) {
    println!("| path | requests/s | errors |");
    println!("|---|---|---|");
    println!("| direct | {:.0} | {} |", direct.0, direct.1);
    println!("| through lattice | {:.0} | {} |", via.0, via.1);
}

/// Starts `lattice-mock-vllm` (beside the `lattice` binary) serving
/// `bench-model` on a free port; returns its host:port.
pub fn start_mock_vllm(lattice: &std::path::Path) -> anyhow::Result<(String, Proc)> {
    start_mock(
        lattice,
        "lattice-mock-vllm",
        &["--name", "bench", "--model", "bench-model"],
    )
}

/// Starts `lattice-mock-mcp` (beside the `lattice` binary, one `echo`
/// tool over streamable HTTP at `/mcp`) on a free port; returns its
/// host:port.
pub fn start_mock_mcp(lattice: &std::path::Path) -> anyhow::Result<(String, Proc)> {
    start_mock(lattice, "lattice-mock-mcp", &["--listen", "127.0.0.1:0"])
}

/// Starts a mock built beside `lattice`; its first line of output ends with
/// the address it listens on.
fn start_mock(
    lattice: &std::path::Path,
    name: &str,
    args: &[&str],
) -> anyhow::Result<(String, Proc)> {
    use anyhow::Context;
    use std::io::BufRead;
    let mut mock = Command::new(lattice.with_file_name(name))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("start {name} (beside the lattice binary)"))?;
    let mut line = String::new();
    std::io::BufReader::new(mock.stdout.take().context("mock stdout")?).read_line(&mut line)?;
    let proc = Proc(mock);
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|a| !a.is_empty())
        .with_context(|| format!("{name} printed no address"))?
        .to_string();
    Ok((addr, proc))
}

/// A `lattice serve` started for a scenario.
pub struct Gateway {
    pub port: u16,
    /// `Bearer <key>` of an agent with the `agent` role.
    pub auth: String,
    _proc: Proc,
}

impl Gateway {
    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self._proc.0.id()
    }
}

/// Writes `policy.cedar` and `lattice.toml` (a `[server]` on a free loopback
/// port, `[policy]`, then `extra`) into `dir`, starts `lattice serve`, waits
/// until it answers `/healthz` (at most 30 s) and creates an agent's key.
pub async fn start_gateway(
    lattice: &std::path::Path,
    dir: &std::path::Path,
    policy: &str,
    extra: &str,
) -> anyhow::Result<Gateway> {
    use anyhow::Context;
    let port = free_port()?;
    std::fs::write(dir.join("policy.cedar"), policy)?;
    let config = dir.join("lattice.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\ngrace_period_seconds = 0\n\n[policy]\nfiles = [\"policy.cedar\"]\n\n{extra}"
        ),
    )?;
    let proc = Proc(
        Command::new(lattice)
            .args(["serve", "-c"])
            .arg(&config)
            .env("LATTICE_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start the gateway")?,
    );
    let client = reqwest::Client::new();
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let started = std::time::Instant::now();
    while !matches!(client.get(&healthz).send().await, Ok(r) if r.status().is_success()) {
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the gateway did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = Command::new(lattice)
        .args(["keys", "create", "--agent", "load", "--role", "agent", "-c"])
        .arg(&config)
        .output()?;
    let auth = format!("Bearer {}", String::from_utf8(out.stdout)?.trim());
    Ok(Gateway {
        port,
        auth,
        _proc: proc,
    })
}

/// `n` token ids of a generated test model's vocabulary (all below 400),
/// the same for every run: the prompts of the worker scenarios.
pub fn prompt_tokens(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11) % 400).collect()
}
