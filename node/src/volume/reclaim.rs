//! Reclaim: freeing versions no snapshot or clone base reads any more, from deadlists.
//!
//! When a version born in epoch b is superseded in epoch d while some pin (a snapshot or
//! clone base with epoch e, b <= e < d) still reads it, the write that superseded it put
//! `(d, key)` on the deadlist. Removing a pin at epoch e can free only versions that died in
//! (e, next pin above e]; so deleting a snapshot queues exactly that range, and the reclaimer
//! walks it in bounded steps, each one write batch with its cursor (a crash resumes there). A
//! deleted snapshot's record goes last. A whole chunk generation (truncate to 0, delete) is
//! one deadlist entry whose chunks are checked one by one.

use super::kv::{Batch, Durability};
use uuid::Uuid;

use super::error::Result;
use super::keys::{self, dead, Epoch};
use super::store::{cf_of, meta_key, VolState, VolumeStore, CF_CHUNKS, CF_DEAD, CF_DIRENTS, CF_INODES, CF_META, META_RECLAIM};
use super::types::{DirentValue, InodeValue, ReclaimItem, SnapshotState};

/// Deadlist entries one reclaim step handles at most.
pub const RECLAIM_STEP_ENTRIES: usize = 1024;

impl VolumeStore {
    /// Handles at most `budget` deadlist entries of the oldest pending reclaim work of `vol`.
    /// Returns whether work remains.
    pub fn reclaim_step(&self, vol: Uuid, budget: usize) -> Result<bool> {
        let st = self.volume(vol)?;
        let mut st = Self::lock(&st);
        let Some((item_key, item)) = self.first_reclaim_item(vol)? else { return Ok(false) };
        let ReclaimItem::Range { after, upto, cursor, snapshot } = item;
        let start = match &cursor {
            Some(c) => keys::prefix_end(c),
            None => dead::epoch_prefix(vol, after.saturating_add(1)),
        };
        let end = dead::epoch_prefix(vol, upto.saturating_add(1));
        let entries: Vec<Vec<u8>> = self
            .kv
            .scan(CF_DEAD, &start)
            .map(|item| item.map(|(k, _)| k.to_vec()))
            .take_while(|k| k.as_ref().map_or(true, |k| k.as_slice() < end.as_slice() && k.starts_with(vol.as_bytes())))
            .take(budget.max(1))
            .collect::<Result<_>>()?;
        let finished = entries.len() < budget.max(1);
        for key in &entries {
            let mut batch = Batch::default();
            self.reclaim_entry(&st, key, &mut batch)?;
            let progress = ReclaimItem::Range { after, upto, cursor: Some(key.clone()), snapshot };
            batch.put(CF_META, item_key.as_slice(), serde_json::to_vec(&progress)?);
            self.kv.write(batch, Durability::Buffered)?;
            self.drop_lone_tombstone(key)?;
        }
        if finished {
            let mut batch = Batch::default();
            batch.delete(CF_META, item_key.as_slice());
            if let Some(id) = snapshot {
                batch.delete(CF_META, meta_key(vol, b'S', id.as_bytes()));
            }
            self.kv.write(batch, Durability::Synced)?;
            if let Some(id) = snapshot {
                st.snapshots.remove(&id);
            }
            return Ok(self.first_reclaim_item(vol)?.is_some());
        }
        Ok(true)
    }

    /// Runs reclaim steps until `vol` has no pending work.
    pub fn reclaim_all(&self, vol: Uuid) -> Result<()> {
        while self.reclaim_step(vol, super::reclaim::RECLAIM_STEP_ENTRIES)? {}
        Ok(())
    }

    /// Snapshots being deleted whose reclaim has not finished.
    pub fn deleting(&self, vol: Uuid) -> Result<Vec<Uuid>> {
        Ok(self.snapshots(vol)?.into_iter().filter(|s| s.state == SnapshotState::Deleting).map(|s| s.id).collect())
    }

    fn first_reclaim_item(&self, vol: Uuid) -> Result<Option<(Vec<u8>, ReclaimItem)>> {
        let prefix = meta_key(vol, META_RECLAIM, &[]);
        let mut it = self.kv.scan(CF_META, &prefix);
        match it.next() {
            Some(item) => {
                let (k, v) = item?;
                if !k.starts_with(&prefix) {
                    return Ok(None);
                }
                Ok(Some((k.to_vec(), serde_json::from_slice(&v)?)))
            }
            None => Ok(None),
        }
    }

    /// Frees what one deadlist entry names, if no pin reads it any more.
    fn reclaim_entry(&self, st: &VolState, key: &[u8], batch: &mut Batch) -> Result<()> {
        let Some((died, tag, payload)) = dead::parse(key) else {
            batch.delete(CF_DEAD, key);
            return Ok(());
        };
        if tag == dead::GENERATION {
            return self.reclaim_generation(st, key, died, payload, batch);
        }
        let Some(cf) = cf_of(tag) else {
            batch.delete(CF_DEAD, key);
            return Ok(());
        };
        let born = keys::epoch_of(payload).unwrap_or(0);
        if !st.needed(born, died) {
            batch.delete(cf, payload);
            batch.delete(CF_DEAD, key);
        }
        Ok(())
    }

    fn reclaim_generation(&self, st: &VolState, key: &[u8], died: Epoch, payload: &[u8], batch: &mut Batch) -> Result<()> {
        let mut prefix = st.id.as_bytes().to_vec();
        prefix.extend_from_slice(payload);
        let mut kept = false;
        let mut last_index = None;
        for item in self.kv.scan_presence(CF_CHUNKS, &prefix) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let index = keys::chunk_index_of(&k);
            if index == last_index {
                continue; // an older version: it has a deadlist entry of its own
            }
            last_index = index;
            let born = keys::epoch_of(&k).unwrap_or(0);
            if st.needed(born, died) {
                kept = true;
            } else {
                batch.delete(CF_CHUNKS, &*k);
            }
        }
        if !kept {
            batch.delete(CF_DEAD, key);
        }
        Ok(())
    }

    /// After a version is freed, its object may be left with only a tombstone over nothing:
    /// then the tombstone goes too.
    fn drop_lone_tombstone(&self, dead_key: &[u8]) -> Result<()> {
        let Some((_, tag, payload)) = dead::parse(dead_key) else { return Ok(()) };
        let Some(cf) = cf_of(tag) else { return Ok(()) };
        if self.kv.get(cf, payload)?.is_some() {
            return Ok(()); // still kept for a pin
        }
        let object = keys::object_of(payload);
        let Some((newest, value)) = self.newest(cf, object, u64::MAX)? else { return Ok(()) };
        let tombstone = match cf {
            CF_INODES => matches!(serde_json::from_slice::<InodeValue>(&value)?, InodeValue::Deleted),
            CF_DIRENTS => matches!(serde_json::from_slice::<DirentValue>(&value)?, DirentValue::Deleted),
            _ => value.is_empty(),
        };
        let below = keys::epoch_of(&newest).and_then(|e| e.checked_sub(1));
        let alone = match below {
            Some(b) => self.newest(cf, object, b)?.is_none(),
            None => true,
        };
        // A tombstone is the newest version of its object: nothing superseded it, so no
        // deadlist names it, and deleting it over nothing changes no reader's view.
        if tombstone && alone {
            let mut batch = Batch::default();
            batch.delete(cf, newest);
            self.kv.write(batch, Durability::Buffered)?;
        }
        Ok(())
    }
}
