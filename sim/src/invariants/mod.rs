//! Invariant checkers, one module each, named for the property (design.md sections 5 and 7).
//! Each records violations as text; a run fails if any checker found one.

pub mod acked_writes_survive;
pub mod converges;
pub mod election_safety;
pub mod fence_ttl;
pub mod file_writes_survive;
pub mod linearizable_reads;
pub mod no_orphan_snapshot;
pub mod one_cut;
pub mod one_set_in_creation;
pub mod set_atomicity;
pub mod set_liveness;
