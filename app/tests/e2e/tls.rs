//! TLS and client certificates on the listener, with certificates made
//! here (rcgen) and a real TLS client (curl, OpenSSL): HTTP/1.1 and HTTP/2
//! by ALPN, a certificate replaced on disk served to new connections
//! without a restart, SPIFFE IDs mapped to principals that policies name
//! (`auth_method` = `mtls` in the audit), and certificates from another CA
//! refused at the handshake.

use crate::harness::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A certificate authority made for the test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A leaf certificate and its key (PEM) for these DNS names and URIs.
    fn leaf(&self, cn: &str, dns: &[&str], uris: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for u in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// What curl got: its exit status, the HTTP version and status, headers,
/// body and error text.
struct Got {
    ok: bool,
    version: String,
    status: u16,
    headers: String,
    body: String,
    error: String,
}

impl Got {
    fn request_id(&self) -> String {
        self.headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-request-id")
                    .then(|| v.trim().to_string())
            })
            .unwrap()
    }
}

fn curl(port: u16, host: &str, path: &str, args: &[&str]) -> Got {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(args)
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut tail = tail.split(' ');
    Got {
        ok: out.status.success(),
        version: tail.next().unwrap_or_default().to_string(),
        status: tail.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: body.to_string(),
        error: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// A gateway (not started) with a server certificate for `localhost` from
/// `server_ca`, client certificates verified against `agents_ca`, and
/// `tls_extra` in `[server.tls]`; with the path of the server CA's PEM.
fn tls_gateway(
    extra: &str,
    policy: &str,
    server_ca: &Ca,
    agents_ca: &Ca,
    tls_extra: &str,
) -> (Gateway, String) {
    let gw = Gateway::prepare(extra, policy);
    let d = gw.dir.path().to_path_buf();
    let (cert, key) = server_ca.leaf("gateway", &["localhost"], &[]);
    write(&d, "server.pem", &cert);
    write(&d, "server.key", &key);
    write(&d, "agents-ca.pem", &agents_ca.pem);
    let config = std::fs::read_to_string(gw.config()).unwrap().replacen(
        "\n[policy]",
        &format!("\n[server.tls]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\nclient_ca_file = \"agents-ca.pem\"\n{tls_extra}\n[policy]"),
        1,
    );
    std::fs::write(gw.config(), config).unwrap();
    let ca = write(&d, "server-ca.pem", &server_ca.pem);
    (gw, ca)
}

#[test]
fn tls_serves_http1_and_http2_reloads_its_certificate_and_maps_spiffe_ids_to_principals() {
    let upstream = Upstream::start();
    let server_ca = Ca::new("Lattice test server CA");
    let agents_ca = Ca::new("Lattice test agents CA");
    let rogue_ca = Ca::new("Someone else's CA");
    let policy = format!(
        "{STARTER_POLICY}\n@id(\"no-intruder\")\nforbid (principal == Lattice::Agent::\"intruder\", action, resource);\n"
    );
    let extra = format!(
        "{}\n[auth]\napi_keys = true\n\n[[auth.mtls]]\nspiffe_id = \"spiffe://example.org/agent/crm-bot\"\nagent = \"crm-bot\"\ntenant = \"acme\"\nroles = [\"agent\"]\nlabels = [\"prod\"]\n\n[[auth.mtls]]\nspiffe_id = \"spiffe://example.org/agent/intruder\"\nagent = \"intruder\"\nroles = [\"agent\"]\n",
        route(upstream.port)
    );
    let (mut gw, ca) = tls_gateway(
        &extra,
        &policy,
        &server_ca,
        &agents_ca,
        "client_auth = \"optional\"\n",
    );
    let d = gw.dir.path().to_path_buf();
    let client = |name: &str, ca: &Ca, uri: &str| {
        let (cert, key) = ca.leaf(name, &[], &[uri]);
        (
            write(&d, &format!("{name}.pem"), &cert),
            write(&d, &format!("{name}.key"), &key),
        )
    };
    let crm = client("crm-bot", &agents_ca, "spiffe://example.org/agent/crm-bot");
    let intruder = client(
        "intruder",
        &agents_ca,
        "spiffe://example.org/agent/intruder",
    );
    let stranger = client(
        "stranger",
        &agents_ca,
        "spiffe://example.org/agent/stranger",
    );
    let rogue = client("rogue", &rogue_ca, "spiffe://example.org/agent/crm-bot");
    gw.launch();
    let port = gw.port;
    wait_for("the TLS listener", Duration::from_secs(20), || {
        curl(port, "localhost", "/healthz", &["--cacert", &ca]).status == 200
    });

    // The crm-bot's certificate is its identity, over HTTP/1.1 and HTTP/2.
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let got = curl(
            port,
            "localhost",
            "/tools/echo/a",
            &["--cacert", &ca, "--cert", &crm.0, "--key", &crm.1, flag],
        );
        assert_eq!(
            (got.status, got.version.as_str()),
            (200, version),
            "{}{}",
            got.body,
            got.error
        );
        let ev = gw.events_of(&got.request_id(), 2);
        assert_eq!(
            (
                ev[0].principal.as_str(),
                ev[0].tenant.as_str(),
                ev[0].auth_method.as_str(),
                ev[0].decision.as_str()
            ),
            ("crm-bot", "acme", "mtls", "allow")
        );
    }
    // A policy names the intruder: denied, and audited as mtls.
    let got = curl(
        port,
        "localhost",
        "/tools/echo/a",
        &["--cacert", &ca, "--cert", &intruder.0, "--key", &intruder.1],
    );
    assert_eq!(got.status, 403, "{}", got.body);
    let ev = gw.events_of(&got.request_id(), 2);
    assert_eq!(
        (ev[0].principal.as_str(), ev[0].auth_method.as_str()),
        ("intruder", "mtls")
    );
    assert!(
        ev[0].policies.contains(&"no-intruder".to_string()),
        "{:?}",
        ev[0]
    );
    // A verified certificate no mapping names: 401, saying so.
    let got = curl(
        port,
        "localhost",
        "/tools/echo/a",
        &["--cacert", &ca, "--cert", &stranger.0, "--key", &stranger.1],
    );
    assert_eq!(got.status, 401, "{}", got.body);
    assert!(
        got.body
            .contains("spiffe://example.org/agent/stranger) is not mapped"),
        "{}",
        got.body
    );
    // A certificate with a mapped SPIFFE ID from another CA: refused at the
    // handshake, no HTTP at all.
    let got = curl(
        port,
        "localhost",
        "/tools/echo/a",
        &["--cacert", &ca, "--cert", &rogue.0, "--key", &rogue.1],
    );
    assert!(!got.ok && got.status == 0, "{} {}", got.status, got.body);
    // Without a certificate (client_auth = optional), a bearer token works.
    let out = gw.lattice(&["keys", "create", "--agent", "bearer-bot", "--role", "agent"]);
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let with_key = [
        "--cacert",
        ca.as_str(),
        "-H",
        &format!("Authorization: {}", bearer(&key)),
    ];
    wait_for("the key to be active", Duration::from_secs(10), || {
        curl(port, "localhost", "/tools/echo/a", &with_key).status == 200
    });
    let got = curl(port, "localhost", "/tools/echo/a", &with_key);
    let ev = gw.events_of(&got.request_id(), 2);
    assert_eq!(
        (ev[0].principal.as_str(), ev[0].auth_method.as_str()),
        ("bearer-bot", "api_key")
    );
    // A mapped certificate and a bearer token at once: refused.
    let mut both = with_key.to_vec();
    both.extend(["--cert", crm.0.as_str(), "--key", crm.1.as_str()]);
    let got = curl(port, "localhost", "/tools/echo/a", &both);
    assert_eq!(got.status, 401, "{}", got.body);
    assert!(
        got.body.contains("already identifies `crm-bot`"),
        "{}",
        got.body
    );

    // A new certificate on disk is served to new connections, no restart:
    // the new one also names `reloaded.test`.
    let probe = || curl(port, "reloaded.test", "/healthz", &["--cacert", &ca]);
    assert!(
        !probe().ok,
        "the first certificate does not name reloaded.test"
    );
    let (cert, key) = server_ca.leaf("gateway", &["localhost", "reloaded.test"], &[]);
    write(&d, "server.key", &key);
    write(&d, "server.pem", &cert);
    wait_for("the new certificate", Duration::from_secs(10), || {
        probe().status == 200
    });
    assert!(
        gw.log().contains("TLS certificate reloaded"),
        "{}",
        gw.log()
    );
    // A broken replacement keeps the working one.
    write(&d, "server.pem", "not a certificate");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(probe().status, 200);
    assert!(
        gw.log().contains("still serving the previous one"),
        "{}",
        gw.log()
    );
    gw.assert_verifies(&[]);
}

#[test]
fn required_client_certificates_are_checked_at_the_handshake() {
    let upstream = Upstream::start();
    let server_ca = Ca::new("Lattice test server CA");
    let agents_ca = Ca::new("Lattice test agents CA");
    let extra = format!(
        "{}\n[[auth.mtls]]\ndns_name = \"Billing.Agents.Example\"\nagent = \"billing\"\nroles = [\"agent\"]\n",
        route(upstream.port)
    );
    let (mut gw, ca) = tls_gateway(&extra, STARTER_POLICY, &server_ca, &agents_ca, "");
    let d = gw.dir.path().to_path_buf();
    let (cert, key) = agents_ca.leaf("billing", &["billing.agents.example"], &[]);
    let (cert, key) = (
        write(&d, "billing.pem", &cert),
        write(&d, "billing.key", &key),
    );
    gw.launch();
    let port = gw.port;
    let with_cert = [
        "--cacert",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];
    wait_for("the TLS listener", Duration::from_secs(20), || {
        curl(port, "localhost", "/healthz", &with_cert).status == 200
    });
    // A DNS SAN maps (case-insensitively) to its principal.
    let got = curl(port, "localhost", "/tools/echo/a", &with_cert);
    assert_eq!(got.status, 200, "{}{}", got.body, got.error);
    let ev = gw.events_of(&got.request_id(), 2);
    assert_eq!(
        (ev[0].principal.as_str(), ev[0].auth_method.as_str()),
        ("billing", "mtls")
    );
    // No certificate: no connection, whatever else is sent.
    let got = curl(port, "localhost", "/healthz", &["--cacert", &ca]);
    assert!(!got.ok && got.status == 0, "{} {}", got.status, got.body);
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(http(port, "GET", "/healthz", &[], b"")
        .map(|r| r.status != 200)
        .unwrap_or(true));
}
