//! The volume service's two bulk calls, Read and Write, on the wire without copying file data.
//!
//! Data flow: a node's gRPC server runs [`VolumeWire`] for `umbra.v1.Volume`. It answers Read
//! and Write itself and passes every other call to tonic's generated server. Both ends of a bulk
//! call frame their messages with [`umbra_proto::frames`]:
//! - each file-data field goes out as the `Bytes` the store or the client already holds;
//! - on the other side it is decoded as a slice of the HTTP/2 frame it arrived in.
//!
//! tonic's codec would copy each message into an encode buffer and again into a decode buffer
//! (see that module for why a codec cannot avoid it). What a call does stays in
//! [`VolumeService`]; only the encoding is here. [`read`] and [`write`] are the matching client
//! side, used by nodes to reach a volume's owner. The wire is plain gRPC, so tonic's generated
//! `VolumeClient` (tests, `umbra` CLI, the simulation) calls these handlers too.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame};
use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::server::NamedService;
use crate::direct_channel::PeerChannel;
use tonic::{Code, Status};
use tower_service::Service;
use umbra_proto::frames::{frame, frame_with_data, FrameError, MessageReader, DATA_CHUNK_DATA_FIELD, WRITE_CHUNK_DATA_FIELD};
use umbra_proto::v1::volume_server::{Volume as VolumeRpc, VolumeServer};
use umbra_proto::v1::{DataChunk, ReadRequest, WriteChunk, WrittenReply};

use crate::volume_service::{VolumeService, MAX_VOLUME_MESSAGE_BYTES};

pub(crate) const READ_PATH: &str = "/umbra.v1.Volume/Read";
pub(crate) const WRITE_PATH: &str = "/umbra.v1.Volume/Write";
/// Largest request or reply other than a data message (a ReadRequest, a WrittenReply).
const MAX_CONTROL_MESSAGE_BYTES: usize = 64 * 1024;
/// DATA frames a stream of messages takes in one poll without making a message, before it
/// lets other tasks run.
const FRAMES_PER_POLL: usize = 64;

/// The volume service as a node's gRPC server runs it.
#[derive(Clone)]
pub struct VolumeWire {
    service: Arc<VolumeService>,
    generated: VolumeServer<VolumeService>,
    /// The same, for the calls whose requests are lists bounded far below a volume message
    /// (deferred releases): decoded only up to their bound.
    lists: VolumeServer<VolumeService>,
}

/// Calls [`VolumeWire`] decodes up to [`crate::deferred_releases::MAX_RELEASES_REQUEST_BYTES`].
const LIST_PATHS: &[&str] = &["/umbra.v1.Volume/OpenReleases", "/umbra.v1.Volume/OpenFlush"];

impl VolumeWire {
    pub fn new(service: Arc<VolumeService>) -> Self {
        let generated = VolumeServer::from_arc(service.clone()).max_decoding_message_size(MAX_VOLUME_MESSAGE_BYTES).max_encoding_message_size(MAX_VOLUME_MESSAGE_BYTES);
        let lists = VolumeServer::from_arc(service.clone()).max_decoding_message_size(crate::deferred_releases::MAX_RELEASES_REQUEST_BYTES);
        VolumeWire { service, generated, lists }
    }
}

