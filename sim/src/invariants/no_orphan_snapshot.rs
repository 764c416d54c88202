//! No orphan snapshot once the cluster is quiet (design.md section 5): every fenced snapshot an
//! owner holds belongs to a committed set (Committed, Exposed, Recovered); the snapshots of
//! aborted or abandoned attempts are gone.

use std::collections::{BTreeMap, BTreeSet};

use umbra_node::volume::{SnapshotInfo, SnapshotState};
use umbra_raft::fsrvp::{FsrvpState, SetState};
use uuid::Uuid;

/// `snapshots`: each volume's snapshots as its owner lists them.
pub fn check(state: &FsrvpState, snapshots: &BTreeMap<Uuid, Vec<SnapshotInfo>>, violations: &mut Vec<String>) {
    let kept: BTreeSet<(Uuid, Uuid)> = state
        .sets
        .values()
        .filter(|s| s.state >= SetState::Committed)
        .flat_map(|set| set.copies.iter().filter_map(|c| c.snapshot.map(|snap| (c.volume, snap))))
        .collect();
    for (vol, list) in snapshots {
        for s in list.iter().filter(|s| s.token.is_some() && s.state != SnapshotState::Deleting) {
            if !kept.contains(&(*vol, s.id)) {
                violations.push(format!("no orphan snapshot: volume {vol} keeps fenced snapshot {} (token {:?}, {:?}) that no committed set holds", s.id, s.token, s.state));
            }
        }
    }
}
