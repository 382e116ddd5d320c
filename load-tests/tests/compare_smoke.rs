//! The side-by-side harness in its smoke mode, in the normal test suite so it
//! cannot rot: direct, nginx, bare Pingora and Lattice (the debug build) on
//! the HTTP, LLM and MCP scenarios, one short round each. Its figures mean
//! nothing; that every target was started, checked, loaded and reported
//! without errors does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(scenario: &str, targets: &str) -> (Value, String) {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(scenario);
    run_file(&scenario, &["--smoke", "--targets", targets])
}

/// Runs the harness on a scenario file with `args`; its report and output.
fn run_file(scenario: &Path, args: &[&str]) -> (Value, String) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_lattice-load-compare"));
    let lattice = bin.with_file_name("lattice");
    assert!(
        lattice.exists(),
        "build the workspace first: {}",
        lattice.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(&bin)
        .arg(scenario)
        .arg("--lattice")
        .arg(&lattice)
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap(),
        text,
    )
}

fn check(report: &Value, names: &[&str]) {
    let measured = report["measured"].as_array().unwrap();
    let got: Vec<&str> = measured
        .iter()
        .map(|m| m["target"].as_str().unwrap())
        .collect();
    assert_eq!(got, names);
    for m in measured {
        let name = &m["target"];
        assert!(m["saturation"][0].as_f64().unwrap() > 0.0, "{name}: {m}");
        assert_eq!(m["saturation_errors"], 0, "{name}: {m}");
        for f in m["fixed"].as_array().unwrap() {
            assert_eq!(f["errors"], 0, "{name}: {f}");
            assert!(f["sent"].as_u64().unwrap() > 0, "{name}: {f}");
            assert!(f["p99"][0].as_f64().unwrap() > 0.0, "{name}: {f}");
        }
    }
    let lattice = measured.iter().find(|m| m["target"] == "lattice").unwrap();
    assert!(
        lattice["audit_events_per_s"][0].as_f64().unwrap() > 0.0,
        "Lattice audited its load: {lattice}"
    );
    assert!(lattice["rss_mb"].as_f64().unwrap() > 1.0, "{lattice}");
}

#[test]
fn the_http_scenario_measures_direct_nginx_and_lattice_side_by_side() {
    let (report, text) = run(
        "http-tools.toml",
        "direct,nginx,pingora,lattice,agentgateway",
    );
    check(&report, &["direct", "nginx", "pingora", "lattice"]);
    assert!(text.contains("| lattice | "), "{text}");
    assert!(text.contains("× nginx"), "{text}");
    // A peer whose program was not given is said so, not silently left out.
    assert!(
        text.contains("agentgateway: not measured (pass --agentgateway PATH)"),
        "{text}"
    );
}

#[test]
fn the_llm_scenario_measures_direct_and_lattice_side_by_side() {
    let (report, _) = run("llm-chat.toml", "direct,lattice");
    check(&report, &["direct", "lattice"]);
}

#[test]
fn the_mcp_scenario_measures_direct_and_lattice_side_by_side() {
    let (report, _) = run("mcp-call.toml", "direct,lattice");
    check(&report, &["direct", "lattice"]);
}

#[test]
fn a_scenario_without_rates_measures_saturation_only() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("saturation.toml");
    std::fs::write(
        &scenario,
        "route = \"http\"\npath = \"/\"\ntargets = [\"direct\"]\nrates = []\nfixed_seconds = 1\nsaturation_seconds = 1\nconnections = 4\nrounds = 1\n",
    )
    .unwrap();
    let (report, _) = run_file(&scenario, &[]);
    let measured = report["measured"].as_array().unwrap();
    assert_eq!(measured.len(), 1, "{report}");
    assert!(
        measured[0]["saturation"][0].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(measured[0]["fixed"], serde_json::json!([]), "{report}");
}
