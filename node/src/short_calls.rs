//! Short calls: a caller thread's small volume calls to another node, one request and one
//! reply per round trip on a plain framed connection instead of HTTP/2.
//!
//! Data flow: [`crate::direct_channel::DirectChannel`] sends each call that [`takes`] (the
//! volume service's quick unary calls, and a Write of one message) over a connection of its own
//! from [`Pool`]: the request's path, headers and gRPC-framed body as one frame
//! ([`encode_request`]), then it reads the reply frame ([`decode_reply`]) and gives tonic an
//! HTTP response built from it, so tonic's generated client decodes it as from HTTP/2. On the
//! owner, [`crate::grpc_server`] sees the connection open with [`MAGIC`] (after the cluster-key
//! handshake, as every connection) and runs [`serve`]: each request becomes an HTTP request to
//! the same volume service ([`crate::volume_wire::VolumeWire`]), and its whole response one
//! reply frame. While a call runs on the owner (a new open waiting out an owner's grace period,
//! say), the owner sends an empty frame every [`HEARTBEAT`], so the caller tells a slow call
//! from a silent peer ([`SILENCE`]).
//!
//! A Read goes the same way ([`read_into`]): the owner writes each chunk from where the store
//! handed it out (the data log's mapping, never read in user space there, so a page the disk
//! cannot give back fails the send rather than raising SIGBUS) and the caller reads it straight
//! into the reply it is building, checking each span's CRC32C as it lands.
//!
//! Why: a small call through HTTP/2 cost 122 us from a caller thread against 38 us for a plain
//! TCP round trip (docs/benchmarks.md, SMB Run 25): h2's framing and flow control on both sides,
//! hyper's task per stream on the owner, HPACK. A cross-node create makes three such calls; a
//! cross-node READ copied the owner's messages once more into the reply. Large writes, slow
//! calls (fences, syncs, snapshots, clones) and calls from the node's shared tasks stay on
//! HTTP/2.
//!
//! Frames (all integers little-endian; every length bounded before anything is allocated):
//! - request: `u32 length of the rest`, `u16 path length`, path, headers, body (the rest);
//! - reply: `u32 length of the rest` (0: a heartbeat, nothing else), `u16 HTTP status`,
//!   headers, `u32 body length`, body, trailers;
//! - headers: `u16 count`, then each `u16 name length`, name, `u16 value length`, value.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body::{Body as HttpBody, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Status;

use umbra_proto::v1::{Check, DataChunk, ReadRequest};

use crate::volume_service::MAX_VOLUME_MESSAGE_BYTES;

/// What a client sends first on a connection for short calls (HTTP/2's preface starts "PRI").
pub const MAGIC: &[u8; 8] = b"UMBRA-Q1";
/// Largest body of a request or a reply: one volume message with its gRPC prefix, and room.
pub const MAX_BODY_BYTES: usize = MAX_VOLUME_MESSAGE_BYTES + 4096;
/// Headers (or trailers) of one frame at most, and their bytes at most.
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_BLOCK_BYTES: usize = 16 * 1024;
/// Largest frame either side reads.
pub const MAX_FRAME_BYTES: usize = MAX_BODY_BYTES + 2 * MAX_HEADER_BLOCK_BYTES + 64;
/// The longest path a request names.
pub const MAX_PATH_BYTES: usize = 256;
/// A caller gives up on a peer that sends nothing for this long while it waits for a reply (as
/// the HTTP/2 keepalive does: [`crate::direct_channel::KEEPALIVE_INTERVAL`] plus its timeout).
#[cfg(not(test))]
pub const SILENCE: Duration = Duration::from_secs(15);
#[cfg(test)]
pub const SILENCE: Duration = Duration::from_millis(600);
/// While a call runs on the owner, an empty frame goes to the caller this often.
#[cfg(not(test))]
pub const HEARTBEAT: Duration = Duration::from_secs(5);
#[cfg(test)]
pub const HEARTBEAT: Duration = Duration::from_millis(50);
/// The owner closes a connection that brings no request for this long (its thread ends).
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);
/// A caller reuses a connection idle for less than this only, so that it never sends on one
/// the owner is closing ([`IDLE_CLOSE`]).
pub const REUSE_WITHIN: Duration = Duration::from_secs(10);
/// Idle connections a caller keeps for one peer.
pub const POOL_CONNECTIONS: usize = 4;

/// The volume service's calls that go as short calls: quick, unary, bounded.
const PATHS: &[&str] = &[
    "/umbra.v1.Volume/Resolve",
    "/umbra.v1.Volume/Stat",
    "/umbra.v1.Volume/Create",
    "/umbra.v1.Volume/List",
    "/umbra.v1.Volume/SetSize",
    "/umbra.v1.Volume/Unlink",
    "/umbra.v1.Volume/Rename",
    "/umbra.v1.Volume/SetInfo",
    "/umbra.v1.Volume/AllocatedRanges",
    "/umbra.v1.Volume/OpenRegister",
    "/umbra.v1.Volume/OpenRelease",
    "/umbra.v1.Volume/OpenDispose",
    "/umbra.v1.Volume/OpenLock",
    "/umbra.v1.Volume/OpenReleases",
    "/umbra.v1.Volume/OpenFlush",
];

/// Marks a request (an HTTP extension) whose body is one message of at most
/// [`MAX_VOLUME_MESSAGE_BYTES`]: a Write of one chunk goes as a short call too.
#[derive(Clone, Copy, Debug)]
pub struct OneMessage;

