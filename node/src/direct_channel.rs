//! A caller thread's gRPC channel to one node: one HTTP/2 connection (the h2 crate, under
//! tonic's generated clients and [`crate::volume_wire`]), driven by the thread that waits for
//! its calls ([`crate::dedicated::block_on`]).
//!
//! Why not tonic's `Channel` (hyper): hyper sends a request's headers at once but its body from
//! a task that first waits for send capacity, so a unary call left in two writes, HEADERS and
//! then DATA. On loopback each write runs the receiver's TCP path and may wake the receiver,
//! which then reads the headers alone, sleeps again, and wakes for the message. Here the first
//! message is queued with the headers before the connection runs, so both leave in one write
//! and the owner wakes once. Later messages of a streamed call wait for send capacity, as in
//! hyper, so no more than one message is buffered beyond the peer's window.
//!
//! The connection is made on the first call and again after it is found closed; a call under
//! way when the connection breaks, or while the peer stops answering pings, fails with
//! UNAVAILABLE, as with tonic's channel. Between calls nothing runs the connection (the peer's
//! keepalive then closes an idle one within half a minute), so each call first lets it take in what
//! arrived meanwhile (a GOAWAY, a close).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use umbra_raft::network::{CONNECTION_WINDOW_BYTES, CONNECT_TIMEOUT, MAX_FRAME_BYTES, STREAM_WINDOW_BYTES};

/// While a call waits, the peer is pinged this often, and the call fails if a ping gets no
/// answer within [`KEEPALIVE_TIMEOUT`]. Slower than tonic's channels between nodes (1 s, 2 s): the
/// peer answers pings on the thread that also runs its store calls, which a disk stall can hold.
/// A peer whose process died closes the connection at once; this is for a peer gone silent.
#[cfg(not(test))]
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
#[cfg(not(test))]
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
#[cfg(test)]
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(100);
#[cfg(test)]
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(200);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
pub struct DirectChannel {
    addr: Arc<str>,
    connection: Arc<Mutex<Option<Connection>>>,
    /// Idle connections for short calls ([`crate::short_calls`]).
    short: crate::short_calls::Pool,
    /// This node's gateway's deferred releases: a volume call takes those for this peer along.
    riders: Option<Arc<crate::deferred_releases::DeferredReleases>>,
}

/// A batch of releases riding on a call: carried out if the call's answer came (the owner
/// carries them out before the call); to be sent again if it failed or was dropped.
struct Riding(Arc<crate::deferred_releases::DeferredReleases>, Option<crate::deferred_releases::Batch>);

impl Riding {
    fn answered(mut self) {
        if let Some(b) = self.1.take() {
            self.0.landed(&b.addr, b.number);
        }
    }
}

impl Drop for Riding {
    fn drop(&mut self) {
        if let Some(b) = self.1.take() {
            self.0.failed(b);
        }
    }
}

/// One HTTP/2 connection: where requests go, and the handle that pings the peer.
#[derive(Clone)]
struct Connection {
    sender: h2::client::SendRequest<Bytes>,
    pings: Arc<tokio::sync::Mutex<h2::PingPong>>,
}

/// A call's failure as the status tonic gives to the caller: the peer is unreachable.
fn unavailable(what: impl std::fmt::Display) -> BoxError {
    Box::new(tonic::Status::unavailable(what.to_string()))
}

impl DirectChannel {
    /// A channel to `addr` (`host:port`); it connects on its first call.
    pub fn new(addr: &str) -> Self {
        DirectChannel { addr: addr.into(), connection: Arc::new(Mutex::new(None)), short: crate::short_calls::Pool::default(), riders: None }
    }

    /// The same channel, its volume calls carrying the releases `riders` defers to this peer.
    pub fn riding(mut self, riders: Arc<crate::deferred_releases::DeferredReleases>) -> Self {
        self.riders = Some(riders);
        self
    }

