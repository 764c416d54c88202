//! Raft RPCs to peers over gRPC: openraft's `RaftNetworkFactory` with one lazily connected
//! tonic channel per peer. Requests and replies are JSON in a `RaftPayload`.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use umbra_proto::v1::raft_client::RaftClient;
use umbra_proto::v1::RaftPayload;

use crate::types::{NodeId, NodeInfo, TypeConfig};

/// Largest Raft message a node sends or accepts (snapshot chunks and entry batches stay far below).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How long a TCP connect to a peer may take before the peer counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// HTTP/2 keepalive: a connection whose peer stops answering pings for this long is dropped and
/// the next call reconnects. Without it a connection that died silently (a partition that lost
/// packets, a NAT that forgot the flow) would stall every later call on it; the simulation found
/// this (a node stuck as candidate after a partition healed).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP/2 flow-control windows: large enough that a 1 MiB message streams without stalls.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
/// The largest HTTP/2 frame a node's gRPC server accepts: a peer sends a 1 MiB file write in
/// one DATA frame instead of 64 of the protocol's default 16 KiB.
pub const MAX_FRAME_BYTES: u32 = 1024 * 1024;

/// The networking seam: how a gRPC client reaches `host:port`. Production uses TCP (no
/// transport installed); the simulation installs one that connects through turmoil. Every gRPC
/// client in Umbra (Raft peers, forwarding, volume routing, `umbra ctl`) gets its channel from
/// [`channel`], so nothing else knows which network it runs on.
pub trait Transport: Send + Sync {
    fn connect(&self, endpoint: Endpoint) -> Channel;
}

static TRANSPORT: std::sync::OnceLock<Box<dyn Transport>> = std::sync::OnceLock::new();

/// Installs the process's transport (once, before any channel is made); returns false if one
/// was installed already.
pub fn install_transport(t: Box<dyn Transport>) -> bool {
    TRANSPORT.set(t).is_ok()
}

/// The process's main runtime, where connections' tasks live (set by the node at start).
static HOME: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();

/// Names the runtime that channels and background tasks belong to. A node serves each gRPC
/// connection on a runtime of its own that ends with the connection; a channel made lazily
/// while handling a call, and kept, must not die with it. Without a home (tests, the
/// simulation) the current runtime is used.
pub fn set_home(runtime: tokio::runtime::Handle) -> bool {
    HOME.set(runtime).is_ok()
}

/// Spawns `task` on the home runtime (or the current one without a home): for work that must
/// outlive the call that starts it.
pub fn spawn_at_home<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match HOME.get() {
        Some(home) => home.spawn(task),
        None => tokio::spawn(task),
    }
}

/// Whether a transport other than TCP is installed (the simulation's).
pub fn has_transport() -> bool {
    TRANSPORT.get().is_some()
}

/// A lazily connected gRPC channel to `addr` (`host:port`), whose tasks run on the home
/// runtime ([`set_home`]).
pub fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    // The channel's worker and connection tasks go to the home runtime.
    let _home = HOME.get().map(|h| h.enter());
    Ok(match (TRANSPORT.get(), crate::peer_auth::key()) {
        (Some(t), _) => t.connect(endpoint),
        (None, Some(key)) => endpoint.connect_with_connector_lazy(keyed_connector(key)),
        (None, None) => endpoint.connect_lazy(),
    })
}

/// A channel to `addr` connected now (an unreachable node, or one refusing this process's
/// cluster key, is an error at once): for `umbra ctl`, which should say so rather than wait.
pub async fn connect_now(addr: &str, timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(timeout).tcp_nodelay(true);
    match (TRANSPORT.get(), crate::peer_auth::key()) {
        (None, Some(key)) => endpoint.connect_with_connector(keyed_connector(key)).await,
        _ => endpoint.connect().await,
    }
}

/// Connects over TCP and makes the cluster-key handshake ([`crate::peer_auth`]) before the
/// channel's HTTP/2 starts.
pub fn keyed_connector(key: &'static crate::peer_auth::ClusterKey) -> impl tower::Service<tonic::transport::Uri, Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>, Error = std::io::Error, Future = impl Send> + Clone + Send + 'static {
    tower::service_fn(move |uri: tonic::transport::Uri| async move {
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(80);
        let dialed = uri.authority().map_or_else(|| format!("{host}:{port}"), |a| a.as_str().to_string());
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {host}:{port} timed out")))??;
        stream.set_nodelay(true)?;
        crate::peer_auth::client_side(&mut stream, key, &dialed).await?;
        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
    })
}

#[derive(Clone, Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        let client = channel(&node.grpc_addr).ok().map(|ch| {
            RaftClient::new(ch).max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES).max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        });
        PeerClient { target, node: node.clone(), client }
    }
}

pub struct PeerClient {
    target: NodeId,
    node: NodeInfo,
    /// None when the address does not parse: every call is then Unreachable.
    client: Option<RaftClient<Channel>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl PeerClient {
    async fn call<Req, Resp, E>(&mut self, rpc: Rpc, req: &Req, option: &RPCOption) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&Msg(format!("bad address {:?}", self.node.grpc_addr)))));
        };
        let json = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.into_inner().json).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>> {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
