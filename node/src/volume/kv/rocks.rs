//! [`Kv`] on RocksDB and the data log: the production engine. One RocksDB in the node's volume
//! directory with a column family per [`Cf`], its WAL off; the data log (log.rs) in `datalog/`
//! beside it is the write-ahead log, and holds the large chunk values.
//!
//! A write ([`Kv::write`]), under one writer lock:
//! 1. each chunk value larger than `inline_max` (4 KiB) gets a place in the record's data and
//!    RocksDB gets a pointer to it instead; every pointer the batch overwrites or deletes is
//!    noted as freed;
//! 2. the record (operations, then data) is appended to the log: one copy of the data, into the
//!    page cache, so a process death loses nothing acknowledged;
//! 3. the batch goes to RocksDB's memtables (no WAL).
//!
//! A sync ([`Kv::sync_wal`]) syncs the log's files. A checkpoint (on its own thread every
//! [`CHECKPOINT_LOG_BYTES`] of log or [`CHECKPOINT_FREED_BYTES`] freed, and on `flush`):
//! 1. syncs the log, then, with writers held for a moment, syncs its tail and switches every
//!    memtable out (they point only at synced pages; later records go to new memtables); under
//!    load it leaves the segment being appended to alone (see [`Punch`]): its freed pages wait,
//!    or past [`ROLL_FREED_BYTES`] appends move on to the next segment first;
//! 2. waits, writers going on, for RocksDB to write the switched memtables to tables;
//! 3. records in `datalog/applied` the position up to which RocksDB now holds everything;
//! 4. only then punches freed extents and old record headers out of the log (a crash before
//!    would replay records that still point at them) and removes segments with no live extent;
//!    an extent a value handed out without a copy still pins waits for a later checkpoint.
//!
//! Opening replays the log from `applied` into RocksDB, checking each record's header,
//! operations and data, and cuts the log at the first record that fails (a torn write or a
//! power loss's lost tail: never applied, and nothing after it). After a crash (no `clean`
//! marker) it then punches every page of the log no pointer refers to: what a crash kept from
//! being freed.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{IoSlice, Seek as _, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::mem::ManuallyDrop;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};

use super::log::{self, decode_stored, pages, Extent, Header, OpRef, Segments, Stored, HEADER_BYTES, MAX_RECORD_BYTES, PAGE_BYTES, SEGMENT_BYTES};
use super::{Batch, Cf, Durability, Kv, Op, Scan, Seek, Verify};
use crate::volume::durability::WAL_BYTES_PER_SYNC;
use crate::volume::error::{Result, VolumeError};
use crate::volume::store::{CHUNK_OBJECT_BYTES, INODE_OBJECT_BYTES};

/// Table bytes written before RocksDB starts their writeback, so flushes reach the disk
/// steadily rather than in bursts.
const TABLE_BYTES_PER_SYNC: u64 = 1024 * 1024;

/// Log bytes appended after which a write wakes the checkpoint thread: bounds what an open
/// replays and how long freed extents wait to be punched.
pub(crate) const CHECKPOINT_LOG_BYTES: u64 = 1 << 30;

/// Operation bytes given to the memtables after which a write wakes the checkpoint thread.
/// Even at [`CHECKPOINT_OVERDUE`] times this (about 1.4 memtable bytes per operation byte) the
/// memtables stay below their size ([`MEMTABLE_BYTES`]): RocksDB must never flush on its own
/// a memtable that points into log pages not yet synced.
const CHECKPOINT_OPS_BYTES: u64 = 32 << 20;

/// Operation bytes since the last checkpoint past which a write syncs the log before RocksDB
/// takes its batch. The checkpoint thresholds keep the memtables below the size at which
/// RocksDB flushes on its own only if the checkpoints keep up and the operations take the
/// memtable bytes assumed: past this (1.5 times the checkpoint's threshold, the memtables then
/// still well below [`MEMTABLE_BYTES`] even at 2 bytes per operation byte), whatever RocksDB
/// might flush points only at synced pages. One sync per write, and only then.
const SYNC_BEFORE_APPLY_OPS_BYTES: u64 = CHECKPOINT_OPS_BYTES * 3 / 2;

/// Freed extents waiting for a checkpoint, past which a write wakes the thread (16 bytes each).
const CHECKPOINT_FREES: usize = 1 << 20;

/// Bytes of freed extents past which a checkpoint runs, so space (and the page cache holding
/// it) comes back soon after a large file is deleted or overwritten: a 1 GiB file written again
/// reuses the pages its old data just left (measured on this VM: writing into pages the kernel
/// had not used lately ran at 0.43 GB/s, into pages just freed at 3.8 GB/s).
const CHECKPOINT_FREED_BYTES: u64 = 1 << 30;

/// Past this many times the thresholds above, a write runs the checkpoint the thread has not.
const CHECKPOINT_OVERDUE: u64 = 2;

/// Pages to free in the segment being appended to past which a checkpoint under load moves
/// appends to the next segment and frees them; below, they wait for a later checkpoint (see
/// [`Punch`]). Bounds the freed space the current segment holds.
#[cfg(not(test))]
const ROLL_FREED_BYTES: u64 = 64 << 20;
#[cfg(test)]
const ROLL_FREED_BYTES: u64 = 1 << 20;

/// Which freed pages a checkpoint punches. Punching a file takes its inode's lock for the whole
/// call, and on a filesystem that discards freed blocks as it frees them (ext4 mounted with
/// `discard`, without a journal: docs/benchmarks.md, volume Run 9) that is milliseconds of I/O,
/// which an append to the same file would wait out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Punch {
    /// Under load (the checkpoint thread, an overdue write): never the segment being appended
    /// to. Its pages wait for a later checkpoint, or, past [`ROLL_FREED_BYTES`], appends move to
    /// the next segment first.
    Sealed,
    /// Everything, in place: the open and the close (no appends under way), and the benches'
    /// flush and compaction.
    All,
}

// Pages carried over to a later checkpoint (under [`ROLL_FREED_BYTES`], or under a segment if
// a roll fails) never make one due again at once.
const _: () = assert!(ROLL_FREED_BYTES < CHECKPOINT_FREED_BYTES && CHECKPOINT_FREED_BYTES >= SEGMENT_BYTES);

/// Log bytes written during a checkpoint's last unlocked sync below which it takes the writer
/// lock for the final one.
const CHECKPOINT_SYNC_LEFT_BYTES: u64 = 2 << 20;

/// How often a checkpoint looks whether RocksDB has written its switched memtables out, and
/// how long it waits at most.
const FLUSH_POLL: std::time::Duration = std::time::Duration::from_millis(1);
const FLUSH_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Level-0 tables at which RocksDB slows, then stops, writes.
const LEVEL0_SLOWDOWN_TABLES: i32 = 64;
const LEVEL0_STOP_TABLES: i32 = 128;

/// Bytes of one memtable.
const MEMTABLE_BYTES: usize = 128 << 20;

