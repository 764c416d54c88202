//! The metadata façade every node offers: writes (proposed on the leader, forwarded from
//! followers), linearizable reads (read index through the leader), and membership changes.
//!
//! Every wait is bounded by `request_timeout`: with no leader or no quorum the caller gets
//! [`NodeError::NoQuorum`] or [`NodeError::NoLeader`], never a hang. A follower that forwarded a
//! write answers only once its own state machine has applied the write's log index, so a read
//! on that node right after sees it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tokio::time::{timeout, Instant};
use tonic::transport::Channel;
use umbra_proto::v1::admin_client::AdminClient;
use umbra_proto::v1::{AddNodeRequest, ReadIndexRequest, RemoveNodeRequest, WriteRequest};
use umbra_raft::command::{Request, Response};
use umbra_raft::query::{Query, QueryResult};
use umbra_raft::status::{node_status, Members, NodeStatus};
use umbra_raft::store::{LogStore, MetaReader};
use umbra_raft::{NodeId, NodeInfo, Raft, TypeConfig};

use crate::batcher::{Batcher, ForwardErr};
use crate::errors::NodeError;

/// Pause between attempts while a leader is being elected.
const LEADER_POLL: Duration = Duration::from_millis(50);
/// How long adding a node may take (the learner must catch up, maybe by snapshot).
pub const ADD_NODE_TIMEOUT: Duration = Duration::from_secs(60);


pub struct Meta {
    id: NodeId,
    raft: Raft,
    reader: MetaReader,
    /// The RocksDB log store, for the committed index in `status` (none under simulation).
    log: Option<LogStore>,
    request_timeout: Duration,
    batcher: Batcher,
    peers: Mutex<HashMap<String, AdminClient<Channel>>>,
    /// Test-only broken variant (the simulation's checkers must catch it): reads answer from
    /// this node's state without a read index, so a follower may serve a stale read.
    stale_reads: std::sync::atomic::AtomicBool,
}

/// Where a request goes next.
enum Route {
    Local,
    Leader { id: NodeId, addr: String },
    Unknown,
}

impl Meta {
    pub fn new(id: NodeId, raft: Raft, reader: MetaReader, log: Option<LogStore>, request_timeout: Duration) -> Self {
        let batcher = Batcher::start(raft.clone(), reader.clone(), request_timeout);
        Meta { id, raft, reader, log, request_timeout, batcher, peers: Mutex::new(HashMap::new()), stale_reads: Default::default() }
    }

