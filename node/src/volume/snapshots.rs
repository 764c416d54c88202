//! Snapshots, fences, clones, sync and space figures.

use super::kv::{Batch, Cf, Durability};
use uuid::Uuid;

use super::error::{Result, VolumeError};
use super::gate::Released;
use super::keys;
use super::store::*;
use super::types::*;

impl VolumeStore {
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
        let info = SnapshotInfo { id, epoch: st.meta.epoch, state: SnapshotState::Committed, created: now, token: None };
        let mut meta = st.meta.clone();
        meta.epoch += 1;
        let mut batch = Batch::default();
        batch.put(CF_META, meta_key(vol, META_SNAPSHOT, id.as_bytes()), serde_json::to_vec(&info)?);
        batch.put(CF_META, meta_key(vol, META_VOLUME, &[]), serde_json::to_vec(&meta)?);
        self.kv.write(batch, Durability::Synced)?;
        st.meta = meta;
        st.snapshots.insert(id, info.clone());
        Ok(info)
    }

    /// Raises the fence with `token` on `vol` for `ttl`: waits for writes in flight, then takes
    /// tentative snapshot `snapshot` at the fence point and records the token, in one write
    /// batch. The batch is made durable (with every earlier acknowledged write) by `release`,
    /// after the gate is lowered: writes are not held through an fsync, and the snapshot is
    /// durable before the coordinator can decide Committed (it decides after every release).
    /// Tokens lower than the highest seen, or already released, are refused; a retry gets the
    /// recorded answer.
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
            let info = SnapshotInfo { id: snapshot, epoch: st.meta.epoch, state: SnapshotState::Tentative, created: now, token: Some(token) };
            let mut meta = st.meta.clone();
            meta.epoch += 1;
            let mut fences = book.clone();
            fences.record(token, snapshot);
            let mut batch = Batch::default();
            batch.put(CF_META, meta_key(vol, META_SNAPSHOT, snapshot.as_bytes()), serde_json::to_vec(&info)?);
            batch.put(CF_META, meta_key(vol, META_VOLUME, &[]), serde_json::to_vec(&meta)?);
            batch.put(CF_META, meta_key(vol, META_FENCES, &[]), serde_json::to_vec(&fences)?);
            // In the WAL (in order after every acknowledged write), synced at release.
            self.kv.write(batch, Durability::Buffered)?;
            st.meta = meta;
            *book = fences;
            st.snapshots.insert(snapshot, info.clone());
            Ok(info)
        })
    }

    /// Ends the fence raised with `token`, saying whether it held the whole time and how long
    /// writes were held, once the fence-point snapshot and every write before it are durable
    /// (one group-committed WAL sync, after the gate is lowered). A retry gets the recorded
    /// answer (and a zero hold).
    pub fn release(&self, vol: Uuid, token: u64) -> Result<(Released, std::time::Duration)> {
        let entry = self.volume(vol)?;
        let mut book = entry.fences.lock().expect("fence book lock");
        let Some(record) = book.records.get(&token).cloned() else {
            // A fence for this token may still be on its way (its call failed on the
            // coordinator, which released and decided): it is refused when it comes.
            if token >= book.highest {
                let mut fences = book.clone();
                fences.record(token, Uuid::nil());
                if let Some(r) = fences.records.get_mut(&token) {
                    r.released = Some(Released::Expired);
                }
                self.put_one(CF_META, meta_key(vol, META_FENCES, &[]), serde_json::to_vec(&fences)?, Durability::Buffered)?;
                *book = fences;
            }
            return Err(VolumeError::StaleToken { token, why: "no fence was raised with it" });
        };
        if let Some(answer) = record.released {
            // The first release may still be syncing (or its sync failed): answer once the
            // fence point is durable.
            drop(book);
            self.sync()?;
            return Ok((answer, std::time::Duration::ZERO));
        }
        let (answer, hold) = entry.gate.release(token);
        let mut fences = book.clone();
        fences.records.insert(token, FenceRecord { released: Some(answer), ..record });
        self.put_one(CF_META, meta_key(vol, META_FENCES, &[]), serde_json::to_vec(&fences)?, Durability::Buffered)?;
        *book = fences;
        drop(book);
        self.sync()?;
        tracing::info!(volume = %vol, token, ?answer, held_us = hold.as_micros() as u64, "fence released");
        Ok((answer, hold))
    }

    /// Whether a fence holds `vol` now.
    pub fn fenced(&self, vol: Uuid) -> Result<bool> {
        Ok(self.volume(vol)?.gate.fenced())
    }

    /// Waits (asynchronously) until no fence holds `vol`: see [`super::gate::Gate::wait_open`]
    /// (busy when too many writes wait already). An unknown volume does not wait: the
    /// mutation then fails on its own.
    pub async fn wait_open(&self, vol: Uuid) -> Result<()> {
        match self.volume(vol) {
            Ok(entry) => entry.gate.wait_open().await,
            Err(_) => Ok(()),
        }
    }

    /// Runs `f`, a store call that mutates `vol`, without ever blocking the thread at a fence:
    /// it waits a fence out asynchronously first, and if one goes up before `f`'s first mutation
    /// is admitted, `f` is refused before it changes anything ([`super::gate::refusing_at_fence`])
    /// and runs again once that fence is down. For threads that serve others (a gRPC
    /// connection's thread, where the fence's own release may be queued behind `f`).
    pub async fn run_unblocked<T>(&self, vol: Uuid, f: impl Fn(&VolumeStore) -> Result<T>) -> Result<T> {
        loop {
            self.wait_open(vol).await?;
            match super::gate::refusing_at_fence(|| f(self)) {
                Err(VolumeError::AtFence) => continue,
                done => return done,
            }
        }
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
        self.put_one(CF_META, meta_key(vol, META_SNAPSHOT, id.as_bytes()), serde_json::to_vec(&info)?, Durability::Synced)?;
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
        // What memory held, put back if the write fails: memory must never stop pinning what
        // the disk still says is a snapshot.
        let (before, meta_before) = (info.clone(), st.meta.clone());
        info.state = SnapshotState::Deleting;
        st.snapshots.insert(id, info.clone());
        let upto = st.next_pin_after(info.epoch).unwrap_or(st.meta.epoch);
        let mut batch = Batch::default();
        batch.put(CF_META, meta_key(vol, META_SNAPSHOT, id.as_bytes()), serde_json::to_vec(&info)?);
        let written = self.enqueue_reclaim(&mut st, &mut batch, ReclaimItem::Range { after: info.epoch, upto, cursor: None, snapshot: Some(id), within: None }).and_then(|_| self.kv.write(batch, Durability::Synced));
        if written.is_err() {
            st.snapshots.insert(id, before);
            st.meta = meta_before;
        }
        written
    }

    pub(super) fn enqueue_reclaim(&self, st: &mut VolState, batch: &mut Batch, item: ReclaimItem) -> Result<()> {
        let seq = st.meta.next_reclaim;
        st.meta.next_reclaim += 1;
        batch.put(CF_META, meta_key(st.id, META_RECLAIM, &seq.to_be_bytes()), serde_json::to_vec(&item)?);
        self.persist_meta(st, batch)
    }

    /// A writable clone of a committed snapshot; its writes never reach the live volume and
    /// the live volume's never reach it.
    pub fn clone_create(&self, vol: Uuid, snapshot: Uuid, id: Uuid) -> Result<CloneInfo> {
        let st = self.volume(vol)?;
        let mut st = Self::lock(&st);
        let base = st.snapshots.get(&snapshot).filter(|s| s.state == SnapshotState::Committed).ok_or(VolumeError::NoSuchSnapshot(snapshot))?.epoch;
        if id.is_nil() {
            return Err(VolumeError::Invalid("a clone's id must not be the nil UUID (it stands for the live volume)".into()));
        }
        if st.clones.contains_key(&id) {
            return Err(VolumeError::Exists(id.to_string()));
        }
        if st.clones.len() >= MAX_CLONES_PER_VOLUME {
            return Err(VolumeError::TooLarge { what: "the clone count", got: st.clones.len() as u64 + 1, max: MAX_CLONES_PER_VOLUME as u64 });
        }
        let info = CloneInfo { id, lineage: st.meta.next_lineage, base_snapshot: snapshot, base_epoch: base, sealed: false };
        st.meta.next_lineage += 1;
        let mut batch = Batch::default();
        batch.put(CF_META, meta_key(vol, META_CLONE, id.as_bytes()), serde_json::to_vec(&info)?);
        self.persist_meta(&st, &mut batch)?;
        self.kv.write(batch, Durability::Synced)?;
        st.clones.insert(id, info.clone());
        Ok(info)
    }

    /// Makes a clone read-only for good.
    pub fn clone_seal(&self, vol: Uuid, id: Uuid) -> Result<CloneInfo> {
        let st = self.volume(vol)?;
        let mut st = Self::lock(&st);
        let mut info = st.clones.get(&id).cloned().ok_or(VolumeError::NoSuchClone(id))?;
        info.sealed = true;
        self.put_one(CF_META, meta_key(vol, META_CLONE, id.as_bytes()), serde_json::to_vec(&info)?, Durability::Synced)?;
        st.clones.insert(id, info.clone());
        Ok(info)
    }

    /// Deletes a clone: its own inodes and entries go at once (range deletes), its chunks in
    /// bounded reclaim steps; what its base pinned is reclaimed like a deleted snapshot's.
    pub fn clone_delete(&self, vol: Uuid, id: Uuid) -> Result<()> {
        let st = self.volume(vol)?;
        let mut st = Self::lock(&st);
        let info = st.clones.remove(&id).ok_or(VolumeError::NoSuchClone(id))?;
        let meta_before = st.meta.clone();
        let mut batch = Batch::default();
        let (lo, hi) = keys::lineage_range(vol, info.lineage);
        for cf in VERSIONED {
            if cf == CF_CHUNKS {
                // Deleting each chunk frees its extent in the engine: the reclaimer does that
                // in bounded steps (lineages are never used again, so nothing reads them).
                super::data::unreachable_chunks(vol, &mut batch, lo.clone(), hi.clone());
            } else {
                batch.delete_range(cf, lo.as_slice(), hi.as_slice());
            }
        }
        batch.delete(CF_META, meta_key(vol, META_CLONE, id.as_bytes()));
        let upto = st.next_pin_after(info.base_epoch).unwrap_or(st.meta.epoch);
        let written = self.enqueue_reclaim(&mut st, &mut batch, ReclaimItem::Range { after: info.base_epoch, upto, cursor: None, snapshot: None, within: None }).and_then(|_| self.kv.write(batch, Durability::Synced));
        if written.is_err() {
            // The clone is still on disk: it stays in memory too (and keeps its base pinned).
            st.clones.insert(id, info);
            st.meta = meta_before;
        }
        written
    }

    pub fn clones(&self, vol: Uuid) -> Result<Vec<CloneInfo>> {
        let st = self.volume(vol)?;
        let st = Self::lock(&st);
        Ok(st.clones.values().cloned().collect())
    }

    /// Makes every write acknowledged before the call durable. Concurrent callers share syncs
    /// (group commit): a caller whose writes a finished sync covered returns without one.
    pub fn sync(&self) -> Result<()> {
        self.syncs.sync(self.kv.as_ref())
    }

    /// WAL syncs `sync` has run since open (fewer than its callers under concurrency).
    pub fn wal_syncs(&self) -> u64 {
        self.syncs.performed()
    }

    /// Bytes on disk (RocksKv: live SST files and the data log's allocated pages), for space
    /// measurements.
    pub fn disk_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for cf in Cf::ALL {
            total += self.kv.disk_bytes(cf)?;
        }
        Ok(total)
    }

    /// Compacts every column family (after a large reclaim, so deleted versions leave the disk:
    /// their log pages are punched at the checkpoint, their keys compacted away).
    pub fn compact(&self) -> Result<()> {
        for cf in Cf::ALL {
            self.kv.compact(cf)?;
        }
        Ok(())
    }

    /// Writes memtables out, so `disk_bytes` sees everything.
    pub fn flush(&self) -> Result<()> {
        for cf in Cf::ALL {
            self.kv.flush(cf)?;
        }
        Ok(())
    }
}
