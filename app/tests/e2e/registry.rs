//! `lattice registry` (issue #18): a publisher key and a signed entry, a
//! catalog served over the official MCP registry API and read by a client
//! written from that API's documentation (Python, cursor pagination), and
//! `sync` from that registry into a second one, signatures kept and
//! verified.

use crate::harness::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::Duration;

struct Registry {
    port: u16,
    child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Registry {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(BIN)
        .args(["registry", "serve", "--listen", &listen])
        .args(args)
        .spawn()
        .unwrap();
    wait_for("the registry", Duration::from_secs(20), || {
        http(port, "GET", "/health", &[], b"").is_ok_and(|r| r.status == 200)
    });
    Registry { port, child }
}

fn lattice(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// `lattice registry verify` of a catalog directory alone.
fn verify(catalog: &str, trust: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "registry",
        "verify",
        "--no-bundled",
        "--catalog",
        catalog,
        "--trust",
        trust,
    ];
    args.extend_from_slice(extra);
    lattice(&args)
}

pub(crate) fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_registry_client_pages_a_served_catalog_and_sync_keeps_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    // A publisher's key and a signed entry in a catalog directory.
    let public = ok(&lattice(&[
        "registry",
        "keygen",
        "--publisher",
        "Acme",
        "--out",
        &d("acme.key"),
    ]));
    let public = public.trim();
    assert!(public.starts_with("ed25519:"), "{public}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d("acme.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    std::fs::create_dir_all(d("catalog/servers")).unwrap();
    let entry = serde_json::json!({
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json",
        "name": "io.github.acme/weather", "description": "Weather forecasts", "version": "1.0.0",
        "remotes": [{"type": "streamable-http", "url": "https://weather.acme.example/mcp"}]
    });
    std::fs::write(d("catalog/servers/weather.json"), entry.to_string()).unwrap();
    ok(&lattice(&[
        "registry",
        "sign",
        &d("catalog/servers/weather.json"),
        "--key",
        &d("acme.key"),
    ]));

    // Served with the bundled catalog; read by the Python client, 2 a page.
    let a = serve(&["--catalog", &d("catalog")]);
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers/registry_client.py");
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers/.venv/bin/python");
    let out = ok(&Command::new(&python)
        .arg(&client)
        .arg(format!("http://127.0.0.1:{}", a.port))
        .arg("2")
        .output()
        .unwrap());
    let seen: Value = serde_json::from_str(out.trim()).unwrap();
    let listed: Vec<&str> = seen["listed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            "io.github.acme/weather@1.0.0",
            "io.github.modelcontextprotocol/server-everything@2026.8.31",
            "io.github.modelcontextprotocol/server-filesystem@2026.8.31",
            "io.github.modelcontextprotocol/server-memory@2026.8.31",
            "io.github.modelcontextprotocol/server-time@2026.10.19",
        ]
    );
    assert_eq!(seen["pages"], 3);
    assert_eq!(seen["latest"]["io.github.acme/weather"]["signed"], true);
    assert_eq!(
        seen["latest"]["io.github.modelcontextprotocol/server-memory"]["tools"],
        9
    );
    assert_eq!(
        seen["latest"]["io.github.modelcontextprotocol/server-time"]["isLatest"],
        true
    );

    // Synced into a second registry's directory: every entry, as published.
    let out = lattice(&[
        "registry",
        "sync",
        "--from",
        &format!("http://127.0.0.1:{}", a.port),
        "--into",
        &d("mirror"),
    ]);
    let text = ok(&out);
    assert!(
        text.contains("added io.github.acme/weather@1.0.0"),
        "{text}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("16 added, 0 unchanged, 0 refused"),
        "{stderr}"
    );
    // The mirror serves it; its signature verifies for the trusted key.
    let b = serve(&["--no-bundled", "--catalog", &d("mirror")]);
    let r = http(
        b.port,
        "GET",
        "/v0.1/servers/io.github.acme%2Fweather/versions/1.0.0",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let signed = std::fs::read_to_string(d("catalog/servers/weather.json")).unwrap();
    assert_eq!(
        r.json()["server"],
        serde_json::from_str::<Value>(&signed).unwrap()
    );
    let trust = format!("Acme={public},io.github.acme");
    let out = verify(&d("mirror"), &trust, &[]);
    let report = ok(&out);
    assert!(
        report.contains("ok   io.github.acme/weather@1.0.0: signed by Acme (trusted)"),
        "{report}"
    );
    assert!(report.contains("ok   dev.lattice/no-destructive-without-role@1.0.0: UNSIGNED; 3 tests pass, 1 invariants proved"), "{report}");
    // Trusted for another namespace only: with --require-trusted it fails.
    let elsewhere = format!("Acme={public},com.example");
    let out = verify(&d("mirror"), &elsewhere, &["--require-trusted"]);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains(&format!("FAIL io.github.acme/weather@1.0.0: signed by Acme with {public}, a key NOT TRUSTED for this namespace")), "{report}");
    // An entry changed on the mirror no longer verifies, and verify says so.
    let file = dir
        .path()
        .join("mirror/servers/io.github.acme%2Fweather@1.0.0.json");
    let changed = std::fs::read_to_string(&file)
        .unwrap()
        .replace("Weather forecasts", "Weather, and your files");
    std::fs::write(&file, changed).unwrap();
    let out = verify(&d("mirror"), &trust, &[]);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("FAIL io.github.acme/weather@1.0.0: BAD SIGNATURE: the signature by Acme does not match the entry"), "{report}");
}

/// A reader that closes the pipe early (`| head`) ends the command
/// quietly with the shell's broken-pipe status, not a panic.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let mut child = Command::new(BIN)
        .args(["registry", "show", "dev.lattice/agent-platform"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the command writes anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
