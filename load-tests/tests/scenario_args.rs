//! The route scenarios' command lines, as a table: `--help` lists every
//! flag with its default, a mistyped flag is refused with the one meant,
//! and a run past the scenario's bounds is refused before anything starts.
//! (The scenarios themselves are measured by `load-tests/remeasure`, not
//! here: they take a release build and minutes.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

/// The flags every route scenario takes.
const RUN: &[&str] = &[
    "--lattice",
    "--rate",
    "--seconds",
    "--saturation-seconds",
    "--concurrency",
];

/// Each scenario binary, the flags its `--help` must list besides `RUN`
/// (all of `RUN` where the first is true), and a run its bounds refuse.
#[rustfmt::skip]
const SCENARIOS: &[(&str, bool, &[&str], &[&str])] = &[
    (env!("CARGO_BIN_EXE_lattice-load-http"), true, &["--clickhouse"], &["--seconds", "121"]),
    (env!("CARGO_BIN_EXE_lattice-load-durability"), true, &["--rounds"], &["--rounds", "11"]),
    (env!("CARGO_BIN_EXE_lattice-load-limits"), true, &["--rounds"], &["--rate", "20001"]),
    (env!("CARGO_BIN_EXE_lattice-load-llm"), true, &["--chunks", "--streams", "--keep"], &["--streams", "10001"]),
    (env!("CARGO_BIN_EXE_lattice-load-mcp"), true, &["--everything"], &["--rate", "10001"]),
    (env!("CARGO_BIN_EXE_lattice-load-traces"), true, &["--rounds"], &["--rounds", "13"]),
    (env!("CARGO_BIN_EXE_lattice-load-audit"), false, &["--events", "--producers"], &["--producers", "0"]),
    (env!("CARGO_BIN_EXE_lattice-load-worker"), false, &["--hidden", "--layers", "--kv-heads", "--skip-candle", "--weights-in-place", "--attention", "--stream-tokens"], &["--layers", "65"]),
];

fn run(bin: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn every_scenario_explains_its_flags_and_refuses_what_it_cannot_run() {
    for (bin, route, own, too_much) in SCENARIOS {
        let flags: Vec<&str> = RUN
            .iter()
            .filter(|_| *route)
            .chain(own.iter())
            .copied()
            .collect();
        let (code, help) = run(bin, &["--help"]);
        assert_eq!(code, 0, "{bin} --help: {help}");
        for flag in &flags {
            assert!(help.contains(flag), "{bin} --help lacks {flag}:\n{help}");
        }
        assert!(
            help.contains("[default: "),
            "{bin} --help shows no defaults:\n{help}"
        );

        // A flag one letter short: refused, naming the one meant.
        let meant = flags[0];
        let typo = &meant[..meant.len() - 1];
        let (code, err) = run(bin, &[typo, "5"]);
        assert_eq!(code, 2, "{bin} {typo}: {err}");
        assert!(
            err.contains(&format!("unexpected argument '{typo}'"))
                && err.contains(&format!("'{meant}'")),
            "{bin} {typo}: {err}"
        );

        let last = flags[flags.len() - 1];
        let (code, err) = run(bin, &[last]);
        assert_eq!(code, 2, "{bin} {last} without a value: {err}");
        assert!(
            err.contains(&format!("a value is required for '{last}")),
            "{bin}: {err}"
        );

        let (code, err) = run(bin, too_much);
        assert_eq!(code, 1, "{bin} {too_much:?}: {err}");
        assert!(
            err.contains("bounded scenario"),
            "{bin} {too_much:?}: {err}"
        );
    }
}

#[test]
fn the_side_by_side_harness_explains_its_flags_and_refuses_a_mixed_command() {
    let bin = env!("CARGO_BIN_EXE_lattice-load-compare");
    let (code, help) = run(bin, &["--help"]);
    assert_eq!(code, 0, "{help}");
    for flag in [
        "--lattice",
        "--agentgateway",
        "--litellm",
        "--baseline",
        "--targets",
        "--rounds",
        "--saturation-only",
        "--smoke",
        "--out",
        "--json",
        "--profile",
        "--profile-rate",
        "--pool",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    let (code, err) = run(bin, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("<SCENARIO>"), "no scenario named: {err}");
    let (code, err) = run(bin, &["s.toml", "--profile-rate", "1000"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--profile <DIR>"),
        "--profile-rate alone: {err}"
    );
    let (code, err) = run(bin, &["--pool", "a.json", "--smoke"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot be used with"),
        "--pool with a run's flags: {err}"
    );
}
