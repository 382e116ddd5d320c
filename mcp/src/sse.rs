//! The legacy HTTP+SSE transport (protocol 2024-11-05): a long-lived `GET`
//! stream whose first `endpoint` event names the URL to `POST` messages to;
//! every message the server sends comes back as a `message` event on the
//! stream and is routed through the `Inbox`. The stream's end marks the
//! upstream dead (the gateway's supervisor reconnects). Hand-written
//! because rmcp no longer has this client.
//!
//! Must never: POST anywhere but the configured URL's origin (a server
//! cannot send the gateway's requests and injected credentials elsewhere).

use serde_json::Value;
use std::sync::Arc;
use tokio::sync::oneshot;

use crate::http::{HttpConfig, MAX_RESPONSE};
use crate::jsonrpc;
use crate::sse_event::{next_event, parse_event};
use crate::transport::{Announced, Answer, BoxFuture, Inbox, Kind, Transport};
use crate::upstream::Upstream;
use crate::McpError;

/// The protocol version of the SSE transport's era.
pub const SSE_PROTOCOL_VERSION: &str = "2024-11-05";

/// Where messages are POSTed, with what.
#[derive(Clone)]
struct Poster {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    cfg: HttpConfig,
}

impl Poster {
    async fn post(&self, message: &Value) -> Result<(), McpError> {
        let mut req = self
            .client
            .post(self.endpoint.clone())
            .timeout(self.cfg.timeout)
            .header("content-type", "application/json")
            .body(message.to_string());
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let r = req
            .send()
            .await
            .map_err(|e| err(&self.cfg, e.to_string()))?;
        if !r.status().is_success() {
            return Err(err(&self.cfg, format!("POST answered {}", r.status())));
        }
        Ok(())
    }
}

/// A connected legacy-SSE server.
pub struct SseTransport {
    poster: Poster,
    inbox: Arc<Inbox>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for SseTransport {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn err(cfg: &HttpConfig, message: impl Into<String>) -> McpError {
    McpError::Upstream {
        server: cfg.name.clone(),
        message: message.into(),
    }
}

/// Same scheme, host and port.
fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The POST endpoint an `endpoint` event names, if on the configured origin.
fn endpoint_of(base: &reqwest::Url, data: &str) -> Result<reqwest::Url, String> {
    let endpoint = base.join(data.trim()).map_err(|e| e.to_string())?;
    if !same_origin(base, &endpoint) {
        return Err(format!(
            "the endpoint {endpoint} is not on the configured origin"
        ));
    }
    Ok(endpoint)
}

/// Reads the stream: the first `endpoint` event sets up the poster (sent
/// back through `ready`), then every message goes through the inbox; the
/// answer to a server request no call can own is POSTed back.
async fn read_stream(
    mut response: reqwest::Response,
    inbox: Arc<Inbox>,
    base: Poster,
    ready: oneshot::Sender<Result<Poster, String>>,
) {
    let mut ready = Some(ready);
    let mut poster: Option<Poster> = None;
    let mut buf = Vec::new();
    'stream: while let Ok(Some(chunk)) = response.chunk().await {
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_RESPONSE {
            tracing::error!(upstream = %base.cfg.name, "SSE event too large; dropping the stream");
            break;
        }
        while let Some(event) = next_event(&mut buf) {
            let (kind, data) = parse_event(&event);
            if kind == "endpoint" {
                if let Some(tx) = ready.take() {
                    let found = endpoint_of(&base.endpoint, &data).map(|endpoint| Poster {
                        endpoint,
                        ..base.clone()
                    });
                    poster = found.as_ref().ok().cloned();
                    let refused = found.is_err();
                    let _ = tx.send(found);
                    if refused {
                        break 'stream;
                    }
                }
                continue;
            }
            let Ok(message) = jsonrpc::parse(data.as_bytes(), MAX_RESPONSE) else {
                continue;
            };
            if let (Some(reply), Some(p)) = (inbox.dispatch(message).await, &poster) {
                let p = p.clone();
                tokio::spawn(async move { p.post(&reply).await });
            }
        }
    }
    inbox.close().await;
    tracing::warn!(upstream = %base.cfg.name, "SSE stream ended");
}

/// Opens the stream, learns the POST endpoint, and initializes.
pub async fn start(cfg: HttpConfig) -> Result<Upstream, McpError> {
    crate::tools::check_server_name(&cfg.name)?;
    let (name, timeout) = (cfg.name.clone(), cfg.timeout);
    let transport = SseTransport::open(cfg).await?;
    Upstream::connect(&name, timeout, Box::new(transport)).await
}

impl SseTransport {
    /// Opens the stream and waits for its `endpoint` event.
    pub async fn open(cfg: HttpConfig) -> Result<Self, McpError> {
        let base = reqwest::Url::parse(&cfg.url).map_err(|e| err(&cfg, e.to_string()))?;
        let client = crate::http::client(&cfg)?;
        let mut get = client
            .get(base.clone())
            .header("accept", "text/event-stream");
        for (k, v) in &cfg.headers {
            get = get.header(k.as_str(), v.as_str());
        }
        let response = match tokio::time::timeout(cfg.timeout, get.send()).await {
            Err(_) => return Err(err(&cfg, "the SSE stream did not open in time")),
            Ok(Err(e)) => return Err(err(&cfg, e.to_string())),
            Ok(Ok(r)) if !r.status().is_success() => {
                return Err(err(&cfg, format!("the SSE stream answered {}", r.status())))
            }
            Ok(Ok(r)) => r,
        };
        let inbox = Arc::new(Inbox::new(
            &cfg.name,
            "the SSE stream ended before the answer",
        ));
        let (tx, rx) = oneshot::channel();
        let base = Poster {
            client,
            endpoint: base,
            cfg: cfg.clone(),
        };
        let reader = tokio::spawn(read_stream(response, inbox.clone(), base, tx));
        let poster = match tokio::time::timeout(cfg.timeout, rx).await {
            Ok(Ok(Ok(poster))) => poster,
            Ok(Ok(Err(why))) => {
                reader.abort();
                return Err(err(&cfg, why));
            }
            _ => {
                reader.abort();
                return Err(err(&cfg, "no `endpoint` event on the SSE stream"));
            }
        };
        Ok(Self {
            poster,
            inbox,
            reader,
        })
    }
}

impl Transport for SseTransport {
    fn protocol_version(&self) -> &'static str {
        SSE_PROTOCOL_VERSION
    }