/// Share of a memtable given to its prefix bloom filter (about 20 bits per entry here).
const MEMTABLE_BLOOM_RATIO: f64 = 0.02;

/// Chunk values up to this many bytes stay in RocksDB (after a tag byte); larger ones go to the
/// log. A full chunk is 64 KiB; small files' tails stay with their keys.
pub(crate) const INLINE_MAX_BYTES: usize = 4096;

thread_local! {
    /// Each thread's buffer for logged values a seek hands its caller (grown to a chunk once).
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Zeros for padding records to pages.
static ZEROS: [u8; PAGE_BYTES as usize] = [0; PAGE_BYTES as usize];

/// Options for a column family whose seeks go to one fixed-length object: a prefix extractor
/// of that length with bloom filters in SST files and memtables (design-review F17).
fn prefix_options(prefix_len: usize) -> Options {
    let mut o = Options::default();
    o.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(prefix_len));
    // A fresh memtable's bloom filter is allocated and zeroed at once, with the writer held
    // during a checkpoint's switch: at 0.1 of a 256 MiB memtable that took 15 ms per family.
    o.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(false);
    o.set_block_based_table_factory(&table);
    o
}

fn cf_options(cf: Cf) -> Options {
    let mut o = match cf {
        Cf::Meta | Cf::Dirents | Cf::Dead => Options::default(),
        Cf::Inodes => prefix_options(INODE_OBJECT_BYTES),
        Cf::Chunks => prefix_options(CHUNK_OBJECT_BYTES),
    };
    o.set_write_buffer_size(MEMTABLE_BYTES);
    // Each checkpoint adds a small table per family to level 0. Writes (and a checkpoint's
    // memtable switch, which holds the writer) wait when level 0 holds this many, so the
    // triggers sit well above what compaction leaves behind under a disk kept busy by the log.
    o.set_level_zero_slowdown_writes_trigger(LEVEL0_SLOWDOWN_TABLES);
    o.set_level_zero_stop_writes_trigger(LEVEL0_STOP_TABLES);
    o
}

/// The writer's state, under its lock.
struct Writer {
    /// The segment being appended to, its file position at `next`.
    file: Arc<File>,
    /// Log position of the next record.
    next: u64,
    /// Segments filled since the last sync (the next sync covers them too).
    rolled: Vec<Arc<File>>,
    /// Log position from which writeback has not been started.
    writeback_from: u64,
    /// Since the last checkpoint: log bytes, operation bytes, freed extents, record headers.
    log_bytes: u64,
    ops_bytes: u64,
    freed: Vec<Extent>,
    freed_bytes: u64,
    headers: Vec<(u64, u64)>,
    /// Set when an append could not be undone: the log's end is unknown, so no more writes.
    broken: Option<String>,
}

impl Writer {
    /// A sync's outcome; a failed one breaks the writer (see [`Engine::sync_log`]).
    fn check_sync(&mut self, synced: std::io::Result<()>) -> Result<()> {
        // Once broken, no sync succeeds: a retried fsync returns 0 after the kernel dropped
        // the pages the failed one could not write, and the caller would be told they are safe.
        if let Some(why) = &self.broken {
            return Err(VolumeError::Storage(format!("the data log is broken ({why}): nothing more is made durable")));
        }
        synced.map_err(|e| {
            self.broken = Some(format!("a data log sync failed: {e}"));
            log::io_error("sync the data log", e)
        })
    }
}

/// Syncs each file's data.
fn sync_files<'a>(files: impl IntoIterator<Item = &'a Arc<File>>) -> std::io::Result<()> {
    files.into_iter().try_for_each(|f| f.sync_data())
}

/// The engine's state, shared with its checkpoint thread.
struct Engine {
    /// Dropped by hand: a test's crash leaves it open, as a killed process would.
    db: ManuallyDrop<DB>,
    segments: Segments,
    writer: Mutex<Writer>,
    /// Batches written (the value of [`Kv::sequence`]).
    sequence: AtomicU64,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
    /// Set when freed pages could not be punched: the next open scrubs (no clean marker).
    leaked: AtomicBool,
    /// Live extents per segment (a segment with none, below the writer's, is removed).
    live: Mutex<BTreeMap<u64, u64>>,
    inline_max: usize,
    /// Test-only: dropping leaves RocksDB open (its memtables unwritten) and skips the
    /// checkpoint and the clean marker, as a process death would.
    crash_on_drop: bool,
    wake: Wake,
}

/// The record a batch becomes: operations as logged and given to RocksDB, the data to append.
struct Record {
    ops: Vec<Op>,
    data: Vec<Vec<u8>>,
    written: Vec<Extent>,
    freed: Vec<Extent>,
}

/// The production engine: the shared state and the thread that runs checkpoints off the write
/// path (a write that made one due only wakes it).
pub struct RocksKv {
    engine: Arc<Engine>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

/// Wakes the checkpoint thread: (checkpoint due, stop).
#[derive(Default)]
struct Wake {
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl Wake {
    fn set(&self, due: bool, stop: bool) {
        let mut st = self.state.lock().expect("checkpoint wake lock");
        st.0 |= due;
        st.1 |= stop;
        self.cv.notify_one();
    }

    /// Waits for a due checkpoint (true) or the stop (false).
    fn wait(&self) -> bool {
        let mut st = self.state.lock().expect("checkpoint wake lock");
        loop {
            if st.1 {
                return false;
            }
            if std::mem::take(&mut st.0) {
                return true;
            }
            st = self.cv.wait(st).expect("checkpoint wake lock");
        }
    }
}

impl RocksKv {
    /// Opens (or creates) the database under `path` and replays its data log.
    pub fn open(path: &Path) -> Result<RocksKv> {
        RocksKv::open_with(path, INLINE_MAX_BYTES, false)
    }

    /// Test-only: a chunk value larger than `inline_max` goes to the log; `crash_on_drop` makes
    /// dropping the engine leave its files as a process death would.
    pub(crate) fn open_with(path: &Path, inline_max: usize, crash_on_drop: bool) -> Result<RocksKv> {
        let engine = Arc::new(Engine::open(path, inline_max, crash_on_drop)?);
        let e = engine.clone();
        let checkpointer = std::thread::Builder::new()
            .name("umbra-checkpoint".into())
            .spawn(move || {
                while e.wake.wait() {
                    if let Err(err) = e.checkpoint(Punch::Sealed) {
                        tracing::warn!(error = %err, "data log checkpoint failed; the next write that finds one due retries");
                    }
                }
            })
            .map_err(|err| log::io_error("start the checkpoint thread", err))?;
        Ok(RocksKv { engine, checkpointer: Some(checkpointer) })
    }

    /// Test-only: a checkpoint as the checkpoint thread runs it (under load).
    #[cfg(test)]
    pub(crate) fn checkpoint_under_load(&self) -> Result<()> {
        self.engine.checkpoint(Punch::Sealed)
    }

