//! Choosing the next token from a sequence's logits: logit bias,
//! repetition / presence / frequency penalties, then greedy (temperature
//! 0) or sampling with temperature, top-k, top-p and min-p, from a random
//! generator seeded per request (the same seed and request give the same
//! tokens). Log-probabilities are those of the penalised logits before
//! temperature, as the OpenAI API reports them.
//!
//! Must never: return a token that the constraint mask refuses, or a token
//! with zero probability after filtering.

use lattice_gpu_kernels::{Adjust, Pick};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// A request's sampling settings, validated by the API layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    /// 0: off.
    pub top_k: usize,
    pub min_p: f32,
    pub seed: Option<u64>,
    /// 1.0: off.
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    /// Alternatives reported per token (`None`: no log-probabilities).
    pub logprobs: Option<usize>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            logprobs: None,
        }
    }
}

/// A chosen token, its log-probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

pub struct Sampler {
    params: Sampling,
    rng: StdRng,
    /// Occurrences of each generated token (for the penalties).
    counts: std::collections::HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: Sampling) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        Self {
            params,
            rng,
            counts: std::collections::HashMap::new(),
        }
    }

    pub fn params(&self) -> &Sampling {
        &self.params
    }

    /// Records a generated token (penalties count it from now on).
    pub fn accept(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
    }

    /// The next token from `logits` (changed in place). `prompt` feeds the
    /// repetition penalty; `allowed`, when given, is the constraint mask.
    /// The log-probabilities are computed only when the request asked for
    /// them (`logprob` is 0 otherwise).
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        prompt: &[u32],
        allowed: Option<&[bool]>,
    ) -> Sampled {
        for a in self.adjustments(prompt) {
            if let Some(l) = logits.get_mut(a.token as usize) {
                *l = self.adjusted(*l, &a);
            }
        }
        if let Some(mask) = allowed {
            // A token the mask does not cover is refused too.
            for (i, l) in logits.iter_mut().enumerate() {
                if !mask.get(i).copied().unwrap_or(false) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let token = if self.params.temperature <= 0.0 {
            argmax(logits)
        } else {
            let u = self.rng.gen::<f32>();
            self.draw(logits, u)
        };
        let Some(n) = self.params.logprobs else {
            return Sampled {
                token,
                logprob: 0.0,
                top: Vec::new(),
            };
        };
        let logprobs = log_softmax(logits);
        let mut top = Vec::new();
        if n > 0 {
            let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
            let n = n.min(idx.len());
            idx.select_nth_unstable_by(n - 1, |a, b| {
                logprobs[*b as usize].total_cmp(&logprobs[*a as usize])
            });
            top = idx[..n]
                .iter()
                .map(|&t| (t, logprobs[t as usize]))
                .collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        Sampled {
            token,
            logprob: logprobs[token as usize],
            top,
        }
    }

    /// The next token's choice for a device that makes it itself
    /// ([`Pick`]: the same rule as [`Sampler::sample`], the same draw from
    /// this request's generator). No constraint mask or log-probabilities
    /// there: those requests are sampled on the host.
    pub fn pick(&mut self, prompt: &[u32]) -> Pick {
        let p = &self.params;
        Pick {
            temperature: p.temperature,
            top_k: p.top_k.min(u32::MAX as usize) as u32,
            top_p: p.top_p,
            min_p: p.min_p,
            uniform: if p.temperature > 0.0 {
                self.rng.gen::<f32>()
            } else {
                0.0
            },
            repetition: p.repetition_penalty,
            presence: p.presence_penalty,
            frequency: p.frequency_penalty,
            adjust: self.adjustments(prompt),
        }
    }

    /// Whether this request can be sampled where its logits are computed.
    pub fn can_pick_on_device(&self) -> bool {
        self.params.logprobs.is_none()
    }

    /// Every token whose logit changes, once each, ordered by id.
    fn adjustments(&self, prompt: &[u32]) -> Vec<Adjust> {
        let p = &self.params;
        let mut by_token: BTreeMap<u32, Adjust> = BTreeMap::new();
        fn entry(m: &mut BTreeMap<u32, Adjust>, t: u32) -> &mut Adjust {
            m.entry(t).or_insert(Adjust {
                token: t,
                bias: 0.0,
                seen: false,
                count: 0,
            })
        }
        for &(t, b) in &p.logit_bias {
            entry(&mut by_token, t).bias += b;
        }
        if p.repetition_penalty != 1.0 {
            for &t in prompt.iter().chain(self.counts.keys()) {
                entry(&mut by_token, t).seen = true;
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.counts {
                entry(&mut by_token, t).count = n;
            }
        }
        by_token.into_values().collect()
    }

    /// One logit after its adjustment (the order [`Adjust`] documents).
    fn adjusted(&self, logit: f32, a: &Adjust) -> f32 {
        let p = &self.params;
        let mut v = logit + a.bias;
        if a.seen && p.repetition_penalty != 1.0 {
            v = if v > 0.0 {
                v / p.repetition_penalty
            } else {
                v * p.repetition_penalty
            };
        }
        if a.count > 0 {
            v -= p.presence_penalty + p.frequency_penalty * a.count as f32;
        }
        v
    }

    /// Draws with `u` in [0, 1) by [`Pick`]'s rule, without sorting the
    /// whole vocabulary (128 K entries for Llama 3): top-k and min-p are
    /// linear selections; only top-p needs an order, and only of the head
    /// that holds its mass, found by selecting ever larger heads. The kept
    /// tokens are then laid out in id order and `u` × their mass picks one.
    fn draw(&self, logits: &[f32], u: f32) -> u32 {
        let p = &self.params;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, l)| (i as u32, l / p.temperature))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        // Most likely first; equal logits by token id.
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, order);
            cand.truncate(p.top_k);
        }
        let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        // min-p: drop what is less likely than min_p × the top probability.
        if p.min_p > 0.0 {
            let floor = p.min_p.ln();
            cand.retain(|c| c.1 - max >= floor);
        }
        let weight = |l: f32| (l - max).exp();
        // top-p: the smallest head, in order, whose mass reaches top_p.
        let keep = if p.top_p < 1.0 {
            let sum: f32 = cand.iter().map(|c| weight(c.1)).sum();
            let mut head = 64.min(cand.len());
            loop {
                if head < cand.len() {
                    cand.select_nth_unstable_by(head - 1, order);
                }
                cand[..head].sort_by(order);
                let mut mass = 0.0;
                let reached = cand[..head].iter().position(|c| {
                    mass += weight(c.1) / sum;
                    mass >= p.top_p
                });
                match reached {
                    Some(i) => break i + 1,
                    None if head == cand.len() => break head,
                    None => head = (head * 4).min(cand.len()),
                }
            }
        } else {
            cand.len()
        };
        let kept = &mut cand[..keep];
        kept.sort_by_key(|c| c.0);
        let total: f32 = kept.iter().map(|c| weight(c.1)).sum();
        let target = (u * total).min(total.next_down());
        let mut run = 0.0;
        for c in kept.iter() {
            run += weight(c.1);
            if run > target {
                return c.0;
            }
        }
        kept[keep - 1].0
    }
}

