//! Client certificates as identities: what a verified client certificate
//! says about its holder (SPIFFE IDs in URI SANs, DNS SANs, the subject's
//! common name), and the principal `[[auth.mtls]]` maps it to.
//!
//! The certificate was verified against `server.tls.client_ca_file` during
//! the TLS handshake (rustls); this module only reads it.
//!
//! Must never: map a certificate by anything but an exact configured
//! identity, or treat an unverified certificate as an identity.

use lattice_policy::Principal;
use pingora::proxy::Session;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::{CertId, MtlsIdentity};

/// What a verified client certificate names (attached to its connection).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI SANs that are SPIFFE IDs.
    pub spiffe_ids: Vec<String>,
    /// DNS SANs, lower-cased.
    pub dns_names: Vec<String>,
    pub common_name: Option<String>,
}

impl PeerIdentity {
    /// Reads a DER certificate; `None` when it does not parse.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut id = PeerIdentity::default();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) if u.starts_with("spiffe://") => {
                        id.spiffe_ids.push((*u).to_string())
                    }
                    GeneralName::DNSName(d) => id.dns_names.push(d.to_ascii_lowercase()),
                    _ => {}
                }
            }
        }
        id.common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        Some(id)
    }

    /// How the certificate names its holder, for errors and logs.
    pub fn describe(&self) -> String {
        if let Some(s) = self.spiffe_ids.first() {
            return s.clone();
        }
        if let Some(d) = self.dns_names.first() {
            return format!("DNS:{d}");
        }
        match &self.common_name {
            Some(cn) => format!("CN={cn}"),
            None => "a certificate with no SPIFFE ID, DNS name or common name".into(),
        }
    }

    fn names(&self, id: &CertId) -> bool {
        match id {
            CertId::Spiffe(s) => self.spiffe_ids.iter().any(|x| x == s),
            CertId::Dns(d) => self.dns_names.iter().any(|x| x == d),
            CertId::CommonName(c) => self.common_name.as_deref() == Some(c.as_str()),
        }
    }

    /// The principal of the first mapping that names this certificate.
    pub fn principal(&self, mappings: &[MtlsIdentity]) -> Option<Principal> {
        let m = mappings.iter().find(|m| self.names(&m.id))?;
        Some(Principal {
            kind: m.principal_kind,
            id: m.agent.clone(),
            tenant: m.tenant.clone(),
            roles: m.roles.clone(),
            labels: m.labels.clone(),
            auth_method: "mtls".into(),
        })
    }
}

/// The verified client certificate's identity on this request's
/// connection, if any (attached at the handshake by `crate::tls`).
pub fn peer(session: &Session) -> Option<PeerIdentity> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<PeerIdentity>()
        .cloned()
}
