//! A backend's request connections (`upstream.rs`), against a small
//! HTTP/1.1 peer written here that counts the connections it accepts and
//! notes every request it reads: what is reused, what is closed, what a
//! request carries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use lattice_inference_router::{
    BackendKind, BackendSpec, Endpoint, InferenceError, ModelRoute, Router, Strategy,
    UpstreamResponse,
};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the peer answers.
#[derive(Clone, Copy)]
enum Answer {
    /// `200`, a JSON body of `len` bytes, keep-alive.
    Ok { len: usize },
    /// The same, then the peer closes the connection.
    OkThenClose,
    /// `503` with a short body.
    Unavailable,
}

#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    /// Each request's connection (numbered from 0), head (request line and
    /// headers) and body.
    requests: Mutex<Vec<(usize, String, String)>>,
}

impl Seen {
    /// The connections that carried requests to the backend (the router's
    /// health checks come on connections of their own, with `GET`s).
    fn request_connections(&self) -> usize {
        let mut ids: Vec<usize> = self
            .requests
            .lock()
            .iter()
            .filter(|(_, head, _)| head.starts_with("POST "))
            .map(|(id, _, _)| *id)
            .collect();
        ids.dedup();
        ids.len()
    }

    fn posts(&self) -> Vec<(String, String)> {
        self.requests
            .lock()
            .iter()
            .filter(|(_, head, _)| head.starts_with("POST "))
            .map(|(_, head, body)| (head.clone(), body.clone()))
            .collect()
    }
}

async fn peer(answer: Answer) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let id = s.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(conn, id, answer, s.clone()));
        }
    });
    (format!("http://{addr}"), seen)
}

