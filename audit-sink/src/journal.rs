//! The audit journal: an append-only file beside the store that makes a
//! busy writer's batches durable with one write and one `fdatasync`, so
//! the SQLite store can be filled behind in large transactions instead of
//! one synced commit (six or more WAL pages and an `fsync`) per batch.
//!
//! The file is written full of zeros once (so later writes change no file
//! metadata and `fdatasync` flushes data only) and reused: records are
//! appended from the start, and once the store holds every record in a
//! synced commit the writer starts again at offset 0. A record is
//! `magic | length | crc32 | seq | flags | [owed event id] | [settled id] |
//! canonical event JSON`. Reading stops at the first record that is torn
//! (bad magic, length or CRC) or does not continue the sequence: records
//! left from before a restart at offset 0 always have lower sequence
//! numbers than the ones written over them, so they end the scan.
//!
//! Written by hand: the format is thirty lines, and no well-kept crate
//! offers a preallocated, reusable, CRC-framed log with `fdatasync`.
//!
//! Must never: report a record durable before `fdatasync` returned, or
//! return a record whose bytes do not match its CRC.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::AuditError;

/// The journal's size: batches between two fills must fit in it.
pub(crate) const SIZE: u64 = 16 << 20;
const MAGIC: u32 = 0x4c41_4a31; // "LAJ1"
const HEAD: usize = 12; // magic, length, crc
const OWES: u8 = 1;
const SETTLES: u8 = 2;

/// One event as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    /// The canonical JSON.
    pub(crate) json: Vec<u8>,
    /// A decision that owes an outcome: its event id.
    pub(crate) owes: Option<String>,
    /// An outcome: the event id of the decision it settles.
    pub(crate) settles: Option<String>,
}

pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    size: u64,
    /// Where the next record goes.
    at: u64,
}

fn io(path: &Path, e: std::io::Error) -> AuditError {
    AuditError::Io(format!("audit journal {}: {e}", path.display()))
}

/// The journal of the store at `db`: `audit.db` → `audit.journal`.
pub(crate) fn path_of(db: &Path) -> PathBuf {
    db.with_extension("journal")
}

impl Journal {
    /// Opens the journal, creating it (written full of zeros and synced)
    /// when it is missing or shorter than `SIZE`. Writing starts at 0: call
    /// `read` first to replay what it holds.
    pub(crate) fn open(path: &Path) -> Result<Self, AuditError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io(path, e))?;
        let len = file.metadata().map_err(|e| io(path, e))?.len();
        if len < SIZE {
            let zeros = vec![0u8; 1 << 20];
            let mut at = len;
            while at < SIZE {
                let n = (SIZE - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)
                    .map_err(|e| io(path, e))?;
                at += n as u64;
            }
            file.sync_all().map_err(|e| io(path, e))?;
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io(path, e))?;
            }
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size: len.max(SIZE),
            at: 0,
        })
    }

    /// Every record from the start while they are intact and continue the
    /// sequence.
    pub(crate) fn read(&self) -> Result<Vec<Entry>, AuditError> {
        read_file(&self.file, self.size).map_err(|e| io(&self.path, e))
    }

    /// Appends the entries after the last ones, then, with `sync`, waits
    /// for `fdatasync`. Returns false, writing nothing, when they do not fit
    /// before the end (fill the store, `restart`, and append again).
    pub(crate) fn append<'a>(
        &mut self,
        entries: impl Iterator<Item = &'a Entry>,
        sync: bool,
    ) -> Result<bool, AuditError> {
        let mut buf = Vec::new();
        for e in entries {
            encode(e, &mut buf);
        }
        if self.at + buf.len() as u64 > self.size {
            return Ok(false);
        }
        self.file
            .write_all_at(&buf, self.at)
            .map_err(|e| io(&self.path, e))?;
        if sync {
            self.file.sync_data().map_err(|e| io(&self.path, e))?;
        }
        self.at += buf.len() as u64;
        Ok(true)
    }

    /// Starts writing at offset 0 again: the store now holds, synced,
    /// everything journaled.
    pub(crate) fn restart(&mut self) {
        self.at = 0;
    }

    /// Whether nothing was appended since the last restart.
    pub(crate) fn is_empty(&self) -> bool {
        self.at == 0
    }
}

/// The journal's records at `path` (none when there is no journal), read
/// one at a time; safe beside a running writer: a record being written
/// fails its CRC and ends the read.
pub(crate) fn read_path(path: &Path) -> Result<Vec<Entry>, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path, e)),
    };
    let size = file.metadata().map_err(|e| io(path, e))?.len();
    read_file(&file, size).map_err(|e| io(path, e))
}

/// The events durable in the journal of the store at `db`, in log order:
/// the newest ones a busy writer has not filled into the store yet (and
/// some it already has). A restart writes those beyond the store into it.
/// Read the journal before the store to see every durable event: the
/// writer fills the store before it reuses the journal.
pub fn journaled(db: &Path) -> Result<Vec<crate::store::StoredEvent>, AuditError> {
    read_path(&path_of(db))?
        .into_iter()
        .map(|e| {
            Ok(crate::store::StoredEvent {
                seq: e.seq,
                json: String::from_utf8(e.json).map_err(|e| AuditError::Encoding(e.to_string()))?,
            })
        })
        .collect()
}

/// The events durable in the journal of the store at `db` that the store
/// does not hold (the gateway stopped before it wrote them in; its next
/// start does), in log order.
pub fn beyond_store(
    db: &Path,
    store: &crate::Store,
) -> Result<Vec<crate::store::StoredEvent>, AuditError> {
    let journaled = journaled(db)?;
    let size = store.log_size()?;
    Ok(journaled.into_iter().filter(|e| e.seq >= size).collect())
}

