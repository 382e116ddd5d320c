//! The one pass `verify` makes over a log: its leaves and its event rows,
//! both in `seq` order, read together as a merge (each row against the
//! leaf at its own index), while the leaves also build the Merkle frontier
//! that every signed checkpoint is checked against as the walk reaches its
//! size. Memory is one bit per event (which positions hold their event)
//! and what is wrong: a row whose leaf is not the one at its index is set
//! aside, and only those rows' leaves are looked up in a second pass over
//! the leaves (where in the log does this content belong?).
//!
//! Must never: hold every leaf or every event at once, or report a trail
//! as verified when a row, a leaf or a checkpoint contradicts the log.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Expect, Problem, VerifyReport};
use crate::event::parse_canonical;
use crate::merkle::{self, Frontier, Hash};
use crate::store::{Events, Leaves};
use crate::AuditError;

/// What is known of a log before its leaves and rows are read.
pub(super) struct Head {
    /// The pruned prefix (empty when nothing was pruned).
    pub prefix: Frontier,
    /// Every checkpoint to check, own and witnessed, by size.
    pub expected: BTreeMap<u64, Vec<Expect>>,
    /// The largest size among the stored checkpoints (signed or not).
    pub signed: Option<u64>,
    /// What was wrong with the checkpoints themselves (a bad signature).
    pub problems: Vec<Problem>,
}

/// Hands every leaf `(index, hash)` to the callback again, in order.
pub(super) type Rescan<'a> = dyn FnMut(&mut dyn FnMut(u64, Hash)) -> Result<(), AuditError> + 'a;

/// The leaves read so far: the frontier, and the checkpoints it reached.
struct Walk<'a, 'b> {
    leaves: &'a mut Leaves<'b>,
    frontier: Frontier,
    base: u64,
    read: u64,
    last_idx: Option<u64>,
    /// The last leaf read and whether the leaves are exhausted.
    current: Option<(u64, Hash)>,
    done: bool,
    expected: BTreeMap<u64, Vec<Expect>>,
    /// The first leaf missing from the sequence of indexes.
    gap: Option<Problem>,
    problems: Vec<Problem>,
    own: usize,
    witnessed: usize,
}

impl Walk<'_, '_> {
    /// Checks the checkpoints the frontier has reached (all of them once
    /// the leaves are exhausted: those past the log's end fail).
    fn settle(&mut self) {
        let size = self.frontier.size();
        while let Some(entry) = self.expected.first_entry() {
            if *entry.key() > size && !self.done {
                break;
            }
            let (want, checks) = entry.remove_entry();
            for check in checks {
                let (cp, witness) = match &check {
                    Expect::Own(cp) => (cp, false),
                    Expect::Witness(cp) => (cp, true),
                };
                if witness {
                    self.witnessed += 1;
                } else {
                    self.own += 1;
                }
                let detail = if size < want {
                    Some(format!("the log has only {size} leaves"))
                } else if self.frontier.root() != cp.root {
                    Some(format!(
                        "signed root {} but the log gives {}",
                        hex::encode(cp.root),
                        hex::encode(self.frontier.root())
                    ))
                } else {
                    None
                };
                if let Some(detail) = detail {
                    self.problems.push(if witness {
                        Problem::WitnessMismatch { size: want, detail }
                    } else {
                        Problem::LogRewritten { size: want, detail }
                    });
                }
            }
        }
    }

    /// Reads the next leaf into the frontier.
    fn advance(&mut self) -> Result<(), AuditError> {
        match self.leaves.next() {
            None => {
                self.done = true;
                self.current = None;
            }
            Some(leaf) => {
                let (idx, hash) = leaf?;
                let want = self.base + self.read;
                // The first index out of place: the log is not whole.
                if idx != want && self.gap.is_none() {
                    self.gap = Some(Problem::LogRewritten {
                        size: want,
                        detail: format!("log leaf {want} is missing"),
                    });
                }
                self.read += 1;
                self.last_idx = Some(idx);
                self.current = Some((idx, hash));
                self.frontier.push(hash);
            }
        }
        self.settle();
        Ok(())
    }

    /// The leaf at index `seq`, if the log has one (leaves come in index
    /// order, rows in `seq` order: the walk only moves forward).
    fn leaf_at(&mut self, seq: u64) -> Result<Option<Hash>, AuditError> {
        loop {
            match self.current {
                Some((idx, hash)) if idx == seq => return Ok(Some(hash)),
                Some((idx, _)) if idx > seq => return Ok(None),
                _ if self.done => return Ok(None),
                _ => self.advance()?,
            }
        }
    }

    fn finish(&mut self) -> Result<(), AuditError> {
        while !self.done {
            self.advance()?;
        }
        Ok(())
    }
}

/// A row whose content is not the leaf at its index, resolved once every
/// leaf has been read.
struct SetAside {
    seq: u64,
    event_id: String,
    /// The `seq` the event says, or why it does not parse.
    says: Result<u64, String>,
    leaf: Hash,
    has_leaf: bool,
}

