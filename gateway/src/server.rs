//! Wiring a running gateway: data directory, signing key, key store, policy
//! runtime, audit pipeline, watcher, and the Pingora server. Returns when the
//! server has shut down and every accepted audit event is written.
//!
//! Must never: serve before the audit pipeline is open, or stop
//! without draining it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use lattice_audit::{AuditPipeline, NoteSigner, PipelineConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use rand::RngCore;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::reload::spawn_watcher;
use crate::runtime::{Runtime, Shared};
use crate::GatewayError;
use crate::{identity::KeyCache, state::StateStore};

/// The checkpoint origin and key name of a node's log.
pub fn log_origin(node_id: &str) -> String {
    format!("lattice/{node_id}/audit")
}

/// Loads the node's audit signing key, creating it (and its public verifier
/// key file beside it) on first start.
pub fn load_or_create_signer(key_path: &Path, node_id: &str) -> Result<NoteSigner, GatewayError> {
    let io = |e: std::io::Error| GatewayError::io(key_path.display(), e);
    let signer = if key_path.exists() {
        let text = std::fs::read_to_string(key_path).map_err(io)?;
        NoteSigner::from_encoded(&text)?
    } else {
        if let Some(dir) = key_path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let signer = NoteSigner::generate(&log_origin(node_id));
        write_private(key_path, &signer.encoded()).map_err(io)?;
        signer
    };
    // The verifier key beside it, written again whenever it is missing or
    // not this key's (a start that could not finish writing it).
    let vkey_path = key_path.with_extension("vkey");
    let vkey = signer.verifier().encoded() + "\n";
    if std::fs::read_to_string(&vkey_path).ok().as_deref() != Some(vkey.as_str()) {
        write_atomically(&vkey_path, &vkey, 0o644, true)
            .map_err(|e| GatewayError::io(vkey_path.display(), e))?;
    }
    Ok(signer)
}

/// Writes a new file readable only by its owner (keys); never replaces an
/// existing one. The file appears whole or not at all: a key cut short by
/// a full disk once stopped every later start ("not a PRIVATE+KEY note
/// signing key").
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    write_atomically(path, text, 0o600, false)
}

/// Writes `text` to a temporary file beside `path`, syncs it, then puts it
/// in place: renamed over `path` (`replace`), or hard-linked only where
/// nothing is (fails with `AlreadyExists` otherwise). The directory is
/// synced after. On any error the temporary file is removed.
fn write_atomically(path: &Path, text: &str, mode: u32, replace: bool) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let put = || -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if replace {
            std::fs::rename(&tmp, path)?;
        } else {
            std::fs::hard_link(&tmp, path)?;
            std::fs::remove_file(&tmp)?;
        }
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    let done = put();
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// The key that signs MCP session ids: read, or created (32 random bytes, mode 0600) on first use.
/// Replicas that share the file accept each other's sessions.
pub(crate) fn session_key(path: &Path) -> Result<[u8; 32], GatewayError> {
    let io = |e: std::io::Error| GatewayError::io(path.display(), e);
    let key = if path.exists() {
        let text = std::fs::read_to_string(path).map_err(io)?;
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| GatewayError::Config(format!("{}: {e}", path.display())))?;
        <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            GatewayError::Config(format!(
                "{}: the session key must be 32 bytes",
                path.display()
            ))
        })?
    } else {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        write_private(path, &(STANDARD.encode(key) + "\n")).map_err(io)?;
        key
    };
    Ok(key)
}

/// Runs the gateway until SIGTERM (graceful) or SIGINT (fast).
pub fn run(config: Config) -> Result<(), GatewayError> {
    run_with(config, None)
}

