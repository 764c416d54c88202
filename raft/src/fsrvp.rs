//! FSRVP state in the metadata state machine (MS-FSRVP 3.1.1's abstract data; design.md
//! sections 2 and 5), without I/O.
//!
//! Every FSRVP rule that decides an answer is checked here, inside apply, as a compare-and-set:
//! two gateways racing to Start both propose, and the log decides which one gets
//! SHADOW_COPY_SET_IN_PROGRESS. Ids (sets, copies, snapshots) come from the proposer; time is
//! the leader stamp (`clock_ms`). The message sequence timer is a deadline per client; it is
//! evaluated lazily at the start of every FSRVP command (and by the leader's `FsrvpExpire`
//! ticks), so expiry does not depend on any node's clock at apply time.
//!
//! Result codes follow Samba's server where the spec and Samba differ (fsrvp.md 4.3), with the
//! cluster rules of design.md: one set in creation per cluster, the context copied into the set
//! at Start and scoped per client, and a second share on a volume already in a set mapped to that
//! volume's shadow copy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::{Share, ShareSnapshot};
use crate::names::fold;
use crate::types::NodeId;

/// The message sequence timer's two values (MS-FSRVP 3.1.2.1), in ms.
pub const SHORT_TIMEOUT_MS: u64 = 180_000;
pub const LONG_TIMEOUT_MS: u64 = 1_800_000;
/// Sets kept at once (any state); one more Start is refused.
pub const MAX_SETS: usize = 256;
/// Shadow copies (volumes) in one set, and mappings (shares) per copy.
pub const MAX_COPIES_PER_SET: usize = 64;
pub const MAX_MAPPINGS_PER_COPY: usize = 64;
/// Clients with a context at once.
pub const MAX_CLIENTS: usize = 1024;
/// Decided commit attempts remembered (undecided ones are never dropped; at most one exists).
pub const MAX_ATTEMPTS: usize = 1024;
/// The longest a commit may take (TimeOutInMilliseconds is clamped to it).
pub const MAX_COMMIT_MS: u64 = 600_000;

/// MS-FSRVP 2.2.2.2 context attribute: writable between Expose and RecoveryComplete.
pub const ATTR_AUTO_RECOVERY: u32 = 0x0040_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SetState {
    Started,
    Added,
    CreationInProgress,
    Committed,
    Exposed,
    Recovered,
}

impl SetState {
    /// A set in these states keeps another from starting (Samba: Exposed does not block).
    fn in_creation(self) -> bool {
        matches!(self, SetState::Started | SetState::Added | SetState::CreationInProgress | SetState::Committed)
    }

