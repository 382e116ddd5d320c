//! The `[cluster]` section: the state replicas share. Today one thing, a
//! Redis (or Valkey: the same protocol) that counts every `[[limits]]`
//! window for all replicas at once. Without it each replica counts in its
//! own memory.
//!
//! Must never: keep a password in the config (it is read from the
//! environment variable the file names), or import anything of the gateway
//! above `config`.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use crate::GatewayError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    #[serde(default)]
    redis: Option<String>,
    /// The environment variable that holds Redis's password (AUTH).
    #[serde(default)]
    password_env: Option<String>,
    /// PEM CA certificates a `rediss://` server's certificate must chain to
    /// (default: the system's roots).
    #[serde(default)]
    ca_file: Option<String>,
    #[serde(default = "d_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "d_prefix")]
    key_prefix: String,
}

fn d_timeout_ms() -> u64 {
    250
}

fn d_prefix() -> String {
    "lattice".into()
}

/// The shared counter store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://` (TLS); no password in it.
    pub url: String,
    pub password_env: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// Longest wait for a connection or an answer; past it the store
    /// counts as unreachable for that call.
    pub timeout: Duration,
    /// Every key the gateway writes starts with `<prefix>:`.
    pub prefix: String,
}

/// `[cluster]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    pub redis: Option<RedisConfig>,
}

pub(super) fn cluster(
    raw: RawCluster,
    resolve: &dyn Fn(&str) -> PathBuf,
    bad: &dyn Fn(String) -> GatewayError,
) -> Result<ClusterConfig, GatewayError> {
    let Some(url) = raw.redis else {
        if raw.password_env.is_some() || raw.ca_file.is_some() {
            return Err(bad(
                "cluster.password_env and cluster.ca_file need cluster.redis".into(),
            ));
        }
        return Ok(ClusterConfig::default());
    };
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or_else(|| {
            bad(format!(
                "cluster.redis `{url}` is not a redis:// or rediss:// URL"
            ))
        })?;
    if let Some((userinfo, _)) = rest.split_once('@') {
        if userinfo.contains(':') {
            return Err(bad(
                "cluster.redis must not carry a password: name the environment variable that holds it in cluster.password_env".into(),
            ));
        }
    }
    if let Some(var) = &raw.password_env {
        if std::env::var_os(var).is_none() {
            return Err(bad(format!(
                "cluster.password_env names `{var}`, which is not set"
            )));
        }
    }
    if raw.ca_file.is_some() && !url.starts_with("rediss://") {
        return Err(bad("cluster.ca_file needs a rediss:// URL".into()));
    }
    if raw.key_prefix.is_empty() || raw.key_prefix.contains(char::is_whitespace) {
        return Err(bad(
            "cluster.key_prefix must be non-empty, without spaces".into()
        ));
    }
    Ok(ClusterConfig {
        redis: Some(RedisConfig {
            url,
            password_env: raw.password_env,
            ca_file: raw.ca_file.as_deref().map(resolve),
            timeout: Duration::from_millis(raw.timeout_ms.max(1)),
            prefix: raw.key_prefix,
        }),
    })
}