impl NamedService for VolumeWire {
    const NAME: &'static str = <VolumeServer<VolumeService> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for VolumeWire {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // Releases riding on the call (crate::deferred_releases) go first.
        match crate::deferred_releases::riders(req.headers()) {
            Ok(None) => self.dispatch(req),
            Ok(Some(riders)) => {
                let mut wire = self.clone();
                Box::pin(async move {
                    let from = riders.releases.first().and_then(|r| r.gateway);
                    let batch = riders.batch;
                    wire.service.carry_out_releases(riders.releases).await;
                    // A flush asked of that gateway from now on does not wait for this batch.
                    if let Some(g) = from {
                        wire.service.carried().note(g.node, g.incarnation, batch);
                    }
                    wire.dispatch(req).await
                })
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

impl VolumeWire {
    fn dispatch(&mut self, req: http::Request<Body>) -> BoxFuture<'static, Result<http::Response<Body>, Infallible>> {
        let service = self.service.clone();
        match req.uri().path() {
            READ_PATH => Box::pin(async move { Ok(serve_read(service, req.into_body()).await) }),
            WRITE_PATH => Box::pin(async move { Ok(serve_write(service, req.into_body()).await) }),
            path if LIST_PATHS.contains(&path) => self.lists.call(req),
            _ => self.generated.call(req),
        }
    }
}

impl crate::short_calls::Reads for VolumeWire {
    fn read(&self, request: ReadRequest) -> BoxFuture<'static, Result<crate::short_calls::ReadMessages, Status>> {
        let service = self.service.clone();
        Box::pin(async move { Ok(VolumeRpc::read(&*service, tonic::Request::new(request)).await?.into_inner()) })
    }
}

async fn serve_read(service: Arc<VolumeService>, body: Body) -> http::Response<Body> {
    let request = match only_message::<ReadRequest>(Messages::request(body, MAX_CONTROL_MESSAGE_BYTES)).await {
        Ok(r) => r,
        Err(status) => return status.into_http(),
    };
    match VolumeRpc::read(&*service, tonic::Request::new(request)).await {
        Ok(chunks) => {
            let pieces = chunks.into_inner().map(|c| c.and_then(data_chunk_pieces));
            reply(Framed::reply(pieces))
        }
        Err(status) => status.into_http(),
    }
}

async fn serve_write(service: Arc<VolumeService>, body: Body) -> http::Response<Body> {
    match service.write_stream(Messages::request(body, MAX_VOLUME_MESSAGE_BYTES)).await {
        Ok(written) => reply(Framed::reply(one_message(&written))),
        Err(status) => status.into_http(),
    }
}

fn reply(body: impl HttpBody<Data = Bytes, Error = Status> + Send + 'static) -> http::Response<Body> {
    let mut r = http::Response::new(Body::new(body));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    r
}

fn data_chunk_pieces(c: DataChunk) -> Result<[Bytes; 2], Status> {
    frame_with_data(&DataChunk { data: Bytes::new(), checks: c.checks }, DATA_CHUNK_DATA_FIELD, c.data).map_err(frame_status)
}

fn write_chunk_pieces(mut c: WriteChunk) -> Result<[Bytes; 2], Status> {
    let data = std::mem::take(&mut c.data);
    frame_with_data(&c, WRITE_CHUNK_DATA_FIELD, data).map_err(frame_status)
}

/// Reads `length` bytes at `offset` from the node behind `channel`, as the messages arrive.
pub async fn read(channel: impl Into<PeerChannel>, request: ReadRequest) -> Result<Messages<DataChunk>, Status> {
    call(channel.into(), READ_PATH, Framed::request(one_message(&request))).await
}

/// Sends `chunks` to the node behind `channel` as one Write call (each chunk one store write).
/// An error in `chunks` resets the call, so the node fails it rather than taking the chunks
/// before it as the whole write.
pub async fn write(channel: impl Into<PeerChannel>, chunks: impl Stream<Item = Result<WriteChunk, Status>> + Send + Unpin + 'static) -> Result<WrittenReply, Status> {
    let body = Framed::request(chunks.map(|c| c.and_then(write_chunk_pieces)));
    only_message(call::<WrittenReply>(channel.into(), WRITE_PATH, body).await?).await
}

/// Sends one small chunk as one Write call: between nodes a short call
/// ([`crate::short_calls`]), at most [`SHORT_WRITE_BYTES`] of data.
pub async fn write_small(channel: impl Into<PeerChannel>, chunk: WriteChunk) -> Result<WrittenReply, Status> {
    let one = chunk.data.len() <= SHORT_WRITE_BYTES;
    let body = Framed::request(tokio_stream::once(write_chunk_pieces(chunk)));
    let mut req = request(WRITE_PATH, body);
    if one {
        req.extensions_mut().insert(crate::short_calls::OneMessage);
    }
    only_message(send::<WrittenReply>(channel.into(), req).await?).await
}

/// Data of a Write that goes as a short call at most: larger writes stay on HTTP/2, whose
/// buffers the owner reuses (a short call's frame is read into a buffer of its own).
pub const SHORT_WRITE_BYTES: usize = 64 * 1024;

fn request(path: &'static str, body: impl HttpBody<Data = Bytes, Error = Status> + Send + 'static) -> http::Request<Body> {
    let mut req = http::Request::new(Body::new(body));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_static(path);
    req.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    req.headers_mut().insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    req
}

async fn call<M: Message + Default>(channel: PeerChannel, path: &'static str, body: impl HttpBody<Data = Bytes, Error = Status> + Send + 'static) -> Result<Messages<M>, Status> {
    send(channel, request(path, body)).await
}

async fn send<M: Message + Default>(mut channel: PeerChannel, req: http::Request<Body>) -> Result<Messages<M>, Status> {
    futures::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(Status::from_error)?;
    let response = channel.call(req).await.map_err(Status::from_error)?;
    if response.status() != http::StatusCode::OK {
        return Err(Status::new(code_of_http(response.status()), format!("the volume service answered HTTP {}", response.status())));
    }
    // A reply of headers only carries its status in them.
    let (mut parts, body) = response.into_parts();
    let finished = match status_in(&mut parts.headers) {
        Some(s) if s.code() != Code::Ok => return Err(s),
        Some(_) => true,
        None => false,
    };
    let mut messages = Messages::response(body, MAX_VOLUME_MESSAGE_BYTES);
    messages.done = finished;
    Ok(messages)
}

/// The gRPC status in `headers`, if any. Status details (which Umbra never sends) are dropped
/// first: tonic panics on details that are not base64.
fn status_in(headers: &mut http::HeaderMap) -> Option<Status> {
    headers.remove("grpc-status-details-bin");
    Status::from_header_map(headers)
}

/// An HTTP status other than 200 as a gRPC code (PROTOCOL-HTTP2.md, "HTTP to gRPC Status Code
/// Mapping").
fn code_of_http(status: http::StatusCode) -> Code {
    match status.as_u16() {
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// A framing error as a status: a message over the limit is RESOURCE_EXHAUSTED, as gRPC's
/// own implementations say it.
fn frame_status(e: FrameError) -> Status {
    match e {
        FrameError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// The one message of a unary request or reply (and, for a reply, its OK status).
async fn only_message<M: Message + Default + Unpin>(mut messages: Messages<M>) -> Result<M, Status> {
    let first = messages.next().await.ok_or_else(|| Status::internal("a gRPC call without its message"))??;
    match messages.next().await {
        None => Ok(first),
        Some(Err(status)) => Err(status),
        Some(Ok(_)) => Err(Status::internal("a unary gRPC call with two messages")),
    }
}

/// The messages of an HTTP body of gRPC frames. A reply ends with its status (trailers); an
/// error in the framing or the status ends the stream with that error.
pub struct Messages<M> {
    body: Body,
    reader: MessageReader,
    response: bool,
    done: bool,
    _message: PhantomData<fn() -> M>,
}

impl<M> Messages<M> {
    fn request(body: Body, max_message_bytes: usize) -> Self {
        Messages { body, reader: MessageReader::new(max_message_bytes), response: false, done: false, _message: PhantomData }
    }

    fn response(body: Body, max_message_bytes: usize) -> Self {
        Messages { response: true, ..Self::request(body, max_message_bytes) }
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<M, Status>>> {
        self.done = true;
        Poll::Ready(Some(Err(status)))
    }

    /// The stream's end with `status`: its error, or an error if a message was cut short;
    /// otherwise nothing more to yield.
    fn end(&mut self, status: Status) -> Option<Poll<Option<Result<M, Status>>>> {
        if status.code() != Code::Ok {
            return Some(self.fail(status));
        }
        self.done = true;
        self.reader.finish().err().map(|e| self.fail(frame_status(e)))
    }
}

impl<M: Message + Default> Stream for Messages<M> {
    type Item = Result<M, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut frames = 0;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.reader.next_message() {
                Ok(Some(bytes)) => match M::decode(bytes) {
                    Ok(m) => return Poll::Ready(Some(Ok(m))),
                    Err(e) => return this.fail(Status::internal(format!("a malformed gRPC message: {e}"))),
                },
                Ok(None) => {}
                Err(e) => return this.fail(frame_status(e)),
            }
            // Frames that make no message (empty or tiny ones) do not keep the task from
            // yielding to others.
            frames += 1;
            if frames > FRAMES_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.reader.push(data),
                    // A request's trailers carry nothing; a reply's carry its status.
                    Err(frame) => {
                        if let (true, Ok(mut trailers)) = (this.response, frame.into_trailers()) {
                            let status = status_in(&mut trailers).unwrap_or_else(|| Status::internal("a gRPC reply without a status"));
                            if let Some(end) = this.end(status) {
                                return end;
                            }
                        }
                    }
                },
                Some(Err(status)) => return this.fail(status),
                None if this.response => return this.fail(Status::internal("a gRPC reply ended without a status")),
                None => {
                    if let Some(end) = this.end(Status::ok("")) {
                        return end;
                    }
                }
            }
        }
    }
}

/// An HTTP body of framed messages, each as its two pieces. A reply ends with a status in its
/// trailers: OK, or the error that ended the stream of pieces.
struct Framed<S> {
    pieces: S,
    pending: Option<Bytes>,
    ends_with_status: bool,
    done: bool,
}

impl<S> Framed<S> {
    /// A reply's body: the pieces, then the status in trailers.
    fn reply(pieces: S) -> Self {
        Framed { pieces, pending: None, ends_with_status: true, done: false }
    }

    /// A request's body: the pieces only.
    fn request(pieces: S) -> Self {
        Framed { ends_with_status: false, ..Self::reply(pieces) }
    }
}

/// One whole message as a stream of pieces (a unary request or reply).
fn one_message(msg: &impl Message) -> impl Stream<Item = Result<[Bytes; 2], Status>> + Unpin {
    tokio_stream::once(frame(msg).map(|b| [b, Bytes::new()]).map_err(frame_status))
}

impl<S: Stream<Item = Result<[Bytes; 2], Status>> + Unpin> HttpBody for Framed<S> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(data) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let end = match ready!(Pin::new(&mut this.pieces).poll_next(cx)) {
            Some(Ok([head, data])) => {
                this.pending = (!data.is_empty()).then_some(data);
                return Poll::Ready(Some(Ok(Frame::data(head))));
            }
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        this.done = true;
        if !this.ends_with_status {
            // A request cannot carry a status: an error ends it by resetting the stream.
            return Poll::Ready((end.code() != Code::Ok).then_some(Err(end)));
        }
        let mut trailers = http::HeaderMap::new();
        match end.add_header(&mut trailers) {
            Ok(()) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Err(status) => Poll::Ready(Some(Err(status))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message of `data` with its checksum.
    fn data_chunk(data: Vec<u8>) -> DataChunk {
        let checks = if data.is_empty() { vec![] } else { vec![umbra_proto::v1::Check::of(&data)] };
        DataChunk { data: data.into(), checks }
    }

    fn chunks(n: usize) -> Vec<DataChunk> {
        (0..n).map(|i| data_chunk(vec![i as u8; 1000 * i])).collect()
    }

    fn reply_of(items: Vec<Result<DataChunk, Status>>) -> Messages<DataChunk> {
        let pieces = tokio_stream::iter(items).map(|c| c.and_then(data_chunk_pieces));
        Messages::response(Body::new(Framed::reply(pieces)), 1 << 20)
    }

    #[tokio::test]
    async fn a_reply_gives_its_messages_then_its_status_with_metadata() {
        let sent = chunks(4);
        let got: Vec<_> = reply_of(sent.iter().cloned().map(Ok).collect()).collect().await;
        assert_eq!(got.into_iter().collect::<Result<Vec<_>, _>>().unwrap(), sent);

        let mut failed = Status::not_found("no such file");
        failed.metadata_mut().insert("umbra-error", "not_found".parse().unwrap());
        let mut items: Vec<_> = sent.iter().take(2).cloned().map(Ok).collect();
        items.push(Err(failed));
        let got: Vec<_> = reply_of(items).collect().await;
        assert_eq!(got.len(), 3);
        let e = got[2].as_ref().unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::NotFound, "no such file"));
        assert_eq!(e.metadata().get("umbra-error").unwrap(), "not_found");
    }

    #[tokio::test]
    async fn a_request_has_no_status_and_a_reply_needs_one() {
        let pieces = tokio_stream::iter(chunks(3)).map(data_chunk_pieces);
        let body = Body::new(Framed::request(pieces));
        let got: Vec<_> = Messages::<DataChunk>::request(body, 1 << 20).collect().await;
        assert_eq!(got.into_iter().collect::<Result<Vec<_>, _>>().unwrap(), chunks(3));

        let pieces = tokio_stream::iter(chunks(2)).map(data_chunk_pieces);
        let body = Body::new(Framed::request(pieces));
        let got: Vec<_> = Messages::<DataChunk>::response(body, 1 << 20).collect().await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].as_ref().unwrap_err().code(), Code::Internal, "a reply that ends without a status is an error");
    }

