//! Signed checkpoints in the C2SP `tlog-checkpoint` format: a C2SP
//! `signed-note` whose body is `origin\nsize\nbase64(root)\n`, signed with the
//! node's Ed25519 key. Also the note key encodings
//! (`PRIVATE+KEY+name+hash+key` and the verifier key `name+hash+key`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;
use crate::AuditError;

const ALG_ED25519: u8 = 0x01;
const SIG_PREFIX: &str = "\u{2014} ";

/// A checkpoint: the head of a log at some size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note body that is signed.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    fn parse_body(body: &str) -> Result<Self, AuditError> {
        let bad = |m: &str| AuditError::Checkpoint(m.to_string());
        let mut lines = body.lines();
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| bad("no origin line"))?;
        let size = lines
            .next()
            .and_then(|l| l.parse::<u64>().ok())
            .ok_or_else(|| bad("bad size line"))?;
        let root_b64 = lines.next().ok_or_else(|| bad("no root line"))?;
        let root: Hash = B64
            .decode(root_b64)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("root is not a base64 SHA-256 hash"))?;
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

/// The 4-byte key id of the signed-note spec:
/// `SHA-256(name || "\n" || 0x01 || public key)[..4]`.
fn key_id(name: &str, public: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A node's signing key with its key name.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl NoteSigner {
    /// A new random key. `name` must not contain '+' or whitespace.
    pub fn generate(name: &str) -> Self {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        Self {
            name: name.to_string(),
            key,
        }
    }

    /// Parses `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`.
    pub fn from_encoded(text: &str) -> Result<Self, AuditError> {
        let bad = || AuditError::Key("not a PRIVATE+KEY note signing key".into());
        let rest = text.trim().strip_prefix("PRIVATE+KEY+").ok_or_else(bad)?;
        // Names never contain '+'; the base64 key may.
        let mut parts = rest.splitn(3, '+');
        let name = parts.next().ok_or_else(bad)?;
        let _id = parts.next().ok_or_else(bad)?;
        let key_b64 = parts.next().ok_or_else(bad)?;
        let raw = B64.decode(key_b64).map_err(|_| bad())?;
        let (alg, seed) = raw.split_first().ok_or_else(bad)?;
        if *alg != ALG_ED25519 {
            return Err(bad());
        }
        let seed: [u8; 32] = seed.try_into().map_err(|_| bad())?;
        Ok(Self {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn encoded(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.key.to_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(key_id(&self.name, &self.key.verifying_key())),
            B64.encode(raw)
        )
    }

    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The signed note of a checkpoint.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let sig: Signature = self.key.sign(body.as_bytes());
        let mut blob = key_id(&self.name, &self.key.verifying_key()).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{body}\n{SIG_PREFIX}{} {}\n", self.name, B64.encode(blob))
    }
}

/// A verifier key: name and Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `<name>+<hex id>+<base64(0x01 || public key)>`.
    pub fn from_encoded(text: &str) -> Result<Self, AuditError> {
        let bad = || AuditError::Key("not a note verifier key".into());
        let mut parts = text.trim().splitn(3, '+');
        let name = parts.next().ok_or_else(bad)?;
        let id_hex = parts.next().ok_or_else(bad)?;
        let key_b64 = parts.next().ok_or_else(bad)?;
        let raw = B64.decode(key_b64).map_err(|_| bad())?;
        let (alg, public) = raw.split_first().ok_or_else(bad)?;
        if *alg != ALG_ED25519 {
            return Err(bad());
        }
        let public: [u8; 32] = public.try_into().map_err(|_| bad())?;
        let key = VerifyingKey::from_bytes(&public).map_err(|_| bad())?;
        if hex::encode(key_id(name, &key)) != id_hex {
            return Err(AuditError::Key(
                "verifier key id does not match its key".into(),
            ));
        }
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    pub fn encoded(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(key_id(&self.name, &self.key)),
            B64.encode(raw)
        )
    }

    /// Verifies a signed checkpoint note and returns the checkpoint. Fails
    /// unless the note carries a valid signature by this key.
    pub fn open(&self, note: &str) -> Result<Checkpoint, AuditError> {
        let bad = |m: &str| AuditError::Checkpoint(m.to_string());
        let split = note.find("\n\n").ok_or_else(|| bad("no signature block"))?;
        let (body, sigs) = (&note[..split + 1], &note[split + 2..]);
        let id = key_id(&self.name, &self.key);
        let mut found = false;
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
                return Err(bad("malformed signature line"));
            };
            let Some((name, sig_b64)) = rest.split_once(' ') else {
                return Err(bad("malformed signature line"));
            };
            if name != self.name {
                continue;
            }
            let blob = B64
                .decode(sig_b64)
                .map_err(|_| bad("signature is not base64"))?;
            if blob.len() != 68 || blob[..4] != id {
                continue;
            }
            let sig = Signature::from_slice(&blob[4..]).map_err(|_| bad("malformed signature"))?;
            if self.key.verify(body.as_bytes(), &sig).is_err() {
                return Err(bad("bad signature"));
            }
            found = true;
        }
        if !found {
            return Err(bad("no signature by the node's key"));
        }
        Checkpoint::parse_body(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_open_roundtrip_and_tamper() {
        let signer = NoteSigner::generate("lattice.test/node-1");
        let cp = Checkpoint {
            origin: "lattice.test/node-1".into(),
            size: 42,
            root: [7u8; 32],
        };
        let note = signer.sign(&cp);
        assert!(note.starts_with("lattice.test/node-1\n42\n"));
        let verifier = NoteVerifier::from_encoded(&signer.verifier().encoded()).unwrap();
        assert_eq!(verifier.open(&note).unwrap(), cp);
        let tampered = note.replace("\n42\n", "\n43\n");
        assert!(verifier.open(&tampered).is_err());
        let other = NoteSigner::generate("lattice.test/node-1");
        assert!(other.verifier().open(&note).is_err());
        let reloaded = NoteSigner::from_encoded(&signer.encoded()).unwrap();
        assert_eq!(reloaded.verifier(), signer.verifier());
    }
}
