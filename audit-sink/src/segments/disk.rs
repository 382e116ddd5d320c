//! What the device under the segments makes a durable decision cost, read
//! from Linux's sysfs once at start and said in one line: a call waits for
//! its decision's synced write, and how many round trips to the device
//! that write takes is the device's, not Lattice's. A volatile write cache
//! without FUA (forced unit access) turns each synced write into a write
//! and then a cache flush — two round trips, and the flush waits for any
//! other flush in flight on the device (measured on a virtio disk without
//! FUA: `docs/benchmarks-log.md`, "Where the p99 at 1,000 req/s goes").
//!
//! Written by hand: sysfs's two attribute files need no crate.
//!
//! Must never: fail or delay a start (anything it cannot read, it leaves
//! unsaid), or claim a cost it did not read.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// How the device takes a synced write, from its `queue/write_cache` and
/// `queue/fua` attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncCost {
    /// No volatile cache ("write through"): the write itself is durable.
    WriteThrough,
    /// A volatile cache, and writes that can bypass it (FUA): one write.
    Fua,
    /// A volatile cache without FUA: a write, then a cache flush.
    WriteThenFlush,
}

impl SyncCost {
    /// From the two attribute files' contents; None for anything else.
    pub(crate) fn from_attributes(write_cache: &str, fua: &str) -> Option<Self> {
        match (write_cache.trim(), fua.trim()) {
            ("write through", _) => Some(Self::WriteThrough),
            ("write back", "1") => Some(Self::Fua),
            ("write back", "0") => Some(Self::WriteThenFlush),
            _ => None,
        }
    }

    /// What a durable decision waits for, in words.
    pub(crate) fn says(self) -> &'static str {
        match self {
            Self::WriteThrough => "a write-through cache: each synced write is one round trip to the device",
            Self::Fua => "a volatile cache with FUA: each synced write is one round trip to the device",
            Self::WriteThenFlush => "a volatile cache without FUA: each synced write is a write and then a cache flush, two round trips to the device, and the flush waits for any other flush in flight on it",
        }
    }
}

/// The block device holding `dir` (its sysfs name) and how it takes a
/// synced write; None where sysfs does not say (not Linux, a filesystem
/// with no block device such as tmpfs or overlayfs, sysfs not mounted).
pub(crate) fn sync_cost(dir: &Path) -> Option<(String, SyncCost)> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    if major == 0 {
        return None;
    }
    let node = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    // A partition has no queue of its own: its disk's is one level up.
    let queue = [node.join("queue"), node.parent()?.join("queue")]
        .into_iter()
        .find(|q| q.is_dir())?;
    let read = |f: &str| std::fs::read_to_string(queue.join(f)).ok();
    let cost = SyncCost::from_attributes(&read("write_cache")?, &read("fua")?)?;
    let name = queue.parent()?.file_name()?.to_string_lossy().into_owned();
    Some((name, cost))
}

/// Says once, at start, what the segments' device makes a synced write.
pub(super) fn say_sync_cost(dir: &Path) {
    if let Some((device, cost)) = sync_cost(dir) {
        tracing::info!(
            dir = %dir.display(),
            %device,
            "the audit segments' device ({device}) has {}",
            cost.says()
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_device_attributes_map_to_what_a_synced_write_costs() {
        for (write_cache, fua, cost) in [
            ("write back\n", "0\n", Some(SyncCost::WriteThenFlush)),
            ("write back\n", "1\n", Some(SyncCost::Fua)),
            ("write through\n", "0\n", Some(SyncCost::WriteThrough)),
            ("write through\n", "1\n", Some(SyncCost::WriteThrough)),
            ("write back", "", None),
            ("", "0", None),
            ("something new", "1", None),
        ] {
            assert_eq!(
                SyncCost::from_attributes(write_cache, fua),
                cost,
                "{write_cache:?} {fua:?}"
            );
        }
    }

    #[test]
    fn a_directory_on_a_block_device_gets_its_disks_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let dev = std::fs::metadata(dir.path()).unwrap().dev();
        let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
        let node = format!("/sys/dev/block/{major}:{minor}");
        if major == 0 || !Path::new(&node).exists() {
            eprintln!("skipped: the temporary directory is not on a block device sysfs lists");
            return;
        }
        let (name, cost) = sync_cost(dir.path()).unwrap();
        let queue = Path::new("/sys/block").join(&name).join("queue");
        let read = |f: &str| std::fs::read_to_string(queue.join(f)).unwrap();
        assert_eq!(
            SyncCost::from_attributes(&read("write_cache"), &read("fua")),
            Some(cost),
            "{name}"
        );
        assert!(!cost.says().is_empty());
    }
}
