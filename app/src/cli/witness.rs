//! `lattice witness`: an outside witness of gateways' audit logs, run as a
//! process of its own, with its own key and storage. It polls each gateway's
//! `/audit/v1/checkpoints`, submits every new checkpoint with its proof to
//! its witness core (`lattice_audit::witness`: the C2SP `add-checkpoint`
//! checks), gives each co-signature back to the gateway
//! (`POST /audit/v1/cosignatures`), and refuses a checkpoint that does not
//! extend what it co-signed before — loudly: an error line per refusal, and
//! with `--once` the exit status 1.

use anyhow::Context;
use clap::Subcommand;
use lattice_audit::witness::{add_checkpoint_request, CosignatureSigner, Witness};
use lattice_audit::NoteVerifier;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
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
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(watch(&dir, &logs, Duration::from_millis(interval_ms), once))
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

async fn watch(
    dir: &Path,
    logs: &[String],
    every: Duration,
    once: bool,
) -> anyhow::Result<ExitCode> {
    let key_path = dir.join("witness.key");
    let key = std::fs::read_to_string(&key_path)
        .with_context(|| format!("{} (run `lattice witness init`)", key_path.display()))?;
    let signer = CosignatureSigner::from_encoded(&key)?;
    let mut witness = Witness::open(&dir.join("witness.db"), signer, &[])?;
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
            match poll(&client, &mut witness, log).await {
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
async fn poll(
    client: &reqwest::Client,
    witness: &mut Witness,
    log: &mut Log,
) -> anyhow::Result<usize> {
    if log.origin.is_none() {
        // The log's origin, from its first checkpoint signed by its key.
        let first = page(client, &log.url, 0).await?;
        let Some(note) = first.first().and_then(|e| e["note"].as_str()) else {
            return Ok(0); // no checkpoint yet
        };
        let checkpoint = NoteVerifier::from_encoded(&log.vkey)?.open(note)?;
        witness.add_log(&checkpoint.origin, &log.vkey)?;
        tracing::info!(gateway = %log.url, origin = %checkpoint.origin, "witnessing");
        log.origin = Some(checkpoint.origin);
    }
    let origin = log.origin.clone().unwrap_or_default();
    let held = witness.witnessed(&origin)?.map_or(0, |w| w.size);
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
        match witness.add_checkpoint(request.as_bytes()) {
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
