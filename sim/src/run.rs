//! One simulation run, fixed by its seed: three nodes as turmoil hosts, a client writing
//! metadata through any node, a client writing files, a backup client driving shadow-copy sets
//! through the nodes' coordinators, faults drawn from the seed's RNG, and the invariant checkers.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use umbra_node::fsrvp::BrokenCommit;
use umbra_node::volume::kv::MemKv;
use umbra_node::volume::View;
use umbra_proto::v1::admin_client::AdminClient;
use umbra_proto::v1::WriteRequest;
use umbra_raft::command::{Command, NtHash, Request, Role};
use umbra_raft::fsrvp::SetState;
use umbra_raft::store::mem::{Crash, MemDisk};
use umbra_raft::NodeId;
use uuid::Uuid;

use crate::backup::Board;
use crate::files::{self, Written, VOLUMES};
use crate::invariants::fence_ttl::FenceTtl;
use crate::invariants::{acked_writes_survive, converges, election_safety::ElectionSafety, file_writes_survive, no_orphan_snapshot, one_cut, one_set_in_creation, set_atomicity, set_liveness};
use crate::node::{self, host_name, Disk, NodeEnv, Registry, Stores, PORT};

/// Which faults a run draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// No faults: the baseline.
    Calm,
    /// Partitions (both ways, one way, isolating the leader) and delayed links.
    Partitions,
    /// Process deaths and restarts (buffered writes survive), the leader's included.
    Crashes,
    /// Power losses (unsynced writes lost), sometimes of the whole cluster at once.
    Power,
    /// All of the above.
    All,
}

/// Deliberately broken variants, to show the checkers can fail (test-only switches).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Broken {
    /// The Raft store never syncs (appends are reported flushed anyway).
    SkipLogSync,
    /// The Raft store never makes the vote durable.
    SkipVoteSync,
    /// Reads answer from the asked node's state without a read index (stale on followers).
    StaleReads,
    /// The coordinator releases each volume as soon as its own fence answers.
    ReleaseBeforeAllFenced,
    /// The coordinator commits whatever the fences and releases answered.
    CommitDespiteFailedFences,
    /// The volume store's engine never syncs (flushes and fences are reported durable anyway).
    SkipVolumeSync,
    /// The volume store's reclaim frees versions snapshots still read.
    ReclaimTooMuch,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub profile: Profile,
    pub broken: Option<Broken>,
    /// Virtual seconds of workload under faults (then faults heal).
    pub seconds: u64,
    pub nodes: u64,
    /// Volumes, file writes and shadow-copy sets too (off: the metadata-only simulation, as
    /// before the volumes joined it, which keeps old seeds replaying as they were found).
    pub volumes: bool,
}

pub struct Outcome {
    pub seed: u64,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    pub acked: usize,
    /// File writes acknowledged.
    pub file_writes: usize,
    /// Acknowledged file writes that power losses took before a flush covered them (allowed).
    pub file_writes_lost: usize,
    /// Shadow-copy sets tried, and those seen committed (Committed, Exposed or Recovered).
    pub sets_tried: usize,
    pub sets_committed: usize,
    pub simulated: Duration,
}

/// The simulated wall clock's start, after the Unix epoch: 2026-01-01T00:00:00Z.
const SIM_EPOCH_SINCE_UNIX: Duration = Duration::from_secs(1_767_225_600);

/// Message latency is drawn up to this (a slow link: more).
const MAX_LATENCY: Duration = Duration::from_millis(20);
/// Virtual time allowed after healing for a write to succeed and every node to agree.
const HEAL_BOUND: Duration = Duration::from_secs(20);

/// What a committed set's snapshots hold, copy by copy as each is seen promoted on its owner.
#[derive(Default)]
struct Cut {
    /// Every volume the set had a copy on, in any view.
    volumes: BTreeSet<Uuid>,
    /// The writes in each copy's snapshot, once read.
    read: BTreeMap<Uuid, BTreeSet<u64>>,
}

