//! The volume gRPC service: file, snapshot and fence operations for gateways on any node.
//!
//! A node serves only the volumes Raft says it owns. With `route` set in the target, a node
//! that is not the owner forwards the call to the owner (in-process when it is the owner):
//! this is the data path of design.md section 4. Store calls run inline on a dedicated thread
//! (a gRPC connection's, a gateway caller's: [`crate::dedicated`]) and on the blocking pool
//! elsewhere; forwarded calls from a caller thread take that thread's own connection. Reads
//! stream in 1 MiB messages, each with the CRC32C of its spans, which whoever uses the data
//! checks ([`checked_data`]): the owner hands its stored chunks on without reading them. Each
//! write message is one whole store write, so a fence never sees half of one. Errors follow the
//! one table in [`status_of`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio_stream::{Stream, StreamExt};
use bytes::Bytes;
use crate::direct_channel::{DirectChannel, PeerChannel};
use tonic::{Request, Response, Status, Streaming};
use umbra_proto::v1::volume_client::VolumeClient;
use umbra_proto::v1::volume_server::Volume as VolumeRpc;
use umbra_proto::v1::*;
use umbra_raft::store::MetaReader;
use umbra_raft::{NodeId, Raft};
use uuid::Uuid;

use crate::deferred_releases::{Batch, DeferredReleases, CARRIED_KEPT, MAX_NO_DEFER_FILES, MAX_RELEASES_PER_CALL, SEND_WAIT};
use crate::opens::{DueDelete, FileKey, Gateway, Link, LockError, OpenError, OpenRecord, OpenTable, Renewed};
use umbra_smb_gateway::byte_locks::ByteLock;
use umbra_smb_gateway::share_modes::Mode;
use crate::volume::{DirEntry, Inode, Kind, SecurityUpdate, SetInfo, SharedPiece, SnapshotInfo, SnapshotState, View, VolumeError, VolumeStore, MAX_IO_BYTES};

/// Bytes per streamed read message.
pub const READ_MESSAGE_BYTES: u64 = 1024 * 1024;
/// Largest message the volume service accepts (a whole write of MAX_IO_BYTES plus framing).
pub const MAX_VOLUME_MESSAGE_BYTES: usize = MAX_IO_BYTES as usize + 64 * 1024;
/// Read messages buffered ahead of a slow client.
const READ_AHEAD_MESSAGES: usize = 4;

/// The gRPC mapping table: each store error gets a code and an `umbra-error` kind a gateway
/// maps to NTSTATUS (not_found: OBJECT_NAME_NOT_FOUND, exists: OBJECT_NAME_COLLISION,
/// not_empty: DIRECTORY_NOT_EMPTY, read_only: MEDIA_WRITE_PROTECTED, disk_full: DISK_FULL,
/// wrong_owner: retry at `umbra-owner`, ...).
pub fn status_of(e: VolumeError) -> Status {
    use tonic::Code;
    let (code, kind) = match &e {
        VolumeError::NoSuchVolume(_) | VolumeError::NotFound(_) | VolumeError::NoSuchSnapshot(_) | VolumeError::NoSuchClone(_) => (Code::NotFound, "not_found"),
        VolumeError::Exists(_) | VolumeError::VolumeExists(_) => (Code::AlreadyExists, "exists"),
        VolumeError::NotEmpty => (Code::FailedPrecondition, "not_empty"),
        VolumeError::NotADirectory => (Code::FailedPrecondition, "not_a_directory"),
        VolumeError::IsADirectory => (Code::FailedPrecondition, "is_a_directory"),
        VolumeError::ReadOnly(_) => (Code::PermissionDenied, "read_only"),
        VolumeError::AccessDenied(_) => (Code::PermissionDenied, "access_denied"),
        VolumeError::OpenInTheWay(_) => (Code::PermissionDenied, "open_in_the_way"),
        VolumeError::InvalidName(_) => (Code::InvalidArgument, "invalid_name"),
        VolumeError::TooLarge { .. } => (Code::OutOfRange, "too_large"),
        VolumeError::Invalid(_) => (Code::InvalidArgument, "invalid"),
        VolumeError::InvalidSecurity(_) => (Code::InvalidArgument, "invalid_security"),
        VolumeError::TooManySnapshots { .. } => (Code::ResourceExhausted, "too_many_snapshots"),
        VolumeError::DiskFull(_) => (Code::ResourceExhausted, "disk_full"),
        VolumeError::Busy(_) | VolumeError::AtFence => (Code::Unavailable, "busy"),
        VolumeError::StaleToken { .. } => (Code::FailedPrecondition, "stale_token"),
        VolumeError::WrongOwner { .. } => (Code::FailedPrecondition, "wrong_owner"),
        VolumeError::Storage(_) => (Code::Internal, "storage"),
    };
    let mut status = Status::new(code, e.to_string());
    status.metadata_mut().insert("umbra-error", kind.parse().expect("ascii kind"));
    if let VolumeError::WrongOwner { owner, .. } = e {
        status.metadata_mut().insert("umbra-owner", owner.to_string().parse().expect("digits"));
    }
    status
}

impl From<crate::volume::Span> for Check {
    fn from(s: crate::volume::Span) -> Check {
        Check { len: s.len, crc32c: s.crc32c }
    }
}

/// A Read message's data, once its checksums pass (`umbra_proto::checks`). Data that fails is
/// an error of the store's kind, as a chunk that fails its checksum on the owner is.
pub fn checked_data(c: DataChunk) -> Result<Bytes, Status> {
    c.checked().map_err(refused_data)
}

/// The status of file data from a volume's owner that fails its checks.
pub fn refused_data(e: umbra_proto::checks::CheckError) -> Status {
    tracing::warn!(error = %e, "file data read from a volume's owner is refused");
    status_of(VolumeError::Storage(e.to_string()))
}

pub struct VolumeService {
    node: NodeId,
    store: Arc<VolumeStore>,
    raft: Raft,
    meta: MetaReader,
    peers: Mutex<HashMap<String, Peer>>,
    /// Opens of the volumes this node owns, from every gateway (share modes); in memory only.
    opens: Arc<Mutex<OpenTable>>,
    /// The clock leases are judged by (this node's, monotonic).
    started: tokio::time::Instant,
    /// Volumes this node held when it started: gateways may hold opens on them from before a
    /// restart, which their next renewal reinstates (see [`OWNER_GRACE_MS`]).
    held_at_start: std::collections::HashSet<Uuid>,
    /// [`OWNER_GRACE_MS`], or as configured (`volumes.owner_grace_ms`).
    grace_ms: u64,
    calls: StoreCalls,
    /// This node's SMB change notifier (relayed changes from other nodes go to it).
    notifier: Option<umbra_smb_gateway::driver::Notifier>,
    /// The SMB gateway's failed-logon throttle, which other nodes' failures count in.
    throttle: Option<Arc<Mutex<umbra_smb_gateway::server::throttle::Throttle>>>,
    /// This node's gateway's releases to other owners not sent yet ([`crate::deferred_releases`]).
    deferred: Arc<DeferredReleases>,
    /// This node's gateway's opens (an owner's `OpenFlush` marks some of them).
    gateway_opens: std::sync::OnceLock<Arc<crate::gateway_opens::GatewayOpens>>,
    /// Batches of other gateways' releases this owner carried out lately.
    carried: crate::deferred_releases::Carried,
}

/// How long an owner waits for another node's gateway to send its deferred releases
/// ([`VolumeService::settle`]) before a refusal stands.
pub const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Gateways an open asks for their deferred releases, one after another, before its sharing
/// violation stands (one per conflicting open found).
pub const MAX_SETTLES_PER_OPEN: usize = 4;

/// The longest lease a gateway may ask for.
pub const MAX_LEASE_MS: u64 = 60_000;

/// After an owner starts, new opens and byte-range locks on the volumes it already held wait
/// this long from its start: every live gateway renews within
/// [`RENEW_INTERVAL_MS`](crate::opens::RENEW_INTERVAL_MS), reinstating the opens it holds with
/// their locks, so a new open or lock is checked against them rather than granted in the gap
/// (as NFS servers hold a grace period after a restart). READs and WRITEs do not wait: in the
/// gap they are checked against the locks reinstated so far.
pub const OWNER_GRACE_MS: u64 = crate::opens::RENEW_INTERVAL_MS + 2_000;

/// Share-mode errors to gRPC: `sharing_violation` (STATUS_SHARING_VIOLATION), `too_many_opens`
/// (STATUS_INSUFFICIENT_RESOURCES), `stale_incarnation` (a gateway replaced by its restart).
fn open_status(e: OpenError) -> Status {
    let (code, kind) = match &e {
        OpenError::SharingViolation { .. } => (tonic::Code::FailedPrecondition, "sharing_violation"),
        OpenError::TooManyOnVolume { .. } | OpenError::TooManyForGateway { .. } | OpenError::TooManyGateways { .. } => (tonic::Code::ResourceExhausted, "too_many_opens"),
        OpenError::StaleIncarnation { .. } => (tonic::Code::FailedPrecondition, "stale_incarnation"),
        OpenError::DeletePending => (tonic::Code::FailedPrecondition, "delete_pending"),
    };
    let mut status = Status::new(code, e.to_string());
    status.metadata_mut().insert("umbra-error", kind.parse().expect("ascii kind"));
    status
}

