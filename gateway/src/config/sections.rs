//! The config file's sections, each validated and built on its own:
//! `[server]`, `[[auth.jwt]]`, `[audit]` (with `[audit.clickhouse]`) and
//! `[[routes]]`. `parse` in `mod.rs` reads the file and puts them together.
//!
//! Must never: accept a value the runtime would fail on later, or read a
//! secret from anywhere but the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawAudit, RawJwt, RawRoute, RawServer};
use super::{
    AuditConfig, JwksSource, JwtIssuer, Route, ServerConfig, Upstream, SUPPORTED_JWT_ALGS,
};
use crate::GatewayError;

/// Makes a path relative to the config file absolute.
pub(super) type Resolve<'a> = &'a dyn Fn(&str) -> PathBuf;
/// An error naming the config file.
pub(super) type Bad<'a> = &'a dyn Fn(String) -> GatewayError;

/// `[server]`.
pub(super) fn server(
    s: RawServer,
    resolve: Resolve,
    bad: Bad,
) -> Result<ServerConfig, GatewayError> {
    let listen: SocketAddr = s.listen.parse().map_err(|_| {
        bad(format!(
            "server.listen `{}` is not an address like 127.0.0.1:8080",
            s.listen
        ))
    })?;
    if s.node_id.is_empty()
        || !s
            .node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(bad(
            "server.node_id must be non-empty and use only letters, digits, '-', '_' and '.'"
                .into(),
        ));
    }
    if s.max_body_bytes == 0
        || s.max_header_bytes == 0
        || s.max_headers == 0
        || s.max_uri_bytes == 0
    {
        return Err(bad(
            "server.max_body_bytes, max_header_bytes, max_headers and max_uri_bytes must be positive"
                .into(),
        ));
    }
    if s.max_connections_per_client == 0 {
        return Err(bad(
            "server.max_connections_per_client must be positive".into()
        ));
    }
    if s.threads == 0 {
        return Err(bad("server.threads must be positive".into()));
    }
    let data_dir = resolve(&s.data_dir);
    let tls = s
        .tls
        .map(|t| super::tls::tls(t, resolve, bad))
        .transpose()?;
    Ok(ServerConfig {
        listen,
        node_id: s.node_id,
        data_dir,
        max_body_bytes: s.max_body_bytes,
        max_header_bytes: s.max_header_bytes,
        max_headers: s.max_headers,
        max_uri_bytes: s.max_uri_bytes,
        body_read_timeout: Duration::from_millis(s.body_read_timeout_ms.max(1)),
        keepalive_idle_timeout_s: s.keepalive_idle_timeout_s.max(1),
        header_read_timeout: Duration::from_millis(s.header_read_timeout_ms.max(1)),
        max_connections_per_client: s.max_connections_per_client,
        grace_period: Duration::from_secs(s.grace_period_seconds),
        graceful_shutdown_timeout: Duration::from_secs(s.graceful_shutdown_timeout_seconds),
        threads: s.threads,
        reload_poll: Duration::from_millis(s.reload_poll_ms.max(50)),
        tls,
    })
}

