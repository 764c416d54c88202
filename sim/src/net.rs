//! The simulation's side of the networking seam (`umbra_raft::network::Transport`): gRPC
//! clients connect through turmoil's TCP, and servers accept turmoil connections. Production
//! code is unchanged: it asks `umbra_raft::network::channel` for every channel.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Endpoint};

/// Connects every channel through turmoil (the host part of the URI is a turmoil host name).
pub struct TurmoilTransport;

impl umbra_raft::network::Transport for TurmoilTransport {
    fn connect(&self, endpoint: Endpoint) -> Channel {
        let connector = tower::service_fn(|uri: tonic::transport::Uri| async move {
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri.port_u16().unwrap_or(80);
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        });
        endpoint.connect_with_connector_lazy(connector)
    }
}

/// A turmoil connection as tonic's server wants it.
pub struct Conn(pub turmoil::net::TcpStream);

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepted connections of a turmoil listener, as a stream for `serve_with_incoming`.
pub fn incoming(listener: turmoil::net::TcpListener) -> impl futures::Stream<Item = std::io::Result<Conn>> {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| Conn(s));
        Some((next, l))
    })
}

/// Installs the turmoil transport and the virtual clock (once per process).
pub fn install() {
    umbra_raft::network::install_transport(Box::new(TurmoilTransport));
    umbra_raft::clock::install(|| turmoil::since_epoch().map(|d| d.as_millis() as u64).unwrap_or(0));
}