/// Byte-range lock errors, by kind: what the gateway maps back to NTSTATUS.
fn lock_status(e: LockError) -> Status {
    let (code, kind) = match &e {
        LockError::NotGranted { .. } => (tonic::Code::FailedPrecondition, "lock_not_granted"),
        LockError::RangeNotLocked => (tonic::Code::FailedPrecondition, "range_not_locked"),
        LockError::InvalidRange => (tonic::Code::InvalidArgument, "invalid_lock_range"),
        LockError::UnknownOpen => (tonic::Code::NotFound, "unknown_open"),
        LockError::TooMany { .. } => (tonic::Code::ResourceExhausted, "too_many_locks"),
    };
    let mut status = Status::new(code, e.to_string());
    status.metadata_mut().insert("umbra-error", kind.parse().expect("ascii kind"));
    status
}

/// A READ or WRITE that a byte-range lock of another open (or, for a write, a shared lock of
/// its own) is in the way of.
fn lock_conflict() -> Status {
    let mut status = Status::new(tonic::Code::FailedPrecondition, "a byte-range lock is in the way of this read or write");
    status.metadata_mut().insert("umbra-error", "file_lock_conflict".parse().expect("ascii kind"));
    status
}

fn lock_of(l: &LockRange) -> ByteLock {
    ByteLock { offset: l.offset, length: l.length, exclusive: l.exclusive }
}

fn gateway_of(g: Option<&GatewayIncarnation>) -> Result<Gateway, Status> {
    let g = g.ok_or_else(|| Status::invalid_argument("the request names no gateway"))?;
    Ok(Gateway { node: g.node, incarnation: g.incarnation })
}

/// A listed open of a renewal as the table's record.
fn held_record(volume: Uuid, h: &HeldOpen) -> Result<OpenRecord, Status> {
    let t = VolumeTarget { volume: volume.to_string(), snapshot: h.snapshot.clone(), clone: h.clone.clone(), route: false };
    let (_, view, _) = target_of(Some(&t))?;
    // A link no file can have is left out rather than refusing the whole renewal (which
    // would cost the gateway every open it holds on the volume).
    let lenient = |d: Option<&DeleteAtClose>, what: &str| {
        link_of(d).unwrap_or_else(|e| {
            tracing::warn!(%volume, ino = h.ino, error = %e.message(), "a renewal lists an open whose {what} link is not a file name: kept without it");
            None
        })
    };
    let (delete_at_close, disposed) = (lenient(h.delete_at_close.as_ref(), "delete-on-close"), lenient(h.disposed.as_ref(), "disposition's"));
    let locks = h.locks.iter().map(lock_of).collect();
    Ok(OpenRecord { file: FileKey { volume, view, ino: h.ino }, id: h.id, mode: Mode { access: h.access, share: h.share_access }, delete_at_close, disposed, locks, locks_exact: h.locks_exact, lock_calls: h.lock_calls })
}

/// A resolve's answer with the parent: the entry when found, and its parent.
fn found_reply((found, parent): (Option<DirEntry>, DirEntry)) -> EntryReply {
    EntryReply { entry: found.map(entry), parent: Some(entry(parent)), created: false }
}

/// Creates `name` in `parent`: its ino and the reply that describes it.
fn create_entry(s: &VolumeStore, vol: Uuid, view: View, parent: u64, name: &str, directory: bool, now: u64) -> Result<(u64, EntryReply), VolumeError> {
    let kind = if directory { Kind::Dir } else { Kind::File };
    let ino = s.create_inheriting(vol, view, parent, name, kind, now, umbra_smb_gateway::security::inherited)?;
    let inode = s.stat(vol, view, ino)?;
    Ok((ino, EntryReply { entry: Some(entry(DirEntry { name: name.to_string(), ino, inode })), ..Default::default() }))
}

/// A delete-on-close link as the table keeps it; its name must be one a file can have (the
/// table holds it for as long as the open lasts).
fn link_of(d: Option<&DeleteAtClose>) -> Result<Option<Link>, Status> {
    d.map(|d| {
        umbra_raft::names::check_file_name(&d.name).map_err(|e| Status::invalid_argument(format!("delete-on-close: {e}")))?;
        Ok(Link { parent: d.parent, name: d.name.clone() })
    })
    .transpose()
}

/// Where the service runs the store's (synchronous) calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreCalls {
    /// On tokio's blocking pool (production: a call may wait for the disk or at a fence),
    /// except on a dedicated thread ([`crate::dedicated`]), where all but slow calls run
    /// inline (see [`Call`]).
    Blocking,
    /// Inline on the runtime (the simulation: one thread, virtual time, no blocking pool). A
    /// mutation first waits out any fence asynchronously, so it never blocks at the gate.
    Inline,
}

/// Where a call on a volume goes.
enum Owner {
    Here,
    Peer(Peer),
}

/// Another node's volume service: its generated client for the unary calls, and the channel
/// the bulk calls take (see [`crate::volume_wire`]).
#[derive(Clone)]
struct Peer {
    client: VolumeClient<PeerChannel>,
    channel: PeerChannel,
}

impl std::ops::Deref for Peer {
    type Target = VolumeClient<PeerChannel>;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

impl std::ops::DerefMut for Peer {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.client
    }
}

thread_local! {
    /// A caller thread's own clients of other nodes, by address: their connections run on the
    /// thread's runtime ([`crate::dedicated::block_on`]).
    static THREAD_PEERS: std::cell::RefCell<HashMap<String, Peer>> = std::cell::RefCell::new(HashMap::new());
}

