//! The data log: [`super::RocksKv`]'s write-ahead log, which also holds the file data.
//!
//! Why a log of our own: with RocksDB's WAL, every byte written to a file reached the disk
//! twice, once in the WAL and again in a blob file when the memtable was flushed (half of a
//! write's CPU and disk time, measured in docs/benchmarks.md). Here each batch is appended to
//! this log as one record: its operations, then the large chunk values at page-aligned places.
//! RocksDB gets the batch with its own WAL off and each large value replaced by a pointer to
//! where it lies in the log ([`Extent`]). The data is written once; RocksDB holds keys and
//! pointers. (The WiscKey design, with the value log serving as the WAL.)
//!
//! This module is the log's format and files, without policy: records ([`Header`] and
//! [`encode_ops`]/[`decode_ops`]), the values RocksDB holds for chunks ([`Stored`]) and the
//! segment files ([`Segments`]). The engine (rocks.rs) decides when to append, sync, replay,
//! checkpoint and punch.
//!
//! A record at log position `lsn` (a multiple of [`PAGE_BYTES`]):
//! - a [`HEADER_BYTES`] header: magic, kind, the operations' length and CRC32C, the data's
//!   length, its own position, and the header's CRC32C;
//! - the operations, then zeros up to the next page;
//! - the data: each large value at its own page, zero-padded to whole pages.
//!
//! Reads that send a value on (the volume service's Read to another node) take it from the
//! segment's read-only mapping instead of copying it out of the page cache
//! ([`Segments::shared_value`]): the bytes go from the page cache to the socket once. Such a
//! value pins its extent until it is dropped, and a checkpoint does not punch a pinned extent
//! (its pages would read as zeros under a reply still on its way).
//!
//! The log is cut into segment files of [`SEGMENT_BYTES`]; a position names its segment and its
//! offset in it. A record that does not fit in what is left of a segment is preceded by a roll
//! record there, and starts the next segment. Replay ends at the first record whose header,
//! operations or data fail their checks: what a crash left half-written, or a power loss kept
//! only in part, is never applied, and what follows it is cut off.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};

use super::{Cf, Op};
use crate::volume::error::{Result, VolumeError};

/// The unit of the log's layout: records and data extents start on page boundaries, so a freed
/// extent's pages can be punched out of its file.
pub(super) const PAGE_BYTES: u64 = 4096;

/// Bytes of one segment file (small in unit tests, so they cross segments).
#[cfg(not(test))]
pub(super) const SEGMENT_BYTES: u64 = 1 << 30;
#[cfg(test)]
pub(super) const SEGMENT_BYTES: u64 = 32 << 20;

/// Bytes of a record's header.
pub(super) const HEADER_BYTES: usize = 32;

/// The most one record's operations may take (keys, small values, pointers).
pub(super) const MAX_OPS_BYTES: u64 = 256 << 20;

/// The largest record: it must fit in a segment with the roll record after it.
pub(super) const MAX_RECORD_BYTES: u64 = SEGMENT_BYTES - PAGE_BYTES;

const MAGIC: u32 = 0x4C42_4D55; // "UMBL"
const KIND_BATCH: u8 = 1;
const KIND_ROLL: u8 = 2;

/// `n` rounded up to whole pages.
pub(super) fn pages(n: u64) -> u64 {
    n.div_ceil(PAGE_BYTES) * PAGE_BYTES
}

/// Where a value lies in the log, with the CRC32C of its bytes (checked by replay).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Extent {
    pub lsn: u64,
    pub len: u32,
    pub crc: u32,
}

impl Extent {
    pub fn segment(&self) -> u64 {
        self.lsn / SEGMENT_BYTES
    }

    /// The bytes it takes in its segment file (whole pages).
    pub fn span(&self) -> u64 {
        pages(u64::from(self.len))
    }
}

