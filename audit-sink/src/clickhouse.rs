//! Shipping the node's log to ClickHouse. The embedded store is the node's
//! durable, ordered, append-only log of record (SQLite WAL, `synchronous =
//! FULL`: every batch is synced before the calls it records are forwarded,
//! unless the gateway runs with `audit.durability = "async"`);
//! a shipper thread tails it in `seq` order and inserts batches into
//! ClickHouse, so an unreachable ClickHouse never blocks or loses anything:
//! the backlog waits in the store and is replayed in order when ClickHouse
//! returns. The backlog is bounded (`max_backlog_events`): past it the
//! pipeline refuses new calls (503), like a full queue.
//!
//! Tables are created and migrated by versioned migrations recorded in
//! `lattice_migrations`. Written for ClickHouse 18.16 (Debian's) and modern
//! servers alike: plain `MergeTree`, `DateTime`-free integer timestamps, no
//! `LowCardinality`, no `TTL`, RowBinary inserts without schema fetching.
//!
//! `https://` URLs go over TLS (rustls): the server's certificate must
//! chain to `ca_file` when one is configured, else to the bundled Mozilla
//! roots. The client is our own hyper client, handed to the `clickhouse`
//! crate, because that crate's TLS features cannot take a CA file.
//!
//! Must never: ship an event out of `seq` order, skip one silently, or
//! send anything to an `https://` URL whose certificate did not verify.

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::Store;
use crate::AuditError;

mod read;
pub(crate) use read::RemoteLog;

/// Where and how to ship.
#[derive(Debug, Clone, PartialEq)]
pub struct ClickHouseConfig {
    /// `http://host:8123`
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    /// Most rows per insert.
    pub batch_max: usize,
    /// How long the shipper waits for more events before inserting.
    pub flush_interval: Duration,
    /// Events written locally but not yet in ClickHouse before new calls are
    /// refused.
    pub max_backlog_events: u64,
    /// PEM certificates to trust for an `https://` URL (instead of the
    /// bundled Mozilla roots).
    pub ca_file: Option<std::path::PathBuf>,
}

/// Most signed checkpoints shipped with one batch of events (the rest go
/// with the next).
const CHECKPOINTS_PER_BATCH: usize = 10_000;
/// Events read from the store at a time while a batch is sent.
const READ_CHUNK: usize = 4_096;

/// The versioned migrations, applied in order, each once.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "audit_events",
        "CREATE TABLE IF NOT EXISTS audit_events (
            node String,
            seq UInt64,
            leaf_hash String,
            event_id String,
            ts_us UInt64,
            day Date MATERIALIZED toDate(toDateTime(intDiv(ts_us, 1000000))),
            phase String,
            request_id String,
            tenant String,
            principal String,
            kind String,
            target String,
            action String,
            decision String,
            status UInt16,
            latency_us UInt64,
            tokens_in UInt64,
            tokens_out UInt64,
            event String
        ) ENGINE = MergeTree() PARTITION BY day ORDER BY (tenant, ts_us, principal)",
    ),
    (
        2,
        "audit_checkpoints",
        "CREATE TABLE IF NOT EXISTS audit_checkpoints (
            node String,
            size UInt64,
            root String,
            note String
        ) ENGINE = MergeTree() ORDER BY (node, size)",
    ),
];

/// One row of `audit_events`.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct EventRow {
    pub node: String,
    pub seq: u64,
    pub leaf_hash: String,
    pub event_id: String,
    pub ts_us: u64,
    pub phase: String,
    pub request_id: String,
    pub tenant: String,
    pub principal: String,
    pub kind: String,
    pub target: String,
    pub action: String,
    pub decision: String,
    pub status: u16,
    pub latency_us: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub event: String,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
struct CheckpointRow {
    node: String,
    size: u64,
    root: String,
    note: String,
}

#[derive(Row, Deserialize)]
struct Version {
    v: u32,
}

#[derive(Row, Deserialize)]
struct Progress {
    n: u64,
    next: u64,
}

/// The error with its causes (a TLS failure is three levels down).
fn ch_err(e: clickhouse::error::Error) -> AuditError {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    AuditError::ClickHouse(text)
}

