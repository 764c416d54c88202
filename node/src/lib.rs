//! The Umbra node daemon.
//!
//! Data flow: [`config`] gives a [`config::NodeConfig`]; [`daemon::run`] opens the Raft store
//! (crate umbra-raft), starts openraft and one gRPC server ([`grpc_server`]: a thread for each
//! connection) carrying the Raft service (peer traffic) and the [`admin`] service (`umbra ctl`
//! and peer nodes). The admin service is a thin
//! codec over [`meta::Meta`], which proposes writes on the leader (gathered into entries by
//! [`batcher`]) or forwards them there,
//! answers linearizable reads through a read index, and changes membership. [`errors`] holds
//! the one table from node errors to gRPC codes. The node's volumes live in [`volume`] (a
//! RocksDB of their own), served to other nodes by [`volume_service`], whose bulk calls (file
//! data) go on the wire through [`volume_wire`] without being copied (a Read sends whole
//! chunks from the volume store's mapped data log); [`volumes_task`] keeps
//! them in step with Raft and runs reclaim. Share modes: the owner of a volume keeps the table of
//! its opens ([`opens`], inside the volume service); this node's gateway registers, releases and
//! renews its opens there ([`gateway_opens`]), a CLOSE's release to another node following its
//! answer on the next call there ([`deferred_releases`]). The gateway's threads call other nodes on
//! runtimes and connections of their own ([`dedicated`], [`direct_channel`]), and store calls
//! run inline on such threads and on the gRPC server's: a small call to another node wakes
//! one thread on each side, and the quick ones go as [`short_calls`] (one frame each way on a
//! plain connection, not HTTP/2).

pub mod admin;
pub mod batcher;
pub mod config;
pub mod daemon;
pub mod deferred_releases;
pub mod dedicated;
pub mod direct_channel;
pub mod errors;
pub mod fsrvp;
pub mod gateway_opens;
pub mod grpc_server;
pub mod meta;
pub mod notify_relay;
pub mod opens;
pub mod short_calls;
pub mod smb;
pub mod volume;
pub mod volume_service;
pub mod volume_wire;
pub mod volumes_task;

/// Now as FILETIME (100 ns ticks since 1601-01-01), as SMB and the store use it, by the
/// process's clock (`umbra_raft::clock`, ms resolution: virtual under simulation).
pub fn filetime_now() -> u64 {
    umbra_smb_gateway::wire::filetime_of_ms(umbra_raft::clock::now_ms())
}
