//! Set liveness (design.md section 5): once faults heal, every commit attempt is decided (its
//! coordinator, or the leader's deadline timer when the coordinator died), and no set is left
//! in creation (the client's sequence timer removes what a dead client left behind).

use umbra_raft::fsrvp::{FsrvpState, SetState};

pub fn check(state: &FsrvpState, violations: &mut Vec<String>) {
    for a in state.attempts.values().filter(|a| a.decision.is_none()) {
        violations.push(format!("set liveness: attempt {} on set {} undecided after healing", a.token, a.set));
    }
    for s in state.sets.values().filter(|s| matches!(s.state, SetState::Started | SetState::Added | SetState::CreationInProgress)) {
        violations.push(format!("set liveness: set {} still {:?} after healing", s.id, s.state));
    }
}
