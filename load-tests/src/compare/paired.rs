//! Lattice against each peer round by round: a run's rounds are measured
//! back to back (each round every target once, in turn), so the two
//! figures of one round share the machine's state of that moment, and
//! their ratio moves less than either figure does from round to round. On
//! a machine whose speed drifts ±15% between rounds, medians over a few
//! rounds cannot tell a 5% change from noise; the rounds' ratios and how
//! often one side is ahead can, once there are enough of them. Whether a
//! side is shown ahead is a one-sided sign test on the rounds: the chance
//! of at least that many wins out of that many fair coin flips. Compared
//! so: saturation (higher is ahead), CPU per request at saturation, and
//! the p99 at each fixed rate (lower is ahead): a tail is the noisiest
//! figure of all, and a latency change is decided only this way.
//!
//! `pool` does the same over several runs' JSON reports (`--pool`), each
//! with the build under test in the `lattice` slot or, marked `:swapped`,
//! in the `baseline` slot: a change's A/B in both slot orders, as one
//! verdict.
//!
//! Must never: call a side ahead that the test cannot tell from chance (at
//! 5%), or pair figures of different rounds.

use serde::Deserialize;

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::{median, spread, Measured, Report};

/// The level below which a sign test's chance counts as shown.
const SHOWN: f64 = 0.05;

/// Targets compared with Lattice: the build before and the peers (direct,
/// nginx and bare Pingora are reference points, not rivals).
const RIVALS: [&str; 3] = ["baseline", "agentgateway", "litellm"];

/// One measure compared round by round.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    /// Lattice's figure over the rival's, per round.
    pub ratios: Vec<f64>,
    /// Rounds where Lattice did better (higher throughput, less CPU).
    pub ahead: usize,
    /// Rounds where the rival did.
    pub behind: usize,
}

impl Paired {
    /// `higher_is_better`: throughput (true) or cost (false). Rounds where
    /// either side has no figure are left out.
    pub fn of(lattice: &[f64], rival: &[f64], higher_is_better: bool) -> Self {
        let mut p = Paired {
            ratios: Vec::new(),
            ahead: 0,
            behind: 0,
        };
        for (l, r) in lattice.iter().zip(rival) {
            if !(l.is_finite() && r.is_finite() && *r > 0.0) {
                continue;
            }
            p.ratios.push(l / r);
            let lattice_vs_rival = if higher_is_better {
                l.total_cmp(r)
            } else {
                r.total_cmp(l)
            };
            match lattice_vs_rival {
                Ordering::Greater => p.ahead += 1,
                Ordering::Less => p.behind += 1,
                Ordering::Equal => {}
            }
        }
        p
    }

    /// What the rounds show, in words: ahead, behind, or not decided, with
    /// the sign test's chance.
    pub fn verdict(&self) -> String {
        let n = self.ratios.len();
        let ahead = sign_test(self.ahead, n);
        let behind = sign_test(self.behind, n);
        if ahead <= SHOWN {
            format!("shown ahead (p = {ahead:.3})")
        } else if behind <= SHOWN {
            format!("shown behind (p = {behind:.3})")
        } else {
            format!(
                "not decided (p = {:.3}; it takes {})",
                ahead.min(behind),
                needed(n).map_or_else(
                    || "more rounds".to_string(),
                    |k| format!("{k} rounds of {n}")
                )
            )
        }
    }
}

/// The chance of `k` or more heads in `n` fair coin flips (one-sided sign
/// test); 1 when nothing was flipped.
pub fn sign_test(k: usize, n: usize) -> f64 {
    if n == 0 {
        return 1.0;
    }
    // C(n, i) / 2^n summed for i in k..=n, in floating point (n stays small).
    let mut c = 1.0_f64; // C(n, 0)
    let mut sum = 0.0;
    for i in 0..=n {
        if i >= k {
            sum += c;
        }
        c = c * (n - i) as f64 / (i + 1) as f64;
    }
    sum / 2f64.powi(n as i32)
}

/// Whether `met` rounds out of `n` show the `target` met (at 5%,
/// one-sided), missed (the other rounds, the same test), or neither, in
/// words: `relation` says how a round stands to the target when it meets
/// it and when it misses ("within" / "over"), each verdict followed by the
/// chance.
pub fn judge(met: usize, n: usize, relation: (&str, &str), target: &str) -> String {
    let (p_met, p_missed) = (sign_test(met, n), sign_test(n - met, n));
    if p_met <= SHOWN {
        format!("shown {} {target} (p = {p_met:.3})", relation.0)
    } else if p_missed <= SHOWN {
        format!("shown {} {target} (p = {p_missed:.3})", relation.1)
    } else {
        format!(
            "not decided against {target} (p = {:.3})",
            p_met.min(p_missed)
        )
    }
}

