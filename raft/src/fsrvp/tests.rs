//! One test per FSRVP rule, through `MetaState::apply` as the log applies it.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::*;
use crate::command::{Applied, Command, MetaError, Request};
use crate::state::MetaState;

struct World {
    state: MetaState,
    index: u64,
    now_ms: u64,
}

const CLIENT: &str = "10.0.0.1";

fn v(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

impl World {
    /// Volumes vol1@1, vol2@2; shares s1 (vol1), s1b (vol1), s2 (vol2), hidden$ (vol2).
    fn new() -> Self {
        let mut w = World { state: MetaState::default(), index: 0, now_ms: 1_000_000 };
        for (id, name, owner) in [(1, "vol1", 1), (2, "vol2", 2)] {
            w.run(Command::CreateVolume { id: v(id), name: name.into(), owner }).unwrap();
        }
        for (share, vol) in [("s1", "vol1"), ("s1b", "vol1"), ("s2", "vol2"), ("hidden$", "vol2")] {
            w.run(Command::CreateShare { name: share.into(), volume: vol.into(), path: "/".into(), read_only: false }).unwrap();
        }
        w
    }

    fn run(&mut self, command: Command) -> Result<Applied, MetaError> {
        self.index += 1;
        let mut req = Request::new(command);
        req.stamp_ms = self.now_ms;
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        self.state.apply(self.index, &req, &members, &mut Vec::new())
    }

    fn fs(&mut self, cmd: FsrvpCommand) -> Result<FsrvpAnswer, FsrvpError> {
        match self.run(Command::Fsrvp(cmd)) {
            Ok(Applied::Fsrvp(a)) => Ok(a),
            Err(MetaError::Fsrvp(e)) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn start(&mut self, context: u32) -> Uuid {
        self.fs(FsrvpCommand::SetContext { client: CLIENT.into(), context }).unwrap();
        let set = Uuid::new_v4();
        self.fs(FsrvpCommand::Start { client: CLIENT.into(), set }).unwrap();
        set
    }

    fn add(&mut self, set: Uuid, share: &str) -> Result<Uuid, FsrvpError> {
        match self.fs(FsrvpCommand::Add { set, copy: Uuid::new_v4(), share: share.into() })? {
            FsrvpAnswer::Copy(c) => Ok(c),
            other => panic!("{other:?}"),
        }
    }

    fn begin(&mut self, set: Uuid) -> Attempt {
        match self.fs(FsrvpCommand::BeginCommit { set, seed: Uuid::new_v4(), timeout_ms: 10_000 }).unwrap() {
            FsrvpAnswer::Attempt(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn commit(&mut self, set: Uuid) -> Attempt {
        let a = self.begin(set);
        assert_eq!(self.fs(FsrvpCommand::Decide { set, token: a.token, decision: Decision::Committed }).unwrap(), FsrvpAnswer::Decided(Decision::Committed));
        a
    }

    fn state_of(&self, set: Uuid) -> Option<SetState> {
        self.state.fsrvp.sets.get(&set).map(|s| s.state)
    }
}

fn invalid_arg(r: Result<impl std::fmt::Debug, FsrvpError>) {
    assert!(matches!(r, Err(FsrvpError::InvalidArgument(_))), "{r:?}");
}

fn bad_state<T: std::fmt::Debug>(r: Result<T, FsrvpError>) {
    assert!(matches!(r, Err(FsrvpError::BadState(_))), "{r:?}");
}

#[test]
fn set_context_accepts_the_four_contexts_with_auto_recovery_and_refuses_others() {
    let mut w = World::new();
    for ctx in [0x0, 0x10, 0x19, 0x9, 0x9 | ATTR_AUTO_RECOVERY, ATTR_AUTO_RECOVERY] {
        w.fs(FsrvpCommand::SetContext { client: CLIENT.into(), context: ctx }).unwrap();
    }
    for ctx in [0x2, 0x7, 0x9 | 0x2, 0x0400_0000] {
        invalid_arg(w.fs(FsrvpCommand::SetContext { client: CLIENT.into(), context: ctx }));
    }
}

#[test]
fn start_needs_a_context_of_this_client() {
    let mut w = World::new();
    bad_state(w.fs(FsrvpCommand::Start { client: CLIENT.into(), set: Uuid::new_v4() }));
    w.fs(FsrvpCommand::SetContext { client: "other".into(), context: 0 }).unwrap();
    bad_state(w.fs(FsrvpCommand::Start { client: CLIENT.into(), set: Uuid::new_v4() }));
}

#[test]
fn the_context_is_copied_into_the_set_at_start() {
    let mut w = World::new();
    let set = w.start(0x9 | ATTR_AUTO_RECOVERY);
    w.fs(FsrvpCommand::SetContext { client: CLIENT.into(), context: 0 }).unwrap();
    assert!(w.state.fsrvp.sets[&set].writable());
}

#[test]
fn one_set_in_creation_cluster_wide_and_exposed_sets_do_not_block() {
    let mut w = World::new();
    let set = w.start(0);
    w.fs(FsrvpCommand::SetContext { client: "other".into(), context: 0 }).unwrap();
    let busy = w.fs(FsrvpCommand::Start { client: "other".into(), set: Uuid::new_v4() });
    assert_eq!(busy, Err(FsrvpError::InProgress(set)));
    w.add(set, r"s1").unwrap();
    w.commit(set);
    // Committed still blocks (Samba); Exposed does not.
    assert!(matches!(w.fs(FsrvpCommand::Start { client: "other".into(), set: Uuid::new_v4() }), Err(FsrvpError::InProgress(_))));
    w.fs(FsrvpCommand::Expose { set }).unwrap();
    w.fs(FsrvpCommand::Start { client: "other".into(), set: Uuid::new_v4() }).unwrap();
}

#[test]
fn add_checks_set_then_share_then_state() {
    let mut w = World::new();
    invalid_arg(w.add(Uuid::new_v4(), "s1"));
    let set = w.start(0);
    invalid_arg(w.add(set, "nope"));
    w.add(set, "s1").unwrap();
    w.commit(set);
    bad_state(w.add(set, "s2"));
}

#[test]
fn the_same_share_twice_is_already_exists_and_a_second_share_on_the_volume_maps_to_its_copy() {
    let mut w = World::new();
    let set = w.start(0);
    let c1 = w.add(set, "s1").unwrap();
    assert!(matches!(w.add(set, "S1"), Err(FsrvpError::AlreadyExists(_))));
    let c1b = w.add(set, "s1b").unwrap();
    assert_eq!(c1, c1b, "same volume: same shadow copy");
    let c2 = w.add(set, "s2").unwrap();
    assert_ne!(c1, c2);
    let s = &w.state.fsrvp.sets[&set];
    assert_eq!(s.copies.len(), 2);
    assert_eq!(s.copies[0].mappings.len(), 2);
    assert_eq!(s.state, SetState::Added);
}

#[test]
fn a_shadow_copy_share_cannot_be_added() {
    let mut w = World::new();
    let set = w.start(0);
    let copy = w.add(set, "s1").unwrap();
    w.commit(set);
    w.fs(FsrvpCommand::Expose { set }).unwrap();
    let set2 = w.start(0);
    assert!(matches!(w.add(set2, &format!("s1@{{{copy}}}")), Err(FsrvpError::NotSupported(_))));
}

#[test]
fn prepare_needs_added() {
    let mut w = World::new();
    invalid_arg(w.fs(FsrvpCommand::Prepare { set: Uuid::new_v4() }));
    let set = w.start(0);
    bad_state(w.fs(FsrvpCommand::Prepare { set }));
    w.add(set, "s1").unwrap();
    w.fs(FsrvpCommand::Prepare { set }).unwrap();
}

#[test]
fn begin_commit_makes_one_attempt_and_a_second_commit_gets_the_same_one() {
    let mut w = World::new();
    let set = w.start(0);
    bad_state(w.fs(FsrvpCommand::BeginCommit { set, seed: Uuid::new_v4(), timeout_ms: 1000 }));
    w.add(set, "s1").unwrap();
    w.add(set, "s2").unwrap();
    let a = w.begin(set);
    assert_eq!(a.token, w.index, "the token is the log index");
    assert_eq!(a.participants.iter().map(|p| p.owner).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(w.state_of(set), Some(SetState::CreationInProgress));
    let again = w.begin(set);
    assert_eq!(again, a);
    assert_eq!(w.state.fsrvp.clients[CLIENT].deadline_ms, None, "the timer stops during a commit");
}

#[test]
fn decide_is_one_compare_and_set_per_attempt() {
    let mut w = World::new();
    let set = w.start(0);
    w.add(set, "s1").unwrap();
    let a = w.begin(set);
    assert_eq!(w.fs(FsrvpCommand::Decide { set, token: a.token, decision: Decision::Aborted }).unwrap(), FsrvpAnswer::Decided(Decision::Aborted));
    // The loser learns the winner's decision; nothing changes.
    assert_eq!(w.fs(FsrvpCommand::Decide { set, token: a.token, decision: Decision::Committed }).unwrap(), FsrvpAnswer::Decided(Decision::Aborted));
    assert_eq!(w.state_of(set), Some(SetState::Added), "an aborted commit returns the set to Added");
    assert!(w.state.fsrvp.sets[&set].copies[0].snapshot.is_none());
    // A retry is a new attempt with a new token and new snapshot ids.
    let b = w.commit(set);
    assert!(b.token > a.token);
    assert_ne!(b.participants[0].snapshot, a.participants[0].snapshot);
    assert_eq!(w.state.fsrvp.sets[&set].copies[0].snapshot, Some(b.participants[0].snapshot));
    invalid_arg(w.fs(FsrvpCommand::Decide { set: Uuid::new_v4(), token: b.token, decision: Decision::Committed }));
}

#[test]
fn an_undecided_attempt_past_its_deadline_is_aborted_and_its_set_dropped_by_the_next_entry() {
    let mut w = World::new();
    let set = w.start(0);
    w.add(set, "s1").unwrap();
    let a = w.begin(set);
    assert_eq!(w.state.fsrvp.next_due_ms(), Some(a.deadline_ms));
    w.now_ms = a.deadline_ms;
    w.fs(FsrvpCommand::Expire).unwrap();
    assert_eq!(w.state.fsrvp.attempts[&a.token].decision, Some(Decision::Aborted));
    assert_eq!(w.state_of(set), None, "a set whose coordinator vanished is dropped, freeing the cluster for the next");
    // A late Committed loses.
    assert_eq!(w.fs(FsrvpCommand::Decide { set, token: a.token, decision: Decision::Committed }).unwrap(), FsrvpAnswer::Decided(Decision::Aborted));

    // A coordinator that decides its own late attempt (its timeout) keeps the set, in Added.
    let set = w.start(0);
    w.add(set, "s1").unwrap();
    let a = w.begin(set);
    w.now_ms = a.deadline_ms + 1;
    assert_eq!(w.fs(FsrvpCommand::Decide { set, token: a.token, decision: Decision::Aborted }).unwrap(), FsrvpAnswer::Decided(Decision::Aborted));
    assert_eq!(w.state_of(set), Some(SetState::Added));
}

#[test]
fn expose_needs_committed_and_creates_read_only_or_writable_shares() {
    let mut w = World::new();
    let set = w.start(0);
    let c = w.add(set, "s1").unwrap();
    w.add(set, "hidden$").unwrap();
    bad_state(w.fs(FsrvpCommand::Expose { set }));
    invalid_arg(w.fs(FsrvpCommand::Expose { set: Uuid::new_v4() }));
    w.commit(set);
    w.fs(FsrvpCommand::Expose { set }).unwrap();
    let name = format!("s1@{{{c}}}");
    let share = w.state.shares.get(&crate::names::fold(&name)).expect("exposed share");
    assert!(share.read_only);
    assert_eq!(share.snapshot.as_ref().unwrap().clone, None);
    assert!(w.state.shares.values().any(|s| s.name.starts_with("hidden$@{") && s.name.ends_with("}$")), "hidden shares stay hidden");

    let mut w = World::new();
    let set = w.start(0x9 | ATTR_AUTO_RECOVERY);
    let c = w.add(set, "s1").unwrap();
    w.commit(set);
    w.fs(FsrvpCommand::Expose { set }).unwrap();
    let share = w.state.shares[&crate::names::fold(&format!("s1@{{{c}}}"))].clone();
    assert!(!share.read_only);
    assert_eq!(share.snapshot.unwrap().clone, Some(c));
}

#[test]
fn recovery_complete_makes_shares_read_only_and_clears_the_context() {
    let mut w = World::new();
    let set = w.start(0x9 | ATTR_AUTO_RECOVERY);
    let c = w.add(set, "s1").unwrap();
    bad_state(w.fs(FsrvpCommand::RecoveryComplete { set }));
    w.commit(set);
    w.fs(FsrvpCommand::Expose { set }).unwrap();
    w.fs(FsrvpCommand::RecoveryComplete { set }).unwrap();
    assert!(w.state.shares[&crate::names::fold(&format!("s1@{{{c}}}"))].read_only);
    assert!(!w.state.fsrvp.clients.contains_key(CLIENT));
    bad_state(w.fs(FsrvpCommand::RecoveryComplete { set }));
    invalid_arg(w.fs(FsrvpCommand::RecoveryComplete { set: Uuid::new_v4() }));
}

#[test]
fn abort_removes_started_or_added_sets_refuses_in_progress_and_ignores_committed() {
    let mut w = World::new();
    invalid_arg(w.fs(FsrvpCommand::Abort { set: Uuid::new_v4() }));
    let set = w.start(0);
    w.fs(FsrvpCommand::Abort { set }).unwrap();
    assert_eq!(w.state_of(set), None);
    invalid_arg(w.add(set, "s1"));
    let set = w.start(0);
    w.add(set, "s1").unwrap();
    w.begin(set);
    bad_state(w.fs(FsrvpCommand::Abort { set }));
    let token = w.state.fsrvp.sets[&set].attempt.unwrap();
    w.fs(FsrvpCommand::Decide { set, token, decision: Decision::Committed }).unwrap();
    w.fs(FsrvpCommand::Abort { set }).unwrap();
    assert_eq!(w.state_of(set), Some(SetState::Committed));
}

#[test]
fn get_mapping_checks_set_state_copy_share_then_level() {
    let mut w = World::new();
    let unknown = FsrvpCommand::GetMapping { set: Uuid::new_v4(), copy: Uuid::new_v4(), share: "s1".into(), level: 1 };
    invalid_arg(w.fs(unknown));
    let set = w.start(0);
    let c = w.add(set, "s1").unwrap();
    assert_eq!(w.fs(FsrvpCommand::GetMapping { set, copy: c, share: "s1".into(), level: 1 }), Err(FsrvpError::NotExposed));
    w.commit(set);
    w.fs(FsrvpCommand::Expose { set }).unwrap();
    invalid_arg(w.fs(FsrvpCommand::GetMapping { set, copy: Uuid::new_v4(), share: "s1".into(), level: 1 }));
    invalid_arg(w.fs(FsrvpCommand::GetMapping { set, copy: c, share: "s2".into(), level: 1 }));
    invalid_arg(w.fs(FsrvpCommand::GetMapping { set, copy: c, share: "s1".into(), level: 2 }));
    let FsrvpAnswer::Mapping(m) = w.fs(FsrvpCommand::GetMapping { set, copy: c, share: "S1".into(), level: 1 }).unwrap() else { panic!() };
    assert_eq!(m.exposed, Some(format!("s1@{{{c}}}")));
    assert_eq!(m.committed_ms % 1000, 0);
}

#[test]
fn delete_mapping_codes_and_cascade() {
    let mut w = World::new();
    let r = w.fs(FsrvpCommand::DeleteMapping { set: Uuid::new_v4(), copy: Uuid::new_v4(), share: "s1".into() });
    assert!(matches!(r, Err(FsrvpError::ObjectNotFound(_))));
    let set = w.start(0);
    let c1 = w.add(set, "s1").unwrap();
    w.add(set, "s1b").unwrap();
    let c2 = w.add(set, "s2").unwrap();
    bad_state(w.fs(FsrvpCommand::DeleteMapping { set, copy: c1, share: "s1".into() }));
    let a = w.commit(set);
    w.fs(FsrvpCommand::Expose { set }).unwrap();
    invalid_arg(w.fs(FsrvpCommand::DeleteMapping { set, copy: Uuid::new_v4(), share: "s1".into() }));
    invalid_arg(w.fs(FsrvpCommand::DeleteMapping { set, copy: c1, share: "s2".into() }));
    let first = w.fs(FsrvpCommand::DeleteMapping { set, copy: c1, share: "s1".into() }).unwrap();
    assert_eq!(first, FsrvpAnswer::MappingDeleted { removed: None }, "s1b still maps copy 1");
    assert!(!w.state.shares.contains_key(&crate::names::fold(&format!("s1@{{{c1}}}"))));
    let FsrvpAnswer::MappingDeleted { removed: Some(r) } = w.fs(FsrvpCommand::DeleteMapping { set, copy: c1, share: "s1b".into() }).unwrap() else { panic!() };
    assert_eq!(r.snapshot, Some(a.participants[0].snapshot));
    w.fs(FsrvpCommand::DeleteMapping { set, copy: c2, share: "s2".into() }).unwrap();
    assert_eq!(w.state_of(set), None, "the last mapping removes the set");
    assert!(w.state.shares.values().all(|s| s.snapshot.is_none()));
}

#[test]
fn the_sequence_timer_removes_the_armed_set_before_expose_and_clears_the_context() {
    let mut w = World::new();
    w.fs(FsrvpCommand::SetTimeout { seconds: Some(1) }).unwrap();
    let set = w.start(0);
    w.add(set, "s1").unwrap();
    w.now_ms += 1500;
    // Lazy expiry: the next command sees the set gone (Samba: E_INVALIDARG).
    invalid_arg(w.fs(FsrvpCommand::Prepare { set }));
    bad_state(w.fs(FsrvpCommand::Start { client: CLIENT.into(), set: Uuid::new_v4() }));
    // An exposed set survives its timer.
    let set = w.start(0);
    w.add(set, "s1").unwrap();
    w.commit(set);
    w.fs(FsrvpCommand::Expose { set }).unwrap();
    w.now_ms += 1500;
    w.fs(FsrvpCommand::Expire).unwrap();
    assert_eq!(w.state_of(set), Some(SetState::Exposed));
}

#[test]
fn a_new_context_keeps_the_timer_of_a_set_the_client_left_in_creation() {
    let mut w = World::new();
    w.fs(FsrvpCommand::SetTimeout { seconds: Some(1) }).unwrap();
    // The client never learnt its set (the Start answer was lost) and starts over.
    let lost = w.start(0);
    w.now_ms += 600;
    w.fs(FsrvpCommand::SetContext { client: CLIENT.into(), context: 0 }).unwrap();
    w.now_ms += 600;
    w.fs(FsrvpCommand::Expire).unwrap();
    assert_eq!(w.state_of(lost), None, "the lost set expires on its own timer");
    let next = w.start(0);
    assert_eq!(w.state_of(next), Some(SetState::Started), "and no longer blocks a new set");
}

#[test]
fn a_committed_set_that_times_out_is_removed_and_its_snapshot_is_deleted() {
    let mut w = World::new();
    w.fs(FsrvpCommand::SetTimeout { seconds: Some(1) }).unwrap();
    let set = w.start(0);
    w.add(set, "s1").unwrap();
    let a = w.commit(set);
    let p = &a.participants[0];
    assert!(matches!(w.state.fsrvp.resolve_snapshot(p.volume, p.snapshot, a.token), SnapshotFate::Keep { .. }));
    w.now_ms += 1001;
    w.fs(FsrvpCommand::Expire).unwrap();
    assert_eq!(w.state_of(set), None);
    assert_eq!(w.state.fsrvp.resolve_snapshot(p.volume, p.snapshot, a.token), SnapshotFate::Delete);
}

#[test]
fn timer_values_follow_the_protocol_unless_overridden_and_zero_turns_it_off() {
    let mut w = World::new();
    let set = w.start(0);
    assert_eq!(w.state.fsrvp.clients[CLIENT].deadline_ms, Some(w.now_ms + SHORT_TIMEOUT_MS));
    w.add(set, "s1").unwrap();
    assert_eq!(w.state.fsrvp.clients[CLIENT].deadline_ms, Some(w.now_ms + LONG_TIMEOUT_MS));
    w.fs(FsrvpCommand::SetTimeout { seconds: Some(0) }).unwrap();
    w.fs(FsrvpCommand::Prepare { set }).unwrap();
    assert_eq!(w.state.fsrvp.clients[CLIENT].deadline_ms, None);
    assert_eq!(w.state.fsrvp.next_due_ms(), None);
}

#[test]
fn snapshots_resolve_keep_wait_or_delete() {
    let mut w = World::new();
    let set = w.start(0);
    w.add(set, "s1").unwrap();
    let a = w.begin(set);
    let p = a.participants[0].clone();
    assert_eq!(w.state.fsrvp.resolve_snapshot(p.volume, p.snapshot, a.token), SnapshotFate::Wait);
    assert_eq!(w.state.fsrvp.resolve_snapshot(p.volume, Uuid::new_v4(), a.token), SnapshotFate::Delete, "not this attempt's");
    assert_eq!(w.state.fsrvp.resolve_snapshot(p.volume, p.snapshot, 999_999), SnapshotFate::Delete, "an attempt Raft does not know");
    w.fs(FsrvpCommand::Decide { set, token: a.token, decision: Decision::Aborted }).unwrap();
    assert_eq!(w.state.fsrvp.resolve_snapshot(p.volume, p.snapshot, a.token), SnapshotFate::Delete);
}

#[test]
fn sets_committed_in_one_second_get_distinct_timestamps() {
    let mut w = World::new();
    let mut stamps = BTreeSet::new();
    for _ in 0..3 {
        let set = w.start(0);
        w.add(set, "s2").unwrap();
        w.commit(set);
        w.fs(FsrvpCommand::Expose { set }).unwrap();
        stamps.insert(w.state.fsrvp.sets[&set].committed_ms / 1000);
    }
    assert_eq!(stamps.len(), 3);
}

#[test]
fn an_exposed_share_cannot_be_deleted_as_a_plain_share() {
    let mut w = World::new();
    let set = w.start(0);
    let c = w.add(set, "s1").unwrap();
    w.commit(set);
    w.fs(FsrvpCommand::Expose { set }).unwrap();
    assert!(w.run(Command::DeleteShare { name: format!("s1@{{{c}}}") }).is_err());
    w.fs(FsrvpCommand::DeleteSet { set }).unwrap();
    assert!(w.state.shares.values().all(|s| s.snapshot.is_none()));
}

#[test]
fn fsrvp_state_survives_a_snapshot_round_trip() {
    let mut w = World::new();
    let set = w.start(0);
    w.add(set, "s1").unwrap();
    w.commit(set);
    let json = serde_json::to_vec(&w.state).unwrap();
    let mut back: MetaState = serde_json::from_slice(&json).unwrap();
    back.reindex();
    assert_eq!(back, w.state);
}

#[test]
fn every_answer_and_refusal_serialises_as_the_log_and_dedupe_table_store_it() {
    let errors = [
        FsrvpError::BadState("Added".into()),
        FsrvpError::InvalidArgument("x".into()),
        FsrvpError::ObjectNotFound("x".into()),
        FsrvpError::AlreadyExists("x".into()),
        FsrvpError::InProgress(Uuid::new_v4()),
        FsrvpError::NotSupported("x".into()),
        FsrvpError::NotExposed,
        FsrvpError::Timeout,
        FsrvpError::Failed("x".into()),
    ];
    for e in errors {
        let r: crate::command::Response = Err(MetaError::Fsrvp(e));
        let json = serde_json::to_vec(&r).expect("serialises");
        assert_eq!(serde_json::from_slice::<crate::command::Response>(&json).unwrap(), r);
    }
    let mut w = World::new();
    let set = w.start(0);
    let copy = w.add(set, "s1").unwrap();
    let a = w.commit(set);
    let answers = [
        FsrvpAnswer::Done,
        FsrvpAnswer::Copy(copy),
        FsrvpAnswer::Attempt(a),
        FsrvpAnswer::Decided(Decision::Committed),
        FsrvpAnswer::Set(w.state.fsrvp.sets[&set].clone()),
        FsrvpAnswer::Mapping(MappingInfo { set, copy, share: "s1".into(), exposed: None, committed_ms: 1 }),
        FsrvpAnswer::MappingDeleted { removed: Some(RemovedCopy { volume: v(1), snapshot: None, writable: false, copy }) },
    ];
    for a in answers {
        let r: crate::command::Response = Ok(Applied::Fsrvp(a));
        let json = serde_json::to_vec(&r).expect("serialises");
        assert_eq!(serde_json::from_slice::<crate::command::Response>(&json).unwrap(), r);
    }
    for cmd in [FsrvpCommand::Expire, FsrvpCommand::SetTimeout { seconds: Some(1) }, FsrvpCommand::Start { client: "c".into(), set }] {
        let r = Request::new(Command::Fsrvp(cmd));
        let json = serde_json::to_vec(&r).expect("serialises");
        assert_eq!(serde_json::from_slice::<Request>(&json).unwrap(), r);
    }
}

/// A set in creation keeps its own timer when its client's later calls concern an exposed set
/// (GetShareMapping re-arms the client's timer for that one; RecoveryComplete drops the
/// client's context): the set left in creation still expires, and no longer blocks Start.
#[test]
fn a_set_left_in_creation_expires_whatever_its_clients_later_calls_touch() {
    for last_call in ["mapping", "recovery"] {
        let mut w = World::new();
        let exposed = w.start(0);
        let copy = w.add(exposed, "s1").unwrap();
        w.commit(exposed);
        w.fs(FsrvpCommand::Expose { set: exposed }).unwrap();
        let left = w.start(0);
        w.add(left, "s2").unwrap();
        match last_call {
            "mapping" => drop(w.fs(FsrvpCommand::GetMapping { set: exposed, copy, share: "s1".into(), level: 1 }).unwrap()),
            _ => drop(w.fs(FsrvpCommand::RecoveryComplete { set: exposed }).unwrap()),
        }
        w.now_ms += LONG_TIMEOUT_MS + 1; // an Added set's timer
        w.fs(FsrvpCommand::Expire).unwrap();
        assert_eq!(w.state_of(left), None, "after {last_call}: the set left in creation expired");
        assert_eq!(w.state_of(exposed), Some(if last_call == "mapping" { SetState::Exposed } else { SetState::Recovered }));
        w.fs(FsrvpCommand::SetContext { client: CLIENT.into(), context: 0 }).unwrap();
        w.fs(FsrvpCommand::Start { client: CLIENT.into(), set: Uuid::new_v4() }).unwrap();
    }
}

/// The exposed share serves the folder its base share had when it was added, even if the base
/// share is deleted before Expose.
#[test]
fn expose_serves_the_folder_the_base_share_had_when_added() {
    let mut w = World::new();
    w.run(Command::CreateShare { name: "vms".into(), volume: "vol1".into(), path: "/vms".into(), read_only: false }).unwrap();
    let set = w.start(0);
    let copy = w.add(set, "vms").unwrap();
    w.run(Command::DeleteShare { name: "vms".into() }).unwrap();
    w.commit(set);
    w.fs(FsrvpCommand::Expose { set }).unwrap();
    let exposed = &w.state.shares[&format!("vms@{{{copy}}}")];
    assert_eq!((exposed.path.as_str(), exposed.volume), ("/vms", v(1)));
}
