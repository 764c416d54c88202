//! The applied metadata: openraft's `RaftStateMachine` over RocksDB, with an in-memory copy
//! for reads.
//!
//! Apply runs the pure [`MetaState::apply`], then writes every changed key, the applied log id
//! and the membership in one write batch. Snapshots are the whole state as JSON; installing one
//! replaces the `sm` column family in one synced batch.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use super::{cf, io_err, synced, CF_META, CF_SM};
use crate::command::Responses;
use crate::state::{DedupeEntry, MetaState, StateKey};
use crate::types::{Entry, LogId, NodeId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_CLOCK: &[u8] = b"clock";
const KEY_FSRVP: &[u8] = b"fsrvp";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// What the state machine holds in memory; also the snapshot format (JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub state: MetaState,
}

/// A snapshot as stored in `meta`: its meta and its data.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// Shared read access to the applied state, for queries.
#[derive(Clone)]
pub struct MetaReader(Arc<RwLock<AppliedState>>);

impl MetaReader {
    pub(crate) fn new(data: Arc<RwLock<AppliedState>>) -> Self {
        MetaReader(data)
    }

    pub fn read(&self) -> RwLockReadGuard<'_, AppliedState> {
        self.0.read().expect("state machine lock")
    }
}

#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<super::Db>,
    data: Arc<RwLock<AppliedState>>,
    snapshots_built: Arc<std::sync::atomic::AtomicU64>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(StorageIOError::read_state_machine(&e))
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(StorageIOError::write_state_machine(&e))
}

fn key_of(k: &StateKey) -> Vec<u8> {
    match k {
        StateKey::Volume(id) => format!("v/{id}").into_bytes(),
        StateKey::Share(name) => format!("s/{name}").into_bytes(),
        StateKey::User(name) => format!("u/{name}").into_bytes(),
        StateKey::Dedupe(index) => format!("d/{index:020}").into_bytes(),
        StateKey::Clock => KEY_CLOCK.to_vec(),
        StateKey::Fsrvp => KEY_FSRVP.to_vec(),
    }
}

impl StateMachineStore {
    pub(super) fn load(db: Arc<super::Db>) -> Result<Self, StorageError> {
        let mut data = AppliedState::default();
        for item in db.iterator_cf(cf(&db, CF_SM), IteratorMode::Start) {
            let (key, value) = item.map_err(read_err)?;
            load_key(&mut data, &key, &value)?;
        }
        data.state.reindex();
        Ok(StateMachineStore { db, data: Arc::new(RwLock::new(data)), snapshots_built: Default::default() })
    }

    pub fn reader(&self) -> MetaReader {
        MetaReader(self.data.clone())
    }

    /// Writes the current value of every changed key (or deletes it) into `batch`.
    fn persist_changes(&self, data: &AppliedState, changed: &[StateKey], batch: &mut WriteBatch) -> Result<(), StorageError> {
        let sm = cf(&self.db, CF_SM);
        let s = &data.state;
        for k in changed {
            let value = match k {
                StateKey::Volume(id) => s.volumes.get(id).map(serde_json::to_vec),
                StateKey::Share(name) => s.shares.get(name).map(serde_json::to_vec),
                StateKey::User(name) => s.users.get(name).map(serde_json::to_vec),
                StateKey::Dedupe(index) => {
                    let kept = s.dedupe_at(*index);
                    (!kept.is_empty()).then(|| serde_json::to_vec(&kept))
                }
                StateKey::Clock => Some(serde_json::to_vec(&s.clock_ms)),
                StateKey::Fsrvp => Some(serde_json::to_vec(&s.fsrvp)),
            };
            match value.transpose().map_err(write_err)? {
                Some(bytes) => batch.put_cf(sm, key_of(k), bytes),
                None => batch.delete_cf(sm, key_of(k)),
            }
        }
        batch.put_cf(sm, KEY_APPLIED, serde_json::to_vec(&data.last_applied).map_err(write_err)?);
        Ok(())
    }

    fn persist_membership(&self, data: &AppliedState, batch: &mut WriteBatch) -> Result<(), StorageError> {
        batch.put_cf(cf(&self.db, CF_SM), KEY_MEMBERSHIP, serde_json::to_vec(&data.membership).map_err(write_err)?);
        Ok(())
    }
}

fn load_key(data: &mut AppliedState, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
    let s = &mut data.state;
    match key {
        KEY_APPLIED => data.last_applied = serde_json::from_slice(value).map_err(read_err)?,
        KEY_MEMBERSHIP => data.membership = serde_json::from_slice(value).map_err(read_err)?,
        KEY_CLOCK => s.clock_ms = serde_json::from_slice(value).map_err(read_err)?,
        KEY_FSRVP => s.fsrvp = serde_json::from_slice(value).map_err(read_err)?,
        k if k.starts_with(b"v/") => {
            let v: crate::command::Volume = serde_json::from_slice(value).map_err(read_err)?;
            s.volumes.insert(v.id, v);
        }
        k if k.starts_with(b"s/") => {
            let name = String::from_utf8_lossy(&k[2..]).into_owned();
            s.shares.insert(name, serde_json::from_slice(value).map_err(read_err)?);
        }
        k if k.starts_with(b"u/") => {
            let name = String::from_utf8_lossy(&k[2..]).into_owned();
            s.users.insert(name, serde_json::from_slice(value).map_err(read_err)?);
        }
        k if k.starts_with(b"d/") => {
            let entries: Vec<DedupeEntry> = serde_json::from_slice(value).map_err(read_err)?;
            s.dedupe.extend(entries);
        }
        _ => tracing::warn!(key = %String::from_utf8_lossy(key), "unknown key in the state machine; ignored"),
    }
    Ok(())
}