/// `bytes` followed by their CRC32C (little-endian): the form of a stored chunk and of the
/// data log's small files (`applied`, `clean`).
pub(crate) fn sealed(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// The bytes [`sealed`] wrapped, if their CRC32C checks out.
pub(crate) fn unsealed(b: &[u8]) -> Option<&[u8]> {
    let (bytes, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
    (crc32c::crc32c(bytes).to_le_bytes() == crc).then_some(bytes)
}

/// Replaces `dir/name` with `bytes`, durably: a new file synced, renamed over the old one, and
/// the directory synced.
pub(super) fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.new"));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    };
    write().map_err(|e| io_error(&format!("write datalog/{name}"), e))?;
    sync_dir(dir)
}

/// A chunk column family value as RocksDB holds it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stored<'a> {
    /// The empty value (a hole), stored as is.
    Empty,
    /// A small value, in RocksDB after a tag byte.
    Inline(&'a [u8]),
    /// A large value: whole pages of it in the log, and its last few bytes (up to
    /// [`MAX_TAIL_BYTES`]) beside the pointer, so a page-sized chunk with its 4-byte checksum
    /// takes its pages and no more.
    Logged(Extent, &'a [u8]),
}

/// The most bytes past a large value's last whole page kept beside its pointer rather than
/// in a page of their own.
pub(super) const MAX_TAIL_BYTES: usize = 64;

/// How many of a large value's last bytes stay beside its pointer.
pub(super) fn tail_len(len: usize) -> usize {
    match len % PAGE_BYTES as usize {
        t if t <= MAX_TAIL_BYTES && len > t => t,
        _ => 0,
    }
}

const TAG_INLINE: u8 = 0;
const TAG_LOGGED: u8 = 1;
/// Bytes of a stored pointer without its tail: tag, position, length, CRC32C.
pub(super) const POINTER_BYTES: usize = 1 + 8 + 4 + 4;

pub(super) fn stored_inline(value: &[u8]) -> Vec<u8> {
    if value.is_empty() {
        return Vec::new();
    }
    let mut v = Vec::with_capacity(1 + value.len());
    v.push(TAG_INLINE);
    v.extend_from_slice(value);
    v
}

pub(super) fn stored_pointer(e: Extent, tail: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(POINTER_BYTES + tail.len());
    v.push(TAG_LOGGED);
    v.extend_from_slice(&e.lsn.to_le_bytes());
    v.extend_from_slice(&e.len.to_le_bytes());
    v.extend_from_slice(&e.crc.to_le_bytes());
    v.extend_from_slice(tail);
    v
}

pub(super) fn decode_stored(v: &[u8]) -> Result<Stored<'_>> {
    match v.split_first() {
        None => Ok(Stored::Empty),
        Some((&TAG_INLINE, rest)) => Ok(Stored::Inline(rest)),
        Some((&TAG_LOGGED, rest)) if (POINTER_BYTES - 1..POINTER_BYTES + MAX_TAIL_BYTES).contains(&rest.len()) => {
            let e = Extent {
                lsn: u64::from_le_bytes(rest[0..8].try_into().expect("8 bytes")),
                len: u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")),
                crc: u32::from_le_bytes(rest[12..16].try_into().expect("4 bytes")),
            };
            Ok(Stored::Logged(e, &rest[16..]))
        }
        Some((tag, _)) => Err(VolumeError::Storage(format!("a stored chunk value has an unknown form (tag {tag}, {} bytes)", v.len()))),
    }
}

/// A record's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub roll: bool,
    pub ops_len: u32,
    pub ops_crc: u32,
    pub data_len: u64,
    pub lsn: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = if self.roll { KIND_ROLL } else { KIND_BATCH };
        b[8..12].copy_from_slice(&self.ops_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.ops_crc.to_le_bytes());
        // Data bytes are whole pages: their count in pages fits in four bytes.
        b[16..20].copy_from_slice(&((self.data_len / PAGE_BYTES) as u32).to_le_bytes());
        b[20..28].copy_from_slice(&self.lsn.to_le_bytes());
        let crc = crc32c::crc32c(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The header in `b`, if it is one (magic, kind and CRC32C check out).
    pub fn decode(b: &[u8; HEADER_BYTES]) -> Option<Header> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        if u32_at(0) != MAGIC || crc32c::crc32c(&b[..28]) != u32_at(28) {
            return None;
        }
        let roll = match b[4] {
            KIND_BATCH => false,
            KIND_ROLL => true,
            _ => return None,
        };
        let h = Header { roll, ops_len: u32_at(8), ops_crc: u32_at(12), data_len: u64::from(u32_at(16)) * PAGE_BYTES, lsn: u64::from_le_bytes(b[20..28].try_into().expect("8 bytes")) };
        (u64::from(h.ops_len) <= MAX_OPS_BYTES && h.len() <= MAX_RECORD_BYTES).then_some(h)
    }

    /// Bytes from the record's start to its data: header and operations, whole pages.
    pub fn data_offset(&self) -> u64 {
        pages(HEADER_BYTES as u64 + u64::from(self.ops_len))
    }

    /// Bytes of the whole record.
    pub fn len(&self) -> u64 {
        self.data_offset() + self.data_len
    }
}

