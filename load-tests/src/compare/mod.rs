//! Side-by-side comparisons: one scenario (a data file: route, targets,
//! rates, connections, durations, rounds) run against every target with
//! the same load generator and the same upstream, rounds interleaved (the
//! order rotates each round, so drift on a shared machine hits all alike),
//! reported as medians with their spread, ratios to nginx's bare proxying
//! and the latency each target adds over the upstream, and Lattice against
//! the build before and each peer round by round (`paired`).
//!
//! Must never: report a target that failed its check, or a figure without
//! the number of errors beside it.

pub mod load;
pub mod paired;
pub mod profiler;
pub mod targets;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use load::{fixed_rate, saturate, Saturation};
use targets::{start, start_upstream, Programs, Started};

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Http,
    Llm,
    /// MCP `tools/call` over streamable HTTP to `lattice-mock-mcp`.
    Mcp,
}

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub route: Route,
    /// The request path at the upstream (Lattice's HTTP route prefixes its
    /// `/tools/<route>`).
    pub path: String,
    /// A JSON body makes the request a POST.
    pub body: Option<String>,
    /// Text every successful answer's body must contain (a JSON-RPC error
    /// comes back as 200 OK): an answer without it counts as an error, in
    /// the check, the fixed rates and the saturation runs alike.
    pub expect: Option<String>,
    pub targets: Vec<String>,
    /// Open-loop rates, requests/s (none: saturation only).
    pub rates: Vec<u64>,
    pub fixed_seconds: u64,
    pub saturation_seconds: u64,
    pub connections: usize,
    pub rounds: usize,
    /// wrk's `--timeout` in saturation runs: an answer slower than this is
    /// a failure. Two seconds (wrk's own default) unless the file says.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// The share of nginx's bare-proxy saturation Lattice's must reach
    /// (issue #20: 0.4 on the HTTP route), judged round by round.
    #[serde(default)]
    pub nginx_target: Option<f64>,
}

fn default_timeout() -> u64 {
    2
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read the scenario {}", path.display()))?;
        let s: Scenario =
            toml::from_str(&text).with_context(|| format!("scenario {}", path.display()))?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<()> {
        if self.fixed_seconds > 120 || self.saturation_seconds > 120 {
            bail!("bounded scenario: at most 120 s per run");
        }
        if self.rates.iter().any(|r| *r == 0 || *r > 50_000) {
            bail!("bounded scenario: rates between 1 and 50,000 requests/s");
        }
        if !(1..=60).contains(&self.timeout_seconds) {
            bail!("bounded scenario: timeout_seconds between 1 and 60");
        }
        if self.rounds == 0 || self.rounds > 20 || self.connections == 0 || self.connections > 1024
        {
            bail!("bounded scenario: 1 to 20 rounds, 1 to 1,024 connections");
        }
        if self.targets.is_empty() {
            bail!("a scenario names at least one target");
        }
        Ok(())
    }

    /// The short version the normal test suite runs so the harness cannot
    /// rot: one round of one second at a low rate.
    pub fn smoke(mut self) -> Self {
        self.rounds = 1;
        self.fixed_seconds = 1;
        self.saturation_seconds = 1;
        self.connections = self.connections.min(4);
        // wrk checks its timeouts every 2 s against each connection's
        // oldest send: a CI machine that stalls wrk's own thread past that
        // counts every connection as timed out although the target answered.
        // The smoke run checks that targets work, not that they are fast.
        self.timeout_seconds = 30;
        self.rates = vec![self.rates.iter().copied().min().unwrap_or(100).min(100)];
        self
    }
}

/// One target's figures, one entry per round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Measured {
    pub target: String,
    pub saturation: Vec<f64>,
    pub saturation_errors: u64,
    /// Per rate: (rate, p50 per round, p99 per round, errors, sent).
    pub fixed: Vec<FixedRuns>,
    /// Largest resident size seen right after a saturation run, MB.
    pub rss_mb: Option<f64>,
    /// Lattice: audit events it wrote per second during its saturation runs.
    pub audit_events_per_s: Vec<f64>,
    /// CPU time the target's process tree spent per request during its
    /// saturation runs, µs (user + system; time the hypervisor stole is
    /// not in it, so this compares across noisy runs better than req/s).
    pub saturation_cpu_us: Vec<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FixedRuns {
    pub rate: u64,
    pub p50: Vec<f64>,
    pub p99: Vec<f64>,
    pub errors: usize,
    pub sent: usize,
    /// CPU µs per request of the target's process tree, per round.
    pub cpu_us: Vec<f64>,
}

