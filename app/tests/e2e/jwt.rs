//! JWT bearer tokens: the valid cases and every refusal, each audited.

use crate::harness::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jwt_simple::prelude::*;
use serde_json::json;

fn claims(iss: &str, aud: &str) -> JWTClaims<serde_json::Value> {
    Claims::with_custom_claims(
        json!({"tenant": "acme", "roles": ["agent"]}),
        Duration::from_mins(5),
    )
    .with_issuer(iss)
    .with_audience(aud)
    .with_subject("jwt-agent")
}

#[test]
fn jwt_valid_tokens_pass_and_every_bad_token_is_refused_and_audited() {
    let upstream = Upstream::start();
    let ed = Ed25519KeyPair::generate().with_key_id("k1");
    let es = ES256KeyPair::generate().with_key_id("e1");
    let point = es.public_key().public_key().to_bytes_uncompressed();
    let jwks = json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": B64.encode(ed.public_key().to_bytes())},
        {"kty": "EC", "crv": "P-256", "kid": "e1", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])},
    ]});
    let extra = format!(
        "{}\n[auth]\napi_keys = true\n[[auth.jwt]]\nissuer = \"https://idp.test\"\naudiences = [\"lattice-gw\"]\njwks_file = \"jwks.json\"\ntenant_claim = \"tenant\"\nroles_claim = \"roles\"\n",
        route(upstream.port)
    );
    let mut gw = Gateway::prepare(&extra, STARTER_POLICY);
    std::fs::write(gw.path("jwks.json"), jwks.to_string()).unwrap();
    gw.spawn();
    let call = |token: &str| {
        http(
            gw.port,
            "GET",
            "/tools/echo/j",
            &[("Authorization", &bearer(token))],
            b"",
        )
        .unwrap()
    };

    // Valid EdDSA and ES256 tokens: claims become the principal.
    for token in [
        ed.sign(claims("https://idp.test", "lattice-gw")).unwrap(),
        es.sign(claims("https://idp.test", "lattice-gw")).unwrap(),
    ] {
        let r = call(&token);
        assert_eq!(r.status, 200, "{}", r.body);
        let ev = gw.events_of(&r.request_id(), 2);
        assert_eq!(
            (
                ev[0].principal.as_str(),
                ev[0].tenant.as_str(),
                ev[0].auth_method.as_str()
            ),
            ("jwt-agent", "acme", "jwt")
        );
        assert_eq!(ev[0].decision, "allow");
    }

    let payload =
        B64.encode(serde_json::to_vec(&claims("https://idp.test", "lattice-gw")).unwrap());
    let alg_none = format!(
        "{}.{payload}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#)
    );
    let mut expired = claims("https://idp.test", "lattice-gw");
    let past = Clock::now_since_epoch() - Duration::from_hours(2);
    expired.issued_at = Some(past);
    expired.invalid_before = Some(past);
    expired.expires_at = Some(past + Duration::from_mins(5));
    let mut no_exp = claims("https://idp.test", "lattice-gw");
    no_exp.expires_at = None;
    let impostor = Ed25519KeyPair::generate().with_key_id("k1");

    let cases = [
        (
            "alg none",
            alg_none,
            "unsigned tokens (alg none) are refused",
        ),
        (
            "wrong audience",
            ed.sign(claims("https://idp.test", "someone-else")).unwrap(),
            "token audience is not accepted",
        ),
        ("expired", ed.sign(expired).unwrap(), "token has expired"),
        (
            "bad signature",
            impostor
                .sign(claims("https://idp.test", "lattice-gw"))
                .unwrap(),
            "bad signature",
        ),
        (
            "unknown issuer",
            ed.sign(claims("https://evil.test", "lattice-gw")).unwrap(),
            "unknown issuer `https://evil.test`",
        ),
        (
            "no exp",
            ed.sign(no_exp).unwrap(),
            "token has no expiry (exp)",
        ),
    ];
    for (name, token, reason) in cases {
        let r = call(&token);
        assert_eq!(r.status, 401, "{name}: {}", r.body);
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("invalid_token"),
            "{name}"
        );
        let ev = gw.events_of(&r.request_id(), 2);
        assert_eq!(ev[0].decision, "deny", "{name}");
        assert_eq!(
            ev[0].reason,
            format!("authentication failed: {reason}"),
            "{name}"
        );
        assert_eq!(ev[1].status, Some(401), "{name}");
    }
}

