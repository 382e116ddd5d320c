//! Subtree roots kept beside the leaves, so that a tree head, a proof's
//! subtree or the gateway's start reads O(log n) hashes instead of every
//! leaf: the root of every perfect, aligned subtree of 2^8, 2^16, 2^24 …
//! leaves (the C2SP `tlog-tiles` heights: 256 hashes of one level make one
//! of the next). A range of leaves is read through the highest stored
//! level that covers whole subtrees of it, and from the leaves where none
//! does (the last, incomplete 256 leaves; a store whose roots are not all
//! written yet).
//!
//! Why not a crate: the tile crates on crates.io serve tiles over HTTP
//! from their own storage; here the roots live in the audit store's
//! SQLite file, written in the same transactions as the leaves.
//!
//! Must never: take a stored root for a range it does not cover exactly,
//! or answer a range from leaves that are not all there (the reader names
//! the missing one).

use super::{node_hash, root, split, Frontier, Hash};

/// Levels apart of two stored heights (2^8 = 256 roots of one level make
/// one of the next).
pub const STEP: u32 = 8;

/// Where stored subtree roots and leaves are read from (the audit store).
pub trait StoredNodes {
    type Error;
    /// The stored roots of the perfect subtrees of 2^`level` leaves with
    /// indexes `from..to`, in order; `None` unless every one is stored.
    fn nodes(&self, level: u32, from: u64, to: u64) -> Result<Option<Vec<Hash>>, Self::Error>;
    /// MTH of leaves `a..b` read one by one (an error names a missing one).
    fn leaves_root(&self, a: u64, b: u64) -> Result<Hash, Self::Error>;
}

/// MTH(D[a:b]) (`a < b`), from stored roots wherever a perfect, aligned
/// subtree of at least 2^`step` leaves lies inside the range, from the
/// leaves elsewhere.
pub fn range_root<S: StoredNodes + ?Sized>(
    src: &S,
    step: u32,
    a: u64,
    b: u64,
) -> Result<Hash, S::Error> {
    let n = b - a;
    if n.is_power_of_two() && a.is_multiple_of(n) {
        let height = n.trailing_zeros();
        let level = height - height % step;
        if level > 0 {
            if let Some(hashes) = src.nodes(level, a >> level, b >> level)? {
                // The 2^(height - level) roots are the leaves of the
                // subtree's top.
                return Ok(root(&hashes));
            }
        }
    }
    if n <= 1 << step {
        return src.leaves_root(a, b);
    }
    let k = split(n as usize) as u64;
    Ok(node_hash(
        &range_root(src, step, a, a + k)?,
        &range_root(src, step, a + k, b)?,
    ))
}

/// The perfect subtrees of a tree of `size` leaves, largest first, as
/// `(first, end)` leaf ranges: the ranges of its frontier's heads.
pub fn head_ranges(size: u64) -> Vec<(u64, u64)> {
    let mut start = 0;
    (0..64)
        .rev()
        .map(|bit| 1u64 << bit)
        .filter(|w| size & w != 0)
        .map(|w| {
            start += w;
            (start - w, start)
        })
        .collect()
}

/// Computes the roots to store from leaves pushed in index order: emits
/// `(level, index, root)` for every aligned subtree of 2^`step`,
/// 2^(2·`step`) … leaves it saw whole. Memory: 2^`step` hashes a level.
#[derive(Debug)]
pub struct NodeBuilder {
    step: u32,
    /// The next leaf's index.
    next: u64,
    /// Per level (leaves first), the roots of the current group so far;
    /// `None` while the group began before the first leaf pushed.
    groups: Vec<Option<Vec<Hash>>>,
}

impl NodeBuilder {
    /// A builder whose first leaf will be `first`.
    pub fn new(step: u32, first: u64) -> Self {
        Self {
            step,
            next: first,
            groups: Vec::new(),
        }
    }