/// `run`, with the registry the admin API installs through.
pub fn run_with(
    config: Config,
    registry: Option<Arc<dyn crate::runtime::RegistryService>>,
) -> Result<(), GatewayError> {
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|e| GatewayError::io(data_dir.display(), e))?;
    let signer = load_or_create_signer(&config.audit.key_path, &config.server.node_id)?;
    let store = StateStore::open(&data_dir)?;
    let keys = KeyCache::load(&store)?;
    drop(store);
    let runtime = Runtime::build(config.clone())?;
    let a = &config.audit;
    let pipeline = AuditPipeline::start(PipelineConfig {
        db_path: a.db_path.clone(),
        node: config.server.node_id.clone(),
        origin: log_origin(&config.server.node_id),
        queue_capacity: a.queue_capacity,
        batch_max: a.batch_max,
        checkpoint_every: a.checkpoint_every,
        checkpoint_interval: a.checkpoint_interval,
        witness_file: a.witness_file.clone(),
        signer,
        clickhouse: a.clickhouse.clone(),
        retention: a.retention.clone(),
    })?;
    let runtime_mcp_servers = runtime.config.mcp_servers.clone();
    let egress = crate::egress::Guard::new(runtime.config.egress.clone());
    let inference = lattice_inference_router::Router::start_with(Some(egress.resolver()))
        .map_err(|e| GatewayError::Server(e.to_string()))?;
    inference
        .configure(&runtime.config.llm.backends, &runtime.config.llm.models)
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    let cluster = match &config.cluster.redis {
        Some(redis) => Some(Arc::new(crate::cluster::Redis::connect(redis)?)),
        None => None,
    };
    let metrics = Metrics::new();
    let shared = Arc::new(Shared {
        discovered: crate::discovered::Members::default(),
        inference: Arc::new(inference),
        limiter: match &cluster {
            Some(redis) => crate::limits::Limiter::shared(redis.clone()),
            None => crate::limits::Limiter::default(),
        },
        cluster: cluster.clone(),
        otlp: match &config.telemetry.otlp {
            Some(otlp) => Some(crate::otlp::Otlp::start(
                otlp,
                &config.server.node_id,
                metrics.otlp_spans_dropped.clone(),
                metrics.otlp_export_failures.clone(),
            )?),
            None => None,
        },
        mcp_sessions: lattice_mcp::session::Sessions::with_key(session_key(
            &config.mcp.session_key_file,
        )?)
        .with_ttl(config.mcp.session_ttl_seconds),
        server_requests: Arc::default(),
        egress: egress.clone(),
        runtime: arc_swap::ArcSwap::from_pointee(runtime),
        keys,
        audit: pipeline.handle(),
        metrics,
        outages: Default::default(),
        // Always running: servers can be registered at run time.
        mcp: Some(Arc::new(crate::mcp_hub::McpHub::start(
            &runtime_mcp_servers,
            crate::mcp_hub::Pinning {
                data_dir: data_dir.clone(),
                dns: Some(lattice_mcp::http::Dns(egress.resolver())),
                // This process is the `lattice` binary: it has `stdio-guard`.
                stdio_guard: std::env::current_exe().ok(),
                auto_approve: config.mcp.auto_approve_first_seen,
                audit: pipeline.handle(),
                cache: Arc::default(),
            },
        )?)),
        startup: config.clone(),
        registry,
    });
    if let Some(cluster) = &cluster {
        // Sessions ended and keys revoked on other replicas (a weak
        // reference: the subscription must not keep the node alive).
        let node = Arc::downgrade(&shared);
        cluster.subscribe(move |revoked| {
            let Some(node) = node.upgrade() else {
                return;
            };
            match revoked {
                crate::cluster::Revoked::Session(sid) => node.mcp_sessions.end(&sid),
                crate::cluster::Revoked::Key(id) => node.keys.revoke_elsewhere(&id),
            }
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = spawn_watcher(shared.clone(), &data_dir, stop.clone())?;
    let discovery = crate::discovery::spawn(shared.clone(), stop.clone())?;

    if let Some(addr) = config.demo_upstream {
        std::thread::Builder::new()
            .name("demo-upstream".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => {
                        if let Err(e) = rt.block_on(crate::demo::serve_echo(addr)) {
                            tracing::error!(error = %e, %addr, "demo upstream stopped");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "demo upstream cannot start"),
                }
            })
            .map_err(|e| GatewayError::Server(e.to_string()))?;
    }

    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout.as_secs()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let proxy = pingora::proxy::http_proxy(
        &server.configuration,
        Gateway {
            shared: shared.clone(),
        },
    );
    // Every connection passes the guard first: per-address caps, idle and
    // request-head deadlines (`conn`).
    let mut service = pingora::services::listening::Service::new(
        "lattice".to_string(),
        crate::conn::Guard::new(proxy, shared.clone()),
    );
    let listen = config.server.listen.to_string();
    match &config.server.tls {
        Some(tls) => {
            let cert =
                crate::tls::ReloadingCert::start(tls, config.server.reload_poll, stop.clone())?;
            service.add_tls_with_settings(&listen, None, crate::tls::settings(tls, cert)?);
        }
        None => {
            if !config.server.listen.ip().is_loopback() {
                tracing::warn!(
                    %listen,
                    "serving plain HTTP off loopback: bearer tokens cross the network in clear; configure [server.tls] or terminate TLS in front of the gateway"
                );
            }
            service.add_tcp(&listen);
        }
    }
    server.add_service(service);
    tracing::info!(
        listen = %config.server.listen,
        tls = config.server.tls.is_some(),
        node = %config.server.node_id,
        data_dir = %data_dir.display(),
        "lattice gateway starting"
    );
    server.run(RunArgs::default());

    tracing::info!("listener closed; draining the audit pipeline");
    stop.store(true, Ordering::Release);
    let _ = watcher.join();
    if let Some(d) = discovery {
        let _ = d.join();
    }
    match shared.limiter.surrender_leases() {
        Ok(0) => {}
        Ok(units) => tracing::info!(units, "unused leased limit units given back"),
        Err(e) => {
            tracing::warn!(error = %e, "could not give back the leased limit units (they count until their window ends)")
        }
    }
    let written = shared.audit.written();
    drop(shared);
    pipeline.shutdown()?;
    tracing::info!(events = written, "audit pipeline drained; lattice stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lattice_mcp::session::Sessions;

    fn agent() -> lattice_policy::Principal {
        lattice_policy::Principal {
            kind: lattice_policy::PrincipalKind::Agent,
            id: "x".into(),
            tenant: "t".into(),
            roles: vec![],
            labels: vec![],
            auth_method: "api_key".into(),
        }
    }

    #[test]
    fn the_session_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let a = Sessions::with_key(session_key(&path).unwrap());
        let b = Sessions::with_key(session_key(&path).unwrap());
        let token = a.issue(&agent(), "2025-11-25");
        assert!(b.verify(&token, &agent()).is_some());
    }

    #[test]
    fn keys_are_written_whole_never_over_another_and_the_verifier_key_heals() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        write_private(&key, "one").unwrap();
        let err = write_private(&key, "two").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "one");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind, in either case.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // A signing key whose verifier key was cut short: the next load
        // writes it again.
        let signing = dir.path().join("audit-signing.key");
        let signer = load_or_create_signer(&signing, "n").unwrap();
        let vkey = dir.path().join("audit-signing.vkey");
        std::fs::write(&vkey, "n+").unwrap();
        let again = load_or_create_signer(&signing, "n").unwrap();
        assert_eq!(again.encoded(), signer.encoded());
        assert_eq!(
            std::fs::read_to_string(&vkey).unwrap(),
            signer.verifier().encoded() + "\n"
        );
    }
}