struct Driver {
    opts: Options,
    rng: SmallRng,
    disks: Vec<Disk>,
    volume_disks: Vec<MemKv>,
    /// Power losses so far: (node, when).
    power_losses: Vec<(NodeId, Duration)>,
    registry: Registry,
    stores: Stores,
    board: Board,
    trace: Rc<RefCell<Vec<String>>>,
    safety: ElectionSafety,
    fences: Arc<Mutex<FenceTtl>>,
    /// Per-step invariant violations (one set in creation, set atomicity at the decision).
    seen: Vec<String>,
    /// Sets checked for atomicity at their decision.
    decided_checked: BTreeSet<Uuid>,
    /// What each committed set's snapshots hold, read once they are promoted (the one-cut
    /// checker's input for sets removed before the end).
    cuts: BTreeMap<Uuid, Cut>,
    /// Each set's states seen so far on any node (for the trace).
    set_states: BTreeSet<(Uuid, SetState)>,
    /// The time of the last observation.
    now: Duration,
    /// What the file writer saw (for reading cuts at decisions).
    written: Rc<RefCell<Written>>,
    /// A crash armed for the coordinator's next commit phase: (phase, kind).
    phase_crash: Option<(&'static str, Crash)>,
    /// A link made lossy, with the time to make it reliable again.
    lossy: Option<(Duration, (String, String))>,
    /// A link made slow, with the time to make it fast again.
    slow: Option<(Duration, (String, String))>,
    /// Nodes down, with the time to restart them.
    down: Vec<(NodeId, Duration)>,
    /// Links cut or held, with the time to repair them.
    cut: Option<(Duration, Vec<(String, String)>, bool)>,
    next_fault: Duration,
}

fn log(trace: &Rc<RefCell<Vec<String>>>, now: Duration, what: String) {
    trace.borrow_mut().push(format!("{:>8}ms {what}", now.as_millis()));
}

/// One simulation at a time in a process (see [`align_task_ids`]).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A multiple of the number of lists a tokio current-thread runtime shards its tasks over (4).
const TASK_ID_ALIGNMENT: u64 = 64;

/// Makes the next tokio task id a multiple of [`TASK_ID_ALIGNMENT`].
///
/// Why a run needs it: tokio numbers tasks from one counter for the whole process, and a
/// runtime keeps its tasks in lists chosen by that number. When turmoil crashes a host it drops
/// the host's runtime, which drops the tasks list by list; every connection dropped sends a FIN
/// or RST whose latency is drawn from the seeded RNG, so the order decides the rest of the run.
/// A run therefore starts at an aligned id, and holds [`ONE_AT_A_TIME`] so that no other
/// simulation in the process takes ids meanwhile. (Found by the determinism test with tests run
/// in parallel threads.)
fn align_task_ids() {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime to count tasks on");
    loop {
        let id: u64 = rt.spawn(async {}).id().to_string().parse().expect("a tokio task id prints as a number");
        if (id + 1) % TASK_ID_ALIGNMENT == 0 {
            return;
        }
    }
}

/// Runs one seed. Deterministic: the same options give the same outcome and trace, provided
/// nothing else in the process spawns tokio tasks meanwhile (other simulations wait their turn).
pub fn run(opts: Options) -> Outcome {
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    align_task_ids();
    crate::net::install();
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(opts.seconds) + HEAL_BOUND * 3)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(MAX_LATENCY)
        .enable_random_order()
        .rng_seed(opts.seed)
        // A fixed wall-clock start (turmoil's default is the real time): the node's clock
        // (file times, @GMT tokens, request stamps) must not depend on when the run started.
        .epoch(std::time::SystemTime::UNIX_EPOCH + SIM_EPOCH_SINCE_UNIX)
        .build();
    let disks: Vec<Disk> = (0..opts.nodes).map(|_| MemDisk::shared()).collect();
    for d in &disks {
        let mut d = d.lock().expect("disk");
        d.skip_sync = opts.broken == Some(Broken::SkipLogSync);
        d.skip_vote_sync = opts.broken == Some(Broken::SkipVoteSync);
    }
    let volume_disks: Vec<MemKv> = (0..opts.nodes).map(|_| MemKv::new()).collect();
    if opts.broken == Some(Broken::SkipVolumeSync) {
        volume_disks.iter().for_each(MemKv::break_syncs_for_tests);
    }
    let heal_at = Duration::from_secs(opts.seconds);
    let registry: Registry = Arc::new(Mutex::new(Default::default()));
    let stores: Stores = Arc::new(Mutex::new(Default::default()));
    let board = Board::new(opts.seed, opts.nodes, heal_at);
    let fences = Arc::new(Mutex::new(FenceTtl::default()));
    let broken_commit = match opts.broken {
        Some(Broken::ReleaseBeforeAllFenced) => Some(BrokenCommit::ReleaseBeforeAllFenced),
        Some(Broken::CommitDespiteFailedFences) => Some(BrokenCommit::CommitDespiteFailedFences),
        _ => None,
    };
    for id in 1..=opts.nodes {
        let env = NodeEnv {
            id,
            nodes: opts.nodes,
            seed: opts.seed,
            disk: disks[(id - 1) as usize].clone(),
            volume_disk: volume_disks[(id - 1) as usize].clone(),
            registry: registry.clone(),
            stores: stores.clone(),
            board: board.clone(),
            fences: fences.clone(),
            stale_reads: opts.broken == Some(Broken::StaleReads),
            volumes: opts.volumes,
            broken_commit,
            broken_reclaim: opts.broken == Some(Broken::ReclaimTooMuch),
            boots: Arc::new(Mutex::new(0)),
        };
        sim.host(host_name(id), move || node::run(env.clone()));
    }
    let trace = Rc::new(RefCell::new(Vec::new()));
    let acked = Rc::new(RefCell::new(Vec::new()));
    let live = Rc::new(RefCell::new(None));
    let reads = Rc::new(RefCell::new(Vec::new()));
    let written = Rc::new(RefCell::new(Written::default()));
    sim.client("client", workload(opts.clone(), acked.clone(), live.clone(), trace.clone(), heal_at, reads.clone()));
    if opts.volumes {
        sim.client("writer", files::writer(opts.seed, opts.nodes, heal_at, written.clone()));
    }

