//! Verification of a stored audit trail and proof generation. `verify`
//! recomputes every leaf from the stored events, checks the log against
//! every signed checkpoint (the store's own and a witness's), and names the
//! first event that was edited, deleted, inserted or reordered. A store
//! pruned by retention is verified from its pruned prefix on, or whole when
//! the pruned events are read back from ClickHouse (`verify_pruned`); a
//! log in ClickHouse is verified there (`verify_clickhouse`). Every one is
//! read as it is checked, in bounded memory.
//!
//! Must never: report a trail as verified when a row, leaf or checkpoint it
//! was given contradicts the signed log, or count pruned events as checked.

use serde::Serialize;
use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::checkpoint::{Checkpoint, NoteVerifier};
use crate::clickhouse::{ClickHouseConfig, RemoteLog};
use crate::merkle::{self, Frontier, Hash, Nodes};
use crate::store::{Store, StoredEvent};
use crate::AuditError;

mod nodes;
mod walk;

/// One thing wrong with the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    Edited {
        seq: u64,
        event_id: String,
        detail: String,
    },
    Deleted {
        seq: u64,
    },
    Inserted {
        seq: u64,
        event_id: String,
    },
    Reordered {
        seq: u64,
        event_id: String,
        belongs_at: u64,
    },
    BadCheckpoint {
        size: u64,
        detail: String,
    },
    LogRewritten {
        size: u64,
        detail: String,
    },
    WitnessMismatch {
        size: u64,
        detail: String,
    },
    /// No valid co-signature by an outside witness the verifier trusts.
    NotWitnessed {
        size: u64,
        witness: String,
    },
    /// A stored subtree root (`store/nodes.rs`) that is not the root of
    /// the leaves under it: proofs read through it would not verify.
    BadSubtreeRoot {
        level: u32,
        index: u64,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Edited {
                seq,
                event_id,
                detail,
            } => {
                write!(f, "event #{seq} ({event_id}) was edited: {detail}")
            }
            Problem::Deleted { seq } => write!(f, "event #{seq} was deleted"),
            Problem::Inserted { seq, event_id } => {
                write!(
                    f,
                    "event #{seq} ({event_id}) was inserted: it is not in the signed log"
                )
            }
            Problem::Reordered {
                seq,
                event_id,
                belongs_at,
            } => write!(
                f,
                "event #{seq} ({event_id}) was reordered: it is event #{belongs_at} of the log"
            ),
            Problem::BadCheckpoint { size, detail } => {
                write!(f, "checkpoint at size {size} is invalid: {detail}")
            }
            Problem::LogRewritten { size, detail } => {
                write!(
                    f,
                    "the log does not match its signed checkpoint at size {size}: {detail}"
                )
            }
            Problem::WitnessMismatch { size, detail } => write!(
                f,
                "the store does not match the witness checkpoint at size {size}: {detail}"
            ),
            Problem::BadSubtreeRoot { level, index } => write!(
                f,
                "the stored subtree root of leaves {}..{} does not match them (level {level}, #{index}): proofs through it would not verify",
                index << level,
                (index + 1) << level
            ),
            Problem::NotWitnessed { size, witness } => write!(
                f,
                "the log at size {size} carries no co-signature by witness {witness}: not witnessed yet, or the log's history was rewritten"
            ),
        }
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub events: u64,
    pub log_size: u64,
    pub checkpoints_checked: usize,
    pub witness_checkpoints_checked: usize,
    /// Identical duplicate rows (tolerated: a retried insert).
    pub duplicates: u64,
    /// Events before this were pruned by retention and not checked (0: the
    /// whole log was checked).
    pub pruned_before: u64,
    /// Checkpoints older than the pruned prefix, which cannot be checked.
    pub pruned_checkpoints: usize,
    /// Events read back from ClickHouse for the range the store pruned.
    pub from_clickhouse: u64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A checkpoint exported to a witness: the verifier key it was signed with
/// and the signed note.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct WitnessEntry {
    pub vkey: String,
    pub note: String,
}

