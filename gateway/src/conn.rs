//! The connection guard: what happens to a connection before and between
//! its requests, where no call exists yet. `Guard` wraps the proxy service
//! and, for every accepted connection (after the TLS handshake):
//! - counts the open connections of each client address: one past
//!   `server.max_connections_per_client` is answered 429 and closed;
//! - closes an HTTP/1 connection idle before or between requests after
//!   `server.keepalive_idle_timeout_s`;
//! - bounds the whole request head: from its first byte to its last at most
//!   `server.header_read_timeout_ms`, whatever the client's pace — a client
//!   dripping its headers is answered 408 and cut off. Pingora times each
//!   read only (60 s), so a byte every 59 s would hold a connection forever.
//!
//! Both refusals are audited (`connection` events with the client address)
//! and counted in `lattice_connections_refused`. The doors mark where a
//! request head ends (`head_read`) and where the request ends
//! (`request_done`); bodies are timed by Pingora per read
//! (`server.body_read_timeout_ms`). HTTP/2 connections are counted; their
//! streams are framed and bounded by the h2 crate. The limits are read from
//! the live config when a connection opens, so a reload applies to new
//! connections.
//!
//! The answers here are raw bytes because no HTTP session exists yet; their
//! status, headers and body come from `error`'s one mapping.
//!
//! Must never: keep a connection's slot after it closes, time a read past
//! the request head, or write anything but a refusal.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use lattice_audit::{AuditEvent, Phase};
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::Rejection;
use crate::runtime::Shared;

/// The proxy service `A`, behind the connection guard.
pub struct Guard<A> {
    app: Arc<A>,
    shared: Arc<Shared>,
    open: Arc<Open>,
}

