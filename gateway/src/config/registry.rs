//! The `[registry]` section: the publisher keys the operator trusts for
//! registry entries (`[[registry.trusted]]`, each for some namespaces or
//! all), and the catalog directories offered beside the bundled one.
//! The registry crate verifies signatures with these keys; the gateway
//! only checks that each key reads as an Ed25519 public key.
//!
//! Must never: import anything of the gateway above `config`.

use base64::Engine;
use serde::Deserialize;
use std::path::PathBuf;

use crate::GatewayError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    #[serde(default)]
    trusted: Vec<RawTrusted>,
    /// Catalog directories (entry files) offered by `lattice registry` and
    /// the admin API beside the bundled catalog.
    #[serde(default)]
    catalogs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrusted {
    publisher: String,
    /// `ed25519:<base64 of the 32-byte public key>` (`lattice registry keygen`).
    key: String,
    /// The entry namespaces (the part of a name before `/`) this key may
    /// sign for; empty: any.
    #[serde(default)]
    namespaces: Vec<String>,
}

/// A publisher key the operator trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedPublisher {
    pub publisher: String,
    pub key: String,
    pub namespaces: Vec<String>,
}

/// `[registry]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    pub trusted: Vec<TrustedPublisher>,
    pub catalogs: Vec<PathBuf>,
}

pub(super) fn registry(
    raw: RawRegistry,
    resolve: &dyn Fn(&str) -> PathBuf,
    bad: &dyn Fn(String) -> GatewayError,
) -> Result<RegistryConfig, GatewayError> {
    let mut trusted = Vec::new();
    for t in raw.trusted {
        if t.publisher.trim().is_empty() {
            return Err(bad(
                "registry.trusted: a key needs its publisher's name".into()
            ));
        }
        let bytes = t
            .key
            .strip_prefix("ed25519:")
            .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok());
        if bytes.map(|b| b.len()) != Some(32) {
            return Err(bad(format!(
                "registry.trusted `{}`: key `{}` is not `ed25519:` and the base64 of a 32-byte public key",
                t.publisher, t.key
            )));
        }
        if let Some(n) = t
            .namespaces
            .iter()
            .find(|n| n.is_empty() || n.contains('/'))
        {
            return Err(bad(format!(
                "registry.trusted `{}`: namespace `{n}` is not a namespace (the part of an entry's name before `/`)",
                t.publisher
            )));
        }
        trusted.push(TrustedPublisher {
            publisher: t.publisher,
            key: t.key,
            namespaces: t.namespaces,
        });
    }
    Ok(RegistryConfig {
        trusted,
        catalogs: raw.catalogs.iter().map(|c| resolve(c)).collect(),
    })
}
