//! An in-memory Raft store that models a disk and its crashes, for the simulation (sim/):
//! openraft's `RaftLogStorage` and `RaftStateMachine` with the same durability rules as the
//! RocksDB store, and the same apply code ([`super::state_machine::apply_entries`]).
//!
//! A [`MemDisk`] keeps two copies of everything: what was written (what the OS holds: a process
//! death keeps it) and what was synced (a power loss keeps only that). As in the RocksDB store,
//! log appends are reported flushed after a sync, votes, truncation, purges and snapshots are
//! synced writes, state machine writes are not synced, and any sync makes every earlier write
//! durable (one WAL). [`MemDisk::crash`] applies a crash; [`MemStores::open`] reopens the stores
//! from what survived. A test-only switch skips every sync, a broken variant the simulation's
//! invariants must catch.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder, Vote};

use super::state_machine::{apply_entries, decode_snapshot, AppliedState, MetaReader};
use crate::types::{Entry, LogId, NodeId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// What a crash loses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// The process dies: everything written reached the OS and survives.
    ProcessDeath,
    /// The machine loses power: only what was synced survives.
    PowerLoss,
}

#[derive(Clone, Debug, Default)]
struct Files {
    vote: Option<Vote<NodeId>>,
    log: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    state: AppliedState,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

/// A node's disk under simulation.
#[derive(Debug, Default)]
pub struct MemDisk {
    written: Files,
    synced: Files,
    /// Test-only broken variant: syncs do nothing (a power loss then loses acknowledged entries).
    pub skip_sync: bool,
    /// Test-only broken variant: the vote is never made durable (a power loss forgets it).
    pub skip_vote_sync: bool,
}

impl MemDisk {
    pub fn shared() -> Arc<Mutex<MemDisk>> {
        Arc::new(Mutex::new(MemDisk::default()))
    }

    fn sync(&mut self) {
        if !self.skip_sync {
            let vote = self.synced.vote;
            self.synced = self.written.clone();
            if self.skip_vote_sync {
                self.synced.vote = vote;
            }
        }
    }

    /// Applies a crash to the disk (the stores using it must be dropped and reopened).
    pub fn crash(&mut self, kind: Crash) {
        if kind == Crash::PowerLoss {
            self.written = self.synced.clone();
        }
    }

    /// The log indexes present in what was written (for invariant checks).
    pub fn log_indexes(&self) -> Vec<u64> {
        self.written.log.keys().copied().collect()
    }
}

type Disk = Arc<Mutex<MemDisk>>;

fn lock(disk: &Disk) -> std::sync::MutexGuard<'_, MemDisk> {
    disk.lock().expect("mem disk lock")
}

/// The two halves over one disk, as [`super::open`] returns them for RocksDB.
pub struct MemStores;

impl MemStores {
    /// Opens the stores from what `disk` holds now.
    pub fn open(disk: &Disk) -> (MemLogStore, MemStateMachine) {
        let mut state = lock(disk).written.state.clone();
        state.state.reindex();
        let data = Arc::new(RwLock::new(state));
        (MemLogStore { disk: disk.clone() }, MemStateMachine { disk: disk.clone(), data })
    }
}

#[derive(Clone)]
pub struct MemLogStore {
    disk: Disk,
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(&mut self, range: RB) -> Result<Vec<Entry>, StorageError> {
        Ok(lock(&self.disk).written.log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let d = lock(&self.disk);
        let last_purged_log_id = d.written.last_purged;
        let last_log_id = d.written.log.values().next_back().map(|e| e.log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut d = lock(&self.disk);
        d.written.vote = Some(*vote);
        d.sync();
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(lock(&self.disk).written.vote)
    }

    async fn save_committed(&mut self, _committed: Option<LogId>) -> Result<(), StorageError> {
        Ok(())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        {
            let mut d = lock(&self.disk);
            for e in entries {
                d.written.log.insert(e.log_id.index, e);
            }
            d.sync();
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut d = lock(&self.disk);
        d.written.log.split_off(&log_id.index);
        d.sync();
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut d = lock(&self.disk);
        d.written.log = d.written.log.split_off(&(log_id.index + 1));
        d.written.last_purged = Some(log_id);
        d.sync();
        Ok(())
    }
}

#[derive(Clone)]
pub struct MemStateMachine {
    disk: Disk,
    data: Arc<RwLock<AppliedState>>,
}

impl MemStateMachine {
    pub fn reader(&self) -> MetaReader {
        MetaReader::new(self.data.clone())
    }
}

fn snapshot_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageError::IO { source: openraft::StorageIOError::read_state_machine(&e) }
}

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, bytes) = {
            let data = self.data.read().expect("state machine lock");
            let bytes = serde_json::to_vec(&*data).map_err(snapshot_err)?;
            let index = data.last_applied.map(|l| l.index).unwrap_or(0);
            let meta = SnapshotMeta { last_log_id: data.last_applied, last_membership: data.membership.clone(), snapshot_id: format!("{index}") };
            (meta, bytes)
        };
        let mut d = lock(&self.disk);
        d.written.snapshot = Some((meta.clone(), bytes.clone()));
        d.sync();
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let data = self.data.read().expect("state machine lock");
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<crate::command::Responses>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut data = self.data.write().expect("state machine lock");
        let (responses, _) = apply_entries(&mut data, entries, &mut Vec::new());
        // Written, not synced (as the RocksDB store's apply batch).
        lock(&self.disk).written.state = data.clone();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let incoming = decode_snapshot(meta, &bytes)?;
        {
            let mut d = lock(&self.disk);
            d.written.state = incoming.clone();
            d.written.snapshot = Some((meta.clone(), bytes));
            d.sync();
        }
        *self.data.write().expect("state machine lock") = incoming;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(lock(&self.disk).written.snapshot.clone().map(|(meta, bytes)| Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct MemBuilder;

    impl StoreBuilder<TypeConfig, MemLogStore, MemStateMachine, ()> for MemBuilder {
        async fn build(&self) -> Result<((), MemLogStore, MemStateMachine), StorageError> {
            let (log, sm) = MemStores::open(&MemDisk::shared());
            Ok(((), log, sm))
        }
    }

    /// The same conformance suite the RocksDB store passes.
    #[test]
    fn mem_store_passes_openraft_suite() -> Result<(), StorageError> {
        Suite::test_all(MemBuilder)?;
        Ok(())
    }

    fn entry(index: u64) -> Entry {
        Entry { log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index), payload: openraft::EntryPayload::Blank }
    }

    fn append(disk: &Disk, index: u64) {
        let mut d = lock(disk);
        d.written.log.insert(index, entry(index));
    }

    #[test]
    fn process_death_keeps_what_was_written_and_power_loss_only_what_was_synced() {
        let disk = MemDisk::shared();
        append(&disk, 1);
        lock(&disk).sync();
        append(&disk, 2);
        lock(&disk).crash(Crash::ProcessDeath);
        assert_eq!(lock(&disk).log_indexes(), vec![1, 2]);
        lock(&disk).crash(Crash::PowerLoss);
        assert_eq!(lock(&disk).log_indexes(), vec![1]);
    }

    #[test]
    fn with_sync_skipped_a_power_loss_loses_even_flushed_entries() {
        let disk = MemDisk::shared();
        lock(&disk).skip_sync = true;
        append(&disk, 1);
        lock(&disk).sync();
        lock(&disk).crash(Crash::PowerLoss);
        assert!(lock(&disk).log_indexes().is_empty());
    }
}
