//! Limits at the edge: a request head past `[server]`'s bounds is refused
//! by the gateway itself (431 for header fields by size or number, 414 for
//! the request target), on every door, never forwarded, and audited.

use crate::harness::*;

#[test]
fn oversized_heads_are_refused_at_the_edge_and_audited() {
    let upstream = Upstream::start();
    let gw = Gateway::start(&route(upstream.port));
    let key = bearer(&gw.create_key("agent-edge", &["agent"]));
    let big = "x".repeat(200 * 1024);
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let long_path = format!("/tools/echo/{}", "a".repeat(10 * 1024));
    // (method, door, path, extra headers, status, message)
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        Vec<(String, String)>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "GET",
            "route",
            "/tools/echo/x".into(),
            vec![("x-big".into(), big.clone())],
            431,
            "bytes of header fields, over the limit of 65536",
        ),
        (
            "GET",
            "route",
            "/tools/echo/x".into(),
            many.clone(),
            431,
            "header fields, over the limit of 100",
        ),
        (
            "GET",
            "route",
            long_path.clone(),
            vec![],
            414,
            "request target exceeds the limit of 8192 bytes",
        ),
        (
            "POST",
            "mcp",
            "/mcp".into(),
            vec![("x-big".into(), big.clone())],
            431,
            "over the limit of 65536",
        ),
        (
            "POST",
            "llm",
            "/v1/chat/completions".into(),
            vec![("x-big".into(), big.clone())],
            431,
            "over the limit of 65536",
        ),
        (
            "GET",
            "admin",
            "/admin/v1/whoami".into(),
            many.clone(),
            431,
            "over the limit of 100",
        ),
    ];
    for (method, door, path, extra, status, message) in cases {
        let mut headers: Vec<(&str, &str)> = vec![
            ("Authorization", &key),
            ("Content-Type", "application/json"),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let r = http(gw.port, method, &path, &headers, b"{}").unwrap();
        assert_eq!(r.status, status, "{door}: {}", r.body);
        let err = &r.json()["error"];
        assert!(
            err["message"].as_str().unwrap().contains(message),
            "{door}: {}",
            r.body
        );
        // Refused at step 1, and recorded: the trail holds the refusal.
        let ev = gw.events_of(&r.request_id(), 2);
        assert_eq!(ev[0].decision, "deny", "{door}: {:?}", ev[0]);
        assert!(
            ev.iter().any(|e| e.reason.contains(message)),
            "{door}: {ev:?}"
        );
    }
    // Within the bounds, the same route serves.
    let fine = "x".repeat(16 * 1024);
    let r = http(
        gw.port,
        "GET",
        "/tools/echo/x",
        &[("Authorization", &key), ("x-fine", &fine)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    gw.assert_verifies(&[]);
}

/// Sends a request head and part of its body, then stalls; returns what
/// the gateway answered, if anything, and how long it took.
fn stall(port: u16, path: &str, key: &str) -> (String, std::time::Duration) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":"
    )
    .unwrap();
    let start = std::time::Instant::now();
    let mut answer = Vec::new();
    // The gateway's answer, bounded.
    #[allow(clippy::disallowed_methods)]
    let _ = s.take(1 << 20).read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).to_string(),
        start.elapsed(),
    )
}

#[test]
fn a_client_that_stops_sending_its_body_is_cut_off_while_others_are_served() {
    let upstream = Upstream::start();
    let policy = format!(
        "{STARTER_POLICY}\npermit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"http_request\", resource);\n"
    );
    let mut gw = Gateway::prepare(&route(upstream.port), &policy);
    let config = std::fs::read_to_string(gw.config()).unwrap().replacen(
        "reload_poll_ms = 100\n",
        "reload_poll_ms = 100\nbody_read_timeout_ms = 500\n",
        1,
    );
    std::fs::write(gw.config(), config).unwrap();
    gw.spawn();
    let key = bearer(&gw.create_key("agent-slow", &["agent"]));
    for path in ["/v1/chat/completions", "/tools/echo/x"] {
        let port = gw.port;
        let (k, p) = (key.clone(), path.to_string());
        let slow = std::thread::spawn(move || stall(port, &p, &k));
        // Others are served meanwhile.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(gw.get("/tools/echo/ok", &key).status, 200);
        let (answer, took) = slow.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains("request_timeout"), "{path}: {answer}");
        assert!(took < std::time::Duration::from_secs(5), "{path}: {took:?}");
        let request_id = answer
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap()
            .trim()
            .to_string();
        let ev = gw.events_of(&request_id, 2);
        assert!(
            ev.iter()
                .any(|e| e.reason.contains("request_timeout")
                    || e.reason.contains("stopped arriving")),
            "{path}: {ev:?}"
        );
    }
    gw.assert_verifies(&[]);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_configured_time() {
    use std::io::{Read, Write};
    let upstream = Upstream::start();
    let mut gw = Gateway::prepare(&route(upstream.port), STARTER_POLICY);
    let config = std::fs::read_to_string(gw.config()).unwrap().replacen(
        "reload_poll_ms = 100\n",
        "reload_poll_ms = 100\nkeepalive_idle_timeout_s = 1\n",
        1,
    );
    std::fs::write(gw.config(), config).unwrap();
    gw.spawn();
    let key = bearer(&gw.create_key("agent-idle", &["agent"]));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    write!(
        s,
        "GET /tools/echo/idle HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n\r\n"
    )
    .unwrap();
    let start = std::time::Instant::now();
    let mut answer = Vec::new();
    // Until the gateway closes the connection (bounded by the read timeout).
    #[allow(clippy::disallowed_methods)]
    let closed = s.take(1 << 20).read_to_end(&mut answer).is_ok();
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed, "the connection was never closed: {text}");
    assert!(
        took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(5),
        "closed after {took:?}"
    );
}
