//! Workload (b): file writes carrying sequence numbers, through any node's volume service
//! (routed to the owner), to one file on each of two volumes owned by nodes 1 and 2, with
//! flushes (the volume service's Sync, as an SMB FLUSH does).
//!
//! Write `k` puts `k + 1` (8 bytes, little-endian) in a slot of its own of the file on the
//! volume drawn for it, the writes spread over 64 chunks ([`offset_of`]). Writes go one at a time, so each acknowledged write was acknowledged before
//! the next one started: what the one-cut checker needs. A write not acknowledged (the client
//! gave up) may or may not have landed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use umbra_proto::v1::volume_client::VolumeClient;
use umbra_proto::v1::{CreateRequest, VolumeTarget, WriteChunk};
use umbra_raft::command::{Command, Request};
use umbra_raft::fsrvp::FsrvpCommand;
use umbra_raft::NodeId;
use uuid::Uuid;

use crate::node::{host_name, PORT};

/// The two volumes (owner node, id, name, share) the file and backup workloads use.
pub const VOLUMES: [(NodeId, u128, &str, &str); 2] = [(1, 0xa1, "v1", "s1"), (2, 0xa2, "v2", "s2")];
/// The written file's name in each volume's root.
pub const FILE: &str = "seq";
/// The FSRVP sequence timer in the simulation (the protocol's is 180 s), so abandoned sets
/// expire within a run.
pub const SEQUENCE_TIMER_S: u32 = 2;

pub fn volume_id(i: usize) -> Uuid {
    Uuid::from_u128(VOLUMES[i].1)
}

/// The node owning volume `vol` (of [`VOLUMES`]).
pub fn owner_of(vol: Uuid) -> Option<NodeId> {
    VOLUMES.iter().find(|v| Uuid::from_u128(v.1) == vol).map(|v| v.0)
}

/// What the writer saw: acknowledged writes in order, and per volume the writes a successful
/// flush covered, with when that flush was acknowledged.
#[derive(Default)]
pub struct Written {
    pub acked: Vec<Ack>,
    pub flushed: [BTreeMap<u64, Duration>; 2],
    /// The file's inode in each volume, once created.
    pub ino: [Option<u64>; 2],
    pub ready: bool,
}

/// One acknowledged write: its sequence number, volume, and when the attempt that succeeded
/// started and was answered (a crash in between may come after the write landed).
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub k: u64,
    pub volume: usize,
    pub started: Duration,
    pub answered: Duration,
}

fn target(i: usize) -> Option<VolumeTarget> {
    Some(VolumeTarget { volume: volume_id(i).to_string(), snapshot: String::new(), clone: String::new(), route: true })
}

fn client(via: NodeId) -> Option<VolumeClient<tonic::transport::Channel>> {
    umbra_raft::network::channel(&format!("{}:{PORT}", host_name(via))).ok().map(VolumeClient::new)
}

