//! The engine on a generated tiny model: continuous batching gives every
//! request the tokens it would get alone, usage is right, a full KV cache
//! makes requests wait, a client that leaves frees its blocks, and a
//! shared prefix is served from the prefix cache with the same tokens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use lattice_gpu_kernels::cpu::Cpu;
use lattice_worker::engine::sampler::Sampling;
use lattice_worker::engine::{self, EngineConfig, EngineHandle, Event, Finish, Request, Usage};
use lattice_worker::metrics::Metrics;
use lattice_worker::model::Model;
use lattice_worker::testmodel::{self, Spec};
use lattice_worker::text::Text;
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

struct Fixture {
    _dir: tempfile::TempDir,
    handle: EngineHandle,
    metrics: Arc<Metrics>,
}

fn start(kv_blocks: usize, max_batch_tokens: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    testmodel::write(dir.path(), &Spec::tiny_llama()).unwrap();
    let model = Model::load(Cpu::new(2).unwrap(), dir.path()).unwrap();
    let text = Arc::new(Text::load(dir.path(), &model.config.eos).unwrap());
    let metrics = Arc::new(Metrics::new("tiny"));
    let config = EngineConfig {
        block_size: 16,
        kv_blocks,
        max_batch_tokens,
        max_seqs: 64,
    };
    let handle = engine::spawn(model, text, metrics.clone(), config).unwrap();
    Fixture {
        _dir: dir,
        handle,
        metrics,
    }
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 31 + salt * 7 + 3) % 300)
        .collect()
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> (Request, UnboundedReceiver<Event>) {
    let (tx, rx) = unbounded_channel();
    let req = Request {
        prompt,
        sampling: Sampling {
            temperature: 0.0,
            ..Default::default()
        },
        max_tokens,
        stop_ids: Vec::new(),
        stop: Vec::new(),
        ignore_eos: true,
        constraint: None,
        events: tx,
    };
    (req, rx)
}

/// Every token id, then the finish and usage.
async fn collect(mut rx: UnboundedReceiver<Event>) -> (Vec<u32>, Finish, Usage) {
    let mut ids = Vec::new();
    while let Some(e) = rx.recv().await {
        match e {
            Event::Token { id, .. } => ids.push(id),
            Event::Done {
                finish,
                usage,
                error,
                ..
            } => {
                assert_eq!(error, None);
                return (ids, finish, usage);
            }
        }
    }
    panic!("the engine stopped before the request finished");
}

fn metric(m: &Metrics, name: &str) -> f64 {
    m.render()
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Waits up to a second for a gauge to reach `want` (the engine updates
/// its gauges after the step that sent the last events).
async fn settles(m: &Metrics, name: &str, want: f64) -> bool {
    for _ in 0..500 {
        if metric(m, name) == want {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_greedy_tokens_equal_those_of_each_request_alone() {
    let f = start(256, 64);
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| prompt(5 + i * 9, i as u32)).collect();
    let mut alone = Vec::new();
    for p in &prompts {
        let (req, rx) = greedy(p.clone(), 32);
        assert!(f.handle.submit(req));
        alone.push(collect(rx).await.0);
    }
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (req, rx) = greedy(p.clone(), 32);
            assert!(f.handle.submit(req));
            rx
        })
        .collect();
    for (i, rx) in rxs.into_iter().enumerate() {
        let (ids, finish, usage) = collect(rx).await;
        assert_eq!(ids, alone[i], "request {i}");
        assert_eq!(finish, Finish::Length);
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens),
            (prompts[i].len(), 32)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_requests_complete_with_their_usage() {
    let f = start(512, 128);
    let rxs: Vec<_> = (0..16)
        .map(|i| {
            let (req, rx) = greedy(prompt(3 + i * 13, i as u32), 4 + i * 2);
            assert!(f.handle.submit(req));
            (i, rx)
        })
        .collect();
    for (i, rx) in rxs {
        let (ids, _, usage) = collect(rx).await;
        assert_eq!(ids.len(), 4 + i * 2);
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 3 + i * 13,
                completion_tokens: 4 + i * 2,
                cached_tokens: usage.cached_tokens
            }
        );
    }
    assert!(settles(&f.metrics, "vllm:num_requests_running", 0.0).await);
    assert!(settles(&f.metrics, "vllm:kv_cache_usage_perc", 0.0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_makes_requests_wait_and_all_complete() {
    // 6 blocks of 16 tokens: two sequences of ~40 tokens fit at a time.
    let f = start(6, 64);
    let rxs: Vec<_> = (0..6)
        .map(|i| {
            let (req, rx) = greedy(prompt(20, 100 + i), 20);
            assert!(f.handle.submit(req));
            rx
        })
        .collect();
    let mut saw_waiting = false;
    for _ in 0..200 {
        if metric(&f.metrics, "vllm:num_requests_waiting") > 0.0 {
            saw_waiting = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    for rx in rxs {
        let (ids, finish, _) = collect(rx).await;
        assert_eq!((ids.len(), finish), (20, Finish::Length));
    }
    assert!(saw_waiting, "no request ever waited for the cache");
    assert!(settles(&f.metrics, "vllm:kv_cache_usage_perc", 0.0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_frees_its_blocks() {
    let f = start(64, 64);
    let (req, mut rx) = greedy(prompt(30, 9), 100_000);
    assert!(f.handle.submit(req));
    // Wait for the first tokens, then go away.
    for _ in 0..3 {
        assert!(matches!(rx.recv().await, Some(Event::Token { .. })));
    }
    assert!(metric(&f.metrics, "vllm:kv_cache_usage_perc") > 0.0);
    drop(rx);
    assert!(
        settles(&f.metrics, "vllm:kv_cache_usage_perc", 0.0).await
            && settles(&f.metrics, "vllm:num_requests_running", 0.0).await,
        "the cancelled sequence still holds blocks"
    );
    assert!(f.metrics.render().contains("finished_reason=\"abort\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_prefix_hits_the_cache_and_gives_the_same_tokens() {
    let long = prompt(100, 5);
    let mut second = long.clone();
    second.extend([11, 12, 13]);
    // Without the cache: a fresh engine answers the second prompt alone.
    let cold = start(64, 512);
    let (req, rx) = greedy(second.clone(), 16);
    assert!(cold.handle.submit(req));
    let (want, _, usage) = collect(rx).await;
    assert_eq!(usage.cached_tokens, 0);
    // With it: the first request leaves its blocks, the second reuses them.
    let warm = start(64, 512);
    let (req, rx) = greedy(long, 4);
    assert!(warm.handle.submit(req));
    collect(rx).await;
    let (req, rx) = greedy(second, 16);
    assert!(warm.handle.submit(req));
    let (got, _, usage) = collect(rx).await;
    assert_eq!(
        usage.cached_tokens, 96,
        "six full blocks of the shared 100 tokens"
    );
    assert_eq!(got, want);
    assert_eq!(metric(&warm.metrics, "vllm:prefix_cache_hits_total"), 96.0);
    assert_eq!(
        metric(&warm.metrics, "vllm:prefix_cache_queries_total"),
        203.0
    );
}