#[test]
fn jwks_is_fetched_from_a_url() {
    let upstream = Upstream::start();
    let key = Ed25519KeyPair::generate().with_key_id("u1");
    let served = tempfile::tempdir().unwrap();
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "u1", "x": B64.encode(key.public_key().to_bytes())}]});
    std::fs::write(served.path().join("jwks.json"), jwks.to_string()).unwrap();
    let port = free_port();
    let mut server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(served.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the JWKS server",
        std::time::Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    let extra = format!(
        "{}\n[[auth.jwt]]\nissuer = \"https://idp.test\"\naudiences = [\"lattice-gw\"]\njwks_url = \"http://127.0.0.1:{port}/jwks.json\"\nroles_claim = \"roles\"\n",
        route(upstream.port)
    );
    let gw = Gateway::start(&extra);
    let token = key.sign(claims("https://idp.test", "lattice-gw")).unwrap();
    wait_for(
        "keys fetched from the JWKS URL",
        std::time::Duration::from_secs(10),
        || {
            http(
                gw.port,
                "GET",
                "/tools/echo/u",
                &[("Authorization", &bearer(&token))],
                b"",
            )
            .unwrap()
            .status
                == 200
        },
    );
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn an_identity_provider_for_people_makes_human_principals() {
    // Two issuers: one for agents, one for people (`principal_type = "human"`).
    let agents = Ed25519KeyPair::generate().with_key_id("a1");
    let people = Ed25519KeyPair::generate().with_key_id("p1");
    let jwks = |k: &Ed25519KeyPair, kid: &str| {
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": B64.encode(k.public_key().to_bytes())}]}).to_string()
    };
    let extra = "[auth]\napi_keys = true\n\
        [[auth.jwt]]\nissuer = \"https://agents.test\"\naudiences = [\"lattice-gw\"]\njwks_file = \"agents.json\"\ntenant_claim = \"tenant\"\nroles_claim = \"roles\"\n\
        [[auth.jwt]]\nissuer = \"https://sso.test\"\naudiences = [\"lattice-gw\"]\njwks_file = \"people.json\"\ntenant_claim = \"tenant\"\nroles_claim = \"roles\"\nprincipal_type = \"human\"\n";
    let policy = r#"
        @id("people-read-their-tenant")
        permit (principal is Lattice::Human, action == Lattice::Action::"admin.read_audit", resource is Lattice::Tenant)
        when { principal in resource };
    "#;
    let mut gw = Gateway::prepare(extra, policy);
    std::fs::write(gw.path("agents.json"), jwks(&agents, "a1")).unwrap();
    std::fs::write(gw.path("people.json"), jwks(&people, "p1")).unwrap();
    gw.spawn();
    let token = |k: &Ed25519KeyPair, iss: &str| {
        let mut c = claims(iss, "lattice-gw");
        c.subject = Some("pat".into());
        bearer(&k.sign(c).unwrap())
    };
    let person = token(&people, "https://sso.test");
    let me: serde_json::Value =
        serde_json::from_str(&gw.get("/admin/v1/whoami", &person).body).unwrap();
    assert_eq!(
        (
            &me["principal"],
            &me["type"],
            &me["tenant"],
            &me["auth_method"],
            &me["audit_scope"]
        ),
        (
            &json!("pat"),
            &json!("human"),
            &json!("acme"),
            &json!("jwt"),
            &json!("tenant")
        )
    );
    let r = gw.get("/admin/v1/audit", &person);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["scope"], "tenant:acme");
    // The same claims from the agents' issuer are an agent: not a reader.
    let agent = token(&agents, "https://agents.test");
    let me: serde_json::Value =
        serde_json::from_str(&gw.get("/admin/v1/whoami", &agent).body).unwrap();
    assert_eq!(me["type"], "agent");
    let r = gw.get("/admin/v1/audit", &agent);
    assert_eq!(r.status, 403, "{}", r.body);
    // Both calls are audited under the principal's kind of login.
    let events = gw.events_of(&r.request_id(), 2);
    assert_eq!(
        (events[0].principal.as_str(), events[0].decision.as_str()),
        ("pat", "deny")
    );
}