    /// Puts what waits for this peer in `request`'s header, if it is a volume call.
    fn take_riders(&self, request: &mut http::Request<tonic::body::Body>) -> Option<Riding> {
        let riders = self.riders.as_ref().filter(|_| request.uri().path().starts_with("/umbra.v1.Volume/"))?;
        let batch = riders.take(&self.addr)?;
        request.headers_mut().insert(crate::deferred_releases::RELEASES_HEADER, crate::deferred_releases::header_value(&batch));
        Some(Riding(riders.clone(), Some(batch)))
    }

    /// A connection ready for one more request: the current one, or a new one if there is none
    /// or it has closed.
    async fn ready(&self) -> Result<(h2::client::SendRequest<Bytes>, Arc<tokio::sync::Mutex<h2::PingPong>>), BoxError> {
        let current = self.connection.lock().expect("channel lock").clone();
        if let Some(c) = current {
            // Let the connection's task take in what arrived while no call ran (a GOAWAY, the
            // peer's close): on a current-thread runtime the first yield polls the sockets,
            // which schedules that task, and the second lets it run before this call goes on.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            match c.sender.ready().await {
                Ok(s) => return Ok((s, c.pings)),
                Err(e) => tracing::debug!(addr = %self.addr, error = %e, "connection closed: reconnecting"),
            }
        }
        let c = self.connect().await.map_err(|e| unavailable(format!("cannot reach {}: {e}", self.addr)))?;
        *self.connection.lock().expect("channel lock") = Some(c.clone());
        let sender = c.sender.ready().await.map_err(|e| unavailable(format!("{}: {e}", self.addr)))?;
        Ok((sender, c.pings))
    }

    /// A new connection to the peer, past the cluster-key handshake.
    async fn dial(&self) -> std::io::Result<tokio::net::TcpStream> {
        let mut io = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&*self.addr)).await.map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the connection timed out"))??;
        io.set_nodelay(true)?;
        if let Some(key) = umbra_raft::peer_auth::key() {
            umbra_raft::peer_auth::client_side(&mut io, key, &self.addr).await?;
        }
        Ok(io)
    }

    async fn connect(&self) -> Result<Connection, BoxError> {
        let io = self.dial().await?;
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .max_frame_size(MAX_FRAME_BYTES)
            .handshake::<_, Bytes>(io)
            .await?;
        let pings = connection.ping_pong().ok_or("the connection gave no ping handle")?;
        let addr = self.addr.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, error = %e, "connection ended");
            }
        });
        Ok(Connection { sender, pings: Arc::new(tokio::sync::Mutex::new(pings)) })
    }

    /// Makes one call; a peer that stops answering pings while the call waits for the answer
    /// or reads its body fails it (as tonic's channel does with its keepalive), and the next
    /// call connects again.
    async fn send(self, mut request: http::Request<tonic::body::Body>) -> Result<http::Response<tonic::body::Body>, BoxError> {
        let riding = self.take_riders(&mut request);
        let answer = self.send_now(request).await;
        if let (Some(r), Ok(_)) = (riding, &answer) {
            r.answered();
        }
        answer
    }

    async fn send_now(self, request: http::Request<tonic::body::Body>) -> Result<http::Response<tonic::body::Body>, BoxError> {
        if crate::short_calls::takes(&request) {
            return self.short_call(request).await;
        }
        let (sender, pings) = self.ready().await?;
        let mut watchdog: Watchdog = Box::pin(keepalive(pings));
        let response = tokio::select! {
            done = self.call(sender, request) => done?,
            silent = &mut watchdog => return Err(self.gone_silent(silent)),
        };
        let (parts, stream) = response.into_parts();
        Ok(http::Response::from_parts(parts, tonic::body::Body::new(Received { stream, data_done: false, watchdog: Some(watchdog), channel: self })))
    }

    /// Makes a call as a short call ([`crate::short_calls`]): on a connection of its own, one
    /// frame each way. A connection whose call failed is dropped; the next call makes another.
    async fn short_call(&self, request: http::Request<tonic::body::Body>) -> Result<http::Response<tonic::body::Body>, BoxError> {
        let (parts, body) = request.into_parts();
        let (body, _) = crate::short_calls::collect(body).await?;
        let mut conn = self.short_connection().await?;
        let reply = crate::short_calls::call(&mut conn, parts.uri.path(), &parts.headers, &body).await.map_err(|e| self.short_failed(e))?;
        self.short.put(conn);
        Ok(crate::short_calls::into_response(reply))
    }

    /// Connections for short calls held idle (each call that went as one leaves its connection).
    pub fn idle_short_connections(&self) -> usize {
        self.short.idle()
    }

    /// A Read as a short call: its data appended to `out`, checked as it lands
    /// ([`crate::short_calls::read_into`]).
    pub async fn read_into(&self, request: umbra_proto::v1::ReadRequest, out: &mut Vec<u8>) -> Result<(), tonic::Status> {
        let mut conn = self.short_connection().await?;
        let answer = crate::short_calls::read_into(&mut conn, &request, out).await.map_err(|e| self.short_failed(e))?;
        self.short.put(conn);
        answer.map_or(Ok(()), Err)
    }

    async fn short_connection(&self) -> Result<crate::short_calls::Conn, tonic::Status> {
        self.short.connection(|| self.dial()).await.map_err(|e| tonic::Status::unavailable(format!("cannot reach {}: {e}", self.addr)))
    }

    /// A short call's failure as the status its caller gets.
    fn short_failed(&self, e: crate::short_calls::CallError) -> tonic::Status {
        use crate::short_calls::{CallError, ReadError};
        match e {
            CallError::Request(e) => tonic::Status::resource_exhausted(e.to_string()),
            CallError::Damaged(e) => crate::volume_service::refused_data(e),
            e @ CallError::Read(ReadError::Silent(_)) => tonic::Status::unavailable(format!("{} stopped answering: {e}", self.addr)),
            e => tonic::Status::unavailable(format!("{}: {e}", self.addr)),
        }
    }

    /// Forgets the connection whose peer stopped answering pings (`why`): the call's error.
    fn gone_silent(&self, why: String) -> BoxError {
        self.connection.lock().expect("channel lock").take();
        unavailable(format!("{} stopped answering: {why}", self.addr))
    }

    async fn call(&self, mut sender: h2::client::SendRequest<Bytes>, request: http::Request<tonic::body::Body>) -> Result<http::Response<h2::RecvStream>, BoxError> {
        let (mut parts, mut body) = request.into_parts();
        // tonic gives a path; HTTP/2 wants the scheme and authority too.
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("http://{}{path}", self.addr).parse()?;
        let (response, mut stream) = sender.send_request(http::Request::from_parts(parts, ()), false).map_err(|e| unavailable(format!("{}: {e}", self.addr)))?;
        let send_failed = match send_body(&mut stream, &mut body).await {
            Ok(()) => None,
            Err(Failed::Send(e)) => Some(e),
            Err(Failed::Body(e)) => {
                // The request's own messages failed: the call fails, whatever the peer made of it.
                stream.send_reset(h2::Reason::CANCEL);
                return Err(e);
            }
        };
        // The peer may have answered (and cut the request short) before the body was all sent:
        // its answer is the call's.
        response.await.map_err(|e| unavailable(format!("{}: {}", self.addr, send_failed.unwrap_or(e))))
    }
}