/// Parses a witness file (JSON lines).
pub fn read_witness(text: &str) -> Result<Vec<WitnessEntry>, AuditError> {
    // A last line without its newline that does not parse is an append cut
    // short (a crash, a full disk): that checkpoint was never exported.
    let torn = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let last = lines.len().saturating_sub(1);
    let mut entries = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(l) {
            Ok(e) => entries.push(e),
            Err(_) if torn && i == last => {}
            Err(e) => {
                return Err(AuditError::Checkpoint(format!(
                    "witness line {}: {e}",
                    i + 1
                )))
            }
        }
    }
    Ok(entries)
}

enum Expect {
    Own(Checkpoint),
    Witness(Checkpoint),
}

/// Verifies the whole store, in one snapshot and bounded memory (the
/// leaves and rows are read as they are checked, `walk.rs`). `verifier` is
/// the node's verifier key; `witness` the checkpoints an outside witness
/// holds.
pub fn verify(
    store: &Store,
    verifier: &NoteVerifier,
    witness: &[WitnessEntry],
) -> Result<VerifyReport, AuditError> {
    store.read_consistent(|s| walk_store(s, None, verifier, witness))
}

/// Verifies the store as `lattice audit verify` does: a store that
/// retention pruned is verified as one whole log when `clickhouse` is
/// configured, the pruned events, their leaves and checkpoints read back
/// from it (rows below the pruned size), the rest from the store, in one
/// pass of bounded memory (the checkpoint the store keeps at the pruned
/// size ties the two together); otherwise as `verify` does.
pub fn verify_pruned(
    store: &Store,
    clickhouse: Option<&ClickHouseConfig>,
    node: &str,
    verifier: &NoteVerifier,
    witness: &[WitnessEntry],
) -> Result<VerifyReport, AuditError> {
    store.read_consistent(|s| {
        let (Some(prefix), Some(ch)) = (s.pruned()?, clickhouse) else {
            return walk_store(s, None, verifier, witness);
        };
        let pruned_from = |e: AuditError| {
            AuditError::ClickHouse(format!(
                "the store was pruned by retention; reading the pruned events from ClickHouse at {}: {}",
                ch.url,
                match e {
                    AuditError::ClickHouse(why) => why,
                    other => other.to_string(),
                }
            ))
        };
        let remote = RemoteLog::below(ch, node, prefix.size()).map_err(pruned_from)?;
        walk_store(s, Some(&remote), verifier, witness).map_err(pruned_from)
    })
}

/// Verifies a node's log as ClickHouse holds it, read as it is checked
/// (two cursors, rows below the size seen when it was opened).
pub fn verify_clickhouse(
    clickhouse: &ClickHouseConfig,
    node: &str,
    verifier: &NoteVerifier,
    witness: &[WitnessEntry],
) -> Result<VerifyReport, AuditError> {
    let remote = RemoteLog::open(clickhouse, node)?;
    let head = head(Frontier::default(), remote.checkpoints(), verifier, witness);
    let mut rescan = |each: &mut dyn FnMut(u64, Hash)| rescan_remote(&remote, each);
    let mut leaves = remote.leaves()?;
    let mut events = remote.events()?;
    let report = walk::check(head, &mut leaves, &mut events, &mut rescan)?;
    Ok(VerifyReport {
        duplicates: remote.duplicates(),
        ..report
    })
}

