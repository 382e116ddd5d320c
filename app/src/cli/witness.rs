//! `lattice witness`: an outside witness of gateways' audit logs, run as a
//! process of its own, with its own key and storage. It polls each gateway's
//! `/audit/v1/checkpoints`, submits every new checkpoint with its proof to
//! its witness core (`lattice_audit::witness`: the C2SP `add-checkpoint`
//! checks), gives each co-signature back to the gateway
//! (`POST /audit/v1/cosignatures`), and refuses a checkpoint that does not
//! extend what it co-signed before — loudly: an error line per refusal, and
//! with `--once` the exit status 1, and in `lattice_witness_refused_total`.
//!
//! With `--listen` it also serves the C2SP `tlog-witness` protocol itself
//! (`POST /add-checkpoint`, for logs that push, given with `--accept`) and
//! its counters (`GET /metrics`).
//!
//! Must never: co-sign outside the witness core's checks, or keep going
//! silently after a refusal.

use anyhow::Context;
use clap::Subcommand;
use lattice_audit::witness::{add_checkpoint_request, CosignatureSigner, Refusal, Witness};
use lattice_audit::NoteVerifier;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Subcommand)]
pub enum WitnessCmd {
    /// Create the witness's key in DIR and print its verifier key (what a
    /// gateway lists in `audit.witnesses`).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The witness's name, e.g. witness.example.com/w1.
        #[arg(long)]
        name: String,
    },
    /// Witness gateways: poll, co-sign what is consistent, refuse the rest.
    Run {
        #[arg(long)]
        dir: PathBuf,
        /// A gateway to witness: `URL=VERIFIER_KEY`, the key being the
        /// node's `audit-signing.vkey`.
        #[arg(long = "log", required = true)]
        logs: Vec<String>,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// One pass over every gateway; exit 1 if anything was refused.
        #[arg(long)]
        once: bool,
        /// Also serve `POST /add-checkpoint` and `GET /metrics` here.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// A log that pushes its checkpoints: `ORIGIN=VERIFIER_KEY`.
        #[arg(long = "accept")]
        accept: Vec<String>,
    },
}

pub fn run(cmd: WitnessCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        WitnessCmd::Init { dir, name } => {
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("witness.key");
            anyhow::ensure!(!path.exists(), "{} exists already", path.display());
            let key = CosignatureSigner::generate(&name);
            std::fs::write(&path, key.encoded())?;
            println!("{}", key.verifier_key());
            Ok(ExitCode::SUCCESS)
        }
        WitnessCmd::Run {
            dir,
            logs,
            interval_ms,
            once,
            listen,
            accept,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let every = Duration::from_millis(interval_ms);
            rt.block_on(async {
                let node = open(&dir, &accept)?;
                if let Some(addr) = listen {
                    let listener = tokio::net::TcpListener::bind(addr).await?;
                    println!("witness listening on {}", listener.local_addr()?);
                    tokio::spawn(serve(listener, node.clone()));
                }
                watch(node, &logs, every, once).await
            })
        }
    }
}

/// One gateway being witnessed.
struct Log {
    url: String,
    vkey: String,
    /// Its origin, once its first checkpoint was read.
    origin: Option<String>,
}

/// The witness and its counters, shared by the poller and the server.
struct Node {
    witness: tokio::sync::Mutex<Witness>,
    cosigned: AtomicU64,
    refused: AtomicU64,
}

type Shared = std::sync::Arc<Node>;

/// Opens the witness in `dir` with the logs that push to it.
fn open(dir: &Path, accept: &[String]) -> anyhow::Result<Shared> {
    let key_path = dir.join("witness.key");
    let key = std::fs::read_to_string(&key_path)
        .with_context(|| format!("{} (run `lattice witness init`)", key_path.display()))?;
    let signer = CosignatureSigner::from_encoded(&key)?;
    let mut witness = Witness::open(&dir.join("witness.db"), signer, &[])?;
    for a in accept {
        let (origin, vkey) = a
            .split_once('=')
            .context("--accept wants ORIGIN=VERIFIER_KEY")?;
        witness.add_log(origin, vkey)?;
    }
    Ok(std::sync::Arc::new(Node {
        witness: tokio::sync::Mutex::new(witness),
        cosigned: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    }))
}

impl Node {
    /// The witness core's verdict on one `add-checkpoint`, counted.
    async fn add_checkpoint(&self, request: &[u8]) -> Result<String, Refusal> {
        let verdict = self.witness.lock().await.add_checkpoint(request);
        let counter = if verdict.is_ok() {
            &self.cosigned
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::AcqRel);
        verdict
    }
}

/// Serves `POST /add-checkpoint` (C2SP tlog-witness) and `GET /metrics`.
async fn serve(listener: tokio::net::TcpListener, node: Shared) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(node.clone(), req));
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

type Reply = hyper::Response<http_body_util::Full<bytes::Bytes>>;

fn reply(status: u16, content_type: &str, body: String) -> Result<Reply, std::convert::Infallible> {
    let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(r)
}

