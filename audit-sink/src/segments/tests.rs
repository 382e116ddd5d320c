//! The segments' tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use crate::journal::tests::{entry, scribble};

/// A record of about 20 KiB: three fit in a 64 KiB segment.
fn big(seq: u64) -> Entry {
    Entry {
        seq,
        json: vec![b'x'; 20 << 10],
        owes: None,
        settles: None,
    }
}

/// A new store's segments of `MIN_SIZE`, with or without direct writes.
fn fresh(direct: bool) -> (tempfile::TempDir, PathBuf, Segments) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let s = Segments::open_with(&db, MIN_SIZE, 0, direct).unwrap();
    (dir, db, s)
}

/// Whether the filesystem under `dir` takes direct writes.
fn takes_direct(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(dir.join("probe"))
        .is_ok()
}

fn seqs(db: &Path, from: u64) -> Vec<u64> {
    read_from(db, from)
        .unwrap()
        .iter()
        .map(|(e, _)| e.seq)
        .collect()
}

#[test]
fn records_come_back_as_written_across_a_reopen() {
    for direct in [true, false] {
        let (_dir, db, mut s) = fresh(direct);
        assert_eq!(s.current(), 1);
        assert_eq!(
            std::fs::metadata(dir_of(&db).join(file_name(1)))
                .unwrap()
                .len(),
            MIN_SIZE,
            "written full of zeros up front"
        );
        let written: Vec<Entry> = (0..10).map(entry).collect();
        let locs = s.append(written[..4].iter(), true).unwrap();
        assert_eq!(locs[0], Loc { seg: 1, off: 0 });
        s.append(written[4..7].iter(), false).unwrap();
        drop(s);
        // Reopened, it goes on after the last record.
        let mut s = Segments::open_with(&db, MIN_SIZE, 0, direct).unwrap();
        s.append(written[7..].iter(), true).unwrap();
        let read = read_from(&db, 0).unwrap();
        assert_eq!(
            read.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>(),
            written
        );
        assert_eq!(seqs(&db, 6), [6, 7, 8, 9]);
        assert_eq!(
            s.used_bytes(),
            read[9].1.off + {
                let mut b = Vec::new();
                journal::encode(&written[9], &mut b);
                b.len() as u64
            }
        );
    }
}

#[test]
fn a_torn_record_is_written_over_after_a_restart() {
    for direct in [true, false] {
        let (_dir, db, mut s) = fresh(direct);
        let locs = s
            .append((0..3).map(entry).collect::<Vec<_>>().iter(), true)
            .unwrap();
        drop(s);
        // The third record torn, as a crash mid-write leaves it.
        scribble(&dir_of(&db).join(file_name(1)), locs[2].off + 20, b"XX");
        assert_eq!(seqs(&db, 0), [0, 1]);
        let mut s = Segments::open_with(&db, MIN_SIZE, 0, direct).unwrap();
        let again = s.append([entry(2)].iter(), true).unwrap();
        assert_eq!(again[0], locs[2], "the torn record's place is reused");
        assert_eq!(seqs(&db, 0), [0, 1, 2]);
    }
}

#[test]
fn a_full_segment_moves_on_to_the_next_and_old_ones_are_removed() {
    for direct in [true, false] {
        let (_dir, db, mut s) = fresh(direct);
        let mut segs = Vec::new();
        for seq in 0..7 {
            segs.push(s.append([big(seq)].iter(), false).unwrap()[0].seg);
        }
        // Three 20 KiB records fit in 64 KiB.
        assert_eq!(segs, [1, 1, 1, 2, 2, 2, 3]);
        assert_eq!(list(&dir_of(&db)).unwrap(), [1, 2, 3]);
        // Moving on synced each full segment; the last append, not synced,
        // is held in memory by direct writes (buffered ones left it in the
        // page cache, where readers see it).
        let unsynced_seen = if s.out.is_direct() { 6 } else { 7 };
        assert_eq!(seqs(&db, 0), (0..unsynced_seen).collect::<Vec<_>>());
        s.sync().unwrap();
        assert_eq!(seqs(&db, 0), (0..7).collect::<Vec<_>>());
        assert_eq!(seqs(&db, 4), [4, 5, 6], "read from the segment holding #4");
        assert_eq!(s.used_bytes(), 2 * MIN_SIZE + (20 << 10) + 12 + 9);
        // A batch that does not fit is split: what fits stays, the rest
        // goes on in the next segment.
        let batch: Vec<Entry> = (7..10).map(big).collect();
        let locs = s.append(batch.iter(), true).unwrap();
        assert_eq!(locs.iter().map(|l| l.seg).collect::<Vec<_>>(), [3, 3, 4]);
        // A record larger than a whole segment goes into a new one of its own.
        let huge = Entry {
            json: vec![b'y'; MIN_SIZE as usize],
            ..big(10)
        };
        assert_eq!(s.append([&huge].into_iter(), true).unwrap()[0].seg, 5);
        assert_eq!(seqs(&db, 8), [8, 9, 10]);
        s.remove_before(4).unwrap();
        assert_eq!(list(&dir_of(&db)).unwrap(), [4, 5]);
        s.remove_before(9).unwrap();
        assert_eq!(list(&dir_of(&db)).unwrap(), [5], "never the current one");
        assert_eq!(s.current(), 5);
    }
}

