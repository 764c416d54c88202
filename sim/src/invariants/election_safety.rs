//! Raft election safety (Raft paper, figure 3): at most one leader per term. Observed on every
//! simulation step from each running node's own metrics.

use std::collections::BTreeMap;

use umbra_raft::NodeId;

#[derive(Default)]
pub struct ElectionSafety {
    leaders: BTreeMap<u64, NodeId>,
    pub violations: Vec<String>,
}

impl ElectionSafety {
    /// Node `id` says it leads in `term`.
    pub fn observe(&mut self, id: NodeId, term: u64) -> bool {
        match self.leaders.get(&term) {
            Some(&other) if other != id => {
                let v = format!("election safety: nodes {other} and {id} both led term {term}");
                if !self.violations.contains(&v) {
                    self.violations.push(v);
                }
                false
            }
            Some(_) => false,
            None => {
                self.leaders.insert(term, id);
                true
            }
        }
    }
}