    let mut d = Driver {
        rng: SmallRng::seed_from_u64(opts.seed ^ 0x5eed_fa17),
        opts,
        disks,
        volume_disks,
        power_losses: Vec::new(),
        registry,
        stores,
        board,
        trace: trace.clone(),
        safety: ElectionSafety::default(),
        fences,
        seen: Vec::new(),
        decided_checked: BTreeSet::new(),
        cuts: BTreeMap::new(),
        set_states: BTreeSet::new(),
        now: Duration::ZERO,
        written: written.clone(),
        phase_crash: None,
        lossy: None,
        slow: None,
        down: Vec::new(),
        cut: None,
        next_fault: Duration::from_secs(2),
    };
    let mut violations = Vec::new();
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                violations.push(format!("simulation error: {e}"));
                break;
            }
        }
        let now = sim.elapsed();
        d.observe(now);
        d.faults(&mut sim, now, heal_at);
    }
    // Quiet: let every node apply what was committed and reconcile, then compare.
    let quiet_until = sim.elapsed() + Duration::from_secs(10);
    while sim.elapsed() < quiet_until {
        if let Err(e) = sim.step() {
            violations.push(format!("simulation error: {e}"));
            break;
        }
        let now = sim.elapsed();
        d.observe(now);
    }
    for (id, (raft, _)) in d.registry.lock().expect("registry").iter() {
        let m = raft.metrics().borrow().clone();
        let line = format!(
            "final n{id}: {:?} term {} leader {:?} last log {:?} applied {:?} snapshot {:?} purged {:?}",
            m.state,
            m.current_term,
            m.current_leader,
            m.last_log_index,
            m.last_applied.map(|l| l.index),
            m.snapshot.map(|l| l.index),
            m.purged.map(|l| l.index)
        );
        log(&trace, sim.elapsed(), line);
    }
    violations.append(&mut d.safety.violations);
    violations.append(&mut d.fences.lock().expect("fence checker").violations);
    violations.append(&mut d.seen);
    let stale = reads.borrow();
    violations.extend(stale.iter().take(3).cloned());
    if stale.len() > 3 {
        violations.push(format!("linearizable reads: {} more stale reads", stale.len() - 3));
    }
    drop(stale);
    match *live.borrow() {
        Some(true) => {}
        Some(false) => violations.push(format!("liveness: no write succeeded within {} s of healing", HEAL_BOUND.as_secs())),
        None => violations.push("liveness: the workload did not finish".into()),
    }
    let acked = acked.borrow().clone();
    let states: Vec<(u64, BTreeSet<String>)> = d
        .registry
        .lock()
        .expect("registry")
        .iter()
        .map(|(id, r)| (*id, r.1.read().state.users.values().map(|u| u.name.clone()).collect()))
        .collect();
    for (id, users) in &states {
        acked_writes_survive::check(*id, &acked, users, &mut violations);
    }
    converges::check(&states, &mut violations);
    // Whole state machines, not only users: nodes that applied the same log index hold the
    // same state (shares, volumes, shadow-copy sets and their decisions, the dedupe table).
    let whole: Vec<(u64, Option<u64>, umbra_raft::state::MetaState)> =
        d.registry.lock().expect("registry").iter().map(|(id, (raft, reader))| (*id, raft.metrics().borrow().last_applied.map(|l| l.index), reader.read().state.clone())).collect();
    let compared = converges::check_whole(&whole, &mut violations);
    log(&trace, sim.elapsed(), format!("whole state machines compared: {compared} pairs of nodes at the same applied index"));
    let (sets_tried, sets_committed, file_writes_lost) = if d.opts.volumes { d.check_volumes(&written.borrow(), sim.elapsed(), &mut violations) } else { (0, 0, 0) };
    for (at, line) in std::mem::take(&mut d.board.lock().trace) {
        log(&trace, at, line);
    }
    let simulated = sim.elapsed();
    drop(sim);
    let file_writes = written.borrow().acked.len();
    let mut trace = trace.borrow().clone();
    // Trace lines from the board were logged after the run: order by time, stably.
    trace.sort_by_key(|l| l.split("ms").next().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0));
    Outcome { seed: d.opts.seed, violations, trace, acked: acked.len(), file_writes, file_writes_lost, sets_tried, sets_committed, simulated }
}

