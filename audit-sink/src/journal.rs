//! The audit record format, shared by the segments (`segments`) and the
//! legacy journal: `magic | length | crc32 | seq | flags | [owed event id] |
//! [settled id] | canonical event JSON`. Reading stops at the first record
//! that is torn (bad magic, length or CRC) or does not continue the
//! sequence.
//!
//! Until 2026-12-05 the writer kept a reused 16 MiB `audit.journal` beside
//! the store and copied every event's JSON into SQLite behind it; a store
//! that still has one is replayed from it once at start (`read_path`),
//! then the file is removed.
//!
//! Written by hand: the format is thirty lines, and no well-kept crate
//! offers a CRC-framed record log with `fdatasync`.
//!
//! Must never: return a record whose bytes do not match its CRC.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::AuditError;

const MAGIC: u32 = 0x4c41_4a31; // "LAJ1"
const HEAD: usize = 12; // magic, length, crc
/// No record is longer (a longer length is a torn or forged head).
const MAX_LEN: usize = 64 << 20;
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

fn io(path: &Path, e: std::io::Error) -> AuditError {
    AuditError::Io(format!("audit journal {}: {e}", path.display()))
}

/// The legacy journal of the store at `db`: `audit.db` → `audit.journal`.
pub(crate) fn path_of(db: &Path) -> PathBuf {
    db.with_extension("journal")
}

/// The legacy journal's records at `path` (none when there is no journal),
/// in order while they are intact and continue the sequence.
pub(crate) fn read_path(path: &Path) -> Result<Vec<Entry>, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path, e)),
    };
    let (entries, _) = read_records(&file, 0).map_err(|e| io(path, e))?;
    Ok(entries)
}