impl<A> Guard<A> {
    pub fn new(app: A, shared: Arc<Shared>) -> Self {
        Self {
            app: Arc::new(app),
            shared,
            open: Arc::new(Open::default()),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guard<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (limit, head, idle) = {
            let runtime = self.shared.runtime.load();
            let s = &runtime.config.server;
            (
                s.max_connections_per_client,
                s.header_read_timeout,
                Duration::from_secs(s.keepalive_idle_timeout_s),
            )
        };
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let client = peer.map(|a| a.to_string()).unwrap_or_default();
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let _slot = match peer {
            Some(addr) => match self.open.take(addr.ip(), limit) {
                Some(slot) => Some(slot),
                None => {
                    let r = Rejection::TooManyConnections { limit };
                    let reason = format!(
                        "connection refused: {} already holds {limit} open connections (server.max_connections_per_client)",
                        addr.ip()
                    );
                    let request_id = refused(&self.shared, &client, &r, &reason);
                    if !h2 {
                        let answer = canned(&r, &request_id);
                        let write = async {
                            stream.write_all(&answer).await?;
                            stream.flush().await
                        };
                        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
                    }
                    Shutdown::shutdown(&mut *stream).await;
                    return None;
                }
            },
            None => None,
        };
        if h2 {
            return self.app.process_new(stream, shutdown).await;
        }
        let cutoff = Cutoff {
            shared: self.shared.clone(),
            client,
            ms: head.as_millis() as u64,
        };
        let guarded = Guarded::new(stream, head, idle, cutoff);
        self.app.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// The request head of the session's current request is complete: reads
/// are no longer timed by the guard.
pub fn head_read(session: &Session) {
    if let Some(g) = guarded(session) {
        g.set(BODY);
    }
}

/// The session's current request is over: the connection is idle until the
/// next request's first byte.
pub fn request_done(session: &Session) {
    if let Some(g) = guarded(session) {
        g.set(IDLE);
    }
}

fn guarded(session: &Session) -> Option<&Guarded> {
    session
        .as_downstream()
        .stream()?
        .as_any()
        .downcast_ref::<Guarded>()
}

/// Open connections per client address.
#[derive(Default)]
struct Open(parking_lot::Mutex<HashMap<IpAddr, u64>>);

/// One open connection of `ip`; released when dropped.
struct Slot {
    open: Arc<Open>,
    ip: IpAddr,
}

impl Open {
    fn take(self: &Arc<Self>, ip: IpAddr, limit: u64) -> Option<Slot> {
        let mut counts = self.0.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            open: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> u64 {
        self.0.lock().get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.open.0.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Records a connection refusal; returns the request id its answer names.
fn refused(shared: &Shared, client: &str, r: &Rejection, reason: &str) -> String {
    let request_id = uuid::Uuid::now_v7().to_string();
    let mut e = AuditEvent::new(Phase::Decision, &request_id, "connection");
    e.decision = "deny".into();
    e.status = Some(r.status());
    e.reason = reason.to_string();
    e.client_addr = client.to_string();
    if let Err(err) = shared.audit.record(e) {
        tracing::error!(error = %err, client, reason, "could not audit a refused connection");
    }
    shared.metrics.connection_refused(r.code());
    tracing::info!(client, reason, "connection refused");
    request_id
}

/// The refusal as a whole HTTP/1.1 answer that closes the connection.
fn canned(r: &Rejection, request_id: &str) -> Vec<u8> {
    let body = r.body(request_id);
    let status = http::StatusCode::from_u16(r.status()).unwrap_or(http::StatusCode::BAD_REQUEST);
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nx-request-id: {request_id}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    for (name, value) in r.headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    out
}

// The phase of an HTTP/1 connection, in the low two bits of `Guarded::word`;
// the rest counts phase changes, so a timer is re-armed for each new phase.
const IDLE: u32 = 0;
const HEAD: u32 = 1;
const BODY: u32 = 2;

/// What a head timeout does: audit, answer 408.
struct Cutoff {
    shared: Arc<Shared>,
    client: String,
    ms: u64,
}

/// A connection's stream with its idle and head deadlines.
pub struct Guarded {
    inner: Stream,
    word: AtomicU32,
    /// The phase word the timer is armed for.
    armed: Option<u32>,
    timer: Pin<Box<tokio::time::Sleep>>,
    head: Duration,
    idle: Duration,
    cutoff: Option<Cutoff>,
}

impl Guarded {
    fn new(inner: Stream, head: Duration, idle: Duration, cutoff: Cutoff) -> Self {
        Self {
            inner,
            word: AtomicU32::new(IDLE),
            armed: None,
            timer: Box::pin(tokio::time::sleep(idle)),
            head,
            idle,
            cutoff: Some(cutoff),
        }
    }

    fn set(&self, phase: u32) {
        // One task drives an HTTP/1 connection: no concurrent writer.
        let old = self.word.load(Ordering::Acquire);
        let next = ((old >> 2).wrapping_add(1) << 2) | phase;
        self.word.store(next, Ordering::Release);
    }

    /// The head timed out: audit it and try once to say so.
    fn cut_off(&mut self, cx: &mut Context<'_>) {
        let Some(c) = self.cutoff.take() else {
            return;
        };
        let r = Rejection::HeadTimeout { ms: c.ms };
        let reason = format!(
            "connection cut off: the request head did not arrive within {} ms of its first byte (server.header_read_timeout_ms)",
            c.ms
        );
        let request_id = refused(&c.shared, &c.client, &r, &reason);
        let answer = canned(&r, &request_id);
        let inner = Pin::new(&mut self.inner);
        if let Poll::Ready(Ok(_)) = inner.poll_write(cx, &answer) {
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let word = this.word.load(Ordering::Acquire);
        let phase = word & 3;
        if phase == BODY {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.armed != Some(word) {
            let wait = if phase == IDLE { this.idle } else { this.head };
            this.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + wait);
            this.armed = Some(word);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if phase == IDLE && buf.filled().len() > before {
                    this.set(HEAD);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if phase == IDLE {
                    // Idle too long: end of stream, the connection closes.
                    return Poll::Ready(Ok(()));
                }
                this.cut_off(cx);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head timeout",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_released_when_dropped() {
        let open = Arc::new(Open::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = open.take(a, 2).unwrap();
        let second = open.take(a, 2).unwrap();
        assert!(open.take(a, 2).is_none(), "a third connection of a");
        let other = open.take(b, 2).unwrap();
        assert_eq!((open.count(a), open.count(b)), (2, 1));
        drop(first);
        assert_eq!(open.count(a), 1);
        let again = open.take(a, 2).unwrap();
        drop((second, again, other));
        assert_eq!((open.count(a), open.count(b)), (0, 0));
        assert!(
            open.0.lock().is_empty(),
            "no entry outlives its connections"
        );
    }

    #[test]
    fn a_canned_refusal_is_a_whole_answer_from_the_one_mapping() {
        let r = Rejection::TooManyConnections { limit: 3 };
        let text = String::from_utf8(canned(&r, "req-1")).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains("\r\nretry-after: 1"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "too_many_connections");
        assert_eq!(json["error"]["request_id"], "req-1");
    }
}