/// One bit per position of the log: whether its event was found.
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn set(&mut self, i: u64) {
        let (word, bit) = ((i / 64) as usize, i % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << bit;
    }

    fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// Checks the rows against the leaves and the leaves against every
/// checkpoint, in one pass (and a second over the leaves only when a row's
/// content is not at its own index).
pub(super) fn check(
    head: Head,
    leaves: &mut Leaves<'_>,
    events: &mut Events<'_>,
    rescan: &mut Rescan<'_>,
) -> Result<VerifyReport, AuditError> {
    let base = head.prefix.size();
    let mut expected = head.expected;
    // Checkpoints older than the pruned prefix cannot be checked.
    let kept = expected.split_off(&base);
    let pruned_checkpoints = expected.values().map(Vec::len).sum();
    let mut walk = Walk {
        leaves,
        frontier: head.prefix,
        base,
        read: 0,
        last_idx: None,
        current: None,
        done: false,
        expected: kept,
        gap: None,
        problems: Vec::new(),
        own: 0,
        witnessed: 0,
    };
    // A checkpoint at the pruned size is checked against the prefix alone.
    walk.settle();

    // 1. Every row against the leaf at its index.
    let mut present = Bits::default();
    let mut problems = Vec::new();
    let mut set_aside = Vec::new();
    let mut later = Vec::new();
    let mut rows = 0u64;
    for row in events {
        let row = row?;
        rows += 1;
        let bytes = row.json.as_bytes();
        let leaf = merkle::leaf_hash(bytes);
        let (event_id, says) = match parse_canonical(bytes) {
            Ok(e) => (e.event_id, Ok(e.seq)),
            Err(e) => (String::new(), Err(e)),
        };
        let at = walk.leaf_at(row.seq)?;
        if at == Some(leaf) {
            // Where the event says it belongs (its own `seq`): rows moved
            // with their leaves still say where they were written.
            match says {
                Ok(belongs_at) if belongs_at != row.seq => {
                    problems.push(Problem::Reordered {
                        seq: row.seq,
                        event_id,
                        belongs_at,
                    });
                    later.push(belongs_at);
                }
                _ if row.seq >= base => present.set(row.seq - base),
                _ => {}
            }
        } else {
            set_aside.push(SetAside {
                seq: row.seq,
                event_id,
                says,
                leaf,
                has_leaf: at.is_some(),
            });
        }
    }
    walk.finish()?;
    let Walk {
        gap,
        problems: log_problems,
        own,
        witnessed,
        read,
        last_idx,
        ..
    } = walk;

    // Where the log ends: past its last leaf, or at the largest signed
    // size when rows past the last leaf are gone (an event and its leaf
    // deleted together, as one row of the embedded store).
    let end = last_idx
        .map_or(base, |idx| idx + 1)
        .max(base + read)
        .max(head.signed.unwrap_or(0));
    let mut mark = |seq: u64| {
        if seq >= base && seq < end {
            present.set(seq - base);
        }
    };
    later.into_iter().for_each(&mut mark);

    // 2. The rows set aside: where does their content belong?
    if !set_aside.is_empty() {
        let wanted: HashSet<Hash> = set_aside.iter().map(|s| s.leaf).collect();
        let mut position: HashMap<Hash, u64> = HashMap::new();
        rescan(&mut |idx, hash| {
            if wanted.contains(&hash) {
                position.insert(hash, idx);
            }
        })?;
        for row in set_aside {
            let says = row.says.as_ref().map_or(row.seq, |s| *s);
            match position.get(&row.leaf) {
                Some(&i) if i == row.seq && says != row.seq => {
                    problems.push(Problem::Reordered {
                        seq: row.seq,
                        event_id: row.event_id,
                        belongs_at: says,
                    });
                    mark(says);
                }
                Some(&i) if i == row.seq => mark(i),
                Some(&i) => {
                    problems.push(Problem::Reordered {
                        seq: row.seq,
                        event_id: row.event_id,
                        belongs_at: i,
                    });
                    mark(i);
                }
                None if row.seq >= end || row.seq < base => {
                    problems.push(Problem::Inserted {
                        seq: row.seq,
                        event_id: row.event_id,
                    });
                }
                None => {
                    let detail = match &row.says {
                        Err(e) => e.clone(),
                        Ok(s) if *s != row.seq => {
                            format!("stored at #{} but says it is #{s}", row.seq)
                        }
                        Ok(_) if !row.has_leaf => "its leaf is missing from the log".into(),
                        Ok(_) => "its hash differs from the signed log".into(),
                    };
                    // A row whose content is not in the log, stored where
                    // another event is missing, is an edit of that event;
                    // only truly absent ones stay unmarked.
                    mark(row.seq);
                    problems.push(Problem::Edited {
                        seq: row.seq,
                        event_id: row.event_id,
                        detail,
                    });
                }
            }
        }
    }
    for i in 0..end - base {
        if !present.get(i) {
            problems.push(Problem::Deleted { seq: base + i });
        }
    }
    problems.extend(head.problems);
    problems.extend(gap);
    problems.extend(log_problems);
    problems.sort_by_key(|p| match p {
        Problem::Edited { seq, .. }
        | Problem::Deleted { seq }
        | Problem::Inserted { seq, .. }
        | Problem::Reordered { seq, .. } => (0, *seq),
        Problem::BadCheckpoint { size, .. } => (1, *size),
        Problem::LogRewritten { size, .. } => (2, *size),
        Problem::WitnessMismatch { size, .. } => (3, *size),
        Problem::NotWitnessed { size, .. } => (4, *size),
        Problem::BadSubtreeRoot { index, level } => (5, index << level),
    });
    Ok(VerifyReport {
        events: rows,
        log_size: end,
        checkpoints_checked: own,
        witness_checkpoints_checked: witnessed,
        duplicates: 0,
        pruned_before: base,
        pruned_checkpoints,
        from_clickhouse: 0,
        problems,
    })
}