/// Whether `request` goes as a short call.
pub fn takes<B>(request: &http::Request<B>) -> bool {
    PATHS.contains(&request.uri().path()) || request.extensions().get::<OneMessage>().is_some()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("a short-call frame ends inside its {0}")]
    Truncated(&'static str),
    #[error("a short-call frame's {what} is {got} bytes, more than {max}")]
    TooLarge { what: &'static str, got: usize, max: usize },
    #[error("a short-call frame carries an invalid {0}")]
    Invalid(&'static str),
    #[error("a short-call frame has {0} bytes after its trailers")]
    Trailing(usize),
}

/// A request as it arrives: its body is a slice of the frame.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A reply as it arrives.
#[derive(Debug, PartialEq)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: HeaderMap,
}

/// A request's frame: its head (with the length word) and the body pieces after it, to be
/// written in that order.
pub fn encode_request(path: &str, headers: &HeaderMap, body: &[Bytes]) -> Result<Vec<u8>, FrameError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(FrameError::TooLarge { what: "path", got: path.len(), max: MAX_PATH_BYTES });
    }
    let body_len: usize = body.iter().map(Bytes::len).sum();
    if body_len > MAX_BODY_BYTES {
        return Err(FrameError::TooLarge { what: "body", got: body_len, max: MAX_BODY_BYTES });
    }
    let mut head = vec![0u8; 4];
    head.extend_from_slice(&(path.len() as u16).to_le_bytes());
    head.extend_from_slice(path.as_bytes());
    put_headers(&mut head, headers)?;
    let rest = head.len() - 4 + body_len;
    head[..4].copy_from_slice(&(rest as u32).to_le_bytes());
    Ok(head)
}

/// A reply's frame: its head (with the length word), the body pieces, then the tail
/// (trailers), to be written in that order.
pub fn encode_reply(status: StatusCode, headers: &HeaderMap, body: &[Bytes], trailers: &HeaderMap) -> Result<(Vec<u8>, Vec<u8>), FrameError> {
    let body_len: usize = body.iter().map(Bytes::len).sum();
    if body_len > MAX_BODY_BYTES {
        return Err(FrameError::TooLarge { what: "body", got: body_len, max: MAX_BODY_BYTES });
    }
    let mut head = vec![0u8; 4];
    head.extend_from_slice(&status.as_u16().to_le_bytes());
    put_headers(&mut head, headers)?;
    head.extend_from_slice(&(body_len as u32).to_le_bytes());
    let mut tail = Vec::new();
    put_headers(&mut tail, trailers)?;
    let rest = head.len() - 4 + body_len + tail.len();
    head[..4].copy_from_slice(&(rest as u32).to_le_bytes());
    Ok((head, tail))
}

fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) -> Result<(), FrameError> {
    if headers.len() > MAX_HEADERS {
        return Err(FrameError::TooLarge { what: "header count", got: headers.len(), max: MAX_HEADERS });
    }
    let start = out.len();
    out.extend_from_slice(&(headers.len() as u16).to_le_bytes());
    for (name, value) in headers {
        for part in [name.as_str().as_bytes(), value.as_bytes()] {
            if part.len() > MAX_HEADER_BLOCK_BYTES {
                return Err(FrameError::TooLarge { what: "header", got: part.len(), max: MAX_HEADER_BLOCK_BYTES });
            }
            out.extend_from_slice(&(part.len() as u16).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    let block = out.len() - start;
    if block > MAX_HEADER_BLOCK_BYTES {
        return Err(FrameError::TooLarge { what: "header block", got: block, max: MAX_HEADER_BLOCK_BYTES });
    }
    Ok(())
}

/// The length a frame's first four bytes announce, checked against [`MAX_FRAME_BYTES`].
pub fn frame_length(word: [u8; 4]) -> Result<usize, FrameError> {
    let n = u32::from_le_bytes(word) as usize;
    if n > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { what: "frame", got: n, max: MAX_FRAME_BYTES });
    }
    Ok(n)
}

/// Takes `n` bytes from the front of `rest`.
fn take(rest: &mut Bytes, n: usize, what: &'static str) -> Result<Bytes, FrameError> {
    if rest.len() < n {
        return Err(FrameError::Truncated(what));
    }
    Ok(rest.split_to(n))
}

fn take_u16(rest: &mut Bytes, what: &'static str) -> Result<usize, FrameError> {
    Ok(take(rest, 2, what)?.get_u16_le() as usize)
}

fn take_headers(rest: &mut Bytes) -> Result<HeaderMap, FrameError> {
    let before = rest.len();
    let count = take_u16(rest, "header count")?;
    if count > MAX_HEADERS {
        return Err(FrameError::TooLarge { what: "header count", got: count, max: MAX_HEADERS });
    }
    let mut headers = HeaderMap::with_capacity(count);
    for _ in 0..count {
        let n = take_u16(rest, "header name length")?;
        let name = HeaderName::from_bytes(&take(rest, n, "header name")?).map_err(|_| FrameError::Invalid("header name"))?;
        let n = take_u16(rest, "header value length")?;
        let value = HeaderValue::from_bytes(&take(rest, n, "header value")?).map_err(|_| FrameError::Invalid("header value"))?;
        headers.append(name, value);
        if before - rest.len() > MAX_HEADER_BLOCK_BYTES {
            return Err(FrameError::TooLarge { what: "header block", got: before - rest.len(), max: MAX_HEADER_BLOCK_BYTES });
        }
    }
    Ok(headers)
}

/// A request frame's content (what follows its length word).
pub fn decode_request(mut rest: Bytes) -> Result<Request, FrameError> {
    let n = take_u16(&mut rest, "path length")?;
    if n > MAX_PATH_BYTES {
        return Err(FrameError::TooLarge { what: "path", got: n, max: MAX_PATH_BYTES });
    }
    let path = String::from_utf8(take(&mut rest, n, "path")?.to_vec()).map_err(|_| FrameError::Invalid("path"))?;
    let headers = take_headers(&mut rest)?;
    if rest.len() > MAX_BODY_BYTES {
        return Err(FrameError::TooLarge { what: "body", got: rest.len(), max: MAX_BODY_BYTES });
    }
    Ok(Request { path, headers, body: rest })
}

/// A reply frame's content (what follows its length word; not a heartbeat's, which is empty).
pub fn decode_reply(mut rest: Bytes) -> Result<Reply, FrameError> {
    let status = StatusCode::from_u16(take_u16(&mut rest, "status")? as u16).map_err(|_| FrameError::Invalid("status"))?;
    let headers = take_headers(&mut rest)?;
    let n = take(&mut rest, 4, "body length")?.get_u32_le() as usize;
    if n > MAX_BODY_BYTES {
        return Err(FrameError::TooLarge { what: "body", got: n, max: MAX_BODY_BYTES });
    }
    let body = take(&mut rest, n, "body")?;
    let trailers = take_headers(&mut rest)?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing(rest.len()));
    }
    Ok(Reply { status, headers, body, trailers })
}

