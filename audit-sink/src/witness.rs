//! An outside witness of audit logs, in the C2SP formats: it co-signs a
//! log's checkpoint only when the checkpoint is signed by the log's key and
//! consistent with the last one it co-signed for that log, so a log that is
//! rebuilt — even by an operator holding the node key — cannot get a
//! co-signature for its rewritten history.
//!
//! - `add_checkpoint` is the C2SP `tlog-witness` request (`old <size>`, the
//!   consistency proof, a blank line, the signed checkpoint) and its answers
//!   (200 with co-signature lines; 400, 403, 404, 409 with the size it holds,
//!   422), so any log that speaks the protocol can use it, not only Lattice.
//! - Co-signatures are C2SP `tlog-cosignature` `cosignature/v1` (Ed25519,
//!   key type 0x04, a timestamp in each), made and checked through
//!   `signed_note` (cloudflare/azul's implementation of C2SP signed notes:
//!   its `Signer`/`Verifier` traits, note parsing and verification);
//!   checkpoints are parsed and consistency proofs checked with azul's
//!   `tlog_tiles`. What is written here is only what azul does not publish
//!   on crates.io yet: the cosignature/v1 signer and verifier (its
//!   `tlog_cosignature` crate is unreleased) and the witness's state.
//! - The state — per log origin, the last co-signed size, root and note,
//!   and every refused request as evidence — is a SQLite file of the
//!   witness's own; checking against it and moving it forward are one
//!   transaction, so two racing requests can never roll a log back.
//!
//! Must never: co-sign a checkpoint not consistent with the last one it
//! co-signed for that origin, move a log's size backwards, or answer
//! before the new state is on disk.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;

use crate::AuditError;

/// The key type byte of a `cosignature/v1` key (C2SP tlog-cosignature).
const ALG_COSIGNATURE_V1: u8 = 0x04;
/// At most this many proof lines (C2SP tlog-witness).
const MAX_PROOF_LINES: usize = 63;

/// `SHA-256(name || "\n" || 0x04 || key)[:4]`.
fn cosigner_key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut material = vec![ALG_COSIGNATURE_V1];
    material.extend_from_slice(key.as_bytes());
    signed_note::key_id(name, &material)
}

/// The message a `cosignature/v1` signs: a header, the time, the note body.
fn cosigned_message(timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut m = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    m.extend_from_slice(body);
    m
}

/// A witness's signing key, making `cosignature/v1` signatures.
pub struct CosignatureSigner {
    name: String,
    key: SigningKey,
    /// The time to sign with; now when None.
    at: Option<u64>,
}

impl CosignatureSigner {
    pub fn generate(name: &str) -> Self {
        Self {
            name: name.to_string(),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
            at: None,
        }
    }

    /// Parses `PRIVATE+KEY+<name>+<hex id>+<base64(0x04 || seed)>`.
    pub fn from_encoded(text: &str) -> Result<Self, AuditError> {
        let bad = || AuditError::Key("not a PRIVATE+KEY cosignature/v1 key".into());
        let rest = text.trim().strip_prefix("PRIVATE+KEY+").ok_or_else(bad)?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(_id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let raw = B64.decode(key).map_err(|_| bad())?;
        match raw.split_first() {
            Some((&ALG_COSIGNATURE_V1, seed)) => Ok(Self {
                name: name.to_string(),
                key: SigningKey::from_bytes(&seed.try_into().map_err(|_| bad())?),
                at: None,
            }),
            _ => Err(bad()),
        }
    }

    pub fn encoded(&self) -> String {
        let mut raw = vec![ALG_COSIGNATURE_V1];
        raw.extend_from_slice(&self.key.to_bytes());
        let id = cosigner_key_id(&self.name, &self.key.verifying_key());
        format!("PRIVATE+KEY+{}+{id:08x}+{}", self.name, B64.encode(raw))
    }

    /// The verifier key others configure: `<name>+<hex id>+<base64(0x04 ||
    /// public key)>`.
    pub fn verifier_key(&self) -> String {
        let mut raw = vec![ALG_COSIGNATURE_V1];
        raw.extend_from_slice(self.key.verifying_key().as_bytes());
        let id = cosigner_key_id(&self.name, &self.key.verifying_key());
        format!("{}+{id:08x}+{}", self.name, B64.encode(raw))
    }

    /// Signs as of `timestamp` (seconds) instead of now (for tests).
    pub fn at(mut self, timestamp: u64) -> Self {
        self.at = Some(timestamp);
        self
    }
}

impl signed_note::Signer for CosignatureSigner {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        cosigner_key_id(&self.name, &self.key.verifying_key())
    }