/// Bytes `op` takes in a record's operations (see [`encode_ops`]).
pub(super) fn encoded_len(op: &Op) -> usize {
    2 + match op {
        Op::Put { key, value, .. } => 8 + key.len() + value.len(),
        Op::Delete { key, .. } => 4 + key.len(),
        Op::DeleteRange { from, to, .. } => 8 + from.len() + to.len(),
    }
}

/// A record's operations: per operation a kind byte, the column family's index, then each
/// byte string as a little-endian u32 length and its bytes.
pub(super) fn encode_ops(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ops.iter().map(encoded_len).sum());
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    for op in ops {
        match op {
            Op::Put { cf, key, value } => {
                out.extend_from_slice(&[0, cf.index() as u8]);
                bytes(&mut out, key);
                bytes(&mut out, value);
            }
            Op::Delete { cf, key } => {
                out.extend_from_slice(&[1, cf.index() as u8]);
                bytes(&mut out, key);
            }
            Op::DeleteRange { cf, from, to } => {
                out.extend_from_slice(&[2, cf.index() as u8]);
                bytes(&mut out, from);
                bytes(&mut out, to);
            }
        }
    }
    out
}

/// One operation of a record, borrowed from the record's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpRef<'a> {
    Put { cf: Cf, key: &'a [u8], value: &'a [u8] },
    Delete { cf: Cf, key: &'a [u8] },
    DeleteRange { cf: Cf, from: &'a [u8], to: &'a [u8] },
}

#[cfg(test)]
impl OpRef<'_> {
    pub fn to_op(self) -> Op {
        match self {
            OpRef::Put { cf, key, value } => Op::Put { cf, key: key.to_vec(), value: value.to_vec() },
            OpRef::Delete { cf, key } => Op::Delete { cf, key: key.to_vec() },
            OpRef::DeleteRange { cf, from, to } => Op::DeleteRange { cf, from: from.to_vec(), to: to.to_vec() },
        }
    }
}

/// The operations [`encode_ops`] wrote, borrowed from `b` (nothing is allocated per operation);
/// every length is checked against what is left. After an error it yields nothing more.
pub(super) fn decode_ops(b: &[u8]) -> DecodeOps<'_> {
    DecodeOps { rest: b }
}

pub(super) struct DecodeOps<'a> {
    rest: &'a [u8],
}

impl<'a> DecodeOps<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }

    fn op(&mut self) -> Result<OpRef<'a>> {
        let corrupt = |what: &str| VolumeError::Storage(format!("a data log record's operations are corrupt: {what}"));
        let head = self.take(2).ok_or_else(|| corrupt("a truncated operation"))?;
        let cf = *Cf::ALL.get(usize::from(head[1])).ok_or_else(|| corrupt("an unknown column family"))?;
        Ok(match head[0] {
            0 => {
                let key = self.bytes().ok_or_else(|| corrupt("a truncated key"))?;
                let value = self.bytes().ok_or_else(|| corrupt("a truncated value"))?;
                OpRef::Put { cf, key, value }
            }
            1 => OpRef::Delete { cf, key: self.bytes().ok_or_else(|| corrupt("a truncated key"))? },
            2 => {
                let from = self.bytes().ok_or_else(|| corrupt("a truncated range"))?;
                let to = self.bytes().ok_or_else(|| corrupt("a truncated range"))?;
                OpRef::DeleteRange { cf, from, to }
            }
            _ => return Err(corrupt("an unknown operation")),
        })
    }
}

