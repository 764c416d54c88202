//! Raft storage in a RocksDB instance of its own (never shared with volume data).
//!
//! Column families: `meta` (vote, committed, last purged, current snapshot), `log` (entries by
//! big-endian index) and `sm` (the applied state, one key per volume, share, user and dedupe
//! entry, plus the applied log id and membership). Log appends are group-committed (see
//! [`group_commit`]); votes, truncation, purges and snapshots are synced writes. Any sync also
//! makes every earlier state machine write durable, since RocksDB has one WAL.

mod group_commit;
mod log;
pub mod mem;
mod state_machine;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

pub use log::LogStore;
pub use state_machine::{MetaReader, StateMachineStore, AppliedState};

use crate::types::StorageError;

const CF_META: &str = "meta";
const CF_LOG: &str = "log";
const CF_SM: &str = "sm";

/// The Raft database, and the signal that it has closed. Fields drop in order: the last
/// handle's drop closes RocksDB first and only then drops the sender, so a [`CloseWatch`] sees
/// the close finished, not begun (whichever thread let go last).
pub(crate) struct Db {
    db: DB,
    _closed: tokio::sync::oneshot::Sender<()>,
}

impl std::ops::Deref for Db {
    type Target = DB;

    fn deref(&self) -> &DB {
        &self.db
    }
}

/// Tells when the database has been closed (every handle dropped and RocksDB closed), so a
/// process can wait for RocksDB to finish its background work before it exits.
pub struct CloseWatch {
    /// None once it has completed.
    closed: Option<tokio::sync::oneshot::Receiver<()>>,
    sync_thread: group_commit::SyncThread,
}

impl CloseWatch {
    /// Waits until the database is closed and the WAL sync thread has ended, or `limit`
    /// passes; returns whether it closed.
    pub async fn closed(&mut self, limit: std::time::Duration) -> bool {
        if let Some(rx) = self.closed.as_mut() {
            // Nothing is ever sent: the receiver completes (with an error) when the sender drops.
            if tokio::time::timeout(limit, rx).await.is_err() {
                return false;
            }
            self.closed = None;
        }
        // The thread has dropped its handle, so it is ending: joining it cannot block long.
        let handle = self.sync_thread.lock().expect("sync thread slot").take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("the WAL sync thread panicked");
            }
        }
        true
    }
}

/// Opens (or creates) the Raft database under `path`, returning its two halves and a watch
/// on its closing.
pub fn open_watched(path: &Path) -> Result<(LogStore, StateMachineStore, CloseWatch), StorageError> {
    let (log, sm, closed) = open_db(path)?;
    let watch = CloseWatch { closed: Some(closed), sync_thread: log.sync_thread() };
    Ok((log, sm, watch))
}

/// Opens (or creates) the Raft database under `path`, returning its two halves.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore), StorageError> {
    open_db(path).map(|(log, sm, _)| (log, sm))
}

/// The database's two halves and the receiver that completes once it has closed.
fn open_db(path: &Path) -> Result<(LogStore, StateMachineStore, tokio::sync::oneshot::Receiver<()>), StorageError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_META, CF_LOG, CF_SM].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| io_err(openraft::StorageIOError::write(&e)))?;
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    let db = Arc::new(Db { db, _closed: closed_tx });
    let log = LogStore::new(db.clone()).map_err(|e| io_err(openraft::StorageIOError::write(&e)))?;
    let sm = StateMachineStore::load(db)?;
    Ok((log, sm, closed))
}

fn io_err(e: openraft::StorageIOError<crate::types::NodeId>) -> StorageError {
    StorageError::IO { source: e }
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column families are created at open")
}

fn synced() -> rocksdb::WriteOptions {
    let mut w = rocksdb::WriteOptions::default();
    w.set_sync(true);
    w
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::types::TypeConfig;

    struct RocksBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RocksBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let (log, sm) = open(dir.path())?;
            Ok((dir, log, sm))
        }
    }

    /// The watch completes once RocksDB has closed, whichever thread let go of the database
    /// last; while a handle is left it waits, and afterwards the database opens again.
    #[tokio::test]
    async fn the_close_watch_sees_the_database_closed_by_the_thread_that_let_go_last() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm, mut watch) = open_watched(dir.path()).expect("open");
        drop(log);
        let short = std::time::Duration::from_millis(50);
        assert!(!watch.closed(short).await, "the state machine still holds the database");
        let (give, take) = std::sync::mpsc::channel::<StateMachineStore>();
        let last = std::thread::spawn(move || drop(take.recv().expect("the handle")));
        give.send(sm).expect("the thread waits");
        assert!(watch.closed(std::time::Duration::from_secs(10)).await, "closed on the other thread");
        assert!(watch.closed(short).await, "and stays closed");
        last.join().expect("the thread that closed it");
        let (log, sm, mut again) = open_watched(dir.path()).expect("opens again: RocksDB's lock was released");
        drop((log, sm));
        // Closed, and its WAL sync thread joined, before the test process may exit (a thread
        // still in RocksDB code as the process tears RocksDB down crashes it).
        assert!(again.closed(std::time::Duration::from_secs(10)).await);
    }

    /// openraft's storage conformance suite (log, vote, state machine, snapshots) against RocksDB.
    #[test]
    fn rocksdb_store_passes_openraft_suite() -> Result<(), StorageError> {
        Suite::test_all(RocksBuilder)?;
        Ok(())
    }
}