/// Applies entries to the in-memory state (every store runs this same code): blank entries
/// answer nothing, membership entries replace the membership, normal entries run
/// [`MetaState::apply`] per request. Returns the answers and whether the membership changed;
/// `changed` collects the state keys to persist.
pub(crate) fn apply_entries<I: IntoIterator<Item = Entry>>(data: &mut AppliedState, entries: I, changed: &mut Vec<StateKey>) -> (Vec<Responses>, bool) {
    let mut responses = Vec::new();
    let mut membership_changed = false;
    for entry in entries {
        data.last_applied = Some(entry.log_id);
        let answers = match entry.payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Membership(m) => {
                data.membership = StoredMembership::new(Some(entry.log_id), m);
                membership_changed = true;
                Vec::new()
            }
            EntryPayload::Normal(ref proposal) => {
                let members: BTreeSet<NodeId> = data.membership.membership().nodes().map(|(id, _)| *id).collect();
                let index = entry.log_id.index;
                proposal.requests.iter().map(|req| data.state.apply(index, req, &members, changed)).collect()
            }
        };
        responses.push(answers);
    }
    (responses, membership_changed)
}

/// The state a received snapshot carries, indexed and stamped with the snapshot's meta (every
/// store installs snapshots through this).
pub(crate) fn decode_snapshot(meta: &SnapshotMeta, bytes: &[u8]) -> Result<AppliedState, StorageError> {
    let mut incoming: AppliedState = serde_json::from_slice(bytes).map_err(|e| io_err(StorageIOError::read_snapshot(Some(meta.signature()), &e)))?;
    incoming.state.reindex();
    incoming.last_applied = meta.last_log_id;
    incoming.membership = meta.last_membership.clone();
    Ok(incoming)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, bytes) = {
            let data = self.data.read().expect("state machine lock");
            let bytes = serde_json::to_vec(&*data).map_err(write_err)?;
            let n = self.snapshots_built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let index = data.last_applied.map(|l| l.index).unwrap_or(0);
            let meta = SnapshotMeta {
                last_log_id: data.last_applied,
                last_membership: data.membership.clone(),
                snapshot_id: format!("{index}-{n}"),
            };
            (meta, bytes)
        };
        let stored = StoredSnapshot { meta: meta.clone(), data: bytes.clone() };
        let stored = serde_json::to_vec(&stored).map_err(write_err)?;
        self.db.put_cf_opt(cf(&self.db, CF_META), KEY_SNAPSHOT, stored, &synced()).map_err(write_err)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = bytes.len(), "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let data = self.data.read().expect("state machine lock");
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Responses>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut data = self.data.write().expect("state machine lock");
        let mut changed = Vec::new();
        let (responses, membership_changed) = apply_entries(&mut data, entries, &mut changed);
        changed.sort();
        changed.dedup();
        let mut batch = WriteBatch::default();
        self.persist_changes(&data, &changed, &mut batch)?;
        if membership_changed {
            self.persist_membership(&data, &mut batch)?;
        }
        self.db.write(batch).map_err(write_err)?;
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

        let sm = cf(&self.db, CF_SM);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(sm, b"".as_slice(), b"\xff".as_slice());
        let mut all: Vec<StateKey> = vec![StateKey::Clock, StateKey::Fsrvp];
        all.extend(incoming.state.volumes.keys().map(|id| StateKey::Volume(*id)));
        all.extend(incoming.state.shares.keys().map(|k| StateKey::Share(k.clone())));
        all.extend(incoming.state.users.keys().map(|k| StateKey::User(k.clone())));
        all.extend(incoming.state.dedupe.iter().map(|d| StateKey::Dedupe(d.index)));
        all.dedup();
        self.persist_changes(&incoming, &all, &mut batch)?;
        self.persist_membership(&incoming, &mut batch)?;
        let stored = serde_json::to_vec(&StoredSnapshot { meta: meta.clone(), data: bytes }).map_err(write_err)?;
        batch.put_cf(cf(&self.db, CF_META), KEY_SNAPSHOT, stored);
        self.db.write_opt(batch, &synced()).map_err(write_err)?;

        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        *self.data.write().expect("state machine lock") = incoming;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(bytes) = self.db.get_cf(cf(&self.db, CF_META), KEY_SNAPSHOT).map_err(read_err)? else {
            return Ok(None);
        };
        let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(read_err)?;
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}