    /// Test-only: a log sync during which a checkpoint under load runs (after the sync's
    /// fsyncs); then how many segments are still listed as not synced.
    #[cfg(test)]
    pub(crate) fn sync_with_a_checkpoint_meanwhile(&self) -> Result<usize> {
        let e = &self.engine;
        e.sync_log_then(|| e.checkpoint(Punch::Sealed).expect("checkpoint"))?;
        Ok(e.writer().rolled.len())
    }

    /// Test-only: the log position after the last record.
    #[cfg(test)]
    pub(crate) fn log_end(&self) -> u64 {
        self.engine.writer().next
    }

    /// Test-only: breaks the writer as a failed fsync does.
    #[cfg(test)]
    pub(crate) fn break_writer(&self) {
        self.engine.writer().broken = Some("a test broke it".into());
    }
}

impl Drop for RocksKv {
    fn drop(&mut self) {
        self.engine.wake.set(false, true);
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
        // The engine is ours alone now: dropping it checkpoints and closes RocksDB.
    }
}

impl Engine {
    fn open(path: &Path, inline_max: usize, crash_on_drop: bool) -> Result<Engine> {
        let log_dir = path.join("datalog");
        if path.join("CURRENT").exists() && !log_dir.exists() {
            return Err(VolumeError::Storage(format!("{} holds a volume database of an earlier format (its data in RocksDB's WAL and blob files); this build cannot read it", path.display())));
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_bytes_per_sync(TABLE_BYTES_PER_SYNC);
        let cfs = Cf::ALL.iter().map(|&cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(cf)));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let segments = Segments::open(&log_dir)?;
        // A clean close left the live-extent counts: the open needs no scan of every pointer.
        let clean = log_dir.join("clean");
        let counted = std::fs::read(&clean).ok().and_then(|b| decode_live_counts(&b));
        if clean.exists() {
            std::fs::remove_file(&clean).map_err(|e| log::io_error("remove the clean marker", e))?;
            log::sync_dir(&log_dir)?;
        }
        let applied = read_applied(&log_dir)?;
        let end = replay(&db, &segments, applied)?;
        let file = cut_log(&segments, end)?;
        // Earlier segments the replay read may hold pages the dead process never synced: the
        // checkpoint below syncs them before `applied` moves past them.
        let rolled = (applied / SEGMENT_BYTES..end / SEGMENT_BYTES).filter_map(|seg| segments.get(seg)).collect();
        let writer = Writer { file, next: end, rolled, writeback_from: end, log_bytes: end - applied, ops_bytes: 0, freed: Vec::new(), freed_bytes: 0, headers: Vec::new(), broken: None };
        let mut kv = Engine {
            db: ManuallyDrop::new(db),
            segments,
            writer: Mutex::new(writer),
            sequence: AtomicU64::new(0),
            checkpointing: Mutex::new(()),
            live: Mutex::new(BTreeMap::new()),
            leaked: AtomicBool::new(false),
            inline_max,
            // Until the open has finished, dropping the engine (an error below) must not
            // checkpoint: without the live counts a checkpoint would remove every segment.
            crash_on_drop: true,
            wake: Wake::default(),
        };
        // Live counts before the checkpoint (which removes old segments that have none); the
        // checkpoint only if the replay applied records (a clean close leaves none). The clean
        // marker's counts hold only if the replay applied nothing after them.
        let extents = match counted.filter(|_| end == applied) {
            Some(counts) => {
                *kv.live.lock().expect("live extents lock") = counts;
                None
            }
            None => {
                let extents = kv.live_extents()?;
                *kv.live.lock().expect("live extents lock") = extents.iter().map(|(&seg, v)| (seg, v.len() as u64)).collect();
                Some(extents)
            }
        };
        if end != applied {
            kv.checkpoint(Punch::All)?;
        }
        if let Some(extents) = extents {
            kv.scrub(extents)?;
        }
        kv.crash_on_drop = crash_on_drop;
        Ok(kv)
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        self.db.cf_handle(cf.name()).expect("column families are created at open")
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().expect("data log writer lock")
    }

    /// The first key at or after `from`, if it passes `wanted`: `then` given its value as
    /// RocksDB holds it (a chunk's decoded, any other family's as an inline value).
    fn seek_stored<T>(&self, cf: Cf, from: &[u8], how: Seek, wanted: &mut dyn FnMut(&[u8]) -> bool, then: impl FnOnce(Stored<'_>) -> Result<T>) -> Result<Option<T>> {
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), self.seek_options(cf, from, how, Verify::KeyOnly));
        it.seek(from);
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            it.status()?;
            return Ok(None);
        };
        if !wanted(k) {
            return Ok(None);
        }
        let stored = if cf == Cf::Chunks { decode_stored(v)? } else { Stored::Inline(v) };
        then(stored).map(Some)
    }

