//! Reclaim: freeing versions no snapshot or clone base reads any more, from deadlists.
//!
//! When a version born in epoch b is superseded in epoch d while some pin (a snapshot or
//! clone base with epoch e, b <= e < d) still reads it, the write that superseded it put
//! `(d, key)` on the deadlist. Removing a pin at epoch e can free only versions that died in
//! (e, next pin above e]; so deleting a snapshot queues exactly that range, and the reclaimer
//! walks it in bounded steps, each one write batch with its cursor (a crash resumes there). A
//! deleted snapshot's record goes last. A whole chunk generation (truncate to 0, delete) is
//! one deadlist entry whose chunks are checked one by one, each counting against the step's
//! budget like an entry: a step that runs out inside a generation records the last chunk it
//! handled, so a file of any size is reclaimed in steps of bounded size.

use super::kv::{Batch, Durability};
use uuid::Uuid;

use super::types::View;

use super::error::Result;
use super::keys::{self, dead, Epoch};
use super::store::{cf_of, meta_key, VolState, VolumeStore, CF_CHUNKS, CF_DEAD, CF_DIRENTS, CF_INODES, CF_META, META_RECLAIM};
use super::types::{DirentValue, InodeValue, ReclaimItem, SnapshotState, WithinGeneration};

/// Work one reclaim step does at most: deadlist entries, and chunks of a dead generation,
/// each counting one.
pub const RECLAIM_STEP_ENTRIES: usize = 1024;

