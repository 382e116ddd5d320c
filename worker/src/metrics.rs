//! The worker's Prometheus metrics under vLLM's names, so anything that
//! reads a vLLM server's `/metrics` (the gateway's load-aware router,
//! dashboards) reads a Lattice worker unchanged: requests running and
//! waiting, KV-cache usage, prefix-cache queries and hits (in tokens),
//! prompt and generation tokens, finished requests by reason, and the
//! time-to-first-token, inter-token and end-to-end latency histograms.
//!
//! Must never: carry request content in a label (labels are the model's
//! name and a finish reason only).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Model {
    pub model_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Finished {
    pub model_name: String,
    pub finished_reason: String,
}

pub struct Metrics {
    registry: Registry,
    model: Model,
    pub running: Family<Model, Gauge>,
    pub waiting: Family<Model, Gauge>,
    pub kv_usage: Family<Model, Gauge<f64, AtomicU64>>,
    pub prefix_queries: Family<Model, Counter>,
    pub prefix_hits: Family<Model, Counter>,
    pub prompt_tokens: Family<Model, Counter>,
    pub generation_tokens: Family<Model, Counter>,
    pub preemptions: Family<Model, Counter>,
    pub success: Family<Finished, Counter>,
    pub ttft: Family<Model, Histogram>,
    pub itl: Family<Model, Histogram>,
    pub e2e: Family<Model, Histogram>,
}

impl Metrics {
    pub fn new(model_name: &str) -> Self {
        let mut registry = Registry::default();
        let latency = || {
            Family::<Model, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            })
        };
        let m = Self {
            model: Model {
                model_name: model_name.to_string(),
            },
            running: Family::default(),
            waiting: Family::default(),
            kv_usage: Family::default(),
            prefix_queries: Family::default(),
            prefix_hits: Family::default(),
            prompt_tokens: Family::default(),
            generation_tokens: Family::default(),
            preemptions: Family::default(),
            success: Family::default(),
            ttft: latency(),
            itl: latency(),
            e2e: latency(),
            registry: Registry::default(),
        };
        registry.register(
            "vllm:num_requests_running",
            "Requests in the running batch",
            m.running.clone(),
        );
        registry.register(
            "vllm:num_requests_waiting",
            "Requests waiting to be admitted",
            m.waiting.clone(),
        );
        registry.register(
            "vllm:kv_cache_usage_perc",
            "Fraction of KV-cache blocks held (1 = full)",
            m.kv_usage.clone(),
        );
        registry.register(
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache",
            m.prefix_queries.clone(),
        );
        registry.register(
            "vllm:prefix_cache_hits",
            "Prompt tokens found in the prefix cache",
            m.prefix_hits.clone(),
        );
        registry.register(
            "vllm:prompt_tokens",
            "Prompt tokens processed",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "vllm:generation_tokens",
            "Tokens generated",
            m.generation_tokens.clone(),
        );
        registry.register(
            "vllm:num_preemptions",
            "Sequences preempted for KV-cache room",
            m.preemptions.clone(),
        );
        registry.register(
            "vllm:request_success",
            "Finished requests by reason",
            m.success.clone(),
        );
        registry.register(
            "vllm:time_to_first_token_seconds",
            "Time to first token",
            m.ttft.clone(),
        );
        registry.register(
            "vllm:inter_token_latency_seconds",
            "Time between tokens",
            m.itl.clone(),
        );
        registry.register(
            "vllm:e2e_request_latency_seconds",
            "Request latency",
            m.e2e.clone(),
        );
        Self { registry, ..m }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn finished(&self, reason: &str) {
        self.success
            .get_or_create(&Finished {
                model_name: self.model.model_name.clone(),
                finished_reason: reason.to_string(),
            })
            .inc();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
