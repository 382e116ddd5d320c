//! TLS on the listener (Pingora with rustls): the server certificate,
//! re-read when its files change (new connections get the new one; open
//! connections keep theirs), HTTP/2 and HTTP/1.1 by ALPN, and optional
//! client certificates verified against `server.tls.client_ca_file`, whose
//! identity is attached to the connection for `identity::mtls`.
//!
//! Must never: serve a certificate whose key does not match it, accept a
//! client certificate that does not chain to the configured CA, or drop
//! the working certificate because a replacement on disk is broken.

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::any::Any;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{ClientAuth, TlsConfig};
use crate::identity::mtls::PeerIdentity;
use crate::GatewayError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(path: &Path, e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Config(format!("{}: {e}", path.display()))
}

/// Reads the certificate chain and key and checks that they belong
/// together.
pub fn load_certified(cert: &Path, key: &Path) -> Result<CertifiedKey, GatewayError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, e))?;
    if chain.is_empty() {
        return Err(bad(cert, "no PEM certificate in it"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e))?;
    CertifiedKey::from_der(chain, key_der, &provider())
        .map_err(|e| bad(key, format!("does not fit the certificate: {e}")))
}

/// The server certificate, swapped when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ReloadingCert {
    /// Loads the certificate and starts a thread that re-reads it every
    /// `poll` while `stop` is false.
    pub fn start(
        tls: &TlsConfig,
        poll: Duration,
        stop: Arc<AtomicBool>,
    ) -> Result<Arc<Self>, GatewayError> {
        let cert = Arc::new(Self {
            current: ArcSwap::from_pointee(load_certified(&tls.cert_file, &tls.key_file)?),
        });
        let (watched, paths) = (cert.clone(), tls.clone());
        std::thread::Builder::new()
            .name("tls-cert-reload".into())
            .spawn(move || {
                let stamp = |t: &TlsConfig| (modified(&t.cert_file), modified(&t.key_file));
                let mut seen = stamp(&paths);
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(poll);
                    let now = stamp(&paths);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    match load_certified(&paths.cert_file, &paths.key_file) {
                        Ok(c) => {
                            watched.current.store(Arc::new(c));
                            tracing::info!(cert = %paths.cert_file.display(), "TLS certificate reloaded; new connections get it");
                        }
                        Err(e) => tracing::error!(error = %e, "the new TLS certificate cannot be used; still serving the previous one"),
                    }
                }
            })
            .map_err(|e| GatewayError::Server(e.to_string()))?;
        Ok(cert)
    }
}

/// Attaches a verified client certificate's identity to its connection.
struct PeerCallbacks;

#[async_trait::async_trait]
impl TlsAccept for PeerCallbacks {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let der = tls.peer_certificate_der()?;
        let id = PeerIdentity::from_der(der)?;
        Some(Arc::new(id))
    }
}

/// The listener's TLS settings.
pub fn settings(tls: &TlsConfig, cert: Arc<ReloadingCert>) -> Result<TlsSettings, GatewayError> {
    let mut s = TlsSettings::with_callbacks(Box::new(PeerCallbacks))
        .map_err(|e| GatewayError::Server(e.to_string()))?;
    s.set_cert_resolver(cert);
    s.enable_h2();
    if let Some(ca) = &tls.client_ca_file {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(ca, e))? {
            roots
                .add(c.map_err(|e| bad(ca, e))?)
                .map_err(|e| bad(ca, e))?;
        }
        if roots.is_empty() {
            return Err(bad(ca, "no PEM certificate in it"));
        }
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        let builder = match tls.client_auth {
            ClientAuth::Required => builder,
            ClientAuth::Optional => builder.allow_unauthenticated(),
        };
        s.set_client_cert_verifier(builder.build().map_err(|e| bad(ca, e))?);
    }
    Ok(s)
}
