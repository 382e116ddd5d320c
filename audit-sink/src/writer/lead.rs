//! A call that writes its own decision (the leader of a group commit): it
//! found the writer's lock free, so instead of queueing its decision,
//! waking the writer thread and being woken by it (two thread switches,
//! each a wait for a core), it takes everything queued before it, appends
//! that and its decision in one synced write, and goes on. Calls that come
//! meanwhile queue theirs without waking anyone (a writer holds the
//! writer and looks again before it lets go): the leader writes them too,
//! once, and hands what is queued after that to the writer thread.
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
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use super::{Queued, Writer, FILL_CHUNK};

/// A batch with this many queued decisions waiting on it says calls come
/// faster than a write takes: for `CROWDED_FOR` after it, calls queue for
/// the writer thread instead of leading (at 1,000 req/s leading saves a
/// fifth of the CPU per call; under saturation a leading call holds a
/// request thread in a synced write while its other connections wait).
pub(super) const CROWDED: usize = 3;

/// How long calls queue for the writer thread after a crowded batch. When
/// only the last batch counted, calls at saturation still led about half
/// the synced writes (every batch that happened to be small let the next
/// call lead); never leading then was x1.11 the HTTP route's saturation
/// over 20 paired rounds, and this window x1.12 (CPU per request x0.86)
/// over 12, the p99 at 1,000 and 5,000 req/s unchanged
/// (`docs/benchmarks-log.md`, "Changes measured", 2026-12-07).
pub(super) const CROWDED_FOR: Duration = Duration::from_millis(20);

impl Writer {
    /// Whether a call may lead now: no batch waits to be retried, the
    /// segments take writes, and no batch was crowded in the last
    /// `CROWDED_FOR` (under load the writer thread's group commits serve
    /// the waiting calls without holding request threads).
    pub(super) fn may_lead(&mut self) -> bool {
        self.unwritten.is_none() && !self.crowded() && !self.shared.failing()
    }

    /// Whether calls still come faster than a write takes: a batch with
    /// `CROWDED` decisions or more waiting was written less than
    /// `CROWDED_FOR` ago (the clock is read only then).
    fn crowded(&mut self) -> bool {
        match self.crowded_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                self.crowded_until = None;
                false
            }
            None => false,
        }
    }

    /// Writes everything queued and then `own` (a decision holding its
    /// place in the queue), synced; then, once, what was queued while it
    /// wrote (those calls did not wake the writer thread: a writer held
    /// the writer); what is queued after that goes to the writer thread,
    /// so a request thread is never held by a stream of other calls'
    /// writes. Ok: `own` is durable. Err: the write was refused; the
    /// writer thread writes the batch, and the receiver says when.
    pub(super) fn lead(&mut self, own: Queued) -> Result<(), oneshot::Receiver<()>> {
        let mut batch = std::mem::take(&mut self.inbox.0);
        let mut asked = self.shared.take_events(&mut batch);
        batch.push(own);
        let mut result = Ok(());
        if let Err(mut refused) = self.append_now(&mut batch) {
            let (tx, rx) = oneshot::channel();
            refused.told.push(tx);
            self.unwritten = Some(refused);
            result = Err(rx);
        } else if self.may_lead() {
            asked |= self.shared.take_events(&mut batch);
            self.unwritten = self.append_now(&mut batch).err();
        }
        self.inbox.0 = batch;
        // Let go, and wake the writer thread for what is still queued and
        // whatever it should do sooner than it looks by itself (a flush or
        // shutdown queued, a batch to retry, a chunk's worth to fill, or
        // entries to fill while it sleeps past `LAZY_WAIT`).
        if self.shared.hand_over()
            || asked
            || self.unwritten.is_some()
            || self.pending.len() >= FILL_CHUNK
            || !self.shared.lazy_ok.load(Ordering::SeqCst)
        {
            self.shared.ready.notify_one();
        }
        result
    }

    /// Encodes and appends a batch (emptied) without retrying.
    fn append_now(&mut self, batch: &mut Vec<Queued>) -> Result<(), super::Encoded> {
        let encoded = self.encode(batch, true);
        self.commit(encoded, false)
    }
}