/// The fewest wins out of `n` rounds that the test shows, if any.
fn needed(n: usize) -> Option<usize> {
    (0..=n).find(|k| sign_test(*k, n) <= SHOWN)
}

fn line(name: &str, p: &Paired, higher: &str) -> String {
    format!(
        "{name} ×{:.2}{}, {higher} in {} of {} rounds: {}",
        median(&p.ratios),
        spread(&p.ratios),
        p.ahead,
        p.ratios.len(),
        p.verdict()
    )
}

/// Saturation's line, then CPU per request's when there is one.
fn lines(sat: &Paired, cpu: &Paired) -> String {
    let mut s = line("saturation", sat, "higher");
    if !cpu.ratios.is_empty() {
        s.push_str("; ");
        s.push_str(&line("CPU per request", cpu, "lower"));
    }
    s
}

/// The round-by-round comparison of Lattice with the build before and the
/// peers measured in the run, as Markdown (empty when there is none).
pub fn markdown(report: &Report) -> String {
    let Some(lattice) = report.measured.iter().find(|m| m.target == "lattice") else {
        return String::new();
    };
    let mut s = String::new();
    for rival in report
        .measured
        .iter()
        .filter(|m| RIVALS.contains(&m.target.as_str()))
    {
        s.push_str(&compare(lattice, rival));
    }
    let nginx = report.measured.iter().find(|m| m.target == "nginx");
    if let (Some(nginx), Some(target)) = (nginx, report.nginx_target) {
        s.push_str(&against_nginx(lattice, nginx, target));
    }
    s
}

/// Lattice's saturation over nginx's bare proxying, round by round,
/// against the share a target asks of it.
fn against_nginx(lattice: &Measured, nginx: &Measured, target: f64) -> String {
    let p = Paired::of(&lattice.saturation, &nginx.saturation, true);
    let n = p.ratios.len();
    if n == 0 {
        return String::new();
    }
    let met = p.ratios.iter().filter(|r| **r >= target).count();
    format!(
        "\nlattice over nginx's bare proxying, round by round: ×{:.2}{}, at or above the ×{target} target in {met} of {n} rounds: {}\n",
        median(&p.ratios),
        spread(&p.ratios),
        judge(met, n, ("at or above", "below"), &format!("×{target}"))
    )
}

fn compare(lattice: &Measured, rival: &Measured) -> String {
    let sat = Paired::of(&lattice.saturation, &rival.saturation, true);
    if sat.ratios.is_empty() {
        return String::new();
    }
    let cpu = Paired::of(&lattice.saturation_cpu_us, &rival.saturation_cpu_us, false);
    let tails = lattice
        .fixed
        .iter()
        .zip(&rival.fixed)
        .filter(|(l, r)| l.rate == r.rate)
        .map(|(l, r)| (l.rate, Paired::of(&l.p99, &r.p99, false)));
    format!(
        "\nlattice against {}, round by round (each round's two figures measured back to back): {}\n",
        rival.target,
        lines(&sat, &cpu) + &tail_lines(tails)
    )
}

/// The p99 at each fixed rate, compared like the rest: lower is ahead.
fn tail_lines(tails: impl Iterator<Item = (u64, Paired)>) -> String {
    tails
        .filter(|(_, p)| !p.ratios.is_empty())
        .map(|(rate, p)| format!("; {}", line(&format!("p99 at {rate}/s"), &p, "lower")))
        .collect()
}

/// The figures `pool` reads from a run's JSON report (a figure that could
/// not be measured is written as `null`).
#[derive(Deserialize)]
struct RunFile {
    measured: Vec<Slot>,
}

#[derive(Deserialize)]
struct Slot {
    target: String,
    saturation: Vec<Option<f64>>,
    saturation_cpu_us: Vec<Option<f64>>,
    #[serde(default)]
    fixed: Vec<FixedSlot>,
}

#[derive(Deserialize)]
struct FixedSlot {
    rate: u64,
    p99: Vec<Option<f64>>,
}

fn figures(xs: &[Option<f64>]) -> Vec<f64> {
    xs.iter().map(|x| x.unwrap_or(f64::NAN)).collect()
}

