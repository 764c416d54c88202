//! Umbra under deterministic simulation (design.md section 7).
//!
//! Data flow: [`run::run`] builds a turmoil world from one seed: each node is a turmoil host
//! running the production Raft (openraft with Umbra's state machine), its Raft and Admin gRPC
//! services and `Meta` ([`node`]), reached through the one networking seam ([`net`]: turmoil TCP
//! instead of the kernel's) and storing into the in-memory store that models process death and
//! power loss (`umbra_raft::store::mem`, which passes the same conformance suite as RocksDB). A
//! client writes sequence-numbered metadata through any node; the driver draws faults from the
//! seed (partitions both ways and one way, delays, crashes of any node or the leader, power
//! losses); the [`invariants`] are checked on every step and once the cluster is quiet. A run is
//! fixed by its seed: the same seed gives the same trace.
//!
//! Not simulated yet: the volume service and the shadow-copy-set coordinator (their fences
//! block threads; they need an async gate first).

pub mod backup;
pub mod files;
pub mod invariants;
pub mod net;
pub mod node;
pub mod run;
