//! Leases of the shared request counts: a replica takes a slice of a
//! limit's window from Redis (counted there as spent, in the same round
//! trip as a call's own check) and admits later calls from it in memory,
//! so at a steady rate most calls make no round trip; it asks for the
//! next slice in the background when half of one is left.
//!
//! How big a slice is: the calls this replica admitted against that limit
//! in the last `HORIZON` (a replica with one call a second asks for one
//! unit at a time, exactly as without leases, and a single call leases
//! nothing ahead), never more than a `SHARE`th of what
//! is left of the window (`shared.rs`) and at most `MAX_LEASE`. So the
//! total admitted never passes the limit (Redis counts every unit it
//! leased), and what can go unused is bounded: units a replica holds when
//! the window turns, or when its calls stop, are not given to another one
//! — at most about two horizons of its own traffic (a lease at half, and
//! the refill asked then), and once less than `2 × SHARE` is left of a
//! window every call checks with Redis.
//!
//! A replica that stops gracefully gives back what is left of its live
//! leases (`surrender`; Redis uncounts it, never below zero).
//!
//! When a lease ends: at the end of its window on Redis's clock, measured
//! on this replica's clock from when the request that got it was sent (so
//! never after the window's true end).
//!
//! Must never: admit a call from a unit that Redis did not lease, use a
//! unit twice, or use a unit past the end of the window it was counted in.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A lease is sized for this much of the replica's own traffic.
pub(super) const HORIZON: Duration = Duration::from_millis(100);
/// One grant takes at most this share of what is left of a window.
pub(super) const SHARE: u64 = 16;
/// The most units one grant asks for.
pub(super) const MAX_LEASE: u64 = 10_000;
/// Leases kept before expired ones are dropped.
const PRUNE_OVER: usize = 4096;

/// A limit's counter for one subject in one window length (its Redis
/// base key and the window's seconds).
pub(super) type Key = String;

/// Units Redis counted for this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Grant {
    /// The window's start, on Redis's clock (seconds).
    pub(super) window: u64,
    pub(super) units: u64,
    /// When the window ends, on this replica's clock.
    pub(super) ends: Instant,
}

#[derive(Debug)]
struct Lease {
    window: u64,
    ends: Instant,
    left: u64,
    /// The last grant's size: a refill is asked for at half of it left.
    granted: u64,
    /// Calls admitted in the period that started at `period`, and in the
    /// one before (`HORIZON` each): the rate the next grant is sized for.
    period: Instant,
    calls: u64,
    calls_before: u64,
    refilling: bool,
}

impl Lease {
    fn live(&self, now: Instant) -> bool {
        now < self.ends
    }

    /// Starts a new period when `HORIZON` has passed (the calls of the
    /// one that ended count as the period before only if it ended just
    /// now: an idle spell forgets the rate).
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.period);
        if elapsed >= HORIZON {
            self.calls_before = if elapsed < 2 * HORIZON { self.calls } else { 0 };
            self.calls = 0;
            self.period = now;
        }
    }

    /// Counts a call admitted against the limit.
    fn note(&mut self, now: Instant) {
        self.roll(now);
        self.calls += 1;
    }

    /// Units to ask for: the calls of the last full period, or of this
    /// one if more (a rate that grows is followed within a period).
    fn want(&mut self, now: Instant) -> u64 {
        self.roll(now);
        self.calls.max(self.calls_before).clamp(1, MAX_LEASE)
    }
}

/// This replica's leases.
#[derive(Default)]
pub(super) struct Leases {
    map: Mutex<HashMap<Key, Lease>>,
}

impl Leases {
    /// Takes one unit from the live lease of each key that has one left:
    /// per key, the window the unit came from (the caller gives it back
    /// if the call is refused), or None (the call must ask Redis).
    pub(super) fn take(&self, keys: &[Option<Key>], now: Instant) -> Vec<Option<u64>> {
        let mut map = self.map.lock();
        keys.iter()
            .map(|k| {
                let lease = map.get_mut(k.as_ref()?)?;
                if !lease.live(now) || lease.left == 0 {
                    return None;
                }
                lease.left -= 1;
                lease.note(now);
                Some(lease.window)
            })
            .collect()
    }

