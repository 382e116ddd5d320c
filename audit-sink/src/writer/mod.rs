//! The audit pipeline: a bounded queue between the request path and one
//! writer that assigns sequence numbers, appends events and leaves to the
//! store in batches, advances the Merkle log and signs checkpoints.
//!
//! The request path only calls `AuditHandle::record`, `record_decision` or
//! `write_decision`, which never wait for another call: they fail when the
//! queue is full, the pipeline is closed, or the writer cannot write, and
//! the caller refuses the call (fail closed). A decision comes with a
//! `Durable`, which resolves once its batch is appended and synced: the
//! caller forwards only then. Whoever writes takes everything queued and
//! syncs once (group commit: one sync serves every call waiting, never one
//! per call).
//!
//! Who writes (leader and followers): the writer's state (`Writer`) sits
//! behind one lock. A call that will wait for its decision and finds the
//! lock free takes it and writes what is queued plus its own decision
//! itself (`lead.rs`): durable when `write_decision` returns, with no
//! thread woken and none to wake it. Otherwise it queues its decision and
//! the writer thread, woken, writes it. The writer thread alone decides
//! the SQLite store's fills, signs checkpoints, prunes and retries failed
//! appends; the store thread (`store_thread`) writes the fills and
//! checkpoints into the store in order, off the writer's lock, so no
//! decision waits behind a SQLite commit.
//!
//! Nothing waits on an outcome: while the writer thread will look within
//! `LAZY_WAIT` anyway, an outcome is queued without waking it (one thread
//! switch less per call).
//!
//! A decision owes an outcome: the store keeps it in `owed` until its
//! outcome is written, in the same transactions. A pipeline that starts on
//! a store with owed decisions (the gateway crashed between the two)
//! writes an outcome for each first, saying the gateway stopped before the
//! outcome was recorded.
//!
//! Every batch is appended to the segments (`segments`), the store of
//! record for the events' bytes: one write, synced when a decision waits
//! on it. The SQLite store is filled behind in chunks with where each
//! event is, never before its segment record is synced (a row must not
//! outlive the bytes it points at), by the store thread.
//!
//! Must never: tell a decision it is durable before its batch is synced
//! in the segments, drop an event it accepted, write events out of the
//! order they were queued in, write a store row for a segment record not
//! yet synced, or remove a segment that holds an event the store still
//! keeps.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::checkpoint::NoteSigner;
use crate::clickhouse::{run_shipper, ClickHouseConfig, ShipState};
use crate::event::AuditEvent;
use crate::journal::Entry;
use crate::merkle::Frontier;
use crate::segments::{self, Segments};
use crate::store::{Columns, Store};
use crate::AuditError;
use fill::{Incomplete, SHUTDOWN_PATIENCE};
use tokio::sync::oneshot;

mod fill;
mod handle;
mod lead;
mod retention;
mod rows;
mod run;
mod sign;
mod store_thread;
mod wal;
pub use handle::{AuditHandle, Durable, OutcomeSlot, GAP};
pub use retention::{Retention, PRUNED};
use rows::{replay, Pending};
use store_thread::{Job, StoreThread};

/// Settings of the pipeline.
pub struct PipelineConfig {
    pub db_path: PathBuf,
    /// This gateway node's name, written into every event.
    pub node: String,
    /// The checkpoint origin line (unique per log).
    pub origin: String,
    pub queue_capacity: usize,
    /// Most events written in one transaction.
    pub batch_max: usize,
    /// Sign a checkpoint after this many new events...
    pub checkpoint_every: u64,
    /// ...or after this long with new events.
    pub checkpoint_interval: Duration,
    /// Where checkpoints are exported for an outside witness (JSON lines).
    pub witness_file: Option<PathBuf>,
    pub signer: NoteSigner,
    /// Also ship the log to ClickHouse.
    pub clickhouse: Option<ClickHouseConfig>,
    /// How long the store keeps events and how large it may grow.
    pub retention: Retention,
}

/// One event on its way to the store.
pub(crate) struct Queued {
    pub(crate) event: AuditEvent,
    /// A decision whose call owes an outcome.
    pub(crate) owes: bool,
    /// The event id of the decision this outcome settles.
    pub(crate) settles: Option<String>,
    /// Told once the event is on stable storage.
    pub(crate) durable: Option<oneshot::Sender<()>>,
}