/// One snapshot of the store, its pruned prefix either taken on trust as
/// its frontier (`remote` is `None`) or read from ClickHouse.
fn walk_store(
    s: &Store,
    remote: Option<&RemoteLog>,
    verifier: &NoteVerifier,
    witness: &[WitnessEntry],
) -> Result<VerifyReport, AuditError> {
    let (prefix, mut checkpoints) = match remote {
        Some(r) => (Frontier::default(), r.checkpoints().to_vec()),
        None => (s.pruned()?.unwrap_or_default(), Vec::new()),
    };
    checkpoints.extend(s.checkpoints()?);
    let head = head(prefix, &checkpoints, verifier, witness);
    let mut rescan = |each: &mut dyn FnMut(u64, Hash)| {
        if let Some(r) = remote {
            rescan_remote(r, each)?;
        }
        s.scan_leaves(|leaves| {
            for leaf in leaves {
                let (idx, hash) = leaf?;
                each(idx, hash);
            }
            Ok(())
        })
    };
    let report = s.scan_leaves(|leaves| {
        // The stored subtree roots, each checked as its leaves go by.
        let roots = RefCell::new(nodes::Check::new(s));
        let mut leaves = leaves.inspect(|leaf| {
            if let Ok((idx, hash)) = leaf {
                roots.borrow_mut().push(*idx, *hash);
            }
        });
        let mut report = s.scan_events(|events| match remote {
            None => walk::check(head, &mut leaves, events, &mut rescan),
            Some(r) => {
                let mut leaves = r.leaves()?.chain(&mut leaves);
                let mut events = r.events()?.chain(events);
                walk::check(head, &mut leaves, &mut events, &mut rescan)
            }
        })?;
        report.problems.extend(roots.into_inner().finish()?);
        Ok(report)
    })?;
    Ok(match remote {
        None => report,
        Some(r) => VerifyReport {
            duplicates: r.duplicates(),
            from_clickhouse: r.events_read(),
            ..report
        },
    })
}

fn rescan_remote(remote: &RemoteLog, each: &mut dyn FnMut(u64, Hash)) -> Result<(), AuditError> {
    for leaf in remote.leaves()? {
        let (idx, hash) = leaf?;
        each(idx, hash);
    }
    Ok(())
}

/// The store's log, read in one snapshot.
pub fn read_log(store: &Store) -> Result<LogData, AuditError> {
    store.read_consistent(|s| {
        Ok(LogData {
            leaves: s.leaves()?,
            events: s.events()?,
            checkpoints: s.checkpoints()?,
            pruned: s.pruned()?,
        })
    })
}

/// A store's log held in memory: leaves and events in `seq` order and the
/// signed checkpoints.
#[derive(Debug, Default)]
pub struct LogData {
    pub leaves: Vec<(u64, Hash)>,
    pub events: Vec<StoredEvent>,
    pub checkpoints: Vec<(u64, String)>,
    /// The pruned prefix: leaves and events start at its size.
    pub pruned: Option<Frontier>,
}

/// Verifies a log held in memory, whole (`read_log`): the same walk over
/// vectors instead of cursors, what the tests compare the streamed
/// verifications with.
pub fn verify_log(
    data: &LogData,
    verifier: &NoteVerifier,
    witness: &[WitnessEntry],
) -> Result<VerifyReport, AuditError> {
    let head = head(
        data.pruned.clone().unwrap_or_default(),
        &data.checkpoints,
        verifier,
        witness,
    );
    let mut leaves = data.leaves.iter().map(|leaf| Ok(*leaf));
    let mut events = data.events.iter().map(|row| Ok(row.clone()));
    let mut rescan = |each: &mut dyn FnMut(u64, Hash)| {
        data.leaves.iter().for_each(|(idx, hash)| each(*idx, *hash));
        Ok(())
    };
    walk::check(head, &mut leaves, &mut events, &mut rescan)
}

/// The checkpoints to check, own and witnessed, opened with the node's
/// key; those that do not open are problems already.
fn head(
    prefix: Frontier,
    checkpoints: &[(u64, String)],
    verifier: &NoteVerifier,
    witness: &[WitnessEntry],
) -> walk::Head {
    let mut problems = Vec::new();
    let mut expected: BTreeMap<u64, Vec<Expect>> = BTreeMap::new();
    for (size, note) in checkpoints {
        match verifier.open(note) {
            Ok(cp) if cp.size == *size => {
                expected.entry(*size).or_default().push(Expect::Own(cp));
            }
            Ok(cp) => problems.push(Problem::BadCheckpoint {
                size: *size,
                detail: format!("stored under size {size} but signs size {}", cp.size),
            }),
            Err(e) => problems.push(Problem::BadCheckpoint {
                size: *size,
                detail: e.to_string(),
            }),
        }
    }
    for entry in witness {
        let opened = NoteVerifier::from_encoded(&entry.vkey).and_then(|v| {
            if v != *verifier {
                return Err(AuditError::Key(
                    "the witness holds checkpoints signed by a different key than the store's"
                        .into(),
                ));
            }
            v.open(&entry.note)
        });
        match opened {
            Ok(cp) => {
                expected
                    .entry(cp.size)
                    .or_default()
                    .push(Expect::Witness(cp));
            }
            Err(e) => problems.push(Problem::WitnessMismatch {
                size: 0,
                detail: e.to_string(),
            }),
        }
    }
    walk::Head {
        prefix,
        expected,
        signed: checkpoints.iter().map(|(size, _)| *size).max(),
        problems,
    }
}