/// `[[auth.jwt]]`: each issuer's keys, audiences, algorithms and claims.
pub(super) fn jwt_issuers(
    issuers: Vec<RawJwt>,
    resolve: Resolve,
    bad: Bad,
) -> Result<Vec<JwtIssuer>, GatewayError> {
    let mut jwt = Vec::new();
    for (i, j) in issuers.into_iter().enumerate() {
        let jwks = match (j.jwks_file, j.jwks_url) {
            (Some(f), None) => JwksSource::File(resolve(&f)),
            (None, Some(u)) if u.starts_with("https://") || u.starts_with("http://") => {
                JwksSource::Url(u)
            }
            (None, Some(u)) => {
                return Err(bad(format!(
                    "auth.jwt[{i}].jwks_url `{u}` is not an http(s) URL"
                )))
            }
            _ => {
                return Err(bad(format!(
                    "auth.jwt[{i}] needs exactly one of jwks_file and jwks_url"
                )))
            }
        };
        if j.audiences.is_empty() {
            return Err(bad(format!(
                "auth.jwt[{i}].audiences must not be empty: audience validation is mandatory"
            )));
        }
        for alg in &j.algorithms {
            if !SUPPORTED_JWT_ALGS.contains(&alg.as_str()) {
                return Err(bad(format!(
                    "auth.jwt[{i}].algorithms: `{alg}` is not supported (use {})",
                    SUPPORTED_JWT_ALGS.join(", ")
                )));
            }
        }
        jwt.push(JwtIssuer {
            issuer: j.issuer,
            audiences: j.audiences,
            jwks,
            jwks_refresh: Duration::from_secs(j.jwks_refresh_seconds.max(10)),
            algorithms: j.algorithms,
            agent_claim: j.agent_claim,
            tenant_claim: j.tenant_claim,
            default_tenant: j.default_tenant,
            roles_claim: j.roles_claim,
            labels_claim: j.labels_claim,
            leeway: Duration::from_secs(j.leeway_seconds),
            principal_kind: match j.principal_type.as_deref() {
                None | Some("agent") => lattice_policy::PrincipalKind::Agent,
                Some("human") => lattice_policy::PrincipalKind::Human,
                Some(other) => {
                    return Err(bad(format!(
                        "auth.jwt[{i}].principal_type: `{other}` is not `agent` or `human`"
                    )))
                }
            },
        });
    }
    Ok(jwt)
}

/// `[audit]` and `[audit.clickhouse]`.
pub(super) fn audit(
    a: RawAudit,
    data_dir: &Path,
    resolve: Resolve,
    bad: Bad,
) -> Result<AuditConfig, GatewayError> {
    if a.queue_capacity == 0 || a.batch_max == 0 || a.checkpoint_every == 0 {
        return Err(bad(
            "audit.queue_capacity, batch_max and checkpoint_every must be positive".into(),
        ));
    }
    Ok(AuditConfig {
        db_path: data_dir.join("audit.db"),
        key_path: data_dir.join("audit-signing.key"),
        queue_capacity: a.queue_capacity,
        batch_max: a.batch_max,
        on_full: a.on_full,
        durability: a.durability,
        durable_timeout: Duration::from_millis(a.durable_timeout_ms.max(1)),
        checkpoint_every: a.checkpoint_every,
        checkpoint_interval: Duration::from_millis(a.checkpoint_interval_ms.max(10)),
        witness_file: a.witness_file.as_deref().map(resolve),
        witnesses: a
            .witnesses
            .iter()
            .map(|k| lattice_audit::witness::CosignatureVerifier::from_encoded(k))
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("audit.witnesses: {e}")))?,
        retention: match a.retention {
            None => lattice_audit::Retention::default(),
            Some(r) => {
                let max_age = r
                    .max_age
                    .as_deref()
                    .map(|v| parse_age(v).map_err(|e| bad(format!("audit.retention.max_age: {e}"))))
                    .transpose()?;
                let max_bytes = r
                    .max_size
                    .as_deref()
                    .map(|v| {
                        parse_size(v).map_err(|e| bad(format!("audit.retention.max_size: {e}")))
                    })
                    .transpose()?;
                if max_age.is_none() && max_bytes.is_none() {
                    return Err(bad(
                        "[audit.retention] needs max_age, max_size or both".into()
                    ));
                }
                lattice_audit::Retention { max_age, max_bytes }
            }
        },
        clickhouse: match a.clickhouse {
            None => None,
            Some(c) => {
                if !c.url.starts_with("http://") && !c.url.starts_with("https://") {
                    return Err(bad(format!(
                        "audit.clickhouse.url `{}` must be an https:// (or, on a trusted network, http://) URL",
                        c.url
                    )));
                }
                let ca_file = c.ca_file.as_deref().map(resolve);
                if let Some(path) = &ca_file {
                    if !c.url.starts_with("https://") {
                        return Err(bad(format!(
                            "audit.clickhouse.ca_file is set but url `{}` is not https://",
                            c.url
                        )));
                    }
                    if !path.is_file() {
                        return Err(bad(format!(
                            "audit.clickhouse.ca_file {}: no such file",
                            path.display()
                        )));
                    }
                }
                if c.batch_max == 0 || c.max_backlog_events == 0 {
                    return Err(bad(
                        "audit.clickhouse.batch_max and max_backlog_events must be positive".into(),
                    ));
                }
                let password = match c.password_env {
                    None => String::new(),
                    Some(var) => std::env::var(&var).map_err(|_| {
                        bad(format!(
                            "audit.clickhouse: environment variable `{var}` is not set"
                        ))
                    })?,
                };
                Some(lattice_audit::clickhouse::ClickHouseConfig {
                    url: c.url.trim_end_matches('/').to_string(),
                    database: c.database,
                    user: c.user,
                    password,
                    batch_max: c.batch_max,
                    flush_interval: Duration::from_millis(c.flush_interval_ms.max(10)),
                    max_backlog_events: c.max_backlog_events,
                    ca_file,
                })
            }
        },
    })
}

