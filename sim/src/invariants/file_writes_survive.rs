//! File writes survive (design.md sections 3 and 7): once the cluster is quiet, every file
//! write the volume service acknowledged is in its volume's live file on the owner (process
//! death loses nothing acknowledged), and so is every write a successful flush covered (power
//! loss loses nothing flushed).
//!
//! Under simulation the volume store is RocksDB on the real file system, whose unsynced writes
//! survive a simulated power loss too: so far this checks process death and the flush path's
//! routing, not what a power loss drops (that needs an in-memory engine under the store).

use std::collections::BTreeSet;

/// Volume `name`'s file holds `present`; `acked` and `flushed` are what the writer was told.
pub fn check(name: &str, present: &BTreeSet<u64>, acked: &[u64], flushed: &BTreeSet<u64>, violations: &mut Vec<String>) {
    let lost: Vec<u64> = acked.iter().copied().filter(|k| !present.contains(k)).collect();
    if let Some(first) = lost.first() {
        let flushed_lost = lost.iter().filter(|k| flushed.contains(k)).count();
        violations.push(format!(
            "file writes survive: volume {name} lost {} of {} acknowledged writes ({flushed_lost} of them flushed; first: write {first})",
            lost.len(),
            acked.len()
        ));
    }
}
