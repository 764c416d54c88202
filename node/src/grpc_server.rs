//! The node's gRPC server: a thread for each incoming connection.
//!
//! The accept loop runs on the node's runtime and hands each connection to a thread of its own
//! ([`crate::dedicated`]), which serves it with tonic's server (every layer tonic puts in front
//! of the services: gRPC timeouts, error recovery) on a current-thread runtime, or, when the
//! connection opens with [`short_calls::MAGIC`] (a gateway thread's quick volume calls), with
//! [`short_calls::serve`] on the same kind of thread. The volume
//! service runs store calls inline there, so a small call wakes one thread on this node: the
//! one that reads the request, answers it and writes the reply. A call that waits on the disk
//! holds up only the streams of its own connection: Raft's calls and each gateway thread's come
//! over connections of their own, and the volume service keeps slow calls (fences, syncs,
//! snapshots) on the blocking pool, so those of one connection still run side by side.
//!
//! At stop, each connection is asked to finish (HTTP/2 GOAWAY: streams under way complete, no
//! new ones start); one still open after [`STOP_GRACE`] is dropped with its thread's runtime.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::transport::server::{Connected, Router, TcpConnectInfo};

use crate::short_calls;
use crate::volume_wire::VolumeWire;

/// Connections served at once; one more is closed as soon as it is accepted. Each is a thread
/// (its stack mostly untouched); idle ones end within half a minute (HTTP/2 keepalive: a peer that
/// does not answer a ping is dropped), so the count follows the calls under way.
pub const MAX_CONNECTIONS: usize = 4096;
/// Streams (calls) one connection may have under way; a peer's further calls wait for one to
/// end (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; tonic's server otherwise sets no limit). Every
/// call between nodes is finite, so a waiting call always gets its turn.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Threads of a connection's runtime that may block at once (a read's read-ahead, a slow
/// store call); more such work waits for one of them. Bounds the threads one connection can
/// make, whatever its peer sends.
pub const MAX_BLOCKING_THREADS_PER_CONNECTION: usize = 64;
/// How long a stopping node lets each connection finish its streams.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// The server pings each connection this often, and drops one whose peer has not answered
/// within [`KEEPALIVE_TIMEOUT`] (a peer gone with the network, an idle caller thread's
/// connection). Longer than the clients' own keepalive: a connection's thread runs store calls
/// inline, and a disk stall must not look like a dead peer.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause after a failed accept (out of file descriptors, say) before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// A connection's socket. Dropping it (tonic does when the connection is done) ends its thread.
struct Watched {
    io: TcpStream,
    _closed: tokio::sync::oneshot::Sender<()>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connected for Watched {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

/// Serves `listener` until `stop` turns true, each connection on its own thread with the
/// services `router` makes, or, on a connection that opens with [`short_calls::MAGIC`], short
/// calls to `short` ([`crate::short_calls`]); returns once every connection's thread has ended.
pub async fn serve<R>(listener: TcpListener, router: R, short: Option<VolumeWire>, mut stop: watch::Receiver<bool>)
where
    R: Fn() -> Router + Send + Sync + 'static,
{
    let router = Arc::new(router);
    // Each connection's thread holds a clone; the count of clones is the count of connections,
    // and the channel closes once the last thread has ended.
    let (alive, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "gRPC accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        // The accept loop's own sender is one of the clones.
        if alive.strong_count() > MAX_CONNECTIONS {
            tracing::warn!(%peer, max = MAX_CONNECTIONS, "too many gRPC connections: closing a new one");
            continue;
        }
        // Only holders of the cluster key get a thread and the services (umbra_raft::peer_auth);
        // the handshake runs here, bounded in time, its connection counted meanwhile.
        let (router, short, stop, alive) = (router.clone(), short.clone(), stop.clone(), alive.clone());
        tokio::spawn(async move {
            let mut socket = socket;
            if let Some(key) = umbra_raft::peer_auth::key() {
                let own = umbra_raft::peer_auth::own_addr().unwrap_or_default();
                if let Err(e) = umbra_raft::peer_auth::server_side(&mut socket, key, own).await {
                    return tracing::warn!(%peer, error = %e, "refused a gRPC connection: no cluster key");
                }
            }
            if let Err(e) = start_connection(socket, router, short, stop, alive) {
                tracing::warn!(%peer, error = %e, "cannot start a thread for a gRPC connection");
            }
        });
    }
    drop(listener);
    drop(alive);
    let _ = all_ended.recv().await;
}

/// Whether the connection opens with [`short_calls::MAGIC`] (then read), rather than HTTP/2's
/// preface (left for tonic); a connection that sends nothing for [`KEEPALIVE_TIMEOUT`] is an
/// error.
async fn opens_short_calls(io: &mut TcpStream) -> io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let silent = || io::Error::new(io::ErrorKind::TimedOut, "nothing sent");
    let mut first = [0u8; 1];
    if tokio::time::timeout(KEEPALIVE_TIMEOUT, io.peek(&mut first)).await.map_err(|_| silent())?? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if first[0] != short_calls::MAGIC[0] {
        return Ok(false);
    }
    let mut magic = [0u8; 8];
    tokio::time::timeout(KEEPALIVE_TIMEOUT, io.read_exact(&mut magic)).await.map_err(|_| silent())??;
    if &magic != short_calls::MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "neither HTTP/2 nor short calls"));
    }
    Ok(true)
}

