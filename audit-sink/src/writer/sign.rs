//! Signing checkpoints: the writer stores each signed note beside the
//! log and appends it to the witness file, if one is set. A store or a
//! witness file that refuses (a full disk) refuses every checkpoint while
//! it lasts, several a second: each is an `Outage` (`crate::outage`),
//! logged when it starts, as a count every `REPORT_EVERY` while it lasts,
//! and once when it is over — a line per checkpoint was 98 ERROR lines in
//! 3 s of a full witness volume. A checkpoint the store refused is signed
//! again at the next one (the log only grows, so the next covers it); one
//! the witness file missed is superseded by the next that reaches it.
//!
//! Must never: hide a refusal's start or its end, or leave half a line in
//! the witness file.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::Writer;
use crate::checkpoint::{Checkpoint, NoteSigner};
use crate::outage::{Outage, Report, REPORT_EVERY};

/// What refuses the writer's checkpoints, while it does.
pub(crate) struct Refusals {
    store: Outage,
    witness: Outage,
}

impl Default for Refusals {
    fn default() -> Self {
        Self {
            store: Outage::new("audit checkpoints cannot be stored"),
            witness: Outage::new("audit checkpoints cannot be exported to the witness file"),
        }
    }
}

impl Writer {
    /// Signs a checkpoint of the log as it is now, once the store holds
    /// every entry it covers.
    pub(super) fn checkpoint(&mut self) {
        self.fill();
        if self.gave_up.is_some() {
            // The store lacks events: the next start signs them.
            return;
        }
        self.last_checkpoint_at = Instant::now();
        let size = self.frontier.size();
        if size == 0 || size == self.last_checkpoint {
            return;
        }
        let cp = Checkpoint {
            origin: self.cfg.origin.clone(),
            size,
            root: self.frontier.root(),
        };
        let note = self.cfg.signer.sign(&cp);
        let store = &self.refusals.store;
        if let Err(e) = self.store.put_checkpoint(size, &cp.root, &note) {
            match store.hit() {
                Report::Started => {
                    tracing::error!(error = %e, size, "could not store audit checkpoint (it is signed again at the next); reported every {} s while it lasts", REPORT_EVERY.as_secs())
                }
                Report::Still { calls, secs } => {
                    tracing::error!(error = %e, size, refused = calls, "still could not store audit checkpoints: {calls} more refused in the last {secs} s")
                }
                Report::Quiet => {}
            }
            return;
        }
        if let Some((refused, secs)) = store.clear() {
            tracing::warn!(size, refused, "audit checkpoints are stored again; {refused} were refused over {secs} s (this one covers them)");
        }
        if let Some(path) = &self.cfg.witness_file {
            let witness = &self.refusals.witness;
            match export(path, &self.cfg.signer, &note) {
                Err(e) => match witness.hit() {
                    Report::Started => {
                        tracing::error!(error = %e, path = %path.display(), "could not export audit checkpoint to the witness file; reported every {} s while it lasts", REPORT_EVERY.as_secs())
                    }
                    Report::Still { calls, secs } => {
                        tracing::error!(error = %e, path = %path.display(), refused = calls, "still could not export audit checkpoints to the witness file: {calls} more refused in the last {secs} s")
                    }
                    Report::Quiet => {}
                },
                Ok(()) => {
                    if let Some((refused, secs)) = witness.clear() {
                        tracing::warn!(path = %path.display(), size, refused, "audit checkpoints reach the witness file again; {refused} were not exported over {secs} s (this one covers them)");
                    }
                }
            }
        }
        self.last_checkpoint = size;
    }
}

/// Appends one checkpoint to the witness file as a JSON line and syncs it.
/// A write the disk refuses part of (full) is cut back off: the file never
/// keeps half a line (one made `lattice audit verify` fail on it).
fn export(path: &Path, signer: &NoteSigner, note: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::json!({ "vkey": signer.verifier().encoded(), "note": note });
    let line = format!("{json}\n");
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let len = f.metadata()?.len();
    let written = f.write_all(line.as_bytes()).and_then(|()| f.sync_data());
    if written.is_err() {
        let _ = f.set_len(len);
    }
    written
}
