//! The `[discovery]` section: zero-config workers. When present, the gateway
//! browses for workers announcing `_lattice._tcp` over mDNS (`mdns`) and
//! probes the listed `peers` (networks without multicast), and routes to
//! each one that proves membership of the cluster whose secret is in
//! `secret_env` (`lattice_inference_router::join`).
//!
//! Must never: import anything of the gateway above `config`, or read the
//! secret from anywhere but the environment.

use lattice_inference_router::join::{ClusterSecret, SECRET_ENV};
use lattice_inference_router::Strategy;
use serde::Deserialize;
use std::time::Duration;

use crate::GatewayError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    #[serde(default = "d_true")]
    mdns: bool,
    #[serde(default)]
    peers: Vec<String>,
    #[serde(default = "d_secret_env")]
    secret_env: String,
    #[serde(default = "d_interval")]
    interval_ms: u64,
    #[serde(default = "d_leave")]
    leave_after_ms: u64,
    #[serde(default = "d_timeout")]
    timeout_ms: u64,
    #[serde(default = "d_strategy")]
    strategy: String,
}

fn d_true() -> bool {
    true
}
fn d_secret_env() -> String {
    SECRET_ENV.into()
}
fn d_interval() -> u64 {
    1_000
}
fn d_leave() -> u64 {
    5_000
}
fn d_timeout() -> u64 {
    60_000
}
fn d_strategy() -> String {
    "least_outstanding".into()
}

/// `[discovery]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Browse `_lattice._tcp` over mDNS.
    pub mdns: bool,
    /// Worker URLs probed directly (`https://host:port`).
    pub peers: Vec<String>,
    pub secret_env: String,
    pub secret: ClusterSecret,
    /// How often peers are probed and members' health checked.
    pub interval: Duration,
    /// A member failing its checks (or no longer announced) this long leaves.
    pub leave_after: Duration,
    /// Request timeout of a discovered backend.
    pub timeout: Duration,
    /// How a discovered model's backends are chosen.
    pub strategy: Strategy,
}

pub(super) fn discovery(
    raw: Option<RawDiscovery>,
    bad: &dyn Fn(String) -> GatewayError,
) -> Result<Option<DiscoveryConfig>, GatewayError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let secret =
        ClusterSecret::from_env(&raw.secret_env).map_err(|e| bad(format!("[discovery]: {e}")))?;
    for p in &raw.peers {
        let ok = url::Url::parse(p)
            .ok()
            .filter(|u| u.scheme() == "https" && u.host_str().is_some() && u.path() == "/");
        if ok.is_none() {
            return Err(bad(format!(
                "[discovery] peers: `{p}` is not `https://host:port` (workers in a cluster serve TLS)"
            )));
        }
    }
    if raw.interval_ms < 100 || raw.leave_after_ms < raw.interval_ms {
        return Err(bad(
            "[discovery]: interval_ms is at least 100 and leave_after_ms at least interval_ms"
                .into(),
        ));
    }
    let strategy = Strategy::parse(&raw.strategy).ok_or_else(|| {
        bad(format!(
            "[discovery] strategy `{}` is not one of least_outstanding, latency_ewma, weighted, priority",
            raw.strategy
        ))
    })?;
    if !raw.mdns && raw.peers.is_empty() {
        return Err(bad(
            "[discovery]: with mdns = false, list the workers in peers".into(),
        ));
    }
    Ok(Some(DiscoveryConfig {
        mdns: raw.mdns,
        peers: raw
            .peers
            .iter()
            .map(|p| p.trim_end_matches('/').to_string())
            .collect(),
        secret_env: raw.secret_env,
        secret,
        interval: Duration::from_millis(raw.interval_ms),
        leave_after: Duration::from_millis(raw.leave_after_ms),
        timeout: Duration::from_millis(raw.timeout_ms.max(1)),
        strategy,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn build(toml_text: &str) -> Result<Option<DiscoveryConfig>, String> {
        let raw: RawDiscovery = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        discovery(Some(raw), &|m| GatewayError::Config(m)).map_err(|e| e.to_string())
    }

    #[test]
    fn bad_discovery_sections_say_what_is_wrong() {
        std::env::set_var(
            "LATTICE_TEST_DISCOVERY_SECRET",
            ClusterSecret::generate().encode(),
        );
        std::env::set_var("LATTICE_TEST_DISCOVERY_BAD", "hunter2");
        let env = "secret_env = \"LATTICE_TEST_DISCOVERY_SECRET\"\n";
        let table = [
            (
                "secret_env = \"LATTICE_SURELY_UNSET_VAR\"\n",
                "$LATTICE_SURELY_UNSET_VAR is not set",
            ),
            (
                "secret_env = \"LATTICE_TEST_DISCOVERY_BAD\"\n",
                "expected `lcs1_...`",
            ),
            (
                "peers = [\"http://10.0.0.5:8000\"]\n",
                "is not `https://host:port`",
            ),
            (
                "peers = [\"https://10.0.0.5:8000/v1\"]\n",
                "is not `https://host:port`",
            ),
            (
                "mdns = false\n",
                "with mdns = false, list the workers in peers",
            ),
            ("interval_ms = 10\n", "interval_ms is at least 100"),
            (
                "interval_ms = 1000\nleave_after_ms = 500\n",
                "leave_after_ms at least interval_ms",
            ),
            ("strategy = \"random\"\n", "strategy `random`"),
            ("port = 5353\n", "unknown field `port`"),
        ];
        for (text, says) in table {
            let text = if text.starts_with("secret_env") {
                text.to_string()
            } else {
                format!("{env}{text}")
            };
            let e = build(&text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        let ok = build(&format!("{env}peers = [\"https://10.0.0.5:8000/\"]\n"))
            .unwrap()
            .unwrap();
        assert_eq!(ok.peers, ["https://10.0.0.5:8000"]);
        assert!(ok.mdns);
        assert_eq!(ok.interval, Duration::from_secs(1));
    }
}
