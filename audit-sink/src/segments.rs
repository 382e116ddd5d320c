//! The audit segments: the store of record for every event's bytes. Each
//! batch is appended to the current segment and, when a decision waits on
//! it, synced: one direct, synchronous write of what was appended since
//! the last sync (`append`; where the filesystem refuses those, a buffered
//! write per batch and an `fdatasync`); the SQLite store then holds only
//! where each event is (`seg`, `off`) beside the columns its indexes need,
//! so an event's bytes are written once instead of three times (journal,
//! WAL, database file).
//!
//! Segments live in `<db stem>.segments/` as `NNNNNNNNNNNNNNNN.seg`,
//! numbered from 1 in log order, each written full of zeros before its
//! first record (so appends change no file metadata: a synchronous write
//! or `fdatasync` flushes data only). A spare is zeroed by a helper thread
//! while the current one fills, so a rotation costs a rename, not a 16 MiB
//! write. Records use the
//! journal's format (`journal::encode`): CRC-framed, sequence numbered; a
//! segment's valid records end at the first torn one, and the writer
//! continues there after a restart. Retention removes whole segments once
//! every event in them was pruned from the store.
//!
//! Written by hand, as the journal was: no well-kept crate offers a
//! preallocated, CRC-framed segment log with `fdatasync`.
//!
//! Must never: report a record durable before the disk has it, reuse
//! or rewrite a segment, or return bytes that do not match their CRC.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::journal::{self, Entry};
use crate::AuditError;

mod append;
mod disk;
#[cfg(test)]
mod tests;
use append::{Appender, BLOCK};

/// A segment's size (smaller when retention caps the store's size).
pub(crate) const SIZE: u64 = 16 << 20;
/// The smallest segment.
const MIN_SIZE: u64 = 64 << 10;
const SPARE: &str = "spare";

/// Where a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) seg: u64,
    pub(crate) off: u64,
}

/// The segments of the store at `db`: `audit.db` → `audit.segments/`.
pub(crate) fn dir_of(db: &Path) -> PathBuf {
    db.with_extension("segments")
}

/// The segment size for a store capped at `max_bytes`: an eighth of it,
/// so retention can free space a segment at a time; whole blocks.
pub(crate) fn size_for(max_bytes: Option<u64>) -> u64 {
    max_bytes.map_or(SIZE, |m| {
        (m / 8).clamp(MIN_SIZE, SIZE) / BLOCK as u64 * BLOCK as u64
    })
}

/// The file name of segment `seg`.
pub(crate) fn file_name(seg: u64) -> String {
    format!("{seg:016}.seg")
}

fn path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(file_name(seg))
}

fn io(path: &Path, e: std::io::Error) -> AuditError {
    AuditError::Io(format!("audit segment {}: {e}", path.display()))
}

/// Beyond a spare segment, the room a volume should have for the store
/// (the SQLite file and its WAL grow with every call) without warning.
const ROOM_SLACK: u64 = 16 << 20;

/// Warns when the filesystem of `dir` has less room than a spare segment
/// of `size` bytes and `ROOM_SLACK`: at start and at each new segment, the
/// operator hears of a filling disk before calls are refused for it.
fn warn_if_cramped(dir: &Path, size: u64) {
    let Some(free) = free_bytes(dir) else { return };
    if free < size + ROOM_SLACK {
        tracing::warn!(
            dir = %dir.display(),
            free_bytes = free,
            "the audit segments' filesystem has {} MiB free: the next segment takes {} MiB, and the store grows with every call; once it is full, calls are refused (fail closed) until there is room",
            free >> 20,
            size >> 20
        );
    }
}

/// Bytes an unprivileged process may still write on the filesystem of
/// `dir` (none when it cannot be asked).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The numbers of the segments in `dir`, ascending (none when it is missing).
pub(crate) fn list(dir: &Path) -> Result<Vec<u64>, AuditError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry.map_err(|e| io(dir, e))?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Writes `path` full of zeros (`size` bytes) under a temporary name,
/// syncs it, and renames it into place; a failed attempt leaves nothing.
/// `gently`: a chunk at a time, each written back before the next and followed by a pause (the spare, on
/// its helper thread) until `urgent` is set (the writer waits for it):
/// zeroed at once, a segment queued a 16 MiB write ahead of the
/// `fdatasync` every call's decision waits for.
fn make_zeroed(path: &Path, size: u64, gently: Option<&AtomicBool>) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let made = zero_into(&tmp, size, gently).and_then(|()| std::fs::rename(&tmp, path));
    if made.is_err() {
        // What a failed attempt wrote (a disk that filled up) goes back.
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

fn zero_into(tmp: &Path, size: u64, gently: Option<&AtomicBool>) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    let chunk = if gently.is_some() {
        ZERO_CHUNK
    } else {
        1 << 20
    };
    let zeros = vec![0u8; chunk.min(size as usize)];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        // Until the writer needs the spare: then at full speed.
        if let Some(urgent) = gently.filter(|u| !u.load(Ordering::Acquire)) {
            write_back(&file, at, n)?;
            if !urgent.load(Ordering::Acquire) {
                std::thread::sleep(ZERO_PAUSE);
            }
        }
        at += n as u64;
    }
    file.sync_all()
}