impl Driver {
    /// Election safety, from every running node's own view.
    fn observe(&mut self, now: Duration) {
        self.now = now;
        let views: Vec<(NodeId, u64, bool)> = self
            .registry
            .lock()
            .expect("registry")
            .iter()
            .map(|(id, (raft, _))| {
                let m = raft.metrics().borrow().clone();
                (*id, m.current_term, m.state == openraft::ServerState::Leader)
            })
            .collect();
        for (id, term, leads) in views {
            if leads && self.safety.observe(id, term) {
                log(&self.trace, now, format!("leader n{id} term {term}"));
            }
        }
        // Sets seen decided Committed for the first time (in any running node's view).
        let mut decided: BTreeMap<Uuid, umbra_raft::fsrvp::ShadowSet> = BTreeMap::new();
        let mut committed = Vec::new();
        for (id, (_, reader)) in self.registry.lock().expect("registry").iter() {
            let state = reader.read();
            one_set_in_creation::check(*id, &state.state.fsrvp, &mut self.seen);
            for s in state.state.fsrvp.sets.values() {
                if self.set_states.insert((s.id, s.state)) {
                    let copies: Vec<String> = s.copies.iter().map(|c| format!("{}:{:?}", c.volume.as_u128(), c.snapshot)).collect();
                    log(&self.trace, now, format!("set {} {:?} (seen on n{id}; copies {})", s.id, s.state, copies.join(" ")));
                }
            }
            for s in state.state.fsrvp.sets.values().filter(|s| s.state >= SetState::Committed) {
                if !self.decided_checked.contains(&s.id) {
                    decided.entry(s.id).or_insert_with(|| s.clone());
                }
                // Only sets with a copy whose cut is still to read (this runs every tick).
                let unread = |c: &umbra_raft::fsrvp::ShadowCopy| self.cuts.get(&s.id).is_none_or(|cut| !cut.read.contains_key(&c.volume));
                if s.copies.iter().any(unread) {
                    committed.push(s.clone());
                }
            }
        }
        let decided: Vec<umbra_raft::fsrvp::ShadowSet> = decided.into_values().collect();
        self.check_decided(&decided);
        self.record_cuts(&committed);
    }

    /// Set atomicity at the decision, for sets seen Committed for the first time, when their
    /// owners all run. A set whose owner is down then is not checked later here: a node
    /// restarted from an old Raft snapshot replays decisions of sets removed since (whose
    /// snapshots are rightly gone); the end of the run checks every set that still stands.
    fn check_decided(&mut self, sets: &[umbra_raft::fsrvp::ShadowSet]) {
        let stores = self.stores.lock().expect("stores").clone();
        for set in sets {
            if !self.decided_checked.insert(set.id) {
                continue;
            }
            let owners: Option<Vec<_>> = set.copies.iter().map(|c| files::owner_of(c.volume).and_then(|o| stores.get(&o)).and_then(|s| s.upgrade())).collect();
            let Some(owners) = owners else {
                log(&self.trace, self.now, format!("set {} decided while an owner is down: checked at the end if it stands", set.id));
                continue;
            };
            let lists: BTreeMap<Uuid, Vec<umbra_node::volume::SnapshotInfo>> = set.copies.iter().zip(&owners).map(|(c, store)| (c.volume, store.snapshots(c.volume).unwrap_or_default())).collect();
            set_atomicity::check_decided(set, |v| lists.get(&v).cloned().unwrap_or_default(), &mut self.seen);
        }
    }

