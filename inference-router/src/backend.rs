//! A backend: what the operator configured (`BackendSpec`) and what the
//! router has learned about it since (`BackendState`). All live fields are
//! atomics: requests on any thread read and update them without locks.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::upstream::Upstream;

/// What speaks at the other end. All of them speak the OpenAI API; they
/// differ in how health and load can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A vLLM server: `/health`, and load from `/metrics`.
    Vllm,
    /// Apple MLX's `mlx_lm.server`: `/health`, no metrics (the router counts
    /// its own in-flight requests).
    Mlx,
    /// A Lattice worker: `/health` and vLLM-named metrics.
    Lattice,
    /// Any OpenAI-compatible endpoint (health read from `/v1/models`).
    Openai,
}

impl BackendKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vllm" => Some(Self::Vllm),
            "mlx" => Some(Self::Mlx),
            "lattice" => Some(Self::Lattice),
            "openai" => Some(Self::Openai),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vllm => "vllm",
            Self::Mlx => "mlx",
            Self::Lattice => "lattice",
            Self::Openai => "openai",
        }
    }

    /// The path the active health check reads.
    pub fn health_path(self) -> &'static str {
        match self {
            Self::Openai => "/v1/models",
            _ => "/health",
        }
    }

    /// Whether `/metrics` carries vLLM's load gauges.
    pub fn has_metrics(self) -> bool {
        matches!(self, Self::Vllm | Self::Lattice)
    }
}

/// A configured backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub name: String,
    pub kind: BackendKind,
    /// The server's root, without `/v1` (`http://10.0.0.5:8000`).
    pub url: String,
    /// Where it runs (`on_prem`, `cloud`, ...): a policy attribute.
    pub location: String,
    /// Share under the `weighted` strategy.
    pub weight: u32,
    /// Sent as `Authorization: Bearer` (the backend's own key, never the
    /// agent's).
    pub api_key: Option<String>,
    /// Time to the response head, and between two chunks of a stream.
    pub timeout: Duration,
    pub health_interval: Duration,
    /// A discovered worker: the fingerprint of the TLS certificate it
    /// proved membership with (`join.rs`). Every connection to it is pinned
    /// to that certificate.
    pub pin: Option<String>,
}

