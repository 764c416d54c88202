//! [`Kv`] on RocksDB: the production engine, one database in the node's volume directory with a
//! column family per [`Cf`].

use std::path::Path;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};

use super::{Batch, Cf, Durability, Kv, Op, Scan, Seek, Verify};
use crate::volume::durability::WAL_BYTES_PER_SYNC;
use crate::volume::error::Result;
use crate::volume::store::{CHUNK_OBJECT_BYTES, INODE_OBJECT_BYTES};

/// Table and blob bytes written before RocksDB starts their writeback, so flushes reach the
/// disk steadily rather than in bursts that stall the WAL behind them.
const TABLE_BYTES_PER_SYNC: u64 = 1024 * 1024;

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

fn cf_options(cf: Cf) -> Options {
    match cf {
        Cf::Meta | Cf::Dirents | Cf::Dead => Options::default(),
        Cf::Inodes => prefix_options(INODE_OBJECT_BYTES),
        Cf::Chunks => {
            let mut o = prefix_options(CHUNK_OBJECT_BYTES);
            // Chunk values live in blob files: compaction moves only keys (design.md section 3).
            o.set_enable_blob_files(true);
            o.set_min_blob_size(4096);
            o.set_enable_blob_gc(true);
            // Every blob file may be garbage-collected when compaction meets it, so the space
            // of reclaimed versions comes back (at the price of moving live blobs in those files).
            o.set_blob_gc_age_cutoff(1.0);
            o
        }
    }
}

pub struct RocksKv {
    db: DB,
}

impl RocksKv {
    /// Opens (or creates) the database under `path`.
    pub fn open(path: &Path) -> Result<RocksKv> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Write dirty WAL and table data out as it accumulates, so a synced write (a fence's
        // snapshot, a FLUSH) finds little left to sync and its latency stays short.
        opts.set_wal_bytes_per_sync(WAL_BYTES_PER_SYNC);
        opts.set_bytes_per_sync(TABLE_BYTES_PER_SYNC);
        // A write's WAL append and its memtable insert overlap with the next write's, and
        // flushes and compactions get threads of their own, so a write (the one a fence waits
        // for) spends less time queued inside RocksDB.
        opts.set_enable_pipelined_write(true);
        let cfs = Cf::ALL.iter().map(|&cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(cf)));
        Ok(RocksKv { db: DB::open_cf_descriptors(&opts, path, cfs)? })
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        self.db.cf_handle(cf.name()).expect("column families are created at open")
    }
}

impl Kv for RocksKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    fn seek(&self, cf: Cf, from: &[u8], how: Seek, verify: Verify, found: &mut dyn FnMut(&[u8], &[u8])) -> Result<bool> {
        let mut ro = rocksdb::ReadOptions::default();
        match how {
            // Only where the column family's extractor has that length; otherwise total order.
            Seek::SamePrefix(n) if matches!((cf, n), (Cf::Chunks, CHUNK_OBJECT_BYTES) | (Cf::Inodes, INODE_OBJECT_BYTES)) && from.len() >= n => {
                ro.set_prefix_same_as_start(true)
            }
            _ => ro.set_total_order_seek(true),
        }
        ro.set_verify_checksums(verify == Verify::Yes);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), ro);
        it.seek(from);
        match (it.key(), it.value()) {
            (Some(k), Some(v)) => {
                found(k, v);
                Ok(true)
            }
            _ => {
                it.status()?;
                Ok(false)
            }
        }
    }

    fn scan<'a>(&'a self, cf: Cf, from: &[u8]) -> Scan<'a> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_total_order_seek(true);
        let it = self.db.iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(from, Direction::Forward));
        Box::new(it.map(|item| item.map_err(Into::into)))
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put { cf, key, value } => wb.put_cf(self.cf(cf), key, value),
                Op::Delete { cf, key } => wb.delete_cf(self.cf(cf), key),
                Op::DeleteRange { cf, from, to } => wb.delete_range_cf(self.cf(cf), from, to),
            }
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(durability == Durability::Synced);
        Ok(self.db.write_opt(wb, &wo)?)
    }

    fn sequence(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    fn sync_wal(&self) -> Result<()> {
        Ok(self.db.flush_wal(true)?)
    }

    fn disk_bytes(&self, cf: Cf) -> Result<u64> {
        let mut total = 0;
        for prop in ["rocksdb.total-sst-files-size", "rocksdb.total-blob-file-size"] {
            total += self.db.property_int_value_cf(self.cf(cf), prop)?.unwrap_or(0);
        }
        Ok(total)
    }

    fn flush(&self, cf: Cf) -> Result<()> {
        Ok(self.db.flush_cf(self.cf(cf))?)
    }

    fn compact(&self, cf: Cf) -> Result<()> {
        self.db.compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }
}