impl<'a> Iterator for DecodeOps<'a> {
    type Item = Result<OpRef<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let op = self.op();
        if op.is_err() {
            self.rest = &[];
        }
        Some(op)
    }
}

/// The log's segment files in one directory, open for reading by position.
pub(super) struct Segments {
    dir: PathBuf,
    open: RwLock<BTreeMap<u64, Segment>>,
    pins: Arc<Pins>,
}

/// A segment file and, once a value is first handed out from it without a copy
/// ([`Segments::shared_value`]), its pages mapped read-only (`None` if the mapping failed:
/// such reads then copy). Mappings are as many as segment files, whose descriptors are held
/// open anyway; each takes [`SEGMENT_BYTES`] of address space, not of memory.
struct Segment {
    file: Arc<File>,
    map: OnceLock<Option<Arc<Mmap>>>,
}

impl Segment {
    fn new(file: File) -> Segment {
        Segment { file: Arc::new(file), map: OnceLock::new() }
    }

    fn mapping(&self) -> Option<Arc<Mmap>> {
        self.map
            .get_or_init(|| {
                // SAFETY: the mapping is only read, and only where a published extent lies.
                // The log is append-only: an extent's pages are written before its pointer
                // is published and never again; they are punched (read as zeros) only once no
                // pin holds them ([`Pins`]); a segment file is cut only past its published end
                // (a failed append's undo, and the open's cut before any read), so a read
                // never reaches past the file's end (which would raise SIGBUS; `shared_value`
                // also checks the length). No other process writes the data log.
                // A whole chunk handed out for a Read is not checked in this process: the
                // kernel copies it from the mapping into the reply's socket, and the node that
                // asked checks its CRC32C (`umbra_proto::checks`). So a page the disk fails to
                // give back fails that send (EFAULT), and one given back wrong fails the check
                // where the bytes are used. Not guarded against: the bytes this process does
                // read through the mapping, where a page the disk fails to give back raises
                // SIGBUS, which ends the node (through `pread` it is one failed read). Those
                // are the first 256 bytes at most of each HTTP/2 DATA frame of a Read over
                // HTTP/2 (h2 copies them to fill its write buffer; a gateway's reads go as
                // short calls, whose chunks are written from the mapping untouched), a value
                // checked here (a chunk stored in a form other than data then checksum), and a
                // read in this process through the volume service.
                match unsafe { MmapOptions::new().len(SEGMENT_BYTES as usize).map(&*self.file) } {
                    Ok(m) => Some(Arc::new(m)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot map a data log segment; reads from it copy");
                        None
                    }
                }
            })
            .clone()
    }
}

/// Extents handed out as mapped bytes and not yet dropped, counted by log position: a
/// checkpoint leaves their pages alone (unpunched) until the last is dropped.
#[derive(Default)]
pub(super) struct Pins(Mutex<HashMap<u64, u32>>);

impl Pins {
    fn pin(&self, lsn: u64) {
        *self.0.lock().expect("pins lock").entry(lsn).or_insert(0) += 1;
    }

    fn unpin(&self, lsn: u64) {
        let mut pins = self.0.lock().expect("pins lock");
        if let Some(n) = pins.get_mut(&lsn) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&lsn);
            }
        }
    }
}

/// A slice of a segment's mapping: the owner of the [`Bytes`] that [`Segments::shared_value`]
/// and [`Segments::join_shared`] hand out.
struct Mapped {
    map: Arc<Mmap>,
    at: usize,
    len: usize,
    holds: Holds,
}

/// What keeps a [`Mapped`]'s bytes as they are.
enum Holds {
    /// One value: its extent's pin, let go on drop.
    Pin { lsn: u64, pins: Arc<Pins> },
    /// Adjacent values joined: the pieces, each with its pin.
    Pieces { _kept: Vec<Bytes> },
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.at..self.at + self.len]
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if let Holds::Pin { lsn, pins } = &self.holds {
            pins.unpin(*lsn);
        }
    }
}

