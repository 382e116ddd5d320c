//! The store's Merkle leaves as read: in index order through a cursor
//! (`verify`'s walk, the ranges no stored subtree root covers), or whole
//! in memory for tests and short ranges; and the log's heads through the
//! stored roots (`nodes.rs`).
//!
//! Must never: hand out leaves out of index order, or let a missing leaf
//! pass as a shorter log where a whole range was asked for.

use super::{Leaves, Store};
use crate::merkle::stored;
use crate::merkle::{range_root_after, Frontier, Hash, PrunedLog};
use crate::AuditError;
use rusqlite::OptionalExtension;

impl Store {
    /// All leaf hashes in index order, with their indexes.
    pub fn leaves(&self) -> Result<Vec<(u64, Hash)>, AuditError> {
        self.scan_leaves(|leaves| leaves.collect())
    }

    /// Hands `read` the leaves in index order, one at a time, read as it
    /// asks for them (`verify` walks a log of any length in bounded
    /// memory this way).
    pub fn scan_leaves<T>(
        &self,
        read: impl FnOnce(&mut Leaves<'_>) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        self.scan_leaf_range(0, i64::MAX as u64, read)
    }

    /// `scan_leaves` for the leaves with indexes `from..to` only.
    pub fn scan_leaf_range<T>(
        &self,
        from: u64,
        to: u64,
        read: impl FnOnce(&mut Leaves<'_>) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        let mut stmt = self
            .conn
            .prepare("SELECT idx, hash FROM lv WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")?;
        let rows = stmt.query_map([from as i64, to as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut leaves = rows.map(|row| {
            let (idx, hash) = row?;
            let hash: Hash = hash
                .try_into()
                .map_err(|_| AuditError::Corrupt(format!("log leaf {idx} is not 32 bytes")))?;
            Ok((idx as u64, hash))
        });
        read(&mut leaves)
    }

    /// The number of leaves in the log (pruned ones included).
    pub fn log_size(&self) -> Result<u64, AuditError> {
        let n: Option<i64> = self
            .conn
            .query_row(
                "SELECT idx + 1 FROM lv ORDER BY idx DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let pruned = self.pruned()?.map_or(0, |f| f.size());
        Ok((n.unwrap_or(0) as u64).max(pruned))
    }

    /// The frontier of the whole log and its pruned prefix, each head read
    /// through the stored subtree roots (`nodes.rs`: O(log n) hashes, not
    /// every leaf; the gateway's start).
    pub fn frontier(&self) -> Result<(Frontier, Frontier), AuditError> {
        let prefix = self.pruned()?.unwrap_or_default();
        let size = self.log_size()?;
        let heads = stored::head_ranges(size)
            .into_iter()
            .map(|(a, b)| self.root_after(&prefix, a, b))
            .collect::<Result<Vec<Hash>, AuditError>>()?;
        let frontier = Frontier::from_heads(size, &heads)
            .ok_or_else(|| AuditError::Corrupt("the log's heads do not fit its size".into()))?;
        Ok((frontier, prefix))
    }

    /// `frontier`, checked against the newest signed checkpoint the log
    /// covers (the gateway's start: it signs the roots it continues from).
    /// Stored roots that disagree with it are set aside: the frontier is
    /// then streamed from the leaves, and the error says to run `lattice
    /// audit verify` (which names the root).
    pub fn checked_frontier(&self) -> Result<(Frontier, Frontier), AuditError> {
        let (frontier, prefix) = self.frontier()?;
        let signed: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT size, root FROM checkpoints WHERE size <= ?1 ORDER BY size DESC LIMIT 1",
                [frontier.size() as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((size, root)) = signed else {
            return Ok((frontier, prefix));
        };
        let size = size as u64;
        if size == 0 || size < prefix.size() {
            return Ok((frontier, prefix));
        }
        let ours = if size == frontier.size() {
            frontier.root()
        } else {
            self.root_after(&prefix, 0, size)?
        };
        if ours[..] == root[..] {
            return Ok((frontier, prefix));
        }
        tracing::error!(
            checkpoint = size,
            "the audit store's subtree roots do not match its signed checkpoint; the log head is read from the leaves instead: run `lattice audit verify`"
        );
        self.frontier_from_leaves()
    }

    /// `frontier` with every kept leaf streamed into it (32 bytes a leaf
    /// are never held together), none of the stored roots read.
    pub fn frontier_from_leaves(&self) -> Result<(Frontier, Frontier), AuditError> {
        let prefix = self.pruned()?.unwrap_or_default();
        let mut frontier = prefix.clone();
        self.push_leaves(&mut frontier, prefix.size(), 0, i64::MAX as u64)?;
        Ok((frontier, prefix))
    }

    /// MTH(D[a:b]) of the log as kept: the pruned prefix's heads, the
    /// stored subtree roots, the leaves.
    pub fn root_after(&self, prefix: &Frontier, a: u64, b: u64) -> Result<Hash, AuditError> {
        let mut error = None;
        let root = range_root_after(prefix, a, b, &mut |a, b| {
            self.kept_root(a, b)
                .map_err(|e| error.get_or_insert(e))
                .ok()
        });
        match (root, error) {
            (_, Some(e)) => Err(e),
            (Some(root), None) => Ok(root),
            (None, None) => Err(AuditError::Pruned(format!(
                "the log before size {}",
                prefix.size()
            ))),
        }
    }

    /// MTH of the kept leaves `from..to`, streamed (an error when one of
    /// them is missing).
    pub fn leaf_range_root(&self, from: u64, to: u64) -> Result<Hash, AuditError> {
        let mut tree = Frontier::default();
        let end = self.push_leaves(&mut tree, from, from, to)?;
        if end != to {
            return Err(gap(end));
        }
        Ok(tree.root())
    }

    /// Pushes the leaves with indexes `from..to` into `tree`; they must
    /// follow one another from `first` on (an error names the first index
    /// missing). Returns the index after the last one pushed.
    pub(super) fn push_leaves(
        &self,
        tree: &mut Frontier,
        first: u64,
        from: u64,
        to: u64,
    ) -> Result<u64, AuditError> {
        self.scan_leaf_range(from, to, |leaves| {
            let mut next = first;
            for leaf in leaves {
                let (idx, hash) = leaf?;
                if idx != next {
                    return Err(gap(next));
                }
                tree.push(hash);
                next += 1;
            }
            Ok(next)
        })
    }

    /// The log as kept, whole in memory: the pruned prefix's heads and the
    /// leaves after it (tests; the gateway and the proofs stream them).
    pub fn log(&self) -> Result<PrunedLog, AuditError> {
        let prefix = self.pruned()?.unwrap_or_default();
        let mut leaves = Vec::new();
        for (idx, leaf) in self.leaves()? {
            if idx != prefix.size() + leaves.len() as u64 {
                return Err(gap(prefix.size() + leaves.len() as u64));
            }
            leaves.push(leaf);
        }
        Ok(PrunedLog { prefix, leaves })
    }

    /// Leaves `from..to`, in order.
    pub fn leaf_range(&self, from: u64, to: u64) -> Result<Vec<Hash>, AuditError> {
        let out: Vec<Hash> = self.scan_leaf_range(from, to, |leaves| {
            leaves.map(|leaf| leaf.map(|(_, hash)| hash)).collect()
        })?;
        if out.len() as u64 != to.saturating_sub(from) {
            return Err(AuditError::Corrupt(format!(
                "log leaves {from}..{to} are not all in the store"
            )));
        }
        Ok(out)
    }
}

fn gap(at: u64) -> AuditError {
    AuditError::Corrupt(format!(
        "the audit log has a gap at leaf {at}; run `lattice audit verify`"
    ))
}
