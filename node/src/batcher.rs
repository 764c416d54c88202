//! Gathers concurrent writes on the leader into one Raft entry ([`Proposal`]).
//!
//! openraft 0.9 waits for each append to be synced before it takes the next, so one command
//! per entry would cap commits at one per fsync. Here a loop takes every write queued while
//! earlier proposals were in flight, stamps them with the leader's time, and proposes them as
//! one entry; the state machine answers each request in order, and each caller gets its own
//! answer. At most [`MAX_PROPOSALS_IN_FLIGHT`] entries are in flight, so a busy leader makes
//! fewer, larger entries instead of a longer queue.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, Instant};
use umbra_raft::command::{Proposal, Request, Response};
use umbra_raft::store::MetaReader;
use umbra_raft::{NodeId, NodeInfo, Raft};

use crate::errors::NodeError;

/// Most requests in one Raft entry.
pub const MAX_REQUESTS_PER_PROPOSAL: usize = 512;
/// Writes waiting for a proposal before callers wait to enqueue.
pub const MAX_QUEUED_WRITES: usize = 8192;
/// Proposals submitted to Raft and not yet answered.
pub const MAX_PROPOSALS_IN_FLIGHT: usize = 2;

pub type ForwardErr = ForwardToLeader<NodeId, NodeInfo>;

/// What a caller gets: the answer and the entry's log index; or `Err(Ok(_))`, "not the leader,
/// go there"; or `Err(Err(_))`, a failure.
pub type Outcome = Result<(Response, u64), Result<ForwardErr, NodeError>>;

/// A failure shared by every request of a proposal.
#[derive(Clone)]
enum Shared {
    NotLeader(ForwardErr),
    NoQuorum { waited_ms: u64 },
    Membership(String),
    Stopped(String),
}

impl Shared {
    fn outcome(&self) -> Outcome {
        Err(match self {
            Shared::NotLeader(f) => Ok(f.clone()),
            Shared::NoQuorum { waited_ms } => Err(NodeError::NoQuorum { waited_ms: *waited_ms }),
            Shared::Membership(m) => Err(NodeError::Membership(m.clone())),
            Shared::Stopped(m) => Err(NodeError::Stopped(m.clone())),
        })
    }
}

struct Pending {
    request: Request,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Pending>,
    request_timeout: Duration,
}

impl Batcher {
    /// Starts the batching loop; it ends when every handle is dropped.
    pub fn start(raft: Raft, reader: MetaReader, request_timeout: Duration) -> Batcher {
        let (queue, rx) = mpsc::channel(MAX_QUEUED_WRITES);
        tokio::spawn(batch_loop(rx, raft, reader, request_timeout));
        Batcher { queue, request_timeout }
    }

    /// Proposes `request` in the next entry and waits for its answer until `deadline`.
    pub async fn propose(&self, request: Request, deadline: Instant) -> Outcome {
        let waited_ms = self.request_timeout.as_millis() as u64;
        let (reply, answer) = oneshot::channel();
        let enqueue = self.queue.send(Pending { request, reply });
        match timeout(deadline.saturating_duration_since(Instant::now()), async {
            enqueue.await.map_err(|_| Err(NodeError::Stopped("the write batcher has stopped".into())))?;
            answer.await.map_err(|_| Err(NodeError::Stopped("the write batcher dropped a request".into())))?
        })
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(Err(NodeError::NoQuorum { waited_ms })),
        }
    }
}

async fn batch_loop(mut rx: mpsc::Receiver<Pending>, raft: Raft, reader: MetaReader, request_timeout: Duration) {
    let in_flight = Arc::new(Semaphore::new(MAX_PROPOSALS_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_REQUESTS_PER_PROPOSAL {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        tokio::spawn(propose_batch(raft.clone(), reader.clone(), request_timeout, batch, permit));
    }
}

async fn propose_batch(raft: Raft, reader: MetaReader, request_timeout: Duration, batch: Vec<Pending>, _permit: OwnedSemaphorePermit) {
    let now_ms = umbra_raft::clock::now_ms();
    // Leader time never goes back: at least the newest stamp already applied.
    let stamp_ms = now_ms.max(reader.read().state.clock_ms);
    let (requests, replies): (Vec<Request>, Vec<oneshot::Sender<Outcome>>) = batch
        .into_iter()
        .map(|p| (Request { stamp_ms, ..p.request }, p.reply))
        .unzip();
    let size = requests.len();
    tracing::trace!(requests = size, "proposing");
    let result = timeout(request_timeout, raft.client_write(Proposal { requests })).await;
    let shared = match result {
        Ok(Ok(resp)) if resp.data.len() == size => {
            let index = resp.log_id.index;
            for (answer, reply) in resp.data.into_iter().zip(replies) {
                let _ = reply.send(Ok((answer, index)));
            }
            return;
        }
        Ok(Ok(resp)) => Shared::Stopped(format!("the state machine gave {} answers for {size} requests", resp.data.len())),
        Err(_) => Shared::NoQuorum { waited_ms: request_timeout.as_millis() as u64 },
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Shared::NotLeader(f),
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => Shared::Membership(e.to_string()),
        Ok(Err(RaftError::Fatal(f))) => Shared::Stopped(f.to_string()),
    };
    for reply in replies {
        let _ = reply.send(shared.outcome());
    }
}
