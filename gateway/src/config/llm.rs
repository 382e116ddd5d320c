//! The `[[backends]]`, `[[models]]` and `[[limits]]` sections: raw types
//! (unknown keys rejected with their line, like the rest of the file) and
//! their validation into the inference router's specs and the limiter's.
//!
//! Must never: accept a route whose backends do not exist, or read a
//! secret from anywhere but the environment.

use lattice_inference_router::{BackendKind, BackendSpec, ModelRoute, Strategy};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::limits::{CallKind, LimitSpec, OnUnavailable, Per};
use crate::GatewayError;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    name: String,
    /// `vllm`, `mlx`, `lattice` or `openai`.
    kind: String,
    /// The server's root, without `/v1`.
    url: String,
    #[serde(default = "d_location")]
    location: String,
    #[serde(default = "d_weight")]
    weight: u32,
    /// The backend's API key, read from this environment variable.
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default = "d_llm_timeout")]
    timeout_ms: u64,
    #[serde(default = "d_health")]
    health_interval_ms: u64,
}

fn d_location() -> String {
    "on_prem".into()
}
fn d_weight() -> u32 {
    1
}
fn d_llm_timeout() -> u64 {
    60_000
}
fn d_health() -> u64 {
    2_000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    name: String,
    #[serde(default)]
    aliases: Vec<String>,
    backends: Vec<String>,
    #[serde(default = "d_strategy")]
    strategy: String,
    #[serde(default)]
    upstream_model: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
}

impl RawModel {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl RawBackend {
    /// The server's root URL, as written.
    pub fn url(&self) -> &str {
        &self.url
    }
}

fn d_strategy() -> String {
    "least_outstanding".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    name: String,
    /// `agent` or `tenant`.
    per: String,
    #[serde(default)]
    only: Vec<String>,
    #[serde(default)]
    requests: Option<u64>,
    #[serde(default)]
    tokens: Option<u64>,
    window_seconds: u64,
    /// `llm`, `mcp`, `http`: the calls it counts (default: all).
    #[serde(default)]
    kinds: Option<Vec<String>>,
    /// `deny` (default) or `allow`: when the shared counter store is down.
    #[serde(default)]
    on_unavailable: Option<String>,
}

/// The validated inference sections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlmConfig {
    pub backends: Vec<BackendSpec>,
    pub models: Vec<ModelRoute>,
    pub limits: Vec<LimitSpec>,
}

