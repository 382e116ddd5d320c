//! The engine: requests admitted into a paged KV cache and stepped
//! together on one thread — continuous batching. Each step takes every
//! decoding sequence's next token and fills what is left of a token budget
//! with prompt chunks (chunked prefill: a long prompt never stalls the
//! decoding sequences for more than one bounded chunk), runs one forward
//! pass over all of them, and samples each sequence that reached its end.
//! Sequences join and leave between steps; when the cache is full, new
//! requests wait and, if a running sequence cannot grow, the youngest is
//! preempted (its blocks freed, recomputed later — usually from the prefix
//! cache). A client that goes away frees its sequence at the next step.
//!
//! Must never: block on a client (events go through unbounded channels
//! the HTTP side drains), crash on a full cache (requests wait), or let a
//! failed forward pass take the worker down (the sequences in it fail with
//! the error, the engine keeps serving).

pub mod blocks;
pub mod sampler;

use crate::metrics::Metrics;
use crate::model::{Chunk, KvCache, Model, Next};
use crate::text::{Detokenizer, Text};
use blocks::BlockManager;
use lattice_gpu_kernels::{Kernels, Pick};
use sampler::{Sampled, Sampler, Sampling};
use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// How the engine uses its device.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens per KV-cache block.
    pub block_size: usize,
    /// Blocks in the KV cache (its memory bound).
    pub kv_blocks: usize,
    /// Tokens one step computes at most (decode tokens + prompt chunks).
    pub max_batch_tokens: usize,
    /// Sequences in the running batch at most.
    pub max_seqs: usize,
}

/// Restricts which tokens may come next (structured output).
pub trait Constraint: Send {
    /// The tokens allowed next, as a mask over the vocabulary (`None`:
    /// any token).
    fn mask(&mut self) -> Option<Vec<bool>>;
    /// Consumes a sampled token.
    fn accept(&mut self, token: u32);
    /// Whether the constrained output is complete.
    fn is_done(&self) -> bool;
}

/// A generation request, tokenized and validated by the API.
pub struct Request {
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    pub max_tokens: usize,
    /// Token ids that end the generation besides the model's own.
    pub stop_ids: Vec<u32>,
    /// Strings that end the generation (not included in the text).
    pub stop: Vec<String>,
    /// Keep generating past the model's end-of-sequence tokens.
    pub ignore_eos: bool,
    pub constraint: Option<Box<dyn Constraint>>,
    pub events: UnboundedSender<Event>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    Error,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: usize,
}

/// What a request hears from the engine, in order: tokens, then one
/// `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token {
        id: u32,
        /// The text this token completes (empty while held back: an
        /// incomplete character or a possible stop string).
        text: String,
        logprob: f32,
        top: Vec<(u32, f32)>,
    },
    Done {
        finish: Finish,
        /// Text held back until the end, released now.
        text: String,
        usage: Usage,
        error: Option<String>,
    },
}

/// The API side of a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Request>,
    /// Tokens the KV cache holds at most.
    pub capacity_tokens: usize,
    /// Positions the model accepts.
    pub max_context: usize,
}

impl EngineHandle {
    /// Queues `req`; false when the engine has stopped.
    pub fn submit(&self, req: Request) -> bool {
        self.tx.send(req).is_ok()
    }
}

struct Seq {
    req: Request,
    tokens: Vec<u32>,
    prompt_len: usize,
    computed: usize,
    blocks: Vec<u32>,
    sampler: Sampler,
    detok: Detokenizer,
    text: String,
    sent: usize,
    generated: usize,
    cached: usize,
    admitted_before: bool,
    arrived: Instant,
    last_token: Option<Instant>,
}

pub struct Engine<K: Kernels> {
    model: Model<K>,
    cache: KvCache<K>,
    blocks: BlockManager,
    text: Arc<Text>,
    metrics: Arc<Metrics>,
    config: EngineConfig,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    rx: mpsc::Receiver<Request>,
}

