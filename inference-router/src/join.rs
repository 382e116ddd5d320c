//! Cluster membership: the contract between a gateway and the workers that
//! join it with no configuration (`_lattice._tcp` over mDNS, or a static
//! list of peers). It is zero-config *and* authenticated:
//!
//! - A cluster is one secret (`lattice cluster init` prints it), given to
//!   the gateway and to every worker through the environment.
//! - A worker serves its API over TLS with a certificate of its own; the
//!   certificate's SHA-256 is its *fingerprint*, announced with it.
//! - To join, the gateway opens a TLS connection, notes the fingerprint the
//!   connection showed, and sends a fresh nonce to `JOIN_PATH`. The worker
//!   answers its announcement and an HMAC under the cluster secret over the
//!   nonce, its fingerprint and the announcement's exact bytes. Only a holder
//!   of the secret can answer; the answer binds the key the connection was
//!   made with (a relay in the middle shows its own key, and the proof fails)
//!   and cannot be replayed (the nonce).
//! - Every later connection to that worker is pinned to the fingerprint
//!   (`pin.rs`), and carries an API key derived from the secret and the
//!   fingerprint, so the worker serves only its cluster's gateways.
//!
//! HMAC-SHA256 (RFC 2104) over labelled inputs; the secret never crosses
//! the wire.
//!
//! Must never: accept an answer that does not bind the nonce, the key the
//! connection showed and the secret; compare a proof in variable time; or
//! print the secret in a `Debug` form.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The DNS-SD service type workers announce.
pub const SERVICE_TYPE: &str = "_lattice._tcp.local.";
/// Where a worker answers a join challenge.
pub const JOIN_PATH: &str = "/cluster/v1/join";
/// The environment variable both sides read the secret from by default.
pub const SECRET_ENV: &str = "LATTICE_CLUSTER_SECRET";
/// How a secret is written: this prefix, then 32 bytes in base64url.
const PREFIX: &str = "lcs1_";

type HmacSha256 = Hmac<Sha256>;

/// Why a secret or a join answer is refused. Each says what a human can
/// check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("cluster secret: {0}")]
    Secret(String),
    #[error("the worker belongs to another cluster (announced cluster id {0})")]
    OtherCluster(String),
    #[error("the worker's proof does not verify: it does not hold this cluster's secret")]
    BadProof,
    #[error(
        "the worker proved a key ({proved}) other than the one its connection showed ({seen})"
    )]
    KeyMismatch { proved: String, seen: String },
    #[error("the worker's connection showed no certificate")]
    NoCertificate,
    #[error("the worker's answer is not a join answer: {0}")]
    Malformed(String),
}

/// The cluster secret: 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret([u8; 32]);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret(id {})", self.cluster_id())
    }
}

impl ClusterSecret {
    /// A new random secret.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// `lcs1_` + 32 bytes in unpadded base64url.
    pub fn encode(&self) -> String {
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
        )
    }

    pub fn parse(text: &str) -> Result<Self, JoinError> {
        let body = text.trim().strip_prefix(PREFIX).ok_or_else(|| {
            JoinError::Secret(format!(
                "expected `{PREFIX}...` as `lattice cluster init` prints it"
            ))
        })?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| JoinError::Secret(format!("not base64url: {e}")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| JoinError::Secret(format!("{} bytes, not 32", b.len())))?;
        Ok(Self(bytes))
    }

    /// The secret from the environment variable `name`.
    pub fn from_env(name: &str) -> Result<Self, JoinError> {
        let text = std::env::var(name).map_err(|_| {
            JoinError::Secret(format!(
                "${name} is not set (run `lattice cluster init` once and give its output to the gateway and every worker)"
            ))
        })?;
        Self::parse(&text).map_err(|e| JoinError::Secret(format!("${name}: {e}")))
    }

    fn mac(&self, label: &str, parts: &[&[u8]]) -> HmacSha256 {
        // `new_from_slice` accepts any key length for HMAC.
        let mut mac = match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        };
        mac.update(b"lattice-cluster-v1\0");
        mac.update(label.as_bytes());
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// A public name for the cluster (announced, so a gateway skips
    /// another cluster's workers before it challenges them): 8 bytes of an
    /// HMAC, which tells nothing of the secret.
    pub fn cluster_id(&self) -> String {
        hex::encode(&self.mac("id", &[]).finalize().into_bytes()[..8])
    }

    /// The API key a gateway of this cluster sends to the worker with this
    /// fingerprint (each worker's differs; both sides derive it).
    pub fn api_key(&self, fingerprint: &str) -> String {
        format!(
            "lck_{}",
            hex::encode(
                self.mac("api", &[fingerprint.as_bytes()])
                    .finalize()
                    .into_bytes()
            )
        )
    }

    /// The worker's proof for one challenge.
    pub fn prove(&self, nonce: &str, fingerprint: &str, announcement: &str) -> String {
        let mac = self.mac(
            "join",
            &[
                nonce.as_bytes(),
                fingerprint.as_bytes(),
                announcement.as_bytes(),
            ],
        );
        hex::encode(mac.finalize().into_bytes())
    }

    /// Checks a worker's answer to `nonce`, given the fingerprint of the
    /// certificate its connection showed. Returns what it announced.
    pub fn check(
        &self,
        nonce: &str,
        seen_fingerprint: &str,
        answer: &JoinAnswer,
    ) -> Result<Announcement, JoinError> {
        let announcement: Announcement = serde_json::from_str(&answer.announcement)
            .map_err(|e| JoinError::Malformed(e.to_string()))?;
        if announcement.cluster != self.cluster_id() {
            return Err(JoinError::OtherCluster(announcement.cluster));
        }
        let proof = hex::decode(&answer.proof).map_err(|_| JoinError::BadProof)?;
        let mac = self.mac(
            "join",
            &[
                nonce.as_bytes(),
                announcement.fingerprint.as_bytes(),
                answer.announcement.as_bytes(),
            ],
        );
        mac.verify_slice(&proof).map_err(|_| JoinError::BadProof)?;
        if announcement.fingerprint != seen_fingerprint {
            return Err(JoinError::KeyMismatch {
                proved: announcement.fingerprint,
                seen: seen_fingerprint.to_string(),
            });
        }
        Ok(announcement)
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // HMAC takes keys of any length; this cannot happen.
    std::process::abort()
}

