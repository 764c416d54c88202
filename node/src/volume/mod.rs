//! Volumes: file trees stored in the node's volume RocksDB (never the Raft one), with O(1)
//! snapshots, writable clones and crash-safe reclaim.
//!
//! Data flow: a caller (the volume gRPC service, the SMB gateway) names a volume, a [`View`]
//! (live, a snapshot, or a clone) and an inode; [`VolumeStore`] turns each mutation into one
//! write batch of epoch-versioned keys ([`keys`]) on a [`kv::Kv`] engine (RocksDB, or the
//! simulation's in-memory one); superseded versions a snapshot still reads go to deadlists,
//! which [`reclaim`] walks when a snapshot is deleted.

mod data;
mod durability;
mod error;
pub mod gate;
pub mod keys;
pub mod kv;
mod namespace;
pub mod reclaim;
mod snapshots;
mod store;
mod types;

pub use error::{Result, VolumeError};
pub use gate::Released;
pub use store::VolumeStore;
pub use data::{SharedPiece, Span, WRITE_AT_END};
pub use namespace::{NothingOpen, OpenFiles, MAX_TREE_DEPTH};
pub use types::*;

#[cfg(test)]
mod model_tests;
