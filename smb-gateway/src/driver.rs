//! The tokio driver: accepts connections on the node's SMB address and runs each through a
//! sans-IO [`Connection`]. Frames are bounded before they are buffered. Each connection has a
//! reader (frames in, run on the blocking pool, since storage calls block) and a writer task
//! (replies out, in order), so that final responses to requests that waited go out while the
//! reader waits for the client. A large WRITE that is a frame of its own is carried out on the
//! blocking pool too, with the frame it came in, while the reader goes on with the client's
//! next WRITEs; any other request waits until those are done
//! ([`crate::server::connection::FileWrite`]). READs of files another node owns are fetched off
//! the connection's thread too, in order, [`REMOTE_READ_BYTES_AT_ONCE`] at most at once. The node's notifier carries directory changes in a broadcast
//! channel: every connection publishes the changes its commands made, and those that watch a
//! directory listen; the node relays its connections' changes to the other nodes' notifiers
//! (node/src/notify_relay.rs), so a watch sees changes made through any node's gateway. It also
//! counts releases of byte-range locks by any node's volume owner ([`Releases`]), which
//! connections with a lock waiting for its range watch.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use crate::server::connection::{Connection, Outcome};
use crate::server::files::{Files, FsError};
use crate::server::notify::Change;
use crate::server::throttle::Throttle;
use crate::server::{Config, Directory, Environment};
use crate::smb2::frame;

/// Batches of changes (one per frame that made any) the node's notifier holds for a connection
/// that has not taken them yet; one that falls further behind loses them, and its watches
/// answer STATUS_NOTIFY_ENUM_DIR.
pub const NOTIFIER_QUEUE_BATCHES: usize = 1024;

/// The largest frame a connection may send before it has established a session.
pub const PRE_LOGON_FRAME_BYTES: usize = 64 * 1024;

/// Replies queued for a connection's writer; past this the reader waits for the writer.
pub const WRITE_QUEUE_FRAMES: usize = 64;
/// Bytes of replies queued for a connection's writer; past this the reader waits for the
/// writer (64 large READ replies would otherwise be held for a client that does not read).
pub const WRITE_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// A client that takes no part of a reply for this long ends its connection (replies go out
/// in pieces of [`WRITE_PIECE_BYTES`], each given this long: a slow client that keeps reading
/// is not cut off).
#[cfg(not(test))]
pub const WRITE_STALL: std::time::Duration = std::time::Duration::from_secs(60);
#[cfg(test)]
pub const WRITE_STALL: std::time::Duration = std::time::Duration::from_millis(300);
/// What one write of a large reply hands the socket at most.
const WRITE_PIECE_BYTES: usize = 1 << 20;
/// A connection with no established session this long after it began is closed (one that
/// never logs on would hold one of [`MAX_CONNECTIONS`] for ever).
#[cfg(not(test))]
pub const LOGON_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);
#[cfg(test)]
pub const LOGON_WITHIN: std::time::Duration = std::time::Duration::from_millis(300);

/// Changes one frame made (or a peer node relayed); `lost`: changes before these were dropped
/// on the way (watches answer STATUS_NOTIFY_ENUM_DIR).
#[derive(Debug, Default)]
pub struct ChangeBatch {
    /// Relayed from another node (not relayed again).
    pub from_peer: bool,
    pub lost: bool,
    pub changes: Vec<Change>,
}

/// Bytes of names one batch carries at most: the notifier holds up to
/// [`NOTIFIER_QUEUE_BATCHES`] for a connection that lags, so this bounds what it holds (64 MiB).
/// A larger batch goes as `lost` without its changes (watches answer NOTIFY_ENUM_DIR).
pub const MAX_CHANGE_BATCH_BYTES: usize = 64 * 1024;

impl ChangeBatch {
    /// This batch, or, past [`MAX_CHANGE_BATCH_BYTES`] of names, one that only says changes
    /// were lost.
    pub fn bounded(self) -> ChangeBatch {
        let bytes: usize = self
            .changes
            .iter()
            .map(|c| c.share.len() + c.path.len() + if let crate::server::notify::ChangeKind::Renamed { from } = &c.kind { from.len() } else { 0 })
            .sum();
        if bytes <= MAX_CHANGE_BATCH_BYTES {
            return self;
        }
        ChangeBatch { from_peer: self.from_peer, lost: true, changes: Vec::new() }
    }
}

/// The node's notifier: directory changes (every connection of the node publishes to it, and
/// so does the relay from other nodes) and releases of byte-range locks.
#[derive(Clone)]
pub struct Notifier {
    pub changes: broadcast::Sender<Arc<ChangeBatch>>,
    pub releases: Releases,
}

/// A notifier for [`serve`].
pub fn notifier() -> Notifier {
    Notifier { changes: broadcast::channel(NOTIFIER_QUEUE_BATCHES).0, releases: Releases::default() }
}