    /// Gives back the units `take` took (its answer for the same keys),
    /// to leases still in the same window.
    pub(super) fn give_back(&self, keys: &[Option<Key>], taken: &[Option<u64>], now: Instant) {
        let mut map = self.map.lock();
        for (key, window) in keys.iter().zip(taken) {
            let (Some(key), Some(window)) = (key, window) else {
                continue;
            };
            if let Some(lease) = map.get_mut(key) {
                if lease.window == *window && lease.live(now) {
                    lease.left += 1;
                    lease.calls = lease.calls.saturating_sub(1);
                }
            }
        }
    }

    /// How many units to ask Redis for, for `key`: one for a key never
    /// leased here.
    pub(super) fn want(&self, key: &Key, now: Instant) -> u64 {
        self.map.lock().get_mut(key).map_or(1, |l| l.want(now))
    }

    /// A grant from a call's own check: one unit is the call's, the rest
    /// is leased.
    pub(super) fn granted(&self, key: &Key, grant: Grant, now: Instant) {
        let mut map = self.map.lock();
        let lease = map.entry(key.clone()).or_insert_with(|| Lease {
            window: grant.window,
            ends: grant.ends,
            left: 0,
            granted: 0,
            period: now,
            calls: 0,
            calls_before: 0,
            refilling: false,
        });
        let used = Grant {
            units: grant.units.saturating_sub(1),
            ..grant
        };
        add(lease, used, now);
        lease.note(now);
        prune(&mut map, now);
    }

    /// The keys whose lease runs low (half of its last grant or less) and
    /// is not being refilled, each with the units to ask for; they are
    /// marked as being refilled until `refilled`.
    pub(super) fn to_refill(&self, keys: &[Option<Key>], now: Instant) -> Vec<(Key, u64)> {
        let mut map = self.map.lock();
        let mut due = Vec::new();
        for key in keys.iter().flatten() {
            let Some(lease) = map.get_mut(key) else {
                continue;
            };
            let want = lease.want(now);
            if lease.refilling || !lease.live(now) || want < 2 || lease.left * 2 > lease.granted {
                continue;
            }
            lease.refilling = true;
            due.push((key.clone(), want));
        }
        due
    }

    /// The answer to a refill: units to add (none when Redis had none to
    /// lease or could not answer).
    pub(super) fn refilled(&self, key: &Key, grant: Option<Grant>, now: Instant) {
        let mut map = self.map.lock();
        if let Some(lease) = map.get_mut(key) {
            lease.refilling = false;
            if let Some(grant) = grant.filter(|g| g.units > 0) {
                add(lease, grant, now);
            }
        }
    }

    /// Ends every lease and says what was left of each live one (key,
    /// window, units) for Redis to uncount: a replica that stops gives
    /// back the units it will never use. Calls after this ask Redis for
    /// themselves.
    pub(super) fn surrender(&self, now: Instant) -> Vec<(Key, u64, u64)> {
        self.map
            .lock()
            .drain()
            .filter(|(_, l)| l.live(now) && l.left > 0)
            .map(|(key, l)| (key, l.window, l.left))
            .collect()
    }

    /// Units left in `key`'s live lease (for tests and metrics).
    #[cfg(test)]
    pub(super) fn left(&self, key: &Key, now: Instant) -> u64 {
        self.map
            .lock()
            .get(key)
            .filter(|l| l.live(now))
            .map_or(0, |l| l.left)
    }
}

/// Adds a grant to a lease: to its units in the same window, in place of
/// them in a later one (what was left of an ended window is not usable),
/// and not at all for an earlier one (a refill that crossed a turn).
fn add(lease: &mut Lease, grant: Grant, now: Instant) {
    if grant.window < lease.window {
        return;
    }
    if grant.window > lease.window || !lease.live(now) {
        lease.window = grant.window;
        lease.ends = grant.ends;
        lease.left = 0;
    }
    lease.ends = lease.ends.max(grant.ends);
    lease.left += grant.units;
    lease.granted = grant.units;
}

