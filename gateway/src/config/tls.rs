//! `[server.tls]` (the listener's certificate, and client certificates)
//! and `[[auth.mtls]]` (which client certificate is which principal).
//!
//! Must never: accept a client-certificate mapping without a CA to verify
//! the certificates against, or a mapping that names no identity.

use serde::Deserialize;
use std::path::PathBuf;

use crate::GatewayError;

/// `[server.tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert_file: String,
    pub(super) key_file: String,
    #[serde(default)]
    pub(super) client_ca_file: Option<String>,
    #[serde(default)]
    pub(super) client_auth: Option<ClientAuth>,
}

/// Whether a client certificate is needed to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No certificate, no connection (refused at the handshake).
    Required,
    /// A certificate, if presented, must verify; callers without one
    /// authenticate with a bearer token.
    Optional,
}

/// The listener's TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first (re-read when it changes).
    pub cert_file: PathBuf,
    /// PEM private key (re-read with the chain).
    pub key_file: PathBuf,
    /// PEM CA certificates client certificates must chain to; none: no
    /// client certificates.
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// `[[auth.mtls]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMtls {
    #[serde(default)]
    pub(super) spiffe_id: Option<String>,
    #[serde(default)]
    pub(super) dns_name: Option<String>,
    #[serde(default)]
    pub(super) common_name: Option<String>,
    pub(super) agent: String,
    #[serde(default = "default_tenant")]
    pub(super) tenant: String,
    #[serde(default)]
    pub(super) roles: Vec<String>,
    #[serde(default)]
    pub(super) labels: Vec<String>,
    #[serde(default)]
    pub(super) principal_type: Option<String>,
}

fn default_tenant() -> String {
    "default".into()
}

/// What in a client certificate identifies the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertId {
    /// A SPIFFE ID in a URI SAN, exactly (`spiffe://trust.domain/path`).
    Spiffe(String),
    /// A DNS SAN, exactly (case-insensitive).
    Dns(String),
    /// The subject's common name, exactly.
    CommonName(String),
}

/// One client certificate identity mapped to a principal.
#[derive(Debug, Clone, PartialEq)]
pub struct MtlsIdentity {
    pub id: CertId,
    pub agent: String,
    pub tenant: String,
    pub roles: Vec<String>,
    pub labels: Vec<String>,
    pub principal_kind: lattice_policy::PrincipalKind,
}

pub(super) fn tls(
    raw: RawTls,
    resolve: &dyn Fn(&str) -> PathBuf,
    bad: &dyn Fn(String) -> GatewayError,
) -> Result<TlsConfig, GatewayError> {
    let file = |key: &str, value: &str| {
        let path = resolve(value);
        if path.is_file() {
            Ok(path)
        } else {
            Err(bad(format!(
                "server.tls.{key} {}: no such file",
                path.display()
            )))
        }
    };
    let client_ca_file = raw
        .client_ca_file
        .as_deref()
        .map(|v| file("client_ca_file", v))
        .transpose()?;
    if raw.client_auth.is_some() && client_ca_file.is_none() {
        return Err(bad(
            "server.tls.client_auth needs server.tls.client_ca_file (the CA client certificates must chain to)".into(),
        ));
    }
    Ok(TlsConfig {
        cert_file: file("cert_file", &raw.cert_file)?,
        key_file: file("key_file", &raw.key_file)?,
        client_ca_file,
        client_auth: raw.client_auth.unwrap_or(ClientAuth::Required),
    })
}

