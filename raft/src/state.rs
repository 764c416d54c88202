//! The cluster metadata state machine, without I/O.
//!
//! `apply` is a pure function of the current state and one log entry: it reads no clock and
//! makes no ids (the proposer put them in the command). Every precondition (a name taken, a
//! volume unknown) is checked here, inside apply, so concurrent proposals cannot both pass.
//! Each change is recorded as a [`StateKey`] so the store persists exactly what changed, in the
//! same write batch as the applied log id.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::{Applied, Command, MetaError, Request, Response, Share, User, UserInfo, Volume};
use crate::fsrvp::{Env, FsrvpState};
use crate::names::{self, fold};
use crate::types::NodeId;

/// Answers remembered for retried requests (part of snapshots). A retry that comes after this
/// many newer requests is applied again, and then finds its own effect (exists / not found).
pub const MAX_DEDUPE_ENTRIES: usize = 16_384;
/// Most volumes, shares and users the metadata holds, each.
pub const MAX_VOLUMES: usize = 4_096;
pub const MAX_SHARES: usize = 16_384;
pub const MAX_USERS: usize = 4_096;

/// A key of the persisted state; the store writes the current value under it, or deletes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StateKey {
    Volume(Uuid),
    Share(String),
    User(String),
    /// The remembered answers of every request applied at this log index.
    Dedupe(u64),
    Clock,
    /// The whole FSRVP state (small and bounded: one record).
    Fsrvp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeEntry {
    pub index: u64,
    pub request_id: Uuid,
    pub response: Response,
}

/// Everything every node must agree on (besides membership, which openraft keeps).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    /// The newest leader stamp applied, in ms since the Unix epoch.
    pub clock_ms: u64,
    pub volumes: BTreeMap<Uuid, Volume>,
    /// Keyed by the folded name.
    pub shares: BTreeMap<String, Share>,
    /// Keyed by the folded name.
    pub users: BTreeMap<String, User>,
    #[serde(default)]
    pub fsrvp: FsrvpState,
    /// Oldest first.
    pub dedupe: VecDeque<DedupeEntry>,
    #[serde(skip)]
    dedupe_index: BTreeMap<Uuid, usize>,
    #[serde(skip)]
    dedupe_base: usize,
}

impl MetaState {
    /// Rebuilds the lookup index after loading `dedupe` from disk or a snapshot.
    pub fn reindex(&mut self) {
        self.dedupe_base = 0;
        self.dedupe_index = self.dedupe.iter().enumerate().map(|(i, e)| (e.request_id, i)).collect();
    }

    /// Applies one command at log `index`, for a cluster whose members are `members`.
    /// Records every changed key in `changed`.
    pub fn apply(&mut self, index: u64, req: &Request, members: &BTreeSet<NodeId>, changed: &mut Vec<StateKey>) -> Response {
        if let Some(&pos) = self.dedupe_index.get(&req.request_id) {
            return self.dedupe[pos - self.dedupe_base].response.clone();
        }
        if req.stamp_ms > self.clock_ms {
            self.clock_ms = req.stamp_ms;
            changed.push(StateKey::Clock);
        }
        let response = self.execute(index, &req.command, members, changed);
        self.remember(index, req.request_id, response.clone(), changed);
        response
    }

    fn remember(&mut self, index: u64, request_id: Uuid, response: Response, changed: &mut Vec<StateKey>) {
        if self.dedupe.len() >= MAX_DEDUPE_ENTRIES {
            if let Some(old) = self.dedupe.pop_front() {
                self.dedupe_index.remove(&old.request_id);
                self.dedupe_base += 1;
                changed.push(StateKey::Dedupe(old.index));
            }
        }
        self.dedupe_index.insert(request_id, self.dedupe_base + self.dedupe.len());
        self.dedupe.push_back(DedupeEntry { index, request_id, response });
        changed.push(StateKey::Dedupe(index));
    }

    /// The remembered answers of requests applied at log `index` (the store keeps them as one
    /// record per index, so a batched entry costs one write however many requests it holds).
    pub fn dedupe_at(&self, index: u64) -> Vec<&DedupeEntry> {
        let start = self.dedupe.partition_point(|e| e.index < index);
        self.dedupe.range(start..).take_while(|e| e.index == index).collect()
    }