/// What the writer thread is asked besides writing events.
pub(crate) enum Msg {
    /// Witness co-signature lines of the checkpoint of a size (verified).
    Cosignatures(u64, Vec<String>),
    Flush(SyncSender<()>),
    Shutdown,
}

/// What waits for the writer, in the order it was handed over. Events and
/// requests are taken together: a flush or a shutdown is handled after
/// every event queued before it is written.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) events: Vec<Queued>,
    pub(crate) msgs: Vec<Msg>,
    /// A writer (a leading call or the writer thread) holds the writer and
    /// looks at the queue again before it lets go: what is queued meanwhile
    /// needs no wake. Set and cleared under this lock, with the look.
    pub(crate) writing: bool,
    /// The writer thread stopped: nothing handed over now would be written.
    pub(crate) gone: bool,
}

impl Queue {
    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty() && self.msgs.is_empty()
    }
}

#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) depth: AtomicUsize,
    pub(crate) closed: AtomicBool,
    /// The segments refuse writes.
    pub(crate) segments_failing: AtomicBool,
    /// The SQLite store refuses writes (`store_thread`).
    pub(crate) store_failing: AtomicBool,
    pub(crate) written: AtomicU64,
    /// Transactions written (one sync each).
    pub(crate) commits: AtomicU64,
    /// Calls let through unaudited since the last `audit.gap` event, and
    /// when the first and the last of them were (µs).
    pub(crate) gap: AtomicU64,
    pub(crate) gap_first_us: AtomicU64,
    pub(crate) gap_last_us: AtomicU64,
    /// The log's size (next `seq`).
    pub(crate) log_size: AtomicU64,
    /// Events before this were pruned from the store by retention.
    pub(crate) pruned: AtomicU64,
    /// With ClickHouse: the shipper's progress and the backlog bound.
    pub(crate) ship: Option<(Arc<ShipState>, u64)>,
    /// What waits for the writer; `ready` wakes the writer thread.
    pub(crate) queue: parking_lot::Mutex<Queue>,
    pub(crate) ready: parking_lot::Condvar,
    /// True while the writer thread looks at the queue within `LAZY_WAIT`
    /// by itself (it is awake, or sleeps at most that long): outcomes are
    /// then queued without waking it (nothing waits on an outcome, and a
    /// wake per call cost a thread switch per call).
    pub(crate) lazy_ok: AtomicBool,
    /// Set by a shutdown that gave up on a refused write: what the store
    /// lacks, and the last error.
    pub(crate) incomplete: parking_lot::Mutex<Option<(Incomplete, String)>>,
}

impl Shared {
    /// Whether the segments or the store refuse writes: new calls are
    /// refused meanwhile.
    pub(crate) fn failing(&self) -> bool {
        self.segments_failing.load(Ordering::Acquire) || self.store_failing.load(Ordering::Acquire)
    }

