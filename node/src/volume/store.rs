//! The volume store: file trees on RocksDB with O(1) snapshots and writable clones.
//!
//! Every key carries the epoch it was written in (see [`keys`]). A snapshot records the current
//! epoch and starts a new one: one small synced write, whatever the volume holds. A read at a
//! snapshot takes the newest version at or before its epoch. The first write to an object after
//! a snapshot makes a new version; later writes in the same epoch overwrite it in place. The
//! superseded version is deleted at once when no snapshot or clone base needs it, else noted in
//! the deadlist of the superseding epoch for [`super::reclaim`]. Truncate and delete write
//! versions (a new chunk generation, tombstones), never remove what a snapshot still reads.
//!
//! Each volume's mutations are serialised by its lock and land as one write batch each.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};
use serde::de::DeserializeOwned;
use umbra_raft::names::{check_file_name, fold};
use uuid::Uuid;

use super::error::{Result, VolumeError};
use super::keys::{self, dead, Epoch, Lineage, LIVE};
use super::gate::{Gate, Released};
use super::types::*;

pub(super) const CF_META: &str = "meta";
pub(super) const CF_INODES: &str = "inodes";
pub(super) const CF_DIRENTS: &str = "dirents";
pub(super) const CF_CHUNKS: &str = "chunks";
pub(super) const CF_DEAD: &str = "dead";
const VERSIONED: [&str; 3] = [CF_INODES, CF_DIRENTS, CF_CHUNKS];

const META_VOLUME: u8 = b'V';
const META_SNAPSHOT: u8 = b'S';
const META_CLONE: u8 = b'C';
pub(super) const META_RECLAIM: u8 = b'R';
const META_FENCES: u8 = b'F';

/// Unsynced WAL bytes RocksDB lets accumulate before it starts writing them out.
const WAL_BYTES_PER_SYNC: u64 = 1024 * 1024;

/// Bytes of a chunk key without its epoch: vol, lineage, ino, generation, index.
const CHUNK_OBJECT_BYTES: usize = 16 + 4 + 8 + 8 + 8;
/// Bytes of an inode key without its epoch: vol, lineage, ino.
const INODE_OBJECT_BYTES: usize = 16 + 4 + 8;

/// Options for a column family whose seeks go to one fixed-length object: a prefix extractor
/// of that length with bloom filters in SST files and memtables (design-review F17).
fn prefix_options(prefix_len: usize) -> Options {
    let mut o = Options::default();
    o.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(prefix_len));
    o.set_memtable_prefix_bloom_ratio(0.1);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(false);
    o.set_block_based_table_factory(&table);
    o
}

/// Writes to the clone lineages are not versioned (clones have no snapshots of their own).
const CLONE_EPOCH: Epoch = 0;

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
    fn pins(&self) -> impl Iterator<Item = Epoch> + '_ {
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

pub struct VolumeStore {
    pub(super) db: Arc<DB>,
    volumes: Mutex<HashMap<Uuid, Arc<VolumeEntry>>>,
    syncs: SyncGroup,
}

