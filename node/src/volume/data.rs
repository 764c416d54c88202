//! File data: reads, writes (read-modify-write of partial chunks), sizes, attributes and
//! allocated ranges.
//!
//! A chunk that holds data is stored with the CRC32C of its bytes after them ([`seal_chunk`]),
//! checked on every read ([`open_chunk`]); an empty value is a hole. Chunk reads skip RocksDB's
//! own checksums: the ones the linked RocksDB computes in software (Debian's portable build,
//! measured 1.3 GB/s) made reads five times slower, where `crc32c` uses the CPU's instruction.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::kv::{Batch, Durability};
use uuid::Uuid;

use super::error::{Result, VolumeError};
use super::keys::{self, dead, Lineage, LIVE};
use super::store::*;
use super::types::*;

/// A write's offset that means "at the end of the file" (MS-FSA: -1).
pub const WRITE_AT_END: u64 = u64::MAX;
/// Chunks one allocated-ranges answer looks at, at most (4 GiB of file): what it collects
/// under the volume lock, and the ranges it gives (half as many at most, 16 bytes each on the
/// wire), stay bounded whatever range is asked.
pub const MAX_ALLOCATED_SCAN_CHUNKS: u64 = 65_536;
/// Chunks one [`VolumeStore::zero_range`] step covers, at most (256 MiB of file): the step's
/// write batch and its time under the volume lock stay bounded.
pub const MAX_ZERO_STEP_CHUNKS: u64 = 4_096;
/// Windows of stored chunks holding no data one zeroing step passes over before it returns.
pub const MAX_ZERO_EMPTY_WINDOWS: u32 = 64;

/// Bytes of the CRC32C after a chunk's data.
pub(super) const CHUNK_CRC_BYTES: usize = 4;

/// A chunk's bytes as stored: the data, then their CRC32C (little-endian).
pub(super) fn seal_chunk(data: Vec<u8>) -> Vec<u8> {
    super::kv::sealed(data)
}

/// A stored chunk's data, its CRC32C checked (an empty value is a hole: no data).
pub(super) fn open_chunk(value: &[u8]) -> Result<&[u8]> {
    if value.is_empty() {
        return Ok(value);
    }
    super::kv::unsealed(value).ok_or_else(|| chunk_corrupt(value.len()))
}

fn chunk_corrupt(stored_bytes: usize) -> VolumeError {
    VolumeError::Storage(format!("a stored chunk ({stored_bytes} bytes) fails its checksum (CRC32C)"))
}

impl VolumeStore {
    pub(super) fn chunk_object(vol: Uuid, ino: u64, generation: u64, index: u64) -> impl Fn(Lineage) -> Vec<u8> {
        move |lin| keys::chunk(vol, lin, ino, generation, index)
    }

    /// Reads up to `len` bytes at `offset` (short at end of file; holes read as zeros), each
    /// whole chunk read straight into the reply from where the engine keeps it.
    pub fn read(&self, vol: Uuid, view: View, ino: u64, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.read_after(0, vol, view, ino, offset, len)
    }

    /// [`Self::read`] into a buffer that starts with `room` zero bytes for the caller (an SMB
    /// READ response's headers), so the data is not copied again to go out.
    pub fn read_after(&self, room: usize, vol: Uuid, view: View, ino: u64, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut sink = IntoBuffer { room, buffer: Vec::new() };
        self.read_chunks(vol, view, ino, offset, len, &mut sink)?;
        Ok(sink.buffer)
    }

    /// [`Self::read`] as pieces that, one after the other, are the bytes read, for a caller
    /// that sends them on (the volume service's Read): each whole chunk the engine keeps in
    /// its data log is a slice of the log's mapping, not a copy (its pages stay until the
    /// piece is dropped, and chunks that lie one after the other there are one piece); holes
    /// are shared zeros, and parts of chunks are copied.
    ///
    /// Whole chunks in the data log are not read here, so not checked: each piece comes with
    /// the CRC32C of its spans (a whole chunk's as stored), which whoever uses the bytes
    /// checks (`umbra_proto::checks`). Everything else is checked here, as [`Self::read`] does.
    pub fn read_shared(&self, vol: Uuid, view: View, ino: u64, offset: u64, len: u64) -> Result<Vec<SharedPiece>> {
        let mut sink = Shared::default();
        self.read_chunks(vol, view, ino, offset, len, &mut sink)?;
        let Shared { pieces, spans, .. } = sink;
        let mut spans = spans.into_iter();
        let mismatch = || VolumeError::Storage("joined pieces of a read do not match their parts".into());
        // Joining keeps the order: each joined piece is a run of the pieces before.
        let mut out = Vec::new();
        for data in self.kv.join_shared(pieces) {
            let (mut covered, mut left) = (Vec::new(), data.len());
            while left > 0 {
                let span = spans.next().filter(|s| s.len as usize <= left).ok_or_else(mismatch)?;
                left -= span.len as usize;
                covered.push(span);
            }
            out.push(SharedPiece { data, spans: covered });
        }
        match spans.next() {
            None => Ok(out),
            Some(_) => Err(mismatch()),
        }
    }

