//! The worker's side of zero-config clustering (the contract is
//! `lattice_inference_router::join`): a TLS identity of its own (a
//! self-signed certificate made at start; its SHA-256 is the fingerprint
//! gateways pin), the API served over TLS only, the answer to a gateway's
//! join challenge, and the mDNS announcement (`_lattice._tcp`, the
//! `mdns-sd` crate) that lets gateways find it.
//!
//! Must never: answer a challenge without the cluster secret's proof, serve
//! the API in cluster mode without TLS or without a key, or put the secret
//! in an announcement or a log line.

use axum::serve::Listener;
use lattice_inference_router::join::{self, Announcement, ClusterSecret, JoinAnswer};
use mdns_sd::{ServiceDaemon, ServiceInfo};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::error::{Result, WorkerError};

fn bad(what: &str, e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Unsupported(format!("cluster: {what}: {e}"))
}

/// What `lattice worker` is told about the cluster it joins.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub secret: ClusterSecret,
    /// The worker's name in the cluster (host name by default).
    pub node: String,
    pub location: String,
    pub labels: Vec<String>,
    /// Announce over mDNS (off: only gateways that list it as a peer find it).
    pub announce: bool,
    /// The address announced (default: the listener's, or every interface's
    /// when it listens on all of them).
    pub advertise: Option<IpAddr>,
}

/// The worker's TLS identity.
pub struct Identity {
    pub cert_der: Vec<u8>,
    key_der: Vec<u8>,
    pub fingerprint: String,
}

impl Identity {
    /// A new self-signed certificate (ECDSA P-256) naming `node`.
    pub fn generate(node: &str) -> Result<Self> {
        let names = vec![node.to_string(), "localhost".to_string()];
        let made = rcgen::generate_simple_self_signed(names).map_err(|e| bad("certificate", e))?;
        let cert_der = made.cert.der().to_vec();
        Ok(Self {
            fingerprint: join::fingerprint(&cert_der),
            cert_der,
            key_der: made.signing_key.serialize_der(),
        })
    }

    fn acceptor(&self) -> Result<TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS", e))?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone().into()], key)
            .map_err(|e| bad("TLS", e))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Membership of a cluster: the secret and what the worker announces.
pub struct Membership {
    secret: ClusterSecret,
    pub announcement: Announcement,
}

impl Membership {
    pub fn new(secret: ClusterSecret, announcement: Announcement) -> Self {
        Self {
            secret,
            announcement,
        }
    }

    /// The answer to a gateway's challenge.
    pub fn answer(&self, nonce: &str) -> JoinAnswer {
        JoinAnswer::new(&self.secret, nonce, &self.announcement)
    }

    /// The key this cluster's gateways send.
    pub fn api_key(&self) -> String {
        self.secret.api_key(&self.announcement.fingerprint)
    }
}

/// `POST /cluster/v1/join`: a gateway's challenge. Anyone may ask; only
/// the cluster secret's holders can check the answer.
pub fn join_router(membership: Arc<Membership>) -> axum::Router {
    axum::Router::new()
        .route(join::JOIN_PATH, axum::routing::post(answer))
        .with_state(membership)
}

async fn answer(
    axum::extract::State(m): axum::extract::State<Arc<Membership>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let request = serde_json::from_slice::<join::JoinRequest>(&body);
    let nonce = match request {
        Ok(r) if (16..=128).contains(&r.nonce.len()) => r.nonce,
        Ok(_) => {
            return crate::api::ApiError::bad("the nonce must be 16 to 128 characters".into())
                .into_response()
        }
        Err(e) => {
            return crate::api::ApiError::bad(format!(
                "a join challenge is {{\"nonce\": \"...\"}}: {e}"
            ))
            .into_response()
        }
    };
    axum::Json(m.answer(&nonce)).into_response()
}

/// What cluster mode adds to a server: its identity, its membership (and
/// the key gateways send, to accept), and what to announce where.
pub struct Joined {
    pub identity: Identity,
    pub membership: Arc<Membership>,
    pub announce: Option<(Announcement, SocketAddr)>,
}

impl Joined {
    /// A new identity and the announcement of `models` served at `addr`.
    pub fn new(
        c: &ClusterOptions,
        models: Vec<String>,
        device: &str,
        capacity: u32,
        addr: SocketAddr,
    ) -> Result<Self> {
        let identity = Identity::generate(&c.node)?;
        let announcement = Announcement {
            cluster: c.secret.cluster_id(),
            name: c.node.clone(),
            kind: "lattice".into(),
            models,
            device: device.to_string(),
            capacity,
            location: c.location.clone(),
            labels: c.labels.clone(),
            fingerprint: identity.fingerprint.clone(),
        };
        let announce = c.announce.then(|| {
            let ip = c.advertise.unwrap_or(addr.ip());
            (announcement.clone(), SocketAddr::new(ip, addr.port()))
        });
        Ok(Self {
            identity,
            membership: Arc::new(Membership::new(c.secret.clone(), announcement)),
            announce,
        })
    }

