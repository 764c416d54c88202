//! The Raft log and vote: openraft's `RaftLogStorage` over RocksDB.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::group_commit::GroupCommit;
use super::{cf, io_err, synced, CF_LOG, CF_META};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Log store handle; clones share the database and the committed index.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<super::Db>,
    committed: Arc<Mutex<Option<LogId>>>,
    syncer: GroupCommit,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    pub(super) fn new(db: Arc<super::Db>) -> std::io::Result<Self> {
        let syncer = GroupCommit::start(db.clone())?;
        Ok(LogStore { db, committed: Arc::new(Mutex::new(None)), syncer })
    }

    pub(super) fn sync_thread(&self) -> super::group_commit::SyncThread {
        self.syncer.thread()
    }

    /// The newest committed log id openraft told this store about.
    pub fn committed(&self) -> Option<LogId> {
        *self.committed.lock().expect("committed lock")
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let bytes = self.db.get_cf(cf(&self.db, CF_META), key).map_err(|e| io_err(StorageIOError::read(&e)))?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(|e| io_err(StorageIOError::read(&e))))
            .transpose()
    }

    /// A synced write of one `meta` key.
    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value).map_err(|e| io_err(StorageIOError::write(&e)))?;
        self.db
            .put_cf_opt(cf(&self.db, CF_META), key, bytes, &synced())
            .map_err(|e| io_err(StorageIOError::write(&e)))
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let mut it = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(Err(e)) => Err(io_err(StorageIOError::read_logs(&e))),
            Some(Ok((_, v))) => serde_json::from_slice(&v).map(Some).map_err(|e| io_err(StorageIOError::read_logs(&e))),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mode = IteratorMode::From(&index_key(start), Direction::Forward);
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(cf(&self.db, CF_LOG), mode) {
            let (key, value) = item.map_err(|e| io_err(StorageIOError::read_logs(&e)))?;
            let index = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| io_err(StorageIOError::read_logs(&BadKey)))?);
            if !range.contains(&index) {
                break;
            }
            entries.push(serde_json::from_slice(&value).map_err(|e| io_err(StorageIOError::read_logs(&e)))?);
        }
        Ok(entries)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a log key is not an 8-byte index")]
struct BadKey;

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.get_meta::<LogId>(KEY_LAST_PURGED)?;
        let last_log_id = match self.last_entry()? {
            Some(e) => Some(e.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Kept in memory for `status` only: persisting it would cost a write per commit, and
        // after a restart openraft learns the committed index from the leader.
        *self.committed.lock().expect("committed lock") = committed;
        Ok(())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let log = cf(&self.db, CF_LOG);
        let mut batch = WriteBatch::default();
        let mut count = 0usize;
        for entry in entries {
            count += 1;
            let bytes = serde_json::to_vec(&entry).map_err(|e| io_err(StorageIOError::write_logs(&e)))?;
            batch.put_cf(log, index_key(entry.log_id.index), bytes);
        }
        tracing::trace!(entries = count, "append");
        // Readable once written; durable when the group commit syncs the WAL.
        if let Err(e) = self.db.write(batch) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(io_err(StorageIOError::write_logs(&e)));
        }
        self.syncer.flush_later(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_LOG), index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(cf(&self.db, CF_LOG), index_key(u64::MAX));
        self.db.write_opt(batch, &synced()).map_err(|e| io_err(StorageIOError::write_logs(&e)))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let bytes = serde_json::to_vec(&log_id).map_err(|e| io_err(StorageIOError::write_logs(&e)))?;
        batch.put_cf(cf(&self.db, CF_META), KEY_LAST_PURGED, bytes);
        batch.delete_range_cf(cf(&self.db, CF_LOG), index_key(0), index_key(log_id.index.saturating_add(1)));
        self.db.write_opt(batch, &synced()).map_err(|e| io_err(StorageIOError::write_logs(&e)))
    }
}