    /// A set in these states is dropped when its sequence timer fires (Samba: not once exposed;
    /// during a commit the attempt's deadline rules instead).
    fn timed(self) -> bool {
        matches!(self, SetState::Started | SetState::Added | SetState::Committed)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowSet {
    pub id: Uuid,
    /// Who started it (the client the sequence timer belongs to).
    pub client: String,
    pub context: u32,
    pub state: SetState,
    pub copies: Vec<ShadowCopy>,
    /// The live or last commit attempt's token.
    pub attempt: Option<u64>,
    /// Leader time of the commit (ms), unique to the second among sets.
    pub committed_ms: u64,
    pub started_ms: u64,
    /// This set's own sequence timer (leader time, ms): a set Started, Added or Committed is
    /// dropped when it passes, whatever its client's timer was armed for since (the client's
    /// timer follows its last call, which may be about another set, and goes with
    /// RecoveryComplete).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

impl ShadowSet {
    pub fn writable(&self) -> bool {
        self.context & ATTR_AUTO_RECOVERY != 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowCopy {
    pub id: Uuid,
    pub volume: Uuid,
    /// The committed snapshot on the volume's owner (set by the Committed decision).
    pub snapshot: Option<Uuid>,
    pub mappings: Vec<Mapping>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// The base share, as created.
    pub share: String,
    /// `share@{copy-guid}` (with a trailing `$` for hidden shares).
    pub exposed: String,
    pub is_exposed: bool,
    /// The base share's folder in its volume and whether it was read-only, when it was added:
    /// what the exposed share serves, even if the base share is deleted or changed meanwhile.
    /// (None in state written before these were kept: the base share as it is now.)
    #[serde(default)]
    pub base: Option<(String, bool)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Committed,
    Aborted,
}

/// One try at committing a set: the fenced two-phase protocol's durable record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub set: Uuid,
    /// The log index of the entry that began it.
    pub token: u64,
    /// Leader time after which the attempt is aborted if undecided.
    pub deadline_ms: u64,
    pub participants: Vec<Participant>,
    pub decision: Option<Decision>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub copy: Uuid,
    pub volume: Uuid,
    pub owner: NodeId,
    /// The tentative snapshot the owner takes at its fence point.
    pub snapshot: Uuid,
}

/// One client's context and sequence timer (ContextSet, CurrentContext, the timer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientContext {
    pub context: u32,
    /// When the timer fires (leader time, ms); `None`: stopped.
    pub deadline_ms: Option<u64>,
    /// The set the timer was armed for.
    pub set: Option<Uuid>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsrvpState {
    pub sets: BTreeMap<Uuid, ShadowSet>,
    pub attempts: BTreeMap<u64, Attempt>,
    pub clients: BTreeMap<String, ClientContext>,
    /// The sequence timer setting: `None` the protocol's 180/1800 s, `Some(0)` off, `Some(s)`
    /// every value replaced by `s` seconds (Samba's `fss: sequence timeout`).
    pub timeout_s: Option<u32>,
}

/// Why an FSRVP command was refused; the gateway maps each to a result code (one table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "fsrvp", content = "detail", rename_all = "snake_case")]
pub enum FsrvpError {
    #[error("the shadow-copy set is not in a state that allows this ({0})")]
    BadState(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    ObjectNotFound(String),
    #[error("already in the set: {0}")]
    AlreadyExists(String),
    #[error("another shadow-copy set is in creation: {0}")]
    InProgress(Uuid),
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("the set is not exposed yet")]
    NotExposed,
    #[error("the commit did not finish within its timeout")]
    Timeout,
    /// Anything else (an owner unreachable, no quorum): the wire's E_FAIL.
    #[error("{0}")]
    Failed(String),
}

/// What an FSRVP command answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fsrvp", content = "value", rename_all = "snake_case")]
pub enum FsrvpAnswer {
    Done,
    Set(ShadowSet),
    Copy(Uuid),
    Attempt(Attempt),
    Decided(Decision),
    Mapping(MappingInfo),
    /// A DeleteShareMapping that removed its copy: the owner should drop this snapshot.
    MappingDeleted { removed: Option<RemovedCopy> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingInfo {
    pub set: Uuid,
    pub copy: Uuid,
    pub share: String,
    pub exposed: Option<String>,
    pub committed_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedCopy {
    pub volume: Uuid,
    pub snapshot: Option<Uuid>,
    pub writable: bool,
    pub copy: Uuid,
}

/// FSRVP commands (part of [`crate::command::Command`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fsrvp_op", rename_all = "snake_case")]
pub enum FsrvpCommand {
    SetContext { client: String, context: u32 },
    Start { client: String, set: Uuid },
    Add { set: Uuid, copy: Uuid, share: String },
    Prepare { set: Uuid },
    /// Phase 1: the set goes CreationInProgress; the entry's index is the attempt token.
    /// `seed` makes the participants' snapshot ids (seed xor copy id).
    BeginCommit { set: Uuid, seed: Uuid, timeout_ms: u64 },
    /// The commit point: one compare-and-set per attempt.
    Decide { set: Uuid, token: u64, decision: Decision },
    Expose { set: Uuid },
    GetMapping { set: Uuid, copy: Uuid, share: String, level: u32 },
    RecoveryComplete { set: Uuid },
    Abort { set: Uuid },
    DeleteMapping { set: Uuid, copy: Uuid, share: String },
    /// Operator removal (`umbra ctl shadow delete`): any state but CreationInProgress.
    DeleteSet { set: Uuid },
    /// The leader's timer tick: expires what is due.
    Expire,
    SetTimeout { seconds: Option<u32> },
}

/// What apply needs from the rest of the state, and what it may change there (shares).
pub struct Env<'a> {
    pub clock_ms: u64,
    pub index: u64,
    pub shares: &'a mut BTreeMap<String, Share>,
    pub owners: &'a dyn Fn(Uuid) -> Option<NodeId>,
    /// Folded names of shares changed (for persistence).
    pub changed_shares: &'a mut Vec<String>,
}

type Answer = Result<FsrvpAnswer, FsrvpError>;

fn invalid(what: impl Into<String>) -> FsrvpError {
    FsrvpError::InvalidArgument(what.into())
}

fn bad_state(s: SetState) -> FsrvpError {
    FsrvpError::BadState(format!("{s:?}"))
}

impl FsrvpState {
    pub fn apply(&mut self, cmd: &FsrvpCommand, env: &mut Env) -> Answer {
        // The attempt a Decide names is decided by it, not expired first: a coordinator that
        // reports its own timeout leaves the set in Added (Samba's "commit failed"), while an
        // attempt nobody decides (its coordinator died) is expired and its set dropped.
        let deciding = match cmd {
            FsrvpCommand::Decide { token, .. } => Some(*token),
            _ => None,
        };
        self.expire_due(env, deciding);
        match cmd {
            FsrvpCommand::SetContext { client, context } => self.set_context(client, *context, env),
            FsrvpCommand::Start { client, set } => self.start(client, *set, env),
            FsrvpCommand::Add { set, copy, share } => self.add(*set, *copy, share, env),
            FsrvpCommand::Prepare { set } => {
                let s = self.set_in(*set, &[SetState::Added])?;
                let client = s.client.clone();
                self.arm(&client, *set, LONG_TIMEOUT_MS, env);
                Ok(FsrvpAnswer::Done)
            }
            FsrvpCommand::BeginCommit { set, seed, timeout_ms } => self.begin_commit(*set, *seed, *timeout_ms, env),
            FsrvpCommand::Decide { set, token, decision } => self.decide(*set, *token, *decision, env),
            FsrvpCommand::Expose { set } => self.expose(*set, env),
            FsrvpCommand::GetMapping { set, copy, share, level } => self.get_mapping(*set, *copy, share, *level, env),
            FsrvpCommand::RecoveryComplete { set } => self.recovery_complete(*set, env),
            FsrvpCommand::Abort { set } => self.abort(*set),
            FsrvpCommand::DeleteMapping { set, copy, share } => self.delete_mapping(*set, *copy, share, env),
            FsrvpCommand::DeleteSet { set } => {
                let s = self.sets.get(set).ok_or_else(|| FsrvpError::ObjectNotFound(format!("shadow-copy set {set}")))?;
                if s.state == SetState::CreationInProgress {
                    return Err(bad_state(s.state));
                }
                self.remove_set(*set, env);
                Ok(FsrvpAnswer::Done)
            }
            FsrvpCommand::Expire => Ok(FsrvpAnswer::Done),
            FsrvpCommand::SetTimeout { seconds } => {
                self.timeout_s = *seconds;
                Ok(FsrvpAnswer::Done)
            }
        }
    }

    /// The earliest leader time at which something is due (a client's timer or an attempt's
    /// deadline): the leader proposes `Expire` then.
    pub fn next_due_ms(&self) -> Option<u64> {
        let timers = self.clients.values().filter_map(|c| c.deadline_ms);
        let sets = self.sets.values().filter(|s| s.state.timed()).filter_map(|s| s.deadline_ms);
        let attempts = self.attempts.values().filter(|a| a.decision.is_none()).map(|a| a.deadline_ms);
        timers.chain(sets).chain(attempts).min()
    }

    /// Sequence timers and commit deadlines that have passed at the entry's stamp.
    fn expire_due(&mut self, env: &mut Env, deciding: Option<u64>) {
        let now = env.clock_ms;
        let due: Vec<u64> = self.attempts.values().filter(|a| a.decision.is_none() && a.deadline_ms <= now && Some(a.token) != deciding).map(|a| a.token).collect();
        for token in due {
            // Its coordinator is gone (or far too slow): abort the attempt and drop the set, so
            // a dead coordinator does not hold "one set in creation" for the client's timer.
            let set = self.attempts[&token].set;
            let _ = self.decide(set, token, Decision::Aborted, env);
            if self.sets.get(&set).is_some_and(|s| s.state == SetState::Added && s.attempt == Some(token)) {
                self.remove_set(set, env);
            }
        }
        let expired: Vec<String> = self.clients.iter().filter(|(_, c)| c.deadline_ms.is_some_and(|d| d <= now)).map(|(k, _)| k.clone()).collect();
        for client in expired {
            let Some(ctx) = self.clients.remove(&client) else { continue };
            // Samba: only the set the timer was armed for, and only before it is exposed.
            if let Some(set) = ctx.set {
                if self.sets.get(&set).is_some_and(|s| s.state.timed()) {
                    self.remove_set(set, env);
                }
            }
        }
        // And every set whose own timer passed, whoever's timer moved elsewhere since.
        let lapsed: Vec<Uuid> = self.sets.values().filter(|s| s.state.timed() && s.deadline_ms.is_some_and(|d| d <= now)).map(|s| s.id).collect();
        for set in lapsed {
            self.remove_set(set, env);
        }
    }

    fn timer_ms(&self, protocol_ms: u64) -> Option<u64> {
        match self.timeout_s {
            None => Some(protocol_ms),
            Some(0) => None,
            Some(s) => Some(u64::from(s) * 1000),
        }
    }

    fn arm(&mut self, client: &str, set: Uuid, protocol_ms: u64, env: &Env) {
        let deadline = self.timer_ms(protocol_ms).map(|ms| env.clock_ms + ms);
        if let Some(s) = self.sets.get_mut(&set) {
            s.deadline_ms = deadline;
        }
        if let Some(c) = self.clients.get_mut(client) {
            c.deadline_ms = deadline;
            c.set = Some(set);
        }
    }

    fn stop_timer(&mut self, client: &str) {
        if let Some(c) = self.clients.get_mut(client) {
            c.deadline_ms = None;
        }
    }

    fn set_context(&mut self, client: &str, context: u32, env: &Env) -> Answer {
        if !valid_context(context) {
            return Err(invalid(format!("context {context:#x}")));
        }
        if !self.clients.contains_key(client) && self.clients.len() >= MAX_CLIENTS {
            return Err(FsrvpError::InProgress(Uuid::nil()));
        }
        let deadline = self.timer_ms(SHORT_TIMEOUT_MS).map(|ms| env.clock_ms + ms);
        // A set this client still has in creation keeps its timer and deadline: a new context
        // must not orphan it. (The simulation found a Start whose answer the client never got,
        // then a SetContext that cleared the set's timer: the set stayed Started forever and
        // refused every later Start, cluster-wide.)
        let old = self.clients.get(client).filter(|c| c.set.is_some_and(|s| self.sets.get(&s).is_some_and(|s| s.state.in_creation())));
        let (deadline, set) = match old {
            Some(c) => (c.deadline_ms.or(deadline), c.set),
            None => (deadline, None),
        };
        self.clients.insert(client.to_string(), ClientContext { context, deadline_ms: deadline, set });
        Ok(FsrvpAnswer::Done)
    }

    fn start(&mut self, client: &str, id: Uuid, env: &Env) -> Answer {
        let ctx = self.clients.get(client).ok_or_else(|| FsrvpError::BadState("no context set".into()))?;
        if let Some(busy) = self.sets.values().find(|s| s.state.in_creation()) {
            return Err(FsrvpError::InProgress(busy.id));
        }
        if self.sets.len() >= MAX_SETS {
            return Err(FsrvpError::InProgress(Uuid::nil()));
        }
        if id.is_nil() || self.sets.contains_key(&id) {
            return Err(invalid("set id"));
        }
        let set = ShadowSet { id, client: client.into(), context: ctx.context, state: SetState::Started, copies: Vec::new(), attempt: None, committed_ms: 0, started_ms: env.clock_ms, deadline_ms: None };
        self.sets.insert(id, set.clone());
        self.arm(client, id, SHORT_TIMEOUT_MS, env);
        Ok(FsrvpAnswer::Set(set))
    }

    fn set_in(&self, id: Uuid, states: &[SetState]) -> Result<&ShadowSet, FsrvpError> {
        let s = self.sets.get(&id).ok_or_else(|| invalid(format!("unknown shadow-copy set {id}")))?;
        if !states.contains(&s.state) {
            return Err(bad_state(s.state));
        }
        Ok(s)
    }

    fn add(&mut self, id: Uuid, copy_id: Uuid, share: &str, env: &Env) -> Answer {
        let set = self.sets.get(&id).ok_or_else(|| invalid(format!("unknown shadow-copy set {id}")))?;
        let base = env.shares.get(&fold(share)).ok_or_else(|| invalid(format!("unknown share {share:?}")))?;
        if base.snapshot.is_some() {
            return Err(FsrvpError::NotSupported(format!("{share:?} is itself a shadow copy")));
        }
        if !matches!(set.state, SetState::Started | SetState::Added) {
            return Err(bad_state(set.state));
        }
        let (name, volume, kept) = (base.name.clone(), base.volume, Some((base.path.clone(), base.read_only)));
        let client = set.client.clone();
        if set.copies.iter().flat_map(|c| &c.mappings).any(|m| fold(&m.share) == fold(&name)) {
            self.arm(&client, id, SHORT_TIMEOUT_MS, env);
            return Err(FsrvpError::AlreadyExists(name));
        }
        let set = self.sets.get_mut(&id).expect("checked above");
        let answer = match set.copies.iter_mut().find(|c| c.volume == volume) {
            // A different share on a volume already in the set maps to its shadow copy.
            Some(copy) => {
                if copy.mappings.len() >= MAX_MAPPINGS_PER_COPY {
                    return Err(invalid("too many shares on one volume in a set"));
                }
                copy.mappings.push(Mapping { exposed: exposed_name(&name, copy.id), share: name, is_exposed: false, base: kept });
                copy.id
            }
            None => {
                if set.copies.len() >= MAX_COPIES_PER_SET {
                    return Err(invalid(format!("a set holds at most {MAX_COPIES_PER_SET} volumes")));
                }
                if copy_id.is_nil() || set.copies.iter().any(|c| c.id == copy_id) {
                    return Err(invalid("copy id"));
                }
                let mapping = Mapping { exposed: exposed_name(&name, copy_id), share: name, is_exposed: false, base: kept };
                set.copies.push(ShadowCopy { id: copy_id, volume, snapshot: None, mappings: vec![mapping] });
                copy_id
            }
        };
        set.state = SetState::Added;
        self.arm(&client, id, LONG_TIMEOUT_MS, env);
        Ok(FsrvpAnswer::Copy(answer))
    }

    fn begin_commit(&mut self, id: Uuid, seed: Uuid, timeout_ms: u64, env: &mut Env) -> Answer {
        let set = self.set_in(id, &[SetState::Added, SetState::CreationInProgress])?;
        if set.state == SetState::CreationInProgress {
            // A second Commit waits for the live attempt; it never starts another.
            let token = set.attempt.ok_or_else(|| bad_state(set.state))?;
            return self.attempts.get(&token).cloned().map(FsrvpAnswer::Attempt).ok_or_else(|| bad_state(SetState::CreationInProgress));
        }
        let mut participants = Vec::new();
        for c in &set.copies {
            let owner = (env.owners)(c.volume).ok_or_else(|| FsrvpError::NotSupported(format!("volume {} is gone", c.volume)))?;
            let snapshot = Uuid::from_u128(seed.as_u128() ^ c.id.as_u128());
            participants.push(Participant { copy: c.id, volume: c.volume, owner, snapshot });
        }
        let client = set.client.clone();
        let attempt = Attempt { set: id, token: env.index, deadline_ms: env.clock_ms + timeout_ms.clamp(1, MAX_COMMIT_MS), participants, decision: None };
        self.prune_attempts();
        self.attempts.insert(env.index, attempt.clone());
        let set = self.sets.get_mut(&id).expect("checked above");
        set.state = SetState::CreationInProgress;
        set.attempt = Some(env.index);
        set.deadline_ms = None;
        self.stop_timer(&client);
        Ok(FsrvpAnswer::Attempt(attempt))
    }

    fn prune_attempts(&mut self) {
        while self.attempts.len() >= MAX_ATTEMPTS {
            let Some(oldest) = self.attempts.values().find(|a| a.decision.is_some()).map(|a| a.token) else { break };
            self.attempts.remove(&oldest);
        }
    }

    /// Compare-and-set: decides `token` only if it is still undecided; answers the decision
    /// that holds (which may be another proposer's).
    fn decide(&mut self, id: Uuid, token: u64, decision: Decision, env: &Env) -> Answer {
        let attempt = self.attempts.get_mut(&token).ok_or_else(|| invalid(format!("unknown attempt {token}")))?;
        if attempt.set != id {
            return Err(invalid(format!("attempt {token} belongs to another set")));
        }
        if let Some(done) = attempt.decision {
            return Ok(FsrvpAnswer::Decided(done));
        }
        attempt.decision = Some(decision);
        let participants = attempt.participants.clone();
        let Some(set) = self.sets.get_mut(&id) else { return Ok(FsrvpAnswer::Decided(decision)) };
        if set.attempt != Some(token) || set.state != SetState::CreationInProgress {
            return Ok(FsrvpAnswer::Decided(decision));
        }
        let client = set.client.clone();
        match decision {
            Decision::Committed => {
                for p in participants {
                    if let Some(c) = set.copies.iter_mut().find(|c| c.id == p.copy) {
                        c.snapshot = Some(p.snapshot);
                    }
                }
                set.state = SetState::Committed;
                let stamp = unique_second(env.clock_ms, self.sets.values().filter(|s| s.id != id).map(|s| s.committed_ms));
                self.sets.get_mut(&id).expect("present").committed_ms = stamp;
            }
            Decision::Aborted => set.state = SetState::Added,
        }
        self.arm(&client, id, SHORT_TIMEOUT_MS, env);
        Ok(FsrvpAnswer::Decided(decision))
    }

    fn expose(&mut self, id: Uuid, env: &mut Env) -> Answer {
        let set = self.set_in(id, &[SetState::Committed])?.clone();
        let writable = set.writable();
        for copy in &set.copies {
            let snapshot = copy.snapshot.ok_or_else(|| bad_state(set.state))?;
            for m in &copy.mappings {
                let now = || env.shares.get(&fold(&m.share)).map(|b| (b.path.clone(), b.read_only));
                let (path, base_ro) = m.base.clone().or_else(now).unwrap_or(("/".into(), true));
                let snap = ShareSnapshot { set: id, copy: copy.id, snapshot, clone: writable.then_some(copy.id), base: m.share.clone() };
                let share = Share { name: m.exposed.clone(), volume: copy.volume, path, read_only: base_ro || !writable, created_ms: set.committed_ms, snapshot: Some(snap) };
                env.shares.insert(fold(&m.exposed), share);
                env.changed_shares.push(fold(&m.exposed));
            }
        }
        let set = self.sets.get_mut(&id).expect("checked above");
        for m in set.copies.iter_mut().flat_map(|c| c.mappings.iter_mut()) {
            m.is_exposed = true;
        }
        set.state = SetState::Exposed;
        let client = set.client.clone();
        self.arm(&client, id, SHORT_TIMEOUT_MS, env);
        Ok(FsrvpAnswer::Set(self.sets[&id].clone()))
    }

    fn get_mapping(&mut self, id: Uuid, copy: Uuid, share: &str, level: u32, env: &Env) -> Answer {
        let set = self.sets.get(&id).ok_or_else(|| invalid(format!("unknown shadow-copy set {id}")))?;
        if set.state < SetState::Exposed {
            return Err(FsrvpError::NotExposed);
        }
        let c = set.copies.iter().find(|c| c.id == copy).ok_or_else(|| invalid(format!("unknown shadow copy {copy}")))?;
        let m = c.mappings.iter().find(|m| fold(&m.share) == fold(share)).ok_or_else(|| invalid(format!("share {share:?} is not in the shadow copy")))?;
        if level != 1 {
            return Err(invalid(format!("level {level}")));
        }
        let info = MappingInfo { set: id, copy, share: m.share.clone(), exposed: m.is_exposed.then(|| m.exposed.clone()), committed_ms: set.committed_ms };
        let client = set.client.clone();
        if set.state == SetState::Exposed {
            self.arm(&client, id, LONG_TIMEOUT_MS, env);
        }
        Ok(FsrvpAnswer::Mapping(info))
    }

    fn recovery_complete(&mut self, id: Uuid, env: &mut Env) -> Answer {
        let set = self.set_in(id, &[SetState::Exposed])?.clone();
        for m in set.copies.iter().flat_map(|c| &c.mappings) {
            if let Some(s) = env.shares.get_mut(&fold(&m.exposed)) {
                s.read_only = true;
                env.changed_shares.push(fold(&m.exposed));
            }
        }
        self.sets.get_mut(&id).expect("checked above").state = SetState::Recovered;
        // ContextSet = FALSE; the timer stops and is not restarted.
        self.clients.remove(&set.client);
        Ok(FsrvpAnswer::Set(self.sets[&id].clone()))
    }

    fn abort(&mut self, id: Uuid) -> Answer {
        let set = self.sets.get(&id).ok_or_else(|| invalid(format!("unknown shadow-copy set {id}")))?;
        match set.state {
            SetState::CreationInProgress => Err(bad_state(set.state)),
            SetState::Started | SetState::Added => {
                self.sets.remove(&id);
                Ok(FsrvpAnswer::Done)
            }
            // Samba: aborting a committed, exposed or recovered set does nothing.
            _ => Ok(FsrvpAnswer::Done),
        }
    }

    fn delete_mapping(&mut self, id: Uuid, copy: Uuid, share: &str, env: &mut Env) -> Answer {
        let set = self.sets.get(&id).ok_or_else(|| FsrvpError::ObjectNotFound(format!("shadow-copy set {id}")))?;
        if !matches!(set.state, SetState::Exposed | SetState::Recovered) {
            return Err(bad_state(set.state));
        }
        let writable = set.writable();
        let ci = set.copies.iter().position(|c| c.id == copy).ok_or_else(|| invalid(format!("unknown shadow copy {copy}")))?;
        let mi = set.copies[ci].mappings.iter().position(|m| fold(&m.share) == fold(share)).ok_or_else(|| invalid(format!("share {share:?} is not in the shadow copy")))?;
        let set = self.sets.get_mut(&id).expect("checked above");
        let mapping = set.copies[ci].mappings.remove(mi);
        if env.shares.remove(&fold(&mapping.exposed)).is_some() {
            env.changed_shares.push(fold(&mapping.exposed));
        }
        let mut removed = None;
        if set.copies[ci].mappings.is_empty() {
            let c = set.copies.remove(ci);
            removed = Some(RemovedCopy { volume: c.volume, snapshot: c.snapshot, writable, copy: c.id });
        }
        if set.copies.is_empty() {
            self.sets.remove(&id);
        }
        Ok(FsrvpAnswer::MappingDeleted { removed })
    }

    /// Removes a set and any shares it exposed (their snapshots are dropped by the owners'
    /// reconcile, which finds them referenced by no set).
    fn remove_set(&mut self, id: Uuid, env: &mut Env) {
        let Some(set) = self.sets.remove(&id) else { return };
        for m in set.copies.iter().flat_map(|c| &c.mappings) {
            if env.shares.remove(&fold(&m.exposed)).is_some() {
                env.changed_shares.push(fold(&m.exposed));
            }
        }
    }

    /// How an owner should treat a fenced snapshot it holds (design.md 5, step 5).
    pub fn resolve_snapshot(&self, volume: Uuid, snapshot: Uuid, token: u64) -> SnapshotFate {
        for set in self.sets.values() {
            for c in &set.copies {
                if c.volume == volume && c.snapshot == Some(snapshot) && set.state >= SetState::Committed {
                    return SnapshotFate::Keep { writable_clone: (set.state == SetState::Exposed && set.writable()).then_some(c.id), sealed: set.state == SetState::Recovered };
                }
            }
        }
        match self.attempts.get(&token) {
            Some(a) if a.decision.is_none() && a.participants.iter().any(|p| p.snapshot == snapshot) => SnapshotFate::Wait,
            _ => SnapshotFate::Delete,
        }
    }
}

/// An owner's answer for one of its fenced snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotFate {
    /// Part of a committed set: keep it (and commit it if still tentative).
    Keep { writable_clone: Option<Uuid>, sealed: bool },
    /// Its attempt is undecided.
    Wait,
    /// Aborted, or known to no set: delete.
    Delete,
}

/// The four contexts (MS-FSRVP 2.2.2.2), optionally with ATTR_AUTO_RECOVERY.
pub fn valid_context(context: u32) -> bool {
    matches!(context & !ATTR_AUTO_RECOVERY, 0x0 | 0x10 | 0x19 | 0x9)
}

/// `share@{copy-guid}`, with a `$` after it when the base share is hidden.
pub fn exposed_name(share: &str, copy: Uuid) -> String {
    let hidden = if share.ends_with('$') { "$" } else { "" };
    format!("{share}@{{{copy}}}{hidden}")
}

/// `now` rounded down to the second, bumped a second at a time until no other set has it
/// (@GMT tokens have one-second resolution).
fn unique_second(now_ms: u64, others: impl Iterator<Item = u64>) -> u64 {
    let taken: std::collections::BTreeSet<u64> = others.map(|ms| ms / 1000).collect();
    let mut s = now_ms / 1000;
    while taken.contains(&s) {
        s += 1;
    }
    s * 1000
}

#[cfg(test)]
mod tests;