    fn request<'a>(
        &'a self,
        id: u64,
        message: Value,
        kind: Kind<'a>,
    ) -> BoxFuture<'a, Result<Answer, McpError>> {
        Box::pin(async move {
            self.inbox
                .exchange(id, kind, self.poster.post(&message))
                .await
        })
    }

    fn send(&self, message: Value) -> BoxFuture<'_, Result<(), McpError>> {
        Box::pin(async move { self.poster.post(&message).await })
    }

    fn announced(&self) -> &Announced {
        self.inbox.announced()
    }

    /// Alive while its stream is open.
    fn is_alive(&self) -> bool {
        self.inbox.is_alive()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.reader.abort();
            self.inbox.close().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_and_parsed() {
        let mut buf =
            b"event: endpoint\ndata: /message?sessionId=1\n\ndata: {\"a\":1}\r\n\r\npartial"
                .to_vec();
        let first = next_event(&mut buf).unwrap();
        assert_eq!(
            parse_event(&first),
            ("endpoint".into(), "/message?sessionId=1".into())
        );
        let second = next_event(&mut buf).unwrap();
        assert_eq!(parse_event(&second), ("message".into(), "{\"a\":1}".into()));
        assert!(next_event(&mut buf).is_none());
        assert_eq!(buf, b"partial");
    }

    #[test]
    fn the_endpoint_must_stay_on_the_configured_origin() {
        let base = reqwest::Url::parse("http://127.0.0.1:3001/sse").unwrap();
        assert!(same_origin(&base, &base.join("/message?s=1").unwrap()));
        assert!(!same_origin(
            &base,
            &base.join("http://169.254.169.254/latest").unwrap()
        ));
        assert!(!same_origin(
            &base,
            &base.join("http://127.0.0.1:3002/message").unwrap()
        ));
        assert_eq!(
            endpoint_of(&base, " /message?s=1\n").unwrap().as_str(),
            "http://127.0.0.1:3001/message?s=1"
        );
        assert_eq!(
            endpoint_of(&base, "http://169.254.169.254/latest").unwrap_err(),
            "the endpoint http://169.254.169.254/latest is not on the configured origin"
        );
    }
}
