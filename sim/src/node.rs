//! One simulated node: the production Raft (openraft with Umbra's state machine), the
//! production Raft, Admin and Volume gRPC services, `Meta` (forwarding, linearizable reads), the
//! volume store with its upkeep, and the shadow-copy-set coordinator with its reconcile loop.
//! Only the storage, the network, the clock and the id source differ from `umbra node`: the Raft
//! store and the volume store's engine are the in-memory crash-modelling ones (each node's
//! disks outlive its process), store calls run inline on the runtime.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use umbra_node::admin::AdminService;
use umbra_node::fsrvp::{BrokenCommit, Coordinator, Ids, Settings};
use umbra_node::meta::Meta;
use umbra_node::volume::kv::MemKv;
use umbra_node::volume::VolumeStore;
use umbra_node::volume_service::{StoreCalls, VolumeService};
use umbra_proto::v1::admin_server::AdminServer;
use umbra_proto::v1::raft_server::RaftServer;
use umbra_raft::network::{Network, MAX_RAFT_MESSAGE_BYTES};
use umbra_raft::service::RaftService;
use umbra_raft::store::mem::{MemDisk, MemStores};
use umbra_raft::{NodeId, NodeInfo, Raft};
use uuid::Uuid;

use crate::backup::Board;
use crate::invariants::fence_ttl::FenceTtl;

/// The gRPC port every simulated node listens on.
pub const PORT: u16 = 7100;
/// How long a client call through `Meta` may wait for a leader.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The fences' TTL in the simulation (production: 5 s), so expiry happens within a run.
pub const FENCE_TTL: Duration = Duration::from_secs(1);
/// How often each node samples its gates for the fence-TTL checker.
pub const FENCE_WATCH: Duration = Duration::from_millis(20);

pub type Disk = Arc<Mutex<MemDisk>>;
/// Each running node's Raft handle and state reader, for the invariant checkers' observations.
pub type Registry = Arc<Mutex<BTreeMap<NodeId, (Raft, umbra_raft::store::MetaReader)>>>;
/// Each running node's volume store (weak: a crash drops the store).
pub type Stores = Arc<Mutex<BTreeMap<NodeId, Weak<VolumeStore>>>>;

/// What a node host needs, cloned into every (re)start.
#[derive(Clone)]
pub struct NodeEnv {
    pub id: NodeId,
    pub nodes: u64,
    pub seed: u64,
    pub disk: Disk,
    /// The volume store's disk.
    pub volume_disk: MemKv,
    pub registry: Registry,
    pub stores: Stores,
    pub board: Board,
    /// The fence-TTL checker, fed from inside the host (a gate reads the host's clock).
    pub fences: Arc<Mutex<FenceTtl>>,
    pub stale_reads: bool,
    /// Whether the node runs its volumes, coordinator and backup client (off: metadata only).
    pub volumes: bool,
    pub broken_commit: Option<BrokenCommit>,
    /// The volume store's reclaim frees what snapshots still read (a broken variant).
    pub broken_reclaim: bool,
    /// Starts of this node so far (each start draws its ids from a different stream).
    pub boots: Arc<Mutex<u64>>,
}

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

/// Coordinator ids from a generator seeded by the run's seed, the node and its start count.
fn seeded_ids(env: &NodeEnv) -> Ids {
    let boot = {
        let mut b = env.boots.lock().expect("boots");
        *b += 1;
        *b
    };
    let rng = Mutex::new(SmallRng::seed_from_u64(env.seed ^ (env.id << 48) ^ (boot << 32) ^ 0x1d5));
    Ids::from_fn(move || Uuid::from_u128(rng.lock().expect("id rng").random()))
}