fn prune(map: &mut HashMap<Key, Lease>, now: Instant) {
    if map.len() > PRUNE_OVER {
        map.retain(|_, l| l.live(now) || l.refilling);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn key(k: &str) -> Option<Key> {
        Some(k.to_string())
    }

    fn grant(window: u64, units: u64, ends: Instant) -> Grant {
        Grant {
            window,
            units,
            ends,
        }
    }

    #[test]
    fn a_call_takes_a_unit_only_from_a_live_lease_with_units_left() {
        let l = Leases::default();
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(10);
        assert_eq!(l.take(&[key("a"), None], t0), vec![None, None]);
        l.granted(&"a".into(), grant(60, 3, end), t0);
        // 3 granted: one was the call's, two are left.
        assert_eq!(l.left(&"a".into(), t0), 2);
        assert_eq!(l.take(&[key("a"), key("b")], t0), vec![Some(60), None]);
        assert_eq!(l.take(&[key("a")], t0), vec![Some(60)]);
        assert_eq!(l.take(&[key("a")], t0), vec![None], "spent");
        l.give_back(&[key("a")], &[Some(60)], t0);
        assert_eq!(l.take(&[key("a")], t0), vec![Some(60)], "given back");
        l.give_back(&[key("a")], &[Some(59)], t0);
        assert_eq!(l.left(&"a".into(), t0), 0, "not to another window");
        l.granted(&"a".into(), grant(60, 5, end), t0);
        assert_eq!(l.take(&[key("a")], end), vec![None], "the window ended");
        l.give_back(&[key("a")], &[Some(60)], end);
        assert_eq!(l.left(&"a".into(), end), 0);
    }

    #[test]
    fn grants_add_up_in_a_window_replace_an_ended_one_and_never_go_back() {
        let l = Leases::default();
        let t0 = Instant::now();
        let a: Key = "a".into();
        let end = t0 + Duration::from_secs(10);
        l.granted(&a, grant(60, 5, end), t0);
        // A refill of (window, units) -> units left.
        for (window, units, left) in [(60, 10, 14), (0, 50, 14), (120, 7, 7)] {
            l.to_refill(&[Some(a.clone())], t0);
            l.refilled(&a, Some(grant(window, units, end)), t0);
            assert_eq!(l.left(&a, t0), left, "after {units} in window {window}");
        }
        l.refilled(&a, None, t0);
        assert_eq!(l.left(&a, t0), 7, "a failed refill changes nothing");
    }

    #[test]
    fn a_lease_is_sized_for_the_calls_of_the_last_horizon() {
        let l = Leases::default();
        let t0 = Instant::now();
        assert_eq!(l.want(&"a".into(), t0), 1, "never leased here: one unit");
        // (calls this period, calls the period before, ms since this
        // period started) -> units wanted.
        for (calls, before, ms, want) in [
            (1, 0, 0, 1),
            (5, 0, 10, 5),
            (5, 80, 10, 80),
            (100, 0, 150, 100),
            (100, 7, 250, 1),
            (MAX_LEASE + 5, 0, 0, MAX_LEASE),
        ] {
            let mut lease = Lease {
                window: 0,
                ends: t0 + Duration::from_secs(60),
                left: 0,
                granted: 1,
                period: t0,
                calls,
                calls_before: before,
                refilling: false,
            };
            let now = t0 + Duration::from_millis(ms);
            assert_eq!(lease.want(now), want, "{calls}, {before} before, {ms} ms");
        }
    }

    #[test]
    fn a_refill_is_asked_once_at_half_a_grant_left() {
        let l = Leases::default();
        let t0 = Instant::now();
        let a: Key = "a".into();
        let end = t0 + Duration::from_secs(60);
        l.granted(&a, grant(0, 1, end), t0);
        assert!(
            l.to_refill(&[key("a")], t0).is_empty(),
            "one call leases nothing ahead"
        );
        l.granted(&a, grant(0, 1, end), t0);
        l.granted(&a, grant(0, 1, end), t0);
        assert_eq!(l.to_refill(&[key("a")], t0), vec![("a".into(), 3)]);
        assert!(l.to_refill(&[key("a")], t0).is_empty(), "one in flight");
        l.refilled(&a, Some(grant(0, 10, end)), t0);
        for _ in 0..4 {
            assert!(l.take(&[key("a")], t0)[0].is_some());
        }
        assert!(l.to_refill(&[key("a")], t0).is_empty(), "6 of 10 left");
        assert!(l.take(&[key("a")], t0)[0].is_some());
        assert_eq!(
            l.to_refill(&[key("a")], t0),
            vec![("a".into(), 8)],
            "5 of 10 left, 8 calls this period"
        );
        l.refilled(&a, None, t0);
        // A slow replica (a call a second) asks for none ahead.
        let b: Key = "b".into();
        for s in 0..3 {
            let at = t0 + Duration::from_secs(s);
            l.granted(&b, grant(0, 1, end), at);
            assert!(l.to_refill(&[key("b")], at).is_empty(), "call {s}");
        }
        assert!(
            l.to_refill(&[key("a")], end).is_empty(),
            "an ended lease is not refilled"
        );
    }
}