/// The build under test against the other build, over the rounds of
/// several runs: `(name, JSON text, swapped)` per run, `swapped` when the
/// build under test ran in the `baseline` slot.
pub fn pool(runs: &[(String, String, bool)]) -> Result<String, String> {
    let (mut sat, mut cpu) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    // Per fixed rate: the build under test's p99s and the other's.
    let mut tails: BTreeMap<u64, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (name, text, swapped) in runs {
        let run: RunFile =
            serde_json::from_str(text).map_err(|e| format!("{name}: not a report: {e}"))?;
        let slot = |target: &str| {
            run.measured
                .iter()
                .find(|m| m.target == target)
                .ok_or_else(|| format!("{name}: no `{target}` target in this run"))
        };
        let (mut test, mut other) = (slot("lattice")?, slot("baseline")?);
        if *swapped {
            std::mem::swap(&mut test, &mut other);
        }
        sat.0.extend(figures(&test.saturation));
        sat.1.extend(figures(&other.saturation));
        cpu.0.extend(figures(&test.saturation_cpu_us));
        cpu.1.extend(figures(&other.saturation_cpu_us));
        for (t, o) in test.fixed.iter().zip(&other.fixed) {
            if t.rate != o.rate {
                continue;
            }
            let (test_p99, other_p99) = tails.entry(t.rate).or_default();
            test_p99.extend(figures(&t.p99));
            other_p99.extend(figures(&o.p99));
        }
    }
    let swapped = runs.iter().filter(|r| r.2).count();
    let sat = Paired::of(&sat.0, &sat.1, true);
    let cpu = Paired::of(&cpu.0, &cpu.1, false);
    let tails = tails
        .into_iter()
        .map(|(rate, (t, o))| (rate, Paired::of(&t, &o, false)));
    Ok(format!(
        "the build under test against the other, pooled over {} runs ({} rounds; in the `baseline` slot in {swapped} of the runs): {}\n",
        runs.len(),
        sat.ratios.len(),
        lines(&sat, &cpu) + &tail_lines(tails)
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sign_test_is_the_binomial_tail() {
        // (wins, rounds, chance): exact fractions of 2^n.
        for (k, n, p) in [
            (6, 6, 1.0 / 64.0),
            (5, 6, 7.0 / 64.0),
            (0, 6, 1.0),
            (3, 3, 1.0 / 8.0),
            (2, 3, 4.0 / 8.0),
            (9, 10, 11.0 / 1024.0),
            (0, 0, 1.0),
        ] {
            assert!((sign_test(k, n) - p).abs() < 1e-12, "{k} of {n}");
        }
        // Five rounds all won are the fewest that show anything at 5%.
        assert_eq!(needed(4), None);
        assert_eq!(needed(5), Some(5));
        assert_eq!(needed(6), Some(6));
        assert_eq!(needed(10), Some(9));
    }

    #[test]
    fn rounds_pair_by_position_and_cost_counts_lower_as_ahead() {
        let sat = Paired::of(&[110.0, 90.0, 100.0], &[100.0, 100.0, 100.0], true);
        assert_eq!(sat.ratios, vec![1.1, 0.9, 1.0]);
        assert_eq!((sat.ahead, sat.behind), (1, 1));
        let cpu = Paired::of(&[80.0, 90.0, f64::NAN], &[100.0, 85.0, 70.0], false);
        assert_eq!(cpu.ratios.len(), 2, "a round without a figure is left out");
        assert_eq!((cpu.ahead, cpu.behind), (1, 1));
    }

    #[test]
    fn verdicts_name_the_side_only_when_the_test_shows_it() {
        let won = Paired::of(&[2.0; 6], &[1.0; 6], true);
        assert_eq!(won.verdict(), "shown ahead (p = 0.016)");
        let lost = Paired::of(&[1.0; 6], &[2.0; 6], true);
        assert_eq!(lost.verdict(), "shown behind (p = 0.016)");
        let mixed = Paired::of(&[2.0, 2.0, 2.0, 2.0, 2.0, 1.0], &[1.5; 6], true);
        assert_eq!(
            mixed.verdict(),
            "not decided (p = 0.109; it takes 6 rounds of 6)"
        );
        let few = Paired::of(&[2.0; 3], &[1.0; 3], true);
        assert_eq!(
            few.verdict(),
            "not decided (p = 0.125; it takes more rounds)"
        );
    }

    #[test]
    fn the_report_compares_lattice_with_the_build_before_and_the_peers_only() {
        let m = |target: &str, sat: &[f64], cpu: &[f64]| Measured {
            target: target.into(),
            saturation: sat.to_vec(),
            saturation_cpu_us: cpu.to_vec(),
            ..Measured::default()
        };
        let report = Report {
            measured: vec![
                m("nginx", &[50.0; 6], &[10.0; 6]),
                m("lattice", &[10.0, 11.0, 12.0, 13.0, 14.0, 15.0], &[90.0; 6]),
                m(
                    "baseline",
                    &[9.0, 10.0, 11.0, 12.0, 13.0, 16.0],
                    &[100.0; 6],
                ),
            ],
            ..Report::default()
        };
        let md = markdown(&report);
        assert!(!md.contains("nginx"), "{md}");
        assert_eq!(
            md.trim(),
            "lattice against baseline, round by round (each round's two figures measured back to back): \
             saturation ×1.09 [0.94–1.11], higher in 5 of 6 rounds: not decided (p = 0.109; it takes 6 rounds of 6); \
             CPU per request ×0.90 [0.90–0.90], lower in 6 of 6 rounds: shown ahead (p = 0.016)"
        );
        assert_eq!(markdown(&Report::default()), "");
    }

    /// Against nginx only with a target to judge, and then as a table of
    /// rounds: met, missed, undecided.
    #[test]
    fn the_share_of_nginx_is_judged_against_the_scenarios_target() {
        let m = |target: &str, sat: &[f64]| Measured {
            target: target.into(),
            saturation: sat.to_vec(),
            ..Measured::default()
        };
        let report = |lattice: &[f64], target: Option<f64>| Report {
            measured: vec![m("nginx", &[100.0; 6]), m("lattice", lattice)],
            nginx_target: target,
            ..Report::default()
        };
        assert_eq!(markdown(&report(&[41.0; 6], None)), "");
        let table: [(&[f64], &str); 3] = [
            (
                &[41.0, 42.0, 40.0, 43.0, 44.0, 45.0],
                "×0.42 [0.40–0.45], at or above the ×0.4 target in 6 of 6 rounds: shown at or above ×0.4 (p = 0.016)",
            ),
            (
                &[38.0, 39.0, 37.0, 36.0, 39.5, 35.0],
                "×0.38 [0.35–0.40], at or above the ×0.4 target in 0 of 6 rounds: shown below ×0.4 (p = 0.016)",
            ),
            (
                &[38.0, 41.0, 37.0, 42.0, 39.5, 43.0],
                "×0.40 [0.37–0.43], at or above the ×0.4 target in 3 of 6 rounds: not decided against ×0.4 (p = 0.656)",
            ),
        ];
        for (lattice, want) in table {
            let md = markdown(&report(lattice, Some(0.4)));
            assert_eq!(
                md.trim(),
                format!("lattice over nginx's bare proxying, round by round: {want}"),
                "{lattice:?}"
            );
        }
    }

    #[test]
    fn the_tail_at_each_fixed_rate_is_compared_round_by_round() {
        use super::super::FixedRuns;
        let m = |target: &str, p99: &[f64]| Measured {
            target: target.into(),
            saturation: vec![10.0; 5],
            fixed: vec![FixedRuns {
                rate: 1000,
                p99: p99.to_vec(),
                ..FixedRuns::default()
            }],
            ..Measured::default()
        };
        let report = Report {
            measured: vec![
                m("lattice", &[0.9, 1.0, 1.1, 0.8, 1.0]),
                m("baseline", &[1.0, 1.2, 1.3, 1.0, 1.1]),
            ],
            ..Report::default()
        };
        let md = markdown(&report);
        assert!(
            md.trim_end().ends_with(
                "; p99 at 1000/s ×0.85 [0.80–0.91], lower in 5 of 5 rounds: shown ahead (p = 0.031)"
            ),
            "{md}"
        );
    }

    #[test]
    fn runs_pool_with_the_swapped_ones_turned_round() {
        let run = |l: &str, b: &str| {
            format!(
                r#"{{"measured":[{{"target":"lattice","saturation":{l},"saturation_cpu_us":[90.0,90.0,null],
                "fixed":[{{"rate":1000,"p99":[1.0,1.0,1.0]}}]}},
                {{"target":"baseline","saturation":{b},"saturation_cpu_us":[100.0,100.0,100.0],
                "fixed":[{{"rate":1000,"p99":[2.0,2.0,null]}}]}}],"skipped":[]}}"#
            )
        };
        // The build under test wins every round of both runs: in the
        // `lattice` slot of the first, the `baseline` slot of the second.
        let runs = vec![
            (
                "a.json".to_string(),
                run("[11.0,12.0,13.0]", "[10.0,10.0,10.0]"),
                false,
            ),
            (
                "b.json".to_string(),
                run("[10.0,10.0,10.0]", "[12.0,12.0,12.0]"),
                true,
            ),
        ];
        assert_eq!(
            pool(&runs).unwrap(),
            "the build under test against the other, pooled over 2 runs (6 rounds; in the `baseline` slot in 1 of the runs): \
             saturation ×1.20 [1.10–1.30], higher in 6 of 6 rounds: shown ahead (p = 0.016); \
             CPU per request ×1.01 [0.90–1.11], lower in 2 of 4 rounds: not decided (p = 0.688; it takes more rounds); \
             p99 at 1000/s ×1.25 [0.50–2.00], lower in 2 of 4 rounds: not decided (p = 0.688; it takes more rounds)\n"
        );
        let missing = vec![(
            "c.json".to_string(),
            r#"{"measured":[]}"#.to_string(),
            false,
        )];
        assert_eq!(
            pool(&missing).unwrap_err(),
            "c.json: no `lattice` target in this run"
        );
        assert!(pool(&[("d.json".into(), "{".into(), false)])
            .unwrap_err()
            .starts_with("d.json: not a report: "));
    }
}