enum Failed {
    Body(BoxError),
    Send(h2::Error),
}

/// Sends `body`'s messages on `stream`: the first at once (it leaves with the headers), each
/// later one once the one before has left; then the end of the stream.
async fn send_body(stream: &mut h2::SendStream<Bytes>, body: &mut tonic::body::Body) -> Result<(), Failed> {
    let mut first = true;
    loop {
        match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => return stream.send_data(Bytes::new(), true).map_err(Failed::Send),
            Some(Err(e)) => return Err(Failed::Body(e.into())),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue }; // gRPC requests carry no trailers
                if !first {
                    wait_for_capacity(stream).await.map_err(Failed::Send)?;
                }
                first = false;
                stream.send_data(data, false).map_err(Failed::Send)?;
            }
        }
    }
}

/// A call's keepalive: done (with why) when the peer stops answering pings.
type Watchdog = Pin<Box<dyn Future<Output = String> + Send>>;

/// Pings the peer every [`KEEPALIVE_INTERVAL`] while a call waits; returns (ending the call)
/// when a ping gets no answer within [`KEEPALIVE_TIMEOUT`].
async fn keepalive(pings: Arc<tokio::sync::Mutex<h2::PingPong>>) -> String {
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        let mut pings = pings.lock().await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return format!("no answer to a ping within {} ms", KEEPALIVE_TIMEOUT.as_millis()),
        }
    }
}