/// A positive whole number followed by one of `units` (name, multiplier):
/// `"30d"`, `"2GiB"`. `what` and `example` word the errors.
fn amount(v: &str, units: &[(&str, u64)], what: &str, example: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{v}` is not {what} such as {example}"))?;
    let Some((_, times)) = units.iter().find(|(name, _)| *name == unit.trim()) else {
        let names: Vec<&str> = units.iter().map(|(name, _)| *name).collect();
        return Err(format!(
            "`{v}`: the unit must be one of {}",
            names.join(", ")
        ));
    };
    if n == 0 {
        return Err(format!("`{v}` must be more than zero"));
    }
    n.checked_mul(*times)
        .ok_or_else(|| format!("`{v}` is too large"))
}

/// A retention age: `s`, `m`, `h` or `d` (`"90d"`, `"12h"`).
pub(super) fn parse_age(v: &str) -> Result<Duration, String> {
    let units = [("s", 1), ("m", 60), ("h", 3_600), ("d", 86_400)];
    amount(v, &units, "an age", "\"30d\" or \"12h\"").map(Duration::from_secs)
}

/// A size in bytes: `B`, `KB`, `MB`, `GB` (powers of 1000) or `KiB`,
/// `MiB`, `GiB` (powers of 1024).
pub(super) fn parse_size(v: &str) -> Result<u64, String> {
    let units = [
        ("B", 1),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
    ];
    amount(v, &units, "a size", "\"500MB\" or \"2GiB\"")
}

/// `[[routes]]`: names, upstreams and injected credentials.
pub(super) fn routes(raw: Vec<RawRoute>, bad: Bad) -> Result<Vec<Route>, GatewayError> {
    let mut routes: Vec<Route> = Vec::new();
    for r in raw {
        if r.name.is_empty()
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(format!(
                "route name `{}` must use only letters, digits, '-' and '_'",
                r.name
            )));
        }
        if routes.iter().any(|x| x.name == r.name) {
            return Err(bad(format!("route `{}` is defined twice", r.name)));
        }
        let upstream =
            Upstream::parse(&r.upstream).map_err(|m| bad(format!("route `{}`: {m}", r.name)))?;
        let credential = match r.credential {
            None => None,
            Some(c) => {
                let secret = match (c.value, c.env) {
                    (Some(v), None) => v,
                    (None, Some(var)) => std::env::var(&var).map_err(|_| {
                        bad(format!(
                            "route `{}`: credential environment variable `{var}` is not set",
                            r.name
                        ))
                    })?,
                    _ => {
                        return Err(bad(format!(
                            "route `{}`: credential needs exactly one of value and env",
                            r.name
                        )))
                    }
                };
                let name = http::HeaderName::from_bytes(c.header.as_bytes()).map_err(|_| {
                    bad(format!(
                        "route `{}`: `{}` is not a header name",
                        r.name, c.header
                    ))
                })?;
                let mut value = http::HeaderValue::from_str(&format!("{}{secret}", c.prefix))
                    .map_err(|_| {
                        bad(format!(
                            "route `{}`: the credential is not a valid header value",
                            r.name
                        ))
                    })?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        routes.push(Route {
            name: r.name,
            upstream,
            labels: r.labels,
            timeout: Duration::from_millis(r.timeout_ms.max(1)),
            credential,
        });
    }
    Ok(routes)
}
