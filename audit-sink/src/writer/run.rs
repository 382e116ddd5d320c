//! The writer thread: sleeps until something is queued or a fill, a
//! checkpoint or retention is due, then takes the writer's lock and writes
//! what is queued, hands the store thread its fills, checkpoints and
//! flushes (`store_thread`), and prunes. It writes a batch a leading call
//! could not append before anything else, and it alone retries failed
//! appends.
//!
//! Must never: sleep while holding the writer's lock, or leave an event
//! queued when it stops (one it gave up on at shutdown is counted and
//! reported).

use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use super::fill::Incomplete;
use super::{Core, Job, Msg, Shared, Writer, LAZY_WAIT, RETENTION_EVERY, SHUTDOWN_PATIENCE};

/// The writer thread's loop, until a shutdown (or until nothing but this
/// thread holds the writer: every handle and the pipeline are gone).
pub(super) fn run(core: &Core, shared: &Shared) {
    let mut waiters: Vec<SyncSender<()>> = Vec::new();
    loop {
        let wake = match core.lock().as_ref() {
            Some(w) => w.wake_in(),
            None => return,
        };
        // Stored before the queue is looked at: an outcome queued after
        // that is either seen below, or its sender sees the flag down and
        // wakes this thread.
        shared.lazy_ok.store(wake <= LAZY_WAIT, Ordering::SeqCst);
        let mut idle = {
            let mut q = shared.queue.lock();
            q.is_empty() && shared.ready.wait_for(&mut q, wake).timed_out() && q.is_empty()
        };
        let abandoned = std::sync::Arc::strong_count(core) == 1;
        let mut guard = core.lock();
        let Some(w) = guard.as_mut() else { return };
        // Until nothing was queued meanwhile: calls that queued while this
        // thread wrote did not wake it.
        loop {
            if w.step(idle, abandoned, &mut waiters) {
                // Everything written and in the store: the files close here.
                *guard = None;
                return;
            }
            if !shared.let_go() {
                break;
            }
            idle = false;
        }
    }
}

impl Writer {
    /// How long the writer thread may sleep: at once with a batch left
    /// unwritten, until the next fill is due, else until the next
    /// checkpoint (or retention) is.
    pub(super) fn wake_in(&self) -> Duration {
        if self.unwritten.is_some() {
            return Duration::ZERO;
        }
        if let Some(wait) = self.fill_wait() {
            wait
        } else if self.cfg.retention.is_set() {
            self.cfg.checkpoint_interval.min(RETENTION_EVERY)
        } else {
            self.cfg.checkpoint_interval
        }
    }

    /// Whether enough events or time passed since the last checkpoint.
    fn checkpoint_due(&self) -> bool {
        self.frontier.size() - self.last_checkpoint >= self.cfg.checkpoint_every
            || self.last_checkpoint_at.elapsed() >= self.cfg.checkpoint_interval
    }

    /// One turn of the writer thread, under the writer's lock. `idle`:
    /// it woke with nothing queued (a fill is due). Returns true once it
    /// stopped (asked to shut down, or `abandoned`).
    fn step(&mut self, idle: bool, abandoned: bool, waiters: &mut Vec<SyncSender<()>>) -> bool {
        if let Some(encoded) = self.unwritten.take() {
            self.unwritten = self.commit(encoded, true).err();
        }
        if idle {
            // Nothing queued: readers see appended entries soon, a chunk
            // at a time (handed to the store thread, which writes it).
            self.fill_chunk();
        }
        let mut shutdown = abandoned;
        let (mut events, mut msgs) = std::mem::take(&mut self.inbox);
        self.shared.take_all(&mut events, &mut msgs);
        if abandoned || msgs.iter().any(|m| matches!(m, Msg::Shutdown)) {
            // Whatever is handed over from now on is refused; what was
            // queued before is taken with it.
            shutdown = true;
            self.shared.lazy_ok.store(false, Ordering::SeqCst);
            let mut q = self.shared.queue.lock();
            q.gone = true;
            events.append(&mut q.events);
            msgs.append(&mut q.msgs);
        }
        // A batch at most `batch_max` events, each followed by the
        // checkpoint it makes due.
        while events.len() > self.cfg.batch_max {
            let rest = events.split_off(self.cfg.batch_max);
            self.write_batch(&mut events, true);
            events = rest;
            if self.checkpoint_due() {
                self.checkpoint();
            }
        }
        self.write_batch(&mut events, true);
        for msg in msgs.drain(..) {
            match msg {
                Msg::Flush(w) => waiters.push(w),
                Msg::Cosignatures(size, lines) => {
                    self.store.send(Job::Cosignatures(size, lines));
                }
                Msg::Shutdown => {}
            }
        }
        self.inbox = (events, msgs);
        if self.checkpoint_due() || shutdown || !waiters.is_empty() {
            self.checkpoint();
        }
        for w in waiters.drain(..) {
            // Told once the store thread wrote everything before it.
            self.store.send(Job::Tell(w));
        }
        if shutdown {
            // Everything in the store, synced — or, given up, what is not.
            self.settle();
            self.store.drain();
            let state = &self.store.state;
            if state.gave_up.load(Ordering::Acquire) {
                let lost = self.gave_up.get_or_insert_with(Incomplete::default);
                lost.unfilled += state.unfilled.swap(0, Ordering::AcqRel);
                if self.last_error.is_empty() {
                    self.last_error = std::mem::take(&mut *state.last_error.lock());
                }
            }
            if let Some(mut lost) = self.gave_up.take() {
                lost.unfilled += self.pending.len();
                lost.unwritten += self.unwritten.take().map_or(0, |u| u.entries.len());
                tracing::error!(
                    unfilled = lost.unfilled,
                    unwritten = lost.unwritten,
                    error = %self.last_error,
                    "the audit store could not be written before shutdown; gave up after {} s",
                    SHUTDOWN_PATIENCE.as_secs()
                );
                *self.shared.incomplete.lock() = Some((lost, std::mem::take(&mut self.last_error)));
            }
            return true;
        }
        if self.cfg.retention.is_set()
            && (self.last_retention.elapsed() >= RETENTION_EVERY || self.over_size())
        {
            self.last_retention = Instant::now();
            self.fill();
            // Retention reads and prunes the store itself.
            self.store.drain();
            if let Err(e) = self.retain() {
                tracing::error!(error = %e, "audit retention could not prune; it retries");
            }
        }
        false
    }
}