    /// A read of up to `len` bytes at `offset` under one hold of the volume, chunk by chunk
    /// into `sink` (short at end of file; what no chunk holds reads as zeros).
    fn read_chunks(&self, vol: Uuid, view: View, ino: u64, offset: u64, len: u64, sink: &mut impl ReadSink) -> Result<()> {
        if len > MAX_IO_BYTES {
            return Err(VolumeError::TooLarge { what: "a read", got: len, max: MAX_IO_BYTES });
        }
        let entry = self.volume(vol)?;
        let st = Self::lock(&entry);
        let scope = Self::scope(&st, view)?;
        let (inode, _) = self.inode_req(vol, &scope, ino)?;
        if inode.kind != Kind::File {
            return Err(VolumeError::IsADirectory);
        }
        let end = offset.saturating_add(len).min(inode.size);
        let n = end.saturating_sub(offset) as usize;
        sink.start(n);
        let mut pos = offset;
        while pos < end {
            let index = pos / CHUNK_BYTES;
            let chunk_start = index * CHUNK_BYTES;
            let take_end = end.min(chunk_start + CHUNK_BYTES);
            let (from, at) = ((pos - chunk_start) as usize, (pos - offset) as usize);
            let object = Self::chunk_object(vol, ino, inode.generation, index);
            if from == 0 && take_end == chunk_start + CHUNK_BYTES {
                sink.whole(self, &scope, &object, at)?;
            } else {
                let to = (take_end - chunk_start) as usize;
                self.visible_map(CF_CHUNKS, &scope, &object, Verify::KeyOnly, |_, value| {
                    let data = open_chunk(value)?;
                    let to = to.min(data.len());
                    if from < to {
                        sink.part(at, &data[from..to]);
                    }
                    Ok::<(), VolumeError>(())
                })?
                .transpose()?;
            }
            pos = take_end;
        }
        sink.finish(n);
        Ok(())
    }

    /// Writes `data` at `offset`, extending the file as needed; at [`WRITE_AT_END`], at the
    /// file's end as it is when the write holds the volume (MS-FSA's FILE_WRITE_TO_END_OF_FILE:
    /// concurrent appends never overlap). One write batch.
    pub fn write(&self, vol: Uuid, view: View, ino: u64, offset: u64, data: &[u8], now: impl Into<Stamp>) -> Result<()> {
        let now = now.into();
        let len = data.len() as u64;
        if len > MAX_IO_BYTES {
            return Err(VolumeError::TooLarge { what: "a write", got: len, max: MAX_IO_BYTES });
        }
        let end_of = |offset: u64| offset.checked_add(len).filter(|&e| e <= MAX_FILE_BYTES).ok_or(VolumeError::TooLarge { what: "the file end", got: offset.saturating_add(len), max: MAX_FILE_BYTES });
        if offset != WRITE_AT_END {
            end_of(offset)?;
        }
        self.growing_file(vol, view, ino, now, |st, scope, batch, inode| {
            let offset = if offset == WRITE_AT_END { inode.size } else { offset };
            let end = end_of(offset)?;
            if reaches_cut(inode, end) {
                return Ok(false);
            }
            let mut pos = offset;
            while pos < end {
                let index = pos / CHUNK_BYTES;
                let chunk_start = index * CHUNK_BYTES;
                let piece_end = end.min(chunk_start + CHUNK_BYTES);
                let piece = &data[(pos - offset) as usize..(piece_end - offset) as usize];
                self.write_chunk(st, scope, batch, inode, ino, index, (pos - chunk_start) as usize, piece)?;
                pos = piece_end;
            }
            inode.size = inode.size.max(end);
            Ok(true)
        })
    }