/// Pieces that lie one after the other in `map`, as one (holding them, and so their pins).
fn joined(map: &Arc<Mmap>, mut parts: Vec<Bytes>) -> Bytes {
    if parts.len() == 1 {
        return parts.pop().expect("one part");
    }
    let at = parts[0].as_ptr() as usize - map.as_ptr() as usize;
    let len = parts.iter().map(Bytes::len).sum();
    Bytes::from_owner(Mapped { map: map.clone(), at, len, holds: Holds::Pieces { _kept: parts } })
}

impl Segments {
    /// The segments under `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Segments> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create the data log directory", e))?;
        let mut open = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_error("list the data log", e))? {
            let name = entry.map_err(|e| io_error("list the data log", e))?.file_name();
            let Some(seg) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| u64::from_str_radix(n, 16).ok()) else { continue };
            let file = OpenOptions::new().read(true).write(true).open(dir.join(&name)).map_err(|e| io_error("open a data log segment", e))?;
            open.insert(seg, Segment::new(file));
        }
        Ok(Segments { dir: dir.to_path_buf(), open: RwLock::new(open), pins: Arc::default() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, seg: u64) -> PathBuf {
        self.dir.join(format!("{seg:016x}.log"))
    }

    /// Segment `seg`, if it exists.
    pub fn get(&self, seg: u64) -> Option<Arc<File>> {
        self.open.read().expect("segments lock").get(&seg).map(|s| s.file.clone())
    }

    /// `extents` split into those no value handed out without a copy holds, and those held.
    pub fn unpinned(&self, extents: Vec<Extent>) -> (Vec<Extent>, Vec<Extent>) {
        let pins = self.pins.0.lock().expect("pins lock");
        extents.into_iter().partition(|e| !pins.contains_key(&e.lsn))
    }

    /// Segment numbers, in order.
    pub fn list(&self) -> Vec<u64> {
        self.open.read().expect("segments lock").keys().copied().collect()
    }

    /// Segment `seg`, created empty if missing (and the directory synced, so it stays).
    pub fn create(&self, seg: u64) -> Result<Arc<File>> {
        if let Some(f) = self.get(seg) {
            return Ok(f);
        }
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(self.path(seg)).map_err(|e| io_error("create a data log segment", e))?;
        sync_dir(&self.dir)?;
        let segment = Segment::new(file);
        let file = segment.file.clone();
        self.open.write().expect("segments lock").insert(seg, segment);
        Ok(file)
    }

    /// Removes segment `seg`.
    pub fn remove(&self, seg: u64) -> Result<()> {
        self.open.write().expect("segments lock").remove(&seg);
        match std::fs::remove_file(self.path(seg)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove a data log segment", e)),
        }
    }

    /// Fills `buf` from log position `lsn`; false if the log ends before.
    pub fn read_at(&self, lsn: u64, buf: &mut [u8]) -> Result<bool> {
        let Some(file) = self.get(lsn / SEGMENT_BYTES) else { return Ok(false) };
        match file.read_exact_at(buf, lsn % SEGMENT_BYTES) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(io_error("read the data log", e)),
        }
    }

    /// The value whose head is at `e` and whose last bytes are `tail` (the head must be there),
    /// read into the front of `buf`, which only ever grows: a buffer kept between reads is
    /// neither allocated nor zeroed again.
    pub fn read_value<'b>(&self, e: Extent, tail: &[u8], buf: &'b mut Vec<u8>) -> Result<&'b [u8]> {
        let n = e.len as usize + tail.len();
        if buf.len() < n {
            buf.resize(n, 0);
        }
        let n = self.read_value_into(e, tail, buf)?;
        Ok(&buf[..n])
    }

    /// The value whose head is at `e` and whose last bytes are `tail`, read straight into the
    /// front of `dest`; its length.
    pub fn read_value_into(&self, e: Extent, tail: &[u8], dest: &mut [u8]) -> Result<usize> {
        let (head, n) = (e.len as usize, e.len as usize + tail.len());
        let room = dest.len();
        let dest = dest.get_mut(..n).ok_or(VolumeError::TooLarge { what: "a stored value", got: n as u64, max: room as u64 })?;
        if !self.read_at(e.lsn, &mut dest[..head])? {
            return Err(VolumeError::Storage(format!("the data log ends before a stored value at {} ({} bytes)", e.lsn, e.len)));
        }
        dest[head..].copy_from_slice(tail);
        Ok(n)
    }

    /// The value whose head is at `e` and whose last bytes are `tail`, as its head and its
    /// tail: the head a slice of the segment's mapping (no copy; its extent pinned until the
    /// last clone of it is dropped), or read into a buffer where the segment has no mapping.
    pub fn shared_value(&self, e: Extent, tail: &[u8]) -> Result<(Bytes, Bytes)> {
        let (seg, at, len) = (e.segment(), (e.lsn % SEGMENT_BYTES) as usize, e.len as usize);
        let Some((file, map)) = self.open.read().expect("segments lock").get(&seg).map(|s| (s.file.clone(), s.mapping())) else {
            return Err(VolumeError::Storage(format!("a stored value at {} lies in a data log segment that is gone", e.lsn)));
        };
        let Some(map) = map else {
            let mut buf = Vec::new();
            let value = self.read_value(e, tail, &mut buf)?.len();
            buf.truncate(value);
            return Ok((Bytes::from(buf), Bytes::new()));
        };
        // A pointer past the file's end (a damaged one) is an error, not a SIGBUS.
        let file_len = file.metadata().map_err(|err| io_error("stat a data log segment", err))?.len();
        if (at + len) as u64 > file_len.min(SEGMENT_BYTES) {
            return Err(VolumeError::Storage(format!("the data log ends before a stored value at {} ({} bytes)", e.lsn, e.len)));
        }
        self.pins.pin(e.lsn);
        let head = Bytes::from_owner(Mapped { map, at, len, holds: Holds::Pin { lsn: e.lsn, pins: self.pins.clone() } });
        Ok((head, Bytes::copy_from_slice(tail)))
    }

    /// `pieces` with each run of values handed out by [`Self::shared_value`] that lie one after
    /// the other in one segment's mapping made one piece (which keeps their pins), so chunks
    /// written together are read as one buffer and go out as one.
    pub fn join_shared(&self, pieces: Vec<Bytes>) -> Vec<Bytes> {
        let maps: Vec<Arc<Mmap>> = self.open.read().expect("segments lock").values().filter_map(|s| s.map.get().cloned().flatten()).collect();
        let map_of = |b: &Bytes| {
            let p = b.as_ptr() as usize;
            maps.iter().find(|m| !b.is_empty() && p >= m.as_ptr() as usize && p + b.len() <= m.as_ptr() as usize + m.len())
        };
        let mut out = Vec::with_capacity(pieces.len());
        let mut run: Option<(&Arc<Mmap>, Vec<Bytes>)> = None;
        for piece in pieces {
            let map = map_of(&piece);
            let follows = match (&run, map) {
                (Some((m, parts)), Some(map)) => Arc::ptr_eq(m, map) && parts.last().is_some_and(|last| last.as_ptr() as usize + last.len() == piece.as_ptr() as usize),
                _ => false,
            };
            if !follows {
                out.extend(run.take().map(|(m, parts)| joined(m, parts)));
            }
            match (map, &mut run) {
                (Some(_), Some((_, parts))) => parts.push(piece),
                (Some(m), None) => run = Some((m, vec![piece])),
                (None, _) => out.push(piece),
            }
        }
        out.extend(run.map(|(m, parts)| joined(m, parts)));
        out
    }

    /// Gives the pages of `len` bytes at `lsn` back to the filesystem (the file keeps its size).
    pub fn punch(&self, lsn: u64, len: u64) -> Result<()> {
        let Some(file) = self.get(lsn / SEGMENT_BYTES) else { return Ok(()) };
        punch_hole(&file, lsn % SEGMENT_BYTES, len)
    }

    /// Bytes the segments take on disk (allocated blocks).
    pub fn disk_bytes(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let files: Vec<Arc<File>> = self.open.read().expect("segments lock").values().map(|s| s.file.clone()).collect();
        let mut total = 0;
        for f in files {
            total += f.metadata().map_err(|e| io_error("stat a data log segment", e))?.blocks() * 512;
        }
        Ok(total)
    }
}

