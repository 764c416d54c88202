//! One shadow-copy set in creation at a time (design.md section 5, Samba's rule): no node's
//! applied state ever holds two sets in Started, Added, CreationInProgress or Committed.
//! Observed on every simulation step.

use umbra_raft::fsrvp::{FsrvpState, SetState};
use umbra_raft::NodeId;

pub fn check(node: NodeId, state: &FsrvpState, violations: &mut Vec<String>) {
    let creating: Vec<_> = state.sets.values().filter(|s| matches!(s.state, SetState::Started | SetState::Added | SetState::CreationInProgress | SetState::Committed)).map(|s| s.id).collect();
    if creating.len() > 1 {
        let v = format!("one set in creation: n{node} holds {} sets in creation ({:?})", creating.len(), creating);
        if !violations.contains(&v) {
            violations.push(v);
        }
    }
}
