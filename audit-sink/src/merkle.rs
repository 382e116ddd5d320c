//! The Merkle tree of RFC 9162 (Certificate Transparency v2) §2.1 over leaf
//! hashes: tree heads, inclusion and consistency proofs and their
//! verification, and a compact `Frontier` that appends in O(log n).

use sha2::{Digest, Sha256};

pub mod stored;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH(D[n]) over already-hashed leaves.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// Where proofs read subtree heads from: every leaf (a slice), or a log
/// whose oldest leaves were pruned (`PrunedLog`).
pub trait Nodes {
    /// The number of leaves in the log.
    fn size(&self) -> u64;
    /// MTH(D[a:b]); `None` when leaves it needs were pruned.
    fn range_root(&self, a: u64, b: u64) -> Option<Hash>;
}

impl Nodes for [Hash] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn range_root(&self, a: u64, b: u64) -> Option<Hash> {
        (a < b && b <= self.len() as u64).then(|| root(&self[a as usize..b as usize]))
    }
}

/// PATH(m, D[n]): the inclusion proof of leaf `index` in the tree of
/// `leaves`. `None` when `index` is out of range.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    inclusion_proof_in(leaves, index as u64, leaves.len() as u64)
}

/// PATH(index, D[size]) over any `Nodes`. `None` when `index` is out of
/// range or the proof needs pruned leaves.
pub fn inclusion_proof_in<N: Nodes + ?Sized>(
    nodes: &N,
    index: u64,
    size: u64,
) -> Option<Vec<Hash>> {
    if index >= size || size > nodes.size() {
        return None;
    }
    let mut proof = Vec::new();
    path(nodes, index, 0, size, &mut proof)?;
    Some(proof)
}

fn path<N: Nodes + ?Sized>(nodes: &N, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) -> Option<()> {
    if hi - lo <= 1 {
        return Some(());
    }
    let k = split((hi - lo) as usize) as u64;
    if m < lo + k {
        path(nodes, m, lo, lo + k, out)?;
        out.push(nodes.range_root(lo + k, hi)?);
    } else {
        path(nodes, m, lo + k, hi, out)?;
        out.push(nodes.range_root(lo, lo + k)?);
    }
    Some(())
}

/// PROOF(m, D[n]): the consistency proof between the tree of the first `m`
/// leaves and the tree of all `leaves`. `None` unless `0 < m <= n`.
pub fn consistency_proof(leaves: &[Hash], m: usize) -> Option<Vec<Hash>> {
    consistency_proof_in(leaves, m as u64, leaves.len() as u64)
}

/// PROOF(first, D[second]) over any `Nodes`. `None` unless
/// `0 < first <= second`, or when the proof needs pruned leaves.
pub fn consistency_proof_in<N: Nodes + ?Sized>(
    nodes: &N,
    first: u64,
    second: u64,
) -> Option<Vec<Hash>> {
    if first == 0 || first > second || second > nodes.size() {
        return None;
    }
    let mut proof = Vec::new();
    subproof(nodes, first, 0, second, true, &mut proof)?;
    Some(proof)
}

