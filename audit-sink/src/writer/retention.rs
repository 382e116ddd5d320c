//! Retention: keeps the embedded store within an age and a size, on the
//! writer thread, between batches.
//!
//! A prune removes a prefix of the log up to a size with a signed
//! checkpoint (so that checkpoint and every later one still verify, and
//! consistency from it can still be proved), keeps the heads of the
//! subtrees that covered the prefix (`Store::prune`), and is itself
//! recorded first as an `audit.pruned` event in the signed log, so a
//! verifier can tell retention from deletion. With ClickHouse, only events
//! ClickHouse confirmed it holds are pruned; nothing owed an outcome is.
//! Each prune removes at most `STEP` events so the calls waiting on the
//! next group commit never wait long behind it.
//!
//! The size counted is the store's pages in use plus its segments; a
//! segment is removed once every event in it was pruned.
//!
//! Must never: prune an event not yet shipped (when shipping), a decision
//! that still owes its outcome, or past the newest signed checkpoint.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Queued, Writer};
use crate::event::{now_us, AuditEvent, Phase};
use crate::AuditError;

/// The kind of the event that records a prune.
pub const PRUNED: &str = "audit.pruned";

/// Most events removed by one prune.
const STEP: u64 = 20_000;

/// How long the store keeps events, and how large it may grow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retention {
    /// Events older than this are pruned.
    pub max_age: Option<Duration>,
    /// Past this many bytes in use, the oldest events are pruned until
    /// three quarters of it are in use.
    pub max_bytes: Option<u64>,
}

impl Retention {
    pub fn is_set(&self) -> bool {
        self.max_age.is_some() || self.max_bytes.is_some()
    }
}

impl Writer {
    /// Whether the store holds more than its size limit (checked after
    /// every batch, with the store's size as of its last write).
    pub(super) fn over_size(&self) -> bool {
        self.cfg.retention.max_bytes.is_some_and(|max| {
            self.store.state.used_bytes.load(Ordering::Acquire) + self.segments.used_bytes() > max
        })
    }

    /// Bytes the store and its segments hold (the store thread has done
    /// everything handed to it).
    fn used_bytes(&self) -> Result<u64, AuditError> {
        Ok(self.store.db.lock().used_bytes()? + self.segments.used_bytes())
    }

    /// Prunes what retention allows now, if anything (the store thread has
    /// done everything handed to it). Errors are logged by the caller; a
    /// failed prune leaves the store as it was.
    pub(super) fn retain(&mut self) -> Result<(), AuditError> {
        let r = self.cfg.retention.clone();
        let size = self.frontier.size();
        let pruned = self.pruned.size();
        let mut want = pruned;
        let mut why = Vec::new();
        if let Some(age) = r.max_age {
            let cutoff = now_us().saturating_sub(age.as_micros() as u64);
            let first = self.store.db.lock().first_since(cutoff)?.unwrap_or(size);
            if first > want {
                want = first;
            }
            why.push(format!("max_age {} s", age.as_secs()));
        }
        let mut file = None;
        if let Some(max) = r.max_bytes {
            let used = self.used_bytes()?;
            if used > max {
                let kept = size - pruned;
                let keep = (kept as f64 * (max as f64 * 0.75 / used as f64)) as u64;
                want = want.max(size - keep.min(kept));
            }
            why.push(format!("max_size {max} bytes, {used} in use"));
            file = Some(max);
        }
        if want > pruned {
            self.prune_upto(want, &why.join(", "))?;
        }
        if let Some(max) = file {
            self.store
                .db
                .lock()
                .release_pages_over(max.saturating_sub(self.segments.used_bytes()))?;
        }
        Ok(())
    }

    /// Prunes up to the largest signed checkpoint at most `want`, within
    /// what shipping and owed outcomes allow.
    fn prune_upto(&mut self, want: u64, why: &str) -> Result<(), AuditError> {
        let pruned = self.pruned.size();
        let mut bound = want.min(pruned + STEP);
        if let Some((state, _)) = &self.shared.ship {
            let shipped = if state.confirmed.load(Ordering::Acquire) {
                state.shipped.load(Ordering::Acquire)
            } else {
                pruned
            };
            if shipped < bound {
                if !self.held_back {
                    tracing::warn!(
                        shipped,
                        want,
                        "the audit store is past its retention, but events from #{shipped} on are not in ClickHouse yet: they are kept until shipped"
                    );
                }
                self.held_back = true;
                bound = shipped;
            } else {
                self.held_back = false;
            }
        }
        let mut prefix = self.pruned.clone();
        let at = {
            let store = self.store.db.lock();
            if let Some(owed) = store.oldest_owed()? {
                bound = bound.min(owed);
            }
            let Some(at) = store.checkpoint_at_most(pruned, bound)? else {
                return Ok(());
            };
            for leaf in store.leaf_range(pruned, at)? {
                prefix.push(leaf);
            }
            at
        };
        let shipped = if self.shared.ship.is_some() {
            "they are in ClickHouse"
        } else {
            "no ClickHouse is configured: they are gone"
        };
        let mut e = AuditEvent::new(Phase::Decision, &uuid::Uuid::now_v7().to_string(), PRUNED);
        e.decision = "allow".into();
        e.target = format!("{pruned}..{at}");
        e.reason = format!(
            "retention ({why}): events #{pruned}..#{} pruned from the local store; {shipped}",
            at - 1
        );
        let mut batch = vec![Queued {
            event: e,
            owes: false,
            settles: None,
            durable: None,
        }];
        self.write_batch(&mut batch, false);
        let first = {
            let mut store = self.store.db.lock();
            store.prune(&prefix)?;
            // Segments whose events are all pruned go too (events not yet
            // in the store are in the current one or later).
            store.first_segment()?
        }
        .unwrap_or(self.segments.current());
        self.segments.remove_before(first)?;
        self.pruned = prefix;
        self.shared.pruned.store(at, Ordering::Release);
        tracing::info!(
            from = pruned,
            to = at,
            "audit retention pruned events from the local store"
        );
        Ok(())
    }
}
