//! One simulated node: the production Raft (openraft with Umbra's state machine), the
//! production Raft and Admin gRPC services and `Meta` (forwarding, linearizable reads), over the
//! in-memory crash-modelling store. Only the storage and the network differ from `umbra node`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use umbra_node::admin::AdminService;
use umbra_node::meta::Meta;
use umbra_proto::v1::admin_server::AdminServer;
use umbra_proto::v1::raft_server::RaftServer;
use umbra_raft::network::{Network, MAX_RAFT_MESSAGE_BYTES};
use umbra_raft::service::RaftService;
use umbra_raft::store::mem::{MemDisk, MemStores};
use umbra_raft::{NodeId, NodeInfo, Raft};

/// The gRPC port every simulated node listens on.
pub const PORT: u16 = 7100;
/// How long a client call through `Meta` may wait for a leader.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

pub type Disk = Arc<Mutex<MemDisk>>;
/// Each running node's Raft handle and state reader, for the invariant checkers' observations.
pub type Registry = Arc<Mutex<BTreeMap<NodeId, (Raft, umbra_raft::store::MetaReader)>>>;

pub fn host_name(id: NodeId) -> String {
    format!("n{id}")
}

pub fn members(n: u64) -> BTreeMap<NodeId, NodeInfo> {
    (1..=n).map(|id| (id, NodeInfo { grpc_addr: format!("{}:{PORT}", host_name(id)), smb_addr: String::new() })).collect()
}

/// openraft settings: as `umbra node`'s, except that each node's election timeout is fixed
/// (distinct per node): openraft draws it from an unseeded RNG otherwise, and a run must be fixed
/// by its seed.
fn config(id: NodeId) -> openraft::Config {
    let min = 400 + 97 * id;
    openraft::Config {
        heartbeat_interval: 100,
        election_timeout_min: min,
        election_timeout_max: min + 1,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(64),
        max_in_snapshot_log_to_keep: 16,
        ..Default::default()
    }
}

/// Runs node `id` until the host crashes; `bootstrap` initialises the cluster of `n` nodes on
/// first start.
pub async fn run(id: NodeId, n: u64, disk: Disk, registry: Registry, bootstrap: bool, stale_reads: bool) -> turmoil::Result {
    let (log, sm) = MemStores::open(&disk);
    let reader = sm.reader();
    let raft = Raft::new(id, Arc::new(config(id).validate()?), Network, log, sm).await?;
    registry.lock().expect("registry").insert(id, (raft.clone(), reader.clone()));
    if bootstrap && !raft.is_initialized().await? {
        raft.initialize(members(n)).await?;
    }
    let meta = Arc::new(Meta::new(id, raft.clone(), reader, None, REQUEST_TIMEOUT));
    if stale_reads {
        meta.break_reads_for_tests();
    }
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    tonic::transport::Server::builder()
        .add_service(RaftServer::new(RaftService::new(raft.clone())).max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES))
        .add_service(AdminServer::new(AdminService::new(meta)))
        .serve_with_incoming(crate::net::incoming(listener))
        .await?;
    Ok(())
}