    /// What a committed set's snapshots hold, read once every copy's snapshot is committed on
    /// its running owner (the one-cut checker's input for sets removed before the end).
    fn record_cuts(&mut self, sets: &[umbra_raft::fsrvp::ShadowSet]) {
        let stores = self.stores.lock().expect("stores").clone();
        let inos = self.written.borrow().ino;
        for set in sets {
            let cut = self.cuts.entry(set.id).or_default();
            for copy in &set.copies {
                cut.volumes.insert(copy.volume);
                if cut.read.contains_key(&copy.volume) {
                    continue;
                }
                let i = if copy.volume == files::volume_id(0) { 0 } else { 1 };
                let store = files::owner_of(copy.volume).and_then(|o| stores.get(&o)).and_then(|s| s.upgrade());
                let (Some(store), Some(snap), Some(ino)) = (store, copy.snapshot, inos[i]) else { continue };
                let committed = store.snapshots(copy.volume).unwrap_or_default().iter().any(|s| s.id == snap && s.state == umbra_node::volume::SnapshotState::Committed);
                if !committed {
                    continue; // not promoted yet (or its owner is down): read it later
                }
                let view = View::Snapshot(snap);
                // A read that fails is tried again later, never taken for an empty cut.
                match store.stat(copy.volume, view, ino).and_then(|n| store.read(copy.volume, view, ino, 0, n.size)) {
                    Ok(data) => {
                        cut.read.insert(copy.volume, files::seqs_in(&data));
                    }
                    Err(e) => log(&self.trace, self.now, format!("set {}: its committed snapshot of volume {} did not read ({e}); read later", set.id, copy.volume.as_u128())),
                }
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        let reg = self.registry.lock().expect("registry");
        reg.iter().find(|(_, (r, _))| r.metrics().borrow().state == openraft::ServerState::Leader).map(|(id, _)| *id)
    }

    fn crash(&mut self, sim: &mut turmoil::Sim, id: NodeId, kind: Crash, now: Duration) {
        sim.crash(host_name(id));
        self.registry.lock().expect("registry").remove(&id);
        self.stores.lock().expect("stores").remove(&id);
        self.fences.lock().expect("fence checker").node_down(id);
        self.board.node_down(id, now);
        self.disks[(id - 1) as usize].lock().expect("disk").crash(kind);
        let volume_disk = &self.volume_disks[(id - 1) as usize];
        if kind == Crash::PowerLoss {
            // Some of the WAL written since the last sync may have reached the disk.
            let reached = self.rng.random_range(0..=volume_disk.unsynced_batches());
            volume_disk.power_loss(reached);
            self.power_losses.push((id, now));
        }
        // A process death keeps the volume disk as it is: the node reopens what it wrote.
        let back = now + Duration::from_millis(self.rng.random_range(300..2000));
        self.down.push((id, back));
        log(&self.trace, now, format!("crash n{id} ({kind:?})"));
    }

    fn faults(&mut self, sim: &mut turmoil::Sim, now: Duration, heal_at: Duration) {
        // Restarts and repairs that are due (all of them once the faults heal).
        let healing = now >= heal_at;
        let due: Vec<NodeId> = self.down.iter().filter(|(_, at)| healing || *at <= now).map(|(id, _)| *id).collect();
        for id in due {
            self.down.retain(|(d, _)| *d != id);
            sim.bounce(host_name(id));
            log(&self.trace, now, format!("restart n{id}"));
        }
        if let Some((at, links, held)) = self.cut.take() {
            if healing || at <= now {
                for (a, b) in &links {
                    if held {
                        sim.release(a.as_str(), b.as_str());
                    } else {
                        sim.repair(a.as_str(), b.as_str());
                    }
                }
                log(&self.trace, now, "links repaired".into());
            } else {
                self.cut = Some((at, links, held));
            }
        }
        if let Some((at, (a, b))) = self.lossy.take() {
            if healing || at <= now {
                sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
                log(&self.trace, now, format!("link {a} <-> {b} reliable again"));
            } else {
                self.lossy = Some((at, (a, b)));
            }
        }
        if let Some((at, (a, b))) = self.slow.take() {
            if healing || at <= now {
                sim.set_link_max_message_latency(a.as_str(), b.as_str(), MAX_LATENCY);
                log(&self.trace, now, format!("link {a} <-> {b} fast again"));
            } else {
                self.slow = Some((at, (a, b)));
            }
        }
        let reached = self.board.lock().phase.take();
        if let (Some((phase, kind)), Some((node, p))) = (self.phase_crash, reached) {
            if p == phase && !healing {
                self.phase_crash = None;
                log(&self.trace, now, format!("coordinator n{node} reached {phase}"));
                self.crash(sim, node, kind, now);
            }
        }
        if healing {
            self.phase_crash = None;
        }
        let busy = self.cut.is_some() || !self.down.is_empty() || self.phase_crash.is_some() || self.lossy.is_some() || self.slow.is_some();
        if healing || now < self.next_fault || busy || self.opts.profile == Profile::Calm {
            return;
        }
        self.next_fault = now + Duration::from_millis(self.rng.random_range(500..2500));
        // Kinds 9-12 need the volumes (coordinator isolation, lossy links, phase crashes); the
        // metadata-only lists are as before, so old seeds replay unchanged.
        let kinds: &[u8] = match (self.opts.profile, self.opts.volumes) {
            (Profile::Calm, _) => &[],
            (Profile::Partitions, false) => &[0, 1, 2, 3],
            (Profile::Crashes, false) => &[4, 5],
            (Profile::Power, false) => &[6, 7, 8],
            (Profile::All, false) => &[0, 1, 2, 3, 4, 5, 6, 7, 8],
            (Profile::Partitions, true) => &[0, 1, 2, 3, 9, 10, 13, 13],
            (Profile::Crashes, true) => &[4, 5, 11],
            (Profile::Power, true) => &[6, 7, 8, 12],
            (Profile::All, true) => &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 13],
        };
        let kind = kinds[self.rng.random_range(0..kinds.len())];
        let n = self.opts.nodes;
        let victim = self.rng.random_range(1..=n);
        let others: Vec<NodeId> = (1..=n).filter(|&i| i != victim).collect();
        let repair_at = now + Duration::from_millis(self.rng.random_range(300..3000));
        match kind {
            0 | 2 => {
                // Isolate a node (2: the leader, if there is one) both ways.
                let v = if kind == 2 { self.leader().unwrap_or(victim) } else { victim };
                let links: Vec<(String, String)> = (1..=n).filter(|&i| i != v).map(|o| (host_name(v), host_name(o))).collect();
                for (a, b) in &links {
                    sim.partition(a.as_str(), b.as_str());
                }
                log(&self.trace, now, format!("partition n{v} from the others{}", if kind == 2 { " (leader)" } else { "" }));
                self.cut = Some((repair_at, links, false));
            }
            1 => {
                let to = others[self.rng.random_range(0..others.len())];
                sim.partition_oneway(host_name(victim).as_str(), host_name(to).as_str());
                log(&self.trace, now, format!("partition one way n{victim} -> n{to}"));
                self.cut = Some((repair_at, vec![(host_name(victim), host_name(to))], false));
            }
            3 => {
                // Delay: messages on a link are held, then delivered late (and reordered).
                let to = others[self.rng.random_range(0..others.len())];
                sim.hold(host_name(victim).as_str(), host_name(to).as_str());
                log(&self.trace, now, format!("hold n{victim} <-> n{to}"));
                self.cut = Some((repair_at, vec![(host_name(victim), host_name(to))], true));
            }
            4 => self.crash(sim, victim, Crash::ProcessDeath, now),
            5 => {
                let v = self.leader().unwrap_or(victim);
                self.crash(sim, v, Crash::ProcessDeath, now);
            }
            6 => self.crash(sim, victim, Crash::PowerLoss, now),
            7 => {
                let v = self.leader().unwrap_or(victim);
                self.crash(sim, v, Crash::PowerLoss, now);
            }
            9 => {
                // Isolate the node whose backup client (and so coordinator) is at work.
                let v = self.board.lock().turn;
                let links: Vec<(String, String)> = (1..=n).filter(|&i| i != v).map(|o| (host_name(v), host_name(o))).collect();
                for (a, b) in &links {
                    sim.partition(a.as_str(), b.as_str());
                }
                log(&self.trace, now, format!("partition n{v} from the others (coordinator)"));
                self.cut = Some((repair_at, links, false));
            }
            10 => {
                // A lossy link: each message may break it (dropped until the next one repairs it).
                let to = others[self.rng.random_range(0..others.len())];
                let (a, b) = (host_name(victim), host_name(to));
                sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.05);
                log(&self.trace, now, format!("lossy link {a} <-> {b}"));
                self.lossy = Some((repair_at, (a, b)));
            }
            13 => {
                // A slow link between the coordinator's node and another: its fence answers late.
                // The other end owns a volume the coordinator's node does not (n1 and n2 own one each).
                let v = self.board.lock().turn;
                let to = match v {
                    1 => 2,
                    2 => 1,
                    _ => self.rng.random_range(1..=2),
                };
                let (a, b) = (host_name(v), host_name(to));
                let slow = Duration::from_millis(self.rng.random_range(100..600));
                sim.set_link_max_message_latency(a.as_str(), b.as_str(), slow);
                log(&self.trace, now, format!("slow link {a} <-> {b} (up to {} ms)", slow.as_millis()));
                self.slow = Some((repair_at, (a, b)));
            }
            11 | 12 => {
                let phase = ["begun", "fenced", "released"][self.rng.random_range(0..3)];
                let crash = if kind == 11 { Crash::ProcessDeath } else { Crash::PowerLoss };
                log(&self.trace, now, format!("armed: crash the coordinator at {phase} ({crash:?})"));
                self.phase_crash = Some((phase, crash));
            }
            _ => {
                // The whole cluster loses power at once.
                for id in 1..=n {
                    self.crash(sim, id, Crash::PowerLoss, now);
                }
            }
        }
    }
}

