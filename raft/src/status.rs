//! A node's own view of the cluster, as `umbra ctl status` shows it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, NodeInfo, Raft};

/// One member of the cluster as the membership config records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub grpc_addr: String,
    pub smb_addr: String,
    /// `voter` or `learner`.
    pub role: String,
}

/// The membership: voters and learners with their addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub members: Vec<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Last log index covered by this node's newest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last log index removed by compaction.
    pub purged_index: Option<u64>,
    /// Leader only: ms since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    pub members: Vec<Member>,
}

impl Members {
    pub fn from_membership(m: &openraft::Membership<NodeId, NodeInfo>) -> Self {
        let voters: std::collections::BTreeSet<NodeId> = m.voter_ids().collect();
        let members = m
            .nodes()
            .map(|(id, info)| Member {
                id: *id,
                grpc_addr: info.grpc_addr.clone(),
                smb_addr: info.smb_addr.clone(),
                role: if voters.contains(id) { "voter" } else { "learner" }.into(),
            })
            .collect();
        Members { members }
    }

    pub fn addresses(&self) -> BTreeMap<NodeId, String> {
        self.members.iter().map(|m| (m.id, m.grpc_addr.clone())).collect()
    }
}

/// This node's status from openraft's metrics, plus the committed index the log store saw.
pub fn node_status(raft: &Raft, committed_index: Option<u64>) -> NodeStatus {
    let m = raft.metrics().borrow().clone();
    let state = match m.state {
        openraft::ServerState::Leader => "leader",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Learner => "learner",
        openraft::ServerState::Shutdown => "shutdown",
    };
    NodeStatus {
        id: m.id,
        state: state.into(),
        term: m.current_term,
        leader: m.current_leader,
        last_log_index: m.last_log_index,
        committed_index,
        applied_index: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        millis_since_quorum_ack: m.millis_since_quorum_ack,
        members: Members::from_membership(m.membership_config.membership()).members,
    }
}
