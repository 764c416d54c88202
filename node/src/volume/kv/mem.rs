//! [`Kv`] in memory, for the simulation: a disk that remembers what was written (what the OS
//! holds, kept by a process death) apart from what was synced (kept by a power loss).
//!
//! Every handle cloned from one [`MemKv`] shares its disk, so a node restarted after a crash
//! opens what survived. Tables are persistent ordered maps (`imbl`), so a sync, a power loss
//! and a scan's snapshot are O(1) copies; values are `Bytes`, so a copy shares them.
//!
//! Like RocksDB's one WAL: batches apply in order; a synced write or `sync_wal` makes every
//! earlier batch durable; a power loss keeps what was synced plus a prefix of the batches
//! written after (as much of the WAL as happened to reach the disk), which the caller chooses
//! so a seeded run stays deterministic. A process death changes nothing on the disk: the
//! stores using it are dropped and reopened. A test-only switch makes syncs do nothing: a broken
//! variant whose power losses drop flushed writes, for the simulation's checkers to catch.

use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use imbl::OrdMap;

use super::{Batch, Cf, Durability, Kv, Op, Scan, Seek, Verify};
use crate::volume::error::Result;

type Table = OrdMap<Vec<u8>, Bytes>;
type Tables = [Table; 5];

/// A batch's change as the disk keeps it (values shared, not copied, between the tables and
/// the unsynced log).
#[derive(Clone)]
enum MemOp {
    Put(Cf, Vec<u8>, Bytes),
    Delete(Cf, Vec<u8>),
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

#[derive(Default)]
struct Disk {
    written: Tables,
    synced: Tables,
    /// Batches written since the last sync, oldest first.
    unsynced: Vec<Arc<[MemOp]>>,
    sequence: u64,
    /// Syncs that made something durable.
    syncs: u64,
    skip_sync: bool,
    /// Test-only: this many writes to come fail (a full disk), changing nothing.
    failing_writes: usize,
}

fn apply(tables: &mut Tables, ops: &[MemOp]) {
    for op in ops {
        match op {
            MemOp::Put(cf, k, v) => {
                tables[cf.index()].insert(k.clone(), v.clone());
            }
            MemOp::Delete(cf, k) => {
                tables[cf.index()].remove(k);
            }
            MemOp::DeleteRange(cf, from, to) => {
                let table = &mut tables[cf.index()];
                let doomed: Vec<Vec<u8>> = table.range::<_, [u8]>((Bound::Included(from.as_slice()), Bound::Excluded(to.as_slice()))).map(|(k, _)| k.clone()).collect();
                for k in doomed {
                    table.remove(&k);
                }
            }
        }
    }
}

impl Disk {
    fn sync(&mut self) {
        if !self.skip_sync && !self.unsynced.is_empty() {
            self.synced = self.written.clone();
            self.unsynced.clear();
            self.syncs += 1;
        }
    }
}

/// An in-memory engine; clones share one disk.
#[derive(Clone, Default)]
pub struct MemKv {
    disk: Arc<Mutex<Disk>>,
}

impl MemKv {
    pub fn new() -> MemKv {
        MemKv::default()
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().expect("mem kv lock")
    }

    /// Batches written since the last sync (what a power loss may drop).
    pub fn unsynced_batches(&self) -> usize {
        self.disk().unsynced.len()
    }

    /// Syncs so far that made something durable.
    pub fn syncs(&self) -> u64 {
        self.disk().syncs
    }

    /// A power loss: what was synced stays, plus the first `reached` batches written after the
    /// last sync (those that happened to reach the disk); the rest is gone. What survives is
    /// on the disk, so it counts as synced from then on.
    pub fn power_loss(&self, reached: usize) {
        let mut d = self.disk();
        let mut tables = d.synced.clone();
        let kept = reached.min(d.unsynced.len());
        for ops in &d.unsynced[..kept] {
            apply(&mut tables, ops);
        }
        d.written = tables.clone();
        d.synced = tables;
        d.unsynced.clear();
    }

    /// Test-only broken variant: syncs do nothing, so a power loss drops flushed writes.
    pub fn break_syncs_for_tests(&self) {
        self.disk().skip_sync = true;
    }

    /// Test-only: the next `n` writes fail as on a full disk, changing nothing.
    pub fn fail_writes_for_tests(&self, n: usize) {
        self.disk().failing_writes = n;
    }
}

/// A scan over a snapshot of one table (an O(1) copy), one seek per item.
struct MemScan {
    table: Table,
    next: Bound<Vec<u8>>,
}

impl Iterator for MemScan {
    type Item = Result<(Box<[u8]>, Box<[u8]>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let lower = match &self.next {
            Bound::Included(k) => Bound::Included(k.as_slice()),
            Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let (k, v) = self.table.range::<_, [u8]>((lower, Bound::Unbounded)).next()?;
        let item = (k.clone().into_boxed_slice(), v.to_vec().into_boxed_slice());
        self.next = Bound::Excluded(k.clone());
        Some(Ok(item))
    }
}

impl Kv for MemKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.disk().written[cf.index()].get(key).map(|v| v.to_vec()))
    }

    fn seek(&self, cf: Cf, from: &[u8], _how: Seek, _verify: Verify, found: &mut dyn FnMut(&[u8], &[u8])) -> Result<bool> {
        let d = self.disk();
        match d.written[cf.index()].range::<_, [u8]>((Bound::Included(from), Bound::Unbounded)).next() {
            Some((k, v)) => {
                found(k, v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn scan<'a>(&'a self, cf: Cf, from: &[u8]) -> Scan<'a> {
        let table = self.disk().written[cf.index()].clone();
        Box::new(MemScan { table, next: Bound::Included(from.to_vec()) })
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        {
            let mut d = self.disk();
            if d.failing_writes > 0 {
                d.failing_writes -= 1;
                return Err(super::super::VolumeError::DiskFull("no space left on the device (a test's)".into()));
            }
        }
        let ops: Arc<[MemOp]> = batch
            .ops
            .into_iter()
            .map(|op| match op {
                Op::Put { cf, key, value } => MemOp::Put(cf, key, Bytes::from(value)),
                Op::Delete { cf, key } => MemOp::Delete(cf, key),
                Op::DeleteRange { cf, from, to } => MemOp::DeleteRange(cf, from, to),
            })
            .collect();
        let mut d = self.disk();
        apply(&mut d.written, &ops);
        d.sequence += 1;
        d.unsynced.push(ops);
        if durability == Durability::Synced {
            d.sync();
        }
        Ok(())
    }

    fn sequence(&self) -> u64 {
        self.disk().sequence
    }

    fn sync_wal(&self) -> Result<()> {
        self.disk().sync();
        Ok(())
    }

    fn disk_bytes(&self, cf: Cf) -> Result<u64> {
        Ok(self.disk().written[cf.index()].iter().map(|(k, v)| (k.len() + v.len()) as u64).sum())
    }

    fn flush(&self, _cf: Cf) -> Result<()> {
        Ok(()) // nothing is buffered apart from the tables
    }

    fn compact(&self, _cf: Cf) -> Result<()> {
        Ok(()) // deleted keys take no space
    }
}