    /// Test-only: turns on the stale-read broken variant.
    pub fn break_reads_for_tests(&self) {
        self.stale_reads.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn status(&self) -> NodeStatus {
        node_status(&self.raft, self.log.as_ref().and_then(|l| l.committed()).map(|l| l.index))
    }

    fn route(&self) -> Route {
        let metrics = self.raft.server_metrics();
        let m = metrics.borrow();
        match m.current_leader {
            Some(l) if l == self.id => Route::Local,
            Some(l) => match m.membership_config.membership().get_node(&l) {
                Some(n) => Route::Leader { id: l, addr: n.grpc_addr.clone() },
                None => Route::Unknown,
            },
            None => Route::Unknown,
        }
    }

    fn route_from(&self, f: &ForwardErr) -> Route {
        match (&f.leader_id, &f.leader_node) {
            (Some(id), _) if *id == self.id => Route::Local,
            (Some(id), Some(n)) => Route::Leader { id: *id, addr: n.grpc_addr.clone() },
            _ => Route::Unknown,
        }
    }

    fn peer(&self, addr: &str) -> Result<AdminClient<Channel>, NodeError> {
        let mut peers = self.peers.lock().expect("peer cache lock");
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let ch = umbra_raft::network::channel(addr).map_err(|e| NodeError::BadRequest(format!("bad peer address {addr:?}: {e}")))?;
        let client = AdminClient::new(ch);
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    fn waited(&self, start: Instant) -> u64 {
        start.elapsed().as_millis() as u64
    }

    /// Proposes `req` (retries reuse its request id), forwarding to the leader unless
    /// `forwarded`. Returns the state machine's answer and the log index it was applied at.
    #[tracing::instrument(level = "debug", skip_all, fields(request_id = %req.request_id))]
    pub async fn write(&self, req: Request, forwarded: bool) -> Result<(Response, u64), NodeError> {
        let start = Instant::now();
        let deadline = start + self.request_timeout;
        let mut route = self.route();
        loop {
            let next = match route {
                Route::Local => match self.batcher.propose(req.clone(), deadline).await {
                    Ok(done) => return Ok(done),
                    Err(Ok(f)) => self.route_from(&f),
                    Err(Err(e)) => return Err(e),
                },
                // A forwarded write is never forwarded again: its sender looks for the leader.
                Route::Leader { .. } | Route::Unknown if forwarded => return Err(NodeError::NotLeader),
                Route::Leader { id, addr } => match self.forward_write(&req, &addr, deadline).await {
                    Ok((response, index)) => {
                        self.wait_applied(index, deadline).await?;
                        return Ok((response, index));
                    }
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(e) => {
                        tracing::debug!(leader = id, error = %e, "forwarding failed; looking for the leader again");
                        Route::Unknown
                    }
                },
                Route::Unknown => Route::Unknown,
            };
            if Instant::now() >= deadline {
                return Err(if self.raft.metrics().borrow().current_leader.is_none() {
                    NodeError::NoLeader { waited_ms: self.waited(start) }
                } else {
                    NodeError::NoQuorum { waited_ms: self.waited(start) }
                });
            }
            route = match next {
                Route::Unknown => {
                    tokio::time::sleep(LEADER_POLL).await;
                    self.route()
                }
                r => r,
            };
        }
    }

    async fn forward_write(&self, req: &Request, addr: &str, deadline: Instant) -> Result<(Response, u64), NodeError> {
        let json = serde_json::to_vec(req).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        let mut call = tonic::Request::new(WriteRequest { json, forwarded: true });
        call.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let reply = self.peer(addr)?.write(call).await.map_err(|s| self.leader_error(addr, s))?.into_inner();
        let response: Response = serde_json::from_slice(&reply.json).map_err(|e| NodeError::BadRequest(format!("leader's reply: {e}")))?;
        Ok((response, reply.log_index))
    }

    fn leader_error(&self, addr: &str, s: tonic::Status) -> NodeError {
        let leader = self.raft.metrics().borrow().current_leader.unwrap_or(0);
        NodeError::LeaderUnreachable { leader, addr: addr.into(), reason: s.message().to_string() }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), NodeError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left.max(Duration::from_millis(1))))
            .applied_index_at_least(Some(index), "read your writes")
            .await
            .map(|_| ())
            .map_err(|_| NodeError::NoQuorum { waited_ms: self.request_timeout.as_millis() as u64 })
    }

    /// Leader only: confirms leadership with a quorum; returns the index reads must wait for.
    ///
    /// That is the leader's last log index, not only openraft's read log id: openraft 0.9
    /// restores a leader from its vote after a power loss with a stale commit index, and its
    /// read log id can then lie below a write already acknowledged to a client (the simulation
    /// found it: seed 1916). Every acknowledged write is in the leader's log (leader
    /// completeness), so waiting to apply the last index sees it.
    pub async fn leader_read_index(&self) -> Result<u64, Result<ForwardErr, NodeError>> {
        let waited_ms = self.request_timeout.as_millis() as u64;
        match timeout(self.request_timeout, self.raft.get_read_log_id()).await {
            Err(_) => Err(Err(NodeError::NoQuorum { waited_ms })),
            Ok(Ok((read, _applied))) => {
                let last = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
                Ok(read.map(|l| l.index).unwrap_or(0).max(last))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => Err(Ok(f)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => Err(Err(NodeError::NoQuorum { waited_ms })),
            Ok(Err(RaftError::Fatal(f))) => Err(Err(NodeError::Stopped(f.to_string()))),
        }
    }

    /// A linearizable read: the read index comes from the leader (asked over gRPC from a
    /// follower), and this node answers once it has applied that far.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn query(&self, query: &Query) -> Result<(QueryResult, u64), NodeError> {
        let start = Instant::now();
        let deadline = start + self.request_timeout;
        if self.stale_reads.load(std::sync::atomic::Ordering::Relaxed) {
            let data = self.reader.read();
            return Ok((query.answer(&data.state), data.last_applied.map(|l| l.index).unwrap_or(0)));
        }
        let index = loop {
            let attempt = match self.route() {
                Route::Local => self.leader_read_index().await.map_err(|e| e.map(|f| self.route_from(&f))),
                Route::Leader { addr, .. } => self.remote_read_index(&addr, deadline).await.map_err(Err),
                Route::Unknown => Err(Ok(Route::Unknown)),
            };
            match attempt {
                Ok(index) => break index,
                Err(Err(e)) if Instant::now() >= deadline => return Err(e),
                Err(Err(NodeError::Stopped(s))) => return Err(NodeError::Stopped(s)),
                Err(_) if Instant::now() >= deadline => return Err(NodeError::NoLeader { waited_ms: self.waited(start) }),
                Err(_) => tokio::time::sleep(LEADER_POLL).await,
            }
        };
        self.wait_applied(index, deadline).await?;
        let data = self.reader.read();
        Ok((query.answer(&data.state), data.last_applied.map(|l| l.index).unwrap_or(0)))
    }

    async fn remote_read_index(&self, addr: &str, deadline: Instant) -> Result<u64, NodeError> {
        let mut call = tonic::Request::new(ReadIndexRequest {});
        call.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let reply = self.peer(addr)?.read_index(call).await.map_err(|s| self.leader_error(addr, s))?;
        Ok(reply.into_inner().read_index)
    }

    /// Adds `id` as a learner (waiting until it has caught up), then promotes it if `voter`.
    #[tracing::instrument(skip(self, info))]
    pub async fn add_node(&self, id: NodeId, info: NodeInfo, voter: bool, forwarded: bool) -> Result<Members, NodeError> {
        if id == 0 {
            return Err(NodeError::BadRequest("node id 0 is not allowed".into()));
        }
        // Raft keeps a member's first address: adding it again with another would report
        // success and change nothing.
        let known = self.raft.metrics().borrow().membership_config.membership().get_node(&id).cloned();
        if let Some(existing) = known.filter(|k| *k != info) {
            return Err(NodeError::BadRequest(format!("node {id} is already a member at {} (SMB {}): remove it first to give it other addresses", existing.grpc_addr, existing.smb_addr)));
        }
        let req = AddNodeRequest { node_id: id, grpc_addr: info.grpc_addr.clone(), smb_addr: info.smb_addr.clone(), voter, forwarded: true };
        self.membership_call(forwarded, |raft| async move {
            let learner = raft.add_learner(id, info, true).await?;
            if !voter {
                return Ok(learner);
            }
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await
        }, |mut client| async move { client.add_node(req).await })
        .await
    }

    /// Removes `id` from the voters (if it is one) and from the learners.
    #[tracing::instrument(skip(self))]
    pub async fn remove_node(&self, id: NodeId, forwarded: bool) -> Result<Members, NodeError> {
        let req = RemoveNodeRequest { node_id: id, forwarded: true };
        self.membership_call(forwarded, |raft| async move {
            let is_voter = raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == id);
            let change = if is_voter { ChangeMembers::RemoveVoters(BTreeSet::from([id])) } else { ChangeMembers::RemoveNodes(BTreeSet::from([id])) };
            raft.change_membership(change, false).await
        }, |mut client| async move { client.remove_node(req).await })
        .await
    }

    async fn membership_call<L, LF, R, RF>(&self, forwarded: bool, local: L, remote: R) -> Result<Members, NodeError>
    where
        L: FnOnce(Raft) -> LF,
        LF: std::future::Future<Output = Result<openraft::raft::ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>>>,
        R: FnOnce(AdminClient<Channel>) -> RF,
        RF: std::future::Future<Output = Result<tonic::Response<umbra_proto::v1::MembershipReply>, tonic::Status>>,
    {
        let start = Instant::now();
        let mut route = self.route();
        while matches!(route, Route::Unknown) && start.elapsed() < self.request_timeout {
            tokio::time::sleep(LEADER_POLL).await;
            route = self.route();
        }
        match route {
            Route::Local => match timeout(ADD_NODE_TIMEOUT, local(self.raft.clone())).await {
                Err(_) => Err(NodeError::NoQuorum { waited_ms: ADD_NODE_TIMEOUT.as_millis() as u64 }),
                Ok(Ok(resp)) => Ok(resp.membership.as_ref().map(Members::from_membership).unwrap_or_default()),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(NodeError::NoLeader { waited_ms: self.waited(start) }),
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => Err(NodeError::Membership(e.to_string())),
                Ok(Err(RaftError::Fatal(f))) => Err(NodeError::Stopped(f.to_string())),
            },
            Route::Leader { addr, .. } if !forwarded => {
                let reply = remote(self.peer(&addr)?).await.map_err(|s| match s.code() {
                    tonic::Code::Unavailable => self.leader_error(&addr, s),
                    _ => NodeError::Membership(s.message().to_string()),
                })?;
                let members: Members = serde_json::from_slice(&reply.into_inner().json).map_err(|e| NodeError::BadRequest(e.to_string()))?;
                Ok(members)
            }
            _ => Err(NodeError::NoLeader { waited_ms: self.waited(start) }),
        }
    }
}
