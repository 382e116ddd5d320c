//! The bundled catalog, entry validation (every bad input with its exact
//! error) and signatures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_registry::catalog::BUNDLED;
use lattice_registry::entry::Kind;
use lattice_registry::sign::{self, Trust, TrustedKey};
use lattice_registry::{Catalog, Entry, PublisherKey};
use serde_json::{json, Value};
use std::time::Duration;

fn catalog_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog")
}

#[test]
fn every_bundled_entry_validates_and_every_file_is_bundled() {
    let c = Catalog::bundled().unwrap();
    assert_eq!(c.entries().len(), BUNDLED.len());
    // The folder and the compiled list hold the same files.
    let mut on_disk: Vec<String> = Vec::new();
    for kind in Kind::ALL {
        for f in std::fs::read_dir(catalog_dir().join(kind.plural())).unwrap() {
            let name = f.unwrap().file_name().into_string().unwrap();
            on_disk.push(format!("{}/{name}", kind.plural()));
        }
    }
    on_disk.sort();
    let mut listed: Vec<String> = BUNDLED.iter().map(|(p, _)| p.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    // The same files read from the folder give the same catalog.
    let from_dir = Catalog::load_dir(&catalog_dir()).unwrap();
    let docs = |c: &Catalog| {
        c.entries()
            .iter()
            .map(|e| e.doc.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(docs(&from_dir), docs(&c));
    // Each kind is there, and each bundled server publishes its tools.
    for kind in Kind::ALL {
        assert!(c.entries().iter().any(|e| e.kind == kind), "{kind}");
    }
    for e in c.entries().iter().filter(|e| e.kind == Kind::Server) {
        let tools = e.tools();
        assert!(!tools.is_empty(), "{}: no tool fingerprints", e.id());
        assert!(tools.iter().all(|t| t.hash.len() == 64 && t.risk.is_some()));
    }
}

#[test]
fn every_bundled_policy_pack_passes_its_tests_and_proves_its_invariants() {
    let c = Catalog::bundled().unwrap();
    let packs: Vec<&Entry> = c
        .entries()
        .iter()
        .filter(|e| e.kind == Kind::PolicyPack)
        .collect();
    assert_eq!(packs.len(), 5);
    for p in packs {
        let r = lattice_registry::pack::check(p, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.cases >= 3, "{}: {} cases", p.id(), r.cases);
        let declared = p.doc["invariants"].as_array().map_or(0, Vec::len);
        assert!(declared >= 1, "{}", p.id());
        assert_eq!(r.proved.len(), declared, "{}", p.id());
    }
}

/// The bundled templates are the repository's examples, file for file.
#[test]
fn bundled_templates_are_the_examples() {
    let c = Catalog::bundled().unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (name, dir) in [
        ("dev.lattice/quick-start", "quickstart"),
        ("dev.lattice/agent-platform", "agent-platform"),
    ] {
        let t = c.find(name, None).unwrap();
        let base = examples.join(dir);
        assert_eq!(
            t.doc["config"].as_str().unwrap(),
            std::fs::read_to_string(base.join("lattice.toml")).unwrap(),
            "{name}: config differs from examples/{dir}/lattice.toml"
        );
        for (rel, text) in t.doc["files"].as_object().unwrap() {
            assert_eq!(
                text.as_str().unwrap(),
                std::fs::read_to_string(base.join(rel)).unwrap(),
                "{name}: {rel} differs from the example"
            );
        }
    }
}

fn server_doc() -> Value {
    json!({
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json",
        "name": "io.github.acme/weather",
        "description": "Weather forecasts",
        "version": "1.2.0",
        "packages": [{"registryType": "npm", "identifier": "@acme/weather", "version": "1.2.0",
                      "transport": {"type": "stdio"}}],
        "_meta": {"io.modelcontextprotocol.registry/publisher-provided": {"dev.lattice": {
            "tools": [{"name": "forecast", "hash": "ab".repeat(32), "risk": "read"}]}}}
    })
}

/// Each bad input: the exact error.
#[test]
fn bad_entries_are_refused_with_what_is_wrong() {
    let mut long = server_doc();
    long["description"] = json!("x".repeat(101));
    let mut latest = server_doc();
    latest["packages"][0]["version"] = json!("latest");
    let mut range = server_doc();
    range["version"] = json!("^1.2.0");
    let mut bad_name = server_doc();
    bad_name["name"] = json!("weather");
    let mut twice = server_doc();
    twice["_meta"]["io.modelcontextprotocol.registry/publisher-provided"]["dev.lattice"]["tools"] = json!([
        {"name": "forecast", "hash": "ab".repeat(32)}, {"name": "forecast", "hash": "cd".repeat(32)}]);
    let mut short_hash = server_doc();
    short_hash["_meta"]["io.modelcontextprotocol.registry/publisher-provided"]["dev.lattice"]
        ["tools"][0]["hash"] = json!("abc");
    let preset = json!({
        "$schema": "https://lattice.dev/schemas/2026-12-01/model-preset.schema.json",
        "name": "io.github.acme/gpu", "description": "d", "version": "1.0.0",
        "backends": [{"name": "gpu", "kind": "vllm", "url": "http://10.0.0.5:8000"}],
        "models": [{"name": "m", "backends": ["cpu"]}]
    });
    let cases: Vec<(&str, String, &str)> = vec![
        ("not json", "{\"name\": ".into(), "f.json: not JSON: EOF while parsing a value at line 1 column 9 (line 1, column 9)"),
        ("no schema", json!({"name": "a/b"}).to_string(),
         "f.json: no `$schema`: an entry names its kind by its schema (https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json, https://lattice.dev/schemas/2026-12-01/policy-pack.schema.json, https://lattice.dev/schemas/2026-12-01/model-preset.schema.json, https://lattice.dev/schemas/2026-12-01/template.schema.json)"),
        ("unknown schema", json!({"$schema": "https://example.com/x.json"}).to_string(),
         "f.json: unknown `$schema` https://example.com/x.json: the kinds are https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json, https://lattice.dev/schemas/2026-12-01/policy-pack.schema.json, https://lattice.dev/schemas/2026-12-01/model-preset.schema.json, https://lattice.dev/schemas/2026-12-01/template.schema.json"),
        ("description too long", long.to_string(),
         "f.json: io.github.acme/weather@1.2.0 does not match the server schema:\n  /description: \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\" is longer than 100 characters"),
        ("package version latest", latest.to_string(),
         "f.json: io.github.acme/weather@1.2.0 does not match the server schema:\n  /packages/0/version: {\"anyOf\":[{\"const\":\"latest\"},{\"pattern\":\"^[\\\\^~<>=*]\"},{\"pattern\":\"(\\\\.[xX*])\"},{\"pattern\":\"\\\\s\\\\|\\\\|\\\\s\"}]} is not allowed for \"latest\""),
        ("version range", range.to_string(),
         "f.json: io.github.acme/weather@^1.2.0 does not match the server schema:\n  /version: {\"anyOf\":[{\"const\":\"latest\"},{\"pattern\":\"^[\\\\^~<>=*]\"},{\"pattern\":\"(\\\\.[xX*])\"},{\"pattern\":\"\\\\s\\\\|\\\\|\\\\s\"}]} is not allowed for \"^1.2.0\""),
        ("name without namespace", bad_name.to_string(),
         "f.json: weather@1.2.0 does not match the server schema:\n  /name: \"weather\" does not match \"^[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+$\""),
        ("a tool listed twice", twice.to_string(),
         "f.json: io.github.acme/weather@1.2.0 does not match the server schema:\n  tool `forecast` is listed twice"),
        ("a fingerprint that is not a hash", short_hash.to_string(),
         "f.json: io.github.acme/weather@1.2.0 does not match the server schema:\n  /_meta/io.modelcontextprotocol.registry~1publisher-provided/dev.lattice/tools/0/hash: \"abc\" does not match \"^[a-f0-9]{64}$\""),
        ("a preset naming a backend it lacks", preset.to_string(),
         "f.json: io.github.acme/gpu@1.0.0 does not match the model-preset schema:\n  model `m` names backend `cpu`, which the preset does not define"),
    ];
    for (what, text, want) in cases {
        let got = Entry::parse("f.json", &text).expect_err(what).to_string();
        assert_eq!(got, want, "{what}");
    }
    // And the good one passes.
    Entry::parse("f.json", &server_doc().to_string()).unwrap();
}

#[test]
fn a_catalog_refuses_the_same_version_twice() {
    let a = Entry::from_value("a.json", server_doc()).unwrap();
    let b = Entry::from_value("b.json", server_doc()).unwrap();
    let err = Catalog::from_entries(vec![a, b]).unwrap_err().to_string();
    assert_eq!(
        err,
        "io.github.acme/weather@1.2.0 is in the catalog twice (a.json and b.json)"
    );
}

#[test]
fn versions_order_by_semver_and_latest_is_the_highest() {
    let mut entries = Vec::new();
    for v in ["1.2.0", "1.10.0", "1.9.3", "2.0.0-rc.1"] {
        let mut d = server_doc();
        d["version"] = json!(v);
        entries.push(Entry::from_value(v, d).unwrap());
    }
    let c = Catalog::from_entries(entries).unwrap();
    let order: Vec<&str> = c
        .versions("io.github.acme/weather")
        .iter()
        .map(|e| e.version.as_str())
        .collect();
    assert_eq!(order, ["2.0.0-rc.1", "1.10.0", "1.9.3", "1.2.0"]);
    assert_eq!(
        c.get("io.github.acme/weather", Some("latest"))
            .unwrap()
            .version,
        "2.0.0-rc.1"
    );
    assert_eq!(c.search(None, "WEATHER").len(), 1);
    assert!(c.find("io.github.acme/weather", Some("3.0.0")).is_err());
}

#[test]
fn signatures_are_trusted_only_for_their_keys_and_namespaces() {
    let key = PublisherKey::generate("Acme");
    let mut doc = server_doc();
    key.sign(&mut doc).unwrap();
    let signed = Entry::from_value("acme.json", doc.clone()).unwrap();
    let trusted = |ns: Vec<String>| vec![TrustedKey::new("Acme Inc.", &key.public(), ns).unwrap()];

    // Trusted, under the operator's name for the key.
    assert_eq!(
        sign::verify(&signed, &trusted(vec![])),
        Trust::Trusted {
            publisher: "Acme Inc.".into()
        }
    );
    assert_eq!(
        sign::verify(&signed, &trusted(vec!["io.github.acme".into()])),
        Trust::Trusted {
            publisher: "Acme Inc.".into()
        }
    );
    // A key trusted for another namespace does not vouch for this one.
    assert_eq!(
        sign::verify(&signed, &trusted(vec!["com.example".into()])),
        Trust::Untrusted {
            publisher: "Acme".into(),
            key: key.public()
        }
    );
    // A key nobody trusts.
    assert_eq!(
        sign::verify(&signed, &[]),
        Trust::Untrusted {
            publisher: "Acme".into(),
            key: key.public()
        }
    );
    // Changed after signing.
    let mut changed = doc.clone();
    changed["description"] = json!("Weather forecasts, and your files");
    let changed = Entry::from_value("acme.json", changed).unwrap();
    assert_eq!(
        sign::verify(&changed, &trusted(vec![])),
        Trust::BadSignature {
            reason: "the signature by Acme does not match the entry (changed after signing, or signed with another key)".into()
        }
    );
    // Another key's signature in its place.
    let other = PublisherKey::generate("Acme");
    let mut forged = doc.clone();
    other.sign(&mut forged).unwrap();
    forged["_meta"]["io.modelcontextprotocol.registry/publisher-provided"]
        ["dev.lattice/signature"]["key"] = json!(key.public());
    let forged = Entry::from_value("acme.json", forged).unwrap();
    assert!(matches!(
        sign::verify(&forged, &trusted(vec![])),
        Trust::BadSignature { .. }
    ));
    // Unsigned, from a file or bundled.
    let unsigned = Entry::from_value("plain.json", server_doc()).unwrap();
    assert_eq!(sign::verify(&unsigned, &[]), Trust::Unsigned);
    let bundled = Catalog::bundled().unwrap();
    assert_eq!(sign::verify(&bundled.entries()[0], &[]), Trust::Bundled);
    // Signing keeps the entry valid and signed bytes exclude the signature.
    assert_eq!(sign::signed_bytes(&doc), sign::signed_bytes(&server_doc()));
}

#[test]
fn a_key_file_round_trips_and_bad_keys_are_refused() {
    let key = PublisherKey::generate("Acme");
    let back = PublisherKey::from_file("k.json", &key.to_file()).unwrap();
    assert_eq!(back.public(), key.public());
    let cases = [
        (
            "nonsense",
            "key k.json: not a key file (JSON with publisher and private_key)",
        ),
        (
            "{\"publisher\": \"A\", \"private_key\": \"AAAA\"}",
            "key k.json: private_key is not 32 bytes in base64",
        ),
        ("{\"private_key\": \"AAAA\"}", "key k.json: no publisher"),
    ];
    for (text, want) in cases {
        assert_eq!(
            PublisherKey::from_file("k.json", text)
                .unwrap_err()
                .to_string(),
            want
        );
    }
    let err = TrustedKey::new("A", "rsa:AAAA", vec![])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "key of publisher A: a public key is written `ed25519:<base64 of 32 bytes>`"
    );
}

/// A pack whose own case or invariant fails is refused, saying which.
#[test]
fn a_pack_that_breaks_its_invariant_or_a_case_is_refused() {
    let c = Catalog::bundled().unwrap();
    let pack = c
        .find("dev.lattice/no-destructive-without-role", None)
        .unwrap();
    // The policy loses its `unless`: anyone may now call destructive tools
    // (the test base permits everything).
    let mut weak = pack.doc.clone();
    weak["policies"][0]["text"] = json!(
        "@id(\"destructive-tools-need-a-role\")\nforbid (principal, action == Lattice::Action::\"call_tool\", resource)\nwhen { resource.destructive && principal.labels.contains(\"never\") };\n"
    );
    weak["tests"] = json!([weak["tests"][1].clone()]);
    let weak = Entry::from_value("weak.json", weak).unwrap();
    let err = lattice_registry::pack::check(&weak, Duration::from_secs(60))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("policy pack dev.lattice/no-destructive-without-role@1.0.0: the policy set breaks invariant `destructive-needs-role` (No principal without the destructive-tools role calls a destructive tool): a request is allowed"),
        "{err}"
    );
    // A case that no longer holds.
    let mut wrong = pack.doc.clone();
    wrong["tests"][0]["expect"] = json!("allow");
    let wrong = Entry::from_value("wrong.json", wrong).unwrap();
    let err = lattice_registry::pack::check(&wrong, Duration::from_secs(60))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "policy pack dev.lattice/no-destructive-without-role@1.0.0: test `an agent without the role cannot delete`: expected allow, got deny by [destructive-tools-need-a-role]"
    );
}