    /// `timestamp (u64, big-endian) || Ed25519 signature`.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let timestamp = self
            .at
            .unwrap_or_else(|| crate::event::now_us() / 1_000_000);
        let sig = self.key.sign(&cosigned_message(timestamp, msg));
        let mut out = timestamp.to_be_bytes().to_vec();
        out.extend_from_slice(&sig.to_bytes());
        Ok(out)
    }
}

/// Checks `cosignature/v1` signatures of one witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    key: VerifyingKey,
}

impl CosignatureVerifier {
    /// Parses a verifier key made by `CosignatureSigner::verifier_key`.
    pub fn from_encoded(text: &str) -> Result<Self, AuditError> {
        let bad = || AuditError::Key(format!("`{text}` is not a cosignature/v1 verifier key"));
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let raw = B64.decode(key).map_err(|_| bad())?;
        let Some((&ALG_COSIGNATURE_V1, key)) = raw.split_first() else {
            return Err(bad());
        };
        let key =
            VerifyingKey::from_bytes(&key.try_into().map_err(|_| bad())?).map_err(|_| bad())?;
        if format!("{:08x}", cosigner_key_id(name, &key)) != id {
            return Err(bad());
        }
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The time (seconds) of a valid co-signature of `body`, if `sig` is one.
    pub fn timestamp(&self, body: &[u8], sig: &[u8]) -> Option<u64> {
        let (time, sig) = sig.split_at_checked(8)?;
        let timestamp = u64::from_be_bytes(time.try_into().ok()?);
        let sig = ed25519_dalek::Signature::from_slice(sig).ok()?;
        self.key
            .verify(&cosigned_message(timestamp, body), &sig)
            .ok()
            .map(|()| timestamp)
    }
}

impl signed_note::Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        cosigner_key_id(&self.name, &self.key)
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        self.timestamp(msg, sig).is_some()
    }
}

/// The body of a signed note (its text up to the blank line, with its
/// final newline).
pub fn note_body(note: &str) -> Option<&str> {
    note.find("\n\n").map(|i| &note[..=i])
}

/// Whether `line` (`— <name> <base64(key id || timestamp || signature)>`)
/// is a valid co-signature of the note `body` by `witness`.
pub fn cosigns(body: &str, line: &str, witness: &CosignatureVerifier) -> bool {
    let Some((name, blob)) = line
        .trim_end()
        .strip_prefix("\u{2014} ")
        .and_then(|rest| rest.split_once(' '))
    else {
        return false;
    };
    let Ok(raw) = B64.decode(blob) else {
        return false;
    };
    match raw.split_at_checked(4) {
        Some((id, sig)) => {
            name == witness.name
                && id == cosigner_key_id(&witness.name, &witness.key).to_be_bytes()
                && witness.timestamp(body.as_bytes(), sig).is_some()
        }
        None => false,
    }
}

/// The first checkpoint, by size, without a valid co-signature by
/// `witness` among `cosignatures` ((size, line) pairs); None when every one
/// has one.
pub fn first_not_cosigned(
    checkpoints: &[(u64, String)],
    cosignatures: &[(u64, String)],
    witness: &CosignatureVerifier,
) -> Option<u64> {
    checkpoints.iter().find_map(|(size, note)| {
        let body = note_body(note).unwrap_or_default();
        let signed = cosignatures
            .iter()
            .any(|(s, line)| s == size && cosigns(body, line, witness));
        (!signed).then_some(*size)
    })
}

/// A refused `add-checkpoint`: the HTTP status and body the protocol asks
/// for, and the reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub body: String,
    pub reason: String,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    let reason = reason.into();
    Refusal {
        status,
        body: format!("{reason}\n"),
        reason,
    }
}

/// What the witness holds for one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witnessed {
    pub size: u64,
    pub root: [u8; 32],
    /// The checkpoint note as co-signed (the log's signature and ours).
    pub note: String,
}

/// The witness: its key, the logs it knows, its state on disk.
pub struct Witness {
    signer: CosignatureSigner,
    /// Per origin: the log's signed-note verifier key.
    logs: HashMap<String, String>,
    db: Connection,
}