/// The spare is zeroed `ZERO_CHUNK` bytes at a time, `ZERO_PAUSE` apart:
/// 16 MiB in about a third of a second, time a gateway at 20,000 calls/s
/// takes to fill one; a writer faster than that finds the spare unfinished
/// and has the rest written at full speed.
const ZERO_CHUNK: usize = 256 << 10;
const ZERO_PAUSE: Duration = Duration::from_millis(3);

/// Writes the range back to the disk and waits for it (no metadata, no
/// cache flush: the final `sync_all` does those once).
#[allow(unsafe_code)]
fn write_back(file: &File, at: u64, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range reads only its integer arguments; the
    // descriptor is `file`'s, open for the whole call.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), at as i64, len as i64, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The segment log, open for appending.
pub(crate) struct Segments {
    dir: PathBuf,
    size: u64,
    /// Direct writes are wanted (the filesystem may still refuse them).
    direct: bool,
    out: Appender,
    /// The current segment's number and length.
    seg: u64,
    len: u64,
    /// Where the next record goes.
    at: u64,
    /// Bytes in the segments before the current one.
    older: u64,
    /// The helper zeroing the next spare, and its hurry-up flag.
    spare: Option<(JoinHandle<std::io::Result<()>>, Arc<AtomicBool>)>,
    /// A batch an error cut short: its first sequence number and where
    /// the entries written so far went.
    partial: Option<(u64, Vec<Loc>)>,
}

impl Segments {
    /// Opens the segments of the store at `db` at the end of the newest
    /// one's valid records, creating one numbered after `after` (the
    /// newest segment the store refers to) when there is none that new.
    /// New segments are `size` bytes.
    pub(crate) fn open(db: &Path, size: u64, after: u64) -> Result<Self, AuditError> {
        Self::open_with(db, size, after, true)
    }

    /// As `open`; `direct`: try direct writes (tests also run without).
    pub(crate) fn open_with(
        db: &Path,
        size: u64,
        after: u64,
        direct: bool,
    ) -> Result<Self, AuditError> {
        let dir = dir_of(db);
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(|e| io(&dir, e))?;
            }
        }
        let segs = list(&dir)?;
        let seg = match segs.last() {
            Some(&n) if n >= after => n,
            _ => {
                make_zeroed(&path(&dir, after + 1), size, None).map_err(|e| io(&dir, e))?;
                sync_dir(&dir).map_err(|e| io(&dir, e))?;
                after + 1
            }
        };
        let mut older = 0;
        for &n in segs.iter().filter(|&&n| n != seg) {
            let p = path(&dir, n);
            older += std::fs::metadata(&p).map_err(|e| io(&p, e))?.len();
        }
        let p = path(&dir, seg);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .map_err(|e| io(&p, e))?;
        let len = file.metadata().map_err(|e| io(&p, e))?.len();
        let at = journal::scan_records(&file, 0, &mut |_| {}).map_err(|e| io(&p, e))?;
        // What a killed process appended without a sync may be in the page
        // cache only: synced before the store gets rows for it.
        file.sync_data().map_err(|e| io(&p, e))?;
        let out = Appender::open(&p, at, direct).map_err(|e| io(&p, e))?;
        disk::say_sync_cost(&dir);
        let mut s = Self {
            dir,
            size,
            direct,
            out,
            seg,
            len,
            at,
            older,
            spare: None,
            partial: None,
        };
        s.prepare_spare();
        Ok(s)
    }

    /// Starts zeroing a spare segment unless one is ready.
    fn prepare_spare(&mut self) {
        let spare = self.dir.join(SPARE);
        if spare.exists() && std::fs::metadata(&spare).is_ok_and(|m| m.len() == self.size) {
            return;
        }
        let size = self.size;
        warn_if_cramped(&self.dir, size);
        // A spare that cannot fit would only fill the disk's last bytes
        // (the store's and the current segment's room) while it fails: the
        // next segment is then made when it is needed, or refused then.
        if free_bytes(&self.dir).is_some_and(|free| free < size) {
            return;
        }
        let urgent = Arc::new(AtomicBool::new(false));
        let flag = urgent.clone();
        self.spare = std::thread::Builder::new()
            .name("audit-spare".into())
            .spawn(move || make_zeroed(&spare, size, Some(&flag)))
            .ok()
            .map(|h| (h, urgent));
    }

    /// Appends the entries after the last ones, moving to a new segment
    /// whenever the next one does not fit (a record larger than a whole
    /// segment gets one of its own), then, with `sync`, waits for
    /// `fdatasync`. Returns where each entry went. Called again with the
    /// same entries after an error, it goes on where it stopped: nothing is
    /// written twice.
    pub(crate) fn append<'a>(
        &mut self,
        entries: impl Iterator<Item = &'a Entry>,
        sync: bool,
    ) -> Result<Vec<Loc>, AuditError> {
        let entries: Vec<&Entry> = entries.collect();
        let Some(first) = entries.first().map(|e| e.seq) else {
            return Ok(Vec::new());
        };
        let mut locs = match self.partial.take() {
            Some((seq, locs)) if seq == first => locs,
            _ => Vec::new(),
        };
        let done =
            self.write(&entries, &mut locs)
                .and_then(|()| if sync { self.sync() } else { Ok(()) });
        match done {
            Ok(()) => Ok(locs),
            Err(e) => {
                self.partial = Some((first, locs));
                Err(e)
            }
        }
    }

    /// Writes the entries after the first `locs.len()`, a segment's worth
    /// at a time, adding where each went to `locs`.
    fn write(&mut self, entries: &[&Entry], locs: &mut Vec<Loc>) -> Result<(), AuditError> {
        let mut buf = Vec::new();
        while locs.len() < entries.len() {
            buf.clear();
            let mut offsets = Vec::new();
            for e in &entries[locs.len()..] {
                let start = buf.len();
                journal::encode(e, &mut buf);
                if self.at + buf.len() as u64 > self.len && (self.at > 0 || start > 0) {
                    buf.truncate(start);
                    break;
                }
                offsets.push(start as u64);
            }
            if offsets.is_empty() {
                self.rotate()?;
                continue;
            }
            let p = path(&self.dir, self.seg);
            self.out.write(&buf, self.at).map_err(|e| io(&p, e))?;
            let (seg, at) = (self.seg, self.at);
            locs.extend(offsets.into_iter().map(|o| Loc { seg, off: at + o }));
            self.at += buf.len() as u64;
            self.len = self.len.max(self.at);
        }
        Ok(())
    }

    /// Syncs the current segment (the older ones were synced when it
    /// became current).
    pub(crate) fn sync(&mut self) -> Result<(), AuditError> {
        self.out
            .sync()
            .map_err(|e| io(&path(&self.dir, self.seg), e))
    }

    /// Moves to the next segment: the current one synced, the spare (or,
    /// when it is not ready, a new zeroed file) renamed into place.
    pub(crate) fn rotate(&mut self) -> Result<(), AuditError> {
        let old = path(&self.dir, self.seg);
        self.out.sync().map_err(|e| io(&old, e))?;
        let next = path(&self.dir, self.seg + 1);
        let ready = self.spare.take().is_none_or(|(h, urgent)| {
            urgent.store(true, Ordering::Release);
            h.join().is_ok_and(|r| r.is_ok())
        });
        let spare = self.dir.join(SPARE);
        let moved = ready
            && std::fs::metadata(&spare).is_ok_and(|m| m.len() == self.size)
            && std::fs::rename(&spare, &next).is_ok();
        if !moved {
            make_zeroed(&next, self.size, None).map_err(|e| io(&next, e))?;
        }
        sync_dir(&self.dir).map_err(|e| io(&next, e))?;
        self.out = Appender::open(&next, 0, self.direct).map_err(|e| io(&next, e))?;
        self.older += self.len;
        self.seg += 1;
        self.len = self.size;
        self.at = 0;
        self.prepare_spare();
        Ok(())
    }

    /// Bytes the segments hold: every older segment whole, the current
    /// one up to its last record.
    pub(crate) fn used_bytes(&self) -> u64 {
        self.older + self.at
    }

    /// Removes every segment before `seg` (their events were all pruned
    /// from the store); never the current one.
    pub(crate) fn remove_before(&mut self, seg: u64) -> Result<(), AuditError> {
        for n in list(&self.dir)? {
            if n >= seg.min(self.seg) {
                break;
            }
            let p = path(&self.dir, n);
            let len = std::fs::metadata(&p).map_err(|e| io(&p, e))?.len();
            std::fs::remove_file(&p).map_err(|e| io(&p, e))?;
            self.older = self.older.saturating_sub(len);
        }
        Ok(())
    }

    /// The current segment's number.
    pub(crate) fn current(&self) -> u64 {
        self.seg
    }
}