/// Starts the engine on its own thread.
pub fn spawn<K: Kernels>(
    model: Model<K>,
    text: Arc<Text>,
    metrics: Arc<Metrics>,
    config: EngineConfig,
) -> crate::Result<EngineHandle> {
    let cache = model.kv_cache(config.kv_blocks, config.block_size)?;
    let (tx, rx) = mpsc::channel();
    let handle = EngineHandle {
        tx,
        capacity_tokens: config.kv_blocks * config.block_size,
        max_context: model.config.max_positions,
    };
    let engine = Engine {
        blocks: BlockManager::new(config.kv_blocks, config.block_size),
        model,
        cache,
        text,
        metrics,
        config,
        waiting: VecDeque::new(),
        running: Vec::new(),
        rx,
    };
    std::thread::Builder::new()
        .name("lattice-engine".into())
        .spawn(move || engine.run())
        .map_err(|e| crate::WorkerError::Unsupported(format!("engine thread: {e}")))?;
    Ok(handle)
}

impl<K: Kernels> Engine<K> {
    fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(r) => self.enqueue(r),
                    Err(_) => return,
                }
            }
            while let Ok(r) = self.rx.try_recv() {
                self.enqueue(r);
            }
            self.drop_cancelled();
            self.admit();
            if self.running.is_empty() {
                // Nothing runs, so nothing will free blocks: the head of
                // the queue can never fit.
                if let Some(s) = self.waiting.pop_front() {
                    self.finish_error(s, "the prompt does not fit in the KV cache".into());
                }
            } else {
                self.step();
            }
            self.gauges();
        }
    }

    fn enqueue(&mut self, req: Request) {
        let tokens = req.prompt.clone();
        self.waiting.push_back(Seq {
            prompt_len: tokens.len(),
            sampler: Sampler::new(req.sampling.clone()),
            req,
            tokens,
            computed: 0,
            blocks: Vec::new(),
            detok: Detokenizer::default(),
            text: String::new(),
            sent: 0,
            generated: 0,
            cached: 0,
            admitted_before: false,
            arrived: Instant::now(),
            last_token: None,
        });
    }

    fn gauges(&self) {
        let m = self.metrics.model();
        self.metrics
            .running
            .get_or_create(m)
            .set(self.running.len() as i64);
        self.metrics
            .waiting
            .get_or_create(m)
            .set(self.waiting.len() as i64);
        self.metrics
            .kv_usage
            .get_or_create(m)
            .set(self.blocks.usage());
    }

    fn drop_cancelled(&mut self) {
        let (gone, kept): (Vec<Seq>, Vec<Seq>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|s| s.req.events.is_closed());
        self.running = kept;
        for s in gone {
            self.blocks.release(&s.blocks);
            self.metrics.finished("abort");
        }
        let before = self.waiting.len();
        self.waiting.retain(|s| !s.req.events.is_closed());
        for _ in self.waiting.len()..before {
            self.metrics.finished("abort");
        }
    }

    fn admit(&mut self) {
        while self.running.len() < self.config.max_seqs {
            let Some(s) = self.waiting.front() else { break };
            let Some(a) = self.blocks.admit(&s.tokens, 1) else {
                break;
            };
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            s.blocks = a.blocks;
            s.computed = a.cached_tokens;
            if !s.admitted_before {
                let m = self.metrics.model();
                self.metrics
                    .prefix_queries
                    .get_or_create(m)
                    .inc_by(s.prompt_len as u64);
                self.metrics
                    .prefix_hits
                    .get_or_create(m)
                    .inc_by(a.cached_tokens as u64);
                self.metrics
                    .prompt_tokens
                    .get_or_create(m)
                    .inc_by(s.prompt_len as u64);
                s.cached = a.cached_tokens.min(s.prompt_len);
                s.admitted_before = true;
            }
            self.running.push(s);
        }
    }

    /// Makes room for sequence `i` to hold `upto` tokens, preempting the
    /// youngest sequences if needed; false if `i` itself was preempted.
    fn ensure(&mut self, i: usize, upto: usize) -> bool {
        while self.running[i].blocks.len() < self.blocks.blocks_for(upto) {
            if self.blocks.grow(&mut self.running[i].blocks) {
                continue;
            }
            let victim = self.running.len() - 1;
            let Some(mut v) = self.running.pop() else {
                return false;
            };
            self.blocks.release(&v.blocks);
            v.blocks.clear();
            v.computed = 0;
            self.metrics
                .preemptions
                .get_or_create(self.metrics.model())
                .inc();
            self.waiting.push_front(v);
            if victim == i {
                return false;
            }
        }
        true
    }

    fn step(&mut self) {
        let mut budget = self.config.max_batch_tokens.max(1);
        let mut plan: Vec<(usize, usize)> = Vec::new();
        // Decoding sequences first, one token each; then prompt chunks.
        for decode in [true, false] {
            let mut i = 0;
            while i < self.running.len() && budget > 0 {
                let s = &self.running[i];
                let left = s.tokens.len() - s.computed;
                if (left == 1) == decode && left > 0 {
                    let n = left.min(budget);
                    let upto = s.computed + n;
                    if !self.ensure(i, upto) {
                        plan.retain(|(j, _)| *j < self.running.len());
                        break;
                    }
                    plan.retain(|(j, _)| *j < self.running.len());
                    plan.push((i, n));
                    budget -= n;
                }
                i += 1;
            }
        }
        if plan.is_empty() {
            return;
        }
        // Sequences that need neither a constraint mask nor
        // log-probabilities get their token chosen on the device, when it
        // can (only the ids then cross to the host).
        let device = self.model.kernels().picks_tokens();
        let picks: Vec<Option<Pick>> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &mut self.running[i];
                let last = s.computed + n == s.tokens.len();
                (device && last && s.req.constraint.is_none() && s.sampler.can_pick_on_device())
                    .then(|| s.sampler.pick(&s.tokens[..s.prompt_len]))
            })
            .collect();
        let chunks: Vec<Chunk<'_>> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                Chunk {
                    tokens: &s.tokens[s.computed..s.computed + n],
                    start: s.computed,
                    blocks: &s.blocks,
                    logits: s.computed + n == s.tokens.len(),
                }
            })
            .collect();
        let result = self.model.forward_picking(&mut self.cache, &chunks, &picks);
        drop(chunks);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                let mut idx: Vec<usize> = plan.iter().map(|p| p.0).collect();
                idx.sort_unstable();
                for i in idx.into_iter().rev() {
                    let s = self.running.remove(i);
                    self.finish_error(s, format!("forward pass: {e}"));
                }
                return;
            }
        };
        let mut done = vec![false; self.running.len()];
        for (&(i, n), l) in plan.iter().zip(logits) {
            let bs = self.blocks.block_size();
            let s = &mut self.running[i];
            let before = s.computed / bs;
            s.computed += n;
            if s.computed / bs > before {
                self.blocks.remember(&s.tokens[..s.computed], &s.blocks);
            }
            match l {
                Next::Nothing => {}
                Next::Logits(mut l) => done[i] = self.sample(i, &mut l),
                Next::Token(token) => {
                    let sampled = Sampled {
                        token,
                        logprob: 0.0,
                        top: Vec::new(),
                    };
                    done[i] = self.emit(i, sampled);
                }
            }
        }
        for i in (0..done.len()).rev() {
            if done[i] {
                let s = self.running.remove(i);
                self.blocks.release(&s.blocks);
            }
        }
    }

    /// Samples sequence `i`'s next token from its logits; true when it
    /// finished.
    fn sample(&mut self, i: usize, logits: &mut [f32]) -> bool {
        let s = &mut self.running[i];
        let mask = s.req.constraint.as_mut().and_then(|c| c.mask());
        let sampled = s
            .sampler
            .sample(logits, &s.tokens[..s.prompt_len], mask.as_deref());
        self.emit(i, sampled)
    }

    /// Sequence `i` takes its next token; true when it finished.
    fn emit(&mut self, i: usize, sampled: Sampled) -> bool {
        let now = Instant::now();
        let max_context = self
            .model
            .config
            .max_positions
            .min(self.cache.blocks * self.cache.block_size);
        let m = self.metrics.model().clone();
        let s = &mut self.running[i];
        let tok = sampled.token;
        s.sampler.accept(tok);
        if let Some(c) = s.req.constraint.as_mut() {
            c.accept(tok);
        }
        s.tokens.push(tok);
        s.generated += 1;
        self.metrics.generation_tokens.get_or_create(&m).inc();
        match s.last_token {
            None => self
                .metrics
                .ttft
                .get_or_create(&m)
                .observe(now.duration_since(s.arrived).as_secs_f64()),
            Some(t) => self
                .metrics
                .itl
                .get_or_create(&m)
                .observe(now.duration_since(t).as_secs_f64()),
        }
        s.last_token = Some(now);
        let is_stop_id = s.req.stop_ids.contains(&tok)
            || (!s.req.ignore_eos && self.text.stop_ids.contains(&tok));
        let mut finish = None;
        let mut delta = String::new();
        if is_stop_id {
            finish = Some(Finish::Stop);
        } else {
            let piece = s.detok.push(&self.text, tok).unwrap_or_default();
            s.text.push_str(&piece);
            let search_from = s
                .sent
                .saturating_sub(s.req.stop.iter().map(String::len).max().unwrap_or(0));
            let hit = s
                .req
                .stop
                .iter()
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    s.text[search_from..]
                        .find(p.as_str())
                        .map(|at| search_from + at)
                })
                .min();
            if let Some(at) = hit {
                s.text.truncate(at.max(s.sent));
                finish = Some(Finish::Stop);
            } else {
                let safe = safe_len(&s.text, &s.req.stop).max(s.sent);
                delta = s.text[s.sent..safe].to_string();
                s.sent = safe;
            }
        }
        if finish.is_none() {
            if s.req.constraint.as_ref().is_some_and(|c| c.is_done()) {
                finish = Some(Finish::Stop);
            } else if s.generated >= s.req.max_tokens || s.tokens.len() >= max_context {
                finish = Some(Finish::Length);
            }
        }
        let _ = s.req.events.send(Event::Token {
            id: tok,
            text: delta,
            logprob: sampled.logprob,
            top: sampled.top,
        });
        let Some(finish) = finish else { return false };
        let rest = s.text.get(s.sent..).unwrap_or_default().to_string();
        let usage = Usage {
            prompt_tokens: s.prompt_len,
            completion_tokens: s.generated,
            cached_tokens: s.cached,
        };
        let _ = s.req.events.send(Event::Done {
            finish,
            text: rest,
            usage,
            error: None,
        });
        self.metrics
            .e2e
            .get_or_create(&m)
            .observe(now.duration_since(s.arrived).as_secs_f64());
        self.metrics.finished(finish.as_str());
        true
    }

    fn finish_error(&mut self, s: Seq, error: String) {
        self.blocks.release(&s.blocks);
        let usage = Usage {
            prompt_tokens: s.prompt_len,
            completion_tokens: s.generated,
            cached_tokens: s.cached,
        };
        let _ = s.req.events.send(Event::Done {
            finish: Finish::Error,
            text: String::new(),
            usage,
            error: Some(error),
        });
        self.metrics.finished("error");
    }
}

/// How much of `text` can be sent without risking the start of a stop
/// string: the length minus the longest suffix that begins one.
fn safe_len(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for p in stops {
        for k in (1..p.len().min(text.len() + 1)).rev() {
            if k <= hold {
                break;
            }
            let at = text.len() - k;
            if text.is_char_boundary(at) && p.as_bytes().starts_with(&text.as_bytes()[at..]) {
                hold = k;
                break;
            }
        }
    }
    text.len() - hold
}

#[cfg(test)]
mod tests {
    use super::safe_len;

    #[test]
    fn text_that_may_begin_a_stop_string_is_held_back() {
        let stops = vec!["</answer>".to_string(), "STOP".to_string()];
        let cases: &[(&str, usize)] = &[
            ("hello", 5),
            ("hello </ans", 6),
            ("hello S", 6),
            ("hello ST", 6),
            ("hello STX", 9),
            ("é<", 2),
        ];
        for (text, want) in cases {
            assert_eq!(safe_len(text, &stops), *want, "{text}");
        }
        assert_eq!(safe_len("abc", &[]), 3);
    }
}
