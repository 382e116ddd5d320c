//! The paged KV cache's bookkeeping: which blocks each sequence holds,
//! which are free, and which full blocks are kept for reuse by the next
//! request that starts with the same tokens (prefix caching, as vLLM
//! does it: a full block is known by the hash of its tokens chained with
//! the hash of every block before it).
//!
//! Must never: hand out a block that a running sequence holds, or reuse a
//! cached block for tokens that differ from those it was filled with (the
//! chained hash covers the whole prefix, and the tokens are compared).

use std::collections::{HashMap, VecDeque};

/// A cached full block: its prefix hash and tokens.
#[derive(Debug, Clone)]
struct Cached {
    hash: u64,
    tokens: Vec<u32>,
}

/// What a sequence got when it was admitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub blocks: Vec<u32>,
    /// Leading tokens whose keys and values are already in the cache.
    pub cached_tokens: usize,
}

#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    refs: Vec<u32>,
    content: Vec<Option<Cached>>,
    /// Blocks nobody holds, least recently freed first. Cached ones among
    /// them keep their content until they are handed out again.
    free: VecDeque<u32>,
    by_hash: HashMap<u64, u32>,
}

/// FNV-1a over the previous hash and the block's tokens.
fn chain(prev: u64, tokens: &[u32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ prev;
    for t in tokens {
        for b in t.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl BlockManager {
    pub fn new(blocks: usize, block_size: usize) -> Self {
        Self {
            block_size,
            refs: vec![0; blocks],
            content: vec![None; blocks],
            free: (0..blocks as u32).collect(),
            by_hash: HashMap::new(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn total(&self) -> usize {
        self.refs.len()
    }
    pub fn free(&self) -> usize {
        self.free.len()
    }
    /// Fraction of blocks held by sequences (cached-but-free ones count as
    /// free: they are handed out when needed).
    pub fn usage(&self) -> f64 {
        if self.refs.is_empty() {
            return 0.0;
        }
        1.0 - self.free.len() as f64 / self.refs.len() as f64
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    fn take_free(&mut self) -> Option<u32> {
        let b = self.free.pop_front()?;
        if let Some(c) = self.content[b as usize].take() {
            if self.by_hash.get(&c.hash) == Some(&b) {
                self.by_hash.remove(&c.hash);
            }
        }
        self.refs[b as usize] = 1;
        Some(b)
    }

    fn hold(&mut self, b: u32) {
        if self.refs[b as usize] == 0 {
            self.free.retain(|&f| f != b);
        }
        self.refs[b as usize] += 1;
    }

    /// Blocks for a sequence whose prompt is `prompt`, with room for
    /// `reserve` more tokens; full blocks of the prompt's prefix found in
    /// the cache are shared, never the one holding its last token (whose
    /// logits must be computed). `None` when not enough blocks are free.
    pub fn admit(&mut self, prompt: &[u32], reserve: usize) -> Option<Admitted> {
        let bs = self.block_size;
        let needed = self.blocks_for(prompt.len() + reserve);
        let reusable = prompt.len().saturating_sub(1) / bs;
        let mut hits = Vec::new();
        let mut h = 0u64;
        for i in 0..reusable {
            let tokens = &prompt[i * bs..(i + 1) * bs];
            h = chain(h, tokens);
            match self.by_hash.get(&h) {
                Some(&b)
                    if self.content[b as usize]
                        .as_ref()
                        .is_some_and(|c| c.tokens == tokens) =>
                {
                    hits.push(b)
                }
                _ => break,
            }
        }
        // Free blocks needed: the new ones, plus hits that currently sit
        // in the free list (holding them takes them off it).
        let hits_free = hits.iter().filter(|&&b| self.refs[b as usize] == 0).count();
        if needed - hits.len() + hits_free > self.free.len() {
            return None;
        }
        for &b in &hits {
            self.hold(b);
        }
        let mut blocks = hits.clone();
        while blocks.len() < needed {
            blocks.push(self.take_free()?);
        }
        Some(Admitted {
            blocks,
            cached_tokens: hits.len() * bs,
        })
    }

    /// One more block for a growing sequence, if any is free.
    pub fn grow(&mut self, blocks: &mut Vec<u32>) -> bool {
        match self.take_free() {
            Some(b) => {
                blocks.push(b);
                true
            }
            None => false,
        }
    }

    /// Records the full blocks of `tokens` (held in `blocks`, in order) as
    /// reusable by later prompts with the same prefix.
    pub fn remember(&mut self, tokens: &[u32], blocks: &[u32]) {
        let bs = self.block_size;
        let mut h = 0u64;
        for (i, &b) in blocks.iter().enumerate().take(tokens.len() / bs) {
            let t = &tokens[i * bs..(i + 1) * bs];
            h = chain(h, t);
            if self.content[b as usize].is_none() && !self.by_hash.contains_key(&h) {
                self.content[b as usize] = Some(Cached {
                    hash: h,
                    tokens: t.to_vec(),
                });
                self.by_hash.insert(h, b);
            }
        }
    }

    /// Gives a sequence's blocks back; cached ones stay reusable until
    /// they are handed out again, the last freed last.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks.iter().rev() {
            let r = &mut self.refs[b as usize];
            *r = r.saturating_sub(1);
            if *r == 0 {
                if self.content[b as usize].is_some() {
                    self.free.push_back(b);
                } else {
                    // Nothing worth keeping: hand it out first.
                    self.free.push_front(b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_prefix_reuses_full_blocks_but_never_the_last_token() {
        let mut m = BlockManager::new(8, 4);
        let prompt: Vec<u32> = (0..10).collect();
        let a = m.admit(&prompt, 2).unwrap();
        assert_eq!((a.blocks.len(), a.cached_tokens), (3, 0));
        m.remember(&prompt, &a.blocks);
        // Same first 9 tokens, then different: two full blocks shared.
        let mut other = prompt[..9].to_vec();
        other.extend([99, 98]);
        let b = m.admit(&other, 1).unwrap();
        assert_eq!(b.cached_tokens, 8);
        assert_eq!(b.blocks[..2], a.blocks[..2]);
        assert_ne!(b.blocks[2], a.blocks[2]);
        // A prompt of exactly 8 tokens may reuse only the first block: the
        // second holds its last token.
        let c = m.admit(&prompt[..8], 0).unwrap();
        assert_eq!(c.cached_tokens, 4);
    }

    #[test]
    fn released_cached_blocks_serve_later_requests_until_evicted() {
        let mut m = BlockManager::new(4, 2);
        let p: Vec<u32> = vec![1, 2, 3, 4, 5];
        let a = m.admit(&p, 0).unwrap();
        m.remember(&p, &a.blocks);
        m.release(&a.blocks);
        assert_eq!(m.free(), 4);
        let b = m.admit(&p, 0).unwrap();
        assert_eq!(b.cached_tokens, 4);
        m.release(&b.blocks);
        // A different prompt needing every block evicts the cached ones.
        let q: Vec<u32> = vec![9; 8];
        let c = m.admit(&q, 0).unwrap();
        assert_eq!(c.cached_tokens, 0);
        m.release(&c.blocks);
        assert_eq!(m.admit(&p, 0).unwrap().cached_tokens, 0);
    }

    #[test]
    fn a_full_cache_refuses_instead_of_overcommitting() {
        let mut m = BlockManager::new(3, 4);
        let a = m.admit(&[1; 8], 0).unwrap();
        assert_eq!(a.blocks.len(), 2);
        assert!(m.admit(&[2; 8], 0).is_none());
        let mut blocks = a.blocks.clone();
        assert!(m.grow(&mut blocks));
        assert!(!m.grow(&mut blocks));
        assert_eq!(m.usage(), 1.0);
        m.release(&blocks);
        assert_eq!(m.usage(), 0.0);
    }

    #[test]
    fn a_hash_collision_cannot_share_different_tokens() {
        let mut m = BlockManager::new(4, 2);
        let a = m.admit(&[1, 2, 3], 0).unwrap();
        m.remember(&[1, 2, 3], &a.blocks);
        // Forge the cached content to differ from the hash's tokens.
        let b0 = a.blocks[0] as usize;
        if let Some(c) = m.content[b0].as_mut() {
            c.tokens = vec![7, 7];
        }
        assert_eq!(m.admit(&[1, 2, 3], 0).unwrap().cached_tokens, 0);
    }
}
