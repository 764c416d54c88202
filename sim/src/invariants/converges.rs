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
