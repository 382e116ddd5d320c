//! What the writer hands the store: pending entries become rows, owed
//! decisions and settled ones; and at start, what the journal holds beyond
//! the store is written in.
//!
//! Must never: drop, reorder or change an entry on its way to the store.

use std::collections::HashMap;

use crate::journal::{Entry, Journal};
use crate::merkle::Hash;
use crate::store::{Columns, Row, Store};
use crate::AuditError;

/// Writes into the store what the journal holds beyond it (entries made
/// durable before the gateway stopped, not yet filled), in one synced
/// commit; returns how many.
pub(super) fn replay(store: &mut Store, journal: &Journal) -> Result<usize, AuditError> {
    let size = store.log_size()?;
    let entries: Vec<Entry> = journal
        .read()?
        .into_iter()
        .filter(|e| e.seq >= size)
        .collect();
    let Some(first) = entries.first() else {
        return Ok(0);
    };
    if first.seq != size {
        return Err(AuditError::Corrupt(format!(
            "the audit journal continues the log at {} but the store ends at {size}",
            first.seq
        )));
    }
    let pending = entries
        .into_iter()
        .map(|e| {
            let leaf = crate::merkle::leaf_hash(&e.json);
            let columns = Columns::from_json(&e.json)?;
            Ok((e, leaf, columns))
        })
        .collect::<Result<Vec<Pending>, AuditError>>()?;
    let (rows, owed, settled) = store_rows(pending);
    store.append(&rows, &owed, &settled)?;
    tracing::warn!(
        events = rows.len(),
        "audit events made durable in the journal before the gateway stopped are now in the store"
    );
    Ok(rows.len())
}

/// An entry on its way to the store: journaled (or not), its leaf, and
/// its indexed columns.
pub(super) type Pending = (Entry, Hash, Columns);

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
        .map(|(e, leaf, columns)| {
            if let Some(id) = e.owes {
                owed.insert(id, e.seq);
            }
            if let Some(id) = e.settles {
                settles.push(id);
            }
            Row {
                seq: e.seq,
                json: e.json,
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
