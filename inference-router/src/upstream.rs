//! The connections a backend's requests travel on: HTTP/1.1 over TCP, or
//! over TLS (the web's roots, or a discovered worker's pinned
//! certificate), kept per backend (`Upstream`) and driven on the task of
//! the call that uses them. A request checks out a connection (the most
//! recently used idle one still open, or a new one), sends its head and
//! body, and reads the response while polling the connection itself; a
//! response read to its end hands the connection back. The same
//! connections carry lattice-mcp's streamable-HTTP POSTs to MCP servers
//! (`Upstream::post`, with that transport's own headers).
//!
//! Why not reqwest here (it still serves health checks and joins): its
//! pooled client runs every connection on a task of its own, so a request
//! and its response each cross between two tasks (two wake-ups a call,
//! each a wait for a core), and it adds URL, redirect and timeout layers
//! the router does not use. hyper's connection, polled by the call that
//! owns it, does the same HTTP/1.1 without the hops (the before and after
//! are in `docs/benchmarks-log.md`, "Changes measured").
//!
//! Must never: hand a connection back before its response was read to the
//! end (or one the backend closed), send a request on a connection that is
//! not idle, follow a redirect or a proxy from the environment, or resend a
//! request that may have reached the backend.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
pub use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::pin::{pinned_tls, web_tls};

/// Idle connections kept per backend (the most recently used are reused
/// first; beyond this many, a returned connection is closed).
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Resolves a backend's host name (the gateway's egress guard).
pub type Resolver = Arc<dyn reqwest::dns::Resolve>;

