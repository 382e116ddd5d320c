//! TLS to a discovered worker, pinned to its certificate. A worker's
//! certificate is its own (self-signed), so no CA vouches for it: what the
//! gateway trusts is the fingerprint a join proof bound to the cluster
//! secret (`join.rs`). `Observe` accepts any certificate for the join
//! itself and notes its fingerprint; `Pinned` accepts only the one
//! fingerprint, for every later request and health check. Both check the
//! handshake's signatures with the certificate's key as usual (so the peer
//! holds that key).
//!
//! Must never: accept a certificate other than the pinned one on a pinned
//! connection, or skip the handshake signature check.

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

use crate::join::fingerprint;
use crate::InferenceError;

#[derive(Debug)]
struct Verifier {
    /// `Some`: the only fingerprint accepted.
    pin: Option<String>,
    /// The fingerprint the last handshake showed.
    seen: ArcSwapOption<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity.as_ref());
        if let Some(pin) = &self.pin {
            if *pin != seen {
                return Err(rustls::Error::General(format!(
                    "the worker showed certificate {seen}, not the one it joined with ({pin})"
                )));
            }
        }
        self.seen.store(Some(Arc::new(seen)));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn config(verifier: Arc<Verifier>) -> Result<rustls::ClientConfig, InferenceError> {
    Ok(
        rustls::ClientConfig::builder_with_provider(verifier.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| InferenceError::Runtime(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

fn client(
    verifier: Arc<Verifier>,
    timeout: Option<Duration>,
) -> Result<reqwest::Client, InferenceError> {
    let tls = config(verifier)?;
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build()
        .map_err(|e| InferenceError::Runtime(format!("TLS client: {e}")))
}

fn verifier(pin: Option<String>) -> Arc<Verifier> {
    Arc::new(Verifier {
        pin,
        seen: ArcSwapOption::empty(),
        provider: Arc::new(rustls::crypto::ring::default_provider()),
    })
}

/// A client that accepts only the certificate with this fingerprint.
pub fn pinned_client(fingerprint: &str) -> Result<reqwest::Client, InferenceError> {
    client(verifier(Some(fingerprint.to_string())), None)
}

/// The TLS configuration of a backend's request connections
/// (`upstream`) that accepts only the certificate with this fingerprint.
pub(crate) fn pinned_tls(fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, InferenceError> {
    let mut c = config(verifier(Some(fingerprint.to_string())))?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// The TLS configuration of request connections to a backend on the web:
/// the web's roots (webpki-roots, as reqwest's `rustls-tls` trusts).
pub(crate) fn web_tls() -> Result<Arc<rustls::ClientConfig>, InferenceError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| InferenceError::Runtime(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// A client for one join: accepts any certificate and tells which one the
/// connection showed (`seen`). Each join gets its own (no pooled connection
/// from an earlier handshake can answer for it).
pub struct Observe {
    verifier: Arc<Verifier>,
    pub client: reqwest::Client,
}

impl Observe {
    pub fn new(timeout: Duration) -> Result<Self, InferenceError> {
        let verifier = verifier(None);
        let client = client(verifier.clone(), Some(timeout))?;
        Ok(Self { verifier, client })
    }

    /// The fingerprint of the certificate the connection showed.
    pub fn seen(&self) -> Option<String> {
        self.verifier.seen.load_full().map(|s| (*s).clone())
    }
}
