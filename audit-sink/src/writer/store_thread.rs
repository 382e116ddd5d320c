//! The store thread: writes what the writer hands it into the SQLite
//! store — rows of entries whose segment records are synced, signed
//! checkpoints (each then exported to the witness file), witness
//! co-signatures — in the order handed, on a thread of its own, and tells
//! flush waiters once everything handed before them is written.
//!
//! Why a thread: the writer writes the decisions calls wait on, under the
//! writer's lock. When it filled the store and stored checkpoints itself
//! (a synced SQLite commit and a synced witness line each), every decision
//! queued meanwhile waited behind them while the disk sat idle; at
//! saturation the cores were 8-19% idle, waiting on it. Here the store is
//! written while the writer syncs the next decisions.
//!
//! A write the store refuses is retried with a backoff until it succeeds
//! (the pipeline reports itself failing meanwhile, so new calls are
//! refused) — after the pipeline was closed for `SHUTDOWN_PATIENCE` at
//! most: then it gives up, counts what it did not write (the segments hold
//! it; the next start writes it in) and writes nothing more. A checkpoint
//! the store or the witness file refuses is an outage (`crate::outage`),
//! reported when it starts, while it lasts and when it is over; the writer
//! signs one again at its next checkpoint.
//!
//! Must never: write a job out of the order it was handed in, write rows
//! or a checkpoint after rows it gave up on, or tell a waiter before
//! everything handed before it is written.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::fill::patience_over;
use super::wal::Kick;
use super::Shared;
use crate::merkle::Hash;
use crate::outage::{Outage, Report, REPORT_EVERY};
use crate::store::{Row, Store};
use crate::AuditError;

/// Most rows handed and not yet written: past it the writer waits for the
/// store (a store slower than the calls slows the writer, as when it wrote
/// them itself, instead of filling memory).
pub(super) const MAX_BACKLOG: usize = 4096;
/// Rows written between two reports of room to a waiting writer.
const FREE_EVERY: usize = 512;

/// What the store thread is handed, done in order.
pub(super) enum Job {
    /// Rows in one commit, synced or not, with the decisions they leave
    /// owing an outcome and those they settle.
    Rows {
        rows: Vec<Row>,
        owed: Vec<(String, u64)>,
        settled: Vec<String>,
        sync: bool,
    },
    /// A signed checkpoint of the log at `size`.
    Checkpoint { size: u64, root: Hash, note: String },
    /// Witness co-signature lines of the checkpoint of a size (verified).
    Cosignatures(u64, Vec<String>),
    /// Told once everything handed before is written (or given up on).
    Tell(SyncSender<()>),
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Rows handed and not yet written.
    rows: usize,
    /// The thread is doing jobs it took from the queue.
    busy: bool,
    /// The writer is gone: the thread stops once the queue is empty.
    closed: bool,
}

/// What the writer and the store thread share.
#[derive(Default)]
struct Link {
    queue: Mutex<Queue>,
    /// Wakes the store thread.
    ready: Condvar,
    /// Wakes a writer waiting for the store thread (backlog or drain).
    done: Condvar,
}

/// What the store thread reports back.
#[derive(Default)]
pub(super) struct StoreState {
    /// Given up (a write refused past `SHUTDOWN_PATIENCE` after close):
    /// nothing more is written.
    pub(super) gave_up: AtomicBool,
    /// Rows not written since it gave up.
    pub(super) unfilled: AtomicUsize,
    /// A checkpoint the store refused: the writer signs one again even if
    /// the log did not grow.
    pub(super) checkpoint_lost: AtomicBool,
    /// The store file's bytes in use after the last write (when retention
    /// caps the size).
    pub(super) used_bytes: AtomicU64,
    /// The last write error, for the shutdown's report.
    pub(super) last_error: Mutex<String>,
}

/// Where checkpoints are exported, and the key line that goes with them.
pub(super) struct Witness {
    pub(super) path: PathBuf,
    pub(super) vkey: String,
}

