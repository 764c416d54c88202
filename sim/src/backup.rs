//! Workload (c): a backup client driving shadow-copy sets through one node's coordinator at a
//! time, as the gateway's \PIPE\FssagentRpc dispatch drives it (`Coordinator::call` with the
//! caller and a decoded `Call`, share names already reduced from UNC): GetSupportedVersion,
//! SetContext, StartShadowCopySet, AddToShadowCopySet for both shares, PrepareShadowCopySet,
//! CommitShadowCopySet, then ExposeShadowCopySet and GetShareMapping (and, for half the sets,
//! DeleteShareMapping of every copy, as a backup application does once it has the data), or
//! AbortShadowCopySet after a failure. The client runs on the node it talks to (as the pipe layer does); when that
//! node dies the set is abandoned mid-way and the next set goes through another node.
//!
//! The [`Board`] is shared by the driver and every node: whose turn it is, the commit phase
//! last reached (the driver may crash the coordinator there), and what each set came to.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use umbra_node::fsrvp::{Client, Coordinator, Phases};
use umbra_raft::fsrvp::FsrvpError;
use umbra_raft::NodeId;
use umbra_smb_gateway::rpc::fsrvp::{Call, Out};
use uuid::Uuid;

/// The shares the backup client puts in every set (one per volume, owned by nodes 1 and 2).
pub const SHARES: [&str; 2] = ["s1", "s2"];
/// The client's CommitShadowCopySet timeout.
pub const COMMIT_TIMEOUT_MS: u32 = 3000;
/// At most this many sets per run (bounded work per seed).
pub const MAX_SETS_PER_RUN: usize = 24;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetEnd {
    /// Committed and exposed.
    Exposed,
    /// Committed, exposed, then deleted (DeleteShareMapping for every copy), as a backup
    /// application does once it has copied the data.
    Deleted,
    /// Committed, Expose failed.
    Committed,
    /// A call failed (the set was aborted, or left to the timers).
    Failed(String),
    /// Its node died mid-way.
    Abandoned,
}