/// Appends what the connection has to `buf`; false once it is closed.
async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match conn.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn serve(mut conn: TcpStream, id: usize, answer: Answer, seen: Arc<Seen>) {
    let mut buf = Vec::new();
    loop {
        // One request: the head up to the blank line, then its body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !read_more(&mut conn, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            if !read_more(&mut conn, &mut buf).await {
                return;
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
        buf.drain(..head_end + len);
        seen.requests.lock().push((id, head, body));
        let (status, body, close) = match answer {
            Answer::Ok { len } => (
                "200 OK",
                format!("{{\"x\":\"{}\"}}", "a".repeat(len.saturating_sub(8))),
                false,
            ),
            Answer::OkThenClose => ("200 OK", "{}".to_string(), true),
            Answer::Unavailable => (
                "503 Service Unavailable",
                "{\"error\":\"busy\"}".to_string(),
                false,
            ),
        };
        let out = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if conn.write_all(out.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

fn spec(url: &str, api_key: Option<&str>) -> BackendSpec {
    BackendSpec {
        name: "b".into(),
        kind: BackendKind::Openai,
        url: url.into(),
        location: "on_prem".into(),
        weight: 1,
        api_key: api_key.map(str::to_string),
        timeout: Duration::from_secs(5),
        health_interval: Duration::from_secs(3600),
        pin: None,
    }
}

fn router(url: &str, api_key: Option<&str>) -> Router {
    let router = Router::start().unwrap();
    let spec = spec(url, api_key);
    let route = ModelRoute {
        name: "m".into(),
        aliases: vec![],
        backends: vec!["b".into()],
        strategy: Strategy::default(),
        upstream_model: None,
        labels: vec![],
    };
    router.configure(&[spec], &[route]).unwrap();
    router
}

/// Sends one chat request: the answer's head, its body still to read.
async fn open(router: &Router) -> Result<UpstreamResponse, InferenceError> {
    let b = router.resolve("m").unwrap().backends[0].clone();
    router
        .send(
            &b,
            Endpoint::ChatCompletions,
            Bytes::from_static(b"{\"q\":1}"),
            vec![("x-trace", "t1".into())],
        )
        .await
}

/// Sends one chat request and reads the whole answer.
async fn call(router: &Router) -> Result<(u16, Vec<u8>), InferenceError> {
    let mut r = open(router).await?;
    let mut body = Vec::new();
    while let Some(c) = r.next_chunk().await {
        body.extend_from_slice(&c?);
    }
    Ok((r.status, body))
}

#[tokio::test]
async fn a_connection_read_to_its_end_serves_the_next_request() {
    let (url, seen) = peer(Answer::Ok { len: 100_000 }).await;
    let router = router(&url, None);
    for _ in 0..5 {
        let (status, body) = call(&router).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.len(), 100_000);
    }
    assert_eq!(seen.request_connections(), 1);
    assert_eq!(seen.posts().len(), 5);
}

#[tokio::test]
async fn a_response_dropped_before_its_end_closes_its_connection() {
    let (url, seen) = peer(Answer::Ok { len: 1_000_000 }).await;
    let router = router(&url, None);
    let mut r = open(&router).await.unwrap();
    assert!(r.next_chunk().await.unwrap().unwrap().len() < 1_000_000);
    drop(r);
    // The next request cannot reuse the half-read connection.
    let (status, body) = call(&router).await.unwrap();
    assert_eq!((status, body.len()), (200, 1_000_000));
    assert_eq!(seen.request_connections(), 2);
}

#[tokio::test]
async fn a_connection_the_backend_closed_is_not_reused() {
    let (url, seen) = peer(Answer::OkThenClose).await;
    let router = router(&url, None);
    for _ in 0..3 {
        assert_eq!(call(&router).await.unwrap(), (200, b"{}".to_vec()));
    }
    assert_eq!(seen.request_connections(), 3);
}

#[tokio::test]
async fn an_idle_connection_the_backend_dropped_is_replaced() {
    // The peer's first connection is closed by the peer after the first
    // answer, without `connection: close`: the router finds out on reuse.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        let id = s.connections.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 4096];
        let n = first.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        s.requests.lock().push((id, head, String::new()));
        first
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(first);
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            let id = s.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(conn, id, Answer::Ok { len: 10 }, s.clone()));
        }
    });
    let router = router(&url, None);
    assert_eq!(call(&router).await.unwrap(), (200, b"{}".to_vec()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = call(&router).await.unwrap();
    assert_eq!((status, body.len()), (200, 10));
    assert_eq!(seen.request_connections(), 2);
}

#[tokio::test]
async fn a_request_carries_the_backends_path_host_key_and_headers() {
    let (url, seen) = peer(Answer::Ok { len: 10 }).await;
    let router = router(&format!("{url}/prefix/"), Some("sk-backend"));
    call(&router).await.unwrap();
    let (head, body) = seen.posts()[0].clone();
    let host = url.trim_start_matches("http://");
    assert!(
        head.starts_with("POST /prefix/v1/chat/completions HTTP/1.1\r\n"),
        "{head}"
    );
    let head = head.to_ascii_lowercase();
    for line in [
        format!("host: {host}"),
        "content-type: application/json".into(),
        "authorization: bearer sk-backend".into(),
        "x-trace: t1".into(),
        "content-length: 7".into(),
    ] {
        assert!(
            head.contains(&format!("{line}\r\n")),
            "{line} missing in {head}"
        );
    }
    assert_eq!(body, "{\"q\":1}");
}

#[tokio::test]
async fn an_error_status_keeps_its_body_and_the_connection() {
    let (url, seen) = peer(Answer::Unavailable).await;
    let router = router(&url, None);
    for _ in 0..2 {
        match call(&router).await {
            Err(InferenceError::Status { status, body, .. }) => {
                assert_eq!(status, 503);
                assert_eq!(&body[..], b"{\"error\":\"busy\"}");
            }
            other => panic!("expected a 503, got {other:?}"),
        }
    }
    assert_eq!(seen.request_connections(), 1);
}

#[tokio::test]
async fn a_backend_that_is_not_there_is_a_backend_fault_naming_it() {
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let router = router(&url, None);
    match call(&router).await {
        Err(e @ InferenceError::Backend { .. }) => {
            assert!(e.is_backend_fault());
            let text = e.to_string();
            assert!(text.starts_with("backend b: connect 127.0.0.1:"), "{text}");
            assert!(text.contains("refused"), "{text}");
        }
        other => panic!("expected a backend fault, got {other:?}"),
    }
}

#[test]
fn a_backend_url_that_cannot_be_dialled_is_a_config_error() {
    let router = Router::start().unwrap();
    for (url, says) in [
        ("ftp://10.0.0.1", "scheme `ftp` is not http or https"),
        ("not a url", "bad URL `not a url`"),
    ] {
        let spec = spec(url, None);
        let err = router.configure(&[spec], &[]).unwrap_err().to_string();
        assert!(
            err.contains("backend `b`") && err.contains(says),
            "{url}: {err}"
        );
    }
}

#[tokio::test]
async fn a_backend_that_drops_the_connection_mid_request_is_a_fault_at_once() {
    // The peer answers the first request and closes the connection when the
    // second one arrives on it, without an answer: the request may have
    // reached the backend, so it is not resent, and the call fails now,
    // not at the backend's timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf).await.unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .await
            .unwrap();
        let _ = conn.read(&mut buf).await.unwrap();
        drop(conn);
        // Keep the listener: health checks may come.
        loop {
            let _ = listener.accept().await;
        }
    });
    let router = router(&url, None);
    assert_eq!(call(&router).await.unwrap(), (200, b"{}".to_vec()));
    let started = std::time::Instant::now();
    match call(&router).await {
        Err(e @ InferenceError::Backend { .. }) => {
            assert!(
                e.to_string()
                    .contains("connection closed before message completed"),
                "{e}"
            );
        }
        other => panic!("expected a backend fault, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