/// How long a failing backend is left alone: 1 s, doubling per consecutive
/// failure, at most 30 s.
pub fn ejection_for(consecutive_failures: u32) -> Duration {
    let exp = consecutive_failures.saturating_sub(1).min(5);
    Duration::from_secs(1u64 << exp).min(Duration::from_secs(30))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the router knows about a backend now.
#[derive(Debug)]
pub struct BackendState {
    pub spec: BackendSpec,
    /// A client pinned to `spec.pin` for health checks (none: the
    /// router's shared one).
    pub(crate) client: Option<reqwest::Client>,
    /// Where requests go, and the connections kept to it (set when the
    /// route table is built).
    pub(crate) upstream: Option<Arc<Upstream>>,
    outstanding: AtomicU64,
    /// The last active health check passed (true until one fails).
    healthy: AtomicBool,
    /// Passive ejection: not chosen before this time (unix ms).
    ejected_until_ms: AtomicU64,
    failures: AtomicU32,
    /// Latency EWMA to the response head, µs (0: nothing measured yet).
    ewma_us: AtomicU64,
    /// Running + waiting requests from the backend's metrics, and when read.
    reported_load: AtomicU64,
    reported_at_ms: AtomicU64,
    /// Requests sent, for the route listing.
    served: AtomicU64,
}

impl BackendState {
    pub fn new(spec: BackendSpec) -> Self {
        Self {
            spec,
            client: None,
            upstream: None,
            outstanding: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0),
            reported_load: AtomicU64::new(0),
            reported_at_ms: AtomicU64::new(0),
            served: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Healthy and not ejected.
    pub fn available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms()
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub fn ewma_us(&self) -> u64 {
        self.ewma_us.load(Ordering::Relaxed)
    }

    /// The backend's own count of running + waiting requests, if it reported
    /// one in the last 10 s.
    pub fn reported_load(&self) -> Option<u64> {
        let at = self.reported_at_ms.load(Ordering::Relaxed);
        (at != 0 && now_ms().saturating_sub(at) < 10_000)
            .then(|| self.reported_load.load(Ordering::Relaxed))
    }

    /// The load least-outstanding routing compares: our own in-flight count,
    /// or the backend's report when it sees more (other clients).
    pub fn load(&self) -> u64 {
        self.outstanding()
            .max(self.reported_load().unwrap_or_default())
    }

    pub(crate) fn start_request(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn end_request(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    /// A success: clears the failure streak and feeds the EWMA (α = 0.3).
    pub fn record_success(&self, latency: Duration) {
        self.failures.store(0, Ordering::Relaxed);
        let sample = latency.as_micros().max(1) as u64;
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample * 3) / 10
        };
        self.ewma_us.store(new.max(1), Ordering::Relaxed);
    }

    /// A backend fault: ejects it for a time that grows with the streak.
    pub fn record_failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let until = now_ms() + ejection_for(n).as_millis() as u64;
        self.ejected_until_ms.store(until, Ordering::Relaxed);
    }

    pub(crate) fn set_health(&self, ok: bool) {
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                tracing::info!(backend = %self.spec.name, "backend is healthy again");
            } else {
                tracing::warn!(backend = %self.spec.name, "backend failed its health check; taken out of rotation");
            }
        }
    }

    pub(crate) fn set_reported_load(&self, load: u64) {
        self.reported_load.store(load, Ordering::Relaxed);
        self.reported_at_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// Sums vLLM's `num_requests_running` and `num_requests_waiting` gauges
/// (every label set) from a Prometheus text exposition. None when neither
/// appears.
pub fn parse_vllm_load(text: &str) -> Option<u64> {
    let mut total = 0.0;
    let mut seen = false;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if name != "vllm:num_requests_running" && name != "vllm:num_requests_waiting" {
            continue;
        }
        let value = line
            .rsplit_once('}')
            .map(|(_, v)| v)
            .unwrap_or(&line[name_end..])
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            total += v;
            seen = true;
        }
    }
    seen.then_some(total.max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_metrics_give_running_plus_waiting() {
        let text = "# HELP vllm:num_requests_running Number of requests\n\
            # TYPE vllm:num_requests_running gauge\n\
            vllm:num_requests_running{model_name=\"m\"} 3.0\n\
            vllm:num_requests_waiting{model_name=\"m\"} 2.0\n\
            vllm:num_requests_waiting{model_name=\"n\"} 1\n\
            vllm:kv_cache_usage_perc{model_name=\"m\"} 0.5\n";
        assert_eq!(parse_vllm_load(text), Some(6));
        assert_eq!(parse_vllm_load("other_metric 4\n"), None);
    }

    #[test]
    fn ejection_grows_and_is_capped() {
        assert_eq!(ejection_for(1), Duration::from_secs(1));
        assert_eq!(ejection_for(2), Duration::from_secs(2));
        assert_eq!(ejection_for(4), Duration::from_secs(8));
        assert_eq!(ejection_for(40), Duration::from_secs(30));
    }

    #[test]
    fn failure_ejects_and_success_feeds_the_ewma() {
        let b = BackendState::new(BackendSpec {
            name: "a".into(),
            kind: BackendKind::Vllm,
            url: "http://127.0.0.1:1".into(),
            location: "on_prem".into(),
            weight: 1,
            api_key: None,
            timeout: Duration::from_secs(1),
            health_interval: Duration::from_secs(1),
            pin: None,
        });
        assert!(b.available());
        b.record_failure();
        assert!(!b.available() && b.ejected());
        b.record_success(Duration::from_micros(1000));
        b.record_success(Duration::from_micros(2000));
        assert_eq!(b.ewma_us(), 1300);
    }
}
