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
        out.contains("PROVED  no-deletes") && out.ends_with("4 proved, 0 failed\n"),
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

    // A permit beyond the reviewed envelope: tool calls for agents.
    let wider = format!(
        "{text}\n@id(\"agents-call-tools\")\npermit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n"
    );
    std::fs::write(&broken, wider).unwrap();
    let (code, out, err) = prove(&broken, &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("FAILED  within-the-reviewed-envelope"),
        "{out}"
    );
    assert!(
        out.contains(
            "allowed by the policy set and denied by the reference set it must stay within"
        ) && out.contains("action: Lattice::Action::\"call_tool\""),
        "{out}"
    );
    assert!(out.ends_with("3 proved, 1 failed\n"), "{out}");

    // No solver: an error, not a verdict.
    let (code, out, err) = prove(&starter, &[("CVC5", "/nonexistent/cvc5")]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("cannot start the cvc5 solver"), "{err}");
    assert!(!out.contains("PROVED"), "{out}");
}

const NO_TOOL_CALLS: &str = "\n[[invariants]]\nid = \"no-tool-calls\"\ndescription = \"Agents call no MCP tool\"\nnever_allows = '''permit (principal is Lattice::Agent, action == Lattice::Action::\"call_tool\", resource);'''\n";
/// Tool calls for agents only: one kind of request (principal type, action,
/// resource type).
const AGENT_TOOL_PERMIT: &str = "\n@id(\"agents-call-tools\")\npermit (principal is Lattice::Agent in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n";
const TOOL_PERMIT: &str = "\n@id(\"agents-call-tools\")\npermit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n";

#[test]
fn a_reload_that_breaks_an_invariant_is_refused_audited_and_the_old_set_keeps_serving() {
    let gw = Gateway::start(NO_TOOL_CALLS);
    let policy = gw.path("policy.cedar");
    let before = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, format!("{before}{TOOL_PERMIT}")).unwrap();
    // The metric counts the refusal as it happens; its audit event is
    // written by the writer a moment later: wait for both.
    let rejected_events = || -> Vec<lattice_audit::AuditEvent> {
        gw.store()
            .events()
            .unwrap()
            .iter()
            .map(|e| serde_json::from_str(&e.json).unwrap())
            .filter(|e: &lattice_audit::AuditEvent| e.kind == "admin.config.rejected")
            .collect()
    };
    wait_for(
        "the refused reload",
        std::time::Duration::from_secs(20),
        || {
            gw.metric("lattice_config_reloads_total{result=\"rejected\"}") >= 1.0
                && !rejected_events().is_empty()
        },
    );
    let rejected = rejected_events();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        rejected[0]
            .reason
            .contains("breaks invariant `no-tool-calls` (Agents call no MCP tool)")
            && rejected[0]
                .reason
                .contains("Counterexample: principal: Lattice::Agent::"),
        "{}",
        rejected[0].reason
    );
    assert_eq!(
        gw.metric("lattice_config_reloads_total{result=\"applied\"}"),
        0.0
    );
    // The old set keeps serving (the live policies are the old ones), and
    // `lattice config validate` refuses the file on disk with the same reason.
    let admin = bearer(&gw.create_human_key("root", "default", &["admin"]));
    let live = gw.get("/admin/v1/policies", &admin);
    assert_eq!(live.status, 200, "{}", live.body);
    assert!(
        live.body.contains("no-deletes") && !live.body.contains("agents-call-tools"),
        "{}",
        live.body
    );
    let out = gw.lattice(&["config", "validate"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("breaks invariant `no-tool-calls`"),
        "{out:?}"
    );
}

#[test]
fn a_gateway_whose_policies_break_an_invariant_does_not_start() {
    let mut gw = Gateway::prepare(NO_TOOL_CALLS, &format!("{STARTER_POLICY}{TOOL_PERMIT}"));
    gw.launch();
    wait_for(
        "the gateway to refuse to start",
        std::time::Duration::from_secs(20),
        || gw.log().contains("breaks invariant `no-tool-calls`"),
    );
    assert!(http(gw.port, "GET", "/healthz", &[], b"").is_err());
}

#[test]
fn the_agent_platform_invariants_hold_and_fail_without_the_forbid_that_keeps_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agent-platform");
    let run = |policies: &Path| {
        let out = Command::new(BIN)
            .args(["policy", "prove"])
            .arg(root.join("invariants.toml"))
            .arg("-c")
            .arg(root.join("lattice.toml"))
            .arg("--policies")
            .arg(policies)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let platform = root.join("policies/platform.cedar");
    let (code, out) = run(&platform);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.ends_with("4 proved, 0 failed\n"), "{out}");

    let text = std::fs::read_to_string(&platform).unwrap();
    let start = text.find("@id(\"high-risk-tools-need-a-role\")").unwrap();
    let end = start + text[start..].find(";\n").unwrap() + 2;
    let dir = tempfile::tempdir().unwrap();
    let without = dir.path().join("platform.cedar");
    std::fs::write(&without, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let (code, out) = run(&without);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAILED  high-risk-tools-need-a-role"), "{out}");
    assert!(
        out.contains("action: Lattice::Action::\"call_tool\""),
        "{out}"
    );
    assert!(out.contains("\"risk\":\"high\""), "{out}");
    assert!(out.contains("3 proved, 1 failed"), "{out}");
}

