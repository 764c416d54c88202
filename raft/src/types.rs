//! openraft type configuration: who a node is and what travels through the log.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{Proposal, Responses};

/// A node's id in the cluster: chosen by the operator, never reused.
pub type NodeId = u64;

/// What the cluster knows about a node; kept in Raft's membership config, so every node
/// learns every address through the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `host:port` of the node's gRPC server (Raft, Admin, and later the volume service).
    pub grpc_addr: String,
    /// `host:port` of the node's SMB gateway.
    pub smb_addr: String,
}

openraft::declare_raft_types!(
    /// Umbra's Raft types: metadata commands in, state machine answers out.
    pub TypeConfig:
        D = Proposal,
        R = Responses,
        Node = NodeInfo,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
