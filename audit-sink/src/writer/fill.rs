//! The writer's two stores: appending a batch to the segments (the writer
//! thread retries until they take it — at shutdown for `SHUTDOWN_PATIENCE`
//! at most, then it gives up; a leading call gives up after one refused
//! write), and filling the SQLite store behind them — only with entries
//! whose segment records are synced, in unsynced commits of at most
//! `FILL_CHUNK` (a synced one at shutdown), handed to the store thread
//! (`store_thread`), which retries what the store refuses. While either is
//! refused the pipeline reports itself failing.
//!
//! Must never: write a store row for a segment record not yet synced, or
//! drop or reorder a pending entry (one given up on stays in the segments).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::rows::{store_rows, Pending};
use super::{Job, Shared, Writer, FILL_CHUNK, IDLE_FILL, UNSYNCED_WAIT};
use crate::segments::Loc;

/// How long a shutdown keeps retrying a write the disk refuses before it
/// gives up, leaving what the store lacks to the next start.
pub(crate) const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(10);

/// Whether a refused write has been retried for `SHUTDOWN_PATIENCE` since
/// the pipeline was closed (`give_up_at` is set at the first look after
/// the close): then it is given up on. Never while the pipeline is open.
pub(super) fn patience_over(give_up_at: &mut Option<Instant>, shared: &Shared) -> bool {
    if give_up_at.is_none() && shared.closed.load(Ordering::Acquire) {
        *give_up_at = Some(Instant::now() + SHUTDOWN_PATIENCE);
    }
    give_up_at.is_some_and(|t| Instant::now() >= t)
}

/// What a shutdown that gave up left unwritten.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Incomplete {
    /// Events durable in the segments, not in the store.
    pub(crate) unfilled: usize,
    /// Events never written anywhere.
    pub(crate) unwritten: usize,
}

impl Writer {
    /// Appends to the segments and returns where each entry went;
    /// `patient`: retrying until they take the entries, otherwise giving up
    /// (None) after one refused write. While a write is refused the
    /// pipeline reports itself failing.
    pub(super) fn append(
        &mut self,
        entries: &[Pending],
        sync: bool,
        patient: bool,
    ) -> Option<Vec<Loc>> {
        if self.gave_up.is_some() {
            return None;
        }
        let mut backoff = Duration::from_millis(50);
        let locs = loop {
            match self
                .segments
                .append(entries.iter().map(|(e, _, _, _)| e), sync)
            {
                Ok(locs) => break locs,
                Err(err) => {
                    self.shared.segments_failing.store(true, Ordering::Release);
                    tracing::error!(error = %err, events = entries.len(), "audit segment write failed; refusing new calls until it recovers");
                    self.last_error = err.to_string();
                    if !patient || !self.keep_trying() {
                        return None;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        self.shared.segments_failing.store(false, Ordering::Release);
        Some(locs)
    }

    /// Whether a refused write is tried again: always, until
    /// `SHUTDOWN_PATIENCE` after the pipeline was closed (the write being
    /// retried may have begun long before); then the writer gives up for
    /// good.
    pub(super) fn keep_trying(&mut self) -> bool {
        if self.gave_up.is_none() && patience_over(&mut self.give_up_at, &self.shared) {
            self.gave_up = Some(Incomplete::default());
        }
        self.gave_up.is_none()
    }

    /// Syncs the segments if anything was appended unsynced, retrying
    /// until it is (outcomes-only batches), so every pending entry may go
    /// into the store.
    pub(super) fn sync_segments(&mut self) {
        let size = self.frontier.size();
        if self.durable >= size {
            return;
        }
        let mut backoff = Duration::from_millis(50);
        while let Err(err) = self.segments.sync() {
            self.shared.segments_failing.store(true, Ordering::Release);
            tracing::error!(error = %err, "audit segment sync failed; refusing new calls until it recovers");
            self.last_error = err.to_string();
            if !self.keep_trying() {
                return;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        self.shared.segments_failing.store(false, Ordering::Release);
        self.durable = size;
        self.unsynced_since = None;
    }

    /// Writes every pending entry into the store in one commit (their
    /// segment records synced first), retrying until the store accepts it.
    /// The commit is not synced: the segments hold the events durably, and
    /// the next start writes in what a power cut lost.
    pub(super) fn fill(&mut self) {
        if !self.pending.is_empty() {
            self.sync_segments();
            self.write_pending(self.pending.len(), false);
        }
    }

    /// Fills the oldest pending entries whose segment records are synced,
    /// at most `FILL_CHUNK`, in one unsynced commit. When the oldest is not
    /// synced (outcomes alone since the last sync), it waits for the next
    /// decision's sync to cover it, and syncs by itself only once
    /// `UNSYNCED_WAIT` passed without one (an idle gateway): a sync of its
    /// own at every fill doubled the syncs a busy gateway's calls queue
    /// behind.
    pub(super) fn fill_chunk(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut n = self
            .pending
            .iter()
            .take(FILL_CHUNK)
            .take_while(|(e, _, _, _)| e.seq < self.durable)
            .count();
        if n == 0 {
            if self
                .unsynced_since
                .is_some_and(|t| t.elapsed() < UNSYNCED_WAIT)
            {
                return;
            }
            self.sync_segments();
            n = self.pending.len().min(FILL_CHUNK);
        }
        self.write_pending(n, false);
    }

    /// How long until a fill is due, if anything is pending: at once when
    /// a chunk's worth lags, `IDLE_FILL` after the oldest pending entry was
    /// appended, and `UNSYNCED_WAIT` after the oldest unsynced one when
    /// that is the oldest pending (and once `IDLE_FILL` after it).
    pub(super) fn fill_wait(&self) -> Option<Duration> {
        let (head, _, _, _) = self.pending.first()?;
        if head.seq >= self.durable {
            // Looked at once more `IDLE_FILL` after the first unsynced
            // append (while the writer looks within that, the next
            // outcomes are handed over without waking it), then not before
            // `UNSYNCED_WAIT` unless woken: waking every `IDLE_FILL` cost an
            // idle gateway several wake-ups per call.
            let waited = self.unsynced_since.map_or(UNSYNCED_WAIT, |t| t.elapsed());
            let wait = if waited < IDLE_FILL {
                IDLE_FILL - waited
            } else {
                UNSYNCED_WAIT.saturating_sub(waited)
            };
            return Some(wait);
        }
        if self.pending.len() >= FILL_CHUNK {
            return Some(Duration::ZERO);
        }
        let waited = self.pending_since.map_or(IDLE_FILL, |t| t.elapsed());
        Some(IDLE_FILL.saturating_sub(waited))
    }

    /// Writes every pending entry into the store in a synced commit.
    pub(super) fn settle(&mut self) {
        if !self.pending.is_empty() {
            self.sync_segments();
            self.write_pending(self.pending.len(), true);
        }
    }

    /// Hands the oldest `n` pending entries to the store thread, as one
    /// commit, synced or not (it retries what the store refuses).
    pub(super) fn write_pending(&mut self, n: usize, sync: bool) {
        if self.gave_up.is_some() {
            // Neither out of order nor past an unsynced segment record.
            return;
        }
        let rest = self.pending.split_off(n);
        let entries = std::mem::replace(&mut self.pending, rest);
        let (rows, owed, settled) = store_rows(entries);
        self.store.send(Job::Rows {
            rows,
            owed,
            settled,
            sync,
        });
        if self.pending.is_empty() {
            self.pending_since = None;
        }
    }
}
