//! Installing into a gateway's config without a running gateway: what each
//! kind writes (the server's runner and the operator's word on its tools,
//! a pack's files and invariants, a preset's routes), removals in any
//! order (byte for byte when the file is as the install left it), updates
//! shown as a diff first, templates into a new directory, and the refusals
//! with their exact errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_registry::install::{self, Gateway, Options, Restored};
use lattice_registry::{Catalog, Entry};
use serde_json::json;
use std::path::Path;

const CONFIG: &str = "# my gateway\n[server]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"data\"\n\n[auth]\napi_keys = true\n\n[policy]\nfiles = [\"policy.cedar\"] # the set\n\n[[routes]]\nname = \"echo\"\nupstream = \"http://127.0.0.1:2\"";

fn gateway(dir: &Path) -> Gateway {
    std::fs::write(dir.join("lattice.toml"), CONFIG).unwrap();
    std::fs::write(
        dir.join("policy.cedar"),
        "permit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n",
    )
    .unwrap();
    Gateway::open(&dir.join("lattice.toml")).unwrap()
}

fn opts() -> Options {
    Options {
        by: "test".into(),
        ..Options::default()
    }
}

fn entry(name: &str) -> Entry {
    Catalog::bundled()
        .unwrap()
        .find(name, None)
        .unwrap()
        .clone()
}

/// A gateway directory with the memory server installed (run by `true`).
fn with_memory_server() -> (tempfile::TempDir, Options) {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let mut o = opts();
    o.command = Some("true".into());
    install::install(
        &gw,
        &entry("io.github.modelcontextprotocol/server-memory"),
        &o,
    )
    .unwrap();
    (dir, o)
}

fn config(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("lattice.toml")).unwrap()
}

#[test]
fn a_server_runs_its_package_the_way_its_registry_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let plan = install::plan(
        &gw,
        &entry("io.github.modelcontextprotocol/server-everything"),
        &opts(),
    )
    .unwrap();
    let text = &plan.files.last().unwrap().after;
    let block = &text[CONFIG.len()..];
    assert!(
        block.starts_with("\n\n# lattice registry: io.github.modelcontextprotocol/server-everything@2026.8.31 (bundled with Lattice), an MCP server. `lattice registry uninstall io.github.modelcontextprotocol/server-everything` removes it.\n[[mcp_servers]]\nname = \"everything\"\ncommand = \"npx\"\nargs = [\"-y\", \"@modelcontextprotocol/server-everything@2026.8.31\", \"stdio\"]\n"),
        "{block}"
    );
    assert!(block.ends_with("# end of io.github.modelcontextprotocol/server-everything\n"));
    // PyPI packages run with uvx, their named arguments after the package.
    let time = install::plan(
        &gw,
        &entry("io.github.modelcontextprotocol/server-time"),
        &opts(),
    )
    .unwrap();
    assert!(time.files[0].after.contains("command = \"uvx\"\nargs = [\"mcp-server-time==2026.10.19\", \"--local-timezone\", \"UTC\"]\n"));
    // A required argument without a value is asked for by name.
    let err = install::plan(
        &gw,
        &entry("io.github.modelcontextprotocol/server-filesystem"),
        &opts(),
    )
    .err()
    .unwrap();
    assert_eq!(
        err.to_string(),
        "io.github.modelcontextprotocol/server-filesystem@2026.8.31: argument `allowed_directory` is required (A directory the server may read and write): pass --arg allowed_directory=VALUE"
    );
    let mut o = opts();
    o.args.insert(
        "allowed_directory".into(),
        vec!["/srv/a".into(), "/srv/b".into()],
    );
    o.server_name = Some("files".into());
    let fs = install::plan(
        &gw,
        &entry("io.github.modelcontextprotocol/server-filesystem"),
        &o,
    )
    .unwrap();
    assert!(fs.files[0].after.contains("name = \"files\"\ncommand = \"npx\"\nargs = [\"-y\", \"@modelcontextprotocol/server-filesystem@2026.8.31\", \"/srv/a\", \"/srv/b\"]\n"));
    // The published risks become the operator's word on each tool.
    let memory = install::plan(
        &gw,
        &entry("io.github.modelcontextprotocol/server-memory"),
        &opts(),
    )
    .unwrap();
    let text = &memory.files[0].after;
    assert!(text.contains("[mcp_servers.tools.delete_entities]\nrisk = \"destructive\"\nread_only = false\ndestructive = true\n"), "{text}");
    assert!(
        text.contains("[mcp_servers.tools.read_graph]\nrisk = \"read\"\nread_only = true\n"),
        "{text}"
    );
    assert_eq!(memory.seed.len(), 9);
    assert_eq!(memory.server.as_deref(), Some("memory"));
}