/// News that byte-range locks were let go, for locks waiting for their ranges: counters that
/// each release bumps, so that however many releases come, a waiting connection sees one
/// change, and one that was not looking sees it when it next looks (nothing queues, nothing
/// is lost). `all` counts releases on any node (what connections watch); `here` counts those
/// this node's volume owner made, which the node's relay passes to the other nodes
/// (node/src/notify_relay.rs), where they count in `all`.
#[derive(Clone, Default)]
pub struct Releases {
    all: Arc<tokio::sync::watch::Sender<u64>>,
    here: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Releases {
    /// This node's volume owner let locks go.
    pub fn released_here(&self) {
        self.here.send_modify(|n| *n = n.wrapping_add(1));
        self.released_elsewhere();
    }

    /// Another node's owner let locks go (its relay said so).
    pub fn released_elsewhere(&self) {
        self.all.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Releases on any node from now on.
    pub fn watch_all(&self) -> tokio::sync::watch::Receiver<u64> {
        self.all.subscribe()
    }

    /// Releases this node's owner makes from now on.
    pub fn watch_here(&self) -> tokio::sync::watch::Receiver<u64> {
        self.here.subscribe()
    }
}

/// The largest frame a client may send: a maximal WRITE plus headers.
pub fn max_frame_bytes(config: &Config) -> usize {
    config.max_io_bytes as usize + 64 * 1024
}

/// What one read from a connection's socket takes at most, when no longer frame is under way.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Replies up to this size are sent with their transport header in one write.
const SMALL_REPLY_BYTES: usize = 64 * 1024;

/// Connections served at once; more are refused until one ends.
pub const MAX_CONNECTIONS: usize = 1024;

struct Env(Arc<std::sync::Mutex<Throttle>>);

impl Environment for Env {
    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.0.lock().expect("throttle lock")
    }

    /// From the operating system's generator through aws-lc (a version 4 UUID fixes 6 of its
    /// 128 bits, so server challenges built from them had 60 random bits of 64).
    fn random(&mut self, out: &mut [u8]) {
        use aws_lc_rs::rand::SecureRandom;
        aws_lc_rs::rand::SystemRandom::new().fill(out).expect("the system's random generator");
    }

    fn now(&self) -> u64 {
        filetime_now()
    }
}

/// The current time as FILETIME (100 ns ticks since 1601).
fn filetime_now() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    crate::wire::UNIX_EPOCH_AS_FILETIME + (since.as_nanos() / 100) as u64
}

