//! What the writer hands the store: pending entries become rows, owed
//! decisions and settled ones; and at start, what the segments (or a
//! legacy journal) hold beyond the store is written in.
//!
//! Must never: drop, reorder or change an entry on its way to the store.

use std::collections::HashMap;

use std::path::Path;

use crate::journal::{self, Entry};
use crate::merkle::Hash;
use crate::segments::{self, Loc};
use crate::store::{Columns, Row, Store};
use crate::AuditError;

/// Writes into the store what the segments hold beyond it (entries made
/// durable before the gateway stopped, not yet filled), in one synced
/// commit; first what a legacy journal holds beyond it (a store written
/// before segments), after which that journal is removed. Returns how many.
pub(super) fn replay(store: &mut Store, db: &Path) -> Result<usize, AuditError> {
    let legacy = journal::path_of(db);
    let old = journal::read_path(&legacy)?
        .into_iter()
        .map(|e| (e, None))
        .collect();
    let mut n = replay_entries(store, old)?;
    match std::fs::remove_file(&legacy) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AuditError::Io(format!("{}: {e}", legacy.display()))),
    }
    let size = store.log_size()?;
    let new = segments::read_from(db, size)?
        .into_iter()
        .map(|(e, loc)| (e, Some(loc)))
        .collect();
    n += replay_entries(store, new)?;
    Ok(n)
}

fn replay_entries(
    store: &mut Store,
    entries: Vec<(Entry, Option<Loc>)>,
) -> Result<usize, AuditError> {
    let size = store.log_size()?;
    let entries: Vec<(Entry, Option<Loc>)> =
        entries.into_iter().filter(|(e, _)| e.seq >= size).collect();
    let Some((first, _)) = entries.first() else {
        return Ok(0);
    };
    if first.seq != size {
        return Err(AuditError::Corrupt(format!(
            "the audit segments continue the log at {} but the store ends at {size}",
            first.seq
        )));
    }
    let pending = entries
        .into_iter()
        .map(|(mut e, loc)| {
            let leaf = crate::merkle::leaf_hash(&e.json);
            let columns = Columns::from_json(&e.json)?;
            if loc.is_some() {
                e.json = Vec::new();
            }
            Ok((e, leaf, columns, loc))
        })
        .collect::<Result<Vec<Pending>, AuditError>>()?;
    let (rows, owed, settled) = store_rows(pending);
    store.append(&rows, &owed, &settled)?;
    tracing::warn!(
        events = rows.len(),
        "audit events made durable before the gateway stopped are now in the store"
    );
    Ok(rows.len())
}

/// An entry on its way to the store: its record (JSON emptied once the
/// segments hold it), its leaf, its indexed columns, and where it is in
/// the segments (none for a legacy journal's entries, stored inline).
pub(super) type Pending = (Entry, Hash, Columns, Option<Loc>);
/// Rows for `Store::append` (written in one transaction), the decisions
/// that owe an outcome, and those settled. A decision settled by an
/// outcome among the same rows is in neither list: adding it to `owed`
/// and removing it in the same transaction leaves the store as not
/// adding it at all, and a busy gateway's calls mostly end within one.
pub(super) fn store_rows(entries: Vec<Pending>) -> (Vec<Row>, Vec<(String, u64)>, Vec<String>) {
    let mut owed: HashMap<String, u64> = HashMap::new();
    let mut settles = Vec::new();
    let rows = entries
        .into_iter()
        .map(|(e, leaf, columns, loc)| {
            if let Some(id) = e.owes {
                owed.insert(id, e.seq);
            }
            if let Some(id) = e.settles {
                settles.push(id);
            }
            Row {
                seq: e.seq,
                json: e.json,
                loc,
                leaf,
                columns,
            }
        })
        .collect();
    let settled = settles
        .into_iter()
        .filter(|id| owed.remove(id).is_none())
        .collect();
    (rows, owed.into_iter().collect(), settled)
}
