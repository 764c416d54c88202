//! The volume store: file trees on an ordered key-value engine ([`super::kv`]: RocksDB in
//! production, the crash-modelling in-memory engine under simulation) with O(1) snapshots and
//! writable clones.
//!
//! Every key carries the epoch it was written in (see [`keys`]). A snapshot records the current
//! epoch and starts a new one: one small synced write, whatever the volume holds. A read at a
//! snapshot takes the newest version at or before its epoch. The first write to an object after
//! a snapshot makes a new version; later writes in the same epoch overwrite it in place. The
//! superseded version is deleted at once when no snapshot or clone base needs it, else noted in
//! the deadlist of the superseding epoch for [`super::reclaim`]. Truncate and delete write
//! versions (a new chunk generation, tombstones), never remove what a snapshot still reads.
//! Work proportional to a file's size never lands in one batch: a dead generation, a deleted
//! clone's chunks and the chunks a truncate leaves past the end (the inode's `cut`) are
//! queued for the reclaimer, which handles them in bounded steps.
//!
//! Each volume's mutations are serialised by its lock and land as one write batch each.
//!
//! This file holds the store's state and the versioning core (seeing and writing versions);
//! `namespace.rs`, `data.rs` and `snapshots.rs` add the operations on top of it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::{Result, VolumeError};
use super::keys::{self, dead, Epoch, Lineage, LIVE};
use super::durability::SyncGroup;
use super::gate::{Gate, Pass};
use super::kv::{Batch, Cf, Durability, Kv, RocksKv, Seek};
pub(super) use super::kv::Verify;
use super::types::*;

pub(super) const CF_META: Cf = Cf::Meta;
pub(super) const CF_INODES: Cf = Cf::Inodes;
pub(super) const CF_DIRENTS: Cf = Cf::Dirents;
pub(super) const CF_CHUNKS: Cf = Cf::Chunks;
pub(super) const CF_DEAD: Cf = Cf::Dead;
pub(super) const VERSIONED: [Cf; 3] = [CF_INODES, CF_DIRENTS, CF_CHUNKS];

pub(super) const META_VOLUME: u8 = b'V';
pub(super) const META_SNAPSHOT: u8 = b'S';
pub(super) const META_CLONE: u8 = b'C';
pub(super) const META_RECLAIM: u8 = b'R';
pub(super) const META_FENCES: u8 = b'F';


/// Bytes of a chunk key without its epoch: vol, lineage, ino, generation, index.
pub(super) const CHUNK_OBJECT_BYTES: usize = 16 + 4 + 8 + 8 + 8;
/// Bytes of an inode key without its epoch: vol, lineage, ino.
pub(super) const INODE_OBJECT_BYTES: usize = 16 + 4 + 8;

/// Writes to the clone lineages are not versioned (clones have no snapshots of their own).
pub(super) const CLONE_EPOCH: Epoch = 0;

pub(super) fn meta_key(vol: Uuid, tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = vol.as_bytes().to_vec();
    k.push(tag);
    k.extend_from_slice(rest);
    k
}

/// In-memory state of one volume, loaded at open and kept in step with every batch.
pub(super) struct VolState {
    pub id: Uuid,
    pub meta: VolumeMeta,
    pub snapshots: BTreeMap<Uuid, SnapshotInfo>,
    pub clones: BTreeMap<Uuid, CloneInfo>,
}

impl VolState {
    /// Epochs some reader may still need: tentative and committed snapshots, clone bases.
    pub(super) fn pins(&self) -> impl Iterator<Item = Epoch> + '_ {
        let snaps = self.snapshots.values().filter(|s| s.state != SnapshotState::Deleting).map(|s| s.epoch);
        snaps.chain(self.clones.values().map(|c| c.base_epoch))
    }

    /// Whether a version born in epoch `born` and superseded in epoch `died` is still read by
    /// a snapshot or clone base (one with `born <= epoch < died`).
    pub fn needed(&self, born: Epoch, died: Epoch) -> bool {
        self.pins().any(|e| born <= e && e < died)
    }

    /// The smallest pinned epoch above `epoch`, if any.
    pub fn next_pin_after(&self, epoch: Epoch) -> Option<Epoch> {
        self.pins().filter(|&e| e > epoch).min()
    }
}

/// How an operation sees the keys: which lineage, up to which epoch, and where it writes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Scope {
    pub lineage: Lineage,
    pub max_epoch: Epoch,
    /// For a clone: the live lineage's versions up to this epoch show through.
    pub base_epoch: Option<Epoch>,
    pub write_epoch: Epoch,
    pub writable: bool,
}

