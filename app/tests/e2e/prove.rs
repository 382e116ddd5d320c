//! `lattice policy prove` with the real solver: the quickstart's invariants
//! hold for the starter policies; the same set with its `no-deletes`
//! forbid turned into a permit fails that invariant with a concrete
//! counterexample; without a solver the command says so (exit 2), never
//! "proved".

use crate::harness::*;
use std::path::Path;
use std::process::Command;

fn prove(policies: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(BIN)
        .args(["policy", "prove"])
        .arg(root.join("examples/quickstart/invariants.toml"))
        .arg("--policies")
        .arg(policies)
        .args(["-c", "/nonexistent/lattice.toml"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn invariants_are_proved_and_a_broken_one_prints_its_counterexample() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let starter = root.join("examples/quickstart/policies/starter.cedar");
    let (code, out, err) = prove(&starter, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("PROVED  no-deletes") && out.ends_with("3 proved, 0 failed\n"),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.cedar");
    let text = std::fs::read_to_string(&starter).unwrap();
    let flipped = text.replace("@id(\"no-deletes\")\nforbid", "@id(\"no-deletes\")\npermit");
    assert_ne!(flipped, text);
    std::fs::write(&broken, flipped).unwrap();
    let (code, out, err) = prove(&broken, &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("FAILED  no-deletes"), "{out}");
    assert!(
        out.contains("allowed by the policy set, which must never allow it"),
        "{out}"
    );
    assert!(
        out.contains("action: Lattice::Action::\"http_request\"")
            && out.contains("method: \"DELETE\""),
        "{out}"
    );
    assert!(out.contains("PROVED  agents-read-demo-routes"), "{out}");

    // No solver: an error, not a verdict.
    let (code, out, err) = prove(&starter, &[("CVC5", "/nonexistent/cvc5")]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("cannot start the cvc5 solver"), "{err}");
    assert!(!out.contains("PROVED"), "{out}");
}