/// Largest `add-checkpoint` body accepted.
const MAX_REQUEST: usize = 64 * 1024;

async fn answer(
    node: Shared,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<Reply, std::convert::Infallible> {
    use http_body_util::BodyExt;
    match (req.method().as_str(), req.uri().path()) {
        ("POST", "/add-checkpoint") => {
            let limited = http_body_util::Limited::new(req.into_body(), MAX_REQUEST);
            let Ok(body) = limited.collect().await.map(|b| b.to_bytes()) else {
                return reply(413, "text/plain", "request too large\n".into());
            };
            match node.add_checkpoint(&body).await {
                Ok(lines) => reply(200, "text/plain; charset=utf-8", lines),
                Err(r) if r.status == 409 => reply(409, "text/x.tlog.size", r.body),
                Err(r) => {
                    tracing::error!(
                        status = r.status,
                        "REFUSED to co-sign a pushed checkpoint: {}",
                        r.reason
                    );
                    reply(r.status, "text/plain; charset=utf-8", r.body)
                }
            }
        }
        ("GET", "/metrics") => reply(
            200,
            "text/plain; version=0.0.4",
            format!(
                "# TYPE lattice_witness_cosigned_total counter\nlattice_witness_cosigned_total {}\n# TYPE lattice_witness_refused_total counter\nlattice_witness_refused_total {}\n",
                node.cosigned.load(Ordering::Acquire),
                node.refused.load(Ordering::Acquire)
            ),
        ),
        _ => reply(404, "text/plain", "not found\n".into()),
    }
}

async fn watch(
    node: Shared,
    logs: &[String],
    every: Duration,
    once: bool,
) -> anyhow::Result<ExitCode> {
    let mut logs: Vec<Log> = logs
        .iter()
        .map(|l| {
            let (url, vkey) = l.split_once('=').context("--log wants URL=VERIFIER_KEY")?;
            NoteVerifier::from_encoded(vkey).with_context(|| format!("--log {url}"))?;
            Ok(Log {
                url: url.trim_end_matches('/').to_string(),
                vkey: vkey.to_string(),
                origin: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut refused = 0;
    loop {
        for log in &mut logs {
            match poll(&client, &node, log).await {
                Ok(n) => refused += n,
                Err(e) => {
                    tracing::warn!(gateway = %log.url, error = %format!("{e:#}"), "cannot poll the gateway")
                }
            }
        }
        if once {
            return Ok(if refused > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// The gateway's checkpoints after `after`, each with its proof.
async fn page(client: &reqwest::Client, url: &str, after: u64) -> anyhow::Result<Vec<Value>> {
    let page: Value = client
        .get(format!("{url}/audit/v1/checkpoints?after={after}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(page["checkpoints"].as_array().cloned().unwrap_or_default())
}

/// Submits the gateway's new checkpoints in order; returns how many were
/// refused (after a refusal the rest of the page cannot extend the log).
async fn poll(client: &reqwest::Client, node: &Node, log: &mut Log) -> anyhow::Result<usize> {
    if log.origin.is_none() {
        // The log's origin, from its first checkpoint signed by its key.
        let first = page(client, &log.url, 0).await?;
        let Some(note) = first.first().and_then(|e| e["note"].as_str()) else {
            return Ok(0); // no checkpoint yet
        };
        let checkpoint = NoteVerifier::from_encoded(&log.vkey)?.open(note)?;
        node.witness
            .lock()
            .await
            .add_log(&checkpoint.origin, &log.vkey)?;
        tracing::info!(gateway = %log.url, origin = %checkpoint.origin, "witnessing");
        log.origin = Some(checkpoint.origin);
    }
    let origin = log.origin.clone().unwrap_or_default();
    let held = node
        .witness
        .lock()
        .await
        .witnessed(&origin)?
        .map_or(0, |w| w.size);
    let mut old = held;
    for entry in page(client, &log.url, held).await? {
        let (Some(size), Some(note)) = (entry["size"].as_u64(), entry["note"].as_str()) else {
            anyhow::bail!("a checkpoint entry without size or note");
        };
        let proof: Vec<[u8; 32]> = entry["proof"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|h| {
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(h.as_str()?)
                    .ok()?;
                raw.try_into().ok()
            })
            .collect();
        let request = add_checkpoint_request(old, &proof, note);
        match node.add_checkpoint(request.as_bytes()).await {
            Ok(lines) => {
                client
                    .post(format!("{}/audit/v1/cosignatures", log.url))
                    .json(&json!({"size": size, "cosignatures": lines}))
                    .send()
                    .await?
                    .error_for_status()?;
                tracing::info!(gateway = %log.url, size, "co-signed");
                old = size;
            }
            Err(refusal) => {
                tracing::error!(
                    gateway = %log.url,
                    size,
                    status = refusal.status,
                    "REFUSED to co-sign: {}",
                    refusal.reason
                );
                return Ok(1);
            }
        }
    }
    Ok(0)
}