/// The client of the volume service at `addr` in `peers`, made with `connect` (which connects
/// lazily) if absent.
fn cached_peer(peers: &mut HashMap<String, Peer>, addr: String, connect: impl FnOnce(&str) -> Result<PeerChannel, tonic::transport::Error>) -> Result<Peer, Status> {
    if let Some(c) = peers.get(&addr) {
        return Ok(c.clone());
    }
    let ch = connect(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
    let client = VolumeClient::new(ch.clone()).max_decoding_message_size(MAX_VOLUME_MESSAGE_BYTES).max_encoding_message_size(MAX_VOLUME_MESSAGE_BYTES);
    let peer = Peer { client, channel: ch };
    peers.insert(addr, peer.clone());
    Ok(peer)
}

/// A snapshot or clone id from a request.
fn id_of(s: &str, what: &str) -> Result<Uuid, VolumeError> {
    Uuid::parse_str(s).map_err(|_| VolumeError::Invalid(format!("{what} id {s:?} is not a uuid")))
}

fn parse_uuid(s: &str, what: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(s).map_err(|_| Status::invalid_argument(format!("{what} {s:?} is not a uuid")))
}

fn target_of(t: Option<&VolumeTarget>) -> Result<(Uuid, View, bool), Status> {
    let t = t.ok_or_else(|| Status::invalid_argument("the request names no volume"))?;
    let vol = parse_uuid(&t.volume, "volume")?;
    let view = match (t.snapshot.is_empty(), t.clone.is_empty()) {
        (true, true) => View::Live,
        (false, true) => View::Snapshot(parse_uuid(&t.snapshot, "snapshot")?),
        (true, false) => View::Clone(parse_uuid(&t.clone, "clone")?),
        (false, false) => return Err(Status::invalid_argument("a target names a snapshot or a clone, not both")),
    };
    Ok((vol, view, t.route))
}

/// `keep_times` bits of WriteChunk, SetSizeRequest and ZeroRangeRequest: the times a change
/// leaves as they are, because the client of the open it comes through set or froze them.
pub const KEEP_WRITTEN: u32 = 1;
pub const KEEP_CHANGED: u32 = 2;

/// The store's stamp for a change at `now` that keeps the times `keep_times` names.
pub fn stamp(now: u64, keep_times: u32) -> crate::volume::Stamp {
    crate::volume::Stamp { now, keep_written: keep_times & KEEP_WRITTEN != 0, keep_changed: keep_times & KEEP_CHANGED != 0 }
}

/// The `keep_times` bits of what a gateway's open keeps.
pub fn keep_bits(keep: umbra_smb_gateway::server::files::Keep) -> u32 {
    (u32::from(keep.written) * KEEP_WRITTEN) | (u32::from(keep.changed) * KEEP_CHANGED)
}

fn attributes(ino: u64, i: &Inode) -> Attributes {
    Attributes {
        ino,
        directory: i.kind == Kind::Dir,
        size: i.size,
        allocated: i.allocation(),
        created: i.created,
        written: i.written,
        changed: i.changed,
        attributes: i.attributes,
        delete_pending: false,
        security: Vec::new(),
    }
}

fn entry(e: DirEntry) -> Entry {
    Entry { attributes: Some(attributes(e.ino, &e.inode)), name: e.name }
}

fn snapshot(s: SnapshotInfo) -> Snapshot {
    let state = match s.state {
        SnapshotState::Tentative => "tentative",
        SnapshotState::Committed => "committed",
        SnapshotState::Deleting => "deleting",
    };
    Snapshot { id: s.id.to_string(), epoch: s.epoch, state: state.into(), created: s.created }
}

/// Clears `route` so the owner serves the forwarded call itself.
fn unrouted(t: &mut Option<VolumeTarget>) {
    if let Some(t) = t.as_mut() {
        t.route = false;
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<DataChunk, Status>> + Send>>;

impl VolumeService {
    pub fn new(node: NodeId, store: Arc<VolumeStore>, raft: Raft, meta: MetaReader) -> Self {
        let held_at_start = store.volumes().into_iter().collect();
        VolumeService { node, store, raft, meta, peers: Mutex::new(HashMap::new()), opens: Arc::new(Mutex::new(OpenTable::default())), started: tokio::time::Instant::now(), held_at_start, grace_ms: OWNER_GRACE_MS, calls: StoreCalls::Blocking, notifier: None, throttle: None, deferred: Arc::default(), gateway_opens: std::sync::OnceLock::new(), carried: Default::default() }
    }

    /// The same service running store calls as `calls` says.
    pub fn with_calls(mut self, calls: StoreCalls) -> Self {
        self.calls = calls;
        self
    }

    /// Who serves `vol`: this node if Raft says it owns it; its owner if `route`; else an error.
    fn owner(&self, vol: Uuid, route: bool) -> Result<Owner, Status> {
        let owner = self.meta.read().state.volumes.get(&vol).map(|v| v.owner).ok_or_else(|| status_of(VolumeError::NoSuchVolume(vol)))?;
        if owner == self.node {
            return Ok(Owner::Here);
        }
        if !route {
            return Err(status_of(VolumeError::WrongOwner { volume: vol, owner }));
        }
        self.peer_of(owner).map(Owner::Peer).map_err(|e| Status::unavailable(format!("volume {vol}'s owner: {}", e.message())))
    }

    /// A client of node `node`'s volume service (cached per address).
    pub fn peer(&self, node: NodeId) -> Result<VolumeClient<PeerChannel>, Status> {
        self.peer_of(node).map(|p| p.client)
    }

    /// Node `node`'s volume service, through a connection this node keeps (one per address),
    /// or on a caller thread through one of the thread's own ([`crate::dedicated`]).
    fn peer_of(&self, node: NodeId) -> Result<Peer, Status> {
        let addr = self.addr_of(node).ok_or_else(|| Status::unavailable(format!("node {node} is not a member")))?;
        self.peer_at(addr)
    }

    /// Node `node`'s gRPC address, as the cluster's membership has it.
    fn addr_of(&self, node: NodeId) -> Option<String> {
        self.raft.metrics().borrow().membership_config.membership().get_node(&node).map(|n| n.grpc_addr.clone())
    }

    /// The volume service at `addr` (see [`VolumeService::peer_of`]).
    fn peer_at(&self, addr: String) -> Result<Peer, Status> {
        // A caller thread's own connections are plain TCP: under simulation (another transport)
        // the node's channels are used.
        if crate::dedicated::kind() == crate::dedicated::Kind::Caller && !umbra_raft::network::has_transport() {
            return THREAD_PEERS.with(|peers| cached_peer(&mut peers.borrow_mut(), addr, |a| Ok(DirectChannel::new(a).riding(self.deferred.clone()).into())));
        }
        cached_peer(&mut self.peers.lock().expect("peer cache lock"), addr, |a| Ok(umbra_raft::network::channel(a)?.into()))
    }

    /// This node's gateway's deferred releases.
    pub fn deferred(&self) -> &DeferredReleases {
        &self.deferred
    }

    /// The batches of other gateways' releases this owner carried out lately.
    pub fn carried(&self) -> &crate::deferred_releases::Carried {
        &self.carried
    }

    /// Tells the service of this node's gateway's opens (which an owner's `OpenFlush` marks).
    pub fn set_gateway_opens(&self, opens: Arc<crate::gateway_opens::GatewayOpens>) {
        let _ = self.gateway_opens.set(opens);
    }

    /// Defers a release to the owner of its volume ([`crate::deferred_releases`]); gives it
    /// back when it is to be sent now: the owner is this node (no call to save), unknown, or
    /// has too many waiting.
    pub fn defer_release(&self, release: OpenReleaseRequest) -> Result<(), OpenReleaseRequest> {
        let Ok((vol, _, _)) = target_of(release.target.as_ref()) else { return Err(release) };
        let owner = self.meta.read().state.volumes.get(&vol).map(|v| v.owner);
        let Some(owner) = owner.filter(|o| *o != self.node) else { return Err(release) };
        match self.addr_of(owner) {
            Some(addr) => self.deferred.defer(&addr, release),
            None => Err(release),
        }
    }

    /// Sends one batch of deferred releases to its owner; one whose call fails or takes longer
    /// than [`SEND_WAIT`] waits again ([`DeferredReleases::failed`]). Whether the owner took it.
    pub async fn send_batch(&self, batch: Batch) -> bool {
        let call = async {
            let mut peer = self.peer_at(batch.addr.to_string())?;
            peer.open_releases(OpenReleasesRequest { releases: batch.releases(), batch: batch.number }).await
        };
        let failure = match tokio::time::timeout(SEND_WAIT, call).await {
            Ok(Ok(_)) => {
                self.deferred.landed(&batch.addr, batch.number);
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {SEND_WAIT:?}"),
        };
        tracing::debug!(addr = %batch.addr, releases = batch.items.len(), error = %failure, "sending deferred releases failed: they wait again");
        self.deferred.failed(batch);
        false
    }

    /// Asked by the owner at `owner` (an `OpenFlush`): sends what waits for it, and waits until
    /// the calls under way to it that carry others (but the batches in `carried`) are answered,
    /// within [`SEND_WAIT`] each. How many releases it sent.
    async fn flush_for(&self, owner: &str, carried: &[u64]) -> u64 {
        let (batch, under_way) = self.deferred.take_for(owner, carried);
        let sent = match batch {
            Some(b) => {
                let n = b.items.len() as u64;
                if self.send_batch(b).await { n } else { 0 }
            }
            None => 0,
        };
        self.deferred.wait_landed(owner, &under_way, SEND_WAIT).await;
        sent
    }

    /// Releases another node's gateway sent after the CLOSEs they come from (riding on a call,
    /// or an `OpenReleases`): each as OpenRelease, in order, but a deletion one of them makes
    /// due does not wait at a fence here (the upkeep carries it out then); one that fails is
    /// logged (its open goes at the gateway's next renewal, which no longer lists it).
    pub async fn carry_out_releases(&self, releases: Vec<OpenReleaseRequest>) {
        for r in releases {
            let id = r.id;
            if let Err(e) = self.release(r, false).await {
                tracing::debug!(id, error = %e, "a deferred release failed");
            }
        }
    }

    /// Before a refusal that opens of other gateways cause stands: those opens may be closed
    /// already, their releases deferred ([`crate::deferred_releases`]). Asks the gateways of
    /// `nodes` (not this node's, whose releases to this owner are never deferred while it owns
    /// the volume) to send them, and to release at once the opens they hold of `files` from now
    /// on (made delete-pending). How many gateways answered (each within [`SETTLE_TIMEOUT`]):
    /// with none, there is nothing to decide again.
    async fn settle(&self, mut nodes: Vec<NodeId>, files: &[FileRef]) -> usize {
        nodes.sort_unstable();
        nodes.dedup();
        nodes.retain(|n| *n != self.node);
        if nodes.is_empty() {
            return 0;
        }
        let me = self.addr_of(self.node).unwrap_or_default();
        let each = nodes.into_iter().map(|node| {
            let req = OpenFlushRequest { no_defer: files.to_vec(), owner: me.clone(), carried: self.carried.of(node) };
            async move {
                let call = async { self.peer(node)?.open_flush(req).await };
                match tokio::time::timeout(SETTLE_TIMEOUT, call).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => {
                        tracing::debug!(node, error = %e, "asking a gateway for its deferred releases failed");
                        false
                    }
                    Err(_) => {
                        tracing::debug!(node, "asking a gateway for its deferred releases timed out");
                        false
                    }
                }
            }
        });
        futures::future::join_all(each).await.into_iter().filter(|answered| *answered).count()
    }

    /// The other members of the cluster.
    pub fn other_nodes(&self) -> Vec<NodeId> {
        self.raft.metrics().borrow().membership_config.membership().nodes().map(|(id, _)| *id).filter(|id| *id != self.node).collect()
    }

    /// The grace period after this node's start ([`OWNER_GRACE_MS`] by default).
    pub fn with_grace_ms(mut self, grace_ms: u64) -> Self {
        self.grace_ms = grace_ms;
        self
    }

    /// Publishes changes relayed from other nodes to this node's watches.
    pub fn with_notifier(mut self, notifier: umbra_smb_gateway::driver::Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// The gateway's failed-logon throttle, for other nodes' failures (LogonFailures).
    pub fn with_throttle(mut self, throttle: Arc<Mutex<umbra_smb_gateway::server::throttle::Throttle>>) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// A Read's data appended to `out`, each message checked. From another node on a caller
    /// thread, a short call whose data lands straight in `out` ([`crate::short_calls`]).
    pub async fn read_into(&self, mut r: ReadRequest, out: &mut Vec<u8>) -> Result<(), Status> {
        let (vol, _, route) = target_of(r.target.as_ref())?;
        if let Owner::Peer(peer) = self.owner(vol, route)? {
            if let PeerChannel::Direct(channel) = &peer.channel {
                unrouted(&mut r.target);
                return channel.read_into(r, out).await;
            }
        }
        let mut stream = VolumeRpc::read(self, Request::new(r)).await?.into_inner();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&checked_data(chunk?)?);
        }
        Ok(())
    }

    /// One whole write, routed like a gRPC call (the SMB gateway's path for a WRITE).
    pub async fn write_one(&self, msg: WriteChunk) -> Result<(), Status> {
        let (vol, view, route) = target_of(msg.target.as_ref())?;
        match self.owner(vol, route)? {
            Owner::Peer(peer) => {
                let mut msg = msg;
                unrouted(&mut msg.target);
                crate::volume_wire::write_small(peer.channel, msg).await.map(|_| ())
            }
            Owner::Here => {
                self.check_io(FileKey { volume: vol, view, ino: msg.ino }, msg.open.as_ref(), msg.offset, msg.data.len() as u64, true, false)?;
                self.run_gated(vol, move |s| s.write(vol, view, msg.ino, msg.offset, &msg.data, stamp(msg.now, msg.keep_times))).await
            }
        }
    }

    /// A Write call's messages, however they arrived: each one whole store write, in order; the
    /// next message is received while the current one is written, and a failed write answers at
    /// once. Forwarded whole to the owner when that is another node; an error in what comes in
    /// then fails the forwarded call too, so the owner never takes a cut-short stream as whole.
    pub async fn write_stream(&self, mut incoming: impl Stream<Item = Result<WriteChunk, Status>> + Send + Unpin + 'static) -> Result<WrittenReply, Status> {
        let Some(first) = incoming.next().await.transpose()? else { return Ok(WrittenReply { written: 0 }) };
        let (vol, view, route) = target_of(first.target.as_ref())?;
        if let Owner::Peer(peer) = self.owner(vol, route)? {
            let mut first = first;
            unrouted(&mut first.target);
            let failed = Arc::new(Mutex::new(None::<Status>));
            let seen = failed.clone();
            let rest = incoming.map(move |m| {
                if let Err(s) = &m {
                    *seen.lock().expect("forwarded write's error") = Some(s.clone());
                }
                m
            });
            let result = crate::volume_wire::write(peer.channel, tokio_stream::once(Ok(first)).chain(rest)).await;
            // The error that cut the incoming stream, rather than the reset it caused.
            return match failed.lock().expect("forwarded write's error").take() {
                Some(s) => Err(s),
                None => result,
            };
        }
        let mut written = 0u64;
        let mut current = Some(first);
        while let Some(msg) = current.take() {
            let len = msg.data.len() as u64;
            self.check_io(FileKey { volume: vol, view, ino: msg.ino }, msg.open.as_ref(), msg.offset, len, true, false)?;
            let mut write = std::pin::pin!(self.run_gated(vol, move |s| s.write(vol, view, msg.ino, msg.offset, &msg.data, stamp(msg.now, msg.keep_times))));
            let next = tokio::select! {
                done = &mut write => {
                    done?;
                    incoming.next().await
                }
                next = incoming.next() => {
                    write.await?;
                    next
                }
            };
            written += len;
            current = next.transpose()?;
        }
        Ok(WrittenReply { written })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The open table, locked; locks it let go meanwhile are told to the locks waiting for
    /// their ranges on every node once it is let go ([`OpensGuard`]).
    fn opens(&self) -> OpensGuard<'_> {
        OpensGuard { table: self.opens.lock().expect("open table lock"), notifier: self.notifier.as_ref() }
    }

    /// Runs a quick store call (a read of metadata) on the blocking pool, or inline (see
    /// [`StoreCalls`]).
    async fn run<T: Send + 'static>(&self, f: impl Fn(&VolumeStore) -> Result<T, VolumeError> + Send + 'static) -> Result<T, Status> {
        self.run_for(Call::Quick, f).await
    }

    /// A mutation of `vol`: it never blocks a thread at a fence.
    async fn run_gated<T: Send + 'static>(&self, vol: Uuid, f: impl Fn(&VolumeStore) -> Result<T, VolumeError> + Send + 'static) -> Result<T, Status> {
        self.run_for(Call::Mutation(vol), f).await
    }

    /// Runs a store call as `call` says. Inline under simulation, or on a dedicated thread
    /// ([`crate::dedicated`]) unless it is slow; a mutation run inline never blocks the thread
    /// at a fence ([`VolumeStore::run_unblocked`]).
    async fn run_for<T: Send + 'static>(&self, call: Call, f: impl Fn(&VolumeStore) -> Result<T, VolumeError> + Send + 'static) -> Result<T, Status> {
        let store = self.store.clone();
        if self.calls == StoreCalls::Blocking && (call == Call::Slow || !crate::dedicated::may_block()) {
            return tokio::task::spawn_blocking(move || f(&store)).await.map_err(|e| Status::internal(format!("store task: {e}")))?.map_err(status_of);
        }
        match call {
            Call::Mutation(vol) => store.run_unblocked(vol, f).await.map_err(status_of),
            Call::Quick | Call::Slow => f(&store).map_err(status_of),
        }
    }
}