impl Witness {
    /// Opens (creating) the witness's state. `logs`: (origin, the log's
    /// verifier key `name+id+key`).
    pub fn open(
        db: &Path,
        signer: CosignatureSigner,
        logs: &[(String, String)],
    ) -> Result<Self, AuditError> {
        for (origin, vkey) in logs {
            signed_note::StandardVerifier::new(vkey).map_err(|e| {
                AuditError::Key(format!("log `{origin}`: verifier key `{vkey}`: {e}"))
            })?;
        }
        let conn = Connection::open(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS witnessed (
                origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL,
                note TEXT NOT NULL, at_s INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS refused (
                at_s INTEGER NOT NULL, origin TEXT NOT NULL, status INTEGER NOT NULL,
                reason TEXT NOT NULL, request TEXT NOT NULL);",
        )?;
        Ok(Self {
            signer,
            logs: logs.iter().cloned().collect(),
            db: conn,
        })
    }

    /// Adds a log the witness co-signs for (its origin and verifier key).
    pub fn add_log(&mut self, origin: &str, vkey: &str) -> Result<(), AuditError> {
        signed_note::StandardVerifier::new(vkey)
            .map_err(|e| AuditError::Key(format!("log `{origin}`: verifier key `{vkey}`: {e}")))?;
        self.logs.insert(origin.to_string(), vkey.to_string());
        Ok(())
    }

    /// What the witness last co-signed for `origin`.
    pub fn witnessed(&self, origin: &str) -> Result<Option<Witnessed>, AuditError> {
        Ok(self
            .db
            .query_row(
                "SELECT size, root, note FROM witnessed WHERE origin = ?1",
                [origin],
                |r| {
                    let root: Vec<u8> = r.get(1)?;
                    Ok((r.get::<_, i64>(0)? as u64, root, r.get::<_, String>(2)?))
                },
            )
            .optional()?
            .map(|(size, root, note)| Witnessed {
                size,
                root: root.try_into().unwrap_or([0; 32]),
                note,
            }))
    }

    /// The refused requests of one log, oldest first: (status, reason).
    pub fn refusals(&self, origin: &str) -> Result<Vec<(u16, String)>, AuditError> {
        let mut stmt = self
            .db
            .prepare("SELECT status, reason FROM refused WHERE origin = ?1 ORDER BY rowid")?;
        let rows = stmt.query_map([origin], |r| Ok((r.get::<_, i64>(0)? as u16, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The C2SP `add-checkpoint` call: the co-signature lines, or the
    /// refusal. A refusal of a checkpoint its log really signed is kept as
    /// evidence.
    pub fn add_checkpoint(&mut self, request: &[u8]) -> Result<String, Refusal> {
        let (origin, outcome) = self.judge(request);
        match outcome {
            Ok(witnessed) => {
                let stored = self.store(&origin, &witnessed);
                stored
                    .map_err(|e| refuse(500, format!("the witness cannot store its state: {e}")))?;
                let lines: Vec<&str> = witnessed
                    .note
                    .lines()
                    .filter(|l| l.starts_with(&format!("\u{2014} {} ", self.signer.name)))
                    .collect();
                Ok(lines.iter().map(|l| format!("{l}\n")).collect())
            }
            Err((refusal, evidence)) => {
                if evidence {
                    let request = String::from_utf8_lossy(request);
                    let _ = self.db.execute(
                        "INSERT INTO refused (at_s, origin, status, reason, request) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![(crate::event::now_us() / 1_000_000) as i64, origin, refusal.status, refusal.reason, request],
                    );
                }
                Err(refusal)
            }
        }
    }

    fn store(&mut self, origin: &str, w: &Witnessed) -> Result<(), AuditError> {
        self.db.execute(
            "INSERT OR REPLACE INTO witnessed (origin, size, root, note, at_s) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![origin, w.size as i64, &w.root[..], w.note, (crate::event::now_us() / 1_000_000) as i64],
        )?;
        Ok(())
    }

    /// The checks of C2SP tlog-witness, in its order. Err carries whether
    /// the request is evidence (its log really signed it).
    #[allow(clippy::type_complexity)] // (origin, verdict) of one request
    fn judge(&self, request: &[u8]) -> (String, Result<Witnessed, (Refusal, bool)>) {
        let Some((old, proof, note)) = split_request(request) else {
            return (
                String::new(),
                Err((refuse(400, "malformed add-checkpoint request"), false)),
            );
        };
        let Ok(parsed) = signed_note::Note::from_bytes(note) else {
            return (
                String::new(),
                Err((refuse(400, "malformed checkpoint note"), false)),
            );
        };
        let Ok(checkpoint) = tlog_tiles::Checkpoint::from_bytes(parsed.text()) else {
            return (
                String::new(),
                Err((refuse(400, "malformed checkpoint"), false)),
            );
        };
        let origin = checkpoint.origin().to_string();
        let verdict = self.check(old, &proof, parsed, &checkpoint);
        (origin, verdict)
    }

    fn check(
        &self,
        old: u64,
        proof: &[tlog_tiles::Hash],
        mut note: signed_note::Note,
        checkpoint: &tlog_tiles::Checkpoint,
    ) -> Result<Witnessed, (Refusal, bool)> {
        let origin = checkpoint.origin();
        let vkey = self
            .logs
            .get(origin)
            .ok_or_else(|| (refuse(404, format!("unknown log `{origin}`")), false))?;
        let log = signed_note::StandardVerifier::new(vkey)
            .map_err(|e| (refuse(500, format!("log key: {e}")), false))?;
        let known = signed_note::VerifierList::new(vec![Box::new(log)]);
        note.verify(&known).map_err(|e| {
            (
                refuse(403, format!("not signed by the log `{origin}`'s key: {e}")),
                false,
            )
        })?;
        let size = checkpoint.size();
        if old > size {
            return Err((
                refuse(
                    400,
                    format!("old size {old} is above the checkpoint's {size}"),
                ),
                true,
            ));
        }
        let held = self.witnessed(origin).map_err(|e| {
            (
                refuse(500, format!("the witness cannot read its state: {e}")),
                false,
            )
        })?;
        let held_size = held.as_ref().map_or(0, |w| w.size);
        if old != held_size {
            return Err((
                Refusal {
                    status: 409,
                    body: format!("{held_size}\n"),
                    reason: format!("old size {old}, but the witness holds size {held_size}"),
                },
                true,
            ));
        }
        let root = checkpoint.hash().0;
        let inconsistent = |why: String| (refuse(422, why), true);
        if size == 0 && root != crate::merkle::empty_root() {
            return Err(inconsistent(
                "an empty tree with a root other than the empty hash".into(),
            ));
        }
        match &held {
            None if !proof.is_empty() => {
                return Err(inconsistent("a proof from size 0 must be empty".into()))
            }
            Some(w) if w.size == size && w.root != root => {
                return Err(inconsistent(format!(
                    "size {size} again with another root: this log forked"
                )))
            }
            Some(w) if w.size < size => {
                tlog_tiles::check_tree(
                    &proof.to_vec(),
                    size,
                    tlog_tiles::Hash(root),
                    w.size,
                    tlog_tiles::Hash(w.root),
                )
                .map_err(|_| {
                    inconsistent(format!(
                        "size {size} is not consistent with size {} it co-signed: the log's history was rewritten",
                        w.size
                    ))
                })?;
            }
            _ => {}
        }
        note.add_sigs(&[&self.signer])
            .map_err(|e| (refuse(500, format!("cannot co-sign: {e}")), false))?;
        Ok(Witnessed {
            size,
            root,
            note: String::from_utf8_lossy(&note.to_bytes()).into_owned(),
        })
    }
}

/// (old size, proof, the checkpoint note) of an `add-checkpoint` body.
fn split_request(body: &[u8]) -> Option<(u64, Vec<tlog_tiles::Hash>, &[u8])> {
    let text = std::str::from_utf8(body).ok()?;
    let (head, note) = text.split_once("\n\n")?;
    let mut lines = head.lines();
    let old = lines.next()?.strip_prefix("old ")?;
    if old.len() > 1 && old.starts_with('0') {
        return None;
    }
    let old: u64 = old.parse().ok()?;
    let proof: Vec<tlog_tiles::Hash> = lines
        .map(|l| {
            let raw = B64.decode(l).ok()?;
            Some(tlog_tiles::Hash(raw.try_into().ok()?))
        })
        .collect::<Option<_>>()?;
    if proof.len() > MAX_PROOF_LINES {
        return None;
    }
    Some((old, proof, note.as_bytes()))
}

/// The body of an `add-checkpoint` request: what a log sends a witness.
pub fn add_checkpoint_request(old: u64, proof: &[[u8; 32]], note: &str) -> String {
    let mut out = format!("old {old}\n");
    for h in proof {
        out.push_str(&B64.encode(h));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(note);
    out
}