/// The record at `at`, if one is there and intact, and where the next
/// one starts.
pub(crate) fn read_record(file: &File, at: u64) -> std::io::Result<Option<(Entry, u64)>> {
    let mut head = [0u8; HEAD];
    match file.read_exact_at(&mut head, at) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if u32::from_le_bytes([head[0], head[1], head[2], head[3]]) != MAGIC {
        return Ok(None);
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if len > MAX_LEN {
        return Ok(None);
    }
    let mut bytes = vec![0u8; HEAD + len];
    bytes[..HEAD].copy_from_slice(&head);
    match file.read_exact_at(&mut bytes[HEAD..], at + HEAD as u64) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    Ok(decode(&bytes).map(|entry| (entry, at + (HEAD + len) as u64)))
}

/// The records from `at` on while they are intact and continue the
/// sequence, and where the first one that is not would start. Safe beside
/// a running writer: a record being written fails its CRC and ends the read.
pub(crate) fn read_records(file: &File, at: u64) -> std::io::Result<(Vec<Entry>, u64)> {
    let mut out = Vec::new();
    let end = scan_records(file, at, &mut |entry| out.push(entry))?;
    Ok((out, end))
}

/// `read_records`, each record handed to `each` and none kept (the
/// segments' start finds where to append this way: its memory is the
/// read-ahead, not the segment).
pub(crate) fn scan_records(
    file: &File,
    mut at: u64,
    each: &mut dyn FnMut(Entry),
) -> std::io::Result<u64> {
    let mut ahead = ReadAhead {
        buf: Vec::new(),
        start: at,
    };
    let mut last: Option<u64> = None;
    while let Some(head) = ahead.get(file, at, HEAD)? {
        let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (magic, len) = (word(0), word(4) as usize);
        if magic != MAGIC || len > MAX_LEN {
            break;
        }
        let Some(entry) = ahead.get(file, at, HEAD + len)?.and_then(decode) else {
            break;
        };
        if last.is_some_and(|l| entry.seq != l + 1) {
            break;
        }
        last = Some(entry.seq);
        at += (HEAD + len) as u64;
        each(entry);
    }
    Ok(at)
}

/// Bytes read ahead of the records, 1 MiB at a time (a record, its head
/// and its body were two reads each: 90,000 reads for a 16 MB segment).
struct ReadAhead {
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    start: u64,
}

impl ReadAhead {
    /// The file's `n` bytes at `at`; `None` past its end.
    fn get(&mut self, file: &File, at: u64, n: usize) -> std::io::Result<Option<&[u8]>> {
        if at < self.start || at + n as u64 > self.start + self.buf.len() as u64 {
            self.buf.resize(n.max(1 << 20), 0);
            let mut got = 0;
            while got < self.buf.len() {
                match file.read_at(&mut self.buf[got..], at + got as u64) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.buf.truncate(got);
            self.start = at;
        }
        let off = (at - self.start) as usize;
        Ok(self.buf.get(off..off + n))
    }
}

pub(crate) fn encode(e: &Entry, buf: &mut Vec<u8>) {
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
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::fs::OpenOptions;

    /// Overwrites bytes of the file, as a torn write would leave them.
    pub(crate) fn scribble(path: &Path, at: u64, bytes: &[u8]) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, at).unwrap();
    }

    pub(crate) fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            json: format!("{{\"seq\":{seq}}}").into_bytes(),
            owes: seq.is_multiple_of(2).then(|| format!("decision-{seq}")),
            settles: seq.is_multiple_of(3).then(|| format!("settled-{seq}")),
        }
    }

    /// A file holding the entries' records, then zeros.
    fn written(entries: &[Entry]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records");
        let mut buf = Vec::new();
        for e in entries {
            encode(e, &mut buf);
        }
        buf.extend_from_slice(&[0; 4096]);
        std::fs::write(&path, &buf).unwrap();
        (dir, path)
    }

    #[test]
    fn records_come_back_as_written() {
        let entries: Vec<Entry> = (7..20).map(entry).collect();
        let (_dir, path) = written(&entries);
        assert_eq!(read_path(&path).unwrap(), entries);
        let file = File::open(&path).unwrap();
        let (_, end) = read_records(&file, 0).unwrap();
        let mut buf = Vec::new();
        entries.iter().for_each(|e| encode(e, &mut buf));
        assert_eq!(end, buf.len() as u64, "the read ends after the last record");
    }

    #[test]
    fn records_across_the_read_ahead_and_larger_than_it_come_back_whole() {
        // 1 MiB is read at a time: records of 300 kB straddle its edges,
        // one of 2.5 MB is larger than it.
        let entries: Vec<Entry> = (0..12)
            .map(|i| Entry {
                json: vec![b'a' + i as u8; if i == 7 { 2_500_000 } else { 300_000 }],
                ..entry(i)
            })
            .collect();
        let (_dir, path) = written(&entries);
        let file = File::open(&path).unwrap();
        let (got, end) = read_records(&file, 0).unwrap();
        assert_eq!(got, entries);
        let mut buf = Vec::new();
        entries.iter().for_each(|e| encode(e, &mut buf));
        assert_eq!(end, buf.len() as u64);
        // From the middle of the file: the records after that offset.
        let mut third = Vec::new();
        entries[..3].iter().for_each(|e| encode(e, &mut third));
        let (got, _) = read_records(&file, third.len() as u64).unwrap();
        assert_eq!(got, entries[3..].to_vec());
    }

    #[test]
    fn a_torn_record_ends_the_read_before_it() {
        let entries: Vec<Entry> = (0..4).map(entry).collect();
        let (_dir, path) = written(&entries);
        let mut two = Vec::new();
        entries[..2].iter().for_each(|e| encode(e, &mut two));
        // One flipped byte in the third record's event.
        scribble(&path, two.len() as u64 + HEAD as u64 + 20, b"X");
        assert_eq!(read_path(&path).unwrap(), entries[..2].to_vec());
        let file = File::open(&path).unwrap();
        assert_eq!(read_records(&file, 0).unwrap().1, two.len() as u64);
    }

    #[test]
    fn a_record_out_of_sequence_ends_the_read() {
        let mut entries: Vec<Entry> = (0..3).map(entry).collect();
        entries.push(entry(9));
        let (_dir, path) = written(&entries);
        assert_eq!(read_path(&path).unwrap(), entries[..3].to_vec());
    }

    #[test]
    fn no_journal_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_path(&dir.path().join("missing")).unwrap().is_empty());
    }
}
