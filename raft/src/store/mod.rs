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

/// Tells when the database has been closed (every handle dropped), so a process can wait for
/// RocksDB to finish its background work before it exits.
pub struct CloseWatch {
    db: std::sync::Weak<DB>,
    sync_thread: group_commit::SyncThread,
}

impl CloseWatch {
    /// Waits until the last handle is gone and the WAL sync thread has ended, or `limit`
    /// passes; returns whether it closed.
    pub async fn closed(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.db.strong_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
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
    let (log, sm) = open(path)?;
    let watch = CloseWatch { db: Arc::downgrade(log.db()), sync_thread: log.sync_thread() };
    Ok((log, sm, watch))
}

/// Opens (or creates) the Raft database under `path`, returning its two halves.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore), StorageError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_META, CF_LOG, CF_SM].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| io_err(openraft::StorageIOError::write(&e)))?;
    let db = Arc::new(db);
    let log = LogStore::new(db.clone()).map_err(|e| io_err(openraft::StorageIOError::write(&e)))?;
    let sm = StateMachineStore::load(db)?;
    Ok((log, sm))
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

    /// openraft's storage conformance suite (log, vote, state machine, snapshots) against RocksDB.
    #[test]
    fn rocksdb_store_passes_openraft_suite() -> Result<(), StorageError> {
        Suite::test_all(RocksBuilder)?;
        Ok(())
    }
}