    /// [`Self::update_file`] for a change that may make the file larger: when `change` says the
    /// file would grow over chunks a truncate has not yet removed (it returns false, having
    /// changed nothing), those are removed first, in bounded steps, and `change` runs again.
    ///
    /// Until `change` has run, the call is not under way: a caller that refuses to wait at a
    /// fence ([`super::gate::refusing_at_fence`]) gets AtFence from any of the cut's steps
    /// (each whole, so running the call again after the fence goes on where they stopped).
    fn growing_file(&self, vol: Uuid, view: View, ino: u64, now: Stamp, mut change: impl FnMut(&VolState, &Scope, &mut Batch, &mut Inode) -> Result<bool>) -> Result<()> {
        let refusing = super::gate::refusing();
        while !self.update_file(vol, view, ino, now, &mut change)? {
            loop {
                super::gate::set_refusing(refusing);
                if !self.cut_step(vol, view, ino, CUT_STEP_CHUNKS, true)? {
                    break;
                }
            }
            super::gate::set_refusing(refusing);
        }
        Ok(())
    }

    /// One gated mutation of a regular file: the gate passed, the volume locked, the view
    /// writable and the inode loaded; `change` adds to the batch, which lands with the inode
    /// (its times set to `now`, but those it keeps) in one write. When `change` returns false
    /// nothing is written (nor must it have changed anything) and neither is returned.
    fn update_file(&self, vol: Uuid, view: View, ino: u64, now: Stamp, change: impl FnOnce(&VolState, &Scope, &mut Batch, &mut Inode) -> Result<bool>) -> Result<bool> {
        let entry = self.volume(vol)?;
        let (_pass, st) = entry.mutation()?;
        let scope = Self::writable(&st, view)?;
        let (mut inode, inode_key) = self.inode_req(vol, &scope, ino)?;
        if inode.kind != Kind::File {
            return Err(VolumeError::IsADirectory);
        }
        let mut batch = Batch::default();
        if !change(&st, &scope, &mut batch, &mut inode)? {
            return Ok(false);
        }
        if !now.keep_written {
            inode.written = now.now;
        }
        if !now.keep_changed {
            inode.changed = now.now;
        }
        self.put_inode(&st, &scope, &mut batch, ino, &inode, inode_key.as_deref())?;
        self.kv.write(batch, Durability::Buffered)?;
        Ok(true)
    }