fn subproof<N: Nodes + ?Sized>(
    nodes: &N,
    m: u64,
    lo: u64,
    hi: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Option<()> {
    let n = hi - lo;
    if m == n {
        if !complete {
            out.push(nodes.range_root(lo, hi)?);
        }
        return Some(());
    }
    let k = split(n as usize) as u64;
    if m <= k {
        subproof(nodes, m, lo, lo + k, complete, out)?;
        out.push(nodes.range_root(lo + k, hi)?);
    } else {
        subproof(nodes, m - k, lo + k, hi, false, out)?;
        out.push(nodes.range_root(lo, lo + k)?);
    }
    Some(())
}

/// A log whose first `prefix.size()` leaves were pruned: the heads of the
/// perfect subtrees that covered them (the frontier at that size) stand in
/// for them. It can still append, compute every later tree head, and prove
/// the inclusion of any kept leaf and the consistency of any tree at least
/// as large as the pruned prefix with a later one; nothing that needs a
/// pruned leaf itself.
#[derive(Debug, Clone, Default)]
pub struct PrunedLog {
    pub prefix: Frontier,
    /// The kept leaves, from `prefix.size()` on.
    pub leaves: Vec<Hash>,
}

impl PrunedLog {
    /// The frontier of the whole log.
    pub fn frontier(&self) -> Frontier {
        let mut f = self.prefix.clone();
        for leaf in &self.leaves {
            f.push(*leaf);
        }
        f
    }
}

impl Nodes for PrunedLog {
    fn size(&self) -> u64 {
        self.prefix.size() + self.leaves.len() as u64
    }
    fn range_root(&self, a: u64, b: u64) -> Option<Hash> {
        let p = self.prefix.size();
        if a >= b || b > self.size() {
            return None;
        }
        range_root_after(&self.prefix, a, b, &mut |a, b| {
            Some(root(&self.leaves[(a - p) as usize..(b - p) as usize]))
        })
    }
}

/// MTH(D[a:b]) of a log whose leaves before `prefix.size()` were pruned
/// (only the prefix's perfect subtrees are left of them): `kept(a, b)`
/// gives the root of a range of kept leaves. `None` when the range needs a
/// pruned leaf.
pub fn range_root_after(
    prefix: &Frontier,
    a: u64,
    b: u64,
    kept: &mut dyn FnMut(u64, u64) -> Option<Hash>,
) -> Option<Hash> {
    if a >= prefix.size() {
        return kept(a, b);
    }
    if let Some(head) = prefix.piece(a, b) {
        return Some(head);
    }
    if b - a == 1 {
        return None; // a pruned leaf
    }
    let k = split((b - a) as usize) as u64;
    Some(node_hash(
        &range_root_after(prefix, a, a + k, kept)?,
        &range_root_after(prefix, a + k, b, kept)?,
    ))
}

/// RFC 9162 §2.1.3.2: does `proof` show `leaf` at `index` in a tree of
/// `size` leaves with head `root`?
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: does `proof` show that the tree of `first` leaves with
/// head `first_root` is a prefix of the tree of `second` leaves with head
/// `second_root`?
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first == 0 || first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((head, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *first_root && sr == *second_root && s == 0
}

/// The right edge of a tree: the roots of its perfect subtrees, largest
/// first. Appending a leaf and computing the head are O(log n).
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// (subtree root, number of leaves under it)
    stack: Vec<(Hash, u64)>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        self.size += 1;
        self.stack.push((leaf, 1));
        while self.stack.len() >= 2 {
            let (r, rn) = self.stack[self.stack.len() - 1];
            let (l, ln) = self.stack[self.stack.len() - 2];
            if ln != rn {
                break;
            }
            self.stack.truncate(self.stack.len() - 2);
            self.stack.push((node_hash(&l, &r), ln + rn));
        }
    }

    /// The frontier of a tree of `size` leaves from the heads of its
    /// perfect subtrees, largest first (what `heads` returns). `None` when
    /// their number does not fit `size`.
    pub fn from_heads(size: u64, heads: &[Hash]) -> Option<Self> {
        let widths: Vec<u64> = stored::head_ranges(size)
            .into_iter()
            .map(|(a, b)| b - a)
            .collect();
        (widths.len() == heads.len()).then(|| Self {
            size,
            stack: heads.iter().copied().zip(widths).collect(),
        })
    }

    /// The heads of the perfect subtrees, largest first.
    pub fn heads(&self) -> Vec<Hash> {
        self.stack.iter().map(|(h, _)| *h).collect()
    }

    /// The head of the perfect subtree covering exactly leaves `a..b`, if
    /// it is one of this frontier's.
    pub fn piece(&self, a: u64, b: u64) -> Option<Hash> {
        let mut start = 0;
        for (head, width) in &self.stack {
            if start == a && start + width == b {
                return Some(*head);
            }
            start += width;
        }
        None
    }

    pub fn root(&self) -> Hash {
        let mut iter = self.stack.iter().rev();
        let Some((last, _)) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, (left, _)| node_hash(left, &acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("event {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn known_answer_empty_and_single() {
        // RFC 6962 test vectors (the empty tree; a tree with the empty leaf).
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn frontier_matches_recursive_root() {
        let all = leaves(70);
        let mut f = Frontier::new();
        assert_eq!(f.root(), root(&[]));
        for n in 1..=all.len() {
            f.push(all[n - 1]);
            assert_eq!(f.root(), root(&all[..n]), "size {n}");
        }
    }

    #[test]
    fn inclusion_proofs_verify_and_tampering_fails() {
        let all = leaves(33);
        for n in 1..=all.len() {
            let head = root(&all[..n]);
            for m in 0..n {
                let proof = inclusion_proof(&all[..n], m).unwrap_or_default();
                assert!(verify_inclusion(&all[m], m as u64, n as u64, &proof, &head));
                let other = (m + 1) % n;
                if other != m {
                    assert!(!verify_inclusion(
                        &all[other],
                        m as u64,
                        n as u64,
                        &proof,
                        &head
                    ));
                }
                if let Some(first) = proof.first() {
                    let mut forged = proof.clone();
                    forged[0] = node_hash(first, first);
                    assert!(!verify_inclusion(
                        &all[m], m as u64, n as u64, &forged, &head
                    ));
                }
                assert!(!verify_inclusion(
                    &all[m], n as u64, n as u64, &proof, &head
                ));
            }
        }
    }

    #[test]
    fn a_pruned_log_proves_what_it_kept_and_nothing_it_pruned() {
        let all = leaves(45);
        for p in 1..all.len() {
            let mut prefix = Frontier::new();
            for l in &all[..p] {
                prefix.push(*l);
            }
            let heads = Frontier::from_heads(p as u64, &prefix.heads()).unwrap();
            let log = PrunedLog {
                prefix: heads,
                leaves: all[p..].to_vec(),
            };
            let n = all.len() as u64;
            assert_eq!(log.frontier().root(), root(&all), "head after pruning {p}");
            for m in p as u64..=n {
                assert_eq!(
                    consistency_proof_in(&log, m, n),
                    consistency_proof(&all, m as usize),
                    "consistency {m}->{n} after pruning {p}"
                );
            }
            for i in p as u64..n {
                assert_eq!(
                    inclusion_proof_in(&log, i, n),
                    inclusion_proof(&all, i as usize),
                    "inclusion of {i} after pruning {p}"
                );
            }
            // Leaf 0's proof needs leaf 1: pruned from p = 2 on.
            if p >= 2 {
                assert_eq!(inclusion_proof_in(&log, 0, n), None, "after pruning {p}");
                assert_eq!(consistency_proof_in(&log, 1, n), None, "after pruning {p}");
            }
        }
        assert!(Frontier::from_heads(5, &[leaf_hash(b"x")]).is_none());
    }

    #[test]
    fn consistency_proofs_verify_and_tampering_fails() {
        let all = leaves(33);
        for n in 1..=all.len() {
            let second = root(&all[..n]);
            for m in 1..=n {
                let first = root(&all[..m]);
                let proof = consistency_proof(&all[..n], m).unwrap_or_default();
                assert!(
                    verify_consistency(m as u64, n as u64, &first, &second, &proof),
                    "{m} {n}"
                );
                if m < n {
                    let mut forged = all[..n].to_vec();
                    forged[m - 1] = leaf_hash(b"rewritten");
                    let forged_first = root(&forged[..m]);
                    assert!(!verify_consistency(
                        m as u64,
                        n as u64,
                        &forged_first,
                        &second,
                        &proof
                    ));
                }
            }
        }
    }
}
