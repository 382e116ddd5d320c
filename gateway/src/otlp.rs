//! Trace export: spans the gateway built (`spans.rs`) wait in a bounded
//! queue and a thread of their own sends them in batches to an
//! OpenTelemetry collector — OTLP over HTTP, protobuf bodies
//! (`opentelemetry-proto`'s messages), at most 512 spans or one second
//! apart. A call never waits: when the queue is full the span is dropped
//! and counted (`lattice_otlp_spans_dropped_total`), and so is a batch the
//! collector did not take (`lattice_otlp_export_failures_total`).
//!
//! Why not `opentelemetry-otlp`: it brings a second HTTP client (reqwest
//! 0.13 and its blocking client) beside the one the gateway already holds;
//! the wire format is the official crate's either way.
//!
//! Must never: block or slow a call, or retry a batch forever.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use crate::config::OtlpConfig;
use crate::GatewayError;

const BATCH: usize = 512;

/// The queue to the exporter thread.
pub struct Otlp {
    tx: SyncSender<Span>,
    dropped: Counter,
    pub sample_ratio: f64,
}

fn keyed(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// A string attribute.
pub fn attr(key: &str, value: impl Into<String>) -> KeyValue {
    keyed(key, any_value::Value::StringValue(value.into()))
}

/// An integer attribute.
pub fn attr_int(key: &str, value: i64) -> KeyValue {
    keyed(key, any_value::Value::IntValue(value))
}

/// A floating-point attribute.
pub fn attr_f64(key: &str, value: f64) -> KeyValue {
    keyed(key, any_value::Value::DoubleValue(value))
}

impl Otlp {
    /// Starts the exporter thread. `node` names this replica
    /// (`service.instance.id`).
    pub fn start(
        cfg: &OtlpConfig,
        node: &str,
        dropped: Counter,
        failures: Counter,
    ) -> Result<Self, GatewayError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue_spans);
        let resource = Resource {
            attributes: vec![
                attr("service.name", cfg.service_name.clone()),
                attr("service.instance.id", node),
                attr("service.version", env!("CARGO_PKG_VERSION")),
            ],
            ..Resource::default()
        };
        let (url, timeout, lost) = (cfg.traces_url.clone(), cfg.timeout, dropped.clone());
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_loop(&rx, &url, timeout, resource, &lost, &failures))
            .map_err(|e| GatewayError::Server(e.to_string()))?;
        Ok(Self {
            tx,
            dropped,
            sample_ratio: cfg.sample_ratio,
        })
    }

    /// Queues spans; those that do not fit are dropped and counted.
    pub fn send(&self, spans: Vec<Span>) {
        for span in spans {
            match self.tx.try_send(span) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.dropped.inc();
                }
            }
        }
    }
}

fn export_loop(
    rx: &Receiver<Span>,
    url: &str,
    timeout: Duration,
    resource: Resource,
    dropped: &Counter,
    failures: &Counter,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "trace export cannot start; spans are dropped");
            return;
        }
    };
    let client = {
        let _inside = runtime.enter();
        reqwest::Client::new()
    };
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    let mut since = Instant::now();
    let mut warned: Option<Instant> = None;
    loop {
        let open = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(span) => {
                batch.push(span);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(span) => batch.push(span),
                        Err(_) => break,
                    }
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => true,
            Err(RecvTimeoutError::Disconnected) => false,
        };
        let due = batch.len() >= BATCH || since.elapsed() >= Duration::from_secs(1) || !open;
        if due && !batch.is_empty() {
            let n = batch.len() as u64;
            let body = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "lattice-gateway".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..InstrumentationScope::default()
                        }),
                        spans: std::mem::take(&mut batch),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            }
            .encode_to_vec();
            // Built inside the runtime: the request's timer belongs to it.
            let sent = runtime.block_on(async {
                client
                    .post(url)
                    .header("content-type", "application/x-protobuf")
                    .timeout(timeout)
                    .body(body)
                    .send()
                    .await
            });
            let failure = match sent {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("the collector answered {}", r.status())),
                Err(e) => Some(e.to_string()),
            };
            if let Some(cause) = failure {
                failures.inc();
                dropped.inc_by(n);
                // Once a minute at most: a collector that is down must not
                // flood the log.
                if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(%cause, url, spans = n, "trace export failed; the batch is dropped");
                    warned = Some(Instant::now());
                }
            }
            since = Instant::now();
        } else if batch.is_empty() {
            since = Instant::now();
        }
        if !open {
            return;
        }
    }
}