/// One volume: its state (mutations serialised by the lock) and its write gate.
pub(super) struct VolumeEntry {
    pub state: Mutex<VolState>,
    pub gate: Gate,
    /// Fence tokens and answers; a lock of their own, so a fence never queues behind writers
    /// for the state lock before its fence point.
    pub fences: Mutex<FenceBook>,
}

impl VolumeEntry {
    /// Passes the gate and takes the volume lock for one mutation (one write batch). Admission
    /// is decided while the lock is held, so a fence raised while writers queue for the lock
    /// waits only for the one holding it; the others go back to wait at the gate. Bind both
    /// (`let (_pass, st) = ...`): the lock is let go first, then the pass.
    pub(super) fn mutation(&self) -> Result<(Pass<'_>, MutexGuard<'_, VolState>)> {
        loop {
            self.gate.wait_open_blocking()?;
            let st = self.state.lock().expect("volume lock");
            if let Some(pass) = self.gate.admit() {
                return Ok((pass, st));
            }
        }
    }
}

pub struct VolumeStore {
    pub(super) kv: Arc<dyn Kv>,
    volumes: Mutex<HashMap<Uuid, Arc<VolumeEntry>>>,
    pub(super) syncs: SyncGroup,
    /// Dropped last (fields drop in order), once the database above is closed: see
    /// [`VolumeStore::close_watch`].
    _closed: std::sync::mpsc::Sender<()>,
    close_watch: Mutex<Option<CloseWatch>>,
    /// A deliberately broken variant for the simulation's checkers: reclaim frees versions
    /// snapshots still read ([`VolumeStore::break_reclaim_for_tests`]).
    pub(super) reclaims_needed: std::sync::atomic::AtomicBool,
}

/// Tells when a store has been dropped and its database closed, whichever thread let go of it
/// last (a process must not exit while another thread is still closing RocksDB).
pub struct CloseWatch(std::sync::mpsc::Receiver<()>);

impl CloseWatch {
    /// Waits (blocking) until the store is closed, or `limit` passes; returns whether it closed.
    pub fn wait(self, limit: std::time::Duration) -> bool {
        matches!(self.0.recv_timeout(limit), Err(std::sync::mpsc::RecvTimeoutError::Disconnected))
    }
}

/// A found version: its full key and its value.
pub(super) type Version = (Vec<u8>, Vec<u8>);

impl VolumeStore {
    /// Opens (or creates) the volume database under `path` (RocksDB) and loads every volume's
    /// state.
    pub fn open(path: &Path) -> Result<VolumeStore> {
        VolumeStore::open_on(Arc::new(RocksKv::open(path)?))
    }

    /// Opens the store on any engine (the simulation's is in memory) and loads every volume's
    /// state.
    pub fn open_on(kv: Arc<dyn Kv>) -> Result<VolumeStore> {
        let (closed, watch) = std::sync::mpsc::channel();
        let store = VolumeStore { kv, volumes: Mutex::new(HashMap::new()), syncs: SyncGroup::default(), _closed: closed, close_watch: Mutex::new(Some(CloseWatch(watch))), reclaims_needed: std::sync::atomic::AtomicBool::new(false) };
        store.load()?;
        Ok(store)
    }

    /// The watch on this store's closing (once: later calls get none).
    pub fn close_watch(&self) -> Option<CloseWatch> {
        self.close_watch.lock().expect("close watch lock").take()
    }

    pub(super) fn load(&self) -> Result<()> {
        let mut found: HashMap<Uuid, VolState> = HashMap::new();
        let mut books: HashMap<Uuid, FenceBook> = HashMap::new();
        for item in self.kv.scan(CF_META, b"") {
            let (key, value) = item?;
            let (Some(id), Some(&tag)) = (key.get(..16).and_then(|b| Uuid::from_slice(b).ok()), key.get(16)) else { continue };
            let st = found.entry(id).or_insert_with(|| VolState {
                id,
                meta: VolumeMeta { epoch: 1, next_ino: ROOT_INO + 1, next_lineage: 1, next_reclaim: 0 },
                snapshots: BTreeMap::new(),
                clones: BTreeMap::new(),
            });
            match tag {
                META_VOLUME => st.meta = serde_json::from_slice(&value)?,
                META_SNAPSHOT => {
                    let s: SnapshotInfo = serde_json::from_slice(&value)?;
                    st.snapshots.insert(s.id, s);
                }
                META_CLONE => {
                    let c: CloneInfo = serde_json::from_slice(&value)?;
                    st.clones.insert(c.id, c);
                }
                META_FENCES => {
                    books.insert(id, serde_json::from_slice(&value)?);
                }
                _ => {}
            }
        }
        let mut volumes = self.volumes.lock().expect("volume map lock");
        for (id, st) in found {
            let fences = Mutex::new(books.remove(&id).unwrap_or_default());
            volumes.insert(id, Arc::new(VolumeEntry { state: Mutex::new(st), gate: Gate::default(), fences }));
        }
        Ok(())
    }