    /// The value RocksDB holds, as the caller stored it (a logged chunk read into `buf`).
    fn resolve<'a>(&self, cf: Cf, stored: &'a [u8], buf: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        if cf != Cf::Chunks {
            return Ok(stored);
        }
        match decode_stored(stored)? {
            Stored::Empty => Ok(&[]),
            Stored::Inline(v) => Ok(v),
            Stored::Logged(e, tail) => self.segments.read_value(e, tail, buf),
        }
    }

    /// Read options for a seek from `from`.
    fn seek_options(&self, cf: Cf, from: &[u8], how: Seek, verify: Verify) -> rocksdb::ReadOptions {
        let mut ro = rocksdb::ReadOptions::default();
        match how {
            // Only where the column family's extractor has that length; otherwise total order.
            Seek::SamePrefix(n) if matches!((cf, n), (Cf::Chunks, CHUNK_OBJECT_BYTES) | (Cf::Inodes, INODE_OBJECT_BYTES)) && from.len() >= n => {
                ro.set_prefix_same_as_start(true)
            }
            _ => ro.set_total_order_seek(true),
        }
        ro.set_verify_checksums(verify == Verify::Yes);
        ro
    }

    /// The extent `key` points to now: this batch's own changes first, then RocksDB.
    fn current_extent(&self, key: &[u8], changed: &HashMap<Vec<u8>, Option<Extent>>, ranges: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<Extent>> {
        if let Some(e) = changed.get(key) {
            return Ok(*e);
        }
        if ranges.iter().any(|(from, to)| key >= from.as_slice() && key < to.as_slice()) {
            return Ok(None);
        }
        match self.db.get_pinned_cf(self.cf(Cf::Chunks), key)? {
            Some(v) => Ok(match decode_stored(&v)? {
                Stored::Logged(e, _) => Some(e),
                _ => None,
            }),
            None => Ok(None),
        }
    }

    /// How much of a chunk value goes to the log's data area (its tail stays in the pointer), or
    /// none if the value is stored inline.
    fn logged_len(&self, value: &[u8]) -> Option<usize> {
        (value.len() > self.inline_max).then(|| value.len() - log::tail_len(value.len()))
    }

    /// The CRC32C of each large chunk value's logged part, in batch order: computed before the
    /// writer lock is taken, as it depends on nothing the lock guards.
    fn data_crcs(&self, batch: &Batch) -> Vec<u32> {
        batch.ops.iter().filter_map(|op| match op {
            Op::Put { cf: Cf::Chunks, value, .. } => self.logged_len(value).map(|head| crc32c::crc32c(&value[..head])),
            _ => None,
        }).collect()
    }

    /// Turns `batch` into the record that starts at `lsn`'s data area `data_at`: large chunk
    /// values become pointers (with their CRCs from [`Self::data_crcs`]), and every pointer
    /// overwritten or deleted is freed.
    fn record(&self, batch: Batch, data_at: u64, crcs: Vec<u32>) -> Result<Record> {
        let mut crcs = crcs.into_iter();
        let mut rec = Record { ops: Vec::with_capacity(batch.ops.len()), data: Vec::new(), written: Vec::new(), freed: Vec::new() };
        let mut changed: HashMap<Vec<u8>, Option<Extent>> = HashMap::new();
        let mut ranges: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut at = data_at;
        for op in batch.ops {
            match op {
                Op::Put { cf: Cf::Chunks, key, mut value } => {
                    rec.freed.extend(self.current_extent(&key, &changed, &ranges)?);
                    let (stored, extent) = if let Some(head) = self.logged_len(&value) {
                        let crc = crcs.next().expect("a CRC for every large value (data_crcs)");
                        let e = Extent { lsn: at, len: head as u32, crc };
                        at += e.span();
                        let stored = log::stored_pointer(e, &value[head..]);
                        value.truncate(head);
                        rec.data.push(value);
                        rec.written.push(e);
                        (stored, Some(e))
                    } else {
                        (log::stored_inline(&value), None)
                    };
                    changed.insert(key.clone(), extent);
                    rec.ops.push(Op::Put { cf: Cf::Chunks, key, value: stored });
                }
                Op::Delete { cf: Cf::Chunks, key } => {
                    rec.freed.extend(self.current_extent(&key, &changed, &ranges)?);
                    changed.insert(key.clone(), None);
                    rec.ops.push(Op::Delete { cf: Cf::Chunks, key });
                }
                Op::DeleteRange { cf: Cf::Chunks, from, to } => {
                    let mut it = self.db.raw_iterator_cf_opt(self.cf(Cf::Chunks), total_order());
                    it.seek(&from);
                    while let (Some(k), Some(v)) = (it.key(), it.value()) {
                        if k >= to.as_slice() {
                            break;
                        }
                        let earlier = ranges.iter().any(|(f, t)| k >= f.as_slice() && k < t.as_slice());
                        if !changed.contains_key(k) && !earlier {
                            if let Stored::Logged(e, _) = decode_stored(v)? {
                                rec.freed.push(e);
                            }
                        }
                        it.next();
                    }
                    it.status()?;
                    for (k, e) in changed.iter_mut() {
                        if k.as_slice() >= from.as_slice() && k.as_slice() < to.as_slice() {
                            rec.freed.extend(e.take());
                        }
                    }
                    ranges.push((from.clone(), to.clone()));
                    rec.ops.push(Op::DeleteRange { cf: Cf::Chunks, from, to });
                }
                other => rec.ops.push(other),
            }
        }
        Ok(rec)
    }

    /// Bytes of the data `batch` puts in the log, and of its operations as logged.
    fn sizes(&self, batch: &Batch) -> (u64, u64) {
        let (mut data, mut ops) = (0, 0);
        for op in &batch.ops {
            match op {
                Op::Put { cf: Cf::Chunks, key, value } => match self.logged_len(value) {
                    Some(head) => {
                        data += pages(head as u64);
                        ops += 2 + 8 + key.len() + log::POINTER_BYTES + (value.len() - head);
                    }
                    None => ops += 2 + 8 + key.len() + if value.is_empty() { 0 } else { 1 + value.len() },
                },
                op => ops += log::encoded_len(op),
            }
        }
        (data, ops as u64)
    }

    /// Ends the current segment with a roll record and starts the next one.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let seg = w.next / SEGMENT_BYTES + 1;
        let file = self.segments.create(seg)?;
        let header = Header { roll: true, ops_len: 0, ops_crc: 0, data_len: 0, lsn: w.next };
        self.append_or_undo(w, &[IoSlice::new(&header.encode())])?;
        w.headers.push((w.next, PAGE_BYTES));
        let old = std::mem::replace(&mut w.file, file);
        w.rolled.push(old);
        w.next = seg * SEGMENT_BYTES;
        w.writeback_from = w.next;
        Ok(())
    }

    /// Writes `parts` at the writer's position; on failure, cuts the file back to where it
    /// was (or marks the writer broken if even that fails).
    fn append_or_undo(&self, w: &mut Writer, parts: &[IoSlice<'_>]) -> Result<()> {
        let start = w.next % SEGMENT_BYTES;
        let mut parts: Vec<IoSlice<'_>> = parts.to_vec();
        let mut slices = parts.as_mut_slice();
        let result = (|| {
            while !slices.is_empty() {
                let n = (&*w.file).write_vectored(slices)?;
                if n == 0 {
                    return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "the data log took no bytes"));
                }
                IoSlice::advance_slices(&mut slices, n);
            }
            Ok(())
        })();
        if let Err(e) = result {
            let undo = w.file.set_len(start).and_then(|()| (&*w.file).seek(SeekFrom::Start(start)).map(|_| ()));
            if let Err(u) = undo {
                w.broken = Some(format!("a failed append ({e}) could not be undone ({u})"));
            }
            return Err(log::io_error("append to the data log", e));
        }
        Ok(())
    }

    /// Syncs the log's files up to its end now. A segment leaves the list of unsynced ones only
    /// once a sync of it succeeded, so a sync running beside another syncs every earlier
    /// segment the other has not finished. A failed sync breaks the writer: after a failed
    /// fsync the kernel may have dropped the pages, and a retry could wrongly succeed.
    fn sync_log(&self) -> Result<()> {
        self.sync_log_then(|| {})
    }

    /// [`Self::sync_log`], running `meanwhile` after the sync and before the list is updated
    /// (where a test rolls the log, as a checkpoint may).
    fn sync_log_then(&self, meanwhile: impl FnOnce()) -> Result<()> {
        let (rolled, current) = {
            let w = self.writer();
            (w.rolled.clone(), w.file.clone())
        };
        let synced = sync_files(rolled.iter().chain([&current]));
        meanwhile();
        let mut w = self.writer();
        w.check_sync(synced)?;
        // Only the segments that were already rolled leave the list: the one that was current
        // may have been rolled meanwhile, its roll record written after this sync.
        w.rolled.retain(|r| !rolled.iter().any(|f| Arc::ptr_eq(f, r)));
        Ok(())
    }

    /// Syncs the log with the writer lock held (no record is being appended), so whatever RocksDB
    /// flushes next points only at synced pages.
    fn sync_locked(&self, w: &mut Writer) -> Result<()> {
        let synced = sync_files(w.rolled.iter().chain([&w.file]));
        w.check_sync(synced)?;
        w.rolled.clear();
        Ok(())
    }

    /// Makes RocksDB's tables hold every record so far, records where replay would start, then
    /// frees what was waiting for that: extents and record headers no replay reads again (as
    /// `punch` says).
    pub(crate) fn checkpoint(&self, punch: Punch) -> Result<()> {
        let _one = self.checkpointing.lock().expect("checkpoint lock");
        // The bulk of the syncing runs while writers go on, until what they add meanwhile is
        // small; the sync under the writer lock then has little left.
        for _ in 0..8 {
            let before = self.writer().next;
            self.sync_log()?;
            if self.writer().next - before <= CHECKPOINT_SYNC_LEFT_BYTES {
                break;
            }
        }
        // The segment appends may move to below, made now (when a roll looks due) so that its
        // directory sync does not hold writers.
        let roll_due = punch == Punch::Sealed && {
            let w = self.writer();
            freed_in(w.next / SEGMENT_BYTES, &w.freed, &w.headers) >= ROLL_FREED_BYTES
        };
        let next_segment = match roll_due {
            false => None,
            true => {
                let next = self.writer().next / SEGMENT_BYTES + 1;
                match self.segments.create(next) {
                    Ok(_) => Some(next),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot make the next data log segment; freed pages of the current one wait");
                        None
                    }
                }
            }
        };
        // With the writer held and the log synced, every memtable is switched out (not yet
        // written): what they hold points only at synced pages, and later records go to new
        // memtables, which no flush touches before the next checkpoint.
        let (freed, headers, applied) = {
            let mut w = self.writer();
            self.sync_locked(&mut w)?;
            let mut switch = rocksdb::FlushOptions::default();
            switch.set_wait(false);
            for cf in Cf::ALL {
                self.db.flush_cf_opt(self.cf(cf), &switch)?;
            }
            w.log_bytes = 0;
            w.ops_bytes = 0;
            w.freed_bytes = 0;
            let (mut freed, mut headers) = (std::mem::take(&mut w.freed), std::mem::take(&mut w.headers));
            if punch == Punch::Sealed {
                self.spare_current_segment(&mut w, next_segment, &mut freed, &mut headers);
            }
            (freed, headers, w.next)
        };
        // Writers go on while the switched memtables are written out; replay may start at
        // `applied` once that and this are durable, and nothing is punched before.
        // On failure the extents taken above stay allocated: the next open scrubs them.
        if let Err(e) = self.wait_for_flushes().and_then(|()| write_applied(self.segments.dir(), applied)) {
            self.leaked.store(true, Ordering::SeqCst);
            return Err(e);
        }
        // Extents still held by values handed out without a copy (on their way to a client)
        // wait for a later checkpoint; after the close's, for the next open's scrub. They do
        // not count towards the next one's being due: a reader that stalls would otherwise
        // make every checkpoint due at once.
        let (freed, held) = self.segments.unpinned(freed);
        if !held.is_empty() {
            self.writer().freed.extend(held);
        }
        let current = applied / SEGMENT_BYTES;
        // Segments left with no live extent go whole; the rest have their freed pages punched,
        // adjacent ranges (a large write's extents and its record header) in one call. The
        // live counts' lock is not held meanwhile: writers take it for every record.
        let gone: Vec<u64> = {
            let mut live = self.live.lock().expect("live extents lock");
            for e in &freed {
                if let Some(n) = live.get_mut(&e.segment()) {
                    *n = n.saturating_sub(1);
                }
            }
            let gone: Vec<u64> = self.segments.list().into_iter().filter(|&seg| seg < current && live.get(&seg).copied().unwrap_or(0) == 0).collect();
            for seg in &gone {
                live.remove(seg);
            }
            gone
        };
        for &seg in &gone {
            self.segments.remove(seg)?;
        }
        let mut ranges: Vec<(u64, u64)> = freed.iter().map(|e| (e.lsn, e.span())).chain(headers).filter(|(lsn, _)| !gone.contains(&(lsn / SEGMENT_BYTES))).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (lsn, len) in ranges {
            match merged.last_mut() {
                Some((at, n)) if *at + *n == lsn && *at / SEGMENT_BYTES == lsn / SEGMENT_BYTES => *n += len,
                _ => merged.push((lsn, len)),
            }
        }
        for (lsn, len) in merged {
            // A page that cannot be punched stays allocated (its extent is dead all the same);
            // the next open scrubs it.
            if let Err(e) = self.segments.punch(lsn, len) {
                if !self.leaked.swap(true, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "freed data log pages stay allocated until the next open");
                }
            }
        }
        Ok(())
    }

    /// Keeps a checkpoint under load from punching the segment appends go to (writer held):
    /// past [`ROLL_FREED_BYTES`] to free there, appends move to `next_segment` (made already)
    /// and the roll record's own page is freed with the rest (`applied` will be past it);
    /// otherwise that segment's freed extents and headers go back to wait for a later checkpoint.
    /// The roll record needs no sync: once `applied` (past it) is durable no replay reads it, and
    /// until then the old segment stays in `w.rolled` for every sync (see [`Self::sync_log`]).
    fn spare_current_segment(&self, w: &mut Writer, next_segment: Option<u64>, freed: &mut Vec<Extent>, headers: &mut Vec<(u64, u64)>) {
        let current = w.next / SEGMENT_BYTES;
        let here = |lsn: u64| lsn / SEGMENT_BYTES == current;
        let in_current = freed_in(current, freed, headers);
        if in_current == 0 {
            return;
        }
        // Not on a broken writer (its file may be past `next`), nor if the writer rolled on its
        // own since `next_segment` was made (the current segment is then almost empty).
        if in_current >= ROLL_FREED_BYTES && w.broken.is_none() && next_segment == Some(current + 1) {
            match self.roll(w) {
                Ok(()) => {
                    headers.append(&mut w.headers);
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot roll the data log; freed pages of the current segment wait"),
            }
        }
        let (now, later): (Vec<Extent>, Vec<Extent>) = freed.drain(..).partition(|e| !here(e.lsn));
        w.freed_bytes += later.iter().map(|e| e.span()).sum::<u64>();
        w.freed.extend(later);
        *freed = now;
        let (now, later): (Vec<(u64, u64)>, Vec<(u64, u64)>) = headers.drain(..).partition(|(lsn, _)| !here(*lsn));
        w.headers.extend(later);
        *headers = now;
    }

    /// Waits until RocksDB has written out every switched memtable (or reports why it cannot).
    fn wait_for_flushes(&self) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            let mut pending = 0;
            for cf in Cf::ALL {
                pending += self.db.property_int_value_cf(self.cf(cf), "rocksdb.num-immutable-mem-table")?.unwrap_or(0);
            }
            if pending == 0 {
                return Ok(());
            }
            if self.db.property_int_value("rocksdb.background-errors")?.unwrap_or(0) > 0 {
                return Err(VolumeError::Storage("RocksDB reports a background error: a memtable flush failed".into()));
            }
            if started.elapsed() > FLUSH_WAIT_LIMIT {
                return Err(VolumeError::Storage(format!("memtable flushes did not finish in {FLUSH_WAIT_LIMIT:?}")));
            }
            std::thread::sleep(FLUSH_POLL);
        }
    }

    /// The live extents of each segment (offset, span), from the pointers in RocksDB.
    fn live_extents(&self) -> Result<BTreeMap<u64, Vec<(u64, u64)>>> {
        let mut extents: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
        let mut it = self.db.raw_iterator_cf_opt(self.cf(Cf::Chunks), total_order());
        it.seek_to_first();
        while let Some(v) = it.value() {
            if let Stored::Logged(e, _) = decode_stored(v)? {
                extents.entry(e.segment()).or_default().push((e.lsn % SEGMENT_BYTES, e.span()));
            }
            it.next();
        }
        it.status()?;
        Ok(extents)
    }

    /// After a crash: punches every page below the log's end that no live extent takes (what
    /// the crash kept from being freed). Runs after a checkpoint, so no replay reads them.
    fn scrub(&self, mut extents: BTreeMap<u64, Vec<(u64, u64)>>) -> Result<()> {
        let end = self.writer().next;
        for seg in self.segments.list() {
            let limit = if seg == end / SEGMENT_BYTES { end % SEGMENT_BYTES } else { SEGMENT_BYTES };
            let mut used = extents.remove(&seg).unwrap_or_default();
            used.sort_unstable();
            let mut at = 0;
            for (offset, span) in used.into_iter().chain([(limit, 0)]) {
                if offset > at {
                    self.segments.punch(seg * SEGMENT_BYTES + at, offset - at)?;
                }
                at = at.max(offset + span);
            }
        }
        Ok(())
    }

    /// Whether `times` the thresholds that bound replay and memory have been reached.
    fn checkpoint_due(w: &Writer, times: u64) -> bool {
        w.log_bytes >= times * CHECKPOINT_LOG_BYTES || w.ops_bytes >= times * CHECKPOINT_OPS_BYTES || w.freed.len() as u64 >= times * CHECKPOINT_FREES as u64
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.crash_on_drop {
            return;
        }
        let checkpoint = self.checkpoint(Punch::All);
        if checkpoint.is_ok() {
            // SAFETY: the database is dropped once, here, and not used after. (Without a
            // checkpoint it is left open: closing would flush memtables that point at log
            // pages not synced, so the process's exit ends it as a crash would.)
            unsafe { ManuallyDrop::drop(&mut self.db) };
        }
        match checkpoint {
            // Pages left to free (held by values still out) are the next open's to find.
            Ok(()) if self.leaked.load(Ordering::SeqCst) || !self.writer().freed.is_empty() => {}
            Ok(()) => {
                let counts = encode_live_counts(&self.live.lock().expect("live extents lock"));
                if let Err(e) = log::write_file(self.segments.dir(), "clean", &counts) {
                    tracing::warn!(error = %e, "volume store closed without its clean marker: the next open scrubs the data log");
                }
            }
            Err(e) => tracing::warn!(error = %e, "volume store closed without a checkpoint: the next open replays the data log"),
        }
    }
}

