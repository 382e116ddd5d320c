//! The store's Merkle leaves as read: in index order through a cursor
//! (`verify`'s walk, the gateway's start, the proofs' subtree roots), or
//! whole in memory for tests and short ranges.
//!
//! Must never: hand out leaves out of index order, or let a missing leaf
//! pass as a shorter log where a whole range was asked for.

use super::{Leaves, Store};
use crate::merkle::{Frontier, Hash, PrunedLog};
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

    /// The frontier of the whole log and its pruned prefix, the kept
    /// leaves streamed into it (32 bytes a leaf are never held together:
    /// the gateway's start reads a log of any length this way).
    pub fn frontier(&self) -> Result<(Frontier, Frontier), AuditError> {
        let prefix = self.pruned()?.unwrap_or_default();
        let mut frontier = prefix.clone();
        self.push_leaves(&mut frontier, prefix.size(), 0, i64::MAX as u64)?;
        Ok((frontier, prefix))
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
    fn push_leaves(
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