/// The locked open table of [`VolumeService::opens`]: when it is let go, byte-range locks it
/// let go meanwhile (an unlock, a released open, an expired lease) wake the locks waiting for
/// their ranges, through this node's gateway and the change relay to the other nodes'.
struct OpensGuard<'a> {
    table: std::sync::MutexGuard<'a, OpenTable>,
    notifier: Option<&'a umbra_smb_gateway::driver::Notifier>,
}

impl std::ops::Deref for OpensGuard<'_> {
    type Target = OpenTable;
    fn deref(&self) -> &OpenTable {
        &self.table
    }
}

impl std::ops::DerefMut for OpensGuard<'_> {
    fn deref_mut(&mut self) -> &mut OpenTable {
        &mut self.table
    }
}

impl Drop for OpensGuard<'_> {
    fn drop(&mut self) {
        if self.table.take_released() {
            if let Some(n) = self.notifier {
                n.releases.released_here();
            }
        }
    }
}

/// What kind of store call a handler makes, for where it runs ([`VolumeService::run_for`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// A read of metadata: runs inline on a dedicated thread.
    Quick,
    /// A mutation of the volume (passes its gate): inline on a dedicated thread, waiting out
    /// a fence without blocking it.
    Mutation(Uuid),
    /// One that may take long (a fence draining writes, a sync, a snapshot or clone): always on
    /// the blocking pool, so the other calls of the same connection go on meanwhile.
    Slow,
}

macro_rules! unary {
    ($self:ident, $req:ident, $method:ident, |$store:ident, $vol:ident, $view:ident, $r:ident| $local:expr) => {
        unary!(@call Quick, $self, $req, $method, |$store, $vol, $view, $r| $local)
    };
    // A mutation that passes the volume's gate.
    (gated $self:ident, $req:ident, $method:ident, |$store:ident, $vol:ident, $view:ident, $r:ident| $local:expr) => {
        unary!(@call Mutation, $self, $req, $method, |$store, $vol, $view, $r| $local)
    };
    // One that may take long (see `Call::Slow`).
    (slow $self:ident, $req:ident, $method:ident, |$store:ident, $vol:ident, $view:ident, $r:ident| $local:expr) => {
        unary!(@call Slow, $self, $req, $method, |$store, $vol, $view, $r| $local)
    };
    (@call $call:ident, $self:ident, $req:ident, $method:ident, |$store:ident, $vol:ident, $view:ident, $r:ident| $local:expr) => {{
        let mut $r = $req.into_inner();
        let ($vol, $view, route) = target_of($r.target.as_ref())?;
        match $self.owner($vol, route)? {
            Owner::Peer(mut peer) => {
                unrouted(&mut $r.target);
                peer.$method($r).await
            }
            Owner::Here => $self.run_for(unary!(@kind $call $vol), move |$store| $local).await.map(Response::new),
        }
    }};
    (@kind Quick $vol:ident) => { Call::Quick };
    (@kind Mutation $vol:ident) => { Call::Mutation($vol) };
    (@kind Slow $vol:ident) => { Call::Slow };
}

