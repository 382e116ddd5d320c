//! A call that writes its own decision (the leader of a group commit): it
//! found the writer's lock free, so instead of queueing its decision,
//! waking the writer thread and being woken by it (two thread switches,
//! each a wait for a core), it takes everything queued before it, appends
//! that and its decision in one synced write, and goes on. Calls that come
//! meanwhile queue theirs, and the next leader or the writer thread writes
//! them together.
//!
//! A leader runs on the request path, so it does only the append: the
//! SQLite store, checkpoints and retention stay with the writer thread,
//! which it wakes when they need it sooner than the thread would look by
//! itself. A write the segments refuse is not retried here: the batch is
//! handed to the writer thread (which retries, written before anything
//! else) and the call waits for it like a queued one.
//!
//! Must never: write anything out of the order it was queued in, retry or
//! sleep, or touch the SQLite store.

use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

use super::{Queued, Writer, FILL_CHUNK};

impl Writer {
    /// Whether a call may lead now: no batch waits to be retried and the
    /// segments take writes.
    pub(super) fn may_lead(&self) -> bool {
        self.unwritten.is_none() && !self.shared.failing.load(Ordering::Acquire)
    }

    /// Writes everything queued and then `own` (a decision holding its
    /// place in the queue), synced. Ok: `own` is durable. Err: the write
    /// was refused; the writer thread writes the batch, and the receiver
    /// says when.
    pub(super) fn lead(&mut self, own: Queued) -> Result<(), oneshot::Receiver<()>> {
        let mut batch = std::mem::take(&mut self.inbox.0);
        let asked = {
            let mut q = self.shared.queue.lock();
            std::mem::swap(&mut q.events, &mut batch);
            !q.msgs.is_empty()
        };
        batch.push(own);
        let encoded = self.encode(&mut batch, true);
        self.inbox.0 = batch;
        let result = match self.commit(encoded, false) {
            Ok(()) => Ok(()),
            Err(mut encoded) => {
                let (tx, rx) = oneshot::channel();
                encoded.told.push(tx);
                self.unwritten = Some(encoded);
                Err(rx)
            }
        };
        // The writer thread sleeps on: wake it when it has something to do
        // sooner than it looks by itself (a flush or shutdown queued, a
        // batch to retry, a chunk's worth to fill, or entries to fill while
        // it sleeps past `LAZY_WAIT`).
        if asked
            || self.unwritten.is_some()
            || self.pending.len() >= FILL_CHUNK
            || !self.shared.lazy_ok.load(Ordering::SeqCst)
        {
            self.shared.ready.notify_one();
        }
        result
    }
}