fn open_if_there(p: &Path) -> Result<Option<File>, AuditError> {
    match File::open(p) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(p, e)),
    }
}

/// Every record in the segments of the store at `db` with a sequence
/// number of at least `from`, in log order, with where it is. Reads from
/// the newest segment that starts at or before `from`; safe beside a
/// running writer (a record being written fails its CRC and ends the read).
pub(crate) fn read_from(db: &Path, from: u64) -> Result<Vec<(Entry, Loc)>, AuditError> {
    let dir = dir_of(db);
    let segs = list(&dir)?;
    let mut start = 0;
    for (i, &n) in segs.iter().enumerate().rev() {
        let p = path(&dir, n);
        // Retention may remove an old segment meanwhile.
        let Some(file) = open_if_there(&p)? else {
            continue;
        };
        match journal::read_record(&file, 0).map_err(|e| io(&p, e))? {
            Some((first, _)) if first.seq <= from => {
                start = i;
                break;
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut last: Option<u64> = None;
    for &n in &segs[start..] {
        let p = path(&dir, n);
        let Some(file) = open_if_there(&p)? else {
            continue;
        };
        let mut at = 0;
        while let Some((entry, next)) = journal::read_record(&file, at).map_err(|e| io(&p, e))? {
            if let Some(l) = last.filter(|l| entry.seq != l + 1) {
                return Err(AuditError::Corrupt(format!(
                    "the audit segments jump from event #{l} to #{} in {}",
                    entry.seq,
                    p.display()
                )));
            }
            last = Some(entry.seq);
            let loc = Loc { seg: n, off: at };
            at = next;
            if entry.seq >= from {
                out.push((entry, loc));
            }
        }
    }
    Ok(out)
}

/// The events durable in the segments (or a legacy journal) of the store
/// at `db` that the store does not hold yet (the writer fills the store
/// behind the segments; a gateway that stopped first writes them in at its
/// next start), in log order.
pub fn beyond_store(
    db: &Path,
    store: &crate::Store,
) -> Result<Vec<crate::store::StoredEvent>, AuditError> {
    let size = store.log_size()?;
    let legacy = journal::read_path(&journal::path_of(db))?;
    let segments = read_from(db, size)?.into_iter().map(|(e, _)| e);
    legacy
        .into_iter()
        .chain(segments)
        .filter(|e| e.seq >= size)
        .map(|e| {
            Ok(crate::store::StoredEvent {
                seq: e.seq,
                json: String::from_utf8(e.json).map_err(|e| AuditError::Encoding(e.to_string()))?,
            })
        })
        .collect()
}

/// The JSON of the record at `off` in `file`, if it is there and intact.
fn read_json(file: &File, off: u64) -> Option<String> {
    let (entry, _) = journal::read_record(file, off).ok()??;
    String::from_utf8(entry.json).ok()
}

/// Registers the SQL function `lattice_event(seg, off)` on a connection to
/// the store at `db`: the JSON of the event recorded there, or NULL when
/// the record is missing or damaged. It keeps the last two segments it
/// read open (a reader goes through the log in order; a segment retention
/// removed is not held open for long).
pub(crate) fn register(conn: &rusqlite::Connection, db: &Path) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    let dir = dir_of(db);
    let files: parking_lot::Mutex<Vec<(u64, File)>> = parking_lot::Mutex::new(Vec::new());
    conn.create_scalar_function(
        "lattice_event",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        move |ctx| {
            let (Some(seg), Some(off)) = (ctx.get::<Option<i64>>(0)?, ctx.get::<Option<i64>>(1)?)
            else {
                return Ok(None);
            };
            let (seg, off) = (seg as u64, off as u64);
            let mut files = files.lock();
            if !files.iter().any(|(n, _)| *n == seg) {
                let Ok(file) = File::open(path(&dir, seg)) else {
                    return Ok(None);
                };
                if files.len() >= 2 {
                    files.remove(0);
                }
                files.push((seg, file));
            }
            Ok(files
                .iter()
                .find(|(n, _)| *n == seg)
                .and_then(|(_, f)| read_json(f, off)))
        },
    )
}
