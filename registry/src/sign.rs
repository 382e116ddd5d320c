//! Publishers' signatures. An entry is signed with Ed25519 over its
//! canonical JSON (sorted keys, no whitespace — the encoding of
//! `lattice-mcp`'s tool hashes) without the signature itself, which lives
//! in the entry at `_meta` → publisher-provided → `dev.lattice/signature`
//! as `{publisher, key, signature}`: the entry stays a valid `server.json`
//! that any MCP registry can carry, and the signature travels with it.
//!
//! Trust is the operator's: a signature counts only when its key is one
//! of the operator's trusted keys *for the entry's namespace* (a key
//! trusted for `io.github.acme` does not vouch for `com.example/...`).
//!
//! Must never: call an entry trusted on a signature that does not verify,
//! or write a private key anywhere but the key file it was asked to.

use crate::entry::{Entry, PUBLISHER_PROVIDED};
use crate::{RegistryError, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{json, Value};

/// The member of publisher-provided data that holds the signature.
pub const SIGNATURE: &str = "dev.lattice/signature";

/// The bytes a signature covers: the canonical JSON of `doc` without its
/// signature (and without the objects that held only it).
pub fn signed_bytes(doc: &Value) -> String {
    let mut doc = doc.clone();
    if let Some(meta) = doc.get_mut("_meta").and_then(Value::as_object_mut) {
        if let Some(pp) = meta
            .get_mut(PUBLISHER_PROVIDED)
            .and_then(Value::as_object_mut)
        {
            pp.remove(SIGNATURE);
            if pp.is_empty() {
                meta.remove(PUBLISHER_PROVIDED);
            }
        }
        if meta.is_empty() {
            if let Some(o) = doc.as_object_mut() {
                o.remove("_meta");
            }
        }
    }
    lattice_mcp::tools::canonical_json(&doc)
}

/// A public key as entries and config write it: `ed25519:<base64>`.
pub fn key_text(key: &VerifyingKey) -> String {
    format!("ed25519:{}", STANDARD.encode(key.as_bytes()))
}

/// Parses `ed25519:<base64>`.
pub fn parse_key(origin: &str, text: &str) -> Result<VerifyingKey> {
    let err = |message: String| RegistryError::Key {
        origin: origin.to_string(),
        message,
    };
    let b64 = text
        .strip_prefix("ed25519:")
        .ok_or_else(|| err("a public key is written `ed25519:<base64 of 32 bytes>`".into()))?;
    let bytes: [u8; 32] = STANDARD
        .decode(b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| err("a public key is 32 bytes in base64".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| err(format!("not an Ed25519 public key: {e}")))
}

/// A publisher's signing key (a key file: JSON with the publisher's name
/// and the 32-byte seed in base64).
pub struct PublisherKey {
    pub publisher: String,
    key: SigningKey,
}

impl std::fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublisherKey({}, {})", self.publisher, self.public())
    }
}