    /// Queues an event; unless a writer will look at the queue before it
    /// lets go, wakes the writer thread with `wake` (and always when it may
    /// sleep longer than `LAZY_WAIT`).
    pub(crate) fn push(&self, queued: Queued, wake: bool) -> Result<(), AuditError> {
        let writing = {
            let mut q = self.queue.lock();
            if q.gone {
                return Err(AuditError::Closed);
            }
            q.events.push(queued);
            q.writing
        };
        // Read after the push: a writer thread that went to sleep for long
        // stored `false` before it last looked at the queue.
        if !writing && (wake || !self.lazy_ok.load(Ordering::SeqCst)) {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Takes the queued events (into the empty `events`) for a writer that
    /// holds the writer, marking that it will look again before it lets
    /// go. Returns whether requests (flush, shutdown, co-signatures) wait
    /// for the writer thread.
    pub(crate) fn take_events(&self, events: &mut Vec<Queued>) -> bool {
        let mut q = self.queue.lock();
        q.writing = true;
        std::mem::swap(&mut q.events, events);
        !q.msgs.is_empty()
    }

    /// As `take_events`, with the requests too (the writer thread).
    pub(crate) fn take_all(&self, events: &mut Vec<Queued>, msgs: &mut Vec<Msg>) {
        let mut q = self.queue.lock();
        q.writing = true;
        std::mem::swap(&mut q.events, events);
        std::mem::swap(&mut q.msgs, msgs);
    }

    /// The writer thread's last look before it lets go: true when
    /// something was queued meanwhile (still its to take); otherwise what
    /// is queued from now on wakes it again.
    pub(crate) fn let_go(&self) -> bool {
        let mut q = self.queue.lock();
        q.writing = !q.is_empty();
        q.writing
    }

    /// A leading call lets go: what is queued from now on wakes the
    /// writer thread. Returns whether something is queued already (then
    /// the leader wakes it).
    pub(crate) fn hand_over(&self) -> bool {
        let mut q = self.queue.lock();
        q.writing = false;
        !q.is_empty()
    }

    /// Hands the writer thread a request and wakes it.
    pub(crate) fn ask(&self, msg: Msg) -> Result<(), AuditError> {
        {
            let mut q = self.queue.lock();
            if q.gone {
                return Err(AuditError::Closed);
            }
            q.msgs.push(msg);
        }
        self.ready.notify_one();
        Ok(())
    }
}

/// The writer, shared by the writer thread and the calls that lead a
/// write; `None` once the writer thread stopped.
pub(crate) type Core = Arc<parking_lot::Mutex<Option<Writer>>>;

/// The running pipeline: owns the writer thread (and the ClickHouse shipper).
pub struct AuditPipeline {
    handle: AuditHandle,
    thread: Option<JoinHandle<()>>,
    /// Copies the WAL into the database file, off the writer's commits
    /// (`wal`).
    wal: Option<JoinHandle<()>>,
    shipper: Option<(Arc<ShipState>, JoinHandle<()>)>,
    recovered: usize,
}

impl AuditPipeline {
    /// Opens the store, restores the log head and starts the writer.
    pub fn start(cfg: PipelineConfig) -> Result<Self, AuditError> {
        let mut store = Store::open(&cfg.db_path)?;
        store.no_auto_checkpoints()?;
        let segments = Segments::open(
            &cfg.db_path,
            segments::size_for(cfg.retention.max_bytes),
            store.last_segment()?.unwrap_or(0),
        )?;
        replay(&mut store, &cfg.db_path)?;
        let (frontier, pruned) = store.checked_frontier()?;
        let last_checkpoint = store.checkpoints()?.last().map(|(s, _)| *s).unwrap_or(0);
        let capacity = cfg.queue_capacity.max(2);
        let ship_state = cfg.clickhouse.as_ref().map(|c| {
            let state = Arc::new(ShipState::default());
            // Until the shipper reports, count the backlog from now on.
            state.shipped.store(frontier.size(), Ordering::Release);
            (state, c.max_backlog_events)
        });
        let shared = Arc::new(Shared {
            log_size: AtomicU64::new(frontier.size()),
            pruned: AtomicU64::new(pruned.size()),
            ship: ship_state.clone(),
            ..Shared::default()
        });
        let shipper = match (&cfg.clickhouse, ship_state) {
            (Some(ch), Some((state, _))) => {
                let (ch, db, node, st) = (
                    ch.clone(),
                    cfg.db_path.clone(),
                    cfg.node.clone(),
                    state.clone(),
                );
                let handle = std::thread::Builder::new()
                    .name("audit-clickhouse".into())
                    .spawn(move || run_shipper(ch, db, node, st))
                    .map_err(|e| AuditError::Io(e.to_string()))?;
                Some((state, handle))
            }
            _ => None,
        };
        let (kick, wal) = wal::start(cfg.db_path.clone(), shared.clone())?;
        let mut writer = Writer::new(
            cfg,
            (store, segments),
            (frontier, pruned),
            last_checkpoint,
            (shared.clone(), Some(kick)),
        )?;
        let recovered = writer.recover()?;
        let core: Core = Arc::new(parking_lot::Mutex::new(Some(writer)));
        let thread = {
            let (core, shared) = (core.clone(), shared.clone());
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || run::run(&core, &shared))
                .map_err(|e| AuditError::Io(e.to_string()))?
        };
        Ok(Self {
            handle: AuditHandle {
                core,
                shared,
                capacity,
            },
            thread: Some(thread),
            wal: Some(wal),
            shipper,
            recovered,
        })
    }

    /// Calls found interrupted at start (decisions without outcomes), each
    /// now with an outcome saying so.
    pub fn recovered(&self) -> usize {
        self.recovered
    }

    pub fn handle(&self) -> AuditHandle {
        self.handle.clone()
    }

    /// Stops accepting, writes everything already accepted, signs a final
    /// checkpoint and joins the writer.
    pub fn shutdown(mut self) -> Result<(), AuditError> {
        self.handle.shared.closed.store(true, Ordering::Release);
        let _ = self.handle.shared.ask(Msg::Shutdown);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| AuditError::Io("the audit writer panicked".into()))?;
        }
        if let Some(t) = self.wal.take() {
            t.join()
                .map_err(|_| AuditError::Io("the WAL checkpointer panicked".into()))?;
        }
        // Every accepted event is now in the store; give the shipper a last,
        // bounded chance to catch up (what remains ships at the next start).
        if let Some((state, t)) = self.shipper.take() {
            state.stop.store(true, Ordering::Release);
            t.join()
                .map_err(|_| AuditError::Io("the ClickHouse shipper panicked".into()))?;
        }
        // A writer that gave up on the store (after every thread above has
        // stopped, so none is left running): what the store lacks.
        match self.handle.shared.incomplete.lock().take() {
            Some((lost, error)) => Err(AuditError::Incomplete {
                secs: SHUTDOWN_PATIENCE.as_secs(),
                error,
                unfilled: lost.unfilled,
                unwritten: lost.unwritten,
            }),
            None => Ok(()),
        }
    }
}