/// An inclusion proof of one event in a signed checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct InclusionProof {
    pub seq: u64,
    pub tree_size: u64,
    pub leaf_hash: String,
    pub path: Vec<String>,
    pub root: String,
    pub checkpoint: String,
    pub verified: bool,
}

/// A consistency proof between two signed checkpoints.
#[derive(Debug, Clone, Serialize)]
pub struct ConsistencyProof {
    pub first_size: u64,
    pub second_size: u64,
    pub path: Vec<String>,
    pub first_root: String,
    pub second_root: String,
    pub verified: bool,
}

fn signed_checkpoint(
    store: &Store,
    verifier: &NoteVerifier,
    pick: impl Fn(u64) -> bool,
) -> Result<(Checkpoint, String), AuditError> {
    let (_, note) = store
        .checkpoints()?
        .into_iter()
        .rev()
        .find(|(size, _)| pick(*size))
        .ok_or_else(|| AuditError::Checkpoint("no signed checkpoint covers that".into()))?;
    Ok((verifier.open(&note)?, note))
}

/// Proves that event `seq` is in the latest signed checkpoint.
pub fn prove_inclusion(
    store: &Store,
    verifier: &NoteVerifier,
    seq: u64,
) -> Result<InclusionProof, AuditError> {
    store.read_consistent(|store| {
        let (cp, note) = signed_checkpoint(store, verifier, |size| size > seq)?;
        let log = StoredLog::open(store)?;
        if seq < log.prefix.size() {
            return Err(AuditError::Pruned(format!("event #{seq}")));
        }
        if log.size < cp.size {
            return Err(AuditError::Corrupt(
                "the log is shorter than its checkpoint".into(),
            ));
        }
        // The one row, not the whole store.
        let json = store
            .range(seq, 1)?
            .into_iter()
            .find(|(at, _, _)| *at == seq)
            .map(|(_, json, _)| json)
            .ok_or_else(|| AuditError::Corrupt(format!("event #{seq} is not in the store")))?;
        let leaf = merkle::leaf_hash(json.as_bytes());
        let (path, verified) = log
            .prove(
                |log| merkle::inclusion_proof_in(log, seq, cp.size),
                |path| merkle::verify_inclusion(&leaf, seq, cp.size, path, &cp.root),
            )?
            .ok_or_else(|| AuditError::Corrupt(format!("no event #{seq}")))?;
        Ok(InclusionProof {
            seq,
            tree_size: cp.size,
            leaf_hash: hex::encode(leaf),
            path: path.iter().map(hex::encode).collect(),
            root: hex::encode(cp.root),
            checkpoint: note,
            verified,
        })
    })
}

/// Proves that the signed checkpoint of size `first` is a prefix of the one
/// of size `second` (or the latest, if `None`).
pub fn prove_consistency(
    store: &Store,
    verifier: &NoteVerifier,
    first: u64,
    second: Option<u64>,
) -> Result<ConsistencyProof, AuditError> {
    store.read_consistent(|store| {
        let (a, _) = signed_checkpoint(store, verifier, |s| s == first)?;
        let (b, _) = signed_checkpoint(store, verifier, |s| second.is_none_or(|want| s == want))?;
        let log = StoredLog::open(store)?;
        if log.size < b.size {
            return Err(AuditError::Corrupt(
                "the log is shorter than its checkpoint".into(),
            ));
        }
        if a.size > b.size {
            return Err(AuditError::Checkpoint(
                "the first checkpoint must not be larger than the second".into(),
            ));
        }
        let (path, verified) = log
            .prove(
                |log| merkle::consistency_proof_in(log, a.size, b.size),
                |path| merkle::verify_consistency(a.size, b.size, &a.root, &b.root, path),
            )?
            .ok_or_else(|| {
                AuditError::Pruned(format!("the log before size {}", log.prefix.size()))
            })?;
        Ok(ConsistencyProof {
            first_size: a.size,
            second_size: b.size,
            path: path.iter().map(hex::encode).collect(),
            first_root: hex::encode(a.root),
            second_root: hex::encode(b.root),
            verified,
        })
    })
}