fn read_file(file: &File, size: u64) -> std::io::Result<Vec<Entry>> {
    let mut out: Vec<Entry> = Vec::new();
    let mut at = 0u64;
    let mut bytes = Vec::new();
    while at + HEAD as u64 <= size {
        let mut head = [0u8; HEAD];
        file.read_exact_at(&mut head, at)?;
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as u64;
        if at + HEAD as u64 + len > size {
            break;
        }
        bytes.clear();
        bytes.extend_from_slice(&head);
        bytes.resize(HEAD + len as usize, 0);
        file.read_exact_at(&mut bytes[HEAD..], at + HEAD as u64)?;
        let Some(entry) = decode(&bytes) else {
            break;
        };
        if out.last().is_some_and(|last| entry.seq != last.seq + 1) {
            break;
        }
        out.push(entry);
        at += HEAD as u64 + len;
    }
    Ok(out)
}

fn encode(e: &Entry, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&[0; 8]); // length and crc, below
    buf.extend_from_slice(&e.seq.to_le_bytes());
    let flags =
        if e.owes.is_some() { OWES } else { 0 } | if e.settles.is_some() { SETTLES } else { 0 };
    buf.push(flags);
    for id in [&e.owes, &e.settles].into_iter().flatten() {
        buf.extend_from_slice(&(id.len() as u16).to_le_bytes());
        buf.extend_from_slice(id.as_bytes());
    }
    buf.extend_from_slice(&e.json);
    let body = start + HEAD;
    let len = (buf.len() - body) as u32;
    let crc = crc32fast::hash(&buf[body..]);
    buf[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// One whole record (head and body), if it is intact.
fn decode(record: &[u8]) -> Option<Entry> {
    let word = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(record.get(i..i + 4)?.try_into().ok()?))
    };
    if word(0)? != MAGIC {
        return None;
    }
    let len = word(4)? as usize;
    let body = record.get(HEAD..HEAD.checked_add(len)?)?;
    if crc32fast::hash(body) != word(8)? {
        return None;
    }
    let seq = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let flags = *body.get(8)?;
    let mut rest = body.get(9..)?;
    let mut id = |present: bool| -> Option<Option<String>> {
        if !present {
            return Some(None);
        }
        let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let s = String::from_utf8(rest.get(2..2 + n)?.to_vec()).ok()?;
        rest = rest.get(2 + n..)?;
        Some(Some(s))
    };
    let owes = id(flags & OWES != 0)?;
    let settles = id(flags & SETTLES != 0)?;
    Some(Entry {
        seq,
        json: rest.to_vec(),
        owes,
        settles,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Overwrites bytes of the file, as a torn write would leave them.
    fn scribble(path: &Path, at: u64, bytes: &[u8]) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, at).unwrap();
    }

    /// A new journal in a directory of its own (kept while the test runs).
    fn new_journal() -> (tempfile::TempDir, PathBuf, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.journal");
        let j = Journal::open(&path).unwrap();
        (dir, path, j)
    }

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            json: format!("{{\"seq\":{seq}}}").into_bytes(),
            owes: seq.is_multiple_of(2).then(|| format!("decision-{seq}")),
            settles: seq.is_multiple_of(3).then(|| format!("settled-{seq}")),
        }
    }

    #[test]
    fn records_come_back_as_written_across_a_reopen() {
        let (_dir, path, mut j) = new_journal();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE);
        assert!(j.read().unwrap().is_empty(), "a new journal holds nothing");
        let written: Vec<Entry> = (7..20).map(entry).collect();
        assert!(j.append(written[..5].iter(), true).unwrap());
        assert!(j.append(written[5..].iter(), false).unwrap());
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.read().unwrap(), written);
    }

    #[test]
    fn a_torn_record_ends_the_replay_before_it() {
        let (_dir, path, mut j) = new_journal();
        let written: Vec<Entry> = (0..4).map(entry).collect();
        j.append(written.iter(), true).unwrap();
        let mut third = Vec::new();
        for e in &written[..2] {
            encode(e, &mut third);
        }
        // One flipped byte in the third record's event.
        scribble(&path, third.len() as u64 + HEAD as u64 + 20, b"X");
        assert_eq!(j.read().unwrap(), written[..2].to_vec());
    }

    #[test]
    fn after_a_restart_older_records_behind_the_new_ones_are_not_replayed() {
        let (_dir, _, mut j) = new_journal();
        let old: Vec<Entry> = (0..50).map(entry).collect();
        j.append(old.iter(), true).unwrap();
        j.restart();
        assert!(j.is_empty());
        let new: Vec<Entry> = (50..53).map(entry).collect();
        j.append(new.iter(), true).unwrap();
        assert_eq!(j.read().unwrap(), new);
    }

    #[test]
    fn a_batch_that_does_not_fit_is_refused_and_nothing_is_written() {
        let (_dir, _, mut j) = new_journal();
        let big = Entry {
            seq: 0,
            json: vec![b'x'; (SIZE / 2) as usize],
            owes: None,
            settles: None,
        };
        assert!(j.append([&big].into_iter(), false).unwrap());
        let mut second = big.clone();
        second.seq = 1;
        assert!(!j.append([&second].into_iter(), false).unwrap());
        assert_eq!(j.read().unwrap(), vec![big]);
        j.restart();
        assert!(j.append([&second].into_iter(), false).unwrap());
        assert_eq!(j.read().unwrap(), vec![second]);
    }
}
