//! Liveness and agreement: once faults heal, a write succeeds within a bound, and every node
//! applies the same state (state machine safety: same log, same apply, same state).

use std::collections::BTreeSet;

/// Every node's users must be the same set.
pub fn check(states: &[(u64, BTreeSet<String>)], violations: &mut Vec<String>) {
    if let Some((first_id, first)) = states.first() {
        for (id, s) in &states[1..] {
            if s != first {
                violations.push(format!("state machines differ after healing: node {first_id} has {} users, node {id} has {}", first.len(), s.len()));
            }
        }
    }
}

/// Every two nodes that applied the log up to the same index hold the same whole state (a
/// node behind the others is compared with those at its index only).
/// Returns how many pairs were compared.
pub fn check_whole(states: &[(u64, Option<u64>, umbra_raft::state::MetaState)], violations: &mut Vec<String>) -> usize {
    let mut compared = 0;
    for (i, (a, at, sa)) in states.iter().enumerate() {
        for (b, bt, sb) in &states[i + 1..] {
            compared += usize::from(at == bt);
            if at == bt && sa != sb {
                let what = if sa.fsrvp != sb.fsrvp { "shadow-copy sets" } else if sa.shares != sb.shares { "shares" } else if sa.volumes != sb.volumes { "volumes" } else { "state" };
                violations.push(format!("state machines differ at applied index {at:?}: nodes {a} and {b} hold different {what}"));
            }
        }
    }
    compared
}