/// The store's log as a proof reads it: the pruned prefix's heads, and
/// each range of kept leaves a proof asks for read through the stored
/// subtree roots (or, `through_roots` off, streamed from its leaves: a
/// proof's ranges are disjoint, one pass over the leaves at most).
struct StoredLog<'a> {
    store: &'a Store,
    prefix: Frontier,
    size: u64,
    through_roots: std::cell::Cell<bool>,
    /// The first error reading a range (`Nodes` answers `None` for it).
    error: RefCell<Option<AuditError>>,
}

impl<'a> StoredLog<'a> {
    fn open(store: &'a Store) -> Result<Self, AuditError> {
        Ok(Self {
            store,
            prefix: store.pruned()?.unwrap_or_default(),
            size: store.log_size()?,
            through_roots: std::cell::Cell::new(true),
            error: RefCell::new(None),
        })
    }

    /// The proof `make` builds and whether `check` accepts it: through the
    /// stored roots, and when that does not verify, from the leaves (a
    /// wrong stored root, which `verify` names, must not fail a proof the
    /// leaves make).
    fn prove(
        &self,
        make: impl Fn(&Self) -> Option<Vec<Hash>>,
        check: impl Fn(&[Hash]) -> bool,
    ) -> Result<Option<(Vec<Hash>, bool)>, AuditError> {
        let Some(path) = self.read(make(self))? else {
            return Ok(None);
        };
        if check(&path) {
            return Ok(Some((path, true)));
        }
        self.through_roots.set(false);
        let again = self.read(make(self));
        self.through_roots.set(true);
        Ok(match again? {
            Some(leaves) if check(&leaves) => Some((leaves, true)),
            _ => Some((path, false)),
        })
    }

    /// A proof built over it, or the error that stopped a range's read.
    fn read<T>(&self, proof: Option<T>) -> Result<Option<T>, AuditError> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(proof),
        }
    }
}

impl Nodes for StoredLog<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn range_root(&self, a: u64, b: u64) -> Option<Hash> {
        if a >= b || b > self.size {
            return None;
        }
        merkle::range_root_after(
            &self.prefix,
            a,
            b,
            &mut |a, b| match if self.through_roots.get() {
                self.store.kept_root(a, b)
            } else {
                self.store.leaf_range_root(a, b)
            } {
                Ok(root) => Some(root),
                Err(e) => {
                    self.error.borrow_mut().get_or_insert(e);
                    None
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::read_witness;

    const LINE: &str = r#"{"vkey": "k", "note": "n"}"#;

    /// (file, entries read, or the error's text)
    #[test]
    fn a_witness_file_cut_short_by_a_crash_or_a_full_disk_still_reads() {
        let cases: [(String, Result<usize, &str>); 6] = [
            (String::new(), Ok(0)),
            (format!("{LINE}\n{LINE}\n"), Ok(2)),
            (format!("{LINE}\n\n{LINE}\n"), Ok(2)),
            // The last append cut short: ignored.
            (format!("{LINE}\n{}", &LINE[..12]), Ok(1)),
            // Damage anywhere else is an error naming the line.
            (format!("{LINE}\n{}\n", &LINE[..12]), Err("witness line 2")),
            (format!("{}\n{LINE}", &LINE[..12]), Err("witness line 1")),
        ];
        for (text, want) in cases {
            let got = read_witness(&text).map(|e| e.len());
            match want {
                Ok(n) => assert_eq!(got.unwrap(), n, "{text:?}"),
                Err(msg) => {
                    let err = got.unwrap_err().to_string();
                    assert!(err.contains(msg), "{text:?}: {err}");
                }
            }
        }
    }
}