/// Where a backend is and how to reach it: parsed once, when the route
/// table is built.
pub struct Upstream {
    /// The `Host` header (the URL's host, and its port when it has one).
    authority: HeaderValue,
    /// The URL's path, without a trailing `/` (requests append theirs).
    prefix: String,
    /// The URL's path and query as given (`post` sends to exactly this).
    target: String,
    host: Host,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    dns: Option<Resolver>,
    /// Idle connections, the most recently returned last.
    idle: Mutex<VecDeque<(Conn, Instant)>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("authority", &self.authority)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Upstream {
    /// `url` is the backend's root (`http://10.0.0.5:8000`); over
    /// `https` it is trusted by the web's roots, or by `pin` alone (a
    /// discovered worker's certificate fingerprint).
    pub fn new(url: &str, pin: Option<&str>, dns: Option<Resolver>) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad URL `{url}`: {e}"))?;
        let https = match parsed.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(format!("`{url}`: scheme `{other}` is not http or https")),
        };
        let (host, name) = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => (Host::Ip(ip.into()), ServerName::IpAddress(ip.into())),
            Some(url::Host::Ipv6(ip)) => (Host::Ip(ip.into()), ServerName::IpAddress(ip.into())),
            Some(url::Host::Domain(d)) => (
                Host::Name(d.to_string()),
                ServerName::try_from(d.to_string())
                    .map_err(|e| format!("`{url}`: host `{d}`: {e}"))?,
            ),
            None => return Err(format!("`{url}` has no host")),
        };
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| format!("`{url}` has no port"))?;
        let mut authority = parsed.host_str().unwrap_or_default().to_string();
        if let Some(p) = parsed.port() {
            authority.push_str(&format!(":{p}"));
        }
        let authority = HeaderValue::from_str(&authority)
            .map_err(|_| format!("`{url}`: host `{authority}` cannot be a Host header"))?;
        let tls = match https {
            false => None,
            true => {
                let config = match pin {
                    Some(fingerprint) => pinned_tls(fingerprint),
                    None => web_tls(),
                };
                Some((TlsConnector::from(config.map_err(|e| e.to_string())?), name))
            }
        };
        Ok(Self {
            authority,
            prefix: parsed.path().trim_end_matches('/').to_string(),
            target: match parsed.query() {
                Some(q) => format!("{}?{q}", parsed.path()),
                None => parsed.path().to_string(),
            },
            host,
            port,
            tls,
            dns,
            idle: Mutex::new(VecDeque::new()),
        })
    }

    /// One request with the router's headers (`authorization` marked
    /// sensitive, so no debug print shows it); as `send`.
    pub(crate) async fn request(
        self: &Arc<Self>,
        path: &str,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    ) -> Result<Response, String> {
        let uri = format!("{}{path}", self.prefix);
        self.send(&uri, router_headers(headers)?, body).await
    }

    /// A POST of a JSON `body` to the URL exactly as given (its path and
    /// query), with `headers`: what an MCP server's endpoint takes.
    pub async fn post(
        self: &Arc<Self>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, String> {
        self.send(&self.target, headers, body).await
    }

    /// One POST of a JSON `body` to `uri`, with `headers` beside `Host` and
    /// `Content-Type`: a connection checked out (or opened), the request
    /// written, the response head read. A reused connection that turns out
    /// closed before the request left is replaced by a new one, once.
    async fn send(
        self: &Arc<Self>,
        uri: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, String> {
        let (mut conn, mut reused) = match self.checkout().await {
            Some(c) => (c, true),
            None => (self.connect().await?, false),
        };
        let head = loop {
            let sent = conn
                .sender
                .send_request(self.head(uri, &headers, body.clone())?);
            match conn.driver.drive(sent).await.and_then(|r| r) {
                Ok(head) => break head,
                Err(e) if reused && e.is_canceled() => {
                    conn = self.connect().await?;
                    reused = false;
                }
                Err(e) => return Err(describe(e)),
            }
        };
        let (parts, body) = head.into_parts();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            conn: Some(conn),
            upstream: self.clone(),
        })
    }

    /// The request as written: `Host`, the JSON body's type, the given
    /// headers.
    fn head(
        &self,
        uri: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<hyper::Request<Full<Bytes>>, String> {
        let mut req = hyper::Request::post(uri)
            .header("host", self.authority.clone())
            .header("content-type", HeaderValue::from_static("application/json"));
        if let Some(h) = req.headers_mut() {
            for (name, value) in headers {
                h.append(name, value.clone());
            }
        }
        req.body(Full::new(body))
            .map_err(|e| format!("request: {e}"))
    }

    /// The most recently used idle connection that is still open and
    /// ready, after closing those idle too long (so a caller that sends
    /// now and then, an MCP server's, needs no pruning of its own) and
    /// any found closed on the way.
    async fn checkout(&self) -> Option<Conn> {
        loop {
            let (mut conn, _) = {
                let mut idle = self.idle.lock();
                close_stale(&mut idle);
                idle.pop_back()?
            };
            let ready = {
                let Conn { sender, driver } = &mut conn;
                driver
                    .drive(std::future::poll_fn(|cx| sender.poll_ready(cx)))
                    .await
            };
            if matches!(ready, Ok(Ok(()))) && !conn.driver.closed {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let addrs: Vec<SocketAddr> = match &self.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, self.port)],
            Host::Name(name) => self.resolve(name).await?,
        };
        let mut last = format!(
            "`{}` resolved to no address",
            String::from_utf8_lossy(self.authority.as_bytes())
        );
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("connect {addr}: {e}"),
            }
        }
        let tcp = tcp.ok_or(last)?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("connect: nodelay: {e}"))?;
        let io: Io = match &self.tls {
            None => TokioIo::new(tcp).into(),
            Some((connector, name)) => connector
                .connect(name.clone(), TokioIo::new(TokioIo::new(tcp)))
                .await
                .map_err(|e| format!("TLS: {e}"))?
                .into(),
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(describe)?;
        Ok(Conn {
            sender,
            driver: Driver {
                conn: Box::pin(conn),
                closed: false,
            },
        })
    }

    async fn resolve(&self, name: &str) -> Result<Vec<SocketAddr>, String> {
        let refused = |e: &dyn std::fmt::Display| format!("resolve `{name}`: {e}");
        match &self.dns {
            Some(dns) => {
                let n = name
                    .parse::<reqwest::dns::Name>()
                    .map_err(|e| refused(&e))?;
                let addrs = dns.resolve(n).await.map_err(|e| refused(&e))?;
                Ok(addrs.map(|a| SocketAddr::new(a.ip(), self.port)).collect())
            }
            None => Ok(tokio::net::lookup_host((name, self.port))
                .await
                .map_err(|e| refused(&e))?
                .collect()),
        }
    }

    fn checkin(&self, mut conn: Conn) {
        // The response was read to its end: one poll lets the connection
        // turn idle (or notice the backend closed it). A connection that
        // is not ready at once is closed rather than kept.
        let mut cx = Context::from_waker(Waker::noop());
        let open = !conn.driver.closed && conn.driver.conn.as_mut().poll(&mut cx).is_pending();
        if open && matches!(conn.sender.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
            let mut idle = self.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push_back((conn, Instant::now()));
            }
        }
    }

    /// Closes the connections idle longer than `IDLE_TIMEOUT` (the health
    /// loop calls this, so a gateway that went quiet lets them go).
    pub(crate) fn prune(&self) {
        close_stale(&mut self.idle.lock());
    }
}