/// A fresh challenge nonce (32 random bytes, hex).
pub fn nonce() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The fingerprint of a DER certificate: its SHA-256, hex.
pub fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

/// What a worker says of itself, in its join answer (and, in part, in its
/// mDNS TXT record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    /// `ClusterSecret::cluster_id`.
    pub cluster: String,
    /// The worker's own name (host name by default): the backend is
    /// called `discovered-<name>`.
    pub name: String,
    /// The backend kind behind it: `lattice` (a worker's own engine), or
    /// what `--upstream` wraps (`mlx`, `vllm`, `openai`).
    pub kind: String,
    /// Model names it serves.
    pub models: Vec<String>,
    /// `cpu`, `cuda`, `mlx`, ...
    pub device: String,
    /// Sequences it runs at once.
    pub capacity: u32,
    /// Where it runs (`on_prem`, `cloud`, ...): the policy attribute
    /// `context.backend_location`.
    pub location: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// `fingerprint` of its TLS certificate.
    pub fingerprint: String,
}

/// The gateway's challenge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub nonce: String,
}

/// The worker's answer: the announcement's exact bytes and the proof.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinAnswer {
    pub announcement: String,
    pub proof: String,
}

impl JoinAnswer {
    /// What a worker holding `secret` answers to `nonce`.
    pub fn new(secret: &ClusterSecret, nonce: &str, announcement: &Announcement) -> Self {
        let text = serde_json::to_string(announcement).unwrap_or_default();
        let proof = secret.prove(nonce, &announcement.fingerprint, &text);
        Self {
            announcement: text,
            proof,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn announcement(secret: &ClusterSecret, fingerprint: &str) -> Announcement {
        Announcement {
            cluster: secret.cluster_id(),
            name: "gpu-a".into(),
            kind: "lattice".into(),
            models: vec!["tiny".into()],
            device: "cpu".into(),
            capacity: 16,
            location: "on_prem".into(),
            labels: vec![],
            fingerprint: fingerprint.into(),
        }
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_say_why() {
        let s = ClusterSecret::generate();
        assert_eq!(ClusterSecret::parse(&s.encode()).unwrap(), s);
        assert!(!format!("{s:?}").contains(&s.encode()[5..]));
        let table = [
            ("abc", "expected `lcs1_...`"),
            ("lcs1_@@@", "not base64url"),
            ("lcs1_AAAA", "3 bytes, not 32"),
        ];
        for (text, says) in table {
            let e = ClusterSecret::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn a_join_answer_is_checked_against_nonce_key_and_secret() {
        let secret = ClusterSecret::generate();
        let other = ClusterSecret::generate();
        let fp = fingerprint(b"cert");
        let good = JoinAnswer::new(&secret, "n1", &announcement(&secret, &fp));
        assert_eq!(secret.check("n1", &fp, &good).unwrap().name, "gpu-a");

        // A table of answers and what each is refused for.
        let mut forged = announcement(&secret, &fp);
        forged.location = "on_prem".into();
        let wrong_secret = JoinAnswer::new(&other, "n1", &forged);
        let mut edited = good.clone();
        edited.announcement = edited.announcement.replace("on_prem", "cloud!!");
        let relayed = JoinAnswer::new(&secret, "n1", &announcement(&secret, "ab"));
        let foreign = JoinAnswer::new(&other, "n1", &announcement(&other, &fp));
        let cases: [(&str, &JoinAnswer, JoinError); 5] = [
            ("replayed nonce", &good, JoinError::BadProof),
            ("wrong secret", &wrong_secret, JoinError::BadProof),
            ("edited announcement", &edited, JoinError::BadProof),
            (
                "another key",
                &relayed,
                JoinError::KeyMismatch {
                    proved: "ab".into(),
                    seen: fp.clone(),
                },
            ),
            (
                "another cluster",
                &foreign,
                JoinError::OtherCluster(other.cluster_id()),
            ),
        ];
        for (what, answer, expected) in cases {
            let nonce = if what == "replayed nonce" { "n2" } else { "n1" };
            assert_eq!(
                secret.check(nonce, &fp, answer).unwrap_err(),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn api_keys_differ_per_worker_and_cluster() {
        let a = ClusterSecret::generate();
        let b = ClusterSecret::generate();
        assert_ne!(a.api_key("f1"), a.api_key("f2"));
        assert_ne!(a.api_key("f1"), b.api_key("f1"));
        assert_eq!(a.api_key("f1"), a.api_key("f1"));
        assert_ne!(a.cluster_id(), b.cluster_id());
    }
}