/// Runs node `env.id` until the host crashes; node 1 initialises the cluster on first start.
pub async fn run(env: NodeEnv) -> turmoil::Result {
    let id = env.id;
    let (log, sm) = MemStores::open(&env.disk);
    let reader = sm.reader();
    let raft = Raft::new(id, Arc::new(config(id).validate()?), Network, log, sm).await?;
    env.registry.lock().expect("registry").insert(id, (raft.clone(), reader.clone()));
    if id == 1 && !raft.is_initialized().await? {
        raft.initialize(members(env.nodes)).await?;
    }
    let meta = Arc::new(Meta::new(id, raft.clone(), reader.clone(), None, REQUEST_TIMEOUT));
    if env.stale_reads {
        meta.break_reads_for_tests();
    }
    if !env.volumes {
        return serve(vec![], raft, meta, None).await;
    }
    let volumes = Arc::new(VolumeStore::open_on(Arc::new(env.volume_disk.clone()))?);
    if env.broken_reclaim {
        volumes.break_reclaim_for_tests();
    }
    env.stores.lock().expect("stores").insert(id, Arc::downgrade(&volumes));
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    // One reclaim step per volume per round: a time slice would make the steps a round takes
    // depend on the host's speed, and a seed would no longer replay the same.
    tokio::spawn(umbra_node::volumes_task::run(id, volumes.clone(), reader.clone(), umbra_node::config::VolumeTuning { reclaim_step_entries: 256, reclaim_slice_ms: 0, ..Default::default() }, StoreCalls::Inline, stopped.clone()));
    let service = Arc::new(VolumeService::new(id, volumes.clone(), raft.clone(), reader.clone()).with_calls(StoreCalls::Inline));
    let mut settings = Settings::new("UMBRA");
    settings.fence_ttl = FENCE_TTL;
    settings.pause = None; // a test hook read from the environment: a seed must not depend on it
    settings.ids = seeded_ids(&env);
    settings.broken = env.broken_commit;
    settings.phases = Some(env.board.phase_hook(id));
    let coordinator = Arc::new(Coordinator::new(id, meta.clone(), reader.clone(), service.clone(), settings));
    tokio::spawn(umbra_node::fsrvp::reconcile::run(coordinator.clone(), volumes.clone(), stopped));
    tokio::spawn(crate::backup::run(id, coordinator, env.board.clone()));
    tokio::spawn(watch_fences(id, Arc::downgrade(&volumes), env.fences.clone()));
    serve(vec![volumes], raft, meta, Some(service)).await
}

/// Observes this node's gates for the fence-TTL checker (inside the host: the gates run on the
/// host's clock, which the driver's thread cannot read).
async fn watch_fences(id: NodeId, store: Weak<VolumeStore>, fences: Arc<Mutex<FenceTtl>>) {
    loop {
        tokio::time::sleep(FENCE_WATCH).await;
        let Some(store) = store.upgrade() else { return };
        let now = turmoil::elapsed();
        for vol in store.volumes() {
            let fenced = store.fenced(vol).unwrap_or(false);
            fences.lock().expect("fence checker").observe(id, vol, fenced, now, FENCE_TTL);
        }
    }
}

/// Stamps a response with the virtual time's `date` header. hyper's server adds the real time
/// otherwise (per second, cached per thread), and the header's size then varies with the wall
/// clock, and with it the bytes on the simulated wire: a run would no longer be fixed by its seed.
fn virtual_date<B>(mut response: tonic::codegen::http::Response<B>) -> tonic::codegen::http::Response<B> {
    let secs = turmoil::since_epoch().unwrap_or_default().as_secs();
    let value = tonic::codegen::http::HeaderValue::from_str(&format!("{secs}")).expect("digits are a header value");
    response.headers_mut().insert(tonic::codegen::http::header::DATE, value);
    response
}

/// Serves the node's gRPC services until the host crashes (`_keep`: held for as long).
async fn serve(_keep: Vec<Arc<VolumeStore>>, raft: Raft, meta: Arc<Meta>, volume: Option<Arc<VolumeService>>) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let volume = volume.map(umbra_node::volume_wire::VolumeWire::new);
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(virtual_date))
        .add_service(RaftServer::new(RaftService::new(raft)).max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES))
        .add_service(AdminServer::new(AdminService::new(meta)))
        .add_optional_service(volume)
        .serve_with_incoming(crate::net::incoming(listener))
        .await?;
    Ok(())
}