/// A body already in memory: its pieces, then its trailers (if any).
pub struct Pieces {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Pieces {
    pub fn new(data: impl IntoIterator<Item = Bytes>, trailers: Option<HeaderMap>) -> Pieces {
        Pieces { data: data.into_iter().filter(|b| !b.is_empty()).collect(), trailers }
    }
}

impl HttpBody for Pieces {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(d) = self.data.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }
}

/// Writes `pieces` whole, in order, with as few writes as the socket allows.
async fn write_all(io: &mut TcpStream, pieces: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = pieces.iter().filter(|p| !p.is_empty()).map(|p| std::io::IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = io.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// A short-call connection: its socket, what it read past the frames taken so far (a frame
/// usually arrives whole, in one read), and one timer for its waits (pushed later each time,
/// which does not wake the runtime as a new timer would).
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// Why no frame came.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("nothing came for {} ms", .0.as_millis())]
    Silent(Duration),
    #[error("the peer closed the connection")]
    Closed,
}

impl Conn {
    pub fn new(io: TcpStream) -> Conn {
        Conn { io, buf: BytesMut::new(), timer: Box::pin(tokio::time::sleep(Duration::ZERO)) }
    }

    /// The next frame's content (`None`: a heartbeat), whole within `within` (a peer that
    /// trickles a frame's bytes gets no longer).
    pub async fn next_frame(&mut self, within: Duration) -> Result<Option<Bytes>, ReadError> {
        let by = tokio::time::Instant::now() + within;
        self.fill(4, by, within).await?;
        let n = frame_length(self.buf[..4].try_into().expect("four bytes"))?;
        self.fill(4 + n, by, within).await?;
        let mut frame = self.buf.split_to(4 + n);
        frame.advance(4);
        Ok((n > 0).then(|| frame.freeze()))
    }

    /// Waits until at least `n` bytes (at most [`MAX_FRAME_BYTES`] + 4) are buffered, until `by`
    /// at most (`within` from when the wait began).
    async fn fill(&mut self, n: usize, by: tokio::time::Instant, within: Duration) -> Result<(), ReadError> {
        while self.buf.len() < n {
            self.buf.reserve((n - self.buf.len()).max(READ_BYTES));
            let Conn { io, buf, timer } = self;
            timer.as_mut().reset(by);
            tokio::select! {
                r = io.read_buf(buf) => if r? == 0 { return Err(ReadError::Closed) },
                _ = timer.as_mut() => return Err(ReadError::Silent(within)),
            }
        }
        Ok(())
    }

    /// [`Self::fill`] with [`SILENCE`] from now: a Read's reply, whose frames may be large.
    async fn fill_now(&mut self, n: usize) -> Result<(), CallError> {
        self.fill(n, tokio::time::Instant::now() + SILENCE, SILENCE).await.map_err(CallError::Read)
    }

    /// Moves the next `n` bytes of the connection to the end of `out`: what is buffered, then
    /// the rest read straight into `out` (no copy through the buffer).
    async fn take_into(&mut self, out: &mut Vec<u8>, n: usize, within: Duration) -> Result<(), ReadError> {
        let buffered = n.min(self.buf.len());
        out.extend_from_slice(&self.buf[..buffered]);
        self.buf.advance(buffered);
        let mut left = n - buffered;
        out.reserve(left);
        while left > 0 {
            let Conn { io, timer, .. } = self;
            timer.as_mut().reset(tokio::time::Instant::now() + within);
            let mut limited = (&mut *io).take(left as u64);
            let got = tokio::select! {
                r = limited.read_buf(out) => r?,
                _ = timer.as_mut() => return Err(ReadError::Silent(within)),
            };
            if got == 0 {
                return Err(ReadError::Closed);
            }
            left -= got;
        }
        Ok(())
    }
}

/// What a connection reads at least at a time (a reply or request of a quick call fits).
const READ_BYTES: usize = 16 * 1024;

// ---- the caller's side ----

/// A caller's idle connections to one peer, the most recently used last.
#[derive(Clone, Default)]
pub struct Pool(Arc<Mutex<Vec<(Conn, Instant)>>>);

impl Pool {
    /// An idle connection still fit to use, if any (those past [`REUSE_WITHIN`] or closed by
    /// the peer are dropped).
    fn take(&self) -> Option<Conn> {
        let mut idle = self.0.lock().expect("pool lock");
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < REUSE_WITHIN && conn.buf.is_empty() && !closed_by_peer(&conn.io) {
                return Some(conn);
            }
        }
        None
    }

    /// A connection for a short call: an idle one, or a new one (`connect` makes it and runs
    /// the cluster-key handshake; [`MAGIC`] is sent here).
    pub async fn connection<F, Fut>(&self, connect: F) -> std::io::Result<Conn>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = std::io::Result<TcpStream>>,
    {
        if let Some(conn) = self.take() {
            return Ok(conn);
        }
        let mut io = connect().await?;
        io.write_all(MAGIC).await?;
        Ok(Conn::new(io))
    }

    /// Idle connections held.
    pub fn idle(&self) -> usize {
        self.0.lock().expect("pool lock").len()
    }

    /// Takes back a connection whose call went through.
    pub fn put(&self, mut io: Conn) {
        // What a large reply left allocated is not kept for a small one.
        if io.buf.capacity() > 4 * READ_BYTES {
            io.buf = BytesMut::new();
        }
        let mut idle = self.0.lock().expect("pool lock");
        if idle.len() < POOL_CONNECTIONS {
            idle.push((io, Instant::now()));
        }
    }
}

