//! The storage seam under the volume store: an ordered key-value engine with column families,
//! atomic write batches and one write-ahead log ([`Kv`]).
//!
//! Two engines implement it: [`RocksKv`] (production: RocksDB in the node's volume directory,
//! with a data log of our own as its write-ahead log, which also holds the file data: each byte
//! written once, see log.rs) and [`MemKv`] (the simulation's: an in-memory engine that models
//! what a process death and a power loss each keep). Both pass one conformance suite
//! (`conformance.rs`, RocksKv also restarted by crashes and cut by power losses), and the volume
//! store's model tests run on both.
//!
//! The contract, as the store relies on it:
//! - a batch lands whole or not at all, in the order batches were written;
//! - a written batch is readable at once and survives a process death (the log is in the page
//!   cache); a power loss keeps a prefix of the batches in write order that holds at
//!   least every batch written before the last sync;
//! - a synced write or [`Kv::sync_wal`] makes that write and every earlier one durable;
//! - [`Kv::sequence`] grows with every batch, so a sync can tell which writes it covers;
//! - a scan returns keys in byte order from its start; callers do not write to the column
//!   family they scan while the scan runs.

mod log;
mod mem;
mod rocks;

pub(crate) use log::{sealed, unsealed};

#[cfg(test)]
mod conformance;

pub use mem::MemKv;
pub use rocks::RocksKv;

use bytes::Bytes;

use super::error::Result;

/// The column families of the volume store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// Volume records, snapshots, clones, fence books, reclaim work.
    Meta,
    /// Epoch-versioned inodes.
    Inodes,
    /// Epoch-versioned directory entries.
    Dirents,
    /// Epoch-versioned file chunks.
    Chunks,
    /// Deadlists: superseded versions a snapshot still reads.
    Dead,
}

impl Cf {
    pub const ALL: [Cf; 5] = [Cf::Meta, Cf::Inodes, Cf::Dirents, Cf::Chunks, Cf::Dead];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Inodes => "inodes",
            Cf::Dirents => "dirents",
            Cf::Chunks => "chunks",
            Cf::Dead => "dead",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One change in a batch. Keys and values are owned, so a batch is built without copying what
/// the caller already holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { cf: Cf, key: Vec<u8>, value: Vec<u8> },
    Delete { cf: Cf, key: Vec<u8> },
    /// Deletes every key in `[from, to)`.
    DeleteRange { cf: Cf, from: Vec<u8>, to: Vec<u8> },
}

/// Puts `value` at the front of `dest`; its length.
pub(super) fn copy_into(value: &[u8], dest: &mut [u8]) -> Result<usize> {
    let room = dest.len();
    let dest = dest.get_mut(..value.len()).ok_or(super::error::VolumeError::TooLarge { what: "a stored value", got: value.len() as u64, max: room as u64 })?;
    dest.copy_from_slice(value);
    Ok(value.len())
}

/// Changes written atomically by [`Kv::write`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub(super) ops: Vec<Op>,
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put { cf, key: key.into(), value: value.into() });
    }

    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete { cf, key: key.into() });
    }

    pub fn delete_range(&mut self, cf: Cf, from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange { cf, from: from.into(), to: to.into() });
    }
}

/// Whether a write returns only once it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// In the WAL (survives a process death, not a power loss) when the call returns.
    Buffered,
    /// Synced, with every earlier write, when the call returns.
    Synced,
}

/// How a seek may be served. With `SamePrefix(n)`, an engine may skip keys whose first `n`
/// bytes differ from the seek key's (RocksDB uses its prefix bloom filters): the caller
/// accepts only a key of that prefix anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    TotalOrder,
    SamePrefix(usize),
}

/// Whether a read checks the checksums of what it reads (RocksDB's block checksums); a lookup
/// whose value is thrown away needs only the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    Yes,
    KeyOnly,
    /// The caller looks only at the key and whether the value is empty: the engine may hand a
    /// non-empty stand-in for a non-empty value (RocksKv: the pointer, not the logged data).
    Presence,
}