/// The TLS settings for `cfg`: its CA file's certificates, or the bundled
/// Mozilla roots.
fn tls_config(cfg: &ClickHouseConfig) -> Result<rustls::ClientConfig, AuditError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let bad =
                |e: String| AuditError::ClickHouse(format!("ca_file {}: {e}", path.display()));
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuditError::ClickHouse(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client for the configured server (TLS for an `https://` URL).
pub fn client(cfg: &ClickHouseConfig) -> Result<Client, AuditError> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(cfg)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(2))
        .build(connector);
    Ok(Client::with_http_client(hyper)
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(&cfg.password)
        .with_database(&cfg.database)
        // 18.16 has neither RowBinaryWithNamesAndTypes nor the settings the
        // validating path sends; `tests` keeps a check of the row layout.
        .with_validation(false))
}

/// Applies the migrations not yet recorded. Idempotent.
pub async fn migrate(client: &Client) -> Result<u32, AuditError> {
    client
        .query(
            "CREATE TABLE IF NOT EXISTS lattice_migrations (v UInt32, name String, applied_us UInt64)
             ENGINE = MergeTree() ORDER BY v",
        )
        .execute()
        .await
        .map_err(ch_err)?;
    let done: Vec<Version> = client
        .query("SELECT v FROM lattice_migrations")
        .fetch_all()
        .await
        .map_err(ch_err)?;
    let mut current = done.iter().map(|r| r.v).max().unwrap_or(0);
    for (v, name, sql) in MIGRATIONS {
        if *v <= current {
            continue;
        }
        client.query(sql).execute().await.map_err(ch_err)?;
        client
            .query("INSERT INTO lattice_migrations (v, name, applied_us) VALUES (?, ?, ?)")
            .bind(*v)
            .bind(*name)
            .bind(crate::now_us())
            .execute()
            .await
            .map_err(ch_err)?;
        current = *v;
    }
    Ok(current)
}

/// The next `seq` of `node` that ClickHouse does not hold yet.
pub async fn next_unshipped(client: &Client, node: &str) -> Result<u64, AuditError> {
    let p: Progress = client
        .query("SELECT count() AS n, max(seq) + 1 AS next FROM audit_events WHERE node = ?")
        .bind(node)
        .fetch_one()
        .await
        .map_err(ch_err)?;
    Ok(if p.n == 0 { 0 } else { p.next })
}

fn row(node: &str, seq: u64, json: &str, leaf: &[u8]) -> Result<EventRow, AuditError> {
    let e: crate::AuditEvent = serde_json::from_str(json)
        .map_err(|e| AuditError::Corrupt(format!("event #{seq}: {e}")))?;
    Ok(EventRow {
        node: node.to_string(),
        seq,
        leaf_hash: hex::encode(leaf),
        event_id: e.event_id,
        ts_us: e.ts_us,
        phase: match e.phase {
            crate::Phase::Decision => "decision".into(),
            crate::Phase::Outcome => "outcome".into(),
        },
        request_id: e.request_id,
        tenant: e.tenant,
        principal: e.principal,
        kind: e.kind,
        target: e.target,
        action: e.action,
        decision: e.decision,
        status: e.status.unwrap_or(0),
        latency_us: e.latency_us.unwrap_or(0),
        tokens_in: e.tokens_in.unwrap_or(0),
        tokens_out: e.tokens_out.unwrap_or(0),
        event: json.to_string(),
    })
}

/// Progress shared between the shipper and the pipeline.
#[derive(Default)]
pub struct ShipState {
    /// Next `seq` not yet in ClickHouse.
    pub shipped: AtomicU64,
    /// Whether `shipped` was read from ClickHouse (not assumed at start).
    pub confirmed: AtomicBool,
    /// True while the last attempt failed.
    pub failing: AtomicBool,
    pub stop: AtomicBool,
}

