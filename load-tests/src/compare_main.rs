//! `lattice-load-compare`: runs a scenario file against every target side by
//! side and prints one Markdown report (the command, the date, the machine,
//! the tables) for `docs/benchmarks.md`.
//!
//! `lattice-load-compare SCENARIO.toml --lattice target/release/lattice
//!    [--agentgateway PATH] [--litellm PATH] [--baseline PATH]
//!    [--targets a,b,c] [--rounds N] [--saturation-only]
//!    [--smoke] [--out FILE.md] [--json FILE.json] [--profile DIR
//!    [--profile-rate RATE]]`
//!
//! `--profile DIR`: `perf` records each target's process during its first
//! saturation run (`DIR/<target>.perf.txt`, and `DIR/<target>.svg` when
//! `inferno` is installed); with `--profile-rate RATE`, during its first
//! run at that fixed rate instead (one of the scenario's `rates`): where
//! the CPU goes when calls come one at a time.
//!
//! `--baseline PATH`: another Lattice build, measured as the target
//! `baseline` (name it in `--targets`): a change's before and after in one
//! interleaved run.
//!
//! `--saturation-only`: the scenario's fixed rates left out — the many
//! paired rounds that decide a ratio (against a peer, or nginx's share
//! with the scenario's `nginx_target`) in minutes rather than an hour.
//!
//! `--smoke`: one round of one second at a low rate (the test suite runs it
//! so the harness cannot rot; its figures mean nothing).
//!
//! `lattice-load-compare --pool RUN.json [RUN.json:swapped ...]`: no load;
//! the build under test against the other over the rounds of several runs
//! written with `--json` (`:swapped`: it ran as `--baseline` in that one).
//!
//! Must never: send traffic anywhere but loopback, or run unbounded.

use anyhow::{bail, Context, Result};
use lattice_load_tests::compare::{markdown, run, targets::Programs, Profile, Scenario};
use std::path::PathBuf;
use std::process::Command;

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).to_string();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu})")
}

/// `--pool`: prints the pooled round-by-round comparison of the runs named.
fn pool(files: &[String]) -> Result<()> {
    let mut runs = Vec::new();
    for f in files {
        let (path, swapped) = match f.strip_suffix(":swapped") {
            Some(p) => (p, true),
            None => (f.as_str(), false),
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
        runs.push((path.to_string(), text, swapped));
    }
    let line = lattice_load_tests::compare::paired::pool(&runs).map_err(anyhow::Error::msg)?;
    print!("{line}");
    Ok(())
}

/// Arguments (`--help` lists them; the module header explains each).
#[derive(clap::Parser)]
#[command(
    about = "Runs a scenario file against every target side by side and prints one Markdown report"
)]
struct Args {
    /// The scenario file (`load-tests/scenarios/*.toml`).
    #[arg(required_unless_present = "pool")]
    scenario: Option<PathBuf>,
    /// The `lattice` binary to measure (a release build).
    #[arg(long, default_value = "target/release/lattice")]
    lattice: PathBuf,
    /// agentgateway's binary (the target `agentgateway`).
    #[arg(long, value_name = "PATH")]
    agentgateway: Option<PathBuf>,
    /// LiteLLM's `litellm` launcher (the target `litellm`).
    #[arg(long, value_name = "PATH")]
    litellm: Option<PathBuf>,
    /// Another Lattice build, measured as the target `baseline`.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// Only these of the scenario's targets, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
    targets: Option<Vec<String>>,
    /// Rounds instead of the scenario's (1 to 20).
    #[arg(long)]
    rounds: Option<usize>,
    /// No fixed rates: saturation runs only (many paired rounds in minutes).
    #[arg(long)]
    saturation_only: bool,
    /// One round of one second at a low rate (its figures mean nothing).
    #[arg(long)]
    smoke: bool,
    /// Also write the Markdown report here.
    #[arg(long, value_name = "FILE.md")]
    out: Option<PathBuf>,
    /// Also write every round's figures here (for `--pool`).
    #[arg(long, value_name = "FILE.json")]
    json: Option<PathBuf>,
    /// `perf` records each target during its first saturation run, into DIR.
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// With `--profile`: during its first run at this fixed rate instead.
    #[arg(long, value_name = "RATE", requires = "profile")]
    profile_rate: Option<u64>,
    /// No load: pools the rounds of runs written with `--json`
    /// (`RUN.json:swapped`: the build under test ran as `--baseline` there).
    #[arg(long, num_args = 1.., value_name = "RUN.json", exclusive = true)]
    pool: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = <Args as clap::Parser>::parse();
    if !args.pool.is_empty() {
        return pool(&args.pool);
    }
    let programs = Programs {
        lattice: args.lattice,
        agentgateway: args.agentgateway,
        litellm: args.litellm,
        baseline: args.baseline,
    };
    let path = args
        .scenario
        .context("usage: lattice-load-compare SCENARIO.toml --lattice PATH")?;
    let mut scenario = Scenario::load(&path)?;
    if let Some(t) = args.targets {
        scenario.targets = t;
    }
    if let Some(r) = args.rounds {
        scenario.rounds = r.clamp(1, 20);
    }
    if args.saturation_only {
        scenario.rates.clear();
    }
    if args.smoke {
        scenario = scenario.smoke();
    }
    // `--profile-rate` without `--profile` is refused by the parser.
    let profile = match args.profile {
        Some(dir) => {
            if let Some(r) = args.profile_rate.filter(|r| !scenario.rates.contains(r)) {
                bail!(
                    "--profile-rate {r} is not one of the scenario's rates {:?}",
                    scenario.rates
                );
            }
            Some(Profile {
                dir,
                rate: args.profile_rate,
            })
        }
        None => None,
    };
    let dir = tempfile::tempdir()?;
    let report = run(&scenario, &programs, dir.path(), profile.as_ref()).await?;
    let date = first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let mut text = format!(
        "```\n{}\n```\n{date}; {}; {}; {}; {} rounds interleaved, {} connections, {} s saturation and {} s per fixed rate\n\n",
        std::iter::once("lattice-load-compare".to_string())
            .chain(argv.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
        machine(),
        first_line("nginx", &["-v"]),
        first_line("wrk", &["-v"]),
        scenario.rounds,
        scenario.connections,
        scenario.saturation_seconds,
        scenario.fixed_seconds,
    );
    text.push_str(&markdown(&report));
    print!("{text}");
    if let Some(o) = args.out {
        std::fs::write(&o, &text).with_context(|| format!("write {}", o.display()))?;
    }
    if let Some(j) = args.json {
        std::fs::write(&j, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