    /// A body of the given frames, as a peer might send them.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(Ok))
        }
    }

    fn trailers(pairs: &[(&'static str, &'static str)]) -> Frame<Bytes> {
        let mut t = http::HeaderMap::new();
        for (k, v) in pairs {
            t.insert(*k, http::HeaderValue::from_static(v));
        }
        Frame::trailers(t)
    }

    #[tokio::test]
    async fn bad_status_details_from_a_peer_are_dropped_not_a_panic() {
        let body = Frames([trailers(&[("grpc-status", "5"), ("grpc-message", "gone"), ("grpc-status-details-bin", "!!not base64!!")])].into());
        let got: Vec<_> = Messages::<DataChunk>::response(Body::new(body), 1 << 20).collect().await;
        let e = got[0].as_ref().unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::NotFound, "gone"));
    }

    #[tokio::test]
    async fn a_flood_of_frames_that_make_no_message_yields_and_loses_nothing() {
        let [head, data] = data_chunk_pieces(data_chunk(vec![3; 10])).unwrap();
        let mut frames: std::collections::VecDeque<_> = (0..1000).map(|_| Frame::data(Bytes::new())).collect();
        frames.extend(head.iter().chain(data.iter()).map(|b| Frame::data(Bytes::copy_from_slice(&[*b]))));
        frames.push_back(trailers(&[("grpc-status", "0")]));
        let got: Vec<_> = Messages::<DataChunk>::response(Body::new(Frames(frames)), 1 << 20).collect().await;
        assert_eq!(got.into_iter().collect::<Result<Vec<_>, _>>().unwrap(), vec![data_chunk(vec![3; 10])]);
    }

    #[tokio::test]
    async fn an_oversized_or_cut_message_ends_the_stream_with_an_error() {
        let pieces = tokio_stream::iter(vec![data_chunk(vec![1; 5000])]).map(data_chunk_pieces);
        let body = Body::new(Framed::request(pieces));
        let got: Vec<_> = Messages::<DataChunk>::request(body, 4096).collect().await;
        assert_eq!(got.len(), 1);
        let e = got[0].as_ref().unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("over the limit"));

        let [head, data] = data_chunk_pieces(data_chunk(vec![1; 100])).unwrap();
        let cut = tokio_stream::iter(vec![Ok([head, data.slice(..50)])]);
        let body = Body::new(Framed::request(cut));
        let got: Vec<_> = Messages::<DataChunk>::request(body, 4096).collect().await;
        assert!(got[0].as_ref().unwrap_err().message().contains("ended 66 bytes into"), "{got:?}");
    }
}