/// Bytes of freed extents and record headers in segment `seg`.
fn freed_in(seg: u64, freed: &[Extent], headers: &[(u64, u64)]) -> u64 {
    freed.iter().filter(|e| e.segment() == seg).map(|e| e.span()).sum::<u64>() + headers.iter().filter(|(lsn, _)| lsn / SEGMENT_BYTES == seg).map(|(_, n)| n).sum::<u64>()
}

/// Reads across prefixes (the chunk family has a prefix extractor).
fn total_order() -> rocksdb::ReadOptions {
    let mut ro = rocksdb::ReadOptions::default();
    ro.set_total_order_seek(true);
    ro
}

/// The clean marker's contents: live extents per segment (u64 segment, u64 count, each
/// little-endian), sealed with their CRC32C.
fn encode_live_counts(live: &BTreeMap<u64, u64>) -> Vec<u8> {
    log::sealed(live.iter().flat_map(|(seg, n)| seg.to_le_bytes().into_iter().chain(n.to_le_bytes())).collect())
}

/// The counts [`encode_live_counts`] wrote, if the bytes are whole (else the open counts again).
fn decode_live_counts(b: &[u8]) -> Option<BTreeMap<u64, u64>> {
    let body = log::unsealed(b)?;
    if body.len() % 16 != 0 {
        return None;
    }
    Some(body.chunks_exact(16).map(|c| (u64::from_le_bytes(c[..8].try_into().expect("8 bytes")), u64::from_le_bytes(c[8..].try_into().expect("8 bytes")))).collect())
}

