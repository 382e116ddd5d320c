//! Backend selection. Candidates arrive already filtered by policy; this
//! picks one that is available (healthy, not ejected) and not yet tried for
//! this request. When every untried candidate is unavailable, it still picks
//! one of them: a stale health mark must not turn into a refusal without a
//! try.

use std::sync::Arc;

use crate::backend::BackendState;

/// How a route spreads requests over its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Fewest requests in flight (ours, or the backend's own report when it
    /// sees more); ties rotate.
    #[default]
    LeastOutstanding,
    /// Lowest latency EWMA weighted by requests in flight (peak-EWMA);
    /// unmeasured backends first.
    LatencyEwma,
    /// Weighted round robin by each backend's `weight`.
    Weighted,
    /// The first available backend in the route's order (failover).
    Priority,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "least_outstanding" => Some(Self::LeastOutstanding),
            "latency_ewma" => Some(Self::LatencyEwma),
            "weighted" => Some(Self::Weighted),
            "priority" => Some(Self::Priority),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeastOutstanding => "least_outstanding",
            Self::LatencyEwma => "latency_ewma",
            Self::Weighted => "weighted",
            Self::Priority => "priority",
        }
    }
}

/// Picks the index (into `candidates`) of the backend to try next, or None
/// when every candidate was tried. `turn` is a counter that rotates ties and
/// drives weighted round robin.
pub fn choose(
    strategy: Strategy,
    candidates: &[Arc<BackendState>],
    tried: &[usize],
    turn: u64,
) -> Option<usize> {
    let untried: Vec<usize> = (0..candidates.len())
        .filter(|i| !tried.contains(i))
        .collect();
    if untried.is_empty() {
        return None;
    }
    let available: Vec<usize> = untried
        .iter()
        .copied()
        .filter(|&i| candidates[i].available())
        .collect();
    let pool = if available.is_empty() {
        &untried
    } else {
        &available
    };
    let n = pool.len();
    // Ties start from a scrambled offset: a plain counter would hand the same
    // parity to two callers that alternate (and starve one backend of one).
    let offset = (splitmix64(turn) % n as u64) as usize;
    let rotated = |k: usize| pool[(k + offset) % n];
    let pick = match strategy {
        Strategy::Priority => pool[0],
        Strategy::LeastOutstanding => (0..n)
            .map(rotated)
            .min_by_key(|&i| candidates[i].load())
            .unwrap_or(pool[0]),
        Strategy::LatencyEwma => (0..n)
            .map(rotated)
            .min_by_key(|&i| {
                let b = &candidates[i];
                b.ewma_us().saturating_mul(b.outstanding() + 1)
            })
            .unwrap_or(pool[0]),
        Strategy::Weighted => {
            let total: u64 = pool
                .iter()
                .map(|&i| u64::from(candidates[i].spec.weight.max(1)))
                .sum();
            let mut point = turn % total.max(1);
            let mut chosen = pool[0];
            for &i in pool {
                let w = u64::from(candidates[i].spec.weight.max(1));
                if point < w {
                    chosen = i;
                    break;
                }
                point -= w;
            }
            chosen
        }
    };
    Some(pick)
}

/// SplitMix64: a well-mixed 64-bit value from a counter.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendKind, BackendSpec};
    use std::time::Duration;

    fn backend(name: &str, weight: u32) -> Arc<BackendState> {
        Arc::new(BackendState::new(BackendSpec {
            name: name.into(),
            kind: BackendKind::Vllm,
            url: format!("http://{name}"),
            location: "on_prem".into(),
            weight,
            api_key: None,
            timeout: Duration::from_secs(1),
            health_interval: Duration::from_secs(1),
            pin: None,
        }))
    }

    #[test]
    fn least_outstanding_prefers_the_idle_backend() {
        let c = vec![backend("a", 1), backend("b", 1)];
        c[0].start_request();
        for turn in 0..4 {
            assert_eq!(choose(Strategy::LeastOutstanding, &c, &[], turn), Some(1));
        }
        // The backend's own report counts when it sees more than we sent.
        c[1].set_reported_load(5);
        assert_eq!(choose(Strategy::LeastOutstanding, &c, &[], 0), Some(0));
    }

    #[test]
    fn ties_are_spread_even_over_every_other_turn() {
        let c = vec![backend("a", 1), backend("b", 1)];
        // Two callers alternating on one counter: each still reaches both.
        for parity in 0..2u64 {
            let picks: Vec<_> = (0..32)
                .map(|k| choose(Strategy::LeastOutstanding, &c, &[], 2 * k + parity))
                .collect();
            let to_a = picks.iter().filter(|p| **p == Some(0)).count();
            assert!((8..=24).contains(&to_a), "parity {parity}: {picks:?}");
        }
    }

    #[test]
    fn ejected_backends_are_skipped_and_tried_ones_excluded() {
        let c = vec![backend("a", 1), backend("b", 1), backend("c", 1)];
        c[0].record_failure();
        for turn in 0..6 {
            assert_ne!(choose(Strategy::LeastOutstanding, &c, &[], turn), Some(0));
        }
        assert_eq!(choose(Strategy::Priority, &c, &[], 0), Some(1));
        assert_eq!(choose(Strategy::Priority, &c, &[1], 0), Some(2));
        // Only the ejected one is left untried: it still gets its try.
        assert_eq!(choose(Strategy::Priority, &c, &[1, 2], 0), Some(0));
        assert_eq!(choose(Strategy::Priority, &c, &[0, 1, 2], 0), None);
    }

    #[test]
    fn weighted_round_robin_follows_weights() {
        let c = vec![backend("a", 3), backend("b", 1)];
        let picks: Vec<_> = (0..8)
            .filter_map(|t| choose(Strategy::Weighted, &c, &[], t))
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 2);
    }

    #[test]
    fn latency_ewma_prefers_the_faster_backend() {
        let c = vec![backend("slow", 1), backend("fast", 1)];
        c[0].record_success(Duration::from_millis(50));
        c[1].record_success(Duration::from_millis(5));
        for turn in 0..4 {
            assert_eq!(choose(Strategy::LatencyEwma, &c, &[], turn), Some(1));
        }
    }
}