/// The index of the largest value (the lowest index among equals).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn log_softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = v.iter().map(|x| (x - max).exp()).sum();
    let log_sum = sum.ln() + max;
    v.iter().map(|x| x - log_sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_the_largest_and_reports_its_logprob() {
        let mut s = Sampler::new(Sampling {
            temperature: 0.0,
            logprobs: Some(2),
            ..Default::default()
        });
        let out = s.sample(&mut logits(), &[], None);
        assert_eq!(out.token, 1);
        assert_eq!(out.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 4]);
        let z: f32 = logits().iter().map(|x| x.exp()).sum();
        assert!((out.logprob - (3.0f32.exp() / z).ln()).abs() < 1e-6);
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let draw = |seed| {
            let mut s = Sampler::new(Sampling {
                seed: Some(seed),
                ..Default::default()
            });
            (0..50)
                .map(|_| s.sample(&mut logits(), &[], None).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    /// top-p over a flat vocabulary larger than the first head it tries:
    /// the head grows until it holds the mass, ties go to lower ids.
    #[test]
    fn top_p_over_a_large_flat_vocabulary_keeps_the_right_head() {
        let mut s = Sampler::new(Sampling {
            top_p: 0.5,
            seed: Some(7),
            ..Default::default()
        });
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let mut flat = vec![0.0f32; 1000];
            seen.insert(s.sample(&mut flat, &[], None).token);
        }
        let max = seen.iter().max().copied().unwrap_or(0);
        assert!(max <= 500, "drew token {max}, outside the top half");
        assert!(seen.len() > 300, "drew only {} distinct tokens", seen.len());
    }

    /// Each filter, as a table: the tokens it may ever draw.
    #[test]
    fn filters_bound_what_can_be_drawn() {
        let cases: Vec<(Sampling, Vec<u32>)> = vec![
            (
                Sampling {
                    top_k: 2,
                    ..Default::default()
                },
                vec![1, 4],
            ),
            (
                Sampling {
                    top_p: 0.5,
                    ..Default::default()
                },
                vec![1, 4],
            ),
            (
                Sampling {
                    min_p: 0.3,
                    ..Default::default()
                },
                vec![1, 2, 4],
            ),
            (
                Sampling {
                    logit_bias: vec![(3, 100.0)],
                    ..Default::default()
                },
                vec![3],
            ),
            (
                Sampling {
                    temperature: 0.01,
                    ..Default::default()
                },
                vec![1],
            ),
        ];
        for (params, allowed) in cases {
            let mut s = Sampler::new(Sampling {
                seed: Some(1),
                ..params.clone()
            });
            for _ in 0..200 {
                let t = s.sample(&mut logits(), &[], None).token;
                assert!(allowed.contains(&t), "{params:?} drew {t}");
            }
        }
    }

    #[test]
    fn a_mask_is_never_crossed_and_penalties_push_repeats_down() {
        let mut s = Sampler::new(Sampling {
            seed: Some(3),
            ..Default::default()
        });
        let mask = [true, false, false, true, false];
        for _ in 0..100 {
            let t = s.sample(&mut logits(), &[], Some(&mask)).token;
            assert!(t == 0 || t == 3);
        }
        let mut g = Sampler::new(Sampling {
            temperature: 0.0,
            presence_penalty: 2.0,
            ..Default::default()
        });
        g.accept(1);
        assert_eq!(g.sample(&mut logits(), &[], None).token, 4);
        let mut r = Sampler::new(Sampling {
            temperature: 0.0,
            repetition_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(r.sample(&mut logits(), &[1, 4], None).token, 2);
    }
}