/// Where replay starts: every record before it is in RocksDB's tables.
fn read_applied(dir: &Path) -> Result<u64> {
    match std::fs::read(dir.join("applied")) {
        Ok(b) => {
            let lsn = log::unsealed(&b).and_then(|b| <[u8; 8]>::try_from(b).ok()).ok_or_else(|| VolumeError::Storage("datalog/applied is not a position with its checksum".into()))?;
            Ok(u64::from_le_bytes(lsn))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(log::io_error("read datalog/applied", e)),
    }
}

/// Records `lsn` as where replay starts.
fn write_applied(dir: &Path, lsn: u64) -> Result<()> {
    log::write_file(dir, "applied", &log::sealed(lsn.to_le_bytes().to_vec()))
}

/// The record at `lsn`, if it is whole: header, operations and every logged value check out.
/// Returns the header and the operations' bytes (see [`log::decode_ops`]).
fn read_record(segments: &Segments, lsn: u64) -> Result<Option<(Header, Vec<u8>)>> {
    let mut head = [0u8; HEADER_BYTES];
    if !segments.read_at(lsn, &mut head)? {
        return Ok(None);
    }
    let Some(h) = Header::decode(&head).filter(|h| h.lsn == lsn && lsn % SEGMENT_BYTES + h.len() <= SEGMENT_BYTES) else { return Ok(None) };
    if h.roll {
        return Ok(Some((h, Vec::new())));
    }
    let mut ops = vec![0u8; h.ops_len as usize];
    if !segments.read_at(lsn + HEADER_BYTES as u64, &mut ops)? || crc32c::crc32c(&ops) != h.ops_crc {
        return Ok(None);
    }
    let data = lsn + h.data_offset()..lsn + h.len();
    let mut buf = Vec::new();
    for op in log::decode_ops(&ops) {
        let Ok(op) = op else { return Ok(None) };
        if let OpRef::Put { cf: Cf::Chunks, value, .. } = op {
            if let Ok(Stored::Logged(e, _)) = decode_stored(value) {
                let inside = data.contains(&e.lsn) && e.lsn + e.span() <= data.end;
                if !inside || !segments.read_at(e.lsn, buf_of(&mut buf, e))? || crc32c::crc32c(&buf) != e.crc {
                    return Ok(None);
                }
            }
        }
    }
    Ok(Some((h, ops)))
}

fn buf_of(buf: &mut Vec<u8>, e: Extent) -> &mut [u8] {
    buf.clear();
    buf.resize(e.len as usize, 0);
    buf
}

/// Applies every whole record from `applied` on to RocksDB; returns the log's end.
fn replay(db: &DB, segments: &Segments, applied: u64) -> Result<u64> {
    let mut at = applied;
    let mut wo = WriteOptions::default();
    wo.disable_wal(true);
    while let Some((h, ops)) = read_record(segments, at)? {
        if h.roll {
            at = (at / SEGMENT_BYTES + 1) * SEGMENT_BYTES;
            continue;
        }
        let mut wb = WriteBatch::default();
        for op in log::decode_ops(&ops) {
            add_op(db, &mut wb, op?);
        }
        db.write_opt(wb, &wo)?;
        at += h.len();
    }
    if at != applied {
        tracing::info!(from = applied, to = at, "volume store replayed its data log");
    }
    Ok(at)
}

fn add_op(db: &DB, wb: &mut WriteBatch, op: OpRef<'_>) {
    let cf = |cf: Cf| db.cf_handle(cf.name()).expect("column families are created at open");
    match op {
        OpRef::Put { cf: c, key, value } => wb.put_cf(cf(c), key, value),
        OpRef::Delete { cf: c, key } => wb.delete_cf(cf(c), key),
        OpRef::DeleteRange { cf: c, from, to } => wb.delete_range_cf(cf(c), from, to),
    }
}

fn op_ref(op: &Op) -> OpRef<'_> {
    match op {
        Op::Put { cf, key, value } => OpRef::Put { cf: *cf, key, value },
        Op::Delete { cf, key } => OpRef::Delete { cf: *cf, key },
        Op::DeleteRange { cf, from, to } => OpRef::DeleteRange { cf: *cf, from, to },
    }
}