    /// Replaces bytes `at..at+piece.len()` of chunk `index` (read-modify-write when partial).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_chunk(&self, st: &VolState, scope: &Scope, batch: &mut Batch, inode: &mut Inode, ino: u64, index: u64, at: usize, piece: &[u8]) -> Result<()> {
        let object = Self::chunk_object(st.id, ino, inode.generation, index);
        // A chunk written whole needs only the old version's key and whether it held data. The
        // new content is made once, with room for its checksum, and goes into the batch as it
        // is (a WRITE's data is copied once on its way to the log).
        let whole = at == 0 && piece.len() as u64 == CHUNK_BYTES;
        let room = |len: usize| Vec::with_capacity(len.max(at + piece.len()) + CHUNK_CRC_BYTES);
        let (old_key, had_data, mut content) = if whole {
            let old = self.visible_map(CF_CHUNKS, scope, &object, Verify::Presence, |k, v| (k.to_vec(), !v.is_empty()))?;
            let mut content = room(0);
            content.extend_from_slice(piece);
            match old {
                Some((k, had)) => (Some(k), had, content),
                None => (None, false, content),
            }
        } else {
            let old = self.visible_map(CF_CHUNKS, scope, &object, Verify::KeyOnly, |k, v| {
                open_chunk(v).map(|data| {
                    let mut content = room(data.len());
                    content.extend_from_slice(data);
                    (k.to_vec(), !v.is_empty(), content)
                })
            })?;
            let (old_key, had_data, mut content) = match old.transpose()? {
                Some((k, had, data)) => (Some(k), had, data),
                None => (None, false, room(0)),
            };
            if content.len() < at + piece.len() {
                content.resize(at + piece.len(), 0);
            }
            content[at..at + piece.len()].copy_from_slice(piece);
            (old_key, had_data, content)
        };
        let trimmed = content.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        content.truncate(trimmed);
        let has_data = !content.is_empty();
        match (&old_key, has_data) {
            (Some(old_key), false) => self.remove_version(st, scope, batch, CF_CHUNKS, &object, old_key, b"")?,
            (None, false) => {}
            (old_key, true) => self.put_version(st, scope, batch, CF_CHUNKS, object(scope.lineage), seal_chunk(content), old_key.as_deref()),
        }
        match (had_data, has_data) {
            (false, true) => inode.allocated += CHUNK_BYTES,
            (true, false) => inode.allocated = inode.allocated.saturating_sub(CHUNK_BYTES),
            _ => {}
        }
        Ok(())
    }

    /// Sets the file size: truncating never deletes what a snapshot reads (a new generation for
    /// size 0, holes for dropped chunks, a zeroed tail), extending reads as zeros.
    ///
    /// A truncate to a non-zero size changes the size (and zeroes the tail of its last chunk)
    /// in one batch and notes the chunks past the new end as the inode's [`Cut`], with a
    /// reclaim item for it: the reclaimer removes them in bounded steps
    /// ([`Self::cut_step`]), so a truncate costs the same whatever the file held. Reads stop at
    /// the size, so they never see those chunks; a write or extend that would reach them
    /// removes them first.
    pub fn set_size(&self, vol: Uuid, view: View, ino: u64, size: u64, now: impl Into<Stamp>) -> Result<()> {
        let now = now.into();
        if size > MAX_FILE_BYTES {
            return Err(VolumeError::TooLarge { what: "the file size", got: size, max: MAX_FILE_BYTES });
        }
        self.growing_file(vol, view, ino, now, |st, scope, batch, inode| {
            if size > inode.size && reaches_cut(inode, size) {
                return Ok(false);
            }
            if size == 0 && inode.size > 0 {
                self.retire_generation(st, scope, batch, ino, inode.generation)?;
                inode.generation += 1;
                inode.allocated = 0;
                inode.cut = None;
            } else if size < inode.size {
                let first_dropped = size.div_ceil(CHUNK_BYTES);
                let old_end = inode.size.div_ceil(CHUNK_BYTES);
                if first_dropped < old_end {
                    inode.cut = Some(match inode.cut {
                        Some(c) => Cut { from: c.from.min(first_dropped), upto: c.upto.max(old_end) },
                        None => Cut { from: first_dropped, upto: old_end },
                    });
                    let item = ReclaimItem::Cut { clone: clone_of(view), ino };
                    batch.put(CF_META, cut_item_key(vol, view, ino), serde_json::to_vec(&item)?);
                }
                if size % CHUNK_BYTES != 0 {
                    let index = size / CHUNK_BYTES;
                    let at = (size % CHUNK_BYTES) as usize;
                    self.write_chunk(st, scope, batch, inode, ino, index, at, &vec![0u8; CHUNK_BYTES as usize - at])?;
                }
            }
            inode.size = size;
            Ok(true)
        })
    }

    /// Removes up to `budget` chunk indexes' worth of a file's [`Cut`] (from its start, skipping
    /// the empty space before the next stored chunk) in one batch, as a truncate would have:
    /// tombstones and deadlist entries where a snapshot still reads a chunk. `wait`: wait at a
    /// fence like any mutation (a growing write does); otherwise a fence means "not now". The
    /// cut's reclaim item goes when the cut is gone, or when there is nothing left to cut (the
    /// file, its clone or the cut itself gone). Returns whether any of it is left.
    pub(super) fn cut_step(&self, vol: Uuid, view: View, ino: u64, budget: u64, wait: bool) -> Result<bool> {
        let entry = self.volume(vol)?;
        let (_pass, st) = if wait {
            entry.mutation()?
        } else {
            let st = Self::lock(&entry);
            match entry.gate.admit() {
                Some(pass) => (pass, st),
                None => return Ok(true),
            }
        };
        let item_key = cut_item_key(vol, view, ino);
        let mut batch = Batch::default();
        let found = match Self::writable(&st, view) {
            Ok(scope) => self.inode_at(vol, &scope, ino)?.and_then(|(inode, key)| inode.cut.map(|cut| (scope, inode, key, cut))),
            Err(e) if wait => return Err(e),
            Err(_) => None, // a deleted or sealed clone: nothing will grow over the cut
        };
        let Some((scope, mut inode, inode_key, cut)) = found else {
            batch.delete(CF_META, item_key);
            self.kv.write(batch, Durability::Buffered)?;
            return Ok(false);
        };
        let window_end = match self.next_chunk_index(&st, &scope, ino, inode.generation, cut.from)? {
            Some(next) if next < cut.upto => next.saturating_add(budget.max(1)).min(cut.upto),
            _ => cut.upto,
        };
        for (index, key) in self.visible_chunks(&st, &scope, ino, inode.generation, cut.from, window_end)? {
            self.remove_version(&st, &scope, &mut batch, CF_CHUNKS, Self::chunk_object(vol, ino, inode.generation, index), &key, b"")?;
            inode.allocated = inode.allocated.saturating_sub(CHUNK_BYTES);
        }
        inode.cut = (window_end < cut.upto).then_some(Cut { from: window_end, upto: cut.upto });
        if inode.cut.is_none() {
            batch.delete(CF_META, item_key);
        }
        self.put_inode(&st, &scope, &mut batch, ino, &inode, inode_key.as_deref())?;
        self.kv.write(batch, Durability::Buffered)?;
        Ok(inode.cut.is_some())
    }

    /// The index of the first chunk key of `generation` at or after `from` in the places the
    /// scope looks (its lineage; a clone's base too), whatever its epoch: one seek per place.
    fn next_chunk_index(&self, st: &VolState, scope: &Scope, ino: u64, generation: u64, from: u64) -> Result<Option<u64>> {
        let mut lineages = vec![scope.lineage];
        if scope.base_epoch.is_some() {
            lineages.push(LIVE);
        }
        let mut next: Option<u64> = None;
        for lin in lineages {
            let prefix = keys::generation_prefix(st.id, lin, ino, generation);
            if let Some(item) = self.kv.scan_presence(CF_CHUNKS, &keys::chunk(st.id, lin, ino, generation, from)).next() {
                let (key, _) = item?;
                if key.starts_with(&prefix) {
                    if let Some(index) = keys::chunk_index_of(&key) {
                        next = Some(next.map_or(index, |n| n.min(index)));
                    }
                }
            }
        }
        Ok(next)
    }

    /// Sets times and DOS attributes (SMB SET_INFO), and whether the file is sparse; `None`
    /// leaves a field as it is.
    pub fn set_info(&self, vol: Uuid, view: View, ino: u64, info: SetInfo) -> Result<Inode> {
        self.set_info_and_security(vol, view, ino, info, None)
    }

    /// [`Self::set_info`] and, with `security`, a new security descriptor in the same write:
    /// what `security` makes of the kept one (none if never set) and whether the inode is a
    /// directory, under the volume's lock (so a merge of parts never loses a concurrent one).
    /// Snapshots keep the one they saw. The store keeps the bytes
    /// as `security` gives them (the volume service merges checked descriptors).
    pub fn set_info_and_security(&self, vol: Uuid, view: View, ino: u64, info: SetInfo, security: Option<SecurityUpdate<'_>>) -> Result<Inode> {
        let entry = self.volume(vol)?;
        let (_pass, st) = entry.mutation()?;
        let scope = Self::writable(&st, view)?;
        let (mut inode, inode_key) = self.inode_req(vol, &scope, ino)?;
        inode.created = info.created.unwrap_or(inode.created);
        inode.written = info.written.unwrap_or(inode.written);
        inode.changed = info.changed.unwrap_or(inode.changed);
        if let Some(a) = info.attributes {
            inode.attributes = a & !ATTRIBUTE_SPARSE_FILE | inode.attributes & ATTRIBUTE_SPARSE_FILE;
        }
        match info.sparse {
            Some(true) => inode.attributes |= ATTRIBUTE_SPARSE_FILE,
            Some(false) => inode.attributes &= !ATTRIBUTE_SPARSE_FILE,
            None => {}
        }
        if let Some(update) = security {
            let d = update(inode.security.as_deref(), inode.kind == Kind::Dir)?;
            if d.len() > MAX_SECURITY_BYTES {
                return Err(VolumeError::TooLarge { what: "a security descriptor", got: d.len() as u64, max: MAX_SECURITY_BYTES as u64 });
            }
            inode.security = Some(d);
        }
        let mut batch = Batch::default();
        self.put_inode(&st, &scope, &mut batch, ino, &inode, inode_key.as_deref())?;
        self.kv.write(batch, Durability::Buffered)?;
        Ok(inode)
    }

    /// The ranges of `offset..offset+len` that hold data (FSCTL_QUERY_ALLOCATED_RANGES), in
    /// whole chunks, merged where adjacent; holes are left out. One answer looks at no more
    /// than [`MAX_ALLOCATED_SCAN_CHUNKS`] chunks; with less than the whole range answered, it
    /// also gives the offset to ask again from.
    pub fn allocated_ranges(&self, vol: Uuid, view: View, ino: u64, offset: u64, len: u64) -> Result<(Vec<(u64, u64)>, Option<u64>)> {
        let entry = self.volume(vol)?;
        let st = Self::lock(&entry);
        let scope = Self::scope(&st, view)?;
        let (inode, _) = self.inode_req(vol, &scope, ino)?;
        let mut end = offset.saturating_add(len).min(inode.size);
        let first = offset / CHUNK_BYTES;
        let until = end.div_ceil(CHUNK_BYTES).min(first.saturating_add(MAX_ALLOCATED_SCAN_CHUNKS));
        let mut resume = None;
        if until.saturating_mul(CHUNK_BYTES) < end {
            end = until * CHUNK_BYTES;
            resume = Some(end);
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (index, _) in self.visible_chunks(&st, &scope, ino, inode.generation, first, until)? {
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
        Ok((out, resume))
    }

    /// Zeroes `offset..offset+len` of a file, up to its size (FSCTL_SET_ZERO_DATA,
    /// FILE_LEVEL_TRIM): chunks the range covers whole become holes (a snapshot or clone base
    /// keeps what it reads), the chunks at its ends are rewritten with zeros. The size stays.
    ///
    /// One call is one write batch over at most [`MAX_ZERO_STEP_CHUNKS`] chunks of the range,
    /// from the first chunk stored in it (holes before it are passed over in one seek); when
    /// the range goes on past them, it returns the offset to call again from, so a caller
    /// zeroing a terabyte never holds the volume for long, calls about once per
    /// [`MAX_ZERO_STEP_CHUNKS`] chunks stored, and a crash leaves a prefix of the range zeroed.
    pub fn zero_range(&self, vol: Uuid, view: View, ino: u64, offset: u64, len: u64, now: impl Into<Stamp>) -> Result<Option<u64>> {
        let now = now.into();
        let mut resume = None;
        self.update_file(vol, view, ino, now, |st, scope, batch, inode| {
            let end = offset.saturating_add(len).min(inode.size);
            if offset >= end {
                return Ok(false);
            }
            // Holes cost nothing: the step starts at the first chunk stored at or past the
            // offset (one seek), so the work follows the data, not the range's size. A window
            // whose stored chunks hold no data here (versions a snapshot keeps, holes a
            // snapshot's data needs) is passed over in the same call, up to a bound.
            let last = end.div_ceil(CHUNK_BYTES);
            let (mut from, mut skipped) = (offset / CHUNK_BYTES, 0);
            let (until, holding) = loop {
                let first = match self.next_chunk_index(st, scope, ino, inode.generation, from)? {
                    Some(next) if next < last => next.max(from),
                    _ => return Ok(false),
                };
                let until = last.min(first + MAX_ZERO_STEP_CHUNKS);
                let holding = self.visible_chunks(st, scope, ino, inode.generation, first, until)?;
                if !holding.is_empty() || until == last || skipped == MAX_ZERO_EMPTY_WINDOWS {
                    break (until, holding);
                }
                (from, skipped) = (until, skipped + 1);
            };
            resume = (until < last).then(|| until * CHUNK_BYTES);
            let stop = end.min(until * CHUNK_BYTES);
            let zeros = vec![0u8; CHUNK_BYTES as usize];
            for (index, _) in &holding {
                let chunk_start = index * CHUNK_BYTES;
                let from = offset.max(chunk_start);
                let to = stop.min(chunk_start + CHUNK_BYTES);
                self.write_chunk(st, scope, batch, inode, ino, *index, (from - chunk_start) as usize, &zeros[..(to - from) as usize])?;
            }
            Ok(!holding.is_empty())
        })?;
        Ok(resume)
    }

    /// Chunks of a generation from index `from` up to (not including) `until` that hold data in
    /// the scope: (index, key).
    pub(super) fn visible_chunks(&self, st: &VolState, scope: &Scope, ino: u64, generation: u64, from: u64, until: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut found: BTreeMap<u64, Option<Vec<u8>>> = BTreeMap::new();
        let mut sources = vec![(scope.lineage, scope.max_epoch)];
        if let Some(base) = scope.base_epoch {
            sources.push((LIVE, base));
        }
        for (lin, max) in sources {
            let prefix = keys::generation_prefix(st.id, lin, ino, generation);
            let start = keys::chunk(st.id, lin, ino, generation, from);
            for item in self.kv.scan_presence(CF_CHUNKS, &start) {
                let (key, holds_data) = item?;
                if !key.starts_with(&prefix) {
                    break;
                }
                let (Some(index), Some(epoch)) = (keys::chunk_index_of(&key), keys::epoch_of(&key)) else { continue };
                if index >= until {
                    break;
                }
                if epoch > max || found.contains_key(&index) && lin == scope.lineage {
                    continue;
                }
                found.entry(index).or_insert_with(|| holds_data.then(|| key.to_vec()));
            }
        }
        Ok(found.into_iter().filter_map(|(i, k)| k.map(|k| (i, k))).collect())
    }

    /// A file's generation of chunks is dead (truncate to 0 or delete). In a clone, or when no
    /// snapshot or clone base exists, all of it goes (a reclaim item for its key range);
    /// otherwise it is noted in the deadlist and the reclaimer frees whatever no snapshot reads.
    pub(super) fn retire_generation(&self, st: &VolState, scope: &Scope, batch: &mut Batch, ino: u64, generation: u64) -> Result<()> {
        let prefix = keys::generation_prefix(st.id, scope.lineage, ino, generation);
        if scope.lineage != LIVE || st.pins().next().is_none() {
            // Nothing can read these chunks any more (inode numbers and generations are never
            // used again): the reclaimer deletes them in bounded steps.
            let to = keys::prefix_end(&prefix);
            unreachable_chunks(st.id, batch, prefix, to);
            return Ok(());
        }
        let payload = &prefix[16..];
        batch.put(CF_DEAD, dead::key(st.id, scope.write_epoch, dead::GENERATION, payload), b"");
        Ok(())
    }
}

/// Chunks a truncate's cut removes per step at most (in tests, few, so cuts take several).
pub(super) const CUT_STEP_CHUNKS: u64 = if cfg!(test) { 2 } else { 1024 };

/// Whether a file growing to `end` would reach chunks its pending cut has not yet removed.
fn reaches_cut(inode: &Inode, end: u64) -> bool {
    inode.cut.is_some_and(|c| end > c.from.saturating_mul(CHUNK_BYTES))
}

fn clone_of(view: View) -> Option<Uuid> {
    match view {
        View::Clone(id) => Some(id),
        _ => None,
    }
}

/// The reclaim item of a pending cut of file `ino` in the live volume or a clone (one per
/// file and view; a later truncate of the same file writes it again). After every sequence
/// number of the reclaim queue.
pub(super) fn cut_item_key(vol: Uuid, view: View, ino: u64) -> Vec<u8> {
    let mut rest = vec![RECLAIM_CUT];
    rest.extend_from_slice(clone_of(view).unwrap_or(Uuid::nil()).as_bytes());
    rest.extend_from_slice(&ino.to_be_bytes());
    meta_key(vol, META_RECLAIM, &rest)
}

/// Queues the chunk keys `from..to`, which nothing can read any more, for the reclaimer.
pub(super) fn unreachable_chunks(vol: Uuid, batch: &mut Batch, from: Vec<u8>, to: Vec<u8>) {
    let mut rest = vec![RECLAIM_CHUNKS];
    rest.extend_from_slice(&from);
    let item = serde_json::to_vec(&ReclaimItem::Chunks { from, to }).expect("byte strings always serialize");
    batch.put(CF_META, meta_key(vol, META_RECLAIM, &rest), item);
}

/// Reclaim queue keys of the two kinds not numbered in sequence (sequence numbers start
/// with a byte below 0x80, so these come after them).
const RECLAIM_CUT: u8 = 0xFE;
const RECLAIM_CHUNKS: u8 = 0xFF;

/// Where [`VolumeStore::read_chunks`] puts a read's bytes. `at` counts from the read's start;
/// bytes no call covers read as zeros.
trait ReadSink {
    /// The read will give `n` bytes.
    fn start(&mut self, n: usize);
    /// The whole chunk `object` for the bytes at `at`, read where the engine keeps it.
    fn whole(&mut self, store: &VolumeStore, scope: &Scope, object: &dyn Fn(Lineage) -> Vec<u8>, at: usize) -> Result<()>;
    /// `data` (checked) for the bytes at `at`.
    fn part(&mut self, at: usize, data: &[u8]);
    /// The read's `n` bytes are all given.
    fn finish(&mut self, n: usize);
}

/// Into one buffer after `room` zero bytes; whole chunks read straight into it.
struct IntoBuffer {
    room: usize,
    buffer: Vec<u8>,
}

impl ReadSink for IntoBuffer {
    fn start(&mut self, n: usize) {
        // Room for a whole chunk's checksum past the end: whole chunks are read in place.
        self.buffer = vec![0u8; self.room + n + if n > 0 { CHUNK_CRC_BYTES } else { 0 }];
    }

    fn whole(&mut self, store: &VolumeStore, scope: &Scope, object: &dyn Fn(Lineage) -> Vec<u8>, at: usize) -> Result<()> {
        // The stored bytes (data, then checksum) straight into the reply; the checksum's place
        // is zeroed again (what follows the data reads as zeros, or is the next chunk's).
        let dest = &mut self.buffer[self.room + at..self.room + at + CHUNK_BYTES as usize + CHUNK_CRC_BYTES];
        if let Some(len) = store.visible_into(CF_CHUNKS, scope, object, dest)? {
            let data = open_chunk(&dest[..len])?.len();
            dest[data..len].fill(0);
        }
        Ok(())
    }

    fn part(&mut self, at: usize, data: &[u8]) {
        let at = self.room + at;
        self.buffer[at..at + data.len()].copy_from_slice(data);
    }

    fn finish(&mut self, n: usize) {
        self.buffer.truncate(self.room + n);
    }
}

/// A piece of [`VolumeStore::read_shared`]: its bytes, and the CRC32C of each of its spans in
/// order (they cover it whole).
#[derive(Debug, Clone)]
pub struct SharedPiece {
    pub data: Bytes,
    pub spans: Vec<Span>,
}

/// Bytes of a [`SharedPiece`] and their CRC32C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub len: u32,
    pub crc32c: u32,
}