pub struct BoardState {
    pub nodes: u64,
    /// The node whose client runs the next set, and whether one is under way.
    pub turn: NodeId,
    pub busy: bool,
    /// Virtual time (since the run began) before which no set starts; none after `stop_at`.
    pub next_at: Duration,
    pub stop_at: Duration,
    pub started: usize,
    rng: SmallRng,
    /// The last commit phase a coordinator reached, for the driver's phase crashes.
    pub phase: Option<(NodeId, &'static str)>,
    /// Each set tried: its id (if Start answered), the node, and how it ended.
    pub sets: Vec<(Option<Uuid>, NodeId, Option<SetEnd>)>,
    pub trace: Vec<(Duration, String)>,
}

#[derive(Clone)]
pub struct Board(Arc<Mutex<BoardState>>);

impl Board {
    pub fn new(seed: u64, nodes: u64, stop_at: Duration) -> Self {
        Board(Arc::new(Mutex::new(BoardState {
            nodes,
            turn: 1,
            busy: false,
            next_at: Duration::from_millis(1500),
            stop_at,
            started: 0,
            rng: SmallRng::seed_from_u64(seed ^ 0xbac_c0b),
            phase: None,
            sets: Vec::new(),
            trace: Vec::new(),
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, BoardState> {
        self.0.lock().expect("backup board")
    }

    /// The coordinator's test-only phase observer for node `id`.
    pub fn phase_hook(&self, id: NodeId) -> Phases {
        let board = self.clone();
        Phases(Arc::new(move |phase| board.lock().phase = Some((id, phase))))
    }

    /// Node `id` went down: a set under way there is abandoned, and the turn moves on.
    pub fn node_down(&self, id: NodeId, now: Duration) {
        let mut b = self.lock();
        if b.turn != id {
            return;
        }
        if b.busy {
            if let Some(last) = b.sets.last_mut() {
                last.2.get_or_insert(SetEnd::Abandoned);
            }
            b.trace.push((now, format!("backup: set on n{id} abandoned (node down)")));
        }
        b.busy = false;
        b.pass_turn(now);
    }
}

impl BoardState {
    fn pass_turn(&mut self, now: Duration) {
        self.turn = self.rng.random_range(1..=self.nodes);
        self.next_at = now + Duration::from_millis(self.rng.random_range(100..600));
    }
}

fn now() -> Duration {
    turmoil::elapsed()
}

/// Node `me`'s side of the backup client: runs a set whenever it is this node's turn.
pub async fn run(me: NodeId, c: Arc<Coordinator>, board: Board) {
    let client = Client { user: "backup".into(), address: "10.0.0.99".into() };
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let go = {
            let mut b = board.lock();
            let t = now();
            let go = b.turn == me && !b.busy && t >= b.next_at && t < b.stop_at && b.started < MAX_SETS_PER_RUN;
            if go {
                b.busy = true;
                b.started += 1;
                b.sets.push((None, me, None));
            }
            go
        };
        if !go {
            continue;
        }
        let end = match one_set(&c, &client, &board).await {
            Ok(end) => end,
            Err(e) => SetEnd::Failed(e.to_string()),
        };
        let mut b = board.lock();
        b.trace.push((now(), format!("backup via n{me}: {end:?}")));
        if let Some(last) = b.sets.last_mut() {
            last.2.get_or_insert(end);
        }
        b.busy = false;
        b.pass_turn(now());
    }
}

async fn one_set(c: &Coordinator, client: &Client, board: &Board) -> Result<SetEnd, FsrvpError> {
    c.call(client, &Call::GetSupportedVersion).await?;
    c.call(client, &Call::SetContext { context: 0 }).await?;
    let Out::SetId(set) = c.call(client, &Call::StartShadowCopySet { client_set_id: Uuid::nil() }).await? else {
        return Err(FsrvpError::Failed("Start answered no set id".into()));
    };
    if let Some(last) = board.lock().sets.last_mut() {
        last.0 = Some(set);
    }
    let copies = match fill_and_commit(c, client, set).await {
        Ok(copies) => copies,
        Err(e) => {
            // As a backup application does after a failed call: abort (best effort; the
            // sequence timer and the attempt deadline clean up if this fails too).
            let _ = c.call(client, &Call::AbortShadowCopySet { set_id: set }).await;
            return Err(e);
        }
    };
    if c.call(client, &Call::ExposeShadowCopySet { set_id: set, timeout_ms: COMMIT_TIMEOUT_MS }).await.is_err() {
        return Ok(SetEnd::Committed);
    }
    for (share, copy) in SHARES.iter().zip(&copies) {
        c.call(client, &Call::GetShareMapping { copy_id: *copy, set_id: set, share: share.to_string(), level: 1 }).await?;
    }
    if !board.lock().rng.random_bool(0.5) {
        return Ok(SetEnd::Exposed);
    }
    for (share, copy) in SHARES.iter().zip(&copies) {
        c.call(client, &Call::DeleteShareMapping { set_id: set, copy_id: *copy, share: share.to_string() }).await?;
    }
    Ok(SetEnd::Deleted)
}

async fn fill_and_commit(c: &Coordinator, client: &Client, set: Uuid) -> Result<Vec<Uuid>, FsrvpError> {
    let mut copies = Vec::new();
    for share in SHARES {
        match c.call(client, &Call::AddToShadowCopySet { client_copy_id: Uuid::nil(), set_id: set, share: share.into() }).await? {
            Out::CopyId(copy) => copies.push(copy),
            other => return Err(FsrvpError::Failed(format!("Add answered {other:?}"))),
        }
    }
    c.call(client, &Call::PrepareShadowCopySet { set_id: set, timeout_ms: COMMIT_TIMEOUT_MS }).await?;
    c.call(client, &Call::CommitShadowCopySet { set_id: set, timeout_ms: COMMIT_TIMEOUT_MS }).await?;
    Ok(copies)
}