/// Cuts the log at `end`: the segment holding it is truncated there and later ones removed, so
/// nothing half-written or past a lost record is ever read again. Returns the segment to
/// append to, positioned at `end`.
fn cut_log(segments: &Segments, end: u64) -> Result<Arc<File>> {
    let seg = end / SEGMENT_BYTES;
    for later in segments.list().into_iter().filter(|&s| s > seg) {
        segments.remove(later)?;
    }
    let file = segments.create(seg)?;
    let offset = end % SEGMENT_BYTES;
    let cut = || -> std::io::Result<()> {
        if file.metadata()?.len() != offset {
            file.set_len(offset)?;
            file.sync_all()?;
        }
        (&*file).seek(SeekFrom::Start(offset))?;
        Ok(())
    };
    cut().map_err(|e| log::io_error("cut the data log at its end", e))?;
    log::sync_dir(segments.dir())?;
    Ok(file)
}

impl Kv for Engine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(stored) = self.db.get_pinned_cf(self.cf(cf), key)? else { return Ok(None) };
        let mut buf = Vec::new();
        Ok(Some(self.resolve(cf, &stored, &mut buf)?.to_vec()))
    }

    fn seek(&self, cf: Cf, from: &[u8], how: Seek, verify: Verify, found: &mut dyn FnMut(&[u8], &[u8])) -> Result<bool> {
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), self.seek_options(cf, from, how, verify));
        it.seek(from);
        match (it.key(), it.value()) {
            (Some(k), Some(v)) if verify == Verify::Presence => {
                found(k, v);
                Ok(true)
            }
            (Some(k), Some(v)) => READ_BUFFER.with(|b| {
                // The thread's buffer, unless a caller reads again from inside `found`.
                let (mut kept, mut fresh) = (b.try_borrow_mut().ok(), Vec::new());
                let buf = kept.as_deref_mut().unwrap_or(&mut fresh);
                found(k, self.resolve(cf, v, buf)?);
                Ok(true)
            }),
            _ => {
                it.status()?;
                Ok(false)
            }
        }
    }

    fn seek_into(&self, cf: Cf, from: &[u8], how: Seek, wanted: &mut dyn FnMut(&[u8]) -> bool, dest: &mut [u8]) -> Result<Option<usize>> {
        self.seek_stored(cf, from, how, wanted, |stored| match stored {
            Stored::Empty => Ok(0),
            Stored::Inline(v) => super::copy_into(v, dest),
            Stored::Logged(e, tail) => self.segments.read_value_into(e, tail, dest),
        })
    }

    fn seek_shared(&self, cf: Cf, from: &[u8], how: Seek, wanted: &mut dyn FnMut(&[u8]) -> bool) -> Result<Option<(Bytes, Bytes)>> {
        self.seek_stored(cf, from, how, wanted, |stored| match stored {
            Stored::Empty => Ok((Bytes::new(), Bytes::new())),
            Stored::Inline(v) => Ok((Bytes::copy_from_slice(v), Bytes::new())),
            Stored::Logged(e, tail) => self.segments.shared_value(e, tail),
        })
    }

    fn scan<'a>(&'a self, cf: Cf, from: &[u8]) -> Scan<'a> {
        let it = self.db.iterator_cf_opt(self.cf(cf), total_order(), IteratorMode::From(from, Direction::Forward));
        Box::new(it.map(move |item| {
            let (k, v) = item?;
            if cf != Cf::Chunks {
                return Ok((k, v));
            }
            let mut buf = Vec::new();
            let v: Box<[u8]> = self.resolve(cf, &v, &mut buf)?.into();
            Ok((k, v))
        }))
    }

    fn scan_presence<'a>(&'a self, cf: Cf, from: &[u8]) -> Box<dyn Iterator<Item = Result<(Box<[u8]>, bool)>> + 'a> {
        let it = self.db.iterator_cf_opt(self.cf(cf), total_order(), IteratorMode::From(from, Direction::Forward));
        // A stored value is empty exactly when the value is (log::stored_inline).
        Box::new(it.map(|item| item.map(|(k, v)| (k, !v.is_empty())).map_err(Into::into)))
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        let crcs = self.data_crcs(&batch);
        let mut w = self.writer();
        if let Some(why) = &w.broken {
            return Err(VolumeError::Storage(format!("the data log takes no more writes: {why}")));
        }
        let (data_len, ops_len) = self.sizes(&batch);
        let head_len = pages(HEADER_BYTES as u64 + ops_len);
        let len = head_len + data_len;
        if len > MAX_RECORD_BYTES || ops_len > log::MAX_OPS_BYTES {
            return Err(VolumeError::TooLarge { what: "a write batch's log record", got: len, max: MAX_RECORD_BYTES });
        }
        if w.next % SEGMENT_BYTES + len + PAGE_BYTES > SEGMENT_BYTES {
            self.roll(&mut w)?;
        }
        let lsn = w.next;
        let rec = self.record(batch, lsn + head_len, crcs)?;
        let ops = log::encode_ops(&rec.ops);
        debug_assert_eq!(ops.len() as u64, ops_len, "sizes() counts what encode_ops writes");
        let header = Header { roll: false, ops_len: ops.len() as u32, ops_crc: crc32c::crc32c(&ops), data_len, lsn }.encode();
        let mut parts = vec![IoSlice::new(&header), IoSlice::new(&ops), IoSlice::new(&ZEROS[..(head_len - HEADER_BYTES as u64 - ops_len) as usize])];
        for d in &rec.data {
            parts.push(IoSlice::new(d));
            parts.push(IoSlice::new(&ZEROS[..(pages(d.len() as u64) - d.len() as u64) as usize]));
        }
        self.append_or_undo(&mut w, &parts)?;
        drop(parts);
        if w.ops_bytes + ops_len > SYNC_BEFORE_APPLY_OPS_BYTES {
            // Not applied yet: after a failed sync the record is in the log only, and the
            // writer is broken (a restart's replay decides).
            self.sync_locked(&mut w)?;
        }
        let mut wb = WriteBatch::default();
        for op in &rec.ops {
            add_op(&self.db, &mut wb, op_ref(op));
        }
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        if let Err(e) = self.db.write_opt(wb, &wo) {
            // The log holds a record RocksDB does not: only a replay can bring them together.
            w.broken = Some(format!("RocksDB refused a logged batch: {e}"));
            return Err(e.into());
        }
        w.next = lsn + len;
        w.log_bytes += len;
        w.ops_bytes += ops_len;
        w.headers.push((lsn, head_len));
        w.freed_bytes += rec.freed.iter().map(Extent::span).sum::<u64>();
        w.freed.extend(rec.freed);
        {
            let mut live = self.live.lock().expect("live extents lock");
            for e in &rec.written {
                *live.entry(e.segment()).or_default() += 1;
            }
        }
        if w.next - w.writeback_from >= WAL_BYTES_PER_SYNC {
            let from = w.writeback_from % SEGMENT_BYTES;
            log::start_writeback(&w.file, from, w.next % SEGMENT_BYTES - from);
            w.writeback_from = w.next;
        }
        let due = Self::checkpoint_due(&w, 1) || w.freed_bytes >= CHECKPOINT_FREED_BYTES;
        let overdue = Self::checkpoint_due(&w, CHECKPOINT_OVERDUE);
        self.sequence.fetch_add(1, Ordering::SeqCst);
        drop(w);
        if durability == Durability::Synced {
            self.sync_log()?;
        }
        if overdue {
            // The checkpoint thread has fallen behind: this write waits for one, so the
            // memtables never fill (RocksDB would flush them on its own). The write itself
            // has landed whatever the checkpoint's fate.
            if let Err(e) = self.checkpoint(Punch::Sealed) {
                tracing::warn!(error = %e, "data log checkpoint failed; the next write that finds one due retries");
            }
        } else if due {
            self.wake.set(true, false);
        }
        Ok(())
    }

    fn sequence(&self) -> u64 {
        self.sequence.load(Ordering::SeqCst)
    }

    fn sync_wal(&self) -> Result<()> {
        self.sync_log()
    }

    fn disk_bytes(&self, cf: Cf) -> Result<u64> {
        let mut total = self.db.property_int_value_cf(self.cf(cf), "rocksdb.total-sst-files-size")?.unwrap_or(0);
        if cf == Cf::Chunks {
            total += self.segments.disk_bytes()?;
        }
        Ok(total)
    }

    fn flush(&self, _cf: Cf) -> Result<()> {
        self.checkpoint(Punch::All)
    }

    fn compact(&self, cf: Cf) -> Result<()> {
        self.checkpoint(Punch::All)?;
        // A compaction first flushes the memtable: with the writer held and the log synced, it
        // holds only pointers to synced pages.
        let mut w = self.writer();
        self.sync_locked(&mut w)?;
        self.db.compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }
}