/// Zeros handed out for holes, a chunk at a time.
static ZERO_CHUNK: [u8; CHUNK_BYTES as usize] = [0; CHUNK_BYTES as usize];

/// The CRC32C of the first `n` bytes of [`ZERO_CHUNK`] (the whole chunk's computed once).
fn zeros_crc(n: usize) -> u32 {
    static WHOLE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    if n == ZERO_CHUNK.len() {
        *WHOLE.get_or_init(|| crc32c::crc32c(&ZERO_CHUNK))
    } else {
        crc32c::crc32c(&ZERO_CHUNK[..n])
    }
}

/// Into pieces: whole chunks as the engine hands them out, the rest copied; each piece's CRC32C
/// beside it.
#[derive(Default)]
struct Shared {
    pieces: Vec<Bytes>,
    spans: Vec<Span>,
    /// Bytes given so far.
    filled: usize,
}

impl Shared {
    /// Zeros up to `at`.
    fn zeros_to(&mut self, at: usize) {
        while self.filled < at {
            let n = (at - self.filled).min(ZERO_CHUNK.len());
            self.pieces.push(Bytes::from_static(&ZERO_CHUNK[..n]));
            self.spans.push(Span { len: n as u32, crc32c: zeros_crc(n) });
            self.filled += n;
        }
    }