/// What a run found: the targets measured, and those left out and why.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub measured: Vec<Measured>,
    pub skipped: Vec<(String, String)>,
    /// Share of CPU time the hypervisor took from this machine during the
    /// run (`steal` in /proc/stat), in percent: figures taken while it is
    /// high are not comparable with other runs' (only within the run).
    pub steal_percent: Option<f64>,
    /// The scenario's `nginx_target`.
    pub nginx_target: Option<f64>,
}

/// (steal, total) clock ticks of all CPUs so far.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user).
    Some((*f.get(7)?, f.iter().take(8).sum()))
}

/// What to profile: into `dir`, the saturation run, or the run at `rate`.
#[derive(Debug, Clone)]
pub struct Profile {
    pub dir: PathBuf,
    pub rate: Option<u64>,
}

/// Starts `perf` on `t` for the run about to start when the profile asks
/// for it: the first round's run at `rate` (`None`: the saturation run).
fn record(
    profile: Option<&Profile>,
    t: &Started,
    round: usize,
    rate: Option<u64>,
    seconds: u64,
) -> Result<Option<profiler::Recorder>> {
    Ok(match (profile, t.pid) {
        (Some(p), Some(pid)) if round == 0 && p.rate == rate => {
            Some(profiler::record(&p.dir, &t.name, pid, seconds)?)
        }
        _ => None,
    })
}

/// Runs the scenario. A target whose program was not given is skipped
/// (and said so); one that was given but fails its check fails the run.
/// With `profile`, the first saturation run (or first run at the profile's
/// fixed rate) of each target that has a process is recorded by `perf`
/// (call graphs) into its folder.
pub async fn run(
    scenario: &Scenario,
    programs: &Programs,
    dir: &Path,
    profile: Option<&Profile>,
) -> Result<Report> {
    let upstream = start_upstream(scenario.route, programs, dir)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .build()?;
    let mut report = Report {
        nginx_target: scenario.nginx_target,
        ..Report::default()
    };
    let mut started: Vec<Started> = Vec::new();
    for name in &scenario.targets {
        let missing = match name.as_str() {
            "agentgateway" if programs.agentgateway.is_none() => Some("pass --agentgateway PATH"),
            "litellm" if programs.litellm.is_none() => Some("pass --litellm PATH"),
            "baseline" if programs.baseline.is_none() => Some("pass --baseline PATH"),
            _ => None,
        };
        if let Some(why) = missing {
            report.skipped.push((name.clone(), why.to_string()));
            continue;
        }
        let mut t = start(
            name,
            scenario.route,
            &scenario.path,
            (scenario.body.as_deref(), scenario.expect.as_deref()),
            &upstream,
            programs,
            &dir.join(name),
        )
        .await?;
        t.check(&client).await?;
        // Warm-up: connections, caches, the peer's lazy paths.
        let _ = fixed_rate(
            &t.req,
            scenario.rates.first().map_or(500, |r| (*r).min(500)),
            1,
            scenario.connections,
        )
        .await?;
        started.push(t);
    }
    let mut measured: Vec<Measured> = started
        .iter()
        .map(|t| Measured {
            target: t.name.clone(),
            fixed: scenario
                .rates
                .iter()
                .map(|r| FixedRuns {
                    rate: *r,
                    ..FixedRuns::default()
                })
                .collect(),
            ..Measured::default()
        })
        .collect();
    let n = started.len();
    let ticks_before = cpu_ticks();
    for round in 0..scenario.rounds {
        for k in 0..n {
            let i = (k + round) % n;
            let (t, m) = (&started[i], &mut measured[i]);
            for other in &started {
                other.settle().await;
            }
            quiet_disk();
            let before = t.audit_events();
            let since = std::time::Instant::now();
            let recorder = record(profile, t, round, None, scenario.saturation_seconds)?;
            let cpu_before = t.cpu_ticks();
            let Saturation { per_second, errors } = saturate(
                &t.req,
                scenario.connections,
                scenario.saturation_seconds,
                scenario.timeout_seconds,
                dir,
            )?;
            if let Some(r) = recorder {
                r.finish()?;
            }
            if let (Some(b), Some(a)) = (before, t.audit_events()) {
                m.audit_events_per_s
                    .push(a.saturating_sub(b) as f64 / since.elapsed().as_secs_f64());
            }
            if let (Some(b), Some(a)) = (cpu_before, t.cpu_ticks()) {
                let requests = per_second * scenario.saturation_seconds as f64;
                m.saturation_cpu_us
                    .push(cpu_us_per_request(a - b, requests));
            }
            m.saturation.push(per_second);
            m.saturation_errors += errors;
            if let Some(rss) = t.rss_mb() {
                m.rss_mb = Some(m.rss_mb.map_or(rss, |r: f64| r.max(rss)));
            }
            for f in m.fixed.iter_mut() {
                t.settle().await;
                quiet_disk();
                let recorder = record(profile, t, round, Some(f.rate), scenario.fixed_seconds)?;
                let cpu_before = t.cpu_ticks();
                let r = fixed_rate(&t.req, f.rate, scenario.fixed_seconds, scenario.connections)
                    .await?;
                if let Some(r) = recorder {
                    r.finish()?;
                }
                if let (Some(b), Some(a)) = (cpu_before, t.cpu_ticks()) {
                    f.cpu_us.push(cpu_us_per_request(a - b, r.sent as f64));
                }
                f.p50.push(r.p50);
                f.p99.push(r.p99);
                f.errors += r.errors;
                f.sent += r.sent;
            }
        }
    }
    report.measured = measured;
    if let (Some((s0, t0)), Some((s1, t1))) = (ticks_before, cpu_ticks()) {
        if t1 > t0 {
            report.steal_percent = Some(100.0 * (s1 - s0) as f64 / (t1 - t0) as f64);
        }
    }
    Ok(report)
}