/// Waits until the stream may send at least one more byte without buffering it: what was sent
/// before has left (or fits in the peer's window).
async fn wait_for_capacity(stream: &mut h2::SendStream<Bytes>) -> Result<(), h2::Error> {
    stream.reserve_capacity(1);
    while stream.capacity() == 0 {
        match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        }
    }
    Ok(())
}

/// A response's body: its DATA frames (each given back to the flow-control window as it is
/// taken), then its trailers; the call's keepalive goes on while it is read.
struct Received {
    stream: h2::RecvStream,
    data_done: bool,
    /// None once it has fired (the body then ends after its error).
    watchdog: Option<Watchdog>,
    channel: DirectChannel,
}

impl HttpBody for Received {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(watchdog) = self.watchdog.as_mut() else { return Poll::Ready(None) };
        if let Poll::Ready(why) = watchdog.as_mut().poll(cx) {
            self.watchdog = None;
            return Poll::Ready(Some(Err(self.channel.gone_silent(why))));
        }
        if !self.data_done {
            match self.stream.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => self.data_done = true,
            }
        }
        match self.stream.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for DirectChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.clone().send(request))
    }
}

/// A channel to another node: tonic's (shared by the node's tasks), or a caller thread's own.
#[derive(Clone)]
pub enum PeerChannel {
    Shared(tonic::transport::Channel),
    Direct(DirectChannel),
}

impl From<tonic::transport::Channel> for PeerChannel {
    fn from(c: tonic::transport::Channel) -> Self {
        PeerChannel::Shared(c)
    }
}

impl From<DirectChannel> for PeerChannel {
    fn from(c: DirectChannel) -> Self {
        PeerChannel::Direct(c)
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for PeerChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            PeerChannel::Shared(c) => c.poll_ready(cx).map_err(Into::into),
            PeerChannel::Direct(c) => c.poll_ready(cx),
        }
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        match self {
            PeerChannel::Shared(c) => {
                let f = c.call(request);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
            PeerChannel::Direct(c) => c.call(request),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A peer that answers a call's headers and then goes silent (it stops reading, so it
    /// answers no ping): the call's body ends with UNAVAILABLE, and the next call connects anew.
    /// A server on a loopback port, run by `serve` on a thread (and a runtime) of its own; its
    /// address.
    pub(crate) fn serve_on_a_thread<F, Fut>(serve: F) -> String
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move { serve(tokio::net::TcpListener::from_std(listener).unwrap()).await });
        });
        addr
    }

    #[test]
    fn a_peer_gone_silent_mid_answer_fails_the_call() {
        let addr = serve_on_a_thread(|listener| async move {
            let mut held = Vec::new();
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let mut conn = h2::server::handshake(socket).await.unwrap();
                let (_request, mut respond) = conn.accept().await.unwrap().unwrap();
                let mut headers = http::Response::new(());
                headers.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
                let stream = respond.send_response(headers, false).unwrap();
                // Long enough to send the headers; then nothing more is read or written.
                let _ = tokio::time::timeout(Duration::from_millis(50), conn.accept()).await;
                held.push((conn, stream));
            }
        });
        let channel = DirectChannel::new(&addr);
        let read = umbra_proto::v1::ReadRequest { target: None, ino: 1, offset: 0, length: 10, open: None };
        let started = std::time::Instant::now();
        let first = crate::dedicated::block_on(async {
            use tokio_stream::StreamExt;
            let mut messages = crate::volume_wire::read(channel.clone(), read.clone()).await?;
            messages.next().await.expect("an error, not the end")
        })
        .unwrap();
        let e = first.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(e.message().contains("stopped answering"), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "ended by the keepalive, {:?}", started.elapsed());
        assert!(channel.connection.lock().unwrap().is_none(), "the silent connection is forgotten");
    }
}