pub(super) fn mtls(
    raw: Vec<RawMtls>,
    tls: Option<&TlsConfig>,
    bad: &dyn Fn(String) -> GatewayError,
) -> Result<Vec<MtlsIdentity>, GatewayError> {
    if !raw.is_empty() && tls.is_none_or(|t| t.client_ca_file.is_none()) {
        return Err(bad(
            "[[auth.mtls]] needs [server.tls] with client_ca_file: client certificates are verified against it".into(),
        ));
    }
    let mut out: Vec<MtlsIdentity> = Vec::new();
    for r in raw {
        let id = match (r.spiffe_id, r.dns_name, r.common_name) {
            (Some(s), None, None) => {
                if !s.starts_with("spiffe://") || s.len() <= "spiffe://".len() {
                    return Err(bad(format!(
                        "auth.mtls spiffe_id `{s}` must be a SPIFFE ID (spiffe://trust.domain/path)"
                    )));
                }
                CertId::Spiffe(s)
            }
            (None, Some(d), None) => CertId::Dns(d.to_ascii_lowercase()),
            (None, None, Some(c)) => CertId::CommonName(c),
            _ => {
                return Err(bad(format!(
                "auth.mtls for agent `{}`: give exactly one of spiffe_id, dns_name, common_name",
                r.agent
            )))
            }
        };
        if r.agent.is_empty() {
            return Err(bad("auth.mtls: agent must not be empty".into()));
        }
        if out.iter().any(|m| m.id == id) {
            return Err(bad(format!("auth.mtls: {id:?} is mapped twice")));
        }
        let principal_kind = match r.principal_type.as_deref() {
            None | Some("agent") => lattice_policy::PrincipalKind::Agent,
            Some("human") => lattice_policy::PrincipalKind::Human,
            Some(other) => {
                return Err(bad(format!(
                    "auth.mtls principal_type `{other}`: expected `agent` or `human`"
                )))
            }
        };
        out.push(MtlsIdentity {
            id,
            agent: r.agent,
            tenant: r.tenant,
            roles: r.roles,
            labels: r.labels,
            principal_kind,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn tls_and_mtls_sections_are_checked_and_name_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["cert.pem", "key.pem", "ca.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let tls = "[server.tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n";
        let with_ca = "[server.tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\nclient_ca_file = \"ca.pem\"\n";
        let crm = "[[auth.mtls]]\nspiffe_id = \"spiffe://example.org/crm\"\nagent = \"crm\"\n";
        for (server, rest, expected) in [
            (tls, "", Ok((ClientAuth::Required, 0))),
            (with_ca, crm, Ok((ClientAuth::Required, 1))),
            (
                &*format!("{with_ca}client_auth = \"optional\"\n"),
                crm,
                Ok((ClientAuth::Optional, 1)),
            ),
            (
                "[server.tls]\ncert_file = \"nope.pem\"\nkey_file = \"key.pem\"\n",
                "",
                Err("server.tls.cert_file"),
            ),
            (
                tls,
                crm,
                Err("[[auth.mtls]] needs [server.tls] with client_ca_file"),
            ),
            (
                "",
                crm,
                Err("[[auth.mtls]] needs [server.tls] with client_ca_file"),
            ),
            (
                &*format!("{tls}client_auth = \"optional\"\n"),
                "",
                Err("server.tls.client_auth needs server.tls.client_ca_file"),
            ),
            (
                &*format!("{with_ca}client_auth = \"sometimes\"\n"),
                "",
                Err("unknown variant `sometimes`"),
            ),
            (
                with_ca,
                "[[auth.mtls]]\nspiffe_id = \"https://example.org/crm\"\nagent = \"crm\"\n",
                Err("must be a SPIFFE ID"),
            ),
            (
                with_ca,
                "[[auth.mtls]]\ndns_name = \"a.example\"\ncommon_name = \"a\"\nagent = \"a\"\n",
                Err("give exactly one of spiffe_id, dns_name, common_name"),
            ),
            (with_ca, &*format!("{crm}{crm}"), Err("is mapped twice")),
            (
                with_ca,
                "[[auth.mtls]]\ncommon_name = \"a\"\nagent = \"a\"\nprincipal_type = \"robot\"\n",
                Err("expected `agent` or `human`"),
            ),
        ] {
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:8443\"\n{server}\n[policy]\nfiles = [\"p.cedar\"]\n{rest}"
            );
            let got = crate::config::parse(&dir.path().join("lattice.toml"), &text)
                .map(|c| {
                    let t = c.server.tls.unwrap();
                    (t.client_auth, c.auth.mtls.len())
                })
                .map_err(|e| e.to_string());
            match (got, expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{server}{rest}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{server}{rest}: {got}"),
                (got, want) => panic!("{server}{rest}: got {got:?}, want {want:?}"),
            }
        }
    }
}
