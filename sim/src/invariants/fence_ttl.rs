//! No fence past its TTL (design.md section 5): a fence ends by itself at its TTL whatever
//! happens to its coordinator, so no volume stays fenced longer than the TTL. Each running owner
//! samples its gates every few ms from inside its host (a gate reads the host's clock).

use std::collections::BTreeMap;
use std::time::Duration;

use umbra_raft::NodeId;
use uuid::Uuid;

/// Observation slack: a fence may be seen up to one sample late, and a new fence raised this
/// soon after the previous one ended may be seen as one.
const SLACK: Duration = Duration::from_millis(45);

#[derive(Default)]
pub struct FenceTtl {
    since: BTreeMap<(NodeId, Uuid), Duration>,
    pub violations: Vec<String>,
}

impl FenceTtl {
    pub fn observe(&mut self, node: NodeId, volume: Uuid, fenced: bool, now: Duration, ttl: Duration) {
        let key = (node, volume);
        if !fenced {
            self.since.remove(&key);
            return;
        }
        let since = *self.since.entry(key).or_insert(now);
        if now - since > ttl + SLACK && self.violations.len() < 3 {
            self.violations.push(format!("no fence past its TTL: volume {volume} on n{node} fenced for {} ms (TTL {} ms)", (now - since).as_millis(), ttl.as_millis()));
            self.since.remove(&key);
        }
    }

    /// A node went down: its gates went with it.
    pub fn node_down(&mut self, node: NodeId) {
        self.since.retain(|(n, _), _| *n != node);
    }
}