#[test]
fn an_append_cut_short_by_an_error_goes_on_where_it_stopped() {
    for direct in [true, false] {
        let (_dir, db, mut s) = fresh(direct);
        s.append([big(0), big(1)].iter(), true).unwrap();
        // The next segment's name is taken by a non-empty directory: the
        // move to it fails after the batch's first record went in.
        let blocker = dir_of(&db).join(file_name(2));
        std::fs::create_dir_all(blocker.join("x")).unwrap();
        let batch: Vec<Entry> = (2..5).map(big).collect();
        assert!(s.append(batch.iter(), true).is_err());
        std::fs::remove_dir_all(&blocker).unwrap();
        assert_eq!(seqs(&db, 0), [0, 1, 2], "the first record went in");
        // Called again with the same batch: nothing is written twice.
        let locs = s.append(batch.iter(), true).unwrap();
        assert_eq!(locs.iter().map(|l| l.seg).collect::<Vec<_>>(), [1, 2, 2]);
        assert_eq!(seqs(&db, 0), [0, 1, 2, 3, 4]);
    }
}

#[test]
fn lattice_event_reads_a_record_and_null_for_a_damaged_or_missing_one() {
    for direct in [true, false] {
        let (_dir, db, mut s) = fresh(direct);
        let locs = s
            .append((0..2).map(entry).collect::<Vec<_>>().iter(), true)
            .unwrap();
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        register(&conn, &db).unwrap();
        let read = |seg: u64, off: u64| -> Option<String> {
            conn.query_row(
                "SELECT lattice_event(?1, ?2)",
                [seg as i64, off as i64],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(read(1, locs[1].off).as_deref(), Some("{\"seq\":1}"));
        assert_eq!(read(1, locs[1].off + 1), None, "not where a record starts");
        assert_eq!(read(7, 0), None, "no such segment");
        scribble(&dir_of(&db).join(file_name(1)), locs[0].off + 22, b"X");
        assert_eq!(read(1, locs[0].off), None, "its CRC fails");
    }
}

#[test]
fn segments_are_written_directly_where_the_filesystem_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let s = Segments::open(&db, MIN_SIZE, 0).unwrap();
    assert_eq!(s.out.is_direct(), takes_direct(dir.path()));
    let s = Segments::open_with(&db, MIN_SIZE, 0, false).unwrap();
    assert!(!s.out.is_direct());
}

#[test]
fn appends_ending_mid_block_keep_every_record_of_that_block() {
    // Records of every size around the block size, appended one batch at
    // a time, some synced and some not, reopened halfway: each append
    // rewrites the block the last one ended in.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let sizes = [1, 100, 4000, 4083, 4084, 4085, 4096, 5000, 8192, 12_000];
    let written: Vec<Entry> = sizes
        .iter()
        .cycle()
        .take(40)
        .enumerate()
        .map(|(i, &n)| Entry {
            seq: i as u64,
            json: vec![b'a' + (i % 26) as u8; n],
            owes: None,
            settles: None,
        })
        .collect();
    let mut s = Segments::open(&db, 1 << 20, 0).unwrap();
    for (i, chunk) in written.chunks(3).enumerate() {
        if i == 7 {
            s = Segments::open(&db, 1 << 20, 0).unwrap();
        }
        s.append(chunk.iter(), i % 2 == 0).unwrap();
    }
    s.sync().unwrap();
    let read: Vec<Entry> = read_from(&db, 0)
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(read, written);
}

#[test]
fn segment_sizes_are_whole_blocks() {
    for max in [None, Some(1 << 20), Some(3_000_000), Some(1 << 40)] {
        assert_eq!(size_for(max) % BLOCK as u64, 0, "{max:?}");
    }
}