/// Serves until the task is dropped; failed logons count in `throttle` (the node shares it
/// with the other nodes: [`Throttle::take_to_relay`]).
pub async fn serve(listener: TcpListener, config: Config, directory: Arc<dyn Directory + Send + Sync>, files: Arc<dyn Files>, notifier: Notifier, throttle: Arc<std::sync::Mutex<Throttle>>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        let (config, directory, files, throttle, notifier) = (config.clone(), directory.clone(), files.clone(), throttle.clone(), notifier.clone());
        let span = tracing::info_span!("smb", %peer);
        tokio::spawn(
            async move {
                let shared = Shared { directory, files, throttle, notifier };
                if let Err(e) = connection(stream, peer.ip().to_string(), config, shared).await {
                    tracing::debug!(error = %e, "connection ended");
                }
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// What a connection shares with the node's others.
struct Shared {
    directory: Arc<dyn Directory + Send + Sync>,
    files: Arc<dyn Files>,
    throttle: Arc<std::sync::Mutex<Throttle>>,
    notifier: Notifier,
}

async fn connection(stream: TcpStream, peer: String, config: Config, shared: Shared) -> std::io::Result<()> {
    let (max, lock_retry) = (max_frame_bytes(&config), config.lock_retry);
    let mut conn = Connection::new(config);
    conn.set_peer(&peer);
    run_connection(stream, conn, max, lock_retry, shared).await
}

/// Runs a connection's frames through `conn` until the client or an error ends it.
async fn run_connection(stream: TcpStream, conn: Connection, max: usize, lock_retry: std::time::Duration, shared: Shared) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::channel(WRITE_QUEUE_FRAMES);
    let tx = Queue { tx, budget: Arc::new(tokio::sync::Semaphore::new(WRITE_QUEUE_BYTES / 1024)) };
    let writer = tokio::spawn(write_frames(writer, rx).in_current_span());
    // The state stays here, so that whatever ends the reader, the connection's end can use it.
    let mut conn = Some(conn);
    let mut writes = tokio::task::JoinSet::new();
    let read = read_frames(reader, max, lock_retry, &mut conn, &shared, tx, &mut writes).await;
    // However the connection ended, its opens close and their share modes are released, once
    // the WRITEs under way are done (none lands after its open's close).
    while writes.join_next().await.is_some() {}
    if let Some(mut c) = conn {
        let files = shared.files.clone();
        let _ = tokio::task::spawn_blocking(move || c.end(files.as_ref(), filetime_now())).await;
    }
    // The writer ends once the reader has dropped its queue and what was queued is written.
    let written = writer.await.map_err(|e| std::io::Error::other(e.to_string()))?;
    read.and(written)
}

/// Reads frames, runs them through the connection, queues what it answers; meanwhile takes the
/// node's changes when the connection watches a directory.
/// `conn` is absent only while a frame runs on the blocking pool.
/// `writes`: the connection's WRITEs under way off its thread ([`crate::server::connection::FileWrite`]); every request but
/// a lone WRITE waits for them, so none overtakes a WRITE the client sent before it.
#[allow(clippy::too_many_arguments)]
async fn read_frames(mut reader: OwnedReadHalf, max: usize, lock_retry: std::time::Duration, conn: &mut Option<Connection>, shared: &Shared, tx: Queue, writes: &mut Writes) -> std::io::Result<()> {
    let mut changes: Option<broadcast::Receiver<Arc<ChangeBatch>>> = None;
    // Bytes read and not yet run; the socket is read straight into it.
    let mut buf = Vec::with_capacity(READ_CHUNK_BYTES);
    // READs of files on other nodes, carried out off the connection's thread, come back here.
    let (read_tx, mut read_rx) = mpsc::channel::<(u64, Result<Vec<u8>, FsError>)>(crate::server::connection::FILE_READ_RESULTS_QUEUED);
    let mut remote_reads = RemoteReads::new(shared.files.clone(), read_tx, REMOTE_READ_BYTES_AT_ONCE);
    let logon_by = tokio::time::Instant::now() + LOGON_WITHIN;
    // Once a session was established, the deadline is over (a later LOGOFF and logon again
    // are the client's business).
    let mut logged_on_once = false;
    // Locks that wait for their range are asked for again when locks were let go, and at this
    // pace in any case.
    let mut lock_retry = tokio::time::interval(lock_retry);
    lock_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Locks let go anywhere: a release heard of within RELEASE_RETRY_GAP of the last retry it
    // caused waits for the gap's end, so however fast others lock and unlock, this
    // connection's waiting locks cost their owners a bounded rate of calls. The watch counts
    // releases while no lock waits too: a lock refused just before a release is asked for
    // again.
    let mut releases = shared.notifier.releases.watch_all();
    let (mut release_heard, mut release_retry_at) = (false, tokio::time::Instant::now());
    loop {
        loop {
            // Until a session is established a client sends only NEGOTIATE and SESSION_SETUP,
            // which are small: a large frame is not held for a client nobody knows yet.
            let limit = if logged_on_once { max } else { max.min(PRE_LOGON_FRAME_BYTES) };
            let found = frame::next_frame(&buf, limit).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            let Some((used, range)) = found else { break };
            if !writes.is_empty() && !lone_write(&buf[range.clone()]) {
                let Some(c) = conn.as_mut() else { return Err(std::io::Error::other("connection state lost")) };
                answer_writes(c, writes, &tx).await?;
            }
            // The frame leaves with the buffer it was read into (no copy); what follows it
            // stays. Storage calls may block (or wait on another node): run the frame on the
            // blocking pool.
            let rest = buf.split_off(used);
            let frame_bytes = std::mem::replace(&mut buf, rest);
            let Some(c) = conn.take() else { return Err(std::io::Error::other("connection state lost")) };
            let (d, f, t) = (shared.directory.clone(), shared.files.clone(), shared.throttle.clone());
            let at = range.clone();
            let (mut c, outcome, frame_bytes) = tokio::task::spawn_blocking(move || {
                let (mut c, mut frame_bytes) = (c, frame_bytes);
                let outcome = run_frame(&mut c, &mut frame_bytes[at], d.as_ref(), f.as_ref(), &mut Env(t));
                (c, outcome, frame_bytes)
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
            let handed = c.take_file_writes();
            if !handed.is_empty() {
                // The frame goes with its WRITE (its data is not copied).
                let frame = Arc::new(frame_bytes);
                for w in handed {
                    let (files, frame, data) = (shared.files.clone(), frame.clone(), range.start + w.data.start..range.start + w.data.end);
                    let span = tracing::debug_span!("write", token = w.token, offset = w.offset, bytes = data.len());
                    writes.spawn_blocking(move || {
                        let _in = span.enter();
                        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| files.write(&w.share, w.id, w.offset, &frame[data], w.stamp, w.open)));
                        (w.token, written.ok())
                    });
                }
            }
            let c = conn.insert(c);
            while let Some(done) = writes.try_join_next() {
                finish_write(c, done, &tx).await?;
            }
            logged_on_once = logged_on_once || c.logged_on();
            let made = c.take_changes();
            if !made.is_empty() {
                publish(shared, made);
            }
            // Listen to the node's changes from before the client can learn its watch is set.
            match (c.watching(), changes.is_some()) {
                (true, false) => changes = Some(shared.notifier.changes.subscribe()),
                (false, true) => changes = None,
                _ => {}
            }
            for r in c.take_file_reads() {
                remote_reads.fetch(r).await?;
            }
            for f in c.take_sends() {
                tx.send(f).await?;
            }
            match outcome {
                Outcome::Reply(reply) => tx.send(reply).await?,
                Outcome::NoReply => {}
                Outcome::Close(why) => {
                    tracing::info!(%why, "closing the connection");
                    return answer_writes(c, writes, &tx).await;
                }
            }
        }
        // Room for the rest of the frame under way (its length is bounded by next_frame), or
        // for the next read.
        let want = frame::announced_bytes(&buf).map_or(READ_CHUNK_BYTES, |n| n.saturating_sub(buf.len()).max(READ_CHUNK_BYTES));
        buf.reserve(want);
        logged_on_once = logged_on_once || conn.as_ref().is_some_and(Connection::logged_on);
        tokio::select! {
            _ = tokio::time::sleep_until(logon_by), if !logged_on_once => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no session established within {} s", LOGON_WITHIN.as_secs())));
            }
            // The writer ended (the client stopped taking replies): so does the connection.
            _ = tx.tx.closed() => return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the connection's writer ended")),
            n = reader.read_buf(&mut buf) => {
                if n? == 0 {
                    // The client sends no more; the WRITEs it sent are still answered.
                    let Some(c) = conn.as_mut() else { return Err(std::io::Error::other("connection state lost")) };
                    return answer_writes(c, writes, &tx).await;
                }
            }
            _ = lock_retry.tick(), if conn.as_ref().is_some_and(Connection::locks_waiting) => {
                retry_locks(conn, shared, &tx).await?;
            }
            Ok(()) = releases.changed(), if !release_heard && conn.as_ref().is_some_and(Connection::locks_waiting) => {
                release_heard = true;
            }
            _ = tokio::time::sleep_until(release_retry_at), if release_heard => {
                release_heard = false;
                if conn.as_ref().is_some_and(Connection::locks_waiting) {
                    release_retry_at = tokio::time::Instant::now() + RELEASE_RETRY_GAP;
                    retry_locks(conn, shared, &tx).await?;
                }
            }
            Some(done) = writes.join_next(), if !writes.is_empty() => {
                let Some(c) = conn.as_mut() else { return Err(std::io::Error::other("connection state lost")) };
                finish_write(c, done, &tx).await?;
            }
            Some((async_id, result)) = read_rx.recv() => {
                let Some(c) = conn.as_mut() else { return Err(std::io::Error::other("connection state lost")) };
                c.finish_file_read(async_id, result);
                for f in c.take_sends() {
                    tx.send(f).await?;
                }
            }
            got = next_changes(&mut changes) => {
                let Some(c) = conn.as_mut() else { return Err(std::io::Error::other("connection state lost")) };
                match got {
                    Ok(batch) => {
                        if batch.lost {
                            c.on_changes_lost();
                        }
                        c.on_changes(&batch.changes)
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(lost = n, "this connection fell behind the node's changes");
                        c.on_changes_lost();
                    }
                    Err(broadcast::error::RecvError::Closed) => changes = None,
                }
                for f in c.take_sends() {
                    tx.send(f).await?;
                }
            }
        }
    }
}

/// Bytes of READs of one share's files on other nodes a connection fetches at once. A READ
/// past them waits for those before it to be fetched, in the order the client sent them: of
/// two large READs the first is answered and goes out while the second is fetched, where
/// fetched together both would be answered late (measured with smbclient's two 8 MiB READs at
/// a time: cross-node gets 0.70 of local, against 0.64-0.66 fetched together;
/// docs/benchmarks.md, Run 24). Small READs still go together, each a call to the owner of
/// its own.
pub const REMOTE_READ_BYTES_AT_ONCE: u32 = 8 << 20;

/// Where a connection's READs of files on other nodes go to be fetched off its thread: one line
/// per share ([`fetch_in_order`]), so a slow or unreachable owner holds up only the READs of
/// the shares on its volumes. Each result goes to `done`; the lines end with this.
struct RemoteReads {
    files: Arc<dyn Files>,
    done: mpsc::Sender<(u64, Result<Vec<u8>, FsError>)>,
    at_once: u32,
    lines: std::collections::HashMap<String, mpsc::Sender<crate::server::connection::FileRead>>,
}

impl RemoteReads {
    fn new(files: Arc<dyn Files>, done: mpsc::Sender<(u64, Result<Vec<u8>, FsError>)>, at_once: u32) -> Self {
        RemoteReads { files, done, at_once, lines: std::collections::HashMap::new() }
    }

    /// Hands `r` to its share's line (a line's queue never fills: a connection has at most
    /// MAX_FILE_READS_IN_FLIGHT under way).
    async fn fetch(&mut self, r: crate::server::connection::FileRead) -> std::io::Result<()> {
        let line = self.lines.entry(r.share.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(crate::server::connection::MAX_FILE_READS_IN_FLIGHT);
            tokio::spawn(fetch_in_order(rx, self.files.clone(), self.done.clone(), self.at_once).in_current_span());
            tx
        });
        line.send(r).await.map_err(|_| std::io::Error::other("a line of reads from other nodes ended"))
    }
}