/// Whether the peer has closed `io` (or sent what no request asked for): a look at the socket
/// without waiting. The caller's runtime does not watch idle connections, so its readiness
/// would be stale.
fn closed_by_peer(io: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a local through a descriptor `io` keeps open.
    let n = unsafe { libc::recv(io.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
}

/// Makes one short call on `conn` (a connection that has sent [`MAGIC`]); on any error the
/// connection is not fit for another.
pub async fn call(conn: &mut Conn, path: &str, headers: &HeaderMap, body: &[Bytes]) -> Result<Reply, CallError> {
    let head = encode_request(path, headers, body).map_err(CallError::Request)?;
    let mut pieces: Vec<&[u8]> = vec![&head];
    pieces.extend(body.iter().map(|b| &b[..]));
    write_all(&mut conn.io, &pieces).await.map_err(|e| CallError::Read(e.into()))?;
    loop {
        match conn.next_frame(SILENCE).await {
            Err(e) => return Err(CallError::Read(e)),
            Ok(None) => continue,
            Ok(Some(frame)) => return decode_reply(frame).map_err(CallError::Reply),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the request cannot be sent as a short call: {0}")]
    Request(FrameError),
    #[error("{0}")]
    Read(ReadError),
    #[error("a malformed reply: {0}")]
    Reply(FrameError),
    #[error("{0}")]
    Damaged(umbra_proto::checks::CheckError),
}

/// A body's data (at most [`MAX_BODY_BYTES`]) and trailers, whole.
pub async fn collect(mut body: tonic::body::Body) -> Result<(Vec<Bytes>, HeaderMap), Status> {
    let (mut data, mut trailers, mut total) = (Vec::new(), HeaderMap::new(), 0usize);
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        match frame?.into_data() {
            Ok(d) => {
                total += d.len();
                if total > MAX_BODY_BYTES {
                    return Err(Status::resource_exhausted(format!("a short call's body of more than {MAX_BODY_BYTES} bytes")));
                }
                data.push(d);
            }
            Err(frame) => trailers.extend(frame.into_trailers().unwrap_or_default()),
        }
    }
    Ok((data, trailers))
}

/// The HTTP response tonic's client reads for `reply`.
pub fn into_response(reply: Reply) -> http::Response<tonic::body::Body> {
    let trailers = (!reply.trailers.is_empty()).then_some(reply.trailers);
    let mut response = http::Response::new(tonic::body::Body::new(Pieces::new([reply.body], trailers)));
    *response.status_mut() = reply.status;
    *response.headers_mut() = reply.headers;
    response
}


// ---- reads ----
//
// A Read's reply is a run of frames: heartbeats, chunk frames (`u8` 1, `u16 n`, n checks of
// `u32 length` and `u32 CRC32C`, then the chunk's data, the rest of the frame) and one end frame
// (`u8` 2, then the call's status as headers). The owner writes each chunk's data from where the
// store handed it out (its data log's mapping) and never reads it; the caller reads it straight
// into the reply it is building and checks it there.

const READ_CHUNK: u8 = 1;
const READ_END: u8 = 2;
/// Checks one chunk frame carries at most (a chunk frame carries at most one message of the
/// volume service's Read, 1 MiB).
pub const MAX_CHECKS: usize = 4096;

/// A Read's messages, as the volume service gives them.
pub type ReadMessages = Pin<Box<dyn futures::Stream<Item = Result<DataChunk, Status>> + Send>>;

/// The owner's side of a short Read: the volume service's Read.
pub trait Reads {
    fn read(&self, request: ReadRequest) -> futures::future::BoxFuture<'static, Result<ReadMessages, Status>>;
}

/// A chunk frame's head (with its length word): the data follows it.
pub fn chunk_head(checks: &[Check], data_len: usize) -> Result<Vec<u8>, FrameError> {
    if checks.len() > MAX_CHECKS {
        return Err(FrameError::TooLarge { what: "check count", got: checks.len(), max: MAX_CHECKS });
    }
    let rest = 3 + 8 * checks.len() + data_len;
    if rest > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { what: "frame", got: rest, max: MAX_FRAME_BYTES });
    }
    let mut head = Vec::with_capacity(4 + rest - data_len);
    head.extend_from_slice(&(rest as u32).to_le_bytes());
    head.push(READ_CHUNK);
    head.extend_from_slice(&(checks.len() as u16).to_le_bytes());
    for c in checks {
        head.extend_from_slice(&c.len.to_le_bytes());
        head.extend_from_slice(&c.crc32c.to_le_bytes());
    }
    Ok(head)
}

/// A status as the headers that carry it: one that does not make valid headers, or more than
/// a frame's header block holds, goes as INTERNAL (which always fits).
fn status_headers(status: &Status) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let fits = status.add_header(&mut headers).is_ok() && put_headers(&mut Vec::new(), &headers).is_ok();
    if !fits {
        headers.clear();
        let _ = Status::internal("a status too large for a short-call frame").add_header(&mut headers);
    }
    headers
}

/// A Read's end frame, with the call's status.
pub fn end_frame(status: &Status) -> Vec<u8> {
    let mut frame = vec![0u8; 4];
    frame.push(READ_END);
    put_headers(&mut frame, &status_headers(status)).expect("status_headers fit a frame");
    let rest = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&rest.to_le_bytes());
    frame
}