    fn execute(&mut self, index: u64, command: &Command, members: &BTreeSet<NodeId>, changed: &mut Vec<StateKey>) -> Response {
        match command {
            Command::Fsrvp(cmd) => {
                let volumes = &self.volumes;
                let owners = |v: Uuid| volumes.get(&v).map(|v| v.owner);
                let mut changed_shares = Vec::new();
                let mut env = Env { clock_ms: self.clock_ms, index, shares: &mut self.shares, owners: &owners, changed_shares: &mut changed_shares };
                let answer = self.fsrvp.apply(cmd, &mut env);
                changed.extend(changed_shares.into_iter().map(StateKey::Share));
                changed.push(StateKey::Fsrvp);
                Ok(Applied::Fsrvp(answer?))
            }
            Command::CreateVolume { id, name, owner } => self.create_volume(*id, name, *owner, members, changed),
            Command::CreateShare { name, volume, path, read_only } => {
                self.create_share(name, volume, path, *read_only, changed)
            }
            Command::DeleteShare { name } => {
                if let Some(set) = self.shares.get(&fold(name)).and_then(|s| s.snapshot.as_ref()).map(|s| s.set) {
                    let why = format!("it exposes a shadow copy of set {set}; delete the set with `umbra ctl shadow delete`");
                    return Err(MetaError::Fsrvp(crate::fsrvp::FsrvpError::NotSupported(why)));
                }
                let share = self.shares.remove(&fold(name)).ok_or_else(|| MetaError::not_found("share", name))?;
                changed.push(StateKey::Share(fold(name)));
                Ok(Applied::ShareDeleted(share))
            }
            Command::PutUser { name, nt_hash, role } => {
                names::check_user_name(name)?;
                let key = fold(name);
                if !self.users.contains_key(&key) && self.users.len() >= MAX_USERS {
                    return Err(limit("max_users", MAX_USERS, name));
                }
                let user = User { name: name.clone(), nt_hash: *nt_hash, role: *role };
                let info = UserInfo::from(&user);
                self.users.insert(key.clone(), user);
                changed.push(StateKey::User(key));
                Ok(Applied::User(info))
            }
            Command::DeleteUser { name } => {
                let user = self.users.remove(&fold(name)).ok_or_else(|| MetaError::not_found("user", name))?;
                changed.push(StateKey::User(fold(name)));
                Ok(Applied::UserDeleted(UserInfo::from(&user)))
            }
        }
    }

    fn create_volume(&mut self, id: Uuid, name: &str, owner: NodeId, members: &BTreeSet<NodeId>, changed: &mut Vec<StateKey>) -> Response {
        names::check_volume_name(name)?;
        if !members.contains(&owner) {
            return Err(MetaError::UnknownNode { node: owner });
        }
        if let Some(existing) = self.volume_by_name(name) {
            return Err(MetaError::AlreadyExists { kind: "volume".into(), name: name.into(), existing: existing.name.clone() });
        }
        if self.volumes.contains_key(&id) {
            return Err(MetaError::AlreadyExists { kind: "volume".into(), name: id.to_string(), existing: id.to_string() });
        }
        if self.volumes.len() >= MAX_VOLUMES {
            return Err(limit("max_volumes", MAX_VOLUMES, name));
        }
        let volume = Volume { id, name: name.into(), owner, created_ms: self.clock_ms };
        self.volumes.insert(id, volume.clone());
        changed.push(StateKey::Volume(id));
        Ok(Applied::Volume(volume))
    }

    fn create_share(&mut self, name: &str, volume: &str, path: &str, read_only: bool, changed: &mut Vec<StateKey>) -> Response {
        names::check_share_name(name)?;
        let path = names::normalize_share_path(path)?;
        let volume = self.find_volume(volume).ok_or_else(|| MetaError::not_found("volume", volume))?.id;
        let key = fold(name);
        if let Some(existing) = self.shares.get(&key) {
            return Err(MetaError::AlreadyExists { kind: "share".into(), name: name.into(), existing: existing.name.clone() });
        }
        if self.shares.len() >= MAX_SHARES {
            return Err(limit("max_shares", MAX_SHARES, name));
        }
        let share = Share { name: name.into(), volume, path, read_only, created_ms: self.clock_ms, snapshot: None };
        self.shares.insert(key.clone(), share.clone());
        changed.push(StateKey::Share(key));
        Ok(Applied::Share(share))
    }

    /// A volume by name (any case) or by uuid.
    pub fn find_volume(&self, name_or_id: &str) -> Option<&Volume> {
        match Uuid::parse_str(name_or_id) {
            Ok(id) => self.volumes.get(&id),
            Err(_) => self.volume_by_name(name_or_id),
        }
    }

    fn volume_by_name(&self, name: &str) -> Option<&Volume> {
        let key = fold(name);
        self.volumes.values().find(|v| fold(&v.name) == key)
    }
}