/// The writer's side: hands jobs over, waits for the thread when asked.
pub(super) struct StoreThread {
    link: Arc<Link>,
    pub(super) state: Arc<StoreState>,
    /// The store: locked by the thread for each job; by the writer only
    /// after `drain` (retention), at start and in tests.
    pub(super) db: Arc<Mutex<Store>>,
    thread: Option<JoinHandle<()>>,
}

impl StoreThread {
    /// Starts the thread over an opened store.
    pub(super) fn start(
        store: Store,
        shared: Arc<Shared>,
        wal: Option<Kick>,
        witness: Option<Witness>,
        track_bytes: bool,
    ) -> Result<Self, AuditError> {
        let link = Arc::new(Link::default());
        let state = Arc::new(StoreState::default());
        let db = Arc::new(Mutex::new(store));
        let mut worker = Worker {
            db: db.clone(),
            shared,
            state: state.clone(),
            wal,
            witness,
            track_bytes,
            give_up_at: None,
            refused: Outage::new("audit checkpoints cannot be stored"),
            unexported: Outage::new("audit checkpoints cannot be exported to the witness file"),
        };
        let thread = {
            let link = link.clone();
            std::thread::Builder::new()
                .name("audit-store".into())
                .spawn(move || worker.run(&link))
                .map_err(|e| AuditError::Io(e.to_string()))?
        };
        Ok(Self {
            link,
            state,
            db,
            thread: Some(thread),
        })
    }

    /// Hands a job over; first waits while `MAX_BACKLOG` rows or more wait
    /// to be written.
    pub(super) fn send(&self, job: Job) {
        let mut q = self.link.queue.lock();
        if let Job::Rows { rows, .. } = &job {
            while q.rows >= MAX_BACKLOG {
                self.link.done.wait(&mut q);
            }
            q.rows += rows.len();
        }
        let wake = q.jobs.is_empty() && !q.busy;
        q.jobs.push_back(job);
        drop(q);
        if wake {
            self.link.ready.notify_one();
        }
    }

    /// Waits until everything handed over is written (or given up on).
    pub(super) fn drain(&self) {
        let mut q = self.link.queue.lock();
        while !q.jobs.is_empty() || q.busy {
            self.link.done.wait(&mut q);
        }
    }
}

impl Drop for StoreThread {
    /// Lets the thread finish what it was handed, then joins it.
    fn drop(&mut self) {
        self.link.queue.lock().closed = true;
        self.link.ready.notify_one();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the audit store thread panicked");
            }
        }
    }
}

/// The thread's own state.
struct Worker {
    db: Arc<Mutex<Store>>,
    shared: Arc<Shared>,
    state: Arc<StoreState>,
    /// Tells the WAL checkpointer that the store was written.
    wal: Option<Kick>,
    witness: Option<Witness>,
    track_bytes: bool,
    /// `SHUTDOWN_PATIENCE` after the pipeline was closed.
    give_up_at: Option<Instant>,
    refused: Outage,
    unexported: Outage,
}

impl Worker {
    fn run(&mut self, link: &Link) {
        let mut jobs = VecDeque::new();
        loop {
            {
                let mut q = link.queue.lock();
                q.busy = false;
                link.done.notify_all();
                while q.jobs.is_empty() && !q.closed {
                    link.ready.wait(&mut q);
                }
                if q.jobs.is_empty() {
                    return;
                }
                std::mem::swap(&mut q.jobs, &mut jobs);
                q.busy = true;
            }
            let mut written = 0;
            for job in jobs.drain(..) {
                written += self.job(job);
                if written >= FREE_EVERY {
                    // Room for a writer waiting on the backlog as rows
                    // are written, not only once everything taken is.
                    link.queue.lock().rows -= written;
                    written = 0;
                    link.done.notify_all();
                }
            }
            link.queue.lock().rows -= written;
        }
    }

    /// Does one job; returns how many rows it held.
    fn job(&mut self, job: Job) -> usize {
        match job {
            Job::Rows {
                rows,
                owed,
                settled,
                sync,
            } => {
                let n = rows.len();
                self.rows(&rows, &owed, &settled, sync);
                n
            }
            Job::Checkpoint { size, root, note } => {
                if !self.state.gave_up.load(Ordering::Acquire) {
                    self.checkpoint(size, &root, &note);
                }
                0
            }
            Job::Cosignatures(size, lines) => {
                if let Err(e) = self.db.lock().put_cosignatures(size, &lines) {
                    tracing::error!(error = %e, size, "could not store witness co-signatures");
                }
                0
            }
            Job::Tell(waiter) => {
                let _ = waiter.send(());
                0
            }
        }
    }