impl Driver {
    /// The volume checks once quiet: file writes survive, set atomicity and no orphan, one
    /// cut, set liveness. Reads the owners' stores directly. Returns the sets tried, those
    /// committed, and the acknowledged file writes power losses took (as allowed).
    fn check_volumes(&self, written: &Written, now: Duration, violations: &mut Vec<String>) -> (usize, usize, usize) {
        let tried = self.board.lock().sets.len();
        if !written.ready {
            violations.push("workload: the file writer never got its volumes and files".into());
            return (tried, 0, 0);
        }
        let Some(fsrvp) = self.registry.lock().expect("registry").values().next().map(|(_, r)| r.read().state.fsrvp.clone()) else {
            violations.push("no node is running at the end".into());
            return (tried, 0, 0);
        };
        let stores = self.stores.lock().expect("stores").clone();
        let mut snapshots = BTreeMap::new();
        let mut acked_per = [Vec::new(), Vec::new()];
        for a in &written.acked {
            acked_per[a.volume].push(*a);
        }
        let mut lost_to_power = BTreeSet::new();
        for (i, (owner, _, name, _)) in VOLUMES.iter().enumerate() {
            let vol = files::volume_id(i);
            let Some(store) = stores.get(owner).and_then(|s| s.upgrade()) else {
                violations.push(format!("volume {name}'s owner n{owner} is not running at the end"));
                return (tried, 0, 0);
            };
            let ino = written.ino[i].unwrap_or_default();
            let read = |view: View| -> BTreeSet<u64> {
                let size = store.stat(vol, view, ino).map(|n| n.size).unwrap_or(0);
                files::seqs_in(&store.read(vol, view, ino, 0, size).unwrap_or_default())
            };
            let live = read(View::Live);
            let losses: Vec<Duration> = self.power_losses.iter().filter(|(n, _)| n == owner).map(|(_, at)| *at).collect();
            lost_to_power.extend(file_writes_survive::check(name, &live, &acked_per[i], &written.flushed[i], &losses, violations));
            snapshots.insert(vol, store.snapshots(vol).unwrap_or_default());
        }
        // Writes a power loss took (allowed) are not required in later cuts.
        let acked_all: Vec<u64> = written.acked.iter().map(|a| a.k).filter(|k| !lost_to_power.contains(k)).collect();
        set_atomicity::check(&fsrvp, &snapshots, violations);
        no_orphan_snapshot::check(&fsrvp, &snapshots, violations);
        set_liveness::check(&fsrvp, violations);
        // One cut, on every set ever committed (also those deleted, whole or copy by copy,
        // before the end), from its copies as read once promoted.
        for (id, cut) in &self.cuts {
            let end = fsrvp.sets.get(id).map_or("removed".to_string(), |s| format!("{:?}", s.state));
            if cut.read.len() < cut.volumes.len() {
                log(&self.trace, now, format!("set {id} ({end}): {} of {} copies read before they went; not checked", cut.read.len(), cut.volumes.len()));
                continue;
            }
            let parts: Vec<String> = cut.read.iter().map(|(v, seqs)| format!("{} holds {} writes, last {:?}", v.as_u128(), seqs.len(), seqs.iter().next_back())).collect();
            log(&self.trace, now, format!("set {id} ({end}): {}", parts.join(", ")));
            let held: BTreeSet<u64> = cut.read.values().flatten().copied().collect();
            one_cut::check(*id, &held, &acked_all, violations);
        }
        // Snapshots still standing read at the end exactly as when first read: restarts, power
        // losses, later writes and the reclaim of other snapshots changed nothing in them.
        let mut reread = 0;
        for (id, set) in fsrvp.sets.iter().filter(|(_, s)| s.state >= SetState::Committed) {
            let Some(cut) = self.cuts.get(id) else { continue };
            for copy in &set.copies {
                let (Some(first), Some(snap)) = (cut.read.get(&copy.volume), copy.snapshot) else { continue };
                let standing = snapshots.get(&copy.volume).is_some_and(|l| l.iter().any(|s| s.id == snap && s.state == umbra_node::volume::SnapshotState::Committed));
                let i = if copy.volume == files::volume_id(0) { 0 } else { 1 };
                let store = files::owner_of(copy.volume).and_then(|o| stores.get(&o)).and_then(|s| s.upgrade());
                let (true, Some(store), Some(ino)) = (standing, store, written.ino[i]) else { continue };
                let view = View::Snapshot(snap);
                match store.stat(copy.volume, view, ino).and_then(|n| store.read(copy.volume, view, ino, 0, n.size)) {
                    Ok(data) if files::seqs_in(&data) == *first => reread += 1,
                    Ok(data) => violations.push(format!("set {id}: its snapshot of volume {} holds {} writes at the end, {} when first read", copy.volume.as_u128(), files::seqs_in(&data).len(), first.len())),
                    Err(e) => violations.push(format!("set {id}: its snapshot of volume {} cannot be read at the end: {e}", copy.volume.as_u128())),
                }
            }
        }
        log(&self.trace, now, format!("{reread} standing snapshots read again at the end, each as first read"));
        // Committed at some point (a deleted set is no longer in the state at the end).
        let committed = self.set_states.iter().filter(|(_, st)| *st >= SetState::Committed).map(|(id, _)| id).collect::<BTreeSet<_>>().len();
        (tried, committed, lost_to_power.len())
    }
}