#[tonic::async_trait]
impl VolumeRpc for VolumeService {
    async fn resolve(&self, req: Request<ResolveRequest>) -> Result<Response<EntryReply>, Status> {
        let mut r = req.into_inner();
        let (vol, view, route) = target_of(r.target.as_ref())?;
        if let Owner::Peer(mut peer) = self.owner(vol, route)? {
            unrouted(&mut r.target);
            return peer.resolve(r).await;
        }
        let Some(mut create) = r.create.take().filter(|_| r.with_parent) else {
            let with_parent = r.with_parent;
            let reply = self
                .run(move |s| match r.with_parent {
                    true => s.resolve_with_parent(vol, view, &r.path).map(found_reply),
                    false => s.resolve(vol, view, &r.path).map(|e| EntryReply { entry: Some(entry(e)), ..Default::default() }),
                })
                .await?;
            if with_parent && self.found_delete_pending(vol, view, &reply) {
                return Err(open_status(OpenError::DeletePending));
            }
            return Ok(Response::new(reply));
        };
        // The open's gateway is checked before anything changes.
        let open = create.open.take().map(|o| Ok::<_, Status>((gateway_of(o.gateway.as_ref())?, o))).transpose()?;
        let created_at = create.now;
        let path = r.path;
        let opens = self.opens.clone();
        let made = self
            .run_gated(vol, move |s| {
                let (found, parent) = s.resolve_with_parent(vol, view, &path)?;
                let name = path.rsplit(['/', '\\']).find(|p| !p.is_empty()).unwrap_or("").to_string();
                if found.is_some() || parent.inode.kind != Kind::Dir {
                    return Ok(Some((found_reply((found, parent)), None)));
                }
                // Nothing new goes into a directory that is to be deleted (MS-FSA 2.1.5.1).
                if opens.lock().expect("open table lock").delete_pending(FileKey { volume: vol, view, ino: parent.ino }) {
                    return Ok(None);
                }
                let (ino, mut reply) = match create_entry(s, vol, view, parent.ino, &name, create.directory, create.now) {
                    // Another gateway created it meanwhile: it is found after all.
                    Err(VolumeError::Exists(_)) => return s.resolve_with_parent(vol, view, &path).map(|found| Some((found_reply(found), None))),
                    other => other?,
                };
                reply.parent = Some(entry(parent.clone()));
                reply.created = true;
                Ok(Some((reply, Some((parent.ino, name, ino)))))
            })
            .await?;
        let Some((reply, created)) = made else { return Err(open_status(OpenError::DeletePending)) };
        if created.is_none() && self.found_delete_pending(vol, view, &reply) {
            return Err(open_status(OpenError::DeletePending));
        }
        if let (Some((parent, name, ino)), Some((gw, o))) = (created, open) {
            let file = FileKey { volume: vol, view, ino };
            let delete_at_close = o.delete_at_close.then(|| Link { parent, name: name.clone() });
            let record = OpenRecord::new(file, o.id, Mode { access: o.access, share: o.share_access }, delete_at_close);
            if let Err(e) = self.register_here(gw, o.lease_ms, record).await {
                // The open was refused after this call made the file: the file goes again (if
                // its name still names it), unless another open holds it already; meanwhile it
                // is delete-pending, so no new open gets it.
                let doomed = self.opens().doom(file, Link { parent, name });
                if let Some(d) = doomed {
                    if let Err(u) = self.carry_out_deletes(vec![d], true, created_at).await {
                        tracing::warn!(volume = %vol, ino, error = %u, "removing a file whose open was refused failed");
                    }
                }
                return Err(e);
            }
        }
        Ok(Response::new(reply))
    }

    async fn stat(&self, req: Request<StatRequest>) -> Result<Response<EntryReply>, Status> {
        let opens = self.opens.clone();
        unary!(self, req, stat, |s, vol, view, r| {
            let inode = s.stat(vol, view, r.ino)?;
            let delete_pending = opens.lock().expect("open table lock").delete_pending(FileKey { volume: vol, view, ino: r.ino });
            let security = if r.security { inode.security.clone().unwrap_or_default() } else { Vec::new() };
            Ok(EntryReply { entry: Some(Entry { name: String::new(), attributes: Some(Attributes { delete_pending, security, ..attributes(r.ino, &inode) }) }), ..Default::default() })
        })
    }

    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<EntryReply>, Status> {
        unary!(gated self, req, create, |s, vol, view, r| create_entry(s, vol, view, r.parent, &r.name, r.directory, r.now).map(|(_, reply)| reply))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        unary!(self, req, list, |s, vol, view, r| {
            let after = (!r.after.is_empty()).then_some(r.after.as_str());
            let entries = s.list(vol, view, r.dir, after, r.limit as usize)?;
            Ok(ListReply { entries: entries.into_iter().map(entry).collect() })
        })
    }

