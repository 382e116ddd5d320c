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
        let request_id = request_id_of(&answer);
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

/// The gateway with `line` added to its `[server]` section.
fn gateway_with(upstream: &Upstream, line: &str) -> Gateway {
    let mut gw = Gateway::prepare(&route(upstream.port), STARTER_POLICY);
    let config = std::fs::read_to_string(gw.config()).unwrap().replacen(
        "reload_poll_ms = 100\n",
        &format!("reload_poll_ms = 100\n{line}\n"),
        1,
    );
    std::fs::write(gw.config(), config).unwrap();
    gw.spawn();
    gw
}

/// The `x-request-id` of a raw HTTP answer.
fn request_id_of(answer: &str) -> String {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap()
        .trim()
        .to_string()
}

/// Reads what the gateway sends until it closes the connection (bounded).
fn until_closed(mut s: std::net::TcpStream) -> String {
    use std::io::Read;
    let mut answer = Vec::new();
    #[allow(clippy::disallowed_methods)]
    let _ = (&mut s).take(1 << 20).read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).to_string()
}

#[test]
fn a_client_that_drips_its_headers_is_cut_off_at_the_head_deadline_while_others_are_served() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let upstream = Upstream::start();
    let gw = gateway_with(&upstream, "header_read_timeout_ms = 800");
    let key = bearer(&gw.create_key("agent-drip", &["agent"]));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let start = Instant::now();
    s.write_all(b"GET /tools/echo/slow HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // One header line every 150 ms: each read is quick, the head never ends.
    let mut writer = s.try_clone().unwrap();
    let drip = std::thread::spawn(move || {
        for i in 0..40 {
            std::thread::sleep(Duration::from_millis(150));
            if writer
                .write_all(format!("x-drip-{i}: v\r\n").as_bytes())
                .is_err()
            {
                return i;
            }
        }
        40
    });
    // Others are served meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gw.get("/tools/echo/ok", &key).status, 200);
    let answer = until_closed(s);
    let took = start.elapsed();
    let sent = drip.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(
        answer.contains("the request head did not arrive within 800 ms"),
        "{answer}"
    );
    assert!(
        took >= Duration::from_millis(750) && took < Duration::from_secs(4),
        "cut off after {took:?}"
    );
    assert!(sent < 40, "the dripping client was never cut off");
    // The cut-off is in the trail, with the client's address.
    let request_id = request_id_of(&answer);
    let ev = gw.events_of(&request_id, 1);
    assert_eq!(
        (ev[0].kind.as_str(), ev[0].decision.as_str(), ev[0].status),
        ("connection", "deny", Some(408)),
        "{ev:?}"
    );
    assert!(
        ev[0].reason.contains("server.header_read_timeout_ms"),
        "{ev:?}"
    );
    assert!(ev[0].client_addr.starts_with("127.0.0.1:"), "{ev:?}");
    assert_eq!(
        gw.metric("lattice_connections_refused_total{reason=\"request_timeout\"}"),
        1.0
    );
    // A whole head sent at once is not timed by its pace, only its end.
    assert_eq!(gw.get("/tools/echo/after", &key).status, 200);
    gw.assert_verifies(&[]);
}

#[test]
fn connections_past_the_per_client_cap_are_refused_with_429_until_one_closes() {
    use std::io::Write;
    use std::time::Duration;
    let upstream = Upstream::start();
    let gw = gateway_with(&upstream, "max_connections_per_client = 3");
    let key = bearer(&gw.create_key("agent-many", &["agent"]));
    // Three keep-alive connections, each used once and kept open.
    let mut held: Vec<Conn> = (0..3).map(|_| Conn::open(gw.port)).collect();
    for c in &mut held {
        assert_eq!(c.get("/tools/echo/held", &key).unwrap().0, 200);
    }
    let mut fourth = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = fourth.write_all(
        format!("GET /tools/echo/fourth HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n\r\n")
            .as_bytes(),
    );
    let answer = until_closed(fourth);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
    assert!(
        answer.contains("\"code\":\"too_many_connections\""),
        "{answer}"
    );
    let request_id = request_id_of(&answer);
    let ev = gw.events_of(&request_id, 1);
    assert_eq!(
        (ev[0].kind.as_str(), ev[0].status),
        ("connection", Some(429)),
        "{ev:?}"
    );
    assert!(
        ev[0].reason.contains("already holds 3 open connections"),
        "{ev:?}"
    );
    // One closes: a new connection is served again.
    held.pop();
    wait_for("a slot to free", Duration::from_secs(10), || {
        http(
            gw.port,
            "GET",
            "/tools/echo/again",
            &[("Authorization", &key)],
            b"",
        )
        .map(|r| r.status == 200)
        .unwrap_or(false)
    });
    for c in &mut held {
        assert_eq!(c.get("/tools/echo/still", &key).unwrap().0, 200);
    }
    gw.assert_verifies(&[]);
}

#[test]
fn a_connection_that_never_sends_a_request_is_closed_after_the_idle_timeout() {
    use std::time::{Duration, Instant};
    let upstream = Upstream::start();
    let gw = gateway_with(&upstream, "keepalive_idle_timeout_s = 1");
    let s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let start = Instant::now();
    let answer = until_closed(s);
    let took = start.elapsed();
    assert_eq!(answer, "", "nothing is answered to silence");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
}

#[test]
fn a_client_that_leaves_before_the_answer_is_audited_as_499_and_not_logged_as_an_error() {
    use std::io::{Read, Write};
    // An upstream that takes the request and answers only after 3 s.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in silent.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                std::thread::sleep(std::time::Duration::from_secs(3));
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            });
        }
    });
    let mut gw = Gateway::start(&route(up_port));
    let key = bearer(&gw.create_key("agent-leaving", &["agent"]));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    write!(
        s,
        "GET /tools/echo/leaving HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n\r\n"
    )
    .unwrap();
    // Forwarded (the decision is durable before that), then the client goes.
    std::thread::sleep(std::time::Duration::from_millis(500));
    drop(s);
    let mut outcome = None;
    wait_for(
        "the outcome of the call",
        std::time::Duration::from_secs(10),
        || {
            outcome = gw
                .store()
                .tail(20)
                .unwrap()
                .into_iter()
                .map(|e| serde_json::from_str::<serde_json::Value>(&e.json).unwrap())
                .find(|e| e["target"] == "echo" && e.get("status").is_some_and(|s| !s.is_null()));
            outcome.is_some()
        },
    );
    let outcome = outcome.unwrap();
    assert_eq!(outcome["status"], 499, "{outcome}");
    assert!(
        outcome["reason"]
            .as_str()
            .unwrap()
            .contains("client_closed_request"),
        "{outcome}"
    );
    gw.stop();
    let log = gw.log();
    assert!(
        !log.contains("ERROR"),
        "a client leaving is no error: {log}"
    );
    gw.assert_verifies(&[]);
}
