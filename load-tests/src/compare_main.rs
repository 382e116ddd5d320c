//! `lattice-load-compare`: runs a scenario file against every target side by
//! side and prints one Markdown report (the command, the date, the machine,
//! the tables) for `docs/benchmarks.md`.
//!
//! `lattice-load-compare SCENARIO.toml --lattice target/release/lattice
//!    [--agentgateway PATH] [--litellm PATH] [--baseline PATH]
//!    [--targets a,b,c] [--rounds N]
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
    if files.is_empty() {
        bail!("usage: lattice-load-compare --pool RUN.json [RUN.json:swapped ...]");
    }
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

#[tokio::main]
async fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--pool") {
        return pool(&argv[1..]);
    }
    let mut programs = Programs {
        lattice: PathBuf::from("target/release/lattice"),
        ..Programs::default()
    };
    let (mut scenario_path, mut smoke, mut out, mut json) = (None, false, None, None);
    let mut profile: Option<PathBuf> = None;
    let mut profile_rate: Option<u64> = None;
    let (mut only, mut rounds): (Option<Vec<String>>, Option<usize>) = (None, None);
    let mut i = 0;
    while i < argv.len() {
        let value = || argv.get(i + 1).context("missing value");
        match argv[i].as_str() {
            "--smoke" => {
                smoke = true;
                i += 1;
                continue;
            }
            "--lattice" => programs.lattice = PathBuf::from(value()?),
            "--agentgateway" => programs.agentgateway = Some(PathBuf::from(value()?)),
            "--litellm" => programs.litellm = Some(PathBuf::from(value()?)),
            "--baseline" => programs.baseline = Some(PathBuf::from(value()?)),
            "--targets" => only = Some(value()?.split(',').map(str::to_string).collect()),
            "--rounds" => rounds = Some(value()?.parse()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--json" => json = Some(PathBuf::from(value()?)),
            "--profile" => profile = Some(PathBuf::from(value()?)),
            "--profile-rate" => profile_rate = Some(value()?.parse()?),
            s if !s.starts_with("--") && scenario_path.is_none() => {
                scenario_path = Some(PathBuf::from(s));
                i += 1;
                continue;
            }
            other => bail!("unknown argument {other}"),
        }
        i += 2;
    }
    let path = scenario_path.context("usage: lattice-load-compare SCENARIO.toml --lattice PATH")?;
    let mut scenario = Scenario::load(&path)?;
    if let Some(t) = only {
        scenario.targets = t;
    }
    if let Some(r) = rounds {
        scenario.rounds = r.clamp(1, 20);
    }
    if smoke {
        scenario = scenario.smoke();
    }
    let profile = match (profile, profile_rate) {
        (Some(dir), rate) => {
            if let Some(r) = rate.filter(|r| !scenario.rates.contains(r)) {
                bail!(
                    "--profile-rate {r} is not one of the scenario's rates {:?}",
                    scenario.rates
                );
            }
            Some(Profile { dir, rate })
        }
        (None, Some(_)) => bail!("--profile-rate needs --profile DIR"),
        (None, None) => None,
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
    if let Some(o) = out {
        std::fs::write(&o, &text).with_context(|| format!("write {}", o.display()))?;
    }
    if let Some(j) = json {
        std::fs::write(&j, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
