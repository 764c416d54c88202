//! Umbra's cluster metadata: one openraft group whose state machine holds the nodes, volumes,
//! shares and users every node must agree on.
//!
//! Data flow: a node proposes a [`command::Request`] (ids and request id made by the proposer,
//! a time stamp added by the leader) with `Raft::client_write`; openraft appends it to the
//! [`store::LogStore`] (synced RocksDB writes) and replicates it through [`network`] to the
//! peers' [`service::RaftService`]; once committed, every node's [`store::StateMachineStore`]
//! runs the pure [`state::MetaState::apply`] and persists what changed with the applied index in
//! one batch. Reads go to the in-memory copy behind [`store::MetaReader`] after a read-index
//! check (see the node crate). Snapshots are the whole state as JSON. Every gRPC connection
//! between nodes (and from `umbra ctl`) starts with [`peer_auth`]'s cluster-key handshake.

pub mod clock;
pub mod command;
pub mod fsrvp;
pub mod names;
pub mod network;
pub mod peer_auth;
pub mod query;
pub mod service;
pub mod state;
pub mod status;
pub mod store;
pub mod types;

pub use types::{NodeId, NodeInfo, Raft, TypeConfig};