    /// Writes rows in one commit, retrying until the store takes them
    /// (or, after close, until it gives up).
    fn rows(&mut self, rows: &[Row], owed: &[(String, u64)], settled: &[String], sync: bool) {
        if self.state.gave_up.load(Ordering::Acquire) {
            // Neither out of order nor past what it gave up on.
            self.state.unfilled.fetch_add(rows.len(), Ordering::AcqRel);
            return;
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            let written = {
                let mut store = self.db.lock();
                let written = if sync {
                    store.append(rows, owed, settled)
                } else {
                    store.append_unsynced(rows, owed, settled)
                };
                if written.is_ok() && self.track_bytes {
                    if let Ok(used) = store.used_bytes() {
                        self.state.used_bytes.store(used, Ordering::Release);
                    }
                }
                written
            };
            let Err(err) = written else { break };
            self.shared.store_failing.store(true, Ordering::Release);
            tracing::error!(error = %err, events = rows.len(), "audit store write failed; refusing new calls until it recovers");
            *self.state.last_error.lock() = err.to_string();
            if !self.keep_trying() {
                // Durable in the segments: the next start writes them in.
                self.state.unfilled.fetch_add(rows.len(), Ordering::AcqRel);
                return;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        self.shared.store_failing.store(false, Ordering::Release);
        if let Some(wal) = &self.wal {
            wal.wrote();
        }
    }

    /// Whether a refused write is tried again: always, until
    /// `SHUTDOWN_PATIENCE` after the pipeline was closed; then never.
    fn keep_trying(&mut self) -> bool {
        if patience_over(&mut self.give_up_at, &self.shared) {
            self.state.gave_up.store(true, Ordering::Release);
        }
        !self.state.gave_up.load(Ordering::Acquire)
    }

    /// Stores a signed checkpoint, then exports it to the witness file.
    fn checkpoint(&mut self, size: u64, root: &Hash, note: &str) {
        if let Err(e) = self.db.lock().put_checkpoint(size, root, note) {
            self.state.checkpoint_lost.store(true, Ordering::Release);
            match self.refused.hit() {
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
        if let Some((refused, secs)) = self.refused.clear() {
            tracing::warn!(size, refused, "audit checkpoints are stored again; {refused} were refused over {secs} s (this one covers them)");
        }
        let Some(w) = &self.witness else { return };
        match export(&w.path, &w.vkey, note) {
            Err(e) => match self.unexported.hit() {
                Report::Started => {
                    tracing::error!(error = %e, path = %w.path.display(), "could not export audit checkpoint to the witness file; reported every {} s while it lasts", REPORT_EVERY.as_secs())
                }
                Report::Still { calls, secs } => {
                    tracing::error!(error = %e, path = %w.path.display(), refused = calls, "still could not export audit checkpoints to the witness file: {calls} more refused in the last {secs} s")
                }
                Report::Quiet => {}
            },
            Ok(()) => {
                if let Some((refused, secs)) = self.unexported.clear() {
                    tracing::warn!(path = %w.path.display(), size, refused, "audit checkpoints reach the witness file again; {refused} were not exported over {secs} s (this one covers them)");
                }
            }
        }
    }
}

/// Appends one checkpoint to the witness file as a JSON line and syncs it.
/// A write the disk refuses part of (full) is cut back off: the file never
/// keeps half a line (one made `lattice audit verify` fail on it).
fn export(path: &Path, vkey: &str, note: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::json!({ "vkey": vkey, "note": note });
    let line = format!("{json}\n");
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let len = f.metadata()?.len();
    let written = f.write_all(line.as_bytes()).and_then(|()| f.sync_data());
    if written.is_err() {
        let _ = f.set_len(len);
    }
    written
}