impl VolumeStore {
    /// Does at most `budget` units of the oldest pending reclaim work of `vol` (a deadlist entry,
    /// or one chunk of a dead generation, is one unit), under the volume lock, in write batches
    /// of at most that many deletions, each with the cursor it reached. Returns whether work
    /// remains.
    pub fn reclaim_step(&self, vol: Uuid, budget: usize) -> Result<bool> {
        let entry = self.volume(vol)?;
        let mut st = Self::lock(&entry);
        let Some((item_key, item)) = self.first_reclaim_item(vol)? else { return Ok(false) };
        let (after, upto, mut cursor, snapshot, within) = match item {
            ReclaimItem::Range { after, upto, cursor, snapshot, within } => (after, upto, cursor, snapshot, within),
            ReclaimItem::Chunks { from, to } => {
                if self.chunks_step(&item_key, from, to, budget)? {
                    return Ok(true);
                }
                drop(st);
                return Ok(self.first_reclaim_item(vol)?.is_some());
            }
            ReclaimItem::Cut { clone, ino } => {
                drop(st); // a cut step is a mutation: it takes the gate, then the lock
                if self.cut_step(vol, clone.map_or(View::Live, View::Clone), ino, budget as u64, false)? {
                    return Ok(true);
                }
                return Ok(self.first_reclaim_item(vol)?.is_some());
            }
        };
        let mut budget = budget.max(1);
        let save = |batch: &mut Batch, cursor: &Option<Vec<u8>>, within: Option<WithinGeneration>| -> Result<()> {
            let progress = ReclaimItem::Range { after, upto, cursor: cursor.clone(), snapshot, within };
            batch.put(CF_META, item_key.as_slice(), serde_json::to_vec(&progress)?);
            Ok(())
        };
        if let Some(w) = within {
            // A generation an earlier step left part-way: go on from its last chunk.
            let mut batch = Batch::default();
            let left = match dead::parse(&w.entry) {
                Some((died, _, payload)) => self.reclaim_generation(&st, &w.entry, died, payload, w.after_chunk.as_deref(), w.kept, &mut budget, &mut batch)?,
                None => {
                    batch.delete(CF_DEAD, w.entry.as_slice());
                    None
                }
            };
            if left.is_none() {
                cursor = Some(w.entry.clone());
            }
            let unfinished = left.is_some();
            save(&mut batch, &cursor, left)?;
            self.kv.write(batch, Durability::Buffered)?;
            if unfinished {
                return Ok(true);
            }
        }
        let start = match &cursor {
            Some(c) => keys::prefix_end(c),
            None => dead::epoch_prefix(vol, after.saturating_add(1)),
        };
        let end = dead::epoch_prefix(vol, upto.saturating_add(1));
        let wanted = budget;
        let entries: Vec<Vec<u8>> = self
            .kv
            .scan(CF_DEAD, &start)
            .map(|item| item.map(|(k, _)| k.to_vec()))
            .take_while(|k| k.as_ref().map_or(true, |k| k.as_slice() < end.as_slice() && k.starts_with(vol.as_bytes())))
            .take(wanted)
            .collect::<Result<_>>()?;
        let finished = entries.len() < wanted;
        for key in &entries {
            if budget == 0 {
                return Ok(true); // the rest of these entries are the next step's
            }
            budget -= 1;
            let mut batch = Batch::default();
            let left = self.reclaim_entry(&st, key, &mut budget, &mut batch)?;
            let unfinished = left.is_some();
            if !unfinished {
                cursor = Some(key.clone());
            }
            save(&mut batch, &cursor, left)?;
            self.kv.write(batch, Durability::Buffered)?;
            if unfinished {
                return Ok(true);
            }
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

    /// Deletes up to `budget` of the chunk keys in `from..to` (which nothing reads), in one
    /// batch with the item's progress, or with the item's removal once none is left. Returns
    /// whether any may be left.
    fn chunks_step(&self, item_key: &[u8], from: Vec<u8>, to: Vec<u8>, budget: usize) -> Result<bool> {
        let budget = budget.max(1);
        let found: Vec<Box<[u8]>> = self
            .kv
            .scan_presence(CF_CHUNKS, &from)
            .map(|item| item.map(|(k, _)| k))
            .take_while(|k| k.as_ref().map_or(true, |k| **k < *to))
            .take(budget)
            .collect::<Result<_>>()?;
        let mut batch = Batch::default();
        for k in &found {
            batch.delete(CF_CHUNKS, &**k);
        }
        let more = found.len() == budget;
        match found.last() {
            Some(last) if more => {
                let mut next = last.to_vec();
                next.push(0); // the key right after `last`
                batch.put(CF_META, item_key, serde_json::to_vec(&ReclaimItem::Chunks { from: next, to })?);
            }
            _ => batch.delete(CF_META, item_key),
        }
        self.kv.write(batch, Durability::Buffered)?;
        Ok(more)
    }

    /// Whether a version born at `born` and superseded at `died` is still read by a snapshot or
    /// clone base (never, in the broken variant the simulation runs to test its checkers).
    fn needed_by_pins(&self, st: &VolState, born: Epoch, died: Epoch) -> bool {
        st.needed(born, died) && !self.reclaims_needed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A deliberately broken store, for the simulation to show its checkers catch it: reclaim
    /// frees what snapshots still read.
    pub fn break_reclaim_for_tests(&self) {
        self.reclaims_needed.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs reclaim steps until `vol` has no pending work.
    pub fn reclaim_all(&self, vol: Uuid) -> Result<()> {
        while self.reclaim_step(vol, super::reclaim::RECLAIM_STEP_ENTRIES)? {
            if self.fenced(vol)? {
                // A cut's steps wait for the fence to end; do not spin meanwhile.
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
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

    /// Frees what one deadlist entry names, if no pin reads it any more. A dead generation's
    /// chunks each take one unit of `budget`; returns where to go on when it ran out first.
    fn reclaim_entry(&self, st: &VolState, key: &[u8], budget: &mut usize, batch: &mut Batch) -> Result<Option<WithinGeneration>> {
        let Some((died, tag, payload)) = dead::parse(key) else {
            batch.delete(CF_DEAD, key);
            return Ok(None);
        };
        if tag == dead::GENERATION {
            return self.reclaim_generation(st, key, died, payload, None, false, budget, batch);
        }
        let Some(cf) = cf_of(tag) else {
            batch.delete(CF_DEAD, key);
            return Ok(None);
        };
        let born = keys::epoch_of(payload).unwrap_or(0);
        if !self.needed_by_pins(st, born, died) {
            batch.delete(cf, payload);
            batch.delete(CF_DEAD, key);
        }
        Ok(None)
    }

    /// Frees the chunks of the dead generation `key` names that no pin reads, from the one
    /// after `after_chunk` (or the first), one unit of `budget` each; `kept` says whether a
    /// chunk before that was kept. The deadlist entry goes when the last chunk is handled and
    /// none was kept. Returns where to go on when the budget ran out first.
    #[allow(clippy::too_many_arguments)]
    fn reclaim_generation(&self, st: &VolState, key: &[u8], died: Epoch, payload: &[u8], after_chunk: Option<&[u8]>, mut kept: bool, budget: &mut usize, batch: &mut Batch) -> Result<Option<WithinGeneration>> {
        let mut prefix = st.id.as_bytes().to_vec();
        prefix.extend_from_slice(payload);
        let from = after_chunk.map_or_else(|| prefix.clone(), keys::prefix_end);
        let mut last_index = after_chunk.and_then(keys::chunk_index_of);
        let mut handled = after_chunk.map(<[u8]>::to_vec);
        for item in self.kv.scan_presence(CF_CHUNKS, &from) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if *budget == 0 {
                return Ok(Some(WithinGeneration { entry: key.to_vec(), after_chunk: handled, kept }));
            }
            *budget -= 1;
            handled = Some(k.to_vec());
            let index = keys::chunk_index_of(&k);
            if index == last_index {
                continue; // an older version: it has a deadlist entry of its own
            }
            last_index = index;
            let born = keys::epoch_of(&k).unwrap_or(0);
            if self.needed_by_pins(st, born, died) {
                kept = true;
            } else {
                batch.delete(CF_CHUNKS, &*k);
            }
        }
        if !kept {
            batch.delete(CF_DEAD, key);
        }
        Ok(None)
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
