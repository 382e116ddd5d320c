//! The egress guard at connect time, for every upstream the gateway dials
//! by name (MCP HTTP and SSE servers, model backends, HTTP routes): the
//! name is resolved here, every address it resolves to is checked against
//! the rules of `config::egress`, and the connection goes to the checked
//! addresses only — the client does not resolve again, so a name that
//! answers differently the second time (DNS rebinding) gains nothing.
//! Addresses written as literals were checked when their entry was
//! validated. The guarded clients use no proxy from the environment and
//! follow no redirect (a redirect could name an unchecked address).
//!
//! Must never: hand a client an address a rule refuses and the allow list
//! does not name, or resolve a name without checking what it got.

use arc_swap::ArcSwap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use crate::config::EgressConfig;

/// The guard, with the allow list of the running config (swapped on
/// reload).
#[derive(Debug, Default)]
pub struct Guard {
    allow: ArcSwap<EgressConfig>,
}

impl Guard {
    pub fn new(allow: EgressConfig) -> Arc<Self> {
        Arc::new(Self {
            allow: ArcSwap::from_pointee(allow),
        })
    }

    /// The allow list of a reloaded config.
    pub fn set(&self, allow: EgressConfig) {
        self.allow.store(Arc::new(allow));
    }

    /// Resolves `host` and checks every address; the checked addresses.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let allow = self.allow.load_full();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
            .collect();
        let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
        allow.check_resolved(host, &ips)?;
        Ok(addrs)
    }

    /// The resolver to give an HTTP client.
    pub fn resolver(self: &Arc<Self>) -> Arc<dyn reqwest::dns::Resolve> {
        Arc::new(Resolver(self.clone()))
    }
}

/// The check of a registration's host before it is stored: an address by
/// the rules, a name on what it resolves to now (connections are checked
/// again, every time). Blocking (it resolves).
pub fn vet(allow: &EgressConfig, host: &str) -> Result<(), String> {
    let Some(name) = allow.check_literal(host)? else {
        return Ok(());
    };
    let ips: Vec<IpAddr> = (name.as_str(), 0)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{name}`: {e}"))?
        .map(|a| a.ip())
        .collect();
    allow.check_resolved(&name, &ips)
}

/// `vet` of a URL's host (a URL without one has nothing to dial).
pub fn vet_url(allow: &EgressConfig, url: &str) -> Result<(), String> {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
    {
        Some(host) => vet(allow, &host),
        None => Ok(()),
    }
}

struct Resolver(Arc<Guard>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let addrs = guard.resolve(name.as_str(), 0).await.map_err(|e| {
                tracing::warn!(host = name.as_str(), reason = %e, "egress refused a connection");
                Box::new(std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))
                    as Box<dyn std::error::Error + Send + Sync>
            })?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