fn limit(name: &str, max: usize, what: &str) -> MetaError {
    MetaError::LimitReached { limit: name.into(), max, what: crate::names::shown(what) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{NtHash, Role};
    use proptest::prelude::*;

    fn members() -> BTreeSet<NodeId> {
        [1, 2, 3].into()
    }

    fn run(state: &mut MetaState, index: u64, command: Command) -> Response {
        state.apply(index, &Request::new(command), &members(), &mut Vec::new())
    }

    fn volume(name: &str, owner: NodeId) -> Command {
        Command::CreateVolume { id: Uuid::new_v4(), name: name.into(), owner }
    }

    fn share(name: &str, volume: &str) -> Command {
        Command::CreateShare { name: name.into(), volume: volume.into(), path: "/".into(), read_only: false }
    }

    #[test]
    fn share_names_are_case_insensitive_and_case_preserving() {
        let mut s = MetaState::default();
        run(&mut s, 1, volume("v1", 1)).unwrap();
        let created = run(&mut s, 2, share("Backups", "V1")).unwrap();
        assert!(matches!(created, Applied::Share(ref sh) if sh.name == "Backups"));
        let dup = run(&mut s, 3, share("BACKUPS", "v1")).unwrap_err();
        assert_eq!(dup, MetaError::AlreadyExists { kind: "share".into(), name: "BACKUPS".into(), existing: "Backups".into() });
        assert_eq!(s.shares.len(), 1);
    }

    #[test]
    fn unknown_volume_and_unknown_owner_are_refused() {
        let mut s = MetaState::default();
        assert_eq!(run(&mut s, 1, share("a", "nope")).unwrap_err(), MetaError::not_found("volume", "nope"));
        assert_eq!(run(&mut s, 2, volume("v", 9)).unwrap_err(), MetaError::UnknownNode { node: 9 });
        assert!(s.volumes.is_empty() && s.shares.is_empty());
    }

    #[test]
    fn a_retried_request_applies_once_and_gets_the_first_answer() {
        let mut s = MetaState::default();
        run(&mut s, 1, volume("v", 1)).unwrap();
        let req = Request::new(share("a", "v"));
        let first = s.apply(2, &req, &members(), &mut Vec::new());
        let before = s.clone();
        let retry = s.apply(3, &req, &members(), &mut Vec::new());
        assert_eq!(first, retry);
        assert!(retry.is_ok(), "the retry reports success, not 'already exists'");
        assert_eq!(s, before);
    }

    #[test]
    fn dedupe_table_is_bounded() {
        let mut s = MetaState::default();
        for i in 0..(MAX_DEDUPE_ENTRIES as u64 + 10) {
            let cmd = Command::DeleteUser { name: format!("u{i}") };
            let _ = run(&mut s, i + 1, cmd);
        }
        assert_eq!(s.dedupe.len(), MAX_DEDUPE_ENTRIES);
        assert_eq!(s.dedupe_index.len(), MAX_DEDUPE_ENTRIES);
    }

    #[test]
    fn leader_stamps_never_move_the_clock_back() {
        let mut s = MetaState::default();
        let mut req = Request::new(volume("v", 1));
        req.stamp_ms = 1000;
        s.apply(1, &req, &members(), &mut Vec::new()).unwrap();
        let mut req = Request::new(volume("w", 1));
        req.stamp_ms = 900;
        let Applied::Volume(w) = s.apply(2, &req, &members(), &mut Vec::new()).unwrap() else { panic!() };
        assert_eq!(w.created_ms, 1000);
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        let name = prop::sample::select(vec!["a", "A", "b", "B", "c", "bad/name", ""]);
        prop_oneof![
            (name.clone(), 0u64..5).prop_map(|(n, o)| volume(n, o)),
            (name.clone(), name.clone()).prop_map(|(n, v)| share(n, v)),
            name.clone().prop_map(|n| Command::DeleteShare { name: n.into() }),
            (name.clone(), any::<[u8; 16]>()).prop_map(|(n, h)| Command::PutUser { name: n.into(), nt_hash: NtHash(h), role: Role::User }),
            name.prop_map(|n| Command::DeleteUser { name: n.into() }),
        ]
    }

    proptest! {
        /// Replaying the same log gives the same state on every node, and a state that went
        /// through a snapshot (serialise, load, reindex) keeps answering the same way.
        #[test]
        fn apply_is_deterministic_and_survives_snapshots(cmds in prop::collection::vec(arb_command(), 1..60)) {
            let reqs: Vec<Request> = cmds.into_iter().map(Request::new).collect();
            let mut a = MetaState::default();
            let mut b = MetaState::default();
            let split = reqs.len() / 2;
            for (i, r) in reqs.iter().enumerate() {
                let ra = a.apply(i as u64 + 1, r, &members(), &mut Vec::new());
                if i == split {
                    let json = serde_json::to_vec(&b).unwrap();
                    b = serde_json::from_slice(&json).unwrap();
                    b.reindex();
                }
                let rb = b.apply(i as u64 + 1, r, &members(), &mut Vec::new());
                prop_assert_eq!(ra, rb);
            }
            prop_assert_eq!(&a, &b);
            for sh in a.shares.values() {
                prop_assert!(a.volumes.contains_key(&sh.volume), "a share always names an existing volume");
            }
        }
    }
}