#[test]
fn installs_come_out_in_any_order_and_byte_for_byte_when_untouched() {
    let (dir, o) = with_memory_server();
    let gw = Gateway::open(&dir.path().join("lattice.toml")).unwrap();
    install::install(&gw, &entry("dev.lattice/no-destructive-without-role"), &o).unwrap();
    let with_both = config(dir.path());
    assert!(with_both.contains("files = [\"registry/dev.lattice/no-destructive-without-role/no-destructive-without-role.cedar\", \"policy.cedar\"] # the set"), "{with_both}");
    assert!(
        with_both.contains("[[invariants]]\nid = \"destructive-needs-role\""),
        "{with_both}"
    );
    let listed: Vec<String> = gw
        .installed()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(
        listed,
        [
            "dev.lattice/no-destructive-without-role",
            "io.github.modelcontextprotocol/server-memory"
        ]
    );

    // The first one out first: the file changed since (the pack went in
    // after it), so only its text is taken out.
    let gw = Gateway::open(&dir.path().join("lattice.toml")).unwrap();
    let removal =
        install::uninstall(&gw, "io.github.modelcontextprotocol/server-memory", "test").unwrap();
    assert_eq!(removal.files[0].3, Restored::InsertionsRemoved);
    assert!(!config(dir.path()).contains("[[mcp_servers]]"));
    let gw = Gateway::open(&dir.path().join("lattice.toml")).unwrap();
    let removal =
        install::uninstall(&gw, "dev.lattice/no-destructive-without-role", "test").unwrap();
    let hows: Vec<Restored> = removal.files.iter().map(|f| f.3.clone()).collect();
    assert_eq!(hows, [Restored::InsertionsRemoved, Restored::Deleted]);
    assert_eq!(config(dir.path()), CONFIG);
    assert!(!dir.path().join("registry").exists());

    // Last in, first out: each file exactly as it was.
    install::install(&gw, &entry("dev.lattice/read-only-tools"), &o).unwrap();
    let gw = Gateway::open(&dir.path().join("lattice.toml")).unwrap();
    let removal = install::uninstall(&gw, "dev.lattice/read-only-tools", "test").unwrap();
    assert_eq!(removal.files[0].3, Restored::Exactly);
    assert_eq!(config(dir.path()), CONFIG);
    let err = install::uninstall(&gw, "dev.lattice/read-only-tools", "test")
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "dev.lattice/read-only-tools is not installed"
    );
}

#[test]
fn a_hand_edited_block_cannot_be_taken_out_silently() {
    let (dir, _) = with_memory_server();
    let text = config(dir.path()).replace("name = \"memory\"", "name = \"memories\"");
    std::fs::write(dir.path().join("lattice.toml"), &text).unwrap();
    let gw = Gateway::open(&dir.path().join("lattice.toml")).unwrap();
    let err = install::uninstall(&gw, "io.github.modelcontextprotocol/server-memory", "test")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("changed since io.github.modelcontextprotocol/server-memory was installed and io.github.modelcontextprotocol/server-memory's text cannot be taken out (its text is no longer in the file:"), "{err}");
    assert_eq!(config(dir.path()), text);
}