/// One write request through node `via`: `Some(true)` if the state machine accepted it,
/// `Some(false)` if it refused it, `None` if the node did not answer.
pub(crate) async fn write_via(via: NodeId, json: &[u8]) -> Option<bool> {
    let channel = umbra_raft::network::channel(&format!("{}:{PORT}", host_name(via))).ok()?;
    let mut client = AdminClient::new(channel);
    let call = client.write(WriteRequest { json: json.to_vec(), forwarded: false });
    let reply = tokio::time::timeout(Duration::from_secs(4), call).await.ok()?.ok()?;
    let response: umbra_raft::command::Response = serde_json::from_slice(&reply.into_inner().json).ok()?;
    Some(response.is_ok())
}

/// Whether node `via`'s answer to a users query holds u{k}; `None` if it did not answer.
async fn read_user(via: NodeId, k: u64) -> Option<bool> {
    let json = serde_json::to_vec(&umbra_raft::query::Query::Users).ok()?;
    let channel = umbra_raft::network::channel(&format!("{}:{PORT}", host_name(via))).ok()?;
    let mut client = AdminClient::new(channel);
    let call = client.query(umbra_proto::v1::QueryRequest { json });
    let reply = tokio::time::timeout(Duration::from_secs(4), call).await.ok()?.ok()?;
    match serde_json::from_slice(&reply.into_inner().json).ok()? {
        umbra_raft::query::QueryResult::Users(users) => Some(users.iter().any(|u| u.name == format!("u{k}"))),
        _ => None,
    }
}

