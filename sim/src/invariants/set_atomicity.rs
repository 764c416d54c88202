//! Set atomicity (design.md section 5). As soon as a set is seen decided Committed (and its
//! owners run), every copy's snapshot is on its volume's owner: a set is committed whole or not
//! at all ([`check_decided`]). Once the cluster is quiet, every copy of a committed set
//! (Committed, Exposed, Recovered) has its snapshot, committed, on its owner ([`check`]).

use std::collections::BTreeMap;

use umbra_node::volume::{SnapshotInfo, SnapshotState};
use umbra_raft::fsrvp::{FsrvpState, SetState, ShadowSet};
use uuid::Uuid;

/// `snapshots`: each volume's snapshots as its owner lists them.
pub fn check(state: &FsrvpState, snapshots: &BTreeMap<Uuid, Vec<SnapshotInfo>>, violations: &mut Vec<String>) {
    for set in state.sets.values().filter(|s| s.state >= SetState::Committed) {
        for copy in &set.copies {
            let Some(snap) = copy.snapshot else {
                violations.push(format!("set atomicity: {:?} set {} has a copy on volume {} without a snapshot", set.state, set.id, copy.volume));
                continue;
            };
            let found = snapshots.get(&copy.volume).and_then(|l| l.iter().find(|s| s.id == snap));
            match found {
                Some(s) if s.state == SnapshotState::Committed => {}
                Some(s) => violations.push(format!("set atomicity: set {} snapshot {snap} on volume {} is {:?}", set.id, copy.volume, s.state)),
                None => violations.push(format!("set atomicity: {:?} set {} lacks its snapshot {snap} on volume {}", set.state, set.id, copy.volume)),
            }
        }
    }
}

/// A set just seen decided Committed: `snapshots` lists a volume's snapshots on its owner.
pub fn check_decided(set: &ShadowSet, snapshots: impl Fn(Uuid) -> Vec<SnapshotInfo>, violations: &mut Vec<String>) {
    for copy in &set.copies {
        let Some(snap) = copy.snapshot else {
            violations.push(format!("set atomicity: set {} decided Committed with a copy on volume {} without a snapshot", set.id, copy.volume));
            continue;
        };
        if !snapshots(copy.volume).iter().any(|s| s.id == snap) {
            violations.push(format!("set atomicity: set {} decided Committed but volume {}'s owner lacks its snapshot {snap}", set.id, copy.volume));
        }
    }
}