#[test]
fn an_update_shows_its_diff_and_keeps_the_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let mut o = opts();
    o.command = Some("true".into());
    o.server_name = Some("mem".into());
    install::install(
        &gw,
        &entry("io.github.modelcontextprotocol/server-memory"),
        &o,
    )
    .unwrap();
    let installed = config(dir.path());
    let mut newer = entry("io.github.modelcontextprotocol/server-memory").doc;
    newer["version"] = json!("2026.9.1");
    newer["packages"][0]["version"] = json!("2026.9.1");
    let newer = Entry::from_value("test", newer).unwrap();
    let mut o = opts();
    o.allow_untrusted = true;
    let gw = Gateway::open(&dir.path().join("lattice.toml")).unwrap();
    let update = install::plan_update(&gw, &newer, &o).unwrap();
    let diff = update.diff(&gw);
    assert!(diff.contains("-# lattice registry: io.github.modelcontextprotocol/server-memory@2026.8.31 (bundled with Lattice)"), "{diff}");
    assert!(
        diff.contains(
            "+# lattice registry: io.github.modelcontextprotocol/server-memory@2026.9.1 (UNSIGNED)"
        ),
        "{diff}"
    );
    assert!(
        diff.contains("+args = [\"-y\", \"@modelcontextprotocol/server-memory@2026.9.1\"]"),
        "{diff}"
    );
    assert!(!diff.contains("-name = \"mem\""), "the name stays: {diff}");
    // Planned, not applied.
    assert_eq!(config(dir.path()), installed);
    install::apply_update(&gw, &update, &o).unwrap();
    let gw = Gateway::open(&dir.path().join("lattice.toml")).unwrap();
    assert_eq!(gw.installed().unwrap()[0].version, "2026.9.1");
    install::uninstall(&gw, "io.github.modelcontextprotocol/server-memory", "test").unwrap();
    assert_eq!(config(dir.path()), CONFIG);
}

#[test]
fn a_preset_adds_routes_and_names_the_key_variable_never_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let preset = entry("dev.lattice/openai-compatible");
    let err = install::plan(&gw, &preset, &opts()).err().unwrap();
    assert_eq!(
        err.to_string(),
        "dev.lattice/openai-compatible@1.0.0: variable `model` is required (The model name): pass --arg model=VALUE"
    );
    let mut o = opts();
    o.args.insert("model".into(), vec!["gpt-4o-mini".into()]);
    let plan = install::plan(&gw, &preset, &o).unwrap();
    let text = &plan.files[0].after;
    assert!(text.contains("[[backends]]\nname = \"hosted\"\nkind = \"openai\"\nurl = \"https://api.openai.com\"\nlocation = \"cloud\"\napi_key_env = \"OPENAI_API_KEY\"\n\n[[models]]\nname = \"gpt-4o-mini\"\nbackends = [\"hosted\"]\n"), "{text}");
    assert_eq!(plan.env, ["OPENAI_API_KEY"]);
}

#[test]
fn a_template_makes_a_new_gateway_directory_with_its_packs() {
    let dir = tempfile::tempdir().unwrap();
    let into = dir.path().join("platform");
    let catalog = Catalog::bundled().unwrap();
    let t = catalog.find("dev.lattice/agent-platform", None).unwrap();
    let files = install::template(t, &into, &catalog, &opts()).unwrap();
    assert!(files.contains(&into.join("policies/platform.cedar")));
    let gw = Gateway::open(&into.join("lattice.toml")).unwrap();
    let listed: Vec<String> = gw
        .installed()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(listed, ["dev.lattice/tenant-audit-readers"]);
    let err = install::template(t, &into, &catalog, &opts())
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "dev.lattice/agent-platform@1.0.0: {} exists: a template starts a new gateway directory",
            into.join("lattice.toml").display()
        )
    );
}