pub(crate) struct Writer {
    cfg: PipelineConfig,
    /// Writes the SQLite store, off the writer's lock (`store_thread`).
    store: StoreThread,
    segments: Segments,
    /// Entries in the segments not yet in the store, in order.
    pending: Vec<Pending>,
    /// When the oldest pending entry was appended.
    pending_since: Option<Instant>,
    /// The log size up to which the segments are synced: store rows are
    /// written only below it.
    durable: u64,
    /// When the oldest append not synced yet was made.
    unsynced_since: Option<Instant>,
    frontier: Frontier,
    /// The pruned prefix (empty when nothing was pruned).
    pruned: Frontier,
    /// Retention wants to prune events not yet shipped (warned once).
    held_back: bool,
    last_checkpoint: u64,
    last_checkpoint_at: Instant,
    last_retention: Instant,
    shared: Arc<Shared>,
    /// A batch a leading call could not append (the segments refused the
    /// write): the writer thread writes it before anything else.
    unwritten: Option<Encoded>,
    /// Until when calls queue instead of leading: `lead::CROWDED_FOR`
    /// after the last batch written with `lead::CROWDED` decisions or more
    /// waiting on it.
    crowded_until: Option<Instant>,
    /// What was last taken from the queue (buffers kept for reuse).
    inbox: (Vec<Queued>, Vec<Msg>),
    /// `SHUTDOWN_PATIENCE` after the pipeline was closed: a write still
    /// refused then is given up on (`fill::keep_trying`), so a full or
    /// broken disk cannot hold the process forever.
    give_up_at: Option<Instant>,
    /// Given up: nothing more is written (`Incomplete` says what was not).
    gave_up: Option<Incomplete>,
    last_error: String, // the last write error, for the shutdown's report
}

/// A batch given its places in the log and encoded, not yet appended.
pub(super) struct Encoded {
    entries: Vec<Pending>,
    /// The decisions waiting, told once the batch is synced.
    told: Vec<oneshot::Sender<()>>,
    sync: bool,
    /// How many of its events hold places in the queue.
    reserved: usize,
}