/// Writes back every dirty page before a measurement: what the previous
/// target wrote (a gateway's audit store after its saturation run) would
/// otherwise be flushed during the next one's, slowing its synced writes —
/// an A/A run (one build in both slots) showed the slot that more often
/// followed the other with a p50 half again as high at 1,000 req/s.
pub fn quiet_disk() {
    let _ = std::process::Command::new("sync").status();
}

/// CPU µs per request from clock ticks (1/100 s) over a number of requests.
fn cpu_us_per_request(ticks: u64, requests: f64) -> f64 {
    if requests > 0.0 {
        ticks as f64 * 10_000.0 / requests
    } else {
        f64::NAN
    }
}

/// A median with its spread, or a dash when nothing was measured.
fn cpu_cell(xs: &[f64]) -> String {
    let m = median(xs);
    if m.is_nan() {
        "—".into()
    } else {
        format!("{m:.1}{}", spread(xs))
    }
}

/// The median of some figures (NaN for none).
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn spread(xs: &[f64]) -> String {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if xs.len() < 2 {
        String::new()
    } else if hi >= 100.0 {
        format!(" [{lo:.0}–{hi:.0}]")
    } else {
        format!(" [{lo:.2}–{hi:.2}]")
    }
}

/// The report as Markdown tables.
pub fn markdown(report: &Report) -> String {
    let mut s = String::new();
    if let Some(steal) = report.steal_percent {
        s.push_str(&format!(
            "CPU stolen by the hypervisor during the run: {steal:.0}% (compare figures across runs only when this is low)\n\n"
        ));
    }
    let med = |m: &Measured| median(&m.saturation);
    let nginx = report
        .measured
        .iter()
        .find(|m| m.target == "nginx")
        .map(med);
    let direct = report.measured.iter().find(|m| m.target == "direct");
    s.push_str("| target | saturation req/s (median [min–max]) | × nginx | errors | RSS MB | CPU µs per request |\n");
    s.push_str("|---|---|---|---|---|---|\n");
    for m in &report.measured {
        let ratio = match nginx {
            Some(n) if n > 0.0 && m.target != "direct" => format!("{:.2}×", med(m) / n),
            _ => "—".into(),
        };
        let rss = m.rss_mb.map_or("—".into(), |r| format!("{r:.0}"));
        s.push_str(&format!(
            "| {} | {:.0}{} | {ratio} | {} | {rss} | {} |\n",
            m.target,
            med(m),
            spread(&m.saturation),
            m.saturation_errors,
            cpu_cell(&m.saturation_cpu_us)
        ));
    }
    if let Some(first) = report.measured.first() {
        for (k, f) in first.fixed.iter().enumerate() {
            s.push_str(&format!(
                "\n| at {} req/s (open loop) | p50 ms | p99 ms (median [min–max]) | added over direct at p99 | errors / sent | CPU µs per request |\n",
                f.rate
            ));
            s.push_str("|---|---|---|---|---|---|\n");
            let base = direct.map(|d| median(&d.fixed[k].p99));
            for m in &report.measured {
                let r = &m.fixed[k];
                let p99 = median(&r.p99);
                let added = match base {
                    Some(b) if m.target != "direct" => format!("{:.3}", p99 - b),
                    _ => "—".into(),
                };
                s.push_str(&format!(
                    "| {} | {:.3} | {:.3}{} | {added} | {} / {} | {} |\n",
                    m.target,
                    median(&r.p50),
                    p99,
                    spread(&r.p99),
                    r.errors,
                    r.sent,
                    cpu_cell(&r.cpu_us)
                ));
            }
        }
    }
    for m in &report.measured {
        if !m.audit_events_per_s.is_empty() {
            s.push_str(&format!(
                "\n{}: audit events written per second at saturation: {:.0}{}\n",
                m.target,
                median(&m.audit_events_per_s),
                spread(&m.audit_events_per_s)
            ));
        }
    }
    s.push_str(&paired::markdown(report));
    for (name, why) in &report.skipped {
        s.push_str(&format!("\n{name}: not measured ({why})\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(spread(&[1000.0, 1500.0, 1200.0]), " [1000–1500]");
        assert_eq!(spread(&[0.5]), "");
    }

    #[test]
    fn the_shipped_scenarios_parse_and_unknown_keys_are_refused() {
        for f in ["http-tools.toml", "llm-chat.toml", "mcp-call.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("scenarios")
                .join(f);
            let s = Scenario::load(&path).unwrap();
            assert!(s.rounds >= 3, "{f}: medians need rounds");
            assert_eq!(s.timeout_seconds, 2, "{f}: wrk's own default");
            let smoke = s.smoke();
            assert_eq!(
                (smoke.rounds, smoke.fixed_seconds, smoke.timeout_seconds),
                (1, 1, 30)
            );
        }
        let bad: Result<Scenario, _> = toml::from_str(
            "route = \"http\"\npath = \"/\"\ntargets = [\"direct\"]\nrates = [1]\nfixed_seconds = 1\nsaturation_seconds = 1\nconnections = 1\nrounds = 1\nthreads = 4\n",
        );
        let err = bad.unwrap_err().to_string();
        assert!(err.contains("unknown field `threads`"), "{err}");
    }

    #[test]
    fn the_table_gives_ratios_to_nginx_and_latency_added_over_direct() {
        let runs = |p99: f64| {
            vec![FixedRuns {
                rate: 1000,
                p50: vec![p99 / 2.0],
                p99: vec![p99],
                errors: 0,
                sent: 1000,
                cpu_us: vec![p99 * 100.0],
            }]
        };
        let m = |t: &str, sat: f64, p99: f64| Measured {
            target: t.into(),
            saturation: vec![sat],
            fixed: runs(p99),
            ..Measured::default()
        };
        let report = Report {
            measured: vec![
                m("direct", 100_000.0, 0.2),
                m("nginx", 50_000.0, 0.4),
                m("lattice", 20_000.0, 0.5),
            ],
            skipped: vec![("agentgateway".into(), "pass --agentgateway PATH".into())],
            steal_percent: Some(12.4),
            nginx_target: None,
        };
        let md = markdown(&report);
        assert!(
            md.contains("| lattice | 20000 | 0.40× | 0 | — | — |"),
            "{md}"
        );
        assert!(md.contains("| direct | 100000 | — |"), "{md}");
        assert!(
            md.contains("| lattice | 0.250 | 0.500 | 0.300 | 0 / 1000 | 50.0 |"),
            "{md}"
        );
        assert!(md.contains("agentgateway: not measured (pass --agentgateway PATH)"));
        assert!(md.contains("during the run: 12%"), "{md}");
        assert!(cpu_ticks().is_some_and(|(steal, total)| total > steal));
        assert_eq!(cpu_us_per_request(50, 10_000.0), 50.0);
        assert!(cpu_us_per_request(5, 0.0).is_nan());
    }
}
