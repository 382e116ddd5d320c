//! `lattice-bare-pingora`: Pingora as a bare reverse proxy — no
//! authentication, no policy, no audit, no metrics — built with the same
//! Pingora version, features, thread count and allocator as the gateway.
//! It is the `pingora` target of `lattice-load-compare`: the floor that the
//! framework alone sets under Lattice's figures, so a benchmark separates
//! what enforcement costs from what the proxy framework costs.
//!
//! `lattice-bare-pingora --listen 127.0.0.1:PORT --upstream HOST:PORT [--threads N]`
//!
//! Must never: be mistaken for a gateway (it enforces nothing), or listen
//! beyond loopback.

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() -> Result<()> {
    let mut listen = None;
    let mut upstream = None;
    let mut threads = 2usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value),
            "--upstream" => upstream = Some(value),
            "--threads" => threads = value.parse().context("--threads")?,
            other => bail!("unknown flag {other:?} (--listen, --upstream, --threads)"),
        }
    }
    let listen = listen.context("--listen 127.0.0.1:PORT is required")?;
    let upstream = upstream.context("--upstream HOST:PORT is required")?;
    let addr: std::net::SocketAddr = listen.parse().context("--listen")?;
    if !addr.ip().is_loopback() {
        bail!("--listen must be a loopback address: this proxy enforces nothing");
    }
    let conf = ServerConf {
        threads,
        // Stop at once on SIGTERM (the harness's end of a run), as the
        // benchmark's gateway does (`grace_period_seconds = 0`).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever()
}