/// A short Read on `conn`: appends the data to `out` (at most `length` bytes, each chunk
/// checked against its CRC32C as it lands). `Ok(None)`: done; `Ok(Some(status))`: the owner's
/// error, the connection fit for another call; `Err`: the connection is not.
pub async fn read_into(conn: &mut Conn, request: &ReadRequest, out: &mut Vec<u8>) -> Result<Option<Status>, CallError> {
    let body = umbra_proto::frames::frame(request).map_err(|_| CallError::Request(FrameError::Invalid("read request")))?;
    let head = encode_request(crate::volume_wire::READ_PATH, &grpc_headers(), std::slice::from_ref(&body)).map_err(CallError::Request)?;
    write_all(&mut conn.io, &[&head, &body]).await.map_err(|e| CallError::Read(e.into()))?;
    let (start, most) = (out.len(), usize::try_from(request.length).unwrap_or(usize::MAX));
    let bad = |what: &'static str| CallError::Reply(FrameError::Invalid(what));
    loop {
        conn.fill_now(4).await?;
        let rest = frame_length(conn.buf[..4].try_into().expect("four bytes")).map_err(CallError::Reply)?;
        if rest == 0 {
            conn.buf.advance(4);
            continue;
        }
        conn.fill_now(5).await?;
        match conn.buf[4] {
            READ_CHUNK => {
                conn.fill_now(7).await?;
                let n = u16::from_le_bytes([conn.buf[5], conn.buf[6]]) as usize;
                if n > MAX_CHECKS || 3 + 8 * n > rest {
                    return Err(bad("chunk head"));
                }
                conn.fill_now(7 + 8 * n).await?;
                let checks: Vec<Check> = conn.buf[7..7 + 8 * n]
                    .chunks_exact(8)
                    .map(|c| Check { len: u32::from_le_bytes(c[..4].try_into().expect("four")), crc32c: u32::from_le_bytes(c[4..].try_into().expect("four")) })
                    .collect();
                let len = rest - 3 - 8 * n;
                if out.len() - start + len > most {
                    return Err(bad("reply longer than the read"));
                }
                conn.buf.advance(7 + 8 * n);
                let at = out.len();
                conn.take_into(out, len, SILENCE).await.map_err(CallError::Read)?;
                if let Err(e) = umbra_proto::checks::verify(&out[at..], &checks) {
                    return Err(CallError::Damaged(e));
                }
            }
            READ_END => {
                conn.fill_now(4 + rest).await?;
                let mut frame = conn.buf.split_to(4 + rest).freeze();
                frame.advance(5);
                let headers = take_headers(&mut frame).map_err(CallError::Reply)?;
                if !frame.is_empty() {
                    return Err(CallError::Reply(FrameError::Trailing(frame.len())));
                }
                let status = Status::from_header_map(&headers).ok_or_else(|| bad("end without a status"))?;
                return Ok((status.code() != tonic::Code::Ok).then_some(status));
            }
            _ => return Err(bad("frame kind")),
        }
    }
}

/// Runs `f`, sending a heartbeat on `io` every [`HEARTBEAT`] while it waits; one ready at its
/// first poll costs no timer.
async fn with_heartbeats<F: std::future::Future>(io: &mut TcpStream, f: F) -> std::io::Result<F::Output> {
    tokio::pin!(f);
    // Counted from before the first poll, which may run store work inline for a while: a first
    // heartbeat due by then goes at once.
    let began = tokio::time::Instant::now();
    if let Poll::Ready(v) = futures::poll!(&mut f) {
        return Ok(v);
    }
    let mut beat = tokio::time::interval_at(began + HEARTBEAT, HEARTBEAT);
    loop {
        tokio::select! {
            v = &mut f => return Ok(v),
            _ = beat.tick() => send(io, &[&[0u8; 4]]).await?,
        }
    }
}

/// Writes `pieces` within [`SILENCE`]: a caller that takes nothing for that long (gone with the
/// network) ends the connection.
async fn send(io: &mut TcpStream, pieces: &[&[u8]]) -> std::io::Result<()> {
    tokio::time::timeout(SILENCE, write_all(io, pieces)).await.map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the caller took no reply"))?
}

/// Answers one short Read on `conn`: its chunks as they come, then its status.
async fn serve_read<S: Reads>(conn: &mut Conn, service: &S, body: Bytes) -> std::io::Result<()> {
    let request = match decode_one::<ReadRequest>(body) {
        Ok(r) => r,
        Err(status) => return send(&mut conn.io, &[&end_frame(&status)]).await,
    };
    let mut messages = match with_heartbeats(&mut conn.io, service.read(request)).await? {
        Ok(m) => m,
        Err(status) => return send(&mut conn.io, &[&end_frame(&status)]).await,
    };
    loop {
        use futures::StreamExt;
        let chunk = match with_heartbeats(&mut conn.io, messages.next()).await? {
            None => return send(&mut conn.io, &[&end_frame(&Status::new(tonic::Code::Ok, ""))]).await,
            Some(Err(status)) => return send(&mut conn.io, &[&end_frame(&status)]).await,
            Some(Ok(chunk)) => chunk,
        };
        match chunk_head(&chunk.checks, chunk.data.len()) {
            Ok(head) => send(&mut conn.io, &[&head, &chunk.data]).await?,
            Err(e) => return send(&mut conn.io, &[&end_frame(&Status::internal(e.to_string()))]).await,
        }
    }
}

/// The one message of a gRPC-framed body.
fn decode_one<M: prost::Message + Default>(body: Bytes) -> Result<M, Status> {
    let bad = |why: String| Status::internal(format!("a short call's body is not one gRPC message: {why}"));
    let mut reader = umbra_proto::frames::MessageReader::new(MAX_BODY_BYTES);
    reader.push(body);
    let message = reader.next_message().map_err(|e| bad(e.to_string()))?.ok_or_else(|| bad("it ends inside its message".into()))?;
    reader.finish().map_err(|e| bad(e.to_string()))?;
    M::decode(message).map_err(|e| bad(e.to_string()))
}

// ---- the owner's side ----

