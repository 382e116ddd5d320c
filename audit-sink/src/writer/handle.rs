//! The request path's side of the pipeline: `AuditHandle` (enqueues, a
//! decision written by its own call when the writer is free, the
//! reservation of an outcome's place, the `audit.gap` count of calls let
//! through unaudited), `OutcomeSlot` and `Durable`.
//!
//! Must never: wait for another call (a lock held by another writer is a
//! reason to queue, never to wait), or accept an event it cannot hand to
//! the writer.

use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

use super::{Core, Msg, Queued, Shared};
use crate::event::AuditEvent;
use crate::AuditError;

/// The kind of the event that counts calls let through unaudited.
pub const GAP: &str = "audit.gap";

/// The cloneable, non-blocking entry point used on the request path.
#[derive(Clone)]
pub struct AuditHandle {
    pub(super) core: Core,
    pub(super) shared: Arc<Shared>,
    pub(super) capacity: usize,
}

/// A place reserved in the queue for the outcome event of a call whose
/// decision was accepted: an owed outcome is never refused, even while the
/// store is failing (the writer holds it until the store recovers).
pub struct OutcomeSlot {
    handle: AuditHandle,
    used: bool,
    /// The decision's event id (the outcome settles what it owes).
    decision: String,
}

impl OutcomeSlot {
    /// Enqueues the outcome into the reserved place: without waking the
    /// writer while it looks at lazily handed outcomes by itself soon
    /// (nothing waits on an outcome), through the queue otherwise.
    pub fn record(mut self, event: AuditEvent) -> Result<(), AuditError> {
        self.used = true;
        let queued = Queued {
            event,
            owes: false,
            settles: Some(std::mem::take(&mut self.decision)),
            durable: None,
        };
        let shared = &self.handle.shared;
        shared.push(queued, false).inspect_err(|_| {
            shared.depth.fetch_sub(1, Ordering::AcqRel);
        })
    }
}

/// Resolves once a decision is on stable storage (at once for a decision
/// its own call wrote).
pub struct Durable(Option<oneshot::Receiver<()>>);

impl Durable {
    /// Waits (at most `within`) for the decision's batch to be appended
    /// and synced.
    pub async fn wait(self, within: Duration) -> Result<(), AuditError> {
        let Some(rx) = self.0 else { return Ok(()) };
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(AuditError::Closed),
            Err(_) => Err(AuditError::NotDurable(within.as_millis() as u64)),
        }
    }

    /// True when the decision was durable as it was handed over.
    #[cfg(test)]
    pub(crate) fn already(&self) -> bool {
        self.0.is_none()
    }
}