    /// Serves `router` over TLS on `listener`, announced while it serves.
    pub async fn serve(
        self,
        listener: TcpListener,
        router: axum::Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        // Announced only once the listener serves; withdrawn when serving
        // ends (the announcer is dropped).
        let _announcer = match &self.announce {
            Some((a, at)) => Some(Announcer::start(a, *at)?),
            None => None,
        };
        let listener = TlsListener::new(listener, &self.identity)?;
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| bad("serve", e))
    }
}

/// TLS connections, handshaken off the accept loop (a slow or silent
/// client delays only itself).
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, identity: &Identity) -> Result<Self> {
        let acceptor = identity.acceptor()?;
        let local = tcp.local_addr().map_err(|e| bad("listener", e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    );
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended (its runtime is going away): wait for
            // the shutdown that is under way.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The mDNS announcement; withdrawn (a goodbye packet) when dropped.
pub struct Announcer {
    daemon: ServiceDaemon,
    fullname: String,
}

/// DNS labels are at most 63 bytes; instance names keep to letters, digits
/// and `-`.
fn label(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    if cleaned.is_empty() {
        "worker".into()
    } else {
        cleaned
    }
}

impl Announcer {
    /// Announces `announcement` at `addr`'s port (the address itself, or
    /// every interface's when it is unspecified).
    pub fn start(announcement: &Announcement, addr: SocketAddr) -> Result<Self> {
        let daemon = ServiceDaemon::new().map_err(|e| bad("mDNS", e))?;
        let instance = format!(
            "{}-{}",
            label(&announcement.name),
            &announcement.fingerprint[..8.min(announcement.fingerprint.len())]
        );
        let host = format!("{instance}.local.");
        let models = announcement.models.join(",");
        let capacity = announcement.capacity.to_string();
        let properties = [
            ("cluster", announcement.cluster.as_str()),
            ("fp", announcement.fingerprint.as_str()),
            ("kind", announcement.kind.as_str()),
            ("models", models.as_str()),
            ("location", announcement.location.as_str()),
            ("device", announcement.device.as_str()),
            ("capacity", capacity.as_str()),
            ("scheme", "https"),
        ];
        let unspecified = addr.ip().is_unspecified();
        let ip = if unspecified {
            String::new()
        } else {
            addr.ip().to_string()
        };
        let mut info = ServiceInfo::new(
            join::SERVICE_TYPE,
            &instance,
            &host,
            ip.as_str(),
            addr.port(),
            &properties[..],
        )
        .map_err(|e| bad("mDNS service", e))?;
        if unspecified {
            info = info.enable_addr_auto();
        }
        let fullname = info.get_fullname().to_string();
        daemon.register(info).map_err(|e| bad("mDNS register", e))?;
        Ok(Self { daemon, fullname })
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(std::time::Duration::from_millis(500));
        }
        let _ = self.daemon.shutdown();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn instance_labels_keep_to_dns_characters() {
        let table = [
            ("gpu-a", "gpu-a"),
            ("my box.local", "my-box-local"),
            ("", "worker"),
        ];
        for (input, want) in table {
            assert_eq!(label(input), want);
        }
        assert_eq!(label(&"x".repeat(80)).len(), 40);
    }

    #[test]
    fn an_identity_is_a_certificate_and_its_fingerprint() {
        let id = Identity::generate("node-1").unwrap();
        assert_eq!(id.fingerprint, join::fingerprint(&id.cert_der));
        assert_ne!(
            id.fingerprint,
            Identity::generate("node-1").unwrap().fingerprint
        );
        id.acceptor().unwrap();
    }
}