/// Serves short calls on `io` (its [`MAGIC`] already read) with `service`, one at a time,
/// until the caller closes it, it idles for [`IDLE_CLOSE`], a frame is malformed, or `stop`
/// turns true (between calls).
pub async fn serve<S>(io: TcpStream, mut service: S, mut stop: tokio::sync::watch::Receiver<bool>) -> std::io::Result<()>
where
    S: Reads + tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>, Error = std::convert::Infallible>,
{
    let mut conn = Conn::new(io);
    let invalid = |e: FrameError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    loop {
        // The next request, whole within IDLE_CLOSE (a caller sends it in one write).
        let frame = tokio::select! {
            f = conn.next_frame(IDLE_CLOSE) => match f {
                Ok(Some(frame)) => frame,
                Ok(None) => return Err(invalid(FrameError::Invalid("empty request"))),
                Err(ReadError::Closed | ReadError::Silent(_)) => return Ok(()),
                Err(ReadError::Io(e)) => return Err(e),
                Err(ReadError::Frame(e)) => return Err(invalid(e)),
            },
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let request = decode_request(frame).map_err(invalid)?;
        if request.path == crate::volume_wire::READ_PATH {
            serve_read(&mut conn, &service, request.body).await?;
            continue;
        }
        if !PATHS.contains(&request.path.as_str()) && request.path != crate::volume_wire::WRITE_PATH {
            let (head, tail) = status_reply(&Status::unimplemented(format!("{} is not a short call", request.path)));
            send(&mut conn.io, &[&head, &tail]).await?;
            continue;
        }
        let mut http_request = http::Request::new(tonic::body::Body::new(Pieces::new([request.body], None)));
        *http_request.method_mut() = http::Method::POST;
        *http_request.uri_mut() = request.path.parse().map_err(|_| invalid(FrameError::Invalid("path")))?;
        *http_request.headers_mut() = request.headers;
        // A quick call is answered at its first poll (the store's work runs inline here).
        let (head, body, tail) = with_heartbeats(&mut conn.io, answer(&mut service, http_request)).await?;
        let mut pieces: Vec<&[u8]> = vec![&head];
        pieces.extend(body.iter().map(|b| &b[..]));
        pieces.push(&tail);
        send(&mut conn.io, &pieces).await?;
    }
}

/// A reply of `status` alone (in its trailers).
fn status_reply(status: &Status) -> (Vec<u8>, Vec<u8>) {
    encode_reply(StatusCode::OK, &grpc_headers(), &[], &status_headers(status)).expect("status_headers fit a frame")
}

/// A call's whole answer as a reply frame (head, body, tail). A body past [`MAX_BODY_BYTES`]
/// or one that fails answers with the error's status instead.
async fn answer<S>(service: &mut S, request: http::Request<tonic::body::Body>) -> (Vec<u8>, Vec<Bytes>, Vec<u8>)
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>, Error = std::convert::Infallible>,
{
    let failed = |status: &Status| {
        let (head, tail) = status_reply(status);
        (head, Vec::new(), tail)
    };
    let response = match std::future::poll_fn(|cx| service.poll_ready(cx)).await {
        Ok(()) => match service.call(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let (data, trailers) = match collect(body).await {
        Ok(whole) => whole,
        Err(status) => return failed(&status),
    };
    match encode_reply(parts.status, &parts.headers, &data, &trailers) {
        Ok((head, tail)) => (head, data, tail),
        Err(e) => failed(&Status::internal(e.to_string())),
    }
}

fn grpc_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn whole(head: &[u8], body: &[Bytes], tail: &[u8]) -> Vec<u8> {
        let mut v = head.to_vec();
        for b in body {
            v.extend_from_slice(b);
        }
        v.extend_from_slice(tail);
        v
    }

    #[test]
    fn a_request_and_a_reply_come_back_as_sent() {
        let h = headers(&[("content-type", "application/grpc"), ("te", "trailers"), ("x-a", "1"), ("x-a", "2")]);
        let body = [Bytes::from_static(b"\0\0\0\0\x03abc"), Bytes::from_static(b"more")];
        let head = encode_request("/umbra.v1.Volume/Stat", &h, &body).unwrap();
        let frame = whole(&head, &body, &[]);
        let n = frame_length(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, frame.len() - 4);
        let r = decode_request(Bytes::from(frame[4..].to_vec())).unwrap();
        assert_eq!(r, Request { path: "/umbra.v1.Volume/Stat".into(), headers: h.clone(), body: Bytes::from_static(b"\0\0\0\0\x03abcmore") });

        let t = headers(&[("grpc-status", "5"), ("grpc-message", "not found"), ("umbra-error", "not_found")]);
        let (head, tail) = encode_reply(StatusCode::OK, &h, &body, &t).unwrap();
        let frame = whole(&head, &body, &tail);
        assert_eq!(frame_length(frame[..4].try_into().unwrap()).unwrap(), frame.len() - 4);
        let r = decode_reply(Bytes::from(frame[4..].to_vec())).unwrap();
        assert_eq!(r, Reply { status: StatusCode::OK, headers: h, body: Bytes::from_static(b"\0\0\0\0\x03abcmore"), trailers: t });
    }

    #[test]
    fn bounds_are_checked_before_anything_is_taken() {
        assert!(matches!(frame_length(((MAX_FRAME_BYTES + 1) as u32).to_le_bytes()), Err(FrameError::TooLarge { what: "frame", .. })));
        let long = "x".repeat(MAX_PATH_BYTES + 1);
        assert!(matches!(encode_request(&long, &HeaderMap::new(), &[]), Err(FrameError::TooLarge { what: "path", .. })));
        let big = Bytes::from(vec![0u8; MAX_BODY_BYTES + 1]);
        assert!(matches!(encode_request("/p", &HeaderMap::new(), &[big.clone()]), Err(FrameError::TooLarge { what: "body", .. })));
        assert!(matches!(encode_reply(StatusCode::OK, &HeaderMap::new(), &[big], &HeaderMap::new()), Err(FrameError::TooLarge { what: "body", .. })));
        // A header count past the bound, as a peer could announce it.
        let mut frame = vec![2, 0, b'/', b'p'];
        frame.extend_from_slice(&((MAX_HEADERS + 1) as u16).to_le_bytes());
        assert!(matches!(decode_request(Bytes::from(frame)), Err(FrameError::TooLarge { what: "header count", .. })));
        // A reply announcing a body past the bound.
        let mut frame = vec![200, 0, 0, 0];
        frame.extend_from_slice(&((MAX_BODY_BYTES + 1) as u32).to_le_bytes());
        assert!(matches!(decode_reply(Bytes::from(frame)), Err(FrameError::TooLarge { what: "body", .. })));
        // Headers whose bytes pass the block's bound.
        let many: Vec<(String, String)> = (0..40).map(|i| (format!("x-{i}"), "v".repeat(600))).collect();
        let mut h = HeaderMap::new();
        for (n, v) in &many {
            h.insert(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        assert!(matches!(encode_request("/p", &h, &[]), Err(FrameError::TooLarge { what: "header block", .. })));
    }

    #[test]
    fn every_cut_of_a_frame_is_an_error() {
        let h = headers(&[("content-type", "application/grpc")]);
        let t = headers(&[("grpc-status", "0")]);
        let body = [Bytes::from_static(b"\0\0\0\0\x01z")];
        let head = encode_request("/umbra.v1.Volume/Stat", &h, &body).unwrap();
        let request = whole(&head, &body, &[]);
        let (head, tail) = encode_reply(StatusCode::OK, &h, &body, &t).unwrap();
        let reply = whole(&head, &body, &tail);
        for cut in 4..reply.len() {
            assert!(decode_reply(Bytes::from(reply[4..cut].to_vec())).is_err(), "reply cut at {cut}");
        }
        // A request's body is the rest, so only cuts inside its head fail.
        for cut in 4..request.len() - 6 {
            assert!(decode_request(Bytes::from(request[4..cut].to_vec())).is_err(), "request cut at {cut}");
        }
        let mut extra = reply[4..].to_vec();
        extra.push(0);
        assert_eq!(decode_reply(Bytes::from(extra)), Err(FrameError::Trailing(1)));
    }

    proptest! {
        /// Mutated real frames: an error or a frame, never a panic.
        #[test]
        fn mutated_frames_never_panic(flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8), cut in 0usize..200) {
            let h = headers(&[("content-type", "application/grpc"), ("te", "trailers")]);
            let t = headers(&[("grpc-status", "3"), ("grpc-message", "bad")]);
            let body = [Bytes::from_static(b"\0\0\0\0\x04abcd")];
            let head = encode_request("/umbra.v1.Volume/Resolve", &h, &body).unwrap();
            let mut request = whole(&head, &body, &[])[4..].to_vec();
            let (head, tail) = encode_reply(StatusCode::OK, &h, &body, &t).unwrap();
            let mut reply = whole(&head, &body, &tail)[4..].to_vec();
            for (at, b) in &flips {
                let (i, j) = (at % request.len(), at % reply.len());
                request[i] ^= b;
                reply[j] ^= b;
            }
            request.truncate(cut.max(1).min(request.len()));
            let _ = decode_request(Bytes::from(request));
            let _ = decode_reply(Bytes::from(reply));
        }
    }

    #[tokio::test]
    async fn frames_that_share_a_read_or_come_a_byte_at_a_time_come_out_whole_and_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut tx = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (rx, _) = listener.accept().await.unwrap();
        let mut conn = Conn::new(rx);
        let (head, tail) = encode_reply(StatusCode::OK, &grpc_headers(), &[Bytes::from_static(b"abc")], &HeaderMap::new()).unwrap();
        let reply = [&head[..], b"abc", &tail].concat();
        let body = |f: Option<Bytes>| decode_reply(f.expect("a frame, not a heartbeat")).unwrap().body;
        // A heartbeat and a reply in one write.
        tx.write_all(&[&[0u8; 4][..], &reply].concat()).await.unwrap();
        assert_eq!(conn.next_frame(SILENCE).await.unwrap(), None);
        assert_eq!(body(conn.next_frame(SILENCE).await.unwrap()), Bytes::from_static(b"abc"));
        // A reply a byte at a time, then the end of the connection.
        let writer = tokio::spawn(async move {
            for b in reply {
                tx.write_all(&[b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        assert_eq!(body(conn.next_frame(SILENCE).await.unwrap()), Bytes::from_static(b"abc"));
        writer.await.unwrap();
        assert!(matches!(conn.next_frame(SILENCE).await, Err(ReadError::Closed)));
    }

    /// A tower service standing in for the volume service's HTTP side: it answers after
    /// `delay` with `reply` (or a NOT_FOUND status for the path "/missing").
    #[derive(Clone)]
    struct Answering {
        delay: Duration,
    }

    impl tower_service::Service<http::Request<tonic::body::Body>> for Answering {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                let (echoed, _) = collect(req.into_body()).await.unwrap();
                let mut trailers = HeaderMap::new();
                Status::new(tonic::Code::Ok, "").add_header(&mut trailers).unwrap();
                let mut r = http::Response::new(tonic::body::Body::new(Pieces::new(echoed, Some(trailers))));
                r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                Ok(r)
            })
        }
    }

    impl Reads for Answering {
        /// Reads of `ino` 1: two chunks (the second with a wrong check when `offset` is 1), after
        /// `delay`; any other `ino`: NOT_FOUND.
        fn read(&self, request: ReadRequest) -> futures::future::BoxFuture<'static, Result<ReadMessages, Status>> {
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                if request.ino != 1 {
                    return Err(Status::not_found("no such file"));
                }
                let first = Bytes::from(vec![1u8; 3000]);
                let second = Bytes::from(vec![2u8; 5000]);
                let mut check = Check::of(&second);
                if request.offset == 1 {
                    check.crc32c ^= 1;
                }
                let chunks = vec![Ok(DataChunk { checks: vec![Check::of(&first[..1000]), Check::of(&first[1000..])], data: first }), Ok(DataChunk { checks: vec![check], data: second })];
                Ok(Box::pin(futures::stream::iter(chunks)) as ReadMessages)
            })
        }
    }

    /// An owner that serves short calls with `service` on a thread of its own; its address.
    fn owner(delay: Duration) -> String {
        crate::direct_channel::tests::serve_on_a_thread(move |listener| async move {
            let (_stop_tx, stop) = tokio::sync::watch::channel(false);
            loop {
                let (mut io, _) = listener.accept().await.unwrap();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut magic = [0u8; 8];
                    io.read_exact(&mut magic).await.unwrap();
                    assert_eq!(&magic, MAGIC);
                    let _ = serve(io, Answering { delay }, stop).await;
                });
            }
        })
    }

    async fn dial(addr: &str) -> std::io::Result<TcpStream> {
        TcpStream::connect(addr).await
    }

    #[tokio::test]
    async fn a_call_slower_than_the_silence_bound_is_kept_alive_by_heartbeats() {
        let addr = owner(SILENCE * 3);
        let pool = Pool::default();
        let mut io = pool.connection(|| dial(&addr)).await.unwrap();
        let body = [Bytes::from_static(b"\0\0\0\0\x02hi")];
        let started = Instant::now();
        let reply = call(&mut io, "/umbra.v1.Volume/Stat", &grpc_headers(), &body).await.unwrap();
        assert!(started.elapsed() >= SILENCE * 3);
        assert_eq!(reply.body, Bytes::from_static(b"\0\0\0\0\x02hi"));
        assert_eq!(Status::from_header_map(&reply.trailers).unwrap().code(), tonic::Code::Ok);
        // The connection serves the next call too, from the pool.
        pool.put(io);
        let mut again = pool.connection(|| async { Err(std::io::Error::other("a new connection was made")) }).await.unwrap();
        assert!(call(&mut again, "/umbra.v1.Volume/Stat", &grpc_headers(), &body).await.is_ok());
    }

    #[tokio::test]
    async fn a_silent_peer_fails_the_call_and_a_closed_idle_connection_is_not_reused() {
        // A peer that takes the request and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let (io, _) = listener.accept().await.unwrap();
            tokio::time::sleep(SILENCE * 4).await;
            drop(io);
        });
        let pool = Pool::default();
        let mut io = pool.connection(|| dial(&addr)).await.unwrap();
        let started = Instant::now();
        assert!(matches!(call(&mut io, "/umbra.v1.Volume/Stat", &grpc_headers(), &[]).await, Err(CallError::Read(ReadError::Silent(_)))));
        assert!(started.elapsed() < SILENCE * 3);
        // Given back, then closed by the peer: the pool does not hand it out again.
        pool.put(io);
        held.await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn a_short_read_lands_its_chunks_checked_in_the_callers_buffer() {
        let addr = owner(SILENCE * 2);
        let pool = Pool::default();
        let mut conn = pool.connection(|| dial(&addr)).await.unwrap();
        let read = |ino: u64, offset: u64| ReadRequest { target: None, ino, offset, length: 8000, open: None };
        // Slower than the silence bound before its first chunk: heartbeats keep it going.
        let mut out = vec![9u8; 10];
        assert!(read_into(&mut conn, &read(1, 0), &mut out).await.unwrap().is_none());
        assert_eq!(out.len(), 8010);
        assert!(out[..10].iter().all(|&b| b == 9) && out[10..3010].iter().all(|&b| b == 1) && out[3010..].iter().all(|&b| b == 2));
        // The owner's error: the connection is fit for the next call.
        let status = read_into(&mut conn, &read(2, 0), &mut Vec::new()).await.unwrap().expect("an error");
        assert_eq!(status.code(), tonic::Code::NotFound);
        // A chunk that fails its check.
        let mut out = Vec::new();
        assert!(matches!(read_into(&mut conn, &read(1, 1), &mut out).await, Err(CallError::Damaged(_))));
        // More data than the read asked for is refused before it is taken.
        let mut conn = pool.connection(|| dial(&addr)).await.unwrap();
        let short = ReadRequest { length: 100, ..read(1, 0) };
        assert!(matches!(read_into(&mut conn, &short, &mut Vec::new()).await, Err(CallError::Reply(_))));
    }

    #[test]
    fn an_end_frame_carries_the_status_and_chunk_heads_are_bounded() {
        let frame = end_frame(&Status::not_found("gone"));
        assert_eq!(frame_length(frame[..4].try_into().unwrap()).unwrap(), frame.len() - 4);
        assert_eq!(frame[4], READ_END);
        let mut rest = Bytes::from(frame[5..].to_vec());
        let status = Status::from_header_map(&take_headers(&mut rest).unwrap()).unwrap();
        assert_eq!((status.code(), status.message()), (tonic::Code::NotFound, "gone"));
        let checks = vec![Check { len: 1, crc32c: 0 }; MAX_CHECKS + 1];
        assert!(matches!(chunk_head(&checks, 10), Err(FrameError::TooLarge { what: "check count", .. })));
        assert!(matches!(chunk_head(&[], MAX_FRAME_BYTES), Err(FrameError::TooLarge { what: "frame", .. })));
    }

    #[tokio::test]
    async fn a_malformed_request_ends_that_connection_only() {
        let addr = owner(Duration::ZERO);
        let mut bad = TcpStream::connect(&addr).await.unwrap();
        bad.write_all(MAGIC).await.unwrap();
        bad.write_all(&((MAX_FRAME_BYTES + 1) as u32).to_le_bytes()).await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(bad.read_to_end(&mut rest).await.unwrap(), 0, "closed without an answer");
        let pool = Pool::default();
        let mut good = pool.connection(|| dial(&addr)).await.unwrap();
        assert!(call(&mut good, "/umbra.v1.Volume/Stat", &grpc_headers(), &[Bytes::from_static(b"\0\0\0\0\0")]).await.is_ok());
        // A path that is not a short call is UNIMPLEMENTED, and the connection goes on.
        let reply = call(&mut good, "/umbra.v1.Volume/Fence", &grpc_headers(), &[]).await.unwrap();
        assert_eq!(Status::from_header_map(&reply.trailers).unwrap().code(), tonic::Code::Unimplemented);
        assert!(call(&mut good, "/umbra.v1.Volume/Stat", &grpc_headers(), &[Bytes::from_static(b"\0\0\0\0\0")]).await.is_ok());
    }
}