/// Fetches one share's READs in order, at most `at_once` bytes
/// ([`REMOTE_READ_BYTES_AT_ONCE`]) at once.
async fn fetch_in_order(mut line: mpsc::Receiver<crate::server::connection::FileRead>, files: Arc<dyn Files>, done: mpsc::Sender<(u64, Result<Vec<u8>, FsError>)>, at_once: u32) {
    let budget = Arc::new(tokio::sync::Semaphore::new(at_once as usize));
    while let Some(r) = line.recv().await {
        let Ok(turn) = budget.clone().acquire_many_owned(r.len.clamp(1, at_once)).await else { return };
        // The connection ended: nobody waits for the READs still queued.
        if done.is_closed() {
            return;
        }
        let (files, done) = (files.clone(), done.clone());
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || files.read(&r.share, r.id, r.offset, r.len, crate::server::READ_ROOM, r.open)).await.unwrap_or_else(|e| Err(FsError::Other(format!("read task: {e}"))));
            // Fetched: the next READ may start while this one's reply goes out.
            drop(turn);
            // The connection may have ended meanwhile: then nobody waits for it.
            let _ = done.send((r.async_id, result)).await;
        });
    }
}

/// WRITEs carried out off a connection's thread: each one's token and result (None: the
/// storage panicked).
type Writes = tokio::task::JoinSet<(u64, Option<Result<(), FsError>>)>;

/// Whether a frame is one WRITE, which may run while the connection's WRITEs are under way.
fn lone_write(frame: &[u8]) -> bool {
    crate::smb2::header::Header::parse(frame).is_ok_and(|h| h.command == crate::smb2::header::Command::Write && h.next_command == 0)
}