/// Closes the connections idle longer than `IDLE_TIMEOUT` (the oldest
/// returned are at the front).
fn close_stale(idle: &mut VecDeque<(Conn, Instant)>) {
    while idle
        .front()
        .is_some_and(|(_, since)| since.elapsed() > IDLE_TIMEOUT)
    {
        idle.pop_front();
    }
}

/// A response head, and its body read on the connection it came on.
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    body: Incoming,
    /// `None` once the body ended (the connection went back).
    conn: Option<Conn>,
    upstream: Arc<Upstream>,
}

impl Response {
    /// The next piece of the body; `None` at its end (the connection then
    /// goes back to its backend's idle ones). Dropping the response before
    /// that closes the connection: the backend sees the cancel.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        loop {
            match conn.driver.drive(self.body.frame()).await {
                Err(e) | Ok(Some(Err(e))) => {
                    self.conn = None;
                    return Err(describe(e));
                }
                Ok(None) => {
                    if let Some(conn) = self.conn.take() {
                        self.upstream.checkin(conn);
                    }
                    return Ok(None);
                }
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => return Ok(Some(data)),
                    _ => continue, // trailers, or an empty piece
                },
            }
        }
    }
}

/// A backend connection's stream: TCP, or TLS over it.
type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Driver,
}

/// The connection's own future (reads and writes the socket), polled by
/// whoever waits on something that needs it.
struct Driver {
    conn: Pin<Box<Connection<Io, Full<Bytes>>>>,
    /// The connection ended (the backend closed it, or it failed).
    closed: bool,
}

impl Driver {
    /// Waits for `fut` while polling the connection: the IO `fut` waits
    /// for happens in these polls, on this task.
    async fn drive<F: Future>(&mut self, fut: F) -> Result<F::Output, hyper::Error> {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            if !self.closed {
                match self.conn.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => self.closed = true,
                    Poll::Ready(Err(e)) => {
                        self.closed = true;
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => {}
                }
            }
            fut.as_mut().poll(cx).map(Ok)
        })
        .await
    }
}

/// The router's headers as sent; `authorization` marked sensitive.
fn router_headers(headers: Vec<(&'static str, String)>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| format!("request: header `{name}` has a value no header can carry"))?;
        value.set_sensitive(name == "authorization");
        map.append(name, value);
    }
    Ok(map)
}

/// hyper's error with its causes (the top level alone says little).
fn describe(e: hyper::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `post` sends to, for each form of URL: a table.
    #[test]
    fn a_post_goes_to_the_url_exactly_as_given() {
        let table = [
            ("http://10.0.0.5:8000", "/", "10.0.0.5:8000"),
            ("http://10.0.0.5:8000/mcp", "/mcp", "10.0.0.5:8000"),
            ("http://10.0.0.5:8000/mcp/", "/mcp/", "10.0.0.5:8000"),
            (
                "http://mcp.example:80/a/b?key=k&x=1",
                "/a/b?key=k&x=1",
                "mcp.example",
            ),
            ("https://mcp.example/sse?k=v", "/sse?k=v", "mcp.example"),
        ];
        for (url, target, host) in table {
            let up = Upstream::new(url, None, None).unwrap();
            let req = up
                .head(&up.target, &HeaderMap::new(), Bytes::new())
                .unwrap();
            assert_eq!(req.uri(), target, "{url}");
            assert_eq!(req.headers()["host"], host, "{url}");
        }
    }

    #[test]
    fn the_request_head_hides_the_credential_and_refuses_a_broken_header() {
        let up = Upstream::new("http://10.0.0.5:8000/base/", None, None).unwrap();
        let headers = router_headers(vec![
            ("authorization", "Bearer sk-backend".to_string()),
            ("traceparent", "00-abc-def-01".to_string()),
        ])
        .unwrap();
        let req = up
            .head(
                &format!("{}/v1/chat/completions", up.prefix),
                &headers,
                Bytes::new(),
            )
            .unwrap();
        assert_eq!(req.uri(), "/base/v1/chat/completions");
        assert_eq!(req.headers()["host"], "10.0.0.5:8000");
        assert!(req.headers()["authorization"].is_sensitive());
        assert!(!format!("{req:?}").contains("sk-backend"));
        assert!(!req.headers()["traceparent"].is_sensitive());
        let broken = vec![("x-trace", "a\nb".to_string())];
        let err = router_headers(broken).unwrap_err();
        assert_eq!(
            err,
            "request: header `x-trace` has a value no header can carry"
        );
    }
}