/// Ships until `state.stop` is set, then makes one last bounded attempt.
pub fn run_shipper(
    cfg: ClickHouseConfig,
    db_path: std::path::PathBuf,
    node: String,
    state: Arc<ShipState>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "the ClickHouse shipper cannot start");
            return;
        }
    };
    let client = match client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, url = %cfg.url, "the ClickHouse shipper cannot start");
            return;
        }
    };
    let mut next: Option<u64> = None;
    let mut last_checkpoint = 0u64;
    let mut backoff = Duration::from_millis(100);
    let mut final_deadline: Option<Instant> = None;
    loop {
        if state.stop.load(Ordering::Acquire) && final_deadline.is_none() {
            final_deadline = Some(Instant::now() + Duration::from_secs(5));
        }
        let attempt = rt.block_on(ship_once(
            &client,
            &cfg,
            &db_path,
            &node,
            &mut next,
            &mut last_checkpoint,
        ));
        match attempt {
            Ok(shipped_rows) => {
                if state.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("ClickHouse is reachable again; replaying the backlog in order");
                }
                backoff = Duration::from_millis(100);
                if let Some(n) = next {
                    state.shipped.store(n, Ordering::Release);
                    state.confirmed.store(true, Ordering::Release);
                }
                if shipped_rows == 0 {
                    if final_deadline.is_some() {
                        return;
                    }
                    std::thread::sleep(cfg.flush_interval);
                }
            }
            Err(e) => {
                if !state.failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e, url = %cfg.url, "cannot ship audit events to ClickHouse; they wait in the local store");
                }
                next = None; // re-read progress from the server after a failure
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        if final_deadline.is_some_and(|d| Instant::now() > d) {
            tracing::warn!(
                "stopping the ClickHouse shipper with a backlog; it is shipped at the next start"
            );
            return;
        }
    }
}

/// One batch. Returns the number of rows shipped (events and checkpoints).
async fn ship_once(
    client: &Client,
    cfg: &ClickHouseConfig,
    db_path: &std::path::Path,
    node: &str,
    next: &mut Option<u64>,
    last_checkpoint: &mut u64,
) -> Result<usize, AuditError> {
    let from = match *next {
        Some(n) => n,
        None => {
            migrate(client).await?;
            let n = next_unshipped(client, node).await?;
            let cp: Progress = client
                .query(
                    "SELECT count() AS n, max(size) AS next FROM audit_checkpoints WHERE node = ?",
                )
                .bind(node)
                .fetch_one()
                .await
                .map_err(ch_err)?;
            *last_checkpoint = cp.next;
            *next = Some(n);
            n
        }
    };
    let store = Store::open_read_only(db_path)?;
    // Rows are read and sent a chunk at a time: a whole batch in memory cost
    // the kernel zeroing fresh pages for every batch (100,000 rows: ~80 MB).
    let mut rows = store.range(from, cfg.batch_max.min(READ_CHUNK))?;
    if let Some((first, _, _)) = rows.first().filter(|(seq, _, _)| *seq > from) {
        // Only when ClickHouse lost rows it had confirmed: retention prunes
        // nothing ClickHouse has not confirmed.
        tracing::error!(
            from,
            first,
            "ClickHouse lacks audit events #{from}..#{} that were pruned from the local store; `lattice audit verify` will report them deleted",
            first - 1
        );
    }
    let mut shipped = 0;
    if !rows.is_empty() {
        let mut insert = client
            .insert::<EventRow>("audit_events")
            .await
            .map_err(ch_err)?;
        let mut last = from;
        loop {
            for (seq, json, leaf) in &rows {
                insert
                    .write(&row(node, *seq, json, leaf)?)
                    .await
                    .map_err(ch_err)?;
                last = *seq;
            }
            shipped += rows.len();
            let want = cfg.batch_max.saturating_sub(shipped).min(READ_CHUNK);
            if rows.len() < READ_CHUNK || want == 0 {
                break;
            }
            rows = store.range(last + 1, want)?;
            if rows.is_empty() {
                break;
            }
        }
        insert.end().await.map_err(ch_err)?;
        *next = Some(last + 1);
    }
    let shipped_to = next.unwrap_or(from);
    // Only the checkpoints not shipped yet (reading them all each batch
    // grew with the log: one per `checkpoint_every` events, forever).
    let checkpoints: Vec<(u64, String)> = store
        .checkpoints_after(*last_checkpoint, CHECKPOINTS_PER_BATCH)?
        .into_iter()
        .filter(|(size, _)| *size <= shipped_to)
        .collect();
    if !checkpoints.is_empty() {
        let mut insert = client
            .insert::<CheckpointRow>("audit_checkpoints")
            .await
            .map_err(ch_err)?;
        for (size, note) in &checkpoints {
            let root = note.lines().nth(2).unwrap_or_default().to_string();
            insert
                .write(&CheckpointRow {
                    node: node.to_string(),
                    size: *size,
                    root,
                    note: note.clone(),
                })
                .await
                .map_err(ch_err)?;
            *last_checkpoint = (*last_checkpoint).max(*size);
        }
        insert.end().await.map_err(ch_err)?;
    }
    Ok(shipped + checkpoints.len())
}
