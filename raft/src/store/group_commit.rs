//! Group commit for Raft log appends.
//!
//! openraft 0.9 calls `append` once per client write on the leader, so one fsync per append
//! would cap commits at one per sync. Instead an append is written to RocksDB without sync
//! (readable at once, as openraft requires) and its flush callback is queued here; one thread
//! syncs the WAL once for everything queued since its last sync, then reports each append
//! flushed. RocksDB has one sequential WAL, so a sync covers every earlier write.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use openraft::storage::LogFlushed;

use crate::types::TypeConfig;

/// Appends waiting for a sync before `append` blocks (openraft keeps far fewer in flight).
pub const MAX_PENDING_FLUSHES: usize = 65_536;

#[derive(Clone)]
pub struct GroupCommit {
    tx: SyncSender<LogFlushed<TypeConfig>>,
    thread: SyncThread,
}

/// The syncing thread, to be joined once the database is closed: it has run RocksDB code, and
/// its thread-local state must be gone before the process tears RocksDB's statics down.
pub type SyncThread = Arc<Mutex<Option<JoinHandle<()>>>>;

impl GroupCommit {
    /// Starts the syncing thread; it ends when every handle is dropped.
    pub fn start(db: Arc<super::Db>) -> std::io::Result<GroupCommit> {
        let (tx, rx) = sync_channel(MAX_PENDING_FLUSHES);
        let handle = std::thread::Builder::new().name("raft-wal-sync".into()).spawn(move || sync_loop(db, rx))?;
        Ok(GroupCommit { tx, thread: Arc::new(Mutex::new(Some(handle))) })
    }

    pub fn thread(&self) -> SyncThread {
        self.thread.clone()
    }

    /// Queues `callback` for the next WAL sync. If the thread is gone, reports the failure.
    pub fn flush_later(&self, callback: LogFlushed<TypeConfig>) {
        if let Err(e) = self.tx.send(callback) {
            e.0.log_io_completed(Err(std::io::Error::other("the WAL sync thread has stopped")));
        }
    }
}

fn sync_loop(db: Arc<super::Db>, rx: Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        tracing::trace!(appends = waiting.len(), "wal sync");
        let result = db.flush_wal(true);
        if let Err(e) = &result {
            tracing::error!(error = %e, "syncing the Raft WAL failed");
        }
        for callback in waiting {
            callback.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
        }
    }
}