/// Waits for every WRITE under way and answers each.
async fn answer_writes(c: &mut Connection, writes: &mut Writes, tx: &Queue) -> std::io::Result<()> {
    while let Some(done) = writes.join_next().await {
        finish_write(c, done, tx).await?;
    }
    Ok(())
}

/// Answers a WRITE carried out off the connection's thread. A panic in storage (a defect)
/// ends the connection, as one while a frame runs does.
async fn finish_write(c: &mut Connection, done: Result<(u64, Option<Result<(), FsError>>), tokio::task::JoinError>, tx: &Queue) -> std::io::Result<()> {
    let (token, result) = done.map_err(|e| std::io::Error::other(format!("write task: {e}")))?;
    let Some(result) = result else { return Err(std::io::Error::other("an internal error while writing a file")) };
    c.finish_file_write(token, result);
    for f in c.take_sends() {
        tx.send(f).await?;
    }
    Ok(())
}

/// Least time between two retries of a connection's waiting locks that releases cause (the
/// periodic retry aside): at most 100 a second, each one call to the owner per waiting lock.
pub const RELEASE_RETRY_GAP: std::time::Duration = std::time::Duration::from_millis(10);

/// Tells the node's watches (and, through the change relay, the other nodes') of the changes a
/// connection's frame made.
fn publish(shared: &Shared, mut made: Vec<Change>) {
    // Watches on other shares over the same files hear of them too.
    let also = crate::server::notify::through_other_shares(&made, &shared.directory.share_roots());
    made.extend(also);
    // No receiver (nobody watches) is not an error.
    let _ = shared.notifier.changes.send(Arc::new(ChangeBatch { from_peer: false, lost: false, changes: made }.bounded()));
}

/// Asks the owners again for the connection's waiting locks, off the connection's thread, and
/// queues the replies of those that were granted or failed.
async fn retry_locks(conn: &mut Option<Connection>, shared: &Shared, tx: &Queue) -> std::io::Result<()> {
    let Some(mut c) = conn.take() else { return Err(std::io::Error::other("connection state lost")) };
    let files = shared.files.clone();
    let c = conn.insert(
        tokio::task::spawn_blocking(move || {
            c.retry_locks(files.as_ref());
            c
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?,
    );
    for f in c.take_sends() {
        tx.send(f).await?;
    }
    Ok(())
}

/// Runs one frame through the connection. A panic (a defect) ends this connection only, and
/// the connection's state stays usable, so its opens are still closed and their share modes
/// released at its end.
fn run_frame(c: &mut Connection, frame: &mut [u8], directory: &dyn Directory, files: &dyn Files, env: &mut dyn Environment) -> Outcome {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.on_owned_frame(frame, directory, files, env))).unwrap_or_else(|_| Outcome::Close("an internal error while handling a request".into()))
}

/// The next batch of the node's changes; never, when not listening.
async fn next_changes(rx: &mut Option<broadcast::Receiver<Arc<ChangeBatch>>>) -> Result<Arc<ChangeBatch>, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A connection's replies on their way to its writer, bounded in frames and in bytes.
struct Queue {
    tx: mpsc::Sender<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)>,
    /// [`WRITE_QUEUE_BYTES`] in KiB.
    budget: Arc<tokio::sync::Semaphore>,
}

impl Queue {
    async fn send(&self, frame: Vec<u8>) -> std::io::Result<()> {
        let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the connection's writer ended");
        // A reply larger than the whole budget waits for all of it.
        let kib = frame.len().div_ceil(1024).min(WRITE_QUEUE_BYTES / 1024) as u32;
        let permit = self.budget.clone().acquire_many_owned(kib).await.map_err(|_| gone())?;
        self.tx.send((frame, permit)).await.map_err(|_| gone())
    }
}