#[test]
fn policy_diff_names_exactly_the_newly_allowed_kind_of_request() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let starter = root.join("examples/quickstart/policies/starter.cedar");
    let dir = tempfile::tempdir().unwrap();
    let more = dir.path().join("more.cedar");
    let text = std::fs::read_to_string(&starter).unwrap();
    std::fs::write(
        &more,
        format!("{text}\n@id(\"agents-call-tools\")\npermit (principal is Lattice::Agent in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n"),
    )
    .unwrap();
    let diff = |old: &Path, new: &Path| {
        let out = Command::new(BIN)
            .args(["policy", "diff", "--old"])
            .arg(old)
            .arg("--new")
            .arg(new)
            .args(["-c", "/nonexistent/lattice.toml"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = diff(&starter, &more);
    assert_eq!(code, Some(1), "{out}");
    let kinds: Vec<&str> = out.lines().filter(|l| l.starts_with("NEWLY")).collect();
    assert_eq!(
        kinds,
        vec!["NEWLY ALLOWED  Lattice::Agent Lattice::Action::\"call_tool\" Lattice::Tool"],
        "{out}"
    );
    assert!(out.contains("e.g. principal: Lattice::Agent::"), "{out}");
    // The reverse is the same kind, newly denied; a set against itself, nothing.
    let (_, out) = diff(&more, &starter);
    assert!(
        out.contains("NEWLY DENIED   Lattice::Agent Lattice::Action::\"call_tool\""),
        "{out}"
    );
    let (code, out) = diff(&starter, &starter);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 kinds of requests change"), "{out}");
}

#[test]
fn the_admin_api_shows_proved_invariants_and_checks_a_candidate_against_them_with_its_diff() {
    let gw = Gateway::start(NO_TOOL_CALLS);
    let admin = bearer(&gw.create_human_key("root", "default", &["admin"]));
    // The live set's invariants, proved when it was loaded.
    let live = gw.get("/admin/v1/policies", &admin);
    assert_eq!(live.status, 200, "{}", live.body);
    let inv = &live.json()["invariants"];
    assert_eq!(inv.as_array().unwrap().len(), 1, "{inv}");
    assert_eq!(inv[0]["id"], "no-tool-calls");
    assert_eq!(inv[0]["claim"], "never_allows");
    assert_eq!(inv[0]["description"], "Agents call no MCP tool");
    assert!(inv[0]["ms"].as_u64().is_some(), "{inv}");

    // A candidate: the live set plus a tool permit.
    let before = std::fs::read_to_string(gw.path("policy.cedar")).unwrap();
    let r = gw.post_json(
        "/admin/v1/policies/validate",
        &admin,
        &serde_json::json!({"policies": format!("{before}{AGENT_TOOL_PERMIT}")}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["added"], serde_json::json!(["agents-call-tools"]), "{v}");
    let inv = &v["invariants"][0];
    assert_eq!(inv["status"], "broken", "{v}");
    assert_eq!(
        inv["broken"],
        "a request is allowed by the policy set, which must never allow it"
    );
    let cex = inv["counterexample"].as_str().unwrap();
    assert!(
        cex.contains("action: Lattice::Action::\"call_tool\"") && cex.contains("Lattice::Agent::"),
        "{cex}"
    );
    // The semantic diff names exactly the newly allowed kind of request.
    let diff = v["diff"].as_array().unwrap();
    assert_eq!(diff.len(), 1, "{v}");
    assert_eq!(
        (
            diff[0]["change"].as_str(),
            diff[0]["principal"].as_str(),
            diff[0]["action"].as_str(),
            diff[0]["resource"].as_str()
        ),
        (
            Some("newly_allowed"),
            Some("Lattice::Agent"),
            Some("Lattice::Action::\"call_tool\""),
            Some("Lattice::Tool")
        ),
        "{v}"
    );
    // The live set itself: every invariant proved, no difference.
    let r = gw.post_json(
        "/admin/v1/policies/validate",
        &admin,
        &serde_json::json!({"policies": before}),
    );
    let v = r.json();
    assert_eq!(v["invariants"][0]["status"], "proved", "{v}");
    assert_eq!(v["diff"], serde_json::json!([]), "{v}");
    // Checking a candidate changes nothing: still the old set, audited as
    // a read.
    let live = gw.get("/admin/v1/policies", &admin);
    assert!(!live.body.contains("agents-call-tools"), "{}", live.body);
    let validated = gw
        .filled_store()
        .events()
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str::<lattice_audit::AuditEvent>(&e.json).unwrap())
        .filter(|e| {
            e.kind == "admin.policies.validate"
                && e.decision == "allow"
                && e.phase == lattice_audit::Phase::Decision
        })
        .count();
    assert_eq!(validated, 2);
}