fn start_connection<R>(socket: TcpStream, router: Arc<R>, short: Option<VolumeWire>, stop: watch::Receiver<bool>, alive: tokio::sync::mpsc::Sender<()>) -> io::Result<()>
where
    R: Fn() -> Router + Send + Sync + 'static,
{
    socket.set_nodelay(true)?;
    let peer = socket.peer_addr()?;
    // Off this runtime's reactor; the connection's thread registers it with its own.
    let socket = socket.into_std()?;
    let span = tracing::info_span!("grpc_connection", %peer);
    std::thread::Builder::new().name("umbra-grpc".into()).spawn(move || {
        let entered = span.enter();
        match tokio::runtime::Builder::new_current_thread().enable_all().max_blocking_threads(MAX_BLOCKING_THREADS_PER_CONNECTION).build() {
            Ok(runtime) => {
                crate::dedicated::mark_connection();
                runtime.block_on(serve_one(socket, router.as_ref(), short, stop));
                // Dropping the runtime drops whatever of the connection is left (after
                // STOP_GRACE).
                drop(runtime);
            }
            Err(e) => tracing::warn!(error = %e, "cannot make a runtime for a gRPC connection"),
        }
        drop(entered);
        // The services (and the stores behind them) are let go before the thread says it has
        // ended: a stopping node closes its databases once the last connection has ended.
        drop(router);
        drop(alive);
    })?;
    Ok(())
}

async fn serve_one<R: Fn() -> Router>(socket: std::net::TcpStream, router: &R, short: Option<VolumeWire>, stop: watch::Receiver<bool>) {
    let mut io = match TcpStream::from_std(socket) {
        Ok(io) => io,
        Err(e) => return tracing::warn!(error = %e, "cannot take a gRPC connection"),
    };
    if let Some(service) = short {
        let mut stopping = stop.clone();
        let opened = tokio::select! {
            r = opens_short_calls(&mut io) => r,
            _ = stopping.wait_for(|s| *s) => return,
        };
        match opened {
            Ok(false) => {}
            Ok(true) => return with_stop_grace(short_calls::serve(io, service, stop.clone()), stop, "short-call").await,
            Err(e) => return tracing::debug!(error = %e, "a connection that sent no request"),
        }
    }
    let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
    // tonic's server takes a stream of connections: this one, then none (without ending, which
    // would shut the connection down at once).
    let incoming = tokio_stream::StreamExt::chain(tokio_stream::once(Ok::<_, io::Error>(Watched { io, _closed: closed_tx })), tokio_stream::pending());
    let mut stopping = stop.clone();
    let finish = async move {
        tokio::select! {
            _ = closed => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    };
    with_stop_grace(router().serve_with_incoming_shutdown(incoming, finish), stop, "gRPC").await
}

/// Runs a connection's service until it ends, or for [`STOP_GRACE`] once `stop` turns true.
async fn with_stop_grace<E: std::fmt::Display>(served: impl std::future::Future<Output = Result<(), E>>, mut stop: watch::Receiver<bool>, what: &str) {
    tokio::select! {
        r = served => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "{what} connection ended with an error");
            }
        }
        _ = async {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(STOP_GRACE).await;
        } => tracing::debug!("{what} connection still busy at stop: dropped"),
    }
}