    type ReadStream = ReadStream;

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let mut r = req.into_inner();
        let (vol, view, route) = target_of(r.target.as_ref())?;
        if let Owner::Peer(peer) = self.owner(vol, route)? {
            unrouted(&mut r.target);
            let stream = crate::volume_wire::read(peer.channel, r).await?;
            return Ok(Response::new(Box::pin(stream)));
        }
        self.check_io(FileKey { volume: vol, view, ino: r.ino }, r.open.as_ref(), r.offset, r.length, false, false)?;
        if self.calls == StoreCalls::Inline {
            let mut all = Vec::new();
            read_pieces(&self.store, vol, view, &r, |piece| {
                all.push(piece);
                true
            });
            return Ok(Response::new(Box::pin(data_chunks(tokio_stream::iter(all)))));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_MESSAGES);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read_pieces(&store, vol, view, &r, |piece| tx.blocking_send(piece).is_ok()));
        Ok(Response::new(Box::pin(data_chunks(tokio_stream::wrappers::ReceiverStream::new(rx)))))
    }

    async fn write(&self, req: Request<Streaming<WriteChunk>>) -> Result<Response<WrittenReply>, Status> {
        self.write_stream(req.into_inner()).await.map(Response::new)
    }

    async fn set_size(&self, req: Request<SetSizeRequest>) -> Result<Response<EntryReply>, Status> {
        unary!(gated self, req, set_size, |s, vol, view, r| {
            s.set_size(vol, view, r.ino, r.size, stamp(r.now, r.keep_times))?;
            let inode = s.stat(vol, view, r.ino)?;
            Ok(EntryReply { entry: Some(Entry { name: String::new(), attributes: Some(attributes(r.ino, &inode)) }), ..Default::default() })
        })
    }

    async fn unlink(&self, req: Request<UnlinkRequest>) -> Result<Response<Done>, Status> {
        unary!(gated self, req, unlink, |s, vol, view, r| s.unlink(vol, view, r.parent, &r.name, r.now).map(|_| Done {}))
    }

    async fn rename(&self, req: Request<RenameRequest>) -> Result<Response<Done>, Status> {
        // A rename never replaces a file some open holds, nor moves a directory with opens
        // below it (MS-FSA 2.1.5.14.11: ACCESS_DENIED). Opens of gateways whose lease ran out
        // no longer count (as for a new open's share check).
        self.opens().expire(self.now_ms());
        let r = req.into_inner();
        let here = self.here(r.target.as_ref());
        let result = self.rename_once(r.clone()).await;
        // The opens in the way may be closed already, their releases deferred by their gateways.
        match (result, here) {
            (Err(e), Some((vol, _))) if e.metadata().get("umbra-error").is_some_and(|k| k == "open_in_the_way") => {
                let holders = self.opens().holders(vol);
                match self.settle(holders, &[]).await {
                    0 => Err(e),
                    _ => self.rename_once(r).await,
                }
            }
            (result, _) => result,
        }
    }

    async fn open_releases(&self, req: Request<OpenReleasesRequest>) -> Result<Response<Done>, Status> {
        let r = req.into_inner();
        if r.releases.len() > MAX_RELEASES_PER_CALL {
            return Err(Status::invalid_argument(format!("{} releases (max {MAX_RELEASES_PER_CALL})", r.releases.len())));
        }
        self.carry_out_releases(r.releases).await;
        Ok(Response::new(Done {}))
    }

    async fn open_flush(&self, req: Request<OpenFlushRequest>) -> Result<Response<OpenFlushReply>, Status> {
        let r = req.into_inner();
        if r.no_defer.len() > MAX_NO_DEFER_FILES || r.carried.len() > CARRIED_KEPT || r.owner.is_empty() {
            return Err(Status::invalid_argument(format!("{} files (max {MAX_NO_DEFER_FILES}), {} carried batches (max {CARRIED_KEPT}), owner {:?}", r.no_defer.len(), r.carried.len(), r.owner)));
        }
        // Marked first: a CLOSE after this releases at once, one before has its release waiting.
        if let Some(g) = self.gateway_opens.get() {
            g.no_defer(&r.no_defer);
        }
        Ok(Response::new(OpenFlushReply { released: self.flush_for(&r.owner, &r.carried).await }))
    }

    async fn sync(&self, req: Request<VolumeTarget>) -> Result<Response<Done>, Status> {
        let mut r = req.into_inner();
        let (vol, _, route) = target_of(Some(&r))?;
        match self.owner(vol, route)? {
            Owner::Peer(mut peer) => {
                r.route = false;
                peer.sync(r).await
            }
            Owner::Here => self.run_for(Call::Slow, |s| s.sync()).await.map(|_| Response::new(Done {})),
        }
    }

    async fn snapshot_create(&self, req: Request<SnapshotRequest>) -> Result<Response<SnapshotReply>, Status> {
        unary!(slow self, req, snapshot_create, |s, vol, _view, r| {
            let id = id_of(&r.id, "snapshot")?;
            s.snapshot_create(vol, id, r.now).map(|i| SnapshotReply { snapshot: Some(snapshot(i)) })
        })
    }

    async fn snapshot_commit(&self, req: Request<SnapshotRequest>) -> Result<Response<SnapshotReply>, Status> {
        unary!(slow self, req, snapshot_commit, |s, vol, _view, r| {
            let id = id_of(&r.id, "snapshot")?;
            s.snapshot_commit(vol, id).map(|i| SnapshotReply { snapshot: Some(snapshot(i)) })
        })
    }

    async fn snapshot_delete(&self, req: Request<SnapshotRequest>) -> Result<Response<Done>, Status> {
        unary!(slow self, req, snapshot_delete, |s, vol, _view, r| {
            let id = id_of(&r.id, "snapshot")?;
            s.snapshot_delete(vol, id).map(|_| Done {})
        })
    }

    async fn snapshot_list(&self, req: Request<VolumeTarget>) -> Result<Response<SnapshotList>, Status> {
        let mut r = req.into_inner();
        let (vol, _, route) = target_of(Some(&r))?;
        match self.owner(vol, route)? {
            Owner::Peer(mut peer) => {
                r.route = false;
                peer.snapshot_list(r).await
            }
            Owner::Here => self.run(move |s| s.snapshots(vol)).await.map(|v| Response::new(SnapshotList { snapshots: v.into_iter().map(snapshot).collect() })),
        }
    }

    async fn fence(&self, req: Request<FenceRequest>) -> Result<Response<SnapshotReply>, Status> {
        unary!(slow self, req, fence, |s, vol, _view, r| {
            let id = id_of(&r.snapshot, "snapshot")?;
            let ttl = std::time::Duration::from_millis(r.ttl_ms);
            s.fence(vol, r.token, ttl, id, r.now).map(|i| SnapshotReply { snapshot: Some(snapshot(i)) })
        })
    }

    async fn release(&self, req: Request<ReleaseRequest>) -> Result<Response<ReleaseReply>, Status> {
        unary!(slow self, req, release, |s, vol, _view, r| s
            .release(vol, r.token)
            .map(|(held, hold)| ReleaseReply { held: held == crate::volume::Released::Held, held_us: hold.as_micros() as u64 }))
    }

    async fn set_info(&self, req: Request<SetInfoRequest>) -> Result<Response<EntryReply>, Status> {
        unary!(gated self, req, set_info, |s, vol, view, r| {
            let info = SetInfo { created: r.created, written: r.written, changed: r.changed, attributes: r.attributes, sparse: r.sparse };
            let (given, parts) = (r.security.as_deref().unwrap_or_default(), r.security_info);
            if r.security.is_some() && !umbra_smb_gateway::security::names_parts(parts) {
                return Err(VolumeError::InvalidSecurity("a security descriptor that names no part to set".into()));
            }
            let update = |kept: Option<&[u8]>, directory: bool| umbra_smb_gateway::security::merged(kept, directory, given, parts).map_err(|e| VolumeError::InvalidSecurity(e.to_string()));
            let inode = s.set_info_and_security(vol, view, r.ino, info, r.security.is_some().then_some(&update as SecurityUpdate<'_>))?;
            Ok(EntryReply { entry: Some(Entry { name: String::new(), attributes: Some(attributes(r.ino, &inode)) }), ..Default::default() })
        })
    }

    async fn allocated_ranges(&self, req: Request<RangesRequest>) -> Result<Response<RangesReply>, Status> {
        unary!(self, req, allocated_ranges, |s, vol, view, r| {
            let (ranges, more_from) = s.allocated_ranges(vol, view, r.ino, r.offset, r.length)?;
            Ok(RangesReply { ranges: ranges.into_iter().map(|(offset, length)| Range { offset, length }).collect(), more_from: more_from.unwrap_or(0) })
        })
    }

    async fn zero_range(&self, req: Request<ZeroRangeRequest>) -> Result<Response<ZeroRangeReply>, Status> {
        // A zeroing is a write to every byte of the range up to the file's size (MS-FSA
        // 2.1.5.10.39): no lock of another open may be in the way.
        let r = req.get_ref();
        if let Some((vol, view)) = self.here(r.target.as_ref()) {
            self.check_io(FileKey { volume: vol, view, ino: r.ino }, r.open.as_ref(), r.offset, r.length, true, true)?;
        }
        unary!(gated self, req, zero_range, |s, vol, view, r| {
            let more_from = s.zero_range(vol, view, r.ino, r.offset, r.length, stamp(r.now, r.keep_times))?;
            Ok(ZeroRangeReply { more_from: more_from.unwrap_or(0) })
        })
    }

    async fn copy_range(&self, req: Request<CopyRangeRequest>) -> Result<Response<CopyRangeReply>, Status> {
        let r = req.get_ref();
        if r.length > umbra_smb_gateway::server::MAX_COPY_CHUNK_BYTES {
            return Err(status_of(VolumeError::TooLarge { what: "a copied range", got: u64::from(r.length), max: u64::from(umbra_smb_gateway::server::MAX_COPY_CHUNK_BYTES) }));
        }
        // Byte-range locks, as for a READ of the source and a WRITE of the target.
        if let Some((vol, view)) = self.here(r.target.as_ref()) {
            self.check_io(FileKey { volume: vol, view, ino: r.source_ino }, r.source_open.as_ref(), r.source_offset, u64::from(r.length), false, false)?;
            self.check_io(FileKey { volume: vol, view, ino: r.target_ino }, r.target_open.as_ref(), r.target_offset, u64::from(r.length), true, false)?;
        }
        unary!(gated self, req, copy_range, |s, vol, view, r| {
            let data = s.read(vol, view, r.source_ino, r.source_offset, u64::from(r.length))?;
            if data.len() == r.length as usize {
                s.write(vol, view, r.target_ino, r.target_offset, &data, stamp(r.now, r.keep_times))?;
            }
            Ok(CopyRangeReply { copied: data.len() as u32 })
        })
    }

    async fn clone_create(&self, req: Request<CloneRequest>) -> Result<Response<CloneReply>, Status> {
        unary!(slow self, req, clone_create, |s, vol, view, r| {
            let View::Snapshot(snap) = view else { return Err(VolumeError::Invalid("a clone is made of a snapshot: name it in the target".into())) };
            let id = id_of(&r.id, "clone")?;
            s.clone_create(vol, snap, id).map(clone_reply)
        })
    }

    async fn clone_seal(&self, req: Request<CloneRequest>) -> Result<Response<CloneReply>, Status> {
        unary!(slow self, req, clone_seal, |s, vol, _view, r| {
            let id = id_of(&r.id, "clone")?;
            s.clone_seal(vol, id).map(clone_reply)
        })
    }

    async fn open_register(&self, req: Request<OpenRegisterRequest>) -> Result<Response<Done>, Status> {
        VolumeService::open_register(self, req.into_inner()).await.map(Response::new)
    }

    async fn open_release(&self, req: Request<OpenReleaseRequest>) -> Result<Response<Done>, Status> {
        VolumeService::open_release(self, req.into_inner()).await.map(Response::new)
    }

    async fn open_dispose(&self, req: Request<OpenDisposeRequest>) -> Result<Response<Done>, Status> {
        VolumeService::open_dispose(self, req.into_inner()).await.map(Response::new)
    }

    async fn open_lock(&self, req: Request<OpenLockRequest>) -> Result<Response<Done>, Status> {
        VolumeService::open_lock(self, req.into_inner()).await.map(Response::new)
    }

    async fn open_renew(&self, req: Request<OpenRenewRequest>) -> Result<Response<OpenRenewReply>, Status> {
        VolumeService::open_renew(self, req.into_inner()).await.map(Response::new)
    }

    async fn notify(&self, req: Request<NotifyRequest>) -> Result<Response<Done>, Status> {
        let r = req.into_inner();
        let batch = crate::notify_relay::batch_of(&r)?;
        if let Some(n) = &self.notifier {
            if r.unlocked {
                n.releases.released_elsewhere();
            }
            // Nobody watching on this node is not an error.
            if batch.lost || !batch.changes.is_empty() {
                let _ = n.changes.send(std::sync::Arc::new(batch));
            }
        }
        Ok(Response::new(Done {}))
    }

    async fn logon_failures(&self, req: Request<LogonFailuresRequest>) -> Result<Response<Done>, Status> {
        let r = req.into_inner();
        if r.users.len() > umbra_smb_gateway::server::throttle::MAX_NAMES_TO_RELAY {
            return Err(Status::invalid_argument(format!("{} names (max {})", r.users.len(), umbra_smb_gateway::server::throttle::MAX_NAMES_TO_RELAY)));
        }
        if let Some(t) = &self.throttle {
            let now = crate::filetime_now();
            let mut t = t.lock().expect("throttle lock");
            // The throttle bounds what it keeps (names past any user's length are not tracked).
            r.users.iter().for_each(|u| t.failed_elsewhere(u, now));
        }
        Ok(Response::new(Done {}))
    }

    async fn clone_delete(&self, req: Request<CloneRequest>) -> Result<Response<Done>, Status> {
        unary!(slow self, req, clone_delete, |s, vol, _view, r| {
            let id = id_of(&r.id, "clone")?;
            s.clone_delete(vol, id).map(|_| Done {})
        })
    }
}

/// Share modes: the owner's table of opens, reached like every volume call.
impl VolumeService {
    /// A rename, once: never over a file some open holds, nor of a directory with opens below
    /// it.
    async fn rename_once(&self, r: RenameRequest) -> Result<Response<Done>, Status> {
        let opens = self.opens.clone();
        let req = Request::new(r);
        unary!(gated self, req, rename, |s, vol, view, r| {
            let held = crate::opens::OpensOf { table: &opens, volume: vol, view };
            s.rename_unless(vol, view, r.from_dir, &r.from, r.to_dir, &r.to, r.replace, r.now, &held).map(|_| Done {})
        })
    }

    pub async fn open_register(&self, mut r: OpenRegisterRequest) -> Result<Done, Status> {
        let (volume, view, route) = target_of(r.target.as_ref())?;
        if let Owner::Peer(mut peer) = self.owner(volume, route)? {
            unrouted(&mut r.target);
            return peer.open_register(r).await.map(Response::into_inner);
        }
        let gw = gateway_of(r.gateway.as_ref())?;
        let record = OpenRecord::new(FileKey { volume, view, ino: r.ino }, r.id, Mode { access: r.access, share: r.share_access }, link_of(r.delete_at_close.as_ref())?);
        self.register_here(gw, r.lease_ms, record).await
    }

    /// Registers an open of a file on a volume this node owns (OpenRegister, or a create that
    /// carries its open): after the owner's grace period, checked against every other open.
    async fn register_here(&self, gw: Gateway, lease_ms: u64, record: OpenRecord) -> Result<Done, Status> {
        self.wait_out_grace(record.file.volume, "an open").await;
        let ino = record.file.ino;
        let mut asked = Vec::new();
        let result = loop {
            let result = self.opens().register(self.now_ms(), gw, lease_ms.min(MAX_LEASE_MS), record.clone());
            // The open in the way may be closed already, its release deferred by its gateway.
            match &result {
                Err(OpenError::SharingViolation { holder_node, .. }) if *holder_node != self.node && !asked.contains(holder_node) && asked.len() < MAX_SETTLES_PER_OPEN => {
                    asked.push(*holder_node);
                    if self.settle(vec![*holder_node], &[]).await > 0 {
                        continue;
                    }
                }
                _ => {}
            }
            break result;
        };
        if let Err(e) = &result {
            tracing::debug!(node = gw.node, ino, error = %e, "open refused");
        }
        result.map(|_| Done {}).map_err(open_status)
    }

    /// Waits out what is left of the owner's grace period after its start ([`OWNER_GRACE_MS`])
    /// before `what` (an open, a lock) on `volume`, if this node held the volume when it
    /// started: by then every live gateway has renewed and the opens and locks it held are back.
    async fn wait_out_grace(&self, volume: Uuid, what: &str) {
        let grace = self.grace_ms.saturating_sub(self.now_ms());
        if grace > 0 && self.held_at_start.contains(&volume) {
            tracing::debug!(%volume, wait_ms = grace, "{what} waits out the owner's grace period after its start");
            tokio::time::sleep(std::time::Duration::from_millis(grace)).await;
        }
    }

    pub async fn open_release(&self, r: OpenReleaseRequest) -> Result<Done, Status> {
        self.release(r, true).await
    }

    /// OpenRelease; with `wait_at_fence`, the deletion it makes due waits out a fence on its
    /// volume (a CLOSE's, answered after its file's deletion), else it is left to the upkeep.
    async fn release(&self, mut r: OpenReleaseRequest, wait_at_fence: bool) -> Result<Done, Status> {
        let (volume, _, route) = target_of(r.target.as_ref())?;
        if let Owner::Peer(mut peer) = self.owner(volume, route)? {
            unrouted(&mut r.target);
            return peer.open_release(r).await.map(Response::into_inner);
        }
        let gw = gateway_of(r.gateway.as_ref())?;
        let delete = link_of(r.delete_at_close.as_ref())?;
        // The CLOSE carries out its own file's deletion, if this was its last open; any other
        // due on the volume is the upkeep's.
        let deleting = delete.is_some();
        let (due, file) = {
            let mut table = self.opens();
            let file = table.release(gw, volume, r.id, delete);
            (file.map(|f| table.take_due_of(f)).unwrap_or_default(), file)
        };
        self.carry_out_deletes(due, wait_at_fence, r.now).await?;
        if let Some(file) = file.filter(|_| deleting) {
            self.settle_delete_pending(file, None).await;
        }
        Ok(Done {})
    }

    /// `file` was made delete-pending: other gateways holding it may have closed it already
    /// (their releases deferred); they send those now (the file is deleted as the last one
    /// lands) and release the rest of its opens at their CLOSEs from now on, so that the file
    /// is gone when its last CLOSE is answered.
    /// (`except`: the gateway and id of an open that made it so and is still held.)
    async fn settle_delete_pending(&self, file: FileKey, except: Option<(u64, u64)>) {
        let holders = self.opens().holders_of(file, except);
        self.settle(holders, &[FileRef { volume: file.volume.to_string(), ino: file.ino }]).await;
    }

    /// The target's volume and view when this node owns it (the owner, alone, checks byte-range
    /// locks; a forwarded call is checked where it lands).
    fn here(&self, target: Option<&VolumeTarget>) -> Option<(Uuid, View)> {
        let (vol, view, route) = target_of(target).ok()?;
        matches!(self.owner(vol, route), Ok(Owner::Here)).then_some((vol, view))
    }

    /// Whether the file an open's resolve found (a CREATE's: `with_parent`) is delete-pending:
    /// then no new open gets it, whatever its access (MS-FSA 2.1.5.1.2; opens that take part in
    /// share modes are refused at registration too, attribute-only ones only here).
    fn found_delete_pending(&self, vol: Uuid, view: View, reply: &EntryReply) -> bool {
        let ino = reply.entry.as_ref().and_then(|e| e.attributes.as_ref()).map(|a| a.ino);
        ino.is_some_and(|ino| self.opens().delete_pending(FileKey { volume: vol, view, ino }))
    }

    pub async fn open_lock(&self, mut r: OpenLockRequest) -> Result<Done, Status> {
        let (volume, _, route) = target_of(r.target.as_ref())?;
        if let Owner::Peer(mut peer) = self.owner(volume, route)? {
            unrouted(&mut r.target);
            return peer.open_lock(r).await.map(Response::into_inner);
        }
        let gw = gateway_of(r.gateway.as_ref())?;
        // A lock asked just after this owner started is checked against the locks the other
        // gateways' renewals bring back, not granted in the gap (an unlock need not wait).
        if !r.unlock {
            self.wait_out_grace(volume, "a lock").await;
        }
        let mut table = self.opens();
        table.lock_call(gw, volume, r.id, r.call);
        let result = match r.unlock {
            true => table.unlock(gw, volume, r.id, &r.locks.iter().map(|l| (l.offset, l.length)).collect::<Vec<_>>()),
            false => table.lock(gw, volume, r.id, &r.locks.iter().map(lock_of).collect::<Vec<_>>()),
        };
        result.map(|()| Done {}).map_err(lock_status)
    }

    /// Refuses a READ or WRITE of a file on a volume this node owns that a byte-range lock is in
    /// the way of (the lock is taken under the table's lock, the I/O after it: a lock granted
    /// in between does not stop an I/O already checked). An append (offset
    /// [`crate::volume::WRITE_AT_END`]) is checked where the file ends now; with `clip`, the
    /// range stops at the file's size (a zeroing, which never extends the file). The file's
    /// size is looked up only when the volume has locks at all.
    pub fn check_io(&self, file: FileKey, open: Option<&OpenRef>, offset: u64, length: u64, write: bool, clip: bool) -> Result<(), Status> {
        if !self.opens().has_locks(file.volume) {
            return Ok(());
        }
        let mut range = (offset, length);
        let append = write && offset == crate::volume::WRITE_AT_END;
        if append || clip {
            let size = self.store.stat(file.volume, file.view, file.ino).map_err(status_of)?.size;
            if append {
                range.0 = size;
            }
            if clip {
                range.1 = range.1.min(size.saturating_sub(range.0));
            }
        }
        let open = open.and_then(|o| Some((o.gateway.as_ref()?.node, o.id)));
        match self.opens().io_conflict(file, open, range.0, range.1, write) {
            true => Err(lock_conflict()),
            false => Ok(()),
        }
    }

    pub async fn open_dispose(&self, mut r: OpenDisposeRequest) -> Result<Done, Status> {
        let (volume, _, route) = target_of(r.target.as_ref())?;
        if let Owner::Peer(mut peer) = self.owner(volume, route)? {
            unrouted(&mut r.target);
            return peer.open_dispose(r).await.map(Response::into_inner);
        }
        let gw = gateway_of(r.gateway.as_ref())?;
        let delete = link_of(r.delete_at_close.as_ref())?;
        let deleting = delete.is_some();
        let file = self.opens().dispose(gw, volume, r.id, delete);
        if let Some(file) = file.filter(|_| deleting) {
            self.settle_delete_pending(file, Some((gw.node, r.id))).await;
        }
        Ok(Done {})
    }

    /// Deletes the files whose last open went while they were delete-pending, as `due` lists
    /// them: each name is unlinked if it still names the file (in one mutation). With
    /// `wait_at_fence`, a deletion waits out a fence on its volume (a CLOSE waits for its own
    /// deletion); without, it is left due for later. One that failed for a reason that may pass
    /// (a fence, busy, a full disk) is due again, and so is any not carried out when the call is
    /// dropped midway (a CLOSE whose gateway went away while it waited at a fence). Returns the
    /// first failure (the others are logged), so a CLOSE hears why its file's deletion failed.
    async fn carry_out_deletes(&self, due: Vec<DueDelete>, wait_at_fence: bool, now: u64) -> Result<(), Status> {
        /// Deletions not settled yet: due again if the call ends before they are.
        struct Unsettled<'a>(&'a VolumeService, Vec<DueDelete>);
        impl Drop for Unsettled<'_> {
            fn drop(&mut self) {
                let left = std::mem::take(&mut self.1);
                if !left.is_empty() {
                    let mut table = self.0.opens();
                    left.into_iter().for_each(|d| table.retry(d));
                }
            }
        }
        let mut left = Unsettled(self, due);
        let mut first = Ok(());
        while let Some(d) = left.1.last().cloned() {
            let (vol, view, link, ino) = (d.file.volume, d.file.view, d.link.clone(), d.file.ino);
            let unlink = move |s: &VolumeStore| s.unlink_if(vol, view, link.parent, &link.name, ino, now);
            let result = match wait_at_fence {
                true => self.run_gated(vol, unlink).await,
                false => self.run(move |s| crate::volume::gate::refusing_at_fence(|| unlink(s))).await,
            };
            left.1.pop();
            let transient = result.as_ref().err().and_then(|e| e.metadata().get("umbra-error")).is_some_and(|k| k == "busy" || k == "disk_full");
            match result {
                Ok(done) => {
                    tracing::debug!(volume = %vol, ino, name = %d.link.name, renamed_or_gone = !done, "deleted at its last close");
                    self.opens().deleted(d.file);
                }
                Err(e) if transient => {
                    tracing::warn!(volume = %vol, ino, name = %d.link.name, error = %e, "deleting a file at its last close failed for now: it stays due");
                    self.opens().retry(d);
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
                // Anything else will not pass by trying again (a directory not empty, a sealed
                // clone, the file gone): the deletion is over.
                Err(e) => {
                    tracing::warn!(volume = %vol, ino, name = %d.link.name, error = %e, "a deletion at last close did not happen");
                    self.opens().deleted(d.file);
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        first
    }

    /// Upkeep of the open table, now and then: drops expired leases, and carries out every
    /// deletion due (one a fence holds up waits for the next round).
    pub async fn opens_upkeep(&self) {
        let due = {
            let mut table = self.opens();
            table.expire(self.now_ms());
            table.take_due()
        };
        let _ = self.carry_out_deletes(due, false, crate::filetime_now()).await;
    }

    /// [`VolumeService::opens_upkeep`] every [`RENEW_INTERVAL_MS`](crate::opens::RENEW_INTERVAL_MS)
    /// until `stop` turns true: deletions a fence held up, or due on a volume no gateway calls
    /// about any more (its last one died), happen within that.
    pub async fn run_opens_upkeep(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(crate::opens::RENEW_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.opens_upkeep().await,
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    pub async fn open_renew(&self, mut r: OpenRenewRequest) -> Result<OpenRenewReply, Status> {
        let (volume, _, route) = target_of(r.target.as_ref())?;
        if let Owner::Peer(mut peer) = self.owner(volume, route)? {
            unrouted(&mut r.target);
            return peer.open_renew(r).await.map(Response::into_inner);
        }
        let gw = gateway_of(r.gateway.as_ref())?;
        if r.opens.len() > crate::opens::MAX_OPENS_PER_GATEWAY {
            return Err(Status::invalid_argument(format!("a renewal lists {} opens (max_opens_per_gateway {})", r.opens.len(), crate::opens::MAX_OPENS_PER_GATEWAY)));
        }
        let records = r.opens.iter().map(|h| held_record(volume, h)).collect::<Result<Vec<_>, _>>()?;
        let now = self.now_ms();
        let renewed = {
            let mut table = self.opens();
            table.expire(now);
            table.renew(now, gw, r.lease_ms.min(MAX_LEASE_MS), volume, r.up_to, &records).map_err(open_status)
        };
        let renewed = renewed?;
        Ok(match renewed {
            Renewed::Known { dropped } => OpenRenewReply { known: true, dropped: dropped as u64, ..Default::default() },
            Renewed::Reinstated { held, refused } => {
                tracing::info!(node = gw.node, %volume, held, refused, "reinstated a gateway's opens");
                OpenRenewReply { known: false, reinstated: held as u64, refused: refused as u64, dropped: 0 }
            }
        })
    }
}

/// A read in store reads of at most [`READ_MESSAGE_BYTES`], each as the pieces the store
/// hands out (whole chunks without a copy: [`VolumeStore::read_shared`]), handed to `send`
/// until it refuses some, the file ends or a read fails.
fn read_pieces(store: &VolumeStore, vol: Uuid, view: View, r: &ReadRequest, mut send: impl FnMut(Result<Vec<SharedPiece>, Status>) -> bool) {
    let end = r.offset.saturating_add(r.length);
    let mut pos = r.offset;
    while pos < end {
        let want = (end - pos).min(READ_MESSAGE_BYTES);
        let result = store.read_shared(vol, view, r.ino, pos, want).map_err(status_of);
        let done = match &result {
            Ok(pieces) => (pieces.iter().map(|p| p.data.len()).sum::<usize>() as u64) < want,
            Err(_) => true,
        };
        pos += want;
        if !send(result) || done {
            break;
        }
    }
}

/// The messages of a Read: each piece a message of its own, so the receiver finds its data
/// within one HTTP/2 frame and keeps it without a copy (`umbra_proto::frames`), with the
/// checksums the receiver checks it by (`umbra_proto::checks`); a read that found nothing is
/// one empty message.
fn data_chunks(pieces: impl Stream<Item = Result<Vec<SharedPiece>, Status>> + Send + 'static) -> impl Stream<Item = Result<DataChunk, Status>> + Send + 'static {
    use futures::StreamExt as _;
    pieces.flat_map(|read| {
        let chunks: Vec<Result<DataChunk, Status>> = match read {
            Ok(pieces) if pieces.is_empty() => vec![Ok(DataChunk::default())],
            Ok(pieces) => pieces.into_iter().map(|p| Ok(DataChunk { data: p.data, checks: p.spans.into_iter().map(Check::from).collect() })).collect(),
            Err(status) => vec![Err(status)],
        };
        futures::stream::iter(chunks)
    })
}

fn clone_reply(c: crate::volume::CloneInfo) -> CloneReply {
    CloneReply { id: c.id.to_string(), base_snapshot: c.base_snapshot.to_string(), sealed: c.sealed }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A size or offset past what the store keeps reaches the gateway as such (SMB answers
    /// INVALID_PARAMETER), not as an invalid name.
    #[test]
    fn too_large_keeps_its_kind_through_to_the_gateway() {
        use umbra_smb_gateway::server::files::FsError;
        let s = status_of(VolumeError::TooLarge { what: "the file end", got: 1 << 50, max: 1 << 44 });
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        assert!(matches!(crate::smb::fs_error(&s), FsError::TooLarge));
        assert_eq!(FsError::TooLarge.status(), umbra_smb_gateway::smb2::status::INVALID_PARAMETER);
    }

    /// A delete-on-close link is kept as long as its open lasts: its name must be one a file can
    /// have, or the register, release or renewal that carries it is refused.
    #[test]
    fn a_delete_on_close_name_must_be_one_a_file_can_have() {
        let link = |name: String| link_of(Some(&DeleteAtClose { parent: 1, name }));
        assert_eq!(link("f.bin".into()).unwrap(), Some(Link { parent: 1, name: "f.bin".into() }));
        assert_eq!(link_of(None).unwrap(), None);
        for bad in ["x".repeat(256), String::new(), "a/b".into()] {
            assert_eq!(link(bad).unwrap_err().code(), tonic::Code::InvalidArgument);
        }
    }
}
