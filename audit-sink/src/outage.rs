//! A condition met again and again while it lasts, logged once when it
//! starts, then as a count every `REPORT_EVERY`, and once when it ends —
//! not a line each time. The gateway's calls use it (the audit trail that
//! cannot record, limit counters out of reach: a full data volume at
//! saturation once wrote 176,431 ERROR lines in 8 s, to the stderr a log
//! collector may keep on that same volume) and so does the audit writer's
//! checkpoints (a full witness volume: a line per checkpoint, 98 in 3 s).
//! Whatever meets it is still counted exactly, in the metrics beside each
//! site. It lives here, the lowest crate both use.
//!
//! Not the `tracing` ecosystem's rate limiting: it drops lines by time
//! alone, where this reports how many met the condition and when it
//! ended. Something that meets none pays one relaxed atomic load
//! (`clear`); one that meets it, a few atomic operations (no lock: calls
//! run on async workers).
//!
//! Must never: decide anything, or hide the start of an outage (its first
//! hit is always logged, with its cause).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often a lasting condition is reported again.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// A call that goes through ends the condition only this long after the
/// last call that met it: a store that fails and recovers many times a
/// second (one write taken, the next refused) is one outage, not many.
pub const SETTLE: Duration = Duration::from_secs(1);

/// What a call meeting the condition should log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The first call since the condition (re)started.
    Started,
    /// `calls` more met it since the last report (this one included), over
    /// `secs` seconds.
    Still { calls: u64, secs: u64 },
    /// Nothing: it was reported less than `REPORT_EVERY` ago.
    Quiet,
}

/// Milliseconds since the process's first look at the clock, plus one
/// (0 stands for "never").
fn stamp(now: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(|| now);
    now.saturating_duration_since(base).as_millis() as u64 + 1
}

/// One condition, e.g. "the audit pipeline cannot accept an event". Kept
/// in atomics: the calls meeting it are on async workers, which must not
/// block on a lock.
pub struct Outage {
    /// What calls met, as the log says it.
    what: &'static str,
    active: AtomicBool,
    /// Calls that met it since it started.
    total: AtomicU64,
    /// Calls that met it since the last report.
    unreported: AtomicU64,
    /// Stamps (`stamp`): when it started, when it was last met, last
    /// reported.
    since: AtomicU64,
    last_hit: AtomicU64,
    reported: AtomicU64,
}

impl Outage {
    pub const fn new(what: &'static str) -> Self {
        Self {
            what,
            active: AtomicBool::new(false),
            total: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            since: AtomicU64::new(0),
            last_hit: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        }
    }

    /// A call met the condition: what to log for it.
    pub fn hit(&self) -> Report {
        self.hit_at(Instant::now())
    }

    fn hit_at(&self, now: Instant) -> Report {
        let t = stamp(now);
        self.last_hit.store(t, Ordering::Relaxed);
        if !self.active.swap(true, Ordering::AcqRel) {
            self.since.store(t, Ordering::Relaxed);
            self.reported.store(t, Ordering::Relaxed);
            self.unreported.store(0, Ordering::Relaxed);
            self.total.store(1, Ordering::Relaxed);
            return Report::Started;
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        self.unreported.fetch_add(1, Ordering::Relaxed);
        let reported = self.reported.load(Ordering::Relaxed);
        let every = REPORT_EVERY.as_millis() as u64;
        if reported == 0 || t.saturating_sub(reported) < every {
            return Report::Quiet;
        }
        // One call reports (the one that moves the stamp on).
        if self
            .reported
            .compare_exchange(reported, t, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Report::Quiet;
        }
        Report::Still {
            calls: self.unreported.swap(0, Ordering::Relaxed),
            secs: (t - reported) / 1000,
        }
    }

    /// A call went through without meeting it: if it was on (and last met
    /// `SETTLE` ago or more), it is over. Returns (calls that met it,
    /// seconds it lasted) when this call ends it. Inlined, and the clock
    /// read only while it is on: when nothing is (every call, nearly
    /// always), one relaxed load.
    #[inline]
    pub fn clear(&self) -> Option<(u64, u64)> {
        if !self.active.load(Ordering::Relaxed) {
            return None;
        }
        self.clear_at(Instant::now())
    }

    fn clear_at(&self, now: Instant) -> Option<(u64, u64)> {
        if !self.active.load(Ordering::Relaxed) {
            return None;
        }
        let t = stamp(now);
        let settle = SETTLE.as_millis() as u64;
        if t.saturating_sub(self.last_hit.load(Ordering::Relaxed)) < settle {
            return None;
        }
        if !self.active.swap(false, Ordering::AcqRel) {
            return None;
        }
        let lasted = t.saturating_sub(self.since.load(Ordering::Relaxed)) / 1000;
        Some((self.total.swap(0, Ordering::Relaxed), lasted))
    }

    /// `hit`, logged at ERROR with the cause (`action`: what was done with
    /// the calls, e.g. "refused (fail closed)").
    pub fn log_hit(&self, cause: &dyn std::fmt::Display, action: &str) {
        match self.hit() {
            Report::Started => tracing::error!(
                %cause,
                "{}: calls {action} until it recovers; counted in the metrics, reported again every {} s",
                self.what,
                REPORT_EVERY.as_secs()
            ),
            Report::Still { calls, secs } => tracing::error!(
                %cause,
                calls,
                over_s = secs,
                "{}: still; {calls} more calls {action} in the last {secs} s",
                self.what
            ),
            Report::Quiet => {}
        }
    }

    /// `clear`, logged at WARN when it ends the condition.
    #[inline]
    pub fn log_clear(&self) {
        if let Some((calls, secs)) = self.clear() {
            tracing::warn!(
                calls,
                lasted_s = secs,
                "{}: over; {calls} calls met it in {secs} s",
                self.what
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (when, a call that met it (true) or one that went through (false),
    /// what it reports)
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Seen {
        Hit(Report),
        Cleared(Option<(u64, u64)>),
    }

    /// In milliseconds after the start.
    const STEPS: &[(u64, bool, Seen)] = &[
        (0, false, Seen::Cleared(None)),
        (1_000, true, Seen::Hit(Report::Started)),
        // A call that went through right after one that did not: the same
        // outage.
        (1_200, false, Seen::Cleared(None)),
        (2_000, true, Seen::Hit(Report::Quiet)),
        (10_000, true, Seen::Hit(Report::Quiet)),
        (
            11_000,
            true,
            Seen::Hit(Report::Still { calls: 3, secs: 10 }),
        ),
        (12_000, true, Seen::Hit(Report::Quiet)),
        (
            25_000,
            true,
            Seen::Hit(Report::Still { calls: 2, secs: 14 }),
        ),
        (25_900, false, Seen::Cleared(None)),
        (26_000, false, Seen::Cleared(Some((6, 25)))),
        (27_000, false, Seen::Cleared(None)),
        // A new outage starts afresh.
        (30_000, true, Seen::Hit(Report::Started)),
        (31_500, false, Seen::Cleared(Some((1, 1)))),
    ];

    #[test]
    fn an_outage_is_reported_when_it_starts_every_ten_seconds_and_when_it_ends() {
        let o = Outage::new("test");
        let t0 = Instant::now();
        for &(at, hit, want) in STEPS {
            let now = t0 + Duration::from_millis(at);
            let got = if hit {
                Seen::Hit(o.hit_at(now))
            } else {
                Seen::Cleared(o.clear_at(now))
            };
            assert_eq!(got, want, "at {at} ms");
        }
    }
}