/// Validates raw sections. `known` backends (already validated, e.g. the
/// config file's when adding a run-time route) may be named by the models
/// besides the ones defined here.
pub fn build(
    backends: Vec<RawBackend>,
    models: Vec<RawModel>,
    limits: Vec<RawLimit>,
    bad: &dyn Fn(String) -> GatewayError,
    known: &[BackendSpec],
) -> Result<LlmConfig, GatewayError> {
    let mut specs = Vec::new();
    for b in backends {
        let kind = BackendKind::parse(&b.kind).ok_or_else(|| {
            bad(format!(
                "backend `{}`: kind `{}` is not one of vllm, mlx, lattice, openai",
                b.name, b.kind
            ))
        })?;
        let url = b.url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad(format!(
                "backend `{}`: url `{}` is not an http(s) URL",
                b.name, b.url
            )));
        }
        if url.ends_with("/v1") {
            return Err(bad(format!(
                "backend `{}`: give the server's root without `/v1` (`{}`)",
                b.name,
                url.trim_end_matches("/v1")
            )));
        }
        let api_key = match b.api_key_env {
            Some(var) => Some(std::env::var(&var).map_err(|_| {
                bad(format!(
                    "backend `{}`: environment variable `{var}` is not set",
                    b.name
                ))
            })?),
            None => None,
        };
        if b.weight == 0 {
            return Err(bad(format!(
                "backend `{}`: weight must be positive",
                b.name
            )));
        }
        specs.push(BackendSpec {
            name: b.name,
            kind,
            url,
            location: b.location,
            weight: b.weight,
            api_key,
            timeout: Duration::from_millis(b.timeout_ms.max(1)),
            health_interval: Duration::from_millis(b.health_interval_ms.max(100)),
            pin: None,
        });
    }
    let mut routes = Vec::new();
    for m in models {
        let strategy = Strategy::parse(&m.strategy).ok_or_else(|| {
            bad(format!(
                "model `{}`: strategy `{}` is not one of least_outstanding, latency_ewma, weighted, priority",
                m.name, m.strategy
            ))
        })?;
        routes.push(ModelRoute {
            name: m.name,
            aliases: m.aliases,
            backends: m.backends,
            strategy,
            upstream_model: m.upstream_model,
            labels: m.labels,
        });
    }
    let all: Vec<BackendSpec> = known.iter().chain(&specs).cloned().collect();
    lattice_inference_router::router::validate(&all, &routes).map_err(|e| bad(e.to_string()))?;
    let mut limit_specs: Vec<LimitSpec> = Vec::new();
    for l in limits {
        let per = match l.per.as_str() {
            "agent" => Per::Agent,
            "tenant" => Per::Tenant,
            other => {
                return Err(bad(format!(
                    "limit `{}`: per = `{other}` is not agent or tenant",
                    l.name
                )))
            }
        };
        if l.requests.is_none() && l.tokens.is_none() {
            return Err(bad(format!(
                "limit `{}` sets neither requests nor tokens",
                l.name
            )));
        }
        if l.window_seconds == 0 {
            return Err(bad(format!(
                "limit `{}`: window_seconds must be positive",
                l.name
            )));
        }
        if limit_specs.iter().any(|x| x.name == l.name) {
            return Err(bad(format!("limit `{}` is defined twice", l.name)));
        }
        let kinds = match l.kinds {
            None => vec![CallKind::Llm, CallKind::Mcp, CallKind::Http],
            Some(names) => names
                .iter()
                .map(|k| {
                    CallKind::parse(k).ok_or_else(|| {
                        bad(format!(
                            "limit `{}`: kind `{k}` is not llm, mcp or http",
                            l.name
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        if l.tokens.is_some() && !kinds.contains(&CallKind::Llm) {
            return Err(bad(format!(
                "limit `{}`: tokens are spent by llm calls only",
                l.name
            )));
        }
        let on_unavailable = match l.on_unavailable.as_deref() {
            None | Some("deny") => OnUnavailable::Deny,
            Some("allow") => OnUnavailable::Allow,
            Some(other) => {
                return Err(bad(format!(
                    "limit `{}`: on_unavailable = `{other}` is not deny or allow",
                    l.name
                )))
            }
        };
        limit_specs.push(LimitSpec {
            name: l.name,
            per,
            only: l.only,
            requests: l.requests,
            tokens: l.tokens,
            window: Duration::from_secs(l.window_seconds),
            kinds,
            on_unavailable,
        });
    }
    Ok(LlmConfig {
        backends: specs,
        models: routes,
        limits: limit_specs,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use std::path::Path;

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:8080\"\n[policy]\nfiles = [\"p.cedar\"]\n";

    fn check(extra: &str) -> Result<crate::config::Config, String> {
        parse(Path::new("/etc/lattice.toml"), &format!("{BASE}{extra}")).map_err(|e| e.to_string())
    }

    #[test]
    fn routes_backends_and_limits_are_validated() {
        let ok = check(
            "[[backends]]\nname = \"a\"\nkind = \"vllm\"\nurl = \"http://10.0.0.5:8000/\"\n\
             [[models]]\nname = \"m\"\naliases = [\"x\"]\nbackends = [\"a\"]\nstrategy = \"latency_ewma\"\n\
             [[limits]]\nname = \"rpm\"\nper = \"agent\"\nrequests = 60\nwindow_seconds = 60\n",
        )
        .unwrap();
        assert_eq!(ok.llm.backends[0].url, "http://10.0.0.5:8000");
        assert_eq!(ok.llm.backends[0].location, "on_prem");
        assert_eq!(ok.llm.models[0].aliases, vec!["x".to_string()]);
        assert_eq!(ok.llm.limits[0].requests, Some(60));

        let cases = [
            ("[[backends]]\nname = \"a\"\nkind = \"tgi\"\nurl = \"http://h\"\n", "kind `tgi`"),
            ("[[backends]]\nname = \"a\"\nkind = \"vllm\"\nurl = \"http://h/v1\"\n", "without `/v1`"),
            ("[[backends]]\nname = \"a\"\nkind = \"vllm\"\nurl = \"ftp://h\"\n", "not an http(s) URL"),
            (
                "[[backends]]\nname = \"a\"\nkind = \"openai\"\nurl = \"https://h\"\napi_key_env = \"LATTICE_SURELY_UNSET_VAR\"\n",
                "`LATTICE_SURELY_UNSET_VAR` is not set",
            ),
            ("[[models]]\nname = \"m\"\nbackends = [\"ghost\"]\n", "`ghost`"),
            (
                "[[backends]]\nname = \"a\"\nkind = \"vllm\"\nurl = \"http://h\"\n[[models]]\nname = \"m\"\nbackends = [\"a\"]\nstrategy = \"random\"\n",
                "strategy `random`",
            ),
            ("[[limits]]\nname = \"l\"\nper = \"agent\"\nwindow_seconds = 60\n", "neither requests nor tokens"),
            ("[[limits]]\nname = \"l\"\nper = \"team\"\ntokens = 5\nwindow_seconds = 60\n", "not agent or tenant"),
            ("[[limits]]\nname = \"l\"\nper = \"agent\"\ntokens = 5\nwindow_seconds = 60\nkinds = [\"mcp\"]\n", "tokens are spent by llm calls only"),
            ("[[limits]]\nname = \"l\"\nper = \"agent\"\nrequests = 5\nwindow_seconds = 60\nkinds = [\"sql\"]\n", "kind `sql`"),
            ("[[limits]]\nname = \"l\"\nper = \"agent\"\nrequests = 5\nwindow_seconds = 60\non_unavailable = \"open\"\n", "on_unavailable = `open` is not deny or allow"),
            ("[[backends]]\nname = \"a\"\nkind = \"vllm\"\nurl = \"http://h\"\nweight = 1\ncolour = \"red\"\n", ":10: unknown field `colour`"),
        ];
        for (extra, expected) in cases {
            let e = check(extra).unwrap_err();
            assert!(
                e.contains(expected),
                "{extra}\n→ {e}\n(expected {expected})"
            );
        }
    }
}
