//! Umbra under deterministic simulation (design.md section 7).
//!
//! Data flow: [`run::run`] builds a turmoil world from one seed. Each node is a turmoil host
//! ([`node`]) running the production code: openraft with Umbra's state machine over the
//! in-memory Raft store that models process death and power loss (`umbra_raft::store::mem`,
//! which passes the same conformance suite as RocksDB); the Raft, Admin and Volume gRPC services;
//! `Meta`; the volume store (RocksDB in a per-node directory, kept across process deaths) with
//! its upkeep, its store calls made inline on the host's runtime (`StoreCalls::Inline`: mutations
//! wait out fences with `Gate::wait_open`, never blocking the single thread); and the
//! shadow-copy-set coordinator with its reconcile loop, on the runtime's clock with ids from a
//! seeded source. Every connection goes through the one networking seam ([`net`]: turmoil TCP).
//!
//! Three workloads: a client writes sequence-numbered metadata through any node (and reads it
//! back through another); [`files`] writes sequence-numbered file data through any node to a
//! volume on n1 and one on n2, with flushes; [`backup`] drives shadow-copy sets through one
//! node's coordinator at a time, as the FSRVP pipe does. The driver draws faults from the seed:
//! partitions both ways and one way, held, slow and lossy links, isolation of the leader or of
//! the coordinator's node, process deaths and power losses of any node, the leader, the whole
//! cluster, or the coordinator when it reaches a commit phase (begun, fenced, released). Then
//! faults heal and the cluster goes quiet. The [`invariants`] are checked on every step (election
//! safety, one set in creation, no fence past its TTL), after each acknowledged write
//! (linearizable reads) and once quiet (acknowledged writes survive, agreement, liveness, file
//! writes survive, set atomicity and no orphan snapshot, one cut, set liveness). A run is fixed
//! by its seed: the same seed gives the same trace. `Options::volumes = false` runs the
//! metadata-only simulation as it was before the volumes joined, so its old seeds replay.
//!
//! What keeps a run fixed by its seed, beyond turmoil's virtual time and seeded RNG: a fixed
//! simulated epoch; openraft's election timeouts fixed per node; responses stamped with the
//! virtual time's `date` (hyper's is the wall clock); and one simulation at a time per process,
//! started at an aligned tokio task id (`run::align_task_ids` says why: the order in which a crashed host's
//! tasks are dropped follows their ids). Other tokio work in the same process while a
//! simulation runs can still change its trace.

pub mod backup;
pub mod files;
pub mod invariants;
pub mod net;
pub mod node;
pub mod run;
