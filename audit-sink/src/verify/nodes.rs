//! `verify`'s check of the stored subtree roots (`store/nodes.rs`): the
//! roots are recomputed from the leaves as the walk reads them
//! (`merkle::stored::NodeBuilder`, 2^8 hashes a level held) and each one
//! stored is compared with its recomputed value.
//!
//! Must never: pass a stored root that differs from the leaves under it,
//! or fault a root whose leaves are not all there (the walk names those).

use super::Problem;
use crate::merkle::stored::{NodeBuilder, STEP};
use crate::merkle::Hash;
use crate::store::Store;
use crate::AuditError;

pub(super) struct Check<'a> {
    store: &'a Store,
    builder: NodeBuilder,
    problems: Vec<Problem>,
    error: Option<AuditError>,
}

impl<'a> Check<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Self {
            store,
            builder: NodeBuilder::new(STEP, 0),
            problems: Vec::new(),
            error: None,
        }
    }

    /// The next leaf read; after a leaf missing, the roots over it are
    /// not recomputed.
    pub(super) fn push(&mut self, idx: u64, hash: Hash) {
        if idx != self.builder.next() {
            self.builder = NodeBuilder::new(STEP, idx);
        }
        let mut made = Vec::new();
        self.builder.push(hash, &mut |level, index, root| {
            made.push((level, index, root))
        });
        for (level, index, root) in made {
            match self.store.stored_node(level, index) {
                Ok(Some(stored)) if stored != root => {
                    self.problems.push(Problem::BadSubtreeRoot { level, index });
                }
                Ok(_) => {}
                Err(e) => {
                    self.error.get_or_insert(e);
                }
            }
        }
    }

    /// The roots found wrong, or the error reading one.
    pub(super) fn finish(self) -> Result<Vec<Problem>, AuditError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.problems),
        }
    }
}