/// Every call goes to the shared engine.
impl Kv for RocksKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.engine.get(cf, key)
    }

    fn seek(&self, cf: Cf, from: &[u8], how: Seek, verify: Verify, found: &mut dyn FnMut(&[u8], &[u8])) -> Result<bool> {
        self.engine.seek(cf, from, how, verify, found)
    }

    fn seek_into(&self, cf: Cf, from: &[u8], how: Seek, wanted: &mut dyn FnMut(&[u8]) -> bool, dest: &mut [u8]) -> Result<Option<usize>> {
        self.engine.seek_into(cf, from, how, wanted, dest)
    }

    fn seek_shared(&self, cf: Cf, from: &[u8], how: Seek, wanted: &mut dyn FnMut(&[u8]) -> bool) -> Result<Option<(Bytes, Bytes)>> {
        self.engine.seek_shared(cf, from, how, wanted)
    }

    fn join_shared(&self, pieces: Vec<Bytes>) -> Vec<Bytes> {
        self.engine.segments.join_shared(pieces)
    }

    fn scan<'a>(&'a self, cf: Cf, from: &[u8]) -> Scan<'a> {
        self.engine.scan(cf, from)
    }

    fn scan_presence<'a>(&'a self, cf: Cf, from: &[u8]) -> Box<dyn Iterator<Item = Result<(Box<[u8]>, bool)>> + 'a> {
        self.engine.scan_presence(cf, from)
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        self.engine.write(batch, durability)
    }

    fn sequence(&self) -> u64 {
        self.engine.sequence()
    }

    fn sync_wal(&self) -> Result<()> {
        self.engine.sync_wal()
    }

    fn disk_bytes(&self, cf: Cf) -> Result<u64> {
        self.engine.disk_bytes(cf)
    }

    fn flush(&self, cf: Cf) -> Result<()> {
        self.engine.flush(cf)
    }

    fn compact(&self, cf: Cf) -> Result<()> {
        self.engine.compact(cf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_counts_read_back_and_damaged_ones_are_refused() {
        let counts: BTreeMap<u64, u64> = [(0, 7), (3, 1 << 40)].into();
        let b = encode_live_counts(&counts);
        assert_eq!(decode_live_counts(&b), Some(counts));
        assert_eq!(decode_live_counts(&encode_live_counts(&BTreeMap::new())), Some(BTreeMap::new()));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 1;
            assert_eq!(decode_live_counts(&c), None, "byte {i} flipped");
        }
        assert_eq!(decode_live_counts(&b[..b.len() - 1]), None);
        assert_eq!(decode_live_counts(&[]), None);
    }
}