/// The client: sequence-numbered metadata writes (users u0, u1, ...) through any node, each
/// retried with the same request id on other nodes; acknowledged ones are recorded. After the
/// faults heal, one more write must succeed within [`HEAL_BOUND`].
async fn workload(
    opts: Options,
    acked: Rc<RefCell<Vec<u64>>>,
    live: Rc<RefCell<Option<bool>>>,
    trace: Rc<RefCell<Vec<String>>>,
    heal_at: Duration,
    reads: Rc<RefCell<Vec<String>>>,
) -> turmoil::Result {
    let mut rng = SmallRng::seed_from_u64(opts.seed ^ 0xc11e_4700);
    let mut k = 0u64;
    let mut via = 1u64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    loop {
        let now = turmoil::elapsed();
        let healed = now >= heal_at;
        if healed && now >= heal_at + Duration::from_secs(1) {
            break;
        }
        let req = Request { request_id: Uuid::from_u128(rng.random()), stamp_ms: 0, command: Command::PutUser { name: format!("u{k}"), nt_hash: NtHash([k as u8; 16]), role: Role::User } };
        let json = serde_json::to_vec(&req)?;
        let mut ok = false;
        for _ in 0..opts.nodes * 2 {
            match write_via(via, &json).await {
                Some(true) => {
                    ok = true;
                    break;
                }
                Some(false) => {}
                None => via = via % opts.nodes + 1,
            }
        }
        if ok {
            acked.borrow_mut().push(k);
            log(&trace, turmoil::elapsed(), format!("ack u{k} via n{via}"));
            // A linearizable read through another node must see the acknowledged write.
            let other = via % opts.nodes + 1;
            if let Some(found) = read_user(other, k).await {
                if !found {
                    reads.borrow_mut().push(crate::invariants::linearizable_reads::violation(k, other));
                }
            }
        } else {
            log(&trace, turmoil::elapsed(), format!("gave up u{k}"));
        }
        k += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..200))).await;
    }
    // Liveness: faults have healed; a write must go through within the bound.
    let deadline = heal_at + HEAL_BOUND;
    let req = Request { request_id: Uuid::from_u128(rng.random()), stamp_ms: 0, command: Command::PutUser { name: format!("u{k}"), nt_hash: NtHash([0; 16]), role: Role::User } };
    let json = serde_json::to_vec(&req)?;
    while turmoil::elapsed() < deadline {
        if write_via(via, &json).await == Some(true) {
            acked.borrow_mut().push(k);
            log(&trace, turmoil::elapsed(), format!("ack u{k} after healing"));
            *live.borrow_mut() = Some(true);
            return Ok(());
        }
        via = via % opts.nodes + 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    *live.borrow_mut() = Some(false);
    Ok(())
}
