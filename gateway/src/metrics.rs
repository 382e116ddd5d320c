//! Prometheus metrics served at `/metrics`: requests by kind and status,
//! decisions by outcome, request latency, audit queue depth and refusals,
//! config reloads and shadow-policy disagreements, inference backends'
//! availability and requests in flight, and tokens by model.
//!
//! Must never: put a secret, a prompt or an argument in a label.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<Labels, Counter>,
    pub decisions: Family<Labels, Counter>,
    // The two decision series, resolved once (no per-call label allocation).
    allows: Counter,
    denies: Counter,
    pub latency: Histogram,
    pub audit_queue_depth: Gauge,
    pub audit_events_written: Gauge,
    pub audit_pruned_before: Gauge,
    pub audit_refused: Counter,
    pub audit_bypassed: Counter,
    pub reloads: Family<Labels, Counter>,
    pub shadow_disagreements: Counter,
    /// Per backend, set at each scrape: 1 when available (healthy, not ejected).
    pub backend_available: Family<Labels, Gauge>,
    pub backend_outstanding: Family<Labels, Gauge>,
    /// Tokens reported by backends, by model and direction (in/out).
    pub llm_tokens: Family<Labels, Counter>,
    /// Connections refused before any request, by the refusal's code.
    pub connections_refused: Family<Labels, Counter>,
    /// Calls refused because fail-closed limits could not be counted.
    pub limits_unavailable: Counter,
    /// Calls let through uncounted (fail-open limits, counters unreachable).
    pub limits_bypassed: Counter,
    /// Spans dropped: the export queue was full or the collector failed.
    pub otlp_spans_dropped: Counter,
    /// Batches the collector did not take.
    pub otlp_export_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lattice");
        let requests = Family::<Labels, Counter>::default();
        let decisions = Family::<Labels, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let audit_queue_depth = Gauge::default();
        let audit_events_written = Gauge::default();
        let audit_pruned_before = Gauge::default();
        let audit_refused = Counter::default();
        let audit_bypassed = Counter::default();
        let reloads = Family::<Labels, Counter>::default();
        let shadow_disagreements = Counter::default();
        let backend_available = Family::<Labels, Gauge>::default();
        let backend_outstanding = Family::<Labels, Gauge>::default();
        let llm_tokens = Family::<Labels, Counter>::default();
        let connections_refused = Family::<Labels, Counter>::default();
        let limits_unavailable = Counter::default();
        let limits_bypassed = Counter::default();
        let otlp_spans_dropped = Counter::default();
        let otlp_export_failures = Counter::default();
        registry.register(
            "otlp_spans_dropped",
            "Trace spans dropped (the export queue was full, or the collector did not take their batch)",
            otlp_spans_dropped.clone(),
        );
        registry.register(
            "otlp_export_failures",
            "Span batches the OTLP collector did not take",
            otlp_export_failures.clone(),
        );
        registry.register(
            "limits_unavailable",
            "Calls refused with 503 because the shared limit counters could not be reached",
            limits_unavailable.clone(),
        );
        registry.register(
            "limits_bypassed",
            "Calls let through uncounted because the shared limit counters could not be reached (on_unavailable = allow)",
            limits_bypassed.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused or cut off before a request, by reason (too_many_connections, request_timeout)",
            connections_refused.clone(),
        );
        registry.register(
            "backend_available",
            "1 when an inference backend is healthy and not ejected",
            backend_available.clone(),
        );
        registry.register(
            "backend_outstanding_requests",
            "Requests in flight to an inference backend",
            backend_outstanding.clone(),
        );
        registry.register(
            "llm_tokens",
            "Tokens reported by inference backends, by model and direction",
            llm_tokens.clone(),
        );
        registry.register("requests", "Requests by kind and status", requests.clone());
        registry.register(
            "decisions",
            "Policy decisions by outcome",
            decisions.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response",
            latency.clone(),
        );
        registry.register(
            "audit_queue_depth",
            "Audit events accepted but not yet written",
            audit_queue_depth.clone(),
        );
        registry.register(
            "audit_events_written",
            "Audit events written since start",
            audit_events_written.clone(),
        );
        registry.register(
            "audit_pruned_before",
            "Audit events before this sequence number were pruned from the local store by retention",
            audit_pruned_before.clone(),
        );
        registry.register(
            "audit_refused",
            "Calls refused because the audit pipeline could not accept them",
            audit_refused.clone(),
        );
        registry.register(
            "audit_bypassed",
            "Calls let through unaudited because audit.on_full = allow",
            audit_bypassed.clone(),
        );
        registry.register(
            "config_reloads",
            "Config and policy reloads by result",
            reloads.clone(),
        );
        registry.register(
            "shadow_disagreements",
            "Decisions where the shadow policy set disagreed",
            shadow_disagreements.clone(),
        );
        let allows = decisions
            .get_or_create(&vec![("outcome", "allow".to_string())])
            .clone();
        let denies = decisions
            .get_or_create(&vec![("outcome", "deny".to_string())])
            .clone();
        Self {
            registry,
            requests,
            decisions,
            allows,
            denies,
            latency,
            audit_queue_depth,
            audit_events_written,
            audit_pruned_before,
            audit_refused,
            audit_bypassed,
            reloads,
            shadow_disagreements,
            backend_available,
            backend_outstanding,
            llm_tokens,
            connections_refused,
            limits_unavailable,
            limits_bypassed,
            otlp_spans_dropped,
            otlp_export_failures,
        }
    }

    pub fn connection_refused(&self, code: &str) {
        self.connections_refused
            .get_or_create(&vec![("reason", code.to_string())])
            .inc();
    }

    pub fn request(&self, kind: &str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("kind", kind.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    pub fn decision(&self, outcome: lattice_policy::Outcome) {
        let counter = match outcome {
            lattice_policy::Outcome::Allow => &self.allows,
            lattice_policy::Outcome::Deny => &self.denies,
        };
        counter.inc();
    }

    /// Refreshes the per-backend gauges (backends removed since vanish).
    pub fn backends(&self, backends: &[std::sync::Arc<lattice_inference_router::BackendState>]) {
        self.backend_available.clear();
        self.backend_outstanding.clear();
        for b in backends {
            let labels = vec![
                ("backend", b.spec.name.clone()),
                ("kind", b.spec.kind.as_str().to_string()),
                ("location", b.spec.location.clone()),
            ];
            self.backend_available
                .get_or_create(&labels)
                .set(i64::from(b.available()));
            self.backend_outstanding
                .get_or_create(&labels)
                .set(b.outstanding() as i64);
        }
    }

    pub fn tokens(&self, model: &str, usage: &lattice_inference_router::Usage) {
        for (direction, n) in [
            ("in", usage.prompt_tokens),
            ("out", usage.completion_tokens),
        ] {
            self.llm_tokens
                .get_or_create(&vec![
                    ("model", model.to_string()),
                    ("direction", direction.to_string()),
                ])
                .inc_by(n);
        }
    }

    pub fn reload(&self, result: &str) {
        self.reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