    pub(super) fn volume(&self, vol: Uuid) -> Result<Arc<VolumeEntry>> {
        self.volumes.lock().expect("volume map lock").get(&vol).cloned().ok_or(VolumeError::NoSuchVolume(vol))
    }

    pub(super) fn lock(entry: &VolumeEntry) -> MutexGuard<'_, VolState> {
        entry.state.lock().expect("volume lock")
    }

    /// Volumes stored on this node.
    pub fn volumes(&self) -> Vec<Uuid> {
        let mut v: Vec<Uuid> = self.volumes.lock().expect("volume map lock").keys().copied().collect();
        v.sort();
        v
    }

    /// Creates an empty volume (its root directory at epoch 1).
    pub fn create_volume(&self, vol: Uuid, now: u64) -> Result<()> {
        let mut volumes = self.volumes.lock().expect("volume map lock");
        if volumes.contains_key(&vol) {
            return Err(VolumeError::VolumeExists(vol));
        }
        let meta = VolumeMeta { epoch: 1, next_ino: ROOT_INO + 1, next_lineage: 1, next_reclaim: 0 };
        let root = Inode { kind: Kind::Dir, parent: ROOT_INO, size: 0, allocated: 0, generation: 0, created: now, written: now, changed: now, attributes: 0, cut: None, security: None };
        let mut batch = Batch::default();
        batch.put(CF_META, meta_key(vol, META_VOLUME, &[]), serde_json::to_vec(&meta)?);
        batch.put(CF_INODES, keys::versioned(keys::inode(vol, LIVE, ROOT_INO), meta.epoch), serde_json::to_vec(&InodeValue::Live(root))?);
        self.kv.write(batch, Durability::Synced)?;
        let st = VolState { id: vol, meta, snapshots: BTreeMap::new(), clones: BTreeMap::new() };
        volumes.insert(vol, Arc::new(VolumeEntry { state: Mutex::new(st), gate: Gate::default(), fences: Mutex::new(FenceBook::default()) }));
        Ok(())
    }

    pub(super) fn scope(st: &VolState, view: View) -> Result<Scope> {
        match view {
            View::Live => Ok(Scope { lineage: LIVE, max_epoch: u64::MAX, base_epoch: None, write_epoch: st.meta.epoch, writable: true }),
            View::Snapshot(id) => {
                let s = st.snapshots.get(&id).filter(|s| s.state == SnapshotState::Committed).ok_or(VolumeError::NoSuchSnapshot(id))?;
                Ok(Scope { lineage: LIVE, max_epoch: s.epoch, base_epoch: None, write_epoch: s.epoch, writable: false })
            }
            View::Clone(id) => {
                let c = st.clones.get(&id).ok_or(VolumeError::NoSuchClone(id))?;
                Ok(Scope { lineage: c.lineage, max_epoch: u64::MAX, base_epoch: Some(c.base_epoch), write_epoch: CLONE_EPOCH, writable: !c.sealed })
            }
        }
    }

    pub(super) fn writable(st: &VolState, view: View) -> Result<Scope> {
        let scope = Self::scope(st, view)?;
        if !scope.writable {
            return Err(VolumeError::ReadOnly(match view {
                View::Snapshot(_) => "snapshots cannot be written",
                _ => "the clone is sealed",
            }));
        }
        Ok(scope)
    }

    // ----- versioned reads -----

    /// The newest version of `object` at or before `max`, in one lineage. Chunk and inode
    /// objects are their column family's bloom-filtered prefix, so the seek skips files that
    /// cannot hold them.
    pub(super) fn newest(&self, cf: Cf, object: &[u8], max: Epoch) -> Result<Option<Version>> {
        self.newest_map(cf, object, max, Verify::Yes, |k, v| (k.to_vec(), v.to_vec()))
    }

    /// [`Self::newest`], handing `found` the key and value where they lie (one copy at most,
    /// the caller's).
    fn newest_map<T>(&self, cf: Cf, object: &[u8], max: Epoch, verify: Verify, found: impl FnOnce(&[u8], &[u8]) -> T) -> Result<Option<T>> {
        let seek = keys::versioned(object.to_vec(), max);
        let mut found = Some(found);
        let mut out = None;
        self.kv.seek(cf, &seek, Seek::SamePrefix(object.len()), verify, &mut |k, v| {
            if Self::is_version_of(k, object) {
                out = found.take().map(|f| f(k, v));
            }
        })?;
        Ok(out)
    }

    /// Whether `key` is a version of `object` (the object, then its epoch).
    fn is_version_of(key: &[u8], object: &[u8]) -> bool {
        key.len() == object.len() + 8 && key.starts_with(object)
    }

    /// Where a scope looks for an object, in order: its own lineage up to its epoch, then (for a
    /// clone) the live lineage up to its base.
    fn lookups(scope: &Scope, object: impl Fn(Lineage) -> Vec<u8>) -> impl Iterator<Item = (Vec<u8>, Epoch)> {
        [(object(scope.lineage), scope.max_epoch)].into_iter().chain(scope.base_epoch.into_iter().map(move |base| (object(LIVE), base)))
    }

    /// The version a scope sees: its own lineage first, then (for a clone) its base.
    pub(super) fn visible(&self, cf: Cf, scope: &Scope, object: impl Fn(Lineage) -> Vec<u8>) -> Result<Option<Version>> {
        self.visible_map(cf, scope, object, Verify::Yes, |k, v| (k.to_vec(), v.to_vec()))
    }

    /// [`Self::visible`], handing `found` the key and value where they lie.
    pub(super) fn visible_map<T>(&self, cf: Cf, scope: &Scope, object: impl Fn(Lineage) -> Vec<u8>, verify: Verify, mut found: impl FnMut(&[u8], &[u8]) -> T) -> Result<Option<T>> {
        for (object, max) in Self::lookups(scope, object) {
            if let Some(v) = self.newest_map(cf, &object, max, verify, &mut found)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// [`Self::visible_map`] for a value read straight into `dest` ([`Kv::seek_into`]): its
    /// length, if the scope sees one.
    pub(super) fn visible_into(&self, cf: Cf, scope: &Scope, object: impl Fn(Lineage) -> Vec<u8>, dest: &mut [u8]) -> Result<Option<usize>> {
        self.visible_seek(scope, object, |seek, how, wanted| self.kv.seek_into(cf, seek, how, wanted, dest))
    }

    /// [`Self::visible_map`] for a value the caller keeps ([`Kv::seek_shared`]): as its head
    /// and tail, if the scope sees one.
    pub(super) fn visible_shared(&self, cf: Cf, scope: &Scope, object: impl Fn(Lineage) -> Vec<u8>) -> Result<Option<(bytes::Bytes, bytes::Bytes)>> {
        self.visible_seek(scope, object, |seek, how, wanted| self.kv.seek_shared(cf, seek, how, wanted))
    }

    /// The first of a scope's lookups that `seek` finds a version of the object in: `seek`
    /// gets where to start, how, and which keys are versions of the object.
    fn visible_seek<T>(&self, scope: &Scope, object: impl Fn(Lineage) -> Vec<u8>, mut seek: impl FnMut(&[u8], Seek, &mut dyn FnMut(&[u8]) -> bool) -> Result<Option<T>>) -> Result<Option<T>> {
        for (object, max) in Self::lookups(scope, object) {
            let from = keys::versioned(object.clone(), max);
            if let Some(found) = seek(&from, Seek::SamePrefix(object.len()), &mut |k| Self::is_version_of(k, &object))? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        Ok(serde_json::from_slice(bytes)?)
    }

    pub(super) fn inode_at(&self, vol: Uuid, scope: &Scope, ino: u64) -> Result<Option<(Inode, Option<Vec<u8>>)>> {
        let found = self.visible(CF_INODES, scope, |lin| keys::inode(vol, lin, ino))?;
        Ok(match found {
            Some((key, value)) => match Self::decode::<InodeValue>(&value)? {
                InodeValue::Live(inode) => Some((inode, Some(key))),
                InodeValue::Deleted => None,
            },
            None => None,
        })
    }

    pub(super) fn inode_req(&self, vol: Uuid, scope: &Scope, ino: u64) -> Result<(Inode, Option<Vec<u8>>)> {
        self.inode_at(vol, scope, ino)?.ok_or_else(|| VolumeError::NotFound(format!("inode {ino}")))
    }

    pub(super) fn dirent_at(&self, vol: Uuid, scope: &Scope, parent: u64, folded: &str) -> Result<Option<(String, u64, Vec<u8>)>> {
        let found = self.visible(CF_DIRENTS, scope, |lin| keys::dirent(vol, lin, parent, folded))?;
        Ok(match found {
            Some((key, value)) => match Self::decode::<DirentValue>(&value)? {
                DirentValue::Live { name, ino } => Some((name, ino, key)),
                DirentValue::Deleted => None,
            },
            None => None,
        })
    }

    // ----- versioned writes -----

    /// Writes a new version of `object` in the scope's lineage at its write epoch, and retires
    /// `old` (the version it replaces, if any).
    pub(super) fn put_version(&self, st: &VolState, scope: &Scope, batch: &mut Batch, cf: Cf, object: Vec<u8>, value: Vec<u8>, old: Option<&[u8]>) {
        let key = keys::versioned(object, scope.write_epoch);
        if let Some(old) = old {
            if old != key.as_slice() {
                self.retire(st, scope, batch, cf, old);
            }
        }
        batch.put(cf, key, value);
    }

    /// Retires a superseded version: deleted now if nothing can read it, else put on the
    /// deadlist of the superseding epoch. Returns whether it was deleted.
    pub(super) fn retire(&self, st: &VolState, scope: &Scope, batch: &mut Batch, cf: Cf, old: &[u8]) -> bool {
        if lineage_of(old) != Some(scope.lineage) {
            return false; // a clone's base version: the live lineage keeps it
        }
        let born = keys::epoch_of(old).unwrap_or(0);
        if scope.lineage == LIVE && st.needed(born, scope.write_epoch) {
            batch.put(CF_DEAD, dead::key(st.id, scope.write_epoch, tag_of(cf), old), b"");
            false
        } else {
            batch.delete(cf, old);
            true
        }
    }

    /// Removes what a scope sees of `object` (`old` is that version), writing `tombstone`
    /// only where an older version, or a clone's base, would otherwise show through.
    pub(super) fn remove_version(&self, st: &VolState, scope: &Scope, batch: &mut Batch, cf: Cf, object: impl Fn(Lineage) -> Vec<u8>, old: &[u8], tombstone: &[u8]) -> Result<()> {
        let own = lineage_of(old) == Some(scope.lineage);
        let new_key = keys::versioned(object(scope.lineage), scope.write_epoch);
        let deleted = if !own {
            false
        } else if old == new_key.as_slice() {
            batch.delete(cf, old);
            true
        } else {
            self.retire(st, scope, batch, cf, old)
        };
        let shows_through = !deleted || {
            let born = keys::epoch_of(old).unwrap_or(0);
            let older = match born.checked_sub(1) {
                Some(below) if own => self.newest(cf, &object(scope.lineage), below)?.is_some(),
                _ => false,
            };
            older || match scope.base_epoch {
                Some(base) => self.newest(cf, &object(LIVE), base)?.is_some(),
                None => false,
            }
        };
        if shows_through {
            batch.put(cf, new_key, tombstone);
        }
        Ok(())
    }

    pub(super) fn put_inode(&self, st: &VolState, scope: &Scope, batch: &mut Batch, ino: u64, inode: &Inode, old: Option<&[u8]>) -> Result<()> {
        let value = serde_json::to_vec(&InodeValue::Live(inode.clone()))?;
        self.put_version(st, scope, batch, CF_INODES, keys::inode(st.id, scope.lineage, ino), value, old);
        Ok(())
    }

    /// Writes one key alone.
    pub(super) fn put_one(&self, cf: Cf, key: Vec<u8>, value: Vec<u8>, durability: Durability) -> Result<()> {
        let mut batch = Batch::default();
        batch.put(cf, key, value);
        self.kv.write(batch, durability)
    }

    pub(super) fn persist_meta(&self, st: &VolState, batch: &mut Batch) -> Result<()> {
        batch.put(CF_META, meta_key(st.id, META_VOLUME, &[]), serde_json::to_vec(&st.meta)?);
        Ok(())
    }
}

pub(super) fn lineage_of(key: &[u8]) -> Option<Lineage> {
    Some(Lineage::from_be_bytes(key.get(16..20)?.try_into().ok()?))
}

pub(super) fn tag_of(cf: Cf) -> u8 {
    match cf {
        CF_INODES => dead::INODE,
        CF_DIRENTS => dead::DIRENT,
        _ => dead::CHUNK,
    }
}

pub(super) fn cf_of(tag: u8) -> Option<Cf> {
    match tag {
        dead::INODE => Some(CF_INODES),
        dead::DIRENT => Some(CF_DIRENTS),
        dead::CHUNK => Some(CF_CHUNKS),
        _ => None,
    }
}

impl std::fmt::Debug for VolumeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeStore").field("volumes", &self.volumes()).finish()
    }
}
