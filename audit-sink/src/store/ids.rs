//! A block's filter of request ids: a Bloom filter over the ids of its
//! events, kept in the block's row (`blocks.ids`) beside its time range
//! and tenants, so a lookup by request id decodes only the blocks that may
//! hold it. Without it every block's body was read and decoded (0.10 s on
//! a store of 2.4M events, against 0.01–0.02 s when each event had an
//! indexed row).
//!
//! The bits: at least ten per id, rounded up to a power of two (at most
//! 64 KiB for a block of 4,096), seven probes from one 64-bit XXH3 hash
//! (double hashing: `h1 + i·h2`) — under 1% of the blocks that do not hold
//! an id are read anyway. XXH3 is specified and stable across versions and
//! platforms, which a filter on disk needs (`std`'s hasher is neither).
//! The first byte says the format; a filter in a format this build does
//! not know rules nothing out.
//!
//! Must never: say a block does not hold an id one of its events has.

use xxhash_rust::xxh3::xxh3_64;

const VERSION: u8 = 1;
const BITS_PER_ID: usize = 10;
const PROBES: u64 = 7;

/// The filter of `ids`.
pub(crate) fn build<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> Vec<u8> {
    let bits = (ids.len() * BITS_PER_ID).max(64).next_power_of_two();
    let mut filter = vec![0u8; 1 + bits / 8];
    filter[0] = VERSION;
    for id in ids {
        for bit in probes(id, bits) {
            filter[1 + bit / 8] |= 1 << (bit % 8);
        }
    }
    filter
}

/// False only when no id the filter was built from is `id`.
pub(crate) fn may_hold(filter: &[u8], id: &str) -> bool {
    match filter.split_first() {
        Some((&VERSION, bits)) if bits.len().is_power_of_two() => {
            probes(id, bits.len() * 8).all(|b| bits[b / 8] & (1 << (b % 8)) != 0)
        }
        _ => true,
    }
}

/// The bits `id` sets in a filter of `bits` bits (a power of two).
fn probes(id: &str, bits: usize) -> impl Iterator<Item = usize> {
    let h = xxh3_64(id.as_bytes());
    let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
    (0..PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) as usize) & (bits - 1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i:08}")).collect()
    }

    #[test]
    fn holds_every_id_it_was_built_from() {
        for n in [0, 1, 7, 100, 4096] {
            let held = ids("req", n);
            let f = build(held.iter().map(String::as_str));
            assert_eq!(f[0], VERSION);
            assert!((f.len() - 1).is_power_of_two(), "{n}: {} bytes", f.len());
            assert!((f.len() - 1) * 8 >= n * BITS_PER_ID, "{n}");
            for id in &held {
                assert!(may_hold(&f, id), "{n}: {id}");
            }
        }
    }

    #[test]
    fn rules_out_nearly_every_other_id() {
        for n in [1, 100, 4096] {
            let f = build(ids("req", n).iter().map(String::as_str));
            let others = ids("other", 20_000);
            let false_hits = others.iter().filter(|id| may_hold(&f, id)).count();
            // 10 bits and 7 probes an id: ~0.8% at most.
            assert!(false_hits < 300, "{n}: {false_hits} of 20,000");
        }
    }

    /// The bits are part of the store's format: the same ids give the
    /// same filter on every build and platform.
    #[test]
    fn the_bits_are_fixed() {
        let f = build(["a", "0191b7f2-7c2e-7a51-9b1e-0c5d3a1f2e4d"].into_iter());
        let set: Vec<usize> = (0..(f.len() - 1) * 8)
            .filter(|b| f[1 + b / 8] & (1 << (b % 8)) != 0)
            .collect();
        assert_eq!(f.len(), 1 + 8);
        assert_eq!(set, expected_bits());
    }

    /// Computed apart from this code, with the `xxhash` package from PyPI
    /// (`xxh3_64_intdigest`) and the same double hashing in Python.
    fn expected_bits() -> Vec<usize> {
        vec![4, 5, 13, 15, 22, 31, 32, 41, 42, 50, 52, 59]
    }

    #[test]
    fn xxh3_is_the_published_function() {
        // XXH3_64bits of the empty input (xxHash's reference value).
        assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn a_filter_this_build_cannot_read_rules_nothing_out() {
        for f in [
            vec![],
            vec![2, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![VERSION, 0, 0, 0],
        ] {
            assert!(may_hold(&f, "anything"), "{f:?}");
        }
        let empty = build(std::iter::empty());
        assert!(!may_hold(&empty, "anything"));
    }
}