/// Writes queued replies, each with its transport header, in order.
async fn write_frames(mut writer: OwnedWriteHalf, mut rx: mpsc::Receiver<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)>) -> std::io::Result<()> {
    while let Some((reply, _queued)) = rx.recv().await {
        let head = frame::frame_header(reply.len()).map_err(|e| std::io::Error::other(e.to_string()))?;
        let stalled = || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("the client took nothing for {} s", WRITE_STALL.as_secs()));
        if reply.len() <= SMALL_REPLY_BYTES {
            // One segment for small replies.
            tokio::time::timeout(WRITE_STALL, writer.write_all(&[head.as_slice(), &reply].concat())).await.map_err(|_| stalled())??;
        } else {
            // Large ones go as they are (no copy of the body), a piece at a time.
            tokio::time::timeout(WRITE_STALL, writer.write_all(&head)).await.map_err(|_| stalled())??;
            for piece in reply.chunks(WRITE_PIECE_BYTES) {
                tokio::time::timeout(WRITE_STALL, writer.write_all(piece)).await.map_err(|_| stalled())??;
            }
        }
    }
    writer.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::files::{FileInfo, FsError};
    use crate::server::testkit::{self, MemFiles};
    use crate::smb2::header::Command;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A batch carrying more names than the notifier should hold goes as `lost`, empty.
    #[test]
    fn a_batch_past_its_byte_bound_goes_as_lost() {
        use crate::server::notify::ChangeKind;
        let change = |path: String| Change { share: "data".into(), path, directory: false, kind: ChangeKind::Added };
        let small = ChangeBatch { from_peer: false, lost: false, changes: vec![change("a.txt".into())] }.bounded();
        assert_eq!((small.lost, small.changes.len()), (false, 1));
        let big = ChangeBatch { from_peer: true, lost: false, changes: (0..40).map(|i| change(format!("{i}{}", "x".repeat(2000)))).collect() }.bounded();
        assert_eq!((big.from_peer, big.lost, big.changes.len()), (true, true, 0));
    }

    type WriteScript = dyn Fn(&[u8]) -> Result<(), FsError> + Send + Sync;

    /// Storage whose WRITEs do what `write` says (a defect's panic, a slow write), noting each
    /// WRITE's first byte when it is done, and each release of an open as "released".
    struct Scripted {
        inner: MemFiles,
        write: Box<WriteScript>,
        log: Arc<std::sync::Mutex<Vec<String>>>,
        /// Runs in each read (given its share and offset), noted before ("read SHARE OFFSET")
        /// and after ("... done").
        read_hook: Option<Box<dyn Fn(&str, u64) + Send + Sync>>,
    }

    impl Scripted {
        fn new(write: impl Fn(&[u8]) -> Result<(), FsError> + Send + Sync + 'static) -> Scripted {
            Scripted::with_log(Default::default(), write)
        }

        /// One whose log `write` may read too.
        fn with_log(log: Arc<std::sync::Mutex<Vec<String>>>, write: impl Fn(&[u8]) -> Result<(), FsError> + Send + Sync + 'static) -> Scripted {
            Scripted { inner: MemFiles::with_dirs(&[]), write: Box::new(write), log, read_hook: None }
        }

        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl Files for Scripted {
        fn lookup(&self, s: &str, p: &str) -> Result<FileInfo, FsError> {
            self.inner.lookup(s, p)
        }
        fn stat(&self, s: &str, id: u64) -> Result<FileInfo, FsError> {
            self.inner.stat(s, id)
        }
        fn create(&self, s: &str, parent: u64, name: &str, directory: bool, now: u64) -> Result<FileInfo, FsError> {
            self.inner.create(s, parent, name, directory, now)
        }
        fn list(&self, s: &str, dir: u64, after: &str, limit: u32) -> Result<Vec<FileInfo>, FsError> {
            self.inner.list(s, dir, after, limit)
        }
        fn read(&self, s: &str, id: u64, offset: u64, len: u32, room: usize, open: Option<u64>) -> Result<Vec<u8>, FsError> {
            if let Some(hook) = &self.read_hook {
                self.log.lock().unwrap().push(format!("read {s} {offset}"));
                hook(s, offset);
                self.log.lock().unwrap().push(format!("read {s} {offset} done"));
            }
            self.inner.read(s, id, offset, len, room, open)
        }
        fn is_remote(&self, _: &str) -> bool {
            false
        }
        fn write(&self, _: &str, _: u64, _: u64, data: &[u8], _: crate::server::files::Stamp, _: Option<u64>) -> Result<(), FsError> {
            let result = (self.write)(data);
            self.log.lock().unwrap().push(format!("wrote {}", data[0]));
            result
        }
        fn set_size(&self, s: &str, id: u64, size: u64, now: crate::server::files::Stamp) -> Result<(), FsError> {
            self.inner.set_size(s, id, size, now)
        }
        fn set_basic(&self, s: &str, id: u64, basic: crate::server::files::Basic) -> Result<(), FsError> {
            self.inner.set_basic(s, id, basic)
        }
        fn unlink(&self, s: &str, parent: u64, name: &str, now: u64) -> Result<(), FsError> {
            self.inner.unlink(s, parent, name, now)
        }
        fn rename(&self, s: &str, from_dir: u64, from: &str, to_dir: u64, to: &str, replace: bool, now: u64) -> Result<(), FsError> {
            self.inner.rename(s, from_dir, from, to_dir, to, replace, now)
        }
        fn flush(&self, s: &str) -> Result<(), FsError> {
            self.inner.flush(s)
        }
        fn register_open(&self, _: &str, _: u64, _: crate::share_modes::Mode, _: Option<(u64, &str)>) -> Result<u64, FsError> {
            Ok(1)
        }
        fn release_open(&self, _: u64) {
            self.log.lock().unwrap().push("released".into());
        }
    }

    /// Reads of files on other nodes start in the order sent, each once those before it on its
    /// share leave room in the bytes fetched at once: reads as large as that room (or larger)
    /// one at a time, small ones together, and a read of a share whose owner is slow does not
    /// hold up another share's.
    #[tokio::test]
    async fn reads_of_files_on_other_nodes_start_in_order_large_ones_one_at_a_time() {
        let log: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let seen = log.clone();
        // Waits (at most 5 s) until the log has `note`.
        let wait_for = move |note: &str| {
            let since = std::time::Instant::now();
            while !seen.lock().unwrap().iter().any(|l| l == note) && since.elapsed() < std::time::Duration::from_secs(5) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        };
        let mut files = Scripted::with_log(log, |_| Ok(()));
        files.read_hook = Some(Box::new(move |share, offset| match (share, offset) {
            // Done only once the next one has started: they go together.
            ("data", 2) => wait_for("read data 3"),
            // A slow owner: done only once the other share's read is.
            ("slow", 10) => wait_for("read data 11 done"),
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }));
        let files = Arc::new(files);
        let at_once = 1 << 20;
        let (done, mut results) = mpsc::channel(crate::server::connection::FILE_READ_RESULTS_QUEUED);
        let mut remote = RemoteReads::new(files.clone(), done, at_once);
        let read = |async_id: u64, share: &str, offset: u64, len: u32| crate::server::connection::FileRead { async_id, share: share.into(), id: 1, offset, len, open: None };
        let mut fetch = async |reads: Vec<crate::server::connection::FileRead>| {
            let n = reads.len();
            for r in reads {
                remote.fetch(r).await.unwrap();
            }
            let mut ids = Vec::new();
            for _ in 0..n {
                ids.push(tokio::time::timeout(std::time::Duration::from_secs(10), results.recv()).await.expect("a result").unwrap().0);
            }
            ids
        };
        let sorted = |mut v: Vec<u64>| {
            v.sort_unstable();
            v
        };
        // The whole room, then more than it: one after the other.
        assert_eq!(fetch(vec![read(1, "data", 0, at_once), read(2, "data", 1, at_once + 1)]).await, [1, 2]);
        // Just over half of it and what fits beside: together. And a read of nothing.
        assert_eq!(sorted(fetch(vec![read(3, "data", 2, at_once / 2 + 1), read(4, "data", 3, at_once / 2 - 1)]).await), [3, 4]);
        assert_eq!(fetch(vec![read(5, "data", 4, 0)]).await, [5]);
        // A slow share's read, then another share's: the other goes by.
        assert_eq!(sorted(fetch(vec![read(6, "slow", 10, at_once), read(7, "data", 11, at_once)]).await), [6, 7]);
        let log = files.log();
        let at = |note: &str| log.iter().position(|l| l == note).unwrap_or_else(|| panic!("{note} in {log:?}"));
        assert_eq!(log[..4], ["read data 0", "read data 0 done", "read data 1", "read data 1 done"], "one at a time");
        assert!(at("read data 3") < at("read data 2 done"), "together: {log:?}");
        assert!(at("read data 11 done") < at("read slow 10 done"), "the slow share held up nothing: {log:?}");
    }

    /// A WRITE of `data` at `offset`.
    fn write_at(message_id: u64, volatile: u64, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut body = testkit::write(volatile, data);
        body[8..16].copy_from_slice(&offset.to_le_bytes());
        testkit::request(Command::Write, message_id, testkit::TREE, &body)
    }

    /// A client's end of a connection the driver runs with the test kit's session ("data" as
    /// tree 1, no signing) over `files`.
    async fn client_of(files: Arc<Scripted>) -> (TcpStream, tokio::task::JoinHandle<std::io::Result<()>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let shared = Shared { directory: Arc::new(testkit::Dir), files, throttle: Default::default(), notifier: notifier() };
        let config = testkit::config();
        let server = tokio::spawn(run_connection(stream, testkit::connection(), max_frame_bytes(&config), config.lock_retry, shared));
        (client, server)
    }

    async fn send(client: &mut TcpStream, message: &[u8]) {
        client.write_all(&frame::frame_header(message.len()).unwrap()).await.unwrap();
        client.write_all(message).await.unwrap();
    }

    /// The next response: its header and body.
    async fn receive(client: &mut TcpStream) -> (crate::smb2::header::Header, Vec<u8>) {
        let mut head = [0u8; 4];
        client.read_exact(&mut head).await.unwrap();
        let mut message = vec![0u8; u32::from_be_bytes(head) as usize];
        client.read_exact(&mut message).await.unwrap();
        testkit::split(&message).remove(0)
    }

    /// Large WRITEs are carried out off the connection's thread (the first one's storage call
    /// waits until the second one's is done, which only a second thread can bring about), and
    /// a request after them waits for them: the CLOSE sent right after two WRITEs is answered
    /// after both, and the open is released after both landed.
    #[tokio::test]
    async fn large_writes_land_off_the_connections_thread_and_no_other_request_overtakes_them() {
        let log: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let seen = log.clone();
        let files = Arc::new(Scripted::with_log(log, move |data| {
            if data[0] == 1 {
                let since = std::time::Instant::now();
                while !seen.lock().unwrap().iter().any(|l| l == "wrote 2") {
                    if since.elapsed() > std::time::Duration::from_secs(10) {
                        return Err(FsError::Busy);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                // Its task ends after the second's, whose reply then goes first.
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Ok(())
        }));
        let (mut client, server) = client_of(files.clone()).await;
        send(&mut client, &testkit::request(Command::Create, 1, testkit::TREE, &testkit::create("f.bin", false, 2))).await;
        let (h, body) = receive(&mut client).await;
        assert_eq!(h.status, 0);
        let volatile = u64::from_le_bytes(body[72..80].try_into().unwrap());
        let big = crate::server::connection::FILE_WRITE_OFF_THREAD_MIN_BYTES;
        send(&mut client, &write_at(2, volatile, 0, &vec![1; big])).await;
        send(&mut client, &write_at(3, volatile, big as u64, &vec![2; big])).await;
        send(&mut client, &testkit::request(Command::Close, 4, testkit::TREE, &testkit::close(volatile))).await;
        let mut answered = Vec::new();
        for _ in 0..3 {
            let (h, body) = receive(&mut client).await;
            assert_eq!((h.command, h.status), (if h.message_id == 4 { Command::Close } else { Command::Write }, 0), "message {}", h.message_id);
            if h.command == Command::Write {
                assert_eq!(u32::from_le_bytes(body[4..8].try_into().unwrap()) as usize, big, "the count written");
            }
            answered.push(h.message_id);
        }
        assert_eq!(answered, [3, 2, 4], "the second WRITE overtook the first; the CLOSE came after both");
        assert_eq!(files.log(), ["wrote 2", "wrote 1", "released"]);
        drop(client);
        server.await.unwrap().unwrap();
    }

    /// A client that sends its WRITEs and then nothing more (its side of the socket shut)
    /// still gets their responses.
    #[tokio::test]
    async fn writes_under_way_when_the_client_stops_sending_are_still_answered() {
        let files = Arc::new(Scripted::new(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            Ok(())
        }));
        let (mut client, server) = client_of(files.clone()).await;
        send(&mut client, &testkit::request(Command::Create, 1, testkit::TREE, &testkit::create("f.bin", false, 2))).await;
        let volatile = u64::from_le_bytes(receive(&mut client).await.1[72..80].try_into().unwrap());
        send(&mut client, &write_at(2, volatile, 0, &vec![1; crate::server::connection::FILE_WRITE_OFF_THREAD_MIN_BYTES])).await;
        client.shutdown().await.unwrap();
        let (h, _) = tokio::time::timeout(std::time::Duration::from_secs(10), receive(&mut client)).await.expect("answered");
        assert_eq!((h.message_id, h.status), (2, 0));
        server.await.unwrap().unwrap();
        assert_eq!(files.log(), ["wrote 1", "released"]);
    }

    /// A panic while a WRITE lands off the connection's thread closes the connection, as one
    /// while a frame runs does, and its opens are still released.
    #[tokio::test]
    async fn a_panic_in_a_write_off_the_connections_thread_closes_the_connection_and_releases_its_opens() {
        let files = Arc::new(Scripted::new(|_| panic!("a defect in storage")));
        let (mut client, server) = client_of(files.clone()).await;
        send(&mut client, &testkit::request(Command::Create, 1, testkit::TREE, &testkit::create("f.bin", false, 2))).await;
        let volatile = u64::from_le_bytes(receive(&mut client).await.1[72..80].try_into().unwrap());
        send(&mut client, &write_at(2, volatile, 0, &vec![1; crate::server::connection::FILE_WRITE_OFF_THREAD_MIN_BYTES])).await;
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), server).await.expect("the connection ended").unwrap();
        assert!(ended.is_err(), "{ended:?}");
        let mut byte = [0u8; 1];
        assert!(matches!(client.read(&mut byte).await, Ok(0) | Err(_)), "closed, no reply");
        assert_eq!(files.log(), ["released"]);
    }

    /// A connection that never logs on is closed after LOGON_WITHIN.
    #[tokio::test]
    async fn a_connection_that_never_logs_on_is_closed() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, testkit::config(), Arc::new(testkit::Dir), Arc::new(MemFiles::with_dirs(&[])), notifier(), Default::default()));
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(LOGON_WITHIN * 10, client.read(&mut byte)).await.expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        server.abort();
    }

    /// Replies wait for room in the writer's byte budget, and a client that takes no reply
    /// for WRITE_STALL ends the writer.
    #[tokio::test]
    async fn the_write_queue_is_bounded_in_bytes_and_a_stalled_client_ends_the_writer() {
        let (tx, mut rx) = mpsc::channel(WRITE_QUEUE_FRAMES);
        let queue = Queue { tx, budget: Arc::new(tokio::sync::Semaphore::new(WRITE_QUEUE_BYTES / 1024)) };
        queue.send(vec![0; WRITE_QUEUE_BYTES]).await.unwrap();
        let second = queue.send(vec![0; 1024]);
        tokio::pin!(second);
        assert!(tokio::time::timeout(std::time::Duration::from_millis(100), &mut second).await.is_err(), "no room until the first is written");
        let first = rx.recv().await.unwrap();
        drop(first);
        second.await.unwrap();
        // A client that reads nothing: the writer gives up.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let (_, writer) = socket.into_split();
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_FRAMES);
        let queue = Queue { tx, budget: Arc::new(tokio::sync::Semaphore::new(WRITE_QUEUE_BYTES / 1024)) };
        queue.send(vec![0; 15 << 20]).await.unwrap();
        queue.send(vec![0; 15 << 20]).await.unwrap();
        drop(queue);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), write_frames(writer, rx)).await.expect("the writer gave up");
        assert_eq!(ended.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    }

    /// A panic while a frame runs closes that connection (it is not lost with the task), and
    /// the connection's end still releases its opens.
    #[test]
    fn a_panic_while_a_frame_runs_closes_the_connection_and_its_opens_are_still_released() {
        let files = Scripted::new(|_| panic!("a defect in storage"));
        let mut c = testkit::connection();
        let mut env = testkit::Env::new();
        let mut create = testkit::request(Command::Create, 1, testkit::TREE, &testkit::create("f.bin", false, 2));
        let Outcome::Reply(reply) = run_frame(&mut c, &mut create, &testkit::Dir, &files, &mut env) else { panic!("a reply to CREATE") };
        let volatile = u64::from_le_bytes(testkit::split(&reply)[0].1[72..80].try_into().unwrap());
        let mut write = testkit::request(Command::Write, 2, testkit::TREE, &testkit::write(volatile, b"boom"));
        assert!(matches!(run_frame(&mut c, &mut write, &testkit::Dir, &files, &mut env), Outcome::Close(_)), "the connection closes");
        c.end(&files, 0);
        assert_eq!(files.log(), ["released"], "its open was released");
    }
}
