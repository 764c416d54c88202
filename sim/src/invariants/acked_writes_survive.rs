//! No acknowledged write is lost: every metadata write the cluster acknowledged to the client
//! is in every node's state once the cluster is quiet. Under process death this is "no
//! acknowledged write lost"; under power loss, "nothing flushed lost" (Raft acknowledges an entry
//! only once a quorum has made it durable).

use std::collections::BTreeSet;

/// Checks one node's user names against the acknowledged ones.
pub fn check(node: u64, acked: &[u64], users: &BTreeSet<String>, violations: &mut Vec<String>) {
    let missing: Vec<u64> = acked.iter().copied().filter(|k| !users.contains(&format!("u{k}"))).collect();
    if !missing.is_empty() {
        violations.push(format!("acknowledged writes lost on node {node}: {} of {} (first: u{})", missing.len(), acked.len(), missing[0]));
    }
}