    /// The index the next leaf pushed must have.
    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn push(&mut self, leaf: Hash, emit: &mut dyn FnMut(u32, u64, Hash)) {
        let width = 1u64 << self.step;
        let mut index = self.next;
        self.next += 1;
        let mut hash = leaf;
        for depth in 0.. {
            if self.groups.len() <= depth {
                self.groups.push(None);
            }
            let group = &mut self.groups[depth];
            if index.is_multiple_of(width) {
                *group = Some(Vec::with_capacity(width as usize));
            }
            let Some(items) = group else { return };
            items.push(hash);
            if (items.len() as u64) < width {
                return;
            }
            let mut tree = Frontier::new();
            for h in items.drain(..) {
                tree.push(h);
            }
            *group = None;
            hash = tree.root();
            index /= width;
            emit(self.step * (depth as u32 + 1), index, hash);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::merkle::{leaf_hash, root};
    use std::cell::Cell;
    use std::collections::BTreeMap;

    /// Leaves and the roots a `NodeBuilder` emitted for them, some roots
    /// left out; counts the leaves read.
    struct Mem {
        leaves: Vec<Hash>,
        nodes: BTreeMap<(u32, u64), Hash>,
        read: Cell<u64>,
    }

    impl StoredNodes for Mem {
        type Error = String;
        fn nodes(&self, level: u32, from: u64, to: u64) -> Result<Option<Vec<Hash>>, String> {
            Ok((from..to)
                .map(|i| self.nodes.get(&(level, i)).copied())
                .collect())
        }
        fn leaves_root(&self, a: u64, b: u64) -> Result<Hash, String> {
            self.read.set(self.read.get() + b - a);
            Ok(root(&self.leaves[a as usize..b as usize]))
        }
    }

    fn mem(n: u64, step: u32, first: u64) -> Mem {
        let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut nodes = BTreeMap::new();
        let mut b = NodeBuilder::new(step, first);
        for leaf in &leaves[first as usize..] {
            b.push(*leaf, &mut |level, i, h| {
                assert!(nodes.insert((level, i), h).is_none(), "emitted twice");
            });
        }
        Mem {
            leaves,
            nodes,
            read: Cell::new(0),
        }
    }

    #[test]
    fn the_builder_emits_exactly_the_roots_of_whole_aligned_subtrees() {
        let (step, n) = (2, 70);
        let m = mem(n, step, 0);
        let mut want = BTreeMap::new();
        for level in [2u32, 4, 6] {
            let w = 1u64 << level;
            for i in 0..n / w {
                want.insert(
                    (level, i),
                    root(&m.leaves[(i * w) as usize..((i + 1) * w) as usize]),
                );
            }
        }
        assert_eq!(m.nodes, want);
        // Started mid-log: nothing for a group begun before its first leaf.
        let m = mem(n, step, 20);
        let keys: Vec<(u32, u64)> = m.nodes.keys().copied().collect();
        assert!(keys.contains(&(2, 5)) && !keys.contains(&(2, 4)));
        assert!(keys.contains(&(4, 2)) && !keys.contains(&(4, 1)));
        assert!(!keys.iter().any(|k| k.0 == 6), "{keys:?}");
    }

    #[test]
    fn every_range_root_matches_the_leaves_with_or_without_stored_roots() {
        let step = 2;
        for n in [1u64, 3, 4, 17, 64, 70, 100] {
            let mut m = mem(n, step, 0);
            for gaps in [false, true] {
                if gaps {
                    // Roots missing: ranges fall back to the level below.
                    m.nodes.retain(|(level, i), _| (*level, *i % 3) != (2, 1));
                    m.nodes.remove(&(4, 0));
                }
                for a in 0..n {
                    for b in a + 1..=n {
                        let got = range_root(&m, step, a, b).unwrap();
                        assert_eq!(got, root(&m.leaves[a as usize..b as usize]), "{n} {a}..{b}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_range_under_stored_roots_reads_only_the_leaves_after_them() {
        let (step, n) = (2, 100);
        let m = mem(n, step, 0);
        range_root(&m, step, 0, 64).unwrap();
        assert_eq!(m.read.get(), 0, "one stored root of level 6");
        range_root(&m, step, 0, n).unwrap();
        assert_eq!(m.read.get(), 0, "100 = 64 + 32 + 4, all stored");
        range_root(&m, step, 0, 99).unwrap();
        assert_eq!(m.read.get(), 3, "the last three leaves");
    }

    #[test]
    fn head_ranges_are_the_frontiers_perfect_subtrees() {
        assert_eq!(head_ranges(0), vec![]);
        assert_eq!(head_ranges(13), vec![(0, 8), (8, 12), (12, 13)]);
        assert_eq!(head_ranges(16), vec![(0, 16)]);
    }
}
