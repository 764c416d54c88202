//! Umbra's gRPC services, generated from `proto/umbra.proto` by tonic and prost.
//!
//! Data flow: `umbra ctl` and peer nodes call `Admin`; the Raft leader calls `Raft` on
//! followers. Messages carry JSON payloads of `umbra-raft` types (see the .proto file).
//! The volume service's bulk calls (file data) are framed by [`frames`], which sends and
//! receives the data without copying it; the reader of file data checks it with [`checks`].

pub mod checks;
pub mod frames;

/// Generated messages, clients (`*_client`) and servers (`*_server`) of package `umbra.v1`.
pub mod v1 {
    tonic::include_proto!("umbra.v1");
}

/// A minimal client of etcd's v3 API, used only to measure etcd as a peer in benchmarks.
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}
