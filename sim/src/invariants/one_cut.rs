//! One cut across volumes (design.md section 5): for writes W1 acknowledged before W2 started,
//! no committed set contains W2 without W1, whichever volumes they went to. The writer is
//! sequential, so every acknowledged write was acknowledged before every later write started.

use std::collections::BTreeSet;

use uuid::Uuid;

/// `present`: the writes in set `set`'s snapshots (all volumes); `acked`: in order.
pub fn check(set: Uuid, present: &BTreeSet<u64>, acked: &[u64], violations: &mut Vec<String>) {
    let Some(&last) = present.iter().next_back() else { return };
    if let Some(missing) = acked.iter().copied().take_while(|&k| k < last).find(|k| !present.contains(k)) {
        violations.push(format!("one cut: committed set {set} holds write {last} but not write {missing}, acknowledged before it started"));
    }
}