impl PublisherKey {
    pub fn generate(publisher: &str) -> Self {
        Self {
            publisher: publisher.to_string(),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The key file's text.
    pub fn to_file(&self) -> String {
        let v = json!({
            "publisher": self.publisher,
            "public_key": self.public(),
            "private_key": STANDARD.encode(self.key.to_bytes()),
        });
        format!("{v:#}\n")
    }

    pub fn from_file(origin: &str, text: &str) -> Result<Self> {
        let err = |message: &str| RegistryError::Key {
            origin: origin.to_string(),
            message: message.to_string(),
        };
        let v: Value = serde_json::from_str(text)
            .map_err(|_| err("not a key file (JSON with publisher and private_key)"))?;
        let publisher = v["publisher"]
            .as_str()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| err("no publisher"))?;
        let seed: [u8; 32] = v["private_key"]
            .as_str()
            .and_then(|s| STANDARD.decode(s).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| err("private_key is not 32 bytes in base64"))?;
        Ok(Self {
            publisher: publisher.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn public(&self) -> String {
        key_text(&self.key.verifying_key())
    }

    /// Signs `doc` in place (replacing any signature it had).
    pub fn sign(&self, doc: &mut Value) -> Result<()> {
        let sig = self.key.sign(signed_bytes(doc).as_bytes());
        let Some(obj) = doc.as_object_mut() else {
            return Err(RegistryError::Signature {
                entry: "the document".into(),
                message: "an entry is a JSON object".into(),
            });
        };
        let meta = obj.entry("_meta").or_insert_with(|| json!({}));
        let pp = meta
            .as_object_mut()
            .map(|m| m.entry(PUBLISHER_PROVIDED).or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| RegistryError::Signature {
                entry: "the document".into(),
                message: format!("`_meta` and its `{PUBLISHER_PROVIDED}` must be objects"),
            })?;
        pp.insert(
            SIGNATURE.into(),
            json!({
                "publisher": self.publisher,
                "key": self.public(),
                "signature": STANDARD.encode(sig.to_bytes()),
            }),
        );
        Ok(())
    }
}

/// A key the operator trusts: whose it is, and for which namespaces
/// (empty: any).
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub publisher: String,
    pub key: VerifyingKey,
    pub namespaces: Vec<String>,
}

impl TrustedKey {
    pub fn new(publisher: &str, key: &str, namespaces: Vec<String>) -> Result<Self> {
        Ok(Self {
            publisher: publisher.to_string(),
            key: parse_key(&format!("of publisher {publisher}"), key)?,
            namespaces,
        })
    }

    fn covers(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }
}

/// What the operator's keys say of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Signed with a key trusted for the entry's namespace.
    Trusted { publisher: String },
    /// Shipped inside this binary (the bundled catalog).
    Bundled,
    /// No signature.
    Unsigned,
    /// A signature that verifies, by a key the operator does not trust for
    /// this namespace.
    Untrusted { publisher: String, key: String },
    /// A signature that does not verify (or cannot be read).
    BadSignature { reason: String },
}

impl Trust {
    pub fn is_trusted(&self) -> bool {
        matches!(self, Trust::Trusted { .. } | Trust::Bundled)
    }

    /// In words, for the CLI and the audit trail.
    pub fn describe(&self) -> String {
        match self {
            Trust::Trusted { publisher } => format!("signed by {publisher} (trusted)"),
            Trust::Bundled => "bundled with Lattice".into(),
            Trust::Unsigned => "UNSIGNED".into(),
            Trust::Untrusted { publisher, key } => {
                format!("signed by {publisher} with {key}, a key NOT TRUSTED for this namespace")
            }
            Trust::BadSignature { reason } => format!("BAD SIGNATURE: {reason}"),
        }
    }
}

/// Checks `entry`'s signature against `trusted`.
pub fn verify(entry: &Entry, trusted: &[TrustedKey]) -> Trust {
    let sig = entry
        .doc
        .get("_meta")
        .and_then(|m| m.get(PUBLISHER_PROVIDED))
        .and_then(|p| p.get(SIGNATURE));
    let Some(sig) = sig else {
        return if entry.origin.starts_with("bundled:") {
            Trust::Bundled
        } else {
            Trust::Unsigned
        };
    };
    let publisher = sig["publisher"].as_str().unwrap_or("").to_string();
    let key_str = sig["key"].as_str().unwrap_or("");
    let key = match parse_key("in the signature", key_str) {
        Ok(k) => k,
        Err(e) => {
            return Trust::BadSignature {
                reason: e.to_string(),
            }
        }
    };
    let bytes: Option<[u8; 64]> = sig["signature"]
        .as_str()
        .and_then(|s| STANDARD.decode(s).ok())
        .and_then(|b| b.try_into().ok());
    let Some(bytes) = bytes else {
        return Trust::BadSignature {
            reason: "the signature is not 64 bytes in base64".into(),
        };
    };
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    if key
        .verify(signed_bytes(&entry.doc).as_bytes(), &signature)
        .is_err()
    {
        return Trust::BadSignature {
            reason: format!(
                "the signature by {publisher} does not match the entry (changed after signing, or signed with another key)"
            ),
        };
    }
    // The operator's name for the key, not the one the entry claims.
    let trusted_here = trusted
        .iter()
        .find(|t| t.key == key && t.covers(entry.namespace()));
    if let Some(t) = trusted_here {
        Trust::Trusted {
            publisher: t.publisher.clone(),
        }
    } else {
        Trust::Untrusted {
            publisher,
            key: key_str.to_string(),
        }
    }
}