impl Drop for OutcomeSlot {
    fn drop(&mut self) {
        if !self.used {
            self.handle.shared.depth.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl AuditHandle {
    /// Reserves `n` places, or refuses when the pipeline is closed, failing
    /// or full.
    fn reserve(&self, n: usize) -> Result<(), AuditError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(AuditError::Closed);
        }
        if self.shared.failing() {
            return Err(AuditError::WriterFailing);
        }
        if let Some((ship, max)) = &self.shared.ship {
            let backlog = self
                .shared
                .log_size
                .load(Ordering::Acquire)
                .saturating_sub(ship.shipped.load(Ordering::Acquire));
            if backlog >= *max {
                return Err(AuditError::BacklogFull);
            }
        }
        let before = self.shared.depth.fetch_add(n, Ordering::AcqRel);
        if before + n > self.capacity {
            self.shared.depth.fetch_sub(n, Ordering::AcqRel);
            return Err(AuditError::QueueFull);
        }
        Ok(())
    }

    /// Queues into an already reserved place, waking the writer thread.
    fn send(&self, queued: Queued) -> Result<(), AuditError> {
        self.shared.push(queued, true)
    }

    /// Notes a call let through without its decision recorded (the
    /// operator chose `audit.on_full = allow`): the next event accepted is
    /// preceded by an `audit.gap` event that counts them, so the trail shows
    /// where it has a hole.
    pub fn note_bypassed(&self) {
        let now = crate::event::now_us();
        let _ =
            self.shared
                .gap_first_us
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        self.shared.gap_last_us.store(now, Ordering::Release);
        self.shared.gap.fetch_add(1, Ordering::AcqRel);
    }

    /// Writes the `audit.gap` event owed, if any and if there is room.
    fn close_gap(&self) {
        if self.shared.gap.load(Ordering::Acquire) == 0 || self.reserve(1).is_err() {
            return;
        }
        let n = self.shared.gap.swap(0, Ordering::AcqRel);
        let first = self.shared.gap_first_us.swap(0, Ordering::AcqRel);
        let last = self.shared.gap_last_us.load(Ordering::Acquire);
        let mut e = AuditEvent::new(
            crate::event::Phase::Decision,
            &uuid::Uuid::now_v7().to_string(),
            GAP,
        );
        e.decision = "allow".into();
        e.reason = format!(
            "{n} call(s) went through without an audit record between ts_us {first} and {last} (audit.on_full = allow)"
        );
        let queued = Queued {
            event: e,
            owes: false,
            settles: None,
            durable: None,
        };
        if self.send(queued).is_err() {
            self.shared.depth.fetch_sub(1, Ordering::AcqRel);
            self.shared.gap.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// Calls let through unaudited and not yet counted in an `audit.gap`
    /// event.
    pub fn gap(&self) -> u64 {
        self.shared.gap.load(Ordering::Acquire)
    }

    /// Enqueues a standalone event without blocking. An error means the event
    /// was not accepted and the caller must not proceed as if it had been.
    pub fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.close_gap();
        self.reserve(1)?;
        let queued = Queued {
            event,
            owes: false,
            settles: None,
            durable: None,
        };
        self.send(queued).inspect_err(|_| {
            self.shared.depth.fetch_sub(1, Ordering::AcqRel);
        })
    }

    /// Enqueues a decision event and reserves the place of its outcome;
    /// `Durable` says when the decision is on stable storage.
    pub fn record_decision(&self, event: AuditEvent) -> Result<(OutcomeSlot, Durable), AuditError> {
        self.decide(event, false)
    }

    /// As `record_decision`, for a call that waits for its decision to be
    /// durable: when no one else is writing, the call writes it itself
    /// (with everything queued before it) and `Durable` is ready at once.
    /// This blocks the calling thread for one synced write (the same wait
    /// the call makes anyway, without the two thread switches); when
    /// another writer holds the writer it queues instead, never waiting.
    pub fn write_decision(&self, event: AuditEvent) -> Result<(OutcomeSlot, Durable), AuditError> {
        self.decide(event, true)
    }

    fn decide(&self, event: AuditEvent, lead: bool) -> Result<(OutcomeSlot, Durable), AuditError> {
        self.close_gap();
        self.reserve(2)?;
        let slot = OutcomeSlot {
            handle: self.clone(),
            used: false,
            decision: event.event_id.clone(),
        };
        let mut queued = Queued {
            event,
            owes: true,
            settles: None,
            durable: None,
        };
        if lead {
            if let Some(mut core) = self.core.try_lock() {
                if let Some(w) = core.as_mut() {
                    if w.may_lead() {
                        return Ok((slot, Durable(w.lead(queued).err())));
                    }
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        queued.durable = Some(tx);
        if let Err(e) = self.send(queued) {
            self.shared.depth.fetch_sub(1, Ordering::AcqRel);
            return Err(e); // dropping the slot releases the other place
        }
        Ok((slot, Durable(Some(rx))))
    }

    /// Hands verified witness co-signature lines of the checkpoint of
    /// `size` to the writer, which stores them beside the checkpoint.
    pub fn add_cosignatures(&self, size: u64, lines: Vec<String>) -> Result<(), AuditError> {
        self.shared.ask(Msg::Cosignatures(size, lines))
    }

    /// Events accepted (or reserved for owed outcomes) but not yet written.
    pub fn depth(&self) -> usize {
        self.shared.depth.load(Ordering::Acquire)
    }

    /// Events written since start.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    /// Events before this `seq` were pruned from the store by retention.
    pub fn pruned_before(&self) -> u64 {
        self.shared.pruned.load(Ordering::Acquire)
    }

    /// Batches committed since start (each one transaction, one sync).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Acquire)
    }

    /// True while the pipeline accepts events.
    pub fn healthy(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire) && !self.shared.failing()
    }

    /// Blocks until everything enqueued before this call is written and a
    /// checkpoint covers it. For the CLI and tests, never the request path.
    pub fn flush(&self) -> Result<(), AuditError> {
        let (tx, rx) = sync_channel(1);
        self.shared.ask(Msg::Flush(tx))?;
        rx.recv().map_err(|_| AuditError::Closed)
    }
}
