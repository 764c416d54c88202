//! Linearizable reads (design.md section 2): once a write is acknowledged, a read through any
//! node sees it (the node gets a read index from the leader and waits to apply that far).

pub fn violation(k: u64, node: u64) -> String {
    format!("linearizable reads: node {node} answered without acknowledged write u{k}")
}