    fn push(&mut self, at: usize, piece: Bytes, crc32c: u32) {
        self.zeros_to(at);
        if piece.is_empty() {
            return;
        }
        self.filled += piece.len();
        self.spans.push(Span { len: piece.len() as u32, crc32c });
        self.pieces.push(piece);
    }
}

impl ReadSink for Shared {
    fn start(&mut self, _n: usize) {}

    fn whole(&mut self, store: &VolumeStore, scope: &Scope, object: &dyn Fn(Lineage) -> Vec<u8>, at: usize) -> Result<()> {
        let Some((head, tail)) = store.visible_shared(CF_CHUNKS, scope, object)? else { return Ok(()) };
        if head.is_empty() && tail.is_empty() {
            return Ok(());
        }
        // The usual case: the data in the head (a slice of the data log's mapping, not read
        // here), its checksum the tail, both handed on.
        if let Ok(crc) = <[u8; CHUNK_CRC_BYTES]>::try_from(&tail[..]) {
            // Its length is the stored pointer's: a damaged one must not send other data on.
            if head.len() as u64 > CHUNK_BYTES {
                return Err(chunk_corrupt(head.len() + tail.len()));
            }
            self.push(at, head, u32::from_le_bytes(crc));
            return Ok(());
        }
        // Otherwise the value is checked here (and its checksum handed on).
        let value = if tail.is_empty() { head } else { Bytes::from([&head[..], &tail[..]].concat()) };
        let data = open_chunk(&value)?.len();
        let crc = u32::from_le_bytes(value[data..].try_into().map_err(|_| chunk_corrupt(value.len()))?);
        self.push(at, value.slice(..data), crc);
        Ok(())
    }

    fn part(&mut self, at: usize, data: &[u8]) {
        self.push(at, Bytes::copy_from_slice(data), crc32c::crc32c(data));
    }

    fn finish(&mut self, n: usize) {
        self.zeros_to(n);
    }
}
