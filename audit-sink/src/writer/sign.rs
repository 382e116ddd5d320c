//! Signing checkpoints: the writer fills the store with every entry a
//! checkpoint covers, signs the checkpoint and hands it to the store
//! thread, which stores it after those entries and exports it to the
//! witness file (`store_thread`). A checkpoint the store refused is signed
//! again at the next one even if the log did not grow (the log only grows,
//! so the next covers it).
//!
//! Must never: sign a checkpoint before every entry it covers is handed to
//! the store, or sign one while the store gave up on entries.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Job, Writer};
use crate::checkpoint::Checkpoint;

impl Writer {
    /// Signs a checkpoint of the log as it is now, handed to the store
    /// after every entry it covers.
    pub(super) fn checkpoint(&mut self) {
        self.fill();
        if self.gave_up.is_some() || self.store.state.gave_up.load(Ordering::Acquire) {
            // The store lacks events: the next start signs them.
            return;
        }
        self.last_checkpoint_at = Instant::now();
        let size = self.frontier.size();
        let lost = self
            .store
            .state
            .checkpoint_lost
            .swap(false, Ordering::AcqRel);
        if size == 0 || (size == self.last_checkpoint && !lost) {
            return;
        }
        let cp = Checkpoint {
            origin: self.cfg.origin.clone(),
            size,
            root: self.frontier.root(),
        };
        let note = self.cfg.signer.sign(&cp);
        self.store.send(Job::Checkpoint {
            size,
            root: cp.root,
            note,
        });
        self.last_checkpoint = size;
    }
}