/// Group commit for `sync`: one WAL sync at a time, covering every write before it.
#[derive(Default)]
struct SyncGroup {
    state: Mutex<SyncState>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct SyncState {
    running: bool,
    /// Every write with a sequence number up to this one is synced.
    synced_upto: u64,
    /// WAL syncs run so far.
    performed: u64,
}

/// A found version: its full key and its value.
type Version = (Vec<u8>, Vec<u8>);

impl VolumeStore {
    /// Opens (or creates) the volume database under `path` and loads every volume's state.
    pub fn open(path: &Path) -> Result<VolumeStore> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Write dirty WAL and table data out as it accumulates, so a synced write (a fence's
        // snapshot, a FLUSH) finds little left to sync and its latency stays short.
        opts.set_wal_bytes_per_sync(WAL_BYTES_PER_SYNC);
        opts.set_bytes_per_sync(WAL_BYTES_PER_SYNC);
        let mut chunk_opts = prefix_options(CHUNK_OBJECT_BYTES);
        // Chunk values live in blob files: compaction moves only keys (design.md section 3).
        chunk_opts.set_enable_blob_files(true);
        chunk_opts.set_min_blob_size(4096);
        chunk_opts.set_enable_blob_gc(true);
        // Every blob file may be garbage-collected when compaction meets it, so the space of
        // reclaimed versions comes back (at the price of moving live blobs in those files).
        chunk_opts.set_blob_gc_age_cutoff(1.0);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
            ColumnFamilyDescriptor::new(CF_INODES, prefix_options(INODE_OBJECT_BYTES)),
            ColumnFamilyDescriptor::new(CF_DIRENTS, Options::default()),
            ColumnFamilyDescriptor::new(CF_CHUNKS, chunk_opts),
            ColumnFamilyDescriptor::new(CF_DEAD, Options::default()),
        ];
        let db = Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?);
        let store = VolumeStore { db, volumes: Mutex::new(HashMap::new()), syncs: SyncGroup::default() };
        store.load()?;
        Ok(store)
    }

    fn load(&self) -> Result<()> {
        let mut found: HashMap<Uuid, VolState> = HashMap::new();
        let mut books: HashMap<Uuid, FenceBook> = HashMap::new();
        for item in self.db.iterator_cf(self.cf(CF_META), IteratorMode::Start) {
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

    pub(super) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column families are created at open")
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
        let root = Inode { kind: Kind::Dir, parent: ROOT_INO, size: 0, allocated: 0, generation: 0, created: now, written: now, changed: now, attributes: 0 };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), meta_key(vol, META_VOLUME, &[]), serde_json::to_vec(&meta)?);
        batch.put_cf(self.cf(CF_INODES), keys::versioned(keys::inode(vol, LIVE, ROOT_INO), meta.epoch), serde_json::to_vec(&InodeValue::Live(root))?);
        self.db.write_opt(batch, &synced())?;
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

    fn writable(st: &VolState, view: View) -> Result<Scope> {
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
    pub(super) fn newest(&self, cf: &str, object: &[u8], max: Epoch) -> Result<Option<Version>> {
        let seek = keys::versioned(object.to_vec(), max);
        let mut ro = rocksdb::ReadOptions::default();
        let prefixed = matches!((cf, object.len()), (CF_CHUNKS, CHUNK_OBJECT_BYTES) | (CF_INODES, INODE_OBJECT_BYTES));
        if prefixed {
            ro.set_prefix_same_as_start(true);
        } else {
            ro.set_total_order_seek(true);
        }
        let mut it = self.db.iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(&seek, Direction::Forward));
        match it.next() {
            Some(item) => {
                let (k, v) = item?;
                Ok((k.len() == object.len() + 8 && k.starts_with(object)).then(|| (k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    /// The version a scope sees: its own lineage first, then (for a clone) its base.
    fn visible(&self, cf: &str, scope: &Scope, object: impl Fn(Lineage) -> Vec<u8>) -> Result<Option<Version>> {
        if let Some(v) = self.newest(cf, &object(scope.lineage), scope.max_epoch)? {
            return Ok(Some(v));
        }
        match scope.base_epoch {
            Some(base) => self.newest(cf, &object(LIVE), base),
            None => Ok(None),
        }
    }

    /// An iterator in key order from `from`, across prefixes (total order).
    pub(super) fn scan(&self, cf: &str, from: &[u8]) -> rocksdb::DBIteratorWithThreadMode<'_, DB> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_total_order_seek(true);
        self.db.iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(from, Direction::Forward))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
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

    fn inode_req(&self, vol: Uuid, scope: &Scope, ino: u64) -> Result<(Inode, Option<Vec<u8>>)> {
        self.inode_at(vol, scope, ino)?.ok_or_else(|| VolumeError::NotFound(format!("inode {ino}")))
    }

    fn dirent_at(&self, vol: Uuid, scope: &Scope, parent: u64, folded: &str) -> Result<Option<(String, u64, Vec<u8>)>> {
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
    fn put_version(&self, st: &VolState, scope: &Scope, batch: &mut WriteBatch, cf: &str, object: Vec<u8>, value: &[u8], old: Option<&[u8]>) {
        let key = keys::versioned(object, scope.write_epoch);
        batch.put_cf(self.cf(cf), &key, value);
        if let Some(old) = old {
            if old != key.as_slice() {
                self.retire(st, scope, batch, cf, old);
            }
        }
    }

    /// Retires a superseded version: deleted now if nothing can read it, else put on the
    /// deadlist of the superseding epoch. Returns whether it was deleted.
    fn retire(&self, st: &VolState, scope: &Scope, batch: &mut WriteBatch, cf: &str, old: &[u8]) -> bool {
        if lineage_of(old) != Some(scope.lineage) {
            return false; // a clone's base version: the live lineage keeps it
        }
        let born = keys::epoch_of(old).unwrap_or(0);
        if scope.lineage == LIVE && st.needed(born, scope.write_epoch) {
            batch.put_cf(self.cf(CF_DEAD), dead::key(st.id, scope.write_epoch, tag_of(cf), old), b"");
            false
        } else {
            batch.delete_cf(self.cf(cf), old);
            true
        }
    }

    /// Removes what a scope sees of `object` (`old` is that version), writing `tombstone`
    /// only where an older version, or a clone's base, would otherwise show through.
    fn remove_version(&self, st: &VolState, scope: &Scope, batch: &mut WriteBatch, cf: &str, object: impl Fn(Lineage) -> Vec<u8>, old: &[u8], tombstone: &[u8]) -> Result<()> {
        let own = lineage_of(old) == Some(scope.lineage);
        let new_key = keys::versioned(object(scope.lineage), scope.write_epoch);
        let deleted = if !own {
            false
        } else if old == new_key.as_slice() {
            batch.delete_cf(self.cf(cf), old);
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
            batch.put_cf(self.cf(cf), new_key, tombstone);
        }
        Ok(())
    }

    fn put_inode(&self, st: &VolState, scope: &Scope, batch: &mut WriteBatch, ino: u64, inode: &Inode, old: Option<&[u8]>) -> Result<()> {
        let value = serde_json::to_vec(&InodeValue::Live(inode.clone()))?;
        self.put_version(st, scope, batch, CF_INODES, keys::inode(st.id, scope.lineage, ino), &value, old);
        Ok(())
    }

    fn persist_meta(&self, st: &VolState, batch: &mut WriteBatch) -> Result<()> {
        batch.put_cf(self.cf(CF_META), meta_key(st.id, META_VOLUME, &[]), serde_json::to_vec(&st.meta)?);
        Ok(())
    }

    // ----- namespace -----

    /// Looks `name` up (any case) in directory `parent`.
    pub fn lookup(&self, vol: Uuid, view: View, parent: u64, name: &str) -> Result<Option<DirEntry>> {
        let st = self.volume(vol)?;
        let st = Self::lock(&st);
        let scope = Self::scope(&st, view)?;
        self.lookup_in(&st, &scope, parent, name)
    }

    fn lookup_in(&self, st: &VolState, scope: &Scope, parent: u64, name: &str) -> Result<Option<DirEntry>> {
        let Some((name, ino, _)) = self.dirent_at(st.id, scope, parent, &fold(name))? else { return Ok(None) };
        let (inode, _) = self.inode_req(st.id, scope, ino)?;
        Ok(Some(DirEntry { name, ino, inode }))
    }

    /// Resolves a `/`-separated path from the root.
    pub fn resolve(&self, vol: Uuid, view: View, path: &str) -> Result<DirEntry> {
        let st = self.volume(vol)?;
        let st = Self::lock(&st);
        let scope = Self::scope(&st, view)?;
        let (root, _) = self.inode_req(vol, &scope, ROOT_INO)?;
        let mut at = DirEntry { name: String::new(), ino: ROOT_INO, inode: root };
        for part in path.split(['/', '\\']).filter(|p| !p.is_empty()) {
            if at.inode.kind != Kind::Dir {
                return Err(VolumeError::NotADirectory);
            }
            at = self.lookup_in(&st, &scope, at.ino, part)?.ok_or_else(|| VolumeError::NotFound(path.to_string()))?;
        }
        Ok(at)
    }

    pub fn stat(&self, vol: Uuid, view: View, ino: u64) -> Result<Inode> {
        let st = self.volume(vol)?;
        let st = Self::lock(&st);
        let scope = Self::scope(&st, view)?;
        Ok(self.inode_req(vol, &scope, ino)?.0)
    }

    /// Creates a file or directory `name` in `parent`; returns its inode number.
    pub fn create(&self, vol: Uuid, view: View, parent: u64, name: &str, kind: Kind, now: u64) -> Result<u64> {
        check_file_name(name)?;
        let entry = self.volume(vol)?;
        let _pass = entry.gate.enter()?;
        let mut st = Self::lock(&entry);
        let scope = Self::writable(&st, view)?;
        let (mut dir, dir_key) = self.inode_req(vol, &scope, parent)?;
        if dir.kind != Kind::Dir {
            return Err(VolumeError::NotADirectory);
        }
        if let Some(existing) = self.lookup_in(&st, &scope, parent, name)? {
            return Err(VolumeError::Exists(existing.name));
        }
        let ino = st.meta.next_ino;
        st.meta.next_ino += 1;
        let inode = Inode { kind, parent, size: 0, allocated: 0, generation: 0, created: now, written: now, changed: now, attributes: 0 };
        let mut batch = WriteBatch::default();
        self.put_inode(&st, &scope, &mut batch, ino, &inode, None)?;
        let dirent = serde_json::to_vec(&DirentValue::Live { name: name.to_string(), ino })?;
        let object = |lin| keys::dirent(vol, lin, parent, &fold(name));
        let old = self.newest(CF_DIRENTS, &object(scope.lineage), scope.max_epoch)?.map(|(k, _)| k);
        self.put_version(&st, &scope, &mut batch, CF_DIRENTS, object(scope.lineage), &dirent, old.as_deref());
        dir.written = now;
        dir.changed = now;
        self.put_inode(&st, &scope, &mut batch, parent, &dir, dir_key.as_deref())?;
        self.persist_meta(&st, &mut batch)?;
        self.db.write(batch)?;
        Ok(ino)
    }

    /// Lists directory `dir` in folded-name order, starting after the folded name `after`
    /// (the resume point of the previous call), at most `limit` entries.
    pub fn list(&self, vol: Uuid, view: View, dir: u64, after: Option<&str>, limit: usize) -> Result<Vec<DirEntry>> {
        let st = self.volume(vol)?;
        let st = Self::lock(&st);
        let scope = Self::scope(&st, view)?;
        self.list_in(&st, &scope, dir, after, limit.min(MAX_LIST_ENTRIES))
    }

    fn list_in(&self, st: &VolState, scope: &Scope, dir: u64, after: Option<&str>, limit: usize) -> Result<Vec<DirEntry>> {
        let (inode, _) = self.inode_req(st.id, scope, dir)?;
        if inode.kind != Kind::Dir {
            return Err(VolumeError::NotADirectory);
        }
        // Names visible in the scope's lineage, then (for a clone) in its base.
        let mut names: BTreeMap<String, Option<(String, u64)>> = BTreeMap::new();
        let mut sources = vec![(scope.lineage, scope.max_epoch)];
        if let Some(base) = scope.base_epoch {
            sources.push((LIVE, base));
        }
        for (lin, max) in sources {
            self.scan_names(st.id, lin, dir, max, after, limit, &mut names)?;
        }
        let mut out = Vec::new();
        for (_, entry) in names {
            if out.len() >= limit {
                break;
            }
            if let Some((name, ino)) = entry {
                let (inode, _) = self.inode_req(st.id, scope, ino)?;
                out.push(DirEntry { name, ino, inode });
            }
        }
        Ok(out)
    }

    /// Adds to `names` each name's visible version in one lineage (keeping what an earlier
    /// lineage already decided), stopping after `limit` live names.
    #[allow(clippy::too_many_arguments)]
    fn scan_names(&self, vol: Uuid, lin: Lineage, dir: u64, max: Epoch, after: Option<&str>, limit: usize, names: &mut BTreeMap<String, Option<(String, u64)>>) -> Result<()> {
        let prefix = keys::dir(vol, lin, dir);
        let start = match after {
            Some(a) => keys::prefix_end(&keys::dirent(vol, lin, dir, a)),
            None => prefix.clone(),
        };
        let mut live = 0;
        let mut it = self.db.iterator_cf(self.cf(CF_DIRENTS), IteratorMode::From(&start, Direction::Forward));
        let mut current: Option<String> = None;
        while let Some(item) = it.next() {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let Some(folded) = keys::name_of(&key, &prefix) else { continue };
            if current.as_deref() == Some(folded) || keys::epoch_of(&key).is_some_and(|e| e > max) {
                continue; // an older version of a name already decided, or too new for the scope
            }
            current = Some(folded.to_string());
            if live >= limit {
                break;
            }
            let entry = match Self::decode::<DirentValue>(&value)? {
                DirentValue::Live { name, ino } => Some((name, ino)),
                DirentValue::Deleted => None,
            };
            live += usize::from(entry.is_some());
            names.entry(folded.to_string()).or_insert(entry);
        }
        Ok(())
    }

    /// Removes `name` from `parent`; a directory must be empty.
    pub fn unlink(&self, vol: Uuid, view: View, parent: u64, name: &str, now: u64) -> Result<()> {
        let entry = self.volume(vol)?;
        let _pass = entry.gate.enter()?;
        let st = Self::lock(&entry);
        let scope = Self::writable(&st, view)?;
        let entry = self.lookup_in(&st, &scope, parent, name)?.ok_or_else(|| VolumeError::NotFound(name.to_string()))?;
        if entry.inode.kind == Kind::Dir && !self.list_in(&st, &scope, entry.ino, None, 1)?.is_empty() {
            return Err(VolumeError::NotEmpty);
        }
        let mut batch = WriteBatch::default();
        self.drop_entry(&st, &scope, &mut batch, parent, &entry)?;
        let (mut dir, dir_key) = self.inode_req(vol, &scope, parent)?;
        dir.written = now;
        dir.changed = now;
        self.put_inode(&st, &scope, &mut batch, parent, &dir, dir_key.as_deref())?;
        self.db.write(batch)?;
        Ok(())
    }

    /// Removes a directory entry, its inode and (for a file) its data.
    fn drop_entry(&self, st: &VolState, scope: &Scope, batch: &mut WriteBatch, parent: u64, entry: &DirEntry) -> Result<()> {
        let vol = st.id;
        let folded = fold(&entry.name);
        let (_, _, dirent_key) = self.dirent_at(vol, scope, parent, &folded)?.ok_or_else(|| VolumeError::NotFound(entry.name.clone()))?;
        let deleted_dirent = serde_json::to_vec(&DirentValue::Deleted)?;
        self.remove_version(st, scope, batch, CF_DIRENTS, |lin| keys::dirent(vol, lin, parent, &folded), &dirent_key, &deleted_dirent)?;
        let (_, inode_key) = self.inode_req(vol, scope, entry.ino)?;
        let deleted_inode = serde_json::to_vec(&InodeValue::Deleted)?;
        if let Some(k) = inode_key {
            self.remove_version(st, scope, batch, CF_INODES, |lin| keys::inode(vol, lin, entry.ino), &k, &deleted_inode)?;
        }
        if entry.inode.kind == Kind::File {
            self.retire_generation(st, scope, batch, entry.ino, entry.inode.generation)?;
        }
        Ok(())
    }

    /// Renames within a volume; `replace` allows replacing an existing file (never a directory).
    #[allow(clippy::too_many_arguments)]
    pub fn rename(&self, vol: Uuid, view: View, from_dir: u64, from: &str, to_dir: u64, to: &str, replace: bool, now: u64) -> Result<()> {
        check_file_name(to)?;
        let entry = self.volume(vol)?;
        let _pass = entry.gate.enter()?;
        let st = Self::lock(&entry);
        let scope = Self::writable(&st, view)?;
        let source = self.lookup_in(&st, &scope, from_dir, from)?.ok_or_else(|| VolumeError::NotFound(from.to_string()))?;
        let (target_dir, _) = self.inode_req(vol, &scope, to_dir)?;
        if target_dir.kind != Kind::Dir {
            return Err(VolumeError::NotADirectory);
        }
        if source.inode.kind == Kind::Dir {
            self.refuse_cycle(&scope, vol, source.ino, to_dir)?;
        }
        let same_slot = from_dir == to_dir && fold(from) == fold(to);
        let mut batch = WriteBatch::default();
        if !same_slot {
            if let Some(target) = self.lookup_in(&st, &scope, to_dir, to)? {
                if !replace {
                    return Err(VolumeError::Exists(target.name));
                }
                if target.inode.kind == Kind::Dir {
                    return Err(VolumeError::IsADirectory);
                }
                self.drop_entry(&st, &scope, &mut batch, to_dir, &target)?;
            }
            let folded = fold(from);
            let (_, _, old_key) = self.dirent_at(vol, &scope, from_dir, &folded)?.ok_or_else(|| VolumeError::NotFound(from.to_string()))?;
            let deleted = serde_json::to_vec(&DirentValue::Deleted)?;
            self.remove_version(&st, &scope, &mut batch, CF_DIRENTS, |lin| keys::dirent(vol, lin, from_dir, &folded), &old_key, &deleted)?;
        }
        let to_folded = fold(to);
        let object = |lin| keys::dirent(vol, lin, to_dir, &to_folded);
        let old = if same_slot { self.dirent_at(vol, &scope, to_dir, &to_folded)?.map(|(_, _, k)| k) } else { self.newest(CF_DIRENTS, &object(scope.lineage), scope.max_epoch)?.map(|(k, _)| k) };
        let value = serde_json::to_vec(&DirentValue::Live { name: to.to_string(), ino: source.ino })?;
        self.put_version(&st, &scope, &mut batch, CF_DIRENTS, object(scope.lineage), &value, old.as_deref());
        let (mut inode, inode_key) = self.inode_req(vol, &scope, source.ino)?;
        inode.parent = to_dir;
        inode.changed = now;
        self.put_inode(&st, &scope, &mut batch, source.ino, &inode, inode_key.as_deref())?;
        self.db.write(batch)?;
        Ok(())
    }

    /// Refuses moving directory `ino` under itself.
    fn refuse_cycle(&self, scope: &Scope, vol: Uuid, ino: u64, mut to_dir: u64) -> Result<()> {
        for _ in 0..4096 {
            if to_dir == ino {
                return Err(VolumeError::Invalid("a directory cannot move under itself".into()));
            }
            if to_dir == ROOT_INO {
                return Ok(());
            }
            to_dir = self.inode_req(vol, scope, to_dir)?.0.parent;
        }
        Err(VolumeError::Invalid("directory tree deeper than 4096".into()))
    }

    // ----- data -----

    fn chunk_object(vol: Uuid, ino: u64, generation: u64, index: u64) -> impl Fn(Lineage) -> Vec<u8> {
        move |lin| keys::chunk(vol, lin, ino, generation, index)
    }

    /// Reads up to `len` bytes at `offset` (short at end of file; holes read as zeros).
    pub fn read(&self, vol: Uuid, view: View, ino: u64, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len > MAX_IO_BYTES {
            return Err(VolumeError::TooLarge { what: "a read", got: len, max: MAX_IO_BYTES });
        }
        let st = self.volume(vol)?;
        let st = Self::lock(&st);
        let scope = Self::scope(&st, view)?;
        let (inode, _) = self.inode_req(vol, &scope, ino)?;
        if inode.kind != Kind::File {
            return Err(VolumeError::IsADirectory);
        }
        let end = offset.saturating_add(len).min(inode.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let mut pos = offset;
        while pos < end {
            let index = pos / CHUNK_BYTES;
            let chunk_start = index * CHUNK_BYTES;
            let take_end = end.min(chunk_start + CHUNK_BYTES);
            if let Some((_, data)) = self.visible(CF_CHUNKS, &scope, Self::chunk_object(vol, ino, inode.generation, index))? {
                let from = (pos - chunk_start) as usize;
                let to = ((take_end - chunk_start) as usize).min(data.len());
                if from < to {
                    let at = (pos - offset) as usize;
                    out[at..at + (to - from)].copy_from_slice(&data[from..to]);
                }
            }
            pos = take_end;
        }
        Ok(out)
    }

    /// Writes `data` at `offset`, extending the file as needed. One write batch.
    pub fn write(&self, vol: Uuid, view: View, ino: u64, offset: u64, data: &[u8], now: u64) -> Result<()> {
        let len = data.len() as u64;
        if len > MAX_IO_BYTES {
            return Err(VolumeError::TooLarge { what: "a write", got: len, max: MAX_IO_BYTES });
        }
        let end = offset.checked_add(len).filter(|&e| e <= MAX_FILE_BYTES).ok_or(VolumeError::TooLarge { what: "the file end", got: offset.saturating_add(len), max: MAX_FILE_BYTES })?;
        let entry = self.volume(vol)?;
        let _pass = entry.gate.enter()?;
        let st = Self::lock(&entry);
        let scope = Self::writable(&st, view)?;
        let (mut inode, inode_key) = self.inode_req(vol, &scope, ino)?;
        if inode.kind != Kind::File {
            return Err(VolumeError::IsADirectory);
        }
        let mut batch = WriteBatch::default();
        let mut pos = offset;
        while pos < end {
            let index = pos / CHUNK_BYTES;
            let chunk_start = index * CHUNK_BYTES;
            let piece_end = end.min(chunk_start + CHUNK_BYTES);
            let piece = &data[(pos - offset) as usize..(piece_end - offset) as usize];
            self.write_chunk(&st, &scope, &mut batch, &mut inode, ino, index, (pos - chunk_start) as usize, piece)?;
            pos = piece_end;
        }
        inode.size = inode.size.max(end);
        inode.written = now;
        inode.changed = now;
        self.put_inode(&st, &scope, &mut batch, ino, &inode, inode_key.as_deref())?;
        self.db.write(batch)?;
        Ok(())
    }

    /// Replaces bytes `at..at+piece.len()` of chunk `index` (read-modify-write when partial).
    #[allow(clippy::too_many_arguments)]
    fn write_chunk(&self, st: &VolState, scope: &Scope, batch: &mut WriteBatch, inode: &mut Inode, ino: u64, index: u64, at: usize, piece: &[u8]) -> Result<()> {
        let object = Self::chunk_object(st.id, ino, inode.generation, index);
        let old = self.visible(CF_CHUNKS, scope, &object)?;
        let had_data = old.as_ref().is_some_and(|(_, v)| !v.is_empty());
        let mut content = old.as_ref().map(|(_, v)| v.clone()).unwrap_or_default();
        if content.len() < at + piece.len() {
            content.resize(at + piece.len(), 0);
        }
        content[at..at + piece.len()].copy_from_slice(piece);
        let trimmed = content.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        content.truncate(trimmed);
        match (&old, content.is_empty()) {
            (Some((old_key, _)), true) => self.remove_version(st, scope, batch, CF_CHUNKS, &object, old_key, b"")?,
            (None, true) => {}
            (old, false) => self.put_version(st, scope, batch, CF_CHUNKS, object(scope.lineage), &content, old.as_ref().map(|(k, _)| k.as_slice())),
        }
        let has_data = !content.is_empty();
        match (had_data, has_data) {
            (false, true) => inode.allocated += CHUNK_BYTES,
            (true, false) => inode.allocated = inode.allocated.saturating_sub(CHUNK_BYTES),
            _ => {}
        }
        Ok(())
    }

    /// Sets the file size: truncating never deletes what a snapshot reads (a new generation for
    /// size 0, holes for dropped chunks, a zeroed tail), extending reads as zeros.
    pub fn set_size(&self, vol: Uuid, view: View, ino: u64, size: u64, now: u64) -> Result<()> {
        if size > MAX_FILE_BYTES {
            return Err(VolumeError::TooLarge { what: "the file size", got: size, max: MAX_FILE_BYTES });
        }
        let entry = self.volume(vol)?;
        let _pass = entry.gate.enter()?;
        let st = Self::lock(&entry);
        let scope = Self::writable(&st, view)?;
        let (mut inode, inode_key) = self.inode_req(vol, &scope, ino)?;
        if inode.kind != Kind::File {
            return Err(VolumeError::IsADirectory);
        }
        let mut batch = WriteBatch::default();
        if size == 0 && inode.size > 0 {
            self.retire_generation(&st, &scope, &mut batch, ino, inode.generation)?;
            inode.generation += 1;
            inode.allocated = 0;
        } else if size < inode.size {
            let first_dropped = size.div_ceil(CHUNK_BYTES);
            for (index, key) in self.visible_chunks(&st, &scope, ino, inode.generation, first_dropped)? {
                self.remove_version(&st, &scope, &mut batch, CF_CHUNKS, Self::chunk_object(vol, ino, inode.generation, index), &key, b"")?;
                inode.allocated = inode.allocated.saturating_sub(CHUNK_BYTES);
            }
            if size % CHUNK_BYTES != 0 {
                let index = size / CHUNK_BYTES;
                let at = (size % CHUNK_BYTES) as usize;
                self.write_chunk(&st, &scope, &mut batch, &mut inode, ino, index, at, &vec![0u8; CHUNK_BYTES as usize - at])?;
            }
        }
        inode.size = size;
        inode.written = now;
        inode.changed = now;
        self.put_inode(&st, &scope, &mut batch, ino, &inode, inode_key.as_deref())?;
        self.db.write(batch)?;
        Ok(())
    }

    /// Sets times and DOS attributes (SMB SET_INFO); `None` leaves a field as it is.
    pub fn set_info(&self, vol: Uuid, view: View, ino: u64, info: SetInfo) -> Result<Inode> {
        let entry = self.volume(vol)?;
        let _pass = entry.gate.enter()?;
        let st = Self::lock(&entry);
        let scope = Self::writable(&st, view)?;
        let (mut inode, inode_key) = self.inode_req(vol, &scope, ino)?;
        inode.created = info.created.unwrap_or(inode.created);
        inode.written = info.written.unwrap_or(inode.written);
        inode.changed = info.changed.unwrap_or(inode.changed);
        inode.attributes = info.attributes.unwrap_or(inode.attributes);
        let mut batch = WriteBatch::default();
        self.put_inode(&st, &scope, &mut batch, ino, &inode, inode_key.as_deref())?;
        self.db.write(batch)?;
        Ok(inode)
    }

    /// The ranges of `offset..offset+len` that hold data (FSCTL_QUERY_ALLOCATED_RANGES), in
    /// whole chunks, merged where adjacent; holes are left out.
    pub fn allocated_ranges(&self, vol: Uuid, view: View, ino: u64, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let entry = self.volume(vol)?;
        let st = Self::lock(&entry);
        let scope = Self::scope(&st, view)?;
        let (inode, _) = self.inode_req(vol, &scope, ino)?;
        let end = offset.saturating_add(len).min(inode.size);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (index, _) in self.visible_chunks(&st, &scope, ino, inode.generation, offset / CHUNK_BYTES)? {
            let start = (index * CHUNK_BYTES).max(offset);
            if start >= end {
                break;
            }
            let stop = ((index + 1) * CHUNK_BYTES).min(end);
            match out.last_mut() {
                Some((s, l)) if *s + *l == start => *l += stop - start,
                _ => out.push((start, stop - start)),
            }
        }
        Ok(out)
    }

    /// Chunks of a generation at or after `from` that hold data in the scope: (index, key).
    fn visible_chunks(&self, st: &VolState, scope: &Scope, ino: u64, generation: u64, from: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut found: BTreeMap<u64, Option<Vec<u8>>> = BTreeMap::new();
        let mut sources = vec![(scope.lineage, scope.max_epoch)];
        if let Some(base) = scope.base_epoch {
            sources.push((LIVE, base));
        }
        for (lin, max) in sources {
            let prefix = keys::generation_prefix(st.id, lin, ino, generation);
            let start = keys::chunk(st.id, lin, ino, generation, from);
            for item in self.scan(CF_CHUNKS, &start) {
                let (key, value) = item?;
                if !key.starts_with(&prefix) {
                    break;
                }
                let (Some(index), Some(epoch)) = (keys::chunk_index_of(&key), keys::epoch_of(&key)) else { continue };
                if epoch > max || found.contains_key(&index) && lin == scope.lineage {
                    continue;
                }
                found.entry(index).or_insert_with(|| (!value.is_empty()).then(|| key.to_vec()));
            }
        }
        Ok(found.into_iter().filter_map(|(i, k)| k.map(|k| (i, k))).collect())
    }

    /// A file's generation of chunks is dead (truncate to 0 or delete). In a clone, or when no
    /// snapshot or clone base exists, it goes at once (one range delete); otherwise it is noted
    /// in the deadlist and the reclaimer frees whatever no snapshot reads.
    fn retire_generation(&self, st: &VolState, scope: &Scope, batch: &mut WriteBatch, ino: u64, generation: u64) -> Result<()> {
        let prefix = keys::generation_prefix(st.id, scope.lineage, ino, generation);
        if scope.lineage != LIVE || st.pins().next().is_none() {
            batch.delete_range_cf(self.cf(CF_CHUNKS), &prefix, &keys::prefix_end(&prefix));
            return Ok(());
        }
        let payload = &prefix[16..];
        batch.put_cf(self.cf(CF_DEAD), dead::key(st.id, scope.write_epoch, dead::GENERATION, payload), b"");
        Ok(())
    }

    // ----- snapshots and clones -----

    /// Takes a snapshot: records the current epoch and starts the next, in one synced batch.
    /// O(1) in what the volume holds.
    pub fn snapshot_create(&self, vol: Uuid, id: Uuid, now: u64) -> Result<SnapshotInfo> {
        let st = self.volume(vol)?;
        let mut st = Self::lock(&st);
        if st.snapshots.contains_key(&id) {
            return Err(VolumeError::Exists(id.to_string()));
        }
        if st.snapshots.len() >= MAX_SNAPSHOTS_PER_VOLUME {
            return Err(VolumeError::TooManySnapshots { max: MAX_SNAPSHOTS_PER_VOLUME });
        }
        let info = SnapshotInfo { id, epoch: st.meta.epoch, state: SnapshotState::Committed, created: now };
        let mut meta = st.meta.clone();
        meta.epoch += 1;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), meta_key(vol, META_SNAPSHOT, id.as_bytes()), serde_json::to_vec(&info)?);
        batch.put_cf(self.cf(CF_META), meta_key(vol, META_VOLUME, &[]), serde_json::to_vec(&meta)?);
        self.db.write_opt(batch, &synced())?;
        st.meta = meta;
        st.snapshots.insert(id, info.clone());
        Ok(info)
    }

    /// Raises the fence with `token` on `vol` for `ttl`: waits for writes in flight, then takes
    /// tentative snapshot `snapshot` at the fence point and records the token, in one synced
    /// batch (which also makes every earlier acknowledged write durable). Tokens lower than
    /// the highest seen, or already released, are refused; a retry gets the recorded answer.
    pub fn fence(&self, vol: Uuid, token: u64, ttl: std::time::Duration, snapshot: Uuid, now: u64) -> Result<SnapshotInfo> {
        let entry = self.volume(vol)?;
        let mut book = entry.fences.lock().expect("fence book lock");
        if let Some(answer) = book.recorded(token)? {
            let st = Self::lock(&entry);
            return st.snapshots.get(&answer).cloned().ok_or(VolumeError::NoSuchSnapshot(answer));
        }
        entry.gate.raise(token, ttl, || {
            // Nothing is in flight: the state lock is free.
            let mut st = Self::lock(&entry);
            if st.snapshots.contains_key(&snapshot) {
                return Err(VolumeError::Exists(snapshot.to_string()));
            }
            if st.snapshots.len() >= MAX_SNAPSHOTS_PER_VOLUME {
                return Err(VolumeError::TooManySnapshots { max: MAX_SNAPSHOTS_PER_VOLUME });
            }
            let info = SnapshotInfo { id: snapshot, epoch: st.meta.epoch, state: SnapshotState::Tentative, created: now };
            let mut meta = st.meta.clone();
            meta.epoch += 1;
            let mut fences = book.clone();
            fences.record(token, snapshot);
            let mut batch = WriteBatch::default();
            batch.put_cf(self.cf(CF_META), meta_key(vol, META_SNAPSHOT, snapshot.as_bytes()), serde_json::to_vec(&info)?);
            batch.put_cf(self.cf(CF_META), meta_key(vol, META_VOLUME, &[]), serde_json::to_vec(&meta)?);
            batch.put_cf(self.cf(CF_META), meta_key(vol, META_FENCES, &[]), serde_json::to_vec(&fences)?);
            self.db.write_opt(batch, &synced())?;
            st.meta = meta;
            *book = fences;
            st.snapshots.insert(snapshot, info.clone());
            Ok(info)
        })
    }

    /// Ends the fence raised with `token`, saying whether it held the whole time. A retry gets
    /// the recorded answer.
    pub fn release(&self, vol: Uuid, token: u64) -> Result<Released> {
        let entry = self.volume(vol)?;
        let mut book = entry.fences.lock().expect("fence book lock");
        let record = book.records.get(&token).cloned().ok_or(VolumeError::StaleToken { token, why: "no fence was raised with it" })?;
        if let Some(answer) = record.released {
            return Ok(answer);
        }
        let answer = entry.gate.release(token);
        let mut fences = book.clone();
        fences.records.insert(token, FenceRecord { released: Some(answer), ..record });
        self.db.put_cf_opt(self.cf(CF_META), meta_key(vol, META_FENCES, &[]), serde_json::to_vec(&fences)?, &synced())?;
        *book = fences;
        Ok(answer)
    }

    /// Whether a fence holds `vol` now.
    pub fn fenced(&self, vol: Uuid) -> Result<bool> {
        Ok(self.volume(vol)?.gate.fenced())
    }

    /// Makes a tentative snapshot committed (the set's decision was Committed).
    pub fn snapshot_commit(&self, vol: Uuid, id: Uuid) -> Result<SnapshotInfo> {
        let entry = self.volume(vol)?;
        let mut st = Self::lock(&entry);
        let mut info = st.snapshots.get(&id).cloned().ok_or(VolumeError::NoSuchSnapshot(id))?;
        match info.state {
            SnapshotState::Committed => return Ok(info),
            SnapshotState::Deleting => return Err(VolumeError::NoSuchSnapshot(id)),
            SnapshotState::Tentative => info.state = SnapshotState::Committed,
        }
        self.db.put_cf_opt(self.cf(CF_META), meta_key(vol, META_SNAPSHOT, id.as_bytes()), serde_json::to_vec(&info)?, &synced())?;
        st.snapshots.insert(id, info.clone());
        Ok(info)
    }

    pub fn snapshots(&self, vol: Uuid) -> Result<Vec<SnapshotInfo>> {
        let st = self.volume(vol)?;
        let st = Self::lock(&st);
        let mut v: Vec<SnapshotInfo> = st.snapshots.values().cloned().collect();
        v.sort_by_key(|s| s.epoch);
        Ok(v)
    }

    /// Starts deleting a snapshot: it stops being readable at once; its space comes back as
    /// the reclaimer runs ([`VolumeStore::reclaim_step`]); its record goes last.
    pub fn snapshot_delete(&self, vol: Uuid, id: Uuid) -> Result<()> {
        let st = self.volume(vol)?;
        let mut st = Self::lock(&st);
        let mut info = st.snapshots.get(&id).cloned().ok_or(VolumeError::NoSuchSnapshot(id))?;
        if info.state == SnapshotState::Deleting {
            return Ok(());
        }
        info.state = SnapshotState::Deleting;
        st.snapshots.insert(id, info.clone());
        let upto = st.next_pin_after(info.epoch).unwrap_or(st.meta.epoch);
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), meta_key(vol, META_SNAPSHOT, id.as_bytes()), serde_json::to_vec(&info)?);
        self.enqueue_reclaim(&mut st, &mut batch, ReclaimItem::Range { after: info.epoch, upto, cursor: None, snapshot: Some(id) })?;
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    pub(super) fn enqueue_reclaim(&self, st: &mut VolState, batch: &mut WriteBatch, item: ReclaimItem) -> Result<()> {
        let seq = st.meta.next_reclaim;
        st.meta.next_reclaim += 1;
        batch.put_cf(self.cf(CF_META), meta_key(st.id, META_RECLAIM, &seq.to_be_bytes()), serde_json::to_vec(&item)?);
        self.persist_meta(st, batch)
    }

    /// A writable clone of a committed snapshot; its writes never reach the live volume and
    /// the live volume's never reach it.
    pub fn clone_create(&self, vol: Uuid, snapshot: Uuid, id: Uuid) -> Result<CloneInfo> {
        let st = self.volume(vol)?;
        let mut st = Self::lock(&st);
        let base = st.snapshots.get(&snapshot).filter(|s| s.state == SnapshotState::Committed).ok_or(VolumeError::NoSuchSnapshot(snapshot))?.epoch;
        if st.clones.contains_key(&id) {
            return Err(VolumeError::Exists(id.to_string()));
        }
        if st.clones.len() >= MAX_CLONES_PER_VOLUME {
            return Err(VolumeError::TooLarge { what: "the clone count", got: st.clones.len() as u64 + 1, max: MAX_CLONES_PER_VOLUME as u64 });
        }
        let info = CloneInfo { id, lineage: st.meta.next_lineage, base_snapshot: snapshot, base_epoch: base, sealed: false };
        st.meta.next_lineage += 1;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), meta_key(vol, META_CLONE, id.as_bytes()), serde_json::to_vec(&info)?);
        self.persist_meta(&st, &mut batch)?;
        self.db.write_opt(batch, &synced())?;
        st.clones.insert(id, info.clone());
        Ok(info)
    }

    /// Makes a clone read-only for good.
    pub fn clone_seal(&self, vol: Uuid, id: Uuid) -> Result<CloneInfo> {
        let st = self.volume(vol)?;
        let mut st = Self::lock(&st);
        let mut info = st.clones.get(&id).cloned().ok_or(VolumeError::NoSuchClone(id))?;
        info.sealed = true;
        self.db.put_cf_opt(self.cf(CF_META), meta_key(vol, META_CLONE, id.as_bytes()), serde_json::to_vec(&info)?, &synced())?;
        st.clones.insert(id, info.clone());
        Ok(info)
    }

    /// Deletes a clone: its own keys go at once (range deletes); what its base pinned is
    /// reclaimed like a deleted snapshot's.
    pub fn clone_delete(&self, vol: Uuid, id: Uuid) -> Result<()> {
        let st = self.volume(vol)?;
        let mut st = Self::lock(&st);
        let info = st.clones.remove(&id).ok_or(VolumeError::NoSuchClone(id))?;
        let mut batch = WriteBatch::default();
        let (lo, hi) = keys::lineage_range(vol, info.lineage);
        for cf in VERSIONED {
            batch.delete_range_cf(self.cf(cf), &lo, &hi);
        }
        batch.delete_cf(self.cf(CF_META), meta_key(vol, META_CLONE, id.as_bytes()));
        let upto = st.next_pin_after(info.base_epoch).unwrap_or(st.meta.epoch);
        self.enqueue_reclaim(&mut st, &mut batch, ReclaimItem::Range { after: info.base_epoch, upto, cursor: None, snapshot: None })?;
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    pub fn clones(&self, vol: Uuid) -> Result<Vec<CloneInfo>> {
        let st = self.volume(vol)?;
        let st = Self::lock(&st);
        Ok(st.clones.values().cloned().collect())
    }

    /// Makes every write acknowledged before the call durable. Concurrent callers share syncs
    /// (group commit): a caller whose writes a finished sync covered returns without one.
    pub fn sync(&self) -> Result<()> {
        let target = self.db.latest_sequence_number();
        let mut st = self.syncs.state.lock().expect("sync lock");
        loop {
            if st.synced_upto >= target {
                return Ok(());
            }
            if st.running {
                st = self.syncs.done.wait(st).expect("sync lock");
                continue;
            }
            st.running = true;
            let covers = self.db.latest_sequence_number();
            drop(st);
            let result = self.db.flush_wal(true);
            st = self.syncs.state.lock().expect("sync lock");
            st.running = false;
            st.performed += 1;
            if result.is_ok() {
                st.synced_upto = st.synced_upto.max(covers);
            }
            self.syncs.done.notify_all();
            result?;
        }
    }

    /// WAL syncs `sync` has run since open (fewer than its callers under concurrency).
    pub fn wal_syncs(&self) -> u64 {
        self.syncs.state.lock().expect("sync lock").performed
    }

    /// Bytes of live SST and blob files (for space measurements).
    pub fn disk_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for cf in [CF_META, CF_INODES, CF_DIRENTS, CF_CHUNKS, CF_DEAD] {
            for prop in ["rocksdb.total-sst-files-size", "rocksdb.total-blob-file-size"] {
                total += self.db.property_int_value_cf(self.cf(cf), prop)?.unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Compacts every column family (after a large reclaim, so deleted versions and blob
    /// garbage leave the disk).
    pub fn compact(&self) -> Result<()> {
        for cf in [CF_META, CF_INODES, CF_DIRENTS, CF_CHUNKS, CF_DEAD] {
            self.db.compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Writes memtables out, so `disk_bytes` sees everything.
    pub fn flush(&self) -> Result<()> {
        for cf in [CF_META, CF_INODES, CF_DIRENTS, CF_CHUNKS, CF_DEAD] {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }
}

pub(super) fn synced() -> rocksdb::WriteOptions {
    let mut w = rocksdb::WriteOptions::default();
    w.set_sync(true);
    w
}

pub(super) fn lineage_of(key: &[u8]) -> Option<Lineage> {
    Some(Lineage::from_be_bytes(key.get(16..20)?.try_into().ok()?))
}

pub(super) fn tag_of(cf: &str) -> u8 {
    match cf {
        CF_INODES => dead::INODE,
        CF_DIRENTS => dead::DIRENT,
        _ => dead::CHUNK,
    }
}

pub(super) fn cf_of(tag: u8) -> Option<&'static str> {
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