impl Writer {
    /// A writer over an opened store and segments, at the log's head
    /// (`frontier`, after the `pruned` prefix); starts the store thread
    /// (`wal`: kicked after each write to the store).
    fn new(
        cfg: PipelineConfig,
        (store, segments): (Store, Segments),
        (frontier, pruned): (Frontier, Frontier),
        last_checkpoint: u64,
        (shared, wal): (Arc<Shared>, Option<wal::Kick>),
    ) -> Result<Self, AuditError> {
        let witness = cfg.witness_file.clone().map(|path| store_thread::Witness {
            path,
            vkey: cfg.signer.verifier().encoded(),
        });
        let track_bytes = cfg.retention.max_bytes.is_some();
        let store = StoreThread::start(store, shared.clone(), wal, witness, track_bytes)?;
        Ok(Writer {
            cfg,
            store,
            segments,
            pending: Vec::new(),
            pending_since: None,
            durable: frontier.size(),
            unsynced_since: None,
            frontier,
            pruned,
            held_back: false,
            last_checkpoint,
            last_checkpoint_at: Instant::now(),
            last_retention: Instant::now(),
            shared,
            unwritten: None,
            crowded_until: None,
            inbox: (Vec::new(), Vec::new()),
            give_up_at: None,
            gave_up: None,
            last_error: String::new(),
        })
    }

    /// Makes the batch durable, retrying until it is (while it is not, the
    /// pipeline reports itself failing so new calls are refused), then
    /// tells the decisions waiting. `reserved`: the events hold places in
    /// the queue.
    fn write_batch(&mut self, batch: &mut Vec<Queued>, reserved: bool) {
        if let Some(lost) = &mut self.gave_up {
            // Dropped: a decision's call learns it was not made durable.
            lost.unwritten += batch.len();
            batch.clear();
            return;
        }
        let encoded = self.encode(batch, reserved);
        // Patient: retried until the segments take it (never handed back).
        self.unwritten = self.commit(encoded, true).err();
    }

    /// Gives the batch its places in the log (after everything written and
    /// `unwritten`, which must be empty) and encodes it; empties `batch`.
    /// A batch with a decision is synced; outcomes alone are not: nothing
    /// waits on them, and the next synced write covers them (a crash
    /// before it leaves their calls owed, and the next start records them
    /// as interrupted).
    fn encode(&mut self, batch: &mut Vec<Queued>, reserved: bool) -> Encoded {
        debug_assert!(
            self.unwritten.is_none(),
            "a batch placed after an unwritten one"
        );
        let sync = batch.iter().any(|q| q.settles.is_none());
        let start = self.frontier.size();
        let mut told = Vec::new();
        let entries: Vec<Pending> = batch
            .iter_mut()
            .enumerate()
            .map(|(i, q)| {
                told.extend(q.durable.take());
                let e = &mut q.event;
                e.node.clone_from(&self.cfg.node);
                e.seq = start + i as u64;
                let json = e.canonical();
                let leaf = crate::merkle::leaf_hash(&json);
                let entry = Entry {
                    seq: e.seq,
                    json,
                    owes: q.owes.then(|| e.event_id.clone()),
                    settles: q.settles.take(),
                };
                // The event is encoded: its indexed fields move to the row.
                let columns = Columns {
                    ts_us: e.ts_us,
                    tenant: std::mem::take(&mut e.tenant),
                    request_id: std::mem::take(&mut e.request_id),
                };
                (entry, leaf, columns, None)
            })
            .collect();
        let reserved = if reserved { entries.len() } else { 0 };
        batch.clear();
        Encoded {
            entries,
            told,
            sync,
            reserved,
        }
    }

    /// Appends an encoded batch to the segments (synced when a decision
    /// waits on it), adds its leaves to the log and tells the decisions
    /// waiting. `patient` (the writer thread): retries until the segments
    /// take it, and fills a chunk of the store when it lags; otherwise (a
    /// leading call) a refused write hands the batch back.
    fn commit(&mut self, encoded: Encoded, patient: bool) -> Result<(), Encoded> {
        if encoded.entries.is_empty() {
            return Ok(());
        }
        let Some(locs) = self.append(&encoded.entries, encoded.sync, patient) else {
            return Err(encoded);
        };
        let Encoded {
            entries,
            told,
            sync,
            reserved,
        } = encoded;
        let n = entries.len();
        if told.len() >= lead::CROWDED {
            self.crowded_until = Some(Instant::now() + lead::CROWDED_FOR);
        }
        self.shared.commits.fetch_add(1, Ordering::AcqRel);
        self.pending_since.get_or_insert_with(Instant::now);
        for ((mut e, leaf, columns, _), loc) in entries.into_iter().zip(locs) {
            self.frontier.push(leaf);
            // The JSON is in the segments now, and read from there.
            e.json = Vec::new();
            self.pending.push((e, leaf, columns, Some(loc)));
        }
        if sync {
            self.durable = self.frontier.size();
            self.unsynced_since = None;
        } else {
            self.unsynced_since.get_or_insert_with(Instant::now);
        }
        for tx in told {
            let _ = tx.send(());
        }
        self.shared.depth.fetch_sub(reserved, Ordering::AcqRel);
        self.shared.written.fetch_add(n as u64, Ordering::AcqRel);
        self.shared
            .log_size
            .store(self.frontier.size(), Ordering::Release);
        if patient && self.pending.len() >= FILL_LAG {
            self.fill_chunk();
        }
        Ok(())
    }

