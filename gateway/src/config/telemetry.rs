//! The `[telemetry]` section: where the gateway sends its traces
//! (OpenTelemetry, OTLP over HTTP with protobuf bodies), how many it
//! samples, and how many spans may wait for export before new ones are
//! dropped (counted, never blocking a call).
//!
//! Must never: import anything of the gateway above `config`.

use serde::Deserialize;
use std::time::Duration;

use crate::GatewayError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    /// The collector's base URL; traces go to `<it>/v1/traces`.
    #[serde(default)]
    otlp_endpoint: Option<String>,
    #[serde(default = "d_ratio")]
    sample_ratio: f64,
    #[serde(default = "d_service")]
    service_name: String,
    #[serde(default = "d_queue")]
    queue_spans: usize,
    #[serde(default = "d_timeout_ms")]
    timeout_ms: u64,
}

fn d_ratio() -> f64 {
    1.0
}
fn d_service() -> String {
    "lattice".into()
}
fn d_queue() -> usize {
    8192
}
fn d_timeout_ms() -> u64 {
    5000
}

/// Trace export, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// `<endpoint>/v1/traces`.
    pub traces_url: String,
    /// Share of new traces sampled (a caller's `traceparent` decides for
    /// its own trace).
    pub sample_ratio: f64,
    pub service_name: String,
    /// Spans waiting for export; past it new spans are dropped and counted.
    pub queue_spans: usize,
    /// Longest wait for the collector per batch.
    pub timeout: Duration,
}

/// `[telemetry]`, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetryConfig {
    pub otlp: Option<OtlpConfig>,
}

pub(super) fn telemetry(
    raw: RawTelemetry,
    bad: &dyn Fn(String) -> GatewayError,
) -> Result<TelemetryConfig, GatewayError> {
    let Some(endpoint) = raw.otlp_endpoint else {
        return Ok(TelemetryConfig::default());
    };
    let base = endpoint.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://"))
        || url::Url::parse(base).is_err()
    {
        return Err(bad(format!(
            "telemetry.otlp_endpoint `{endpoint}` is not an http(s) URL"
        )));
    }
    if !(0.0..=1.0).contains(&raw.sample_ratio) {
        return Err(bad(format!(
            "telemetry.sample_ratio {} is not between 0 and 1",
            raw.sample_ratio
        )));
    }
    if raw.queue_spans == 0 || raw.service_name.is_empty() {
        return Err(bad(
            "telemetry.queue_spans must be positive and service_name non-empty".into(),
        ));
    }
    Ok(TelemetryConfig {
        otlp: Some(OtlpConfig {
            traces_url: format!("{base}/v1/traces"),
            sample_ratio: raw.sample_ratio,
            service_name: raw.service_name,
            queue_spans: raw.queue_spans,
            timeout: Duration::from_millis(raw.timeout_ms.max(1)),
        }),
    })
}