pub(super) fn io_error(what: &str, e: io::Error) -> VolumeError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        VolumeError::DiskFull(format!("{what}: {e}"))
    } else {
        VolumeError::Storage(format!("{what}: {e}"))
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error("sync the data log directory", e))
}

fn punch_hole(file: &File, offset: u64, len: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on a file descriptor this `File` owns; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset as libc::off_t, len as libc::off_t) };
    if rc != 0 {
        return Err(io_error("free data log pages", io::Error::last_os_error()));
    }
    Ok(())
}

/// Starts the writeback of `len` bytes at `offset` without waiting for it, so a later sync finds
/// little left to write.
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on a file descriptor this `File` owns; no memory is passed. A
    // failure only means the later sync does the work.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_header_reads_back_and_any_flipped_bit_is_refused() {
        let h = Header { roll: false, ops_len: 77, ops_crc: 0xdead_beef, data_len: 3 * PAGE_BYTES, lsn: 5 * SEGMENT_BYTES + 8 * PAGE_BYTES };
        let b = h.encode();
        assert_eq!(Header::decode(&b), Some(h));
        assert_eq!(h.data_offset(), PAGE_BYTES);
        assert_eq!(h.len(), 4 * PAGE_BYTES);
        for bit in 0..HEADER_BYTES * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Header::decode(&c), None, "bit {bit}");
        }
        assert_eq!(Header::decode(&[0; HEADER_BYTES]), None, "zeros (a punched or unwritten page)");
    }

    #[test]
    fn stored_values_read_back() {
        let e = Extent { lsn: 1 << 40, len: 65540, crc: 7 };
        assert_eq!(decode_stored(&stored_pointer(e, b"")).unwrap(), Stored::Logged(e, b""));
        assert_eq!(decode_stored(&stored_pointer(e, b"crc!")).unwrap(), Stored::Logged(e, b"crc!"));
        assert!(decode_stored(&stored_pointer(e, &[0; MAX_TAIL_BYTES + 1])).is_err(), "a tail too long");
        assert_eq!((tail_len(65540), tail_len(65536), tail_len(65536 + 100), tail_len(4)), (4, 0, 0, 0));
        assert_eq!(decode_stored(&stored_inline(b"abc")).unwrap(), Stored::Inline(b"abc"));
        assert_eq!(decode_stored(&stored_inline(b"")).unwrap(), Stored::Empty);
        assert!(decode_stored(&[1, 2, 3]).is_err(), "a short pointer");
        assert!(decode_stored(&[9]).is_err(), "an unknown tag");
    }

    fn op() -> impl Strategy<Value = Op> {
        let bytes = || prop::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            (0usize..5, bytes(), bytes()).prop_map(|(cf, key, value)| Op::Put { cf: Cf::ALL[cf], key, value }),
            (0usize..5, bytes()).prop_map(|(cf, key)| Op::Delete { cf: Cf::ALL[cf], key }),
            (0usize..5, bytes(), bytes()).prop_map(|(cf, from, to)| Op::DeleteRange { cf: Cf::ALL[cf], from, to }),
        ]
    }

    proptest! {
        #[test]
        fn operations_read_back(ops in prop::collection::vec(op(), 0..8)) {
            let b = encode_ops(&ops);
            prop_assert_eq!(b.len(), ops.iter().map(encoded_len).sum::<usize>());
            prop_assert_eq!(decode_ops(&b).map(|op| op.map(OpRef::to_op)).collect::<Result<Vec<_>>>().unwrap(), ops);
        }

        /// Mutated and random bytes give operations or an error, never a panic, and never more
        /// allocation than the bytes given.
        #[test]
        fn corrupt_operations_are_refused_without_panic(ops in prop::collection::vec(op(), 1..6), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4), cut in any::<prop::sample::Index>()) {
            let mut b = encode_ops(&ops);
            for (at, x) in flips {
                let i = at.index(b.len());
                b[i] ^= x;
            }
            let cut = cut.index(b.len() + 1);
            if let Ok(decoded) = decode_ops(&b[..cut]).map(|op| op.map(OpRef::to_op)).collect::<Result<Vec<_>>>() {
                prop_assert!(decoded.iter().map(encoded_len).sum::<usize>() <= cut);
            }
        }
    }
}