    /// Writes an outcome for every decision the store still owes one (the
    /// gateway stopped between the two), before anything else is written.
    fn recover(&mut self) -> Result<usize, AuditError> {
        let owed = self.store.db.lock().owed_decisions()?;
        let mut batch = Vec::with_capacity(owed.len());
        for stored in &owed {
            let decision = crate::event::parse_canonical(stored.json.as_bytes()).map_err(|e| {
                AuditError::Corrupt(format!("owed decision at seq {}: {e}", stored.seq))
            })?;
            batch.push(Queued {
                event: interrupted(&decision),
                owes: false,
                settles: Some(decision.event_id),
                durable: None,
            });
        }
        let n = batch.len();
        if n > 0 {
            tracing::warn!(
                calls = n,
                "the gateway stopped before these calls' outcomes were known; recorded them as interrupted"
            );
            self.write_batch(&mut batch, false);
            self.checkpoint();
        }
        Ok(n)
    }
}

/// How often retention looks at the store.
const RETENTION_EVERY: Duration = Duration::from_millis(500);
/// The store is filled from the segments in commits of at most this many
/// entries: when nothing is queued and this many are pending, or the
/// oldest has waited `IDLE_FILL`; one chunk after each batch once
/// `FILL_LAG` are pending (a writer that is never idle); and everything
/// before a checkpoint, retention and shutdown. A commit of 1,024 rows
/// costs the store thread about a quarter less CPU per row than one of
/// 128 (each page written once, not again at every commit): through the
/// gateway, HTTP saturation x1.05 and CPU per request x0.92 over 12 paired
/// rounds (`docs/benchmarks-log.md`, 2026-12-07). 128 was the better size
/// while the writer thread wrote the fills itself and calls waited behind
/// them; now no call does.
const FILL_CHUNK: usize = 1024;
const FILL_LAG: usize = 2048;
/// At 1,000 calls/s a commit of about 16 entries every 8 ms: a commit's
/// own cost is several rows' (2 ms, four entries a commit, cost 10% more
/// CPU per call there, measured through the gateway on 2026-12-06).
const IDLE_FILL: Duration = Duration::from_millis(8);
/// Outcomes appended without a sync are filled once the next decision's
/// sync covers them, or after this long without one (`fill::fill_chunk`).
const UNSYNCED_WAIT: Duration = Duration::from_millis(20);
/// An outcome is handed over without waking the writer only while the
/// writer looks for it within this long by itself (at low rates: while
/// appended entries wait for their fill).
const LAZY_WAIT: Duration = IDLE_FILL;

/// The reason an interrupted call's outcome carries.
pub const INTERRUPTED: &str =
    "interrupted: the gateway stopped before this call's outcome was recorded";

/// The outcome recorded at start for a decision left without one.
fn interrupted(decision: &AuditEvent) -> AuditEvent {
    let mut e = AuditEvent::new(
        crate::event::Phase::Outcome,
        &decision.request_id,
        &decision.kind,
    );
    e.trace_id.clone_from(&decision.trace_id);
    e.tenant.clone_from(&decision.tenant);
    e.principal.clone_from(&decision.principal);
    e.auth_method.clone_from(&decision.auth_method);
    e.target.clone_from(&decision.target);
    e.action.clone_from(&decision.action);
    e.decision.clone_from(&decision.decision);
    e.upstream.clone_from(&decision.upstream);
    e.client_addr.clone_from(&decision.client_addr);
    e.user_agent.clone_from(&decision.user_agent);
    e.reason = INTERRUPTED.to_string();
    e
}

#[cfg(test)]
mod lead_tests;
#[cfg(test)]
mod tests;
