//! A gRPC client for one node's Admin service, with bounded waits and clear errors.

use std::time::Duration;

use anyhow::{anyhow, Context};
use tonic::transport::{Channel, Endpoint};
use umbra_proto::v1::admin_client::AdminClient;
use umbra_proto::v1::*;
use umbra_raft::command::{Command, Request, Response};
use umbra_raft::query::{Query, QueryResult};
use umbra_raft::status::{Members, NodeStatus};

/// Longest a ctl call waits: the node's own bound (5 s by default) plus slack.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a membership change may take (a learner catching up).
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(70);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Node {
    pub addr: String,
    client: AdminClient<Channel>,
}

impl Node {
    /// Connects to `addr` (`host:port`); an unreachable node is an error that says so.
    pub async fn connect(addr: &str) -> anyhow::Result<Node> {
        Endpoint::from_shared(format!("http://{addr}")).with_context(|| format!("{addr:?} is not a host:port address"))?;
        let channel = umbra_raft::network::connect_now(addr, CONNECT_TIMEOUT).await.map_err(|e| {
            let hint = match umbra_raft::peer_auth::key() {
                Some(_) => "is it running, and does it hold the same cluster key? set --addr or UMBRA_ADDR",
                None => "is it running? set --addr or UMBRA_ADDR; a node with a cluster key needs --key-file or UMBRA_CLUSTER_KEY_FILE",
            };
            anyhow!("cannot reach node at {addr}: {} ({hint})", root_cause(&e))
        })?;
        Ok(Node { addr: addr.into(), client: AdminClient::new(channel) })
    }

    fn call<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(timeout);
        r
    }

    fn status_error(&self, s: tonic::Status) -> anyhow::Error {
        // A node with a cluster key greets before HTTP/2 and drops a client that holds none,
        // which the client sees as a transport or protocol failure.
        let hint = match umbra_raft::peer_auth::key() {
            None => " (a node with a cluster key wants it: --key-file or UMBRA_CLUSTER_KEY_FILE)",
            Some(_) => "",
        };
        let dropped = ["transport", "h2 protocol error", "operation was canceled", "connection reset", "broken pipe"].iter().any(|m| s.message().contains(m));
        match s.code() {
            tonic::Code::Unavailable if s.message().starts_with("error trying to connect") || s.message().contains("transport") => {
                anyhow!("cannot reach node at {}: {}{hint}", self.addr, s.message())
            }
            tonic::Code::DeadlineExceeded => anyhow!("node at {} did not answer within the deadline: {}", self.addr, s.message()),
            _ if dropped => anyhow!("node at {} dropped the call: {}{hint}", self.addr, s.message()),
            _ => anyhow!("{}", s.message()),
        }
    }

    pub async fn status(&self, timeout: Duration) -> anyhow::Result<NodeStatus> {
        let reply = self.client.clone().status(self.call(StatusRequest {}, timeout)).await.map_err(|s| self.status_error(s))?;
        Ok(serde_json::from_slice(&reply.into_inner().json)?)
    }

    /// Proposes a command; the node answers once it has applied it. A refusal by the state
    /// machine comes back as `Ok(Err(..))`.
    pub async fn write(&self, command: Command) -> anyhow::Result<(Response, u64)> {
        self.write_request(Request::new(command)).await
    }

    pub async fn write_request(&self, request: Request) -> anyhow::Result<(Response, u64)> {
        let json = serde_json::to_vec(&request)?;
        let reply = self.client.clone().write(self.call(WriteRequest { json, forwarded: false }, CALL_TIMEOUT)).await.map_err(|s| self.status_error(s))?;
        let reply = reply.into_inner();
        Ok((serde_json::from_slice(&reply.json)?, reply.log_index))
    }

    pub async fn query(&self, query: Query) -> anyhow::Result<QueryResult> {
        let json = serde_json::to_vec(&query)?;
        let reply = self.client.clone().query(self.call(QueryRequest { json }, CALL_TIMEOUT)).await.map_err(|s| self.status_error(s))?;
        Ok(serde_json::from_slice(&reply.into_inner().json)?)
    }

    pub async fn add_node(&self, id: u64, grpc_addr: String, smb_addr: String, voter: bool) -> anyhow::Result<Members> {
        let req = AddNodeRequest { node_id: id, grpc_addr, smb_addr, voter, forwarded: false };
        let reply = self.client.clone().add_node(self.call(req, MEMBERSHIP_TIMEOUT)).await.map_err(|s| self.status_error(s))?;
        Ok(serde_json::from_slice(&reply.into_inner().json)?)
    }

    pub async fn remove_node(&self, id: u64) -> anyhow::Result<Members> {
        let req = RemoveNodeRequest { node_id: id, forwarded: false };
        let reply = self.client.clone().remove_node(self.call(req, MEMBERSHIP_TIMEOUT)).await.map_err(|s| self.status_error(s))?;
        Ok(serde_json::from_slice(&reply.into_inner().json)?)
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
