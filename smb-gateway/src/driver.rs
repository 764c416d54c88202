//! The tokio driver: accepts connections on the node's SMB address and runs each through a
//! sans-IO [`Connection`]. Frames are bounded before they are buffered.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::server::connection::{Connection, Outcome};
use crate::server::files::Files;
use crate::server::throttle::Throttle;
use crate::server::{Config, Directory, Environment};
use crate::smb2::frame;

/// The largest frame a client may send: a maximal WRITE plus headers.
pub fn max_frame_bytes(config: &Config) -> usize {
    config.max_io_bytes as usize + 64 * 1024
}

/// Replies up to this size are sent with their transport header in one write.
const SMALL_REPLY_BYTES: usize = 64 * 1024;

/// Connections served at once; more are refused until one ends.
pub const MAX_CONNECTIONS: usize = 1024;

struct Env(Arc<std::sync::Mutex<Throttle>>);

impl Environment for Env {
    fn throttle(&mut self) -> std::sync::MutexGuard<'_, Throttle> {
        self.0.lock().expect("throttle lock")
    }

    fn random(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(16) {
            let r = uuid::Uuid::new_v4();
            chunk.copy_from_slice(&r.as_bytes()[..chunk.len()]);
        }
    }

    fn now(&self) -> u64 {
        const UNIX_EPOCH_AS_FILETIME: u64 = 116_444_736_000_000_000;
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        UNIX_EPOCH_AS_FILETIME + (since.as_nanos() / 100) as u64
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, config: Config, directory: Arc<dyn Directory + Send + Sync>, files: Arc<dyn Files>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let throttle = Arc::new(std::sync::Mutex::new(Throttle::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many SMB connections; refusing one");
            continue;
        };
        let (config, directory, files, throttle) = (config.clone(), directory.clone(), files.clone(), throttle.clone());
        let span = tracing::info_span!("smb", %peer);
        tokio::spawn(
            async move {
                if let Err(e) = connection(stream, peer.ip().to_string(), config, directory, files, throttle).await {
                    tracing::debug!(error = %e, "connection ended");
                }
                drop(slot);
            }
            .instrument(span),
        );
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: String,
    config: Config,
    directory: Arc<dyn Directory + Send + Sync>,
    files: Arc<dyn Files>,
    throttle: Arc<std::sync::Mutex<Throttle>>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let max = max_frame_bytes(&config);
    let mut conn = Connection::new(config);
    conn.set_peer(&peer);
    let mut conn = Some(conn);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            let found = frame::next_frame(&buf, max).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            let Some((used, range)) = found else { break };
            // Storage calls may block (or wait on another node): run the frame on the blocking pool.
            let frame_bytes = buf[range].to_vec();
            buf.drain(..used);
            let (mut c, d, f, t) = (conn.take().expect("connection present"), directory.clone(), files.clone(), throttle.clone());
            let (c, outcome) = tokio::task::spawn_blocking(move || {
                let outcome = c.on_frame(&frame_bytes, d.as_ref(), f.as_ref(), &mut Env(t));
                (c, outcome)
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
            conn = Some(c);
            match outcome {
                Outcome::Reply(reply) => {
                    let head = frame::frame_header(reply.len()).map_err(|e| std::io::Error::other(e.to_string()))?;
                    if reply.len() <= SMALL_REPLY_BYTES {
                        // One segment for small replies.
                        stream.write_all(&[head.as_slice(), &reply].concat()).await?;
                    } else {
                        // Large ones go as they are: no copy of the body.
                        stream.write_all(&head).await?;
                        stream.write_all(&reply).await?;
                    }
                }
                // Final responses of waiting requests are sent by the driver of the next commit.
                Outcome::NoReply => {}
                Outcome::Close(why) => {
                    tracing::info!(%why, "closing the connection");
                    return Ok(());
                }
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
