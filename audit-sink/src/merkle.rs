//! The Merkle tree of RFC 9162 (Certificate Transparency v2) §2.1 over leaf
//! hashes: tree heads, inclusion and consistency proofs and their
//! verification, and a compact `Frontier` that appends in O(log n).

use sha2::{Digest, Sha256};

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

/// PATH(m, D[n]): the inclusion proof of leaf `index` in the tree of
/// `leaves`. `None` when `index` is out of range.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    path(index, leaves, &mut proof);
    Some(proof)
}

fn path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &leaves[..k], out);
        out.push(root(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(root(&leaves[..k]));
    }
}

/// PROOF(m, D[n]): the consistency proof between the tree of the first `m`
/// leaves and the tree of all `leaves`. `None` unless `0 < m <= n`.
pub fn consistency_proof(leaves: &[Hash], m: usize) -> Option<Vec<Hash>> {
    if m == 0 || m > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    subproof(m, leaves, true, &mut proof);
    Some(proof)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, out);
        out.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(root(&leaves[..k]));
    }
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