/// A scan's items: (key, value) in key order.
pub type Scan<'a> = Box<dyn Iterator<Item = Result<(Box<[u8]>, Box<[u8]>)>> + 'a>;

/// An ordered key-value engine with column families and one write-ahead log.
pub trait Kv: Send + Sync {
    /// The value of `key`, if present.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Hands `found` the first key at or after `from` and its value, where they lie; returns
    /// whether there was one (see [`Seek`] for what `SamePrefix` lets the engine skip).
    fn seek(&self, cf: Cf, from: &[u8], how: Seek, verify: Verify, found: &mut dyn FnMut(&[u8], &[u8])) -> Result<bool>;

    /// Like [`Kv::seek`] for a caller that wants the value in `dest`: if the first key at or
    /// after `from` passes `wanted`, its value is put at the front of `dest` (an engine that
    /// keeps it elsewhere reads it straight there) and its length returned. A value longer than
    /// `dest` is an error.
    fn seek_into(&self, cf: Cf, from: &[u8], how: Seek, wanted: &mut dyn FnMut(&[u8]) -> bool, dest: &mut [u8]) -> Result<Option<usize>> {
        let mut out = Ok(None);
        self.seek(cf, from, how, Verify::KeyOnly, &mut |k, v| {
            if wanted(k) {
                out = copy_into(v, dest).map(Some);
            }
        })?;
        out
    }

    /// Like [`Kv::seek_into`] for a caller that keeps the value: as `(head, tail)`, the value
    /// being the two one after the other. An engine that keeps the value elsewhere may hand
    /// out its head where it lies, without a copy (RocksKv: a slice of the data log's mapping,
    /// whose pages stay as they are until the last clone of it is dropped). The caller must
    /// hold off every write that could free the value until the call returns (the store's
    /// volume lock does): a checkpoint spares only values pinned before their freeing write.
    fn seek_shared(&self, cf: Cf, from: &[u8], how: Seek, wanted: &mut dyn FnMut(&[u8]) -> bool) -> Result<Option<(Bytes, Bytes)>> {
        let mut out = None;
        self.seek(cf, from, how, Verify::KeyOnly, &mut |k, v| {
            if wanted(k) {
                out = Some((Bytes::copy_from_slice(v), Bytes::new()));
            }
        })?;
        Ok(out)
    }

    /// Values [`Kv::seek_shared`] handed out, in order, with those that lie one after the other
    /// where the engine keeps them made one piece each (as is: no engine needs to).
    fn join_shared(&self, pieces: Vec<Bytes>) -> Vec<Bytes> {
        pieces
    }

    /// Keys at or after `from`, in order.
    fn scan<'a>(&'a self, cf: Cf, from: &[u8]) -> Scan<'a>;

    /// Keys at or after `from`, in order, each with whether its value is non-empty (without
    /// reading values an engine keeps elsewhere).
    fn scan_presence<'a>(&'a self, cf: Cf, from: &[u8]) -> Box<dyn Iterator<Item = Result<(Box<[u8]>, bool)>> + 'a> {
        Box::new(self.scan(cf, from).map(|item| item.map(|(k, v)| (k, !v.is_empty()))))
    }

    /// Writes `batch` atomically.
    fn write(&self, batch: Batch, durability: Durability) -> Result<()>;

    /// The sequence number of the last write (grows with every batch).
    fn sequence(&self) -> u64;

    /// Makes every write so far durable.
    fn sync_wal(&self) -> Result<()>;

    /// Bytes the column family takes on disk (for space figures; RocksKv: SST files, and
    /// for chunks the data log's allocated pages).
    fn disk_bytes(&self, cf: Cf) -> Result<u64>;

    /// Writes buffered data out to the column family's files, so `disk_bytes` sees it.
    fn flush(&self, cf: Cf) -> Result<()>;

    /// Compacts the column family, so deleted data leaves the disk.
    fn compact(&self, cf: Cf) -> Result<()>;
}