/// The metadata the workloads need: both volumes, a share on each, a short sequence timer.
/// Each command is retried through every node until it is applied (or found applied).
async fn setup(nodes: u64, rng: &mut SmallRng) -> bool {
    let mut cmds: Vec<Command> = Vec::new();
    for (owner, id, name, _) in VOLUMES {
        cmds.push(Command::CreateVolume { id: Uuid::from_u128(id), name: name.into(), owner });
    }
    for (_, _, name, share) in VOLUMES {
        cmds.push(Command::CreateShare { name: share.into(), volume: name.into(), path: "/".into(), read_only: false });
    }
    cmds.push(Command::Fsrvp(FsrvpCommand::SetTimeout { seconds: Some(SEQUENCE_TIMER_S) }));
    let mut via = 1;
    for cmd in cmds {
        let req = Request { request_id: Uuid::from_u128(rng.random()), stamp_ms: 0, command: cmd };
        let Ok(json) = serde_json::to_vec(&req) else { return false };
        let mut done = false;
        for _ in 0..40 {
            // Refused counts as done: a retry of an applied create finds it exists.
            if crate::run::write_via(via, &json).await.is_some() {
                done = true;
                break;
            }
            via = via % nodes + 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !done {
            return false;
        }
    }
    true
}

/// Creates (or finds) the file on volume `i` through any node.
async fn create_file(i: usize, nodes: u64, via: &mut NodeId) -> Option<u64> {
    for _ in 0..60 {
        if let Some(mut c) = client(*via) {
            let req = CreateRequest { target: target(i), parent: 1, name: FILE.into(), directory: false, now: 0 };
            match tokio::time::timeout(Duration::from_secs(2), c.create(req)).await {
                Ok(Ok(reply)) => return reply.into_inner().entry.and_then(|e| e.attributes).map(|a| a.ino),
                Ok(Err(s)) if s.code() == tonic::Code::AlreadyExists => {
                    let req = umbra_proto::v1::ResolveRequest { target: target(i), path: FILE.into(), ..Default::default() };
                    if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), c.resolve(req)).await {
                        return r.into_inner().entry.and_then(|e| e.attributes).map(|a| a.ino);
                    }
                }
                _ => {}
            }
        }
        *via = *via % nodes + 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Chunks the writes are spread over: write `k` goes to chunk `k % SPREAD_CHUNKS`, after the
/// earlier writes there, so most chunks are unchanged between two snapshots (a single chunk
/// would get a new version at every snapshot, and a reclaim freeing a version a snapshot still
/// reads would never show). Files stay within 64 chunks (4 MiB).
const SPREAD_CHUNKS: u64 = 64;
const SLOTS_PER_CHUNK: u64 = umbra_node::volume::CHUNK_BYTES / 8;

/// Where write `k`'s 8 bytes go.
fn offset_of(k: u64) -> u64 {
    8 * ((k % SPREAD_CHUNKS) * SLOTS_PER_CHUNK + (k / SPREAD_CHUNKS) % SLOTS_PER_CHUNK)
}

async fn write_once(via: NodeId, i: usize, ino: u64, k: u64) -> bool {
    let Some(mut c) = client(via) else { return false };
    let msg = WriteChunk { target: target(i), ino, offset: offset_of(k), data: (k + 1).to_le_bytes().to_vec().into(), now: 0, open: None, keep_times: 0 };
    matches!(tokio::time::timeout(Duration::from_secs(2), c.write(futures::stream::iter(vec![msg]))).await, Ok(Ok(_)))
}

async fn flush_once(via: NodeId, i: usize) -> bool {
    let Some(mut c) = client(via) else { return false };
    let t = target(i).expect("target");
    matches!(tokio::time::timeout(Duration::from_secs(2), c.sync(t)).await, Ok(Ok(_)))
}

/// The writer: setup, then sequence-numbered writes (each retried through other nodes) and a
/// flush every few writes, until `stop_at`.
pub async fn writer(seed: u64, nodes: u64, stop_at: Duration, written: Rc<RefCell<Written>>) -> turmoil::Result {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xf11e5);
    tokio::time::sleep(Duration::from_millis(800)).await;
    if !setup(nodes, &mut rng).await {
        return Ok(());
    }
    let mut via: NodeId = 1;
    for i in 0..2 {
        let Some(ino) = create_file(i, nodes, &mut via).await else { return Ok(()) };
        written.borrow_mut().ino[i] = Some(ino);
    }
    written.borrow_mut().ready = true;
    let mut k = 0u64;
    let mut since_flush = [Vec::new(), Vec::new()];
    while turmoil::elapsed() < stop_at {
        let i = rng.random_range(0..2usize);
        let ino = written.borrow().ino[i].expect("created");
        let mut ok = None;
        for _ in 0..nodes {
            let started = turmoil::elapsed();
            if write_once(via, i, ino, k).await {
                ok = Some(started);
                break;
            }
            via = via % nodes + 1;
        }
        if let Some(started) = ok {
            written.borrow_mut().acked.push(Ack { k, volume: i, started, answered: turmoil::elapsed() });
            since_flush[i].push(k);
        }
        k += 1;
        if rng.random_bool(0.2) {
            let f = rng.random_range(0..2usize);
            let covered = std::mem::take(&mut since_flush[f]);
            if flush_once(via, f).await {
                let at = turmoil::elapsed();
                written.borrow_mut().flushed[f].extend(covered.into_iter().map(|k| (k, at)));
            } else {
                since_flush[f] = covered;
                via = via % nodes + 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..40))).await;
    }
    Ok(())
}

/// The sequence numbers present in file bytes (each 8-byte slot holding `k + 1`).
pub fn seqs_in(data: &[u8]) -> BTreeSet<u64> {
    data.chunks_exact(8).filter_map(|c| c.try_into().ok().map(u64::from_le_bytes)).filter(|&v| v != 0).map(|v| v - 1).collect()
}
