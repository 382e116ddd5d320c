//! Signing checkpoints: the writer stores each signed note beside the
//! log and appends it to the witness file, if one is set. A store or a
//! witness file that refuses (a full disk) refuses every checkpoint while
//! it lasts, several a second: each is logged when it starts, as a count
//! every `REPORT_EVERY` while it lasts, and once when it is over — a line
//! per checkpoint was 14 ERROR lines in a few seconds of a full disk. A
//! checkpoint the store refused is signed again at the next one (the log
//! only grows, so the next covers it); one the witness file missed is
//! superseded by the next that reaches it.
//!
//! Plain fields, not the gateway's atomics (`gateway::outage`): only the
//! writer thread signs.
//!
//! Must never: hide a refusal's start or its end, or leave half a line in
//! the witness file.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Writer;
use crate::checkpoint::{Checkpoint, NoteSigner};

/// How often a lasting refusal is reported again.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What a refusal should log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Say {
    /// The first refusal since it (re)started.
    Started,
    /// `refused` more since the last report (this one included), over
    /// `secs` seconds since it started.
    Still { refused: u64, secs: u64 },
    /// Nothing: reported less than `REPORT_EVERY` ago.
    Quiet,
}

/// One thing that may refuse checkpoints (the store, the witness file).
#[derive(Debug, Default)]
pub(crate) struct Refusal {
    /// When it started and when it was last reported, while it lasts.
    since: Option<(Instant, Instant)>,
    /// Refused since it started, and since the last report.
    total: u64,
    unreported: u64,
}

impl Refusal {
    /// A checkpoint was refused at `now`.
    pub(crate) fn refused(&mut self, now: Instant) -> Say {
        self.total += 1;
        self.unreported += 1;
        match &mut self.since {
            None => {
                self.since = Some((now, now));
                self.unreported = 0;
                Say::Started
            }
            Some((start, reported)) if now.duration_since(*reported) >= REPORT_EVERY => {
                *reported = now;
                let refused = std::mem::take(&mut self.unreported);
                Say::Still {
                    refused,
                    secs: now.duration_since(*start).as_secs(),
                }
            }
            Some(_) => Say::Quiet,
        }
    }

    /// A checkpoint went through at `now`: when refusals came before it,
    /// how many and over how many seconds (it is over).
    pub(crate) fn accepted(&mut self, now: Instant) -> Option<(u64, u64)> {
        let (start, _) = self.since.take()?;
        self.unreported = 0;
        Some((
            std::mem::take(&mut self.total),
            now.duration_since(start).as_secs(),
        ))
    }
}

/// The writer's two.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    store: Refusal,
    witness: Refusal,
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
        let stored = self.store.put_checkpoint(size, &cp.root, &note);
        let store = &mut self.refusals.store;
        if let Err(e) = stored {
            match store.refused(Instant::now()) {
                Say::Started => {
                    tracing::error!(error = %e, size, "could not store audit checkpoint (it is signed again at the next); reported every {} s while it lasts", REPORT_EVERY.as_secs())
                }
                Say::Still { refused, secs } => {
                    tracing::error!(error = %e, size, refused, "still could not store audit checkpoints: {refused} more refused, {secs} s since the first")
                }
                Say::Quiet => {}
            }
            return;
        }
        if let Some((refused, secs)) = store.accepted(Instant::now()) {
            tracing::warn!(size, refused, "audit checkpoints are stored again; {refused} were refused over {secs} s (this one covers them)");
        }
        if let Some(path) = &self.cfg.witness_file {
            let witness = &mut self.refusals.witness;
            match export(path, &self.cfg.signer, &note) {
                Err(e) => match witness.refused(Instant::now()) {
                    Say::Started => {
                        tracing::error!(error = %e, path = %path.display(), "could not export audit checkpoint to the witness file; reported every {} s while it lasts", REPORT_EVERY.as_secs())
                    }
                    Say::Still { refused, secs } => {
                        tracing::error!(error = %e, path = %path.display(), refused, "still could not export audit checkpoints to the witness file: {refused} more refused, {secs} s since the first")
                    }
                    Say::Quiet => {}
                },
                Ok(()) => {
                    if let Some((refused, secs)) = witness.accepted(Instant::now()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Refusals and acceptances at seconds after the start, and what each
    /// says.
    #[test]
    fn a_refusal_is_said_at_its_start_every_ten_seconds_and_at_its_end() {
        #[derive(Debug, PartialEq)]
        enum Seen {
            Said(Say),
            Over(Option<(u64, u64)>),
        }
        use Seen::{Over, Said};
        /// A name, (seconds, accepted) steps, and what each says.
        type Case = (&'static str, &'static [(u64, bool)], &'static [Seen]);
        let cases: &[Case] = &[
            (
                "never refused",
                &[(0, true), (1, true)],
                &[Over(None), Over(None)],
            ),
            (
                "one refusal, then over",
                &[(0, false), (3, true), (4, true)],
                &[Said(Say::Started), Over(Some((1, 3))), Over(None)],
            ),
            (
                "many a second: quiet until ten seconds passed",
                &[
                    (0, false),
                    (1, false),
                    (2, false),
                    (9, false),
                    (10, false),
                    (11, false),
                    (20, false),
                    (25, true),
                ],
                &[
                    Said(Say::Started),
                    Said(Say::Quiet),
                    Said(Say::Quiet),
                    Said(Say::Quiet),
                    Said(Say::Still {
                        refused: 4,
                        secs: 10,
                    }),
                    Said(Say::Quiet),
                    Said(Say::Still {
                        refused: 2,
                        secs: 20,
                    }),
                    Over(Some((7, 25))),
                ],
            ),
            (
                "a second outage starts afresh",
                &[(0, false), (1, false), (2, true), (30, false), (31, true)],
                &[
                    Said(Say::Started),
                    Said(Say::Quiet),
                    Over(Some((2, 2))),
                    Said(Say::Started),
                    Over(Some((1, 1))),
                ],
            ),
        ];
        for (name, steps, want) in cases {
            let t0 = Instant::now();
            let mut r = Refusal::default();
            let seen: Vec<Seen> = steps
                .iter()
                .map(|&(s, ok)| {
                    let now = t0 + Duration::from_secs(s);
                    if ok {
                        Over(r.accepted(now))
                    } else {
                        Said(r.refused(now))
                    }
                })
                .collect();
            assert_eq!(&seen, want, "{name}");
        }
    }
}
