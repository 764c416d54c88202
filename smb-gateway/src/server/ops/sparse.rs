//! FSCTLs on a file's holes (MS-FSCC 2.3, MS-FSA 2.1.5.10): FSCTL_SET_SPARSE,
//! FSCTL_QUERY_ALLOCATED_RANGES, FSCTL_SET_ZERO_DATA and FSCTL_FILE_LEVEL_TRIM.
//!
//! Backup software reads only the allocated ranges of a sparse file (a VHDX of which most is
//! never written), and Hyper-V passes a guest's TRIM on as zero-data or trim requests, which
//! free the chunks they cover. Storage keeps holes in every file; the sparse attribute says
//! whether clients are told about them, as NTFS does.

use super::super::connection::{Connection, Reply};
use super::super::files::Files;
use super::{ioctl_body, u32_at, u64_at};
use crate::share_modes::{FILE_APPEND_DATA, FILE_READ_DATA, FILE_WRITE_ATTRIBUTES, FILE_WRITE_DATA};
use crate::smb2::header::Header;
use crate::smb2::status;

pub(in crate::server) const FSCTL_SET_SPARSE: u32 = 0x0009_00C4;
pub(in crate::server) const FSCTL_QUERY_ALLOCATED_RANGES: u32 = 0x0009_40CF;
pub(in crate::server) const FSCTL_SET_ZERO_DATA: u32 = 0x0009_80C8;
pub(in crate::server) const FSCTL_FILE_LEVEL_TRIM: u32 = 0x0009_8208;

/// FILE_ATTRIBUTE_SPARSE_FILE (MS-FSCC 2.6).
pub(in crate::server) const ATTR_SPARSE: u32 = 0x200;
/// Bytes of a FILE_ALLOCATED_RANGE_BUFFER, a FILE_ZERO_DATA_INFORMATION and a trim range:
/// two 64-bit numbers.
const RANGE_BYTES: usize = 16;
/// Ranges one FILE_LEVEL_TRIM may carry: more than any client sends (Windows sends at most a
/// few hundred), and the work one request may ask of storage stays bounded by the IOCTL's
/// input size anyway.
pub const MAX_TRIM_RANGES: usize = 4096;
/// The largest offset or length a file range may name (MAXLONGLONG).
const MAX_OFFSET: u64 = i64::MAX as u64;

/// What one of these FSCTLs is carried out on: the open's share, file id, granted access and
/// registration (byte-range locks are checked against it).
struct Target {
    share: String,
    id: u64,
    access: u32,
    open: Option<u64>,
    keep: crate::server::files::Keep,
}

impl Connection {
    /// The four FSCTLs on a file's holes; `code` is one of them.
    pub(in crate::server) fn sparse_fsctl(&mut self, h: &Header, body: &[u8], code: u32, input: &[u8], max_out: u32, files: &dyn Files, now: u64) -> Reply {
        let Some(volatile) = Self::file_id(body, 8) else { return Reply::error(status::INVALID_PARAMETER) };
        let t = match self.open_of(h, volatile) {
            Ok(o) if o.pipe.is_some() => return Reply::error(status::INVALID_DEVICE_REQUEST),
            // MS-FSA 2.1.5.10: these act on a data file; a directory has no data to act on.
            Ok(o) if o.info.directory => return Reply::error(status::INVALID_PARAMETER),
            Ok(o) => Target { share: o.share.clone(), id: o.info.id, access: o.access, open: o.registration, keep: o.keep },
            Err(s) => return Reply::error(s),
        };
        let read_only = matches!(self.tree(h), Ok((_, true, _)));
        let reply = match code {
            FSCTL_QUERY_ALLOCATED_RANGES => query_allocated_ranges(&t, input, max_out, files),
            FSCTL_SET_SPARSE if read_only => Err(status::MEDIA_WRITE_PROTECTED),
            FSCTL_SET_SPARSE => self.set_sparse(volatile, &t, input, files),
            FSCTL_SET_ZERO_DATA => set_zero_data(&t, input, read_only, files, now),
            _ if read_only => Err(status::MEDIA_WRITE_PROTECTED),
            _ => file_level_trim(&t, input, max_out, files, now),
        };
        match reply {
            Ok((out, overflow)) => Reply::ok(ioctl_body(body, &out)).overflowing(overflow),
            Err(s) => Reply::error(s),
        }
    }

    /// FSCTL_SET_SPARSE (MS-FSA 2.1.5.10.35): FILE_SET_SPARSE_BUFFER's one byte says whether
    /// the file is sparse; without it, it is. This open's view of the file follows.
    fn set_sparse(&mut self, volatile: u64, t: &Target, input: &[u8], files: &dyn Files) -> Result<(Vec<u8>, bool), u32> {
        if t.access & (FILE_WRITE_DATA | FILE_APPEND_DATA | FILE_WRITE_ATTRIBUTES) == 0 {
            return Err(status::ACCESS_DENIED);
        }
        let sparse = input.first().is_none_or(|&b| b != 0);
        files.set_basic(&t.share, t.id, super::super::files::Basic { sparse: Some(sparse), ..Default::default() }).map_err(|e| e.status())?;
        if let Some(o) = self.opens.get_mut(&volatile) {
            o.info.attributes = if sparse { o.info.attributes | ATTR_SPARSE } else { o.info.attributes & !ATTR_SPARSE };
        }
        Ok((Vec::new(), false))
    }
}

/// Two 64-bit numbers at `at`, each at most MAXLONGLONG (a negative LARGE_INTEGER is refused).
fn range_at(input: &[u8], at: usize) -> Result<(u64, u64), u32> {
    let (Some(a), Some(b)) = (u64_at(input, at), u64_at(input, at + 8)) else { return Err(status::INVALID_PARAMETER) };
    if a > MAX_OFFSET || b > MAX_OFFSET {
        return Err(status::INVALID_PARAMETER);
    }
    Ok((a, b))
}

/// FSCTL_QUERY_ALLOCATED_RANGES (MS-FSA 2.1.5.10.22): the ranges of the asked range that hold
/// data, up to the file's size, as many as the output buffer takes (BUFFER_OVERFLOW when more
/// remain). A file that is not sparse reports the asked range whole, cut at its size, as
/// Windows does (smbtorture's sparse_qar tests).
fn query_allocated_ranges(t: &Target, input: &[u8], max_out: u32, files: &dyn Files) -> Result<(Vec<u8>, bool), u32> {
    if t.access & FILE_READ_DATA == 0 {
        return Err(status::ACCESS_DENIED);
    }
    let (offset, len) = range_at(input, 0)?;
    if offset.checked_add(len).is_none_or(|end| end > MAX_OFFSET) {
        return Err(status::INVALID_PARAMETER);
    }
    let end = offset + len;
    let room = max_out as usize / RANGE_BYTES;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut more = false;
    if len == 0 {
        return Ok((Vec::new(), false));
    }
    // Whether the file is sparse now (another open may have said so since this one opened).
    let file = files.stat(&t.share, t.id).map_err(|e| e.status())?;
    if file.attributes & ATTR_SPARSE != 0 {
        more = collect_ranges(offset, end, room.max(1), &mut ranges, |from, len| files.allocated_ranges(&t.share, t.id, from, len).map_err(|e| e.status()))?;
    } else {
        let end = end.min(file.size);
        if offset < end {
            ranges.push((offset, end - offset));
        }
    }
    // Nothing to report fits any buffer; a range needs 16 bytes (MS-FSA: BUFFER_TOO_SMALL).
    if !ranges.is_empty() && room == 0 {
        return Err(status::BUFFER_TOO_SMALL);
    }
    let mut out = Vec::with_capacity(ranges.len() * RANGE_BYTES);
    for (o, l) in ranges {
        out.extend_from_slice(&o.to_le_bytes());
        out.extend_from_slice(&l.to_le_bytes());
    }
    Ok((out, more))
}

/// Adds to `ranges` the allocated ranges of `offset..end` that `ask` gives (storage's answers,
/// each for a window of the range, with where the next window starts), merged where a range
/// goes on in the next window, until `room` ranges are held; true when more were left out.
/// What storage gives outside the range asked is cut off or dropped.
fn collect_ranges(offset: u64, end: u64, room: usize, ranges: &mut Vec<(u64, u64)>, mut ask: impl FnMut(u64, u64) -> Result<(Vec<(u64, u64)>, Option<u64>), u32>) -> Result<bool, u32> {
    let mut from = offset;
    while from < end {
        let (found, resume) = ask(from, end - from)?;
        for (o, l) in found.into_iter().filter(|&(o, l)| l > 0 && o >= from && o < end) {
            let l = l.min(end - o);
            let full = ranges.len() >= room;
            match ranges.last_mut() {
                Some((s, n)) if *s + *n == o => *n += l,
                _ if full => return Ok(true),
                _ => ranges.push((o, l)),
            }
        }
        match resume {
            Some(r) if r > from && r < end => from = r,
            _ => break,
        }
    }
    Ok(false)
}

/// Zeroes `offset..end` of the file up to its size, step by step as storage asks.
fn zero(t: &Target, offset: u64, end: u64, files: &dyn Files, now: u64) -> Result<(), u32> {
    let mut from = offset;
    while from < end {
        match files.zero_range(&t.share, t.id, from, end - from, crate::server::files::Stamp { now, keep: t.keep }, t.open).map_err(|e| e.status())? {
            Some(next) if next > from => from = next,
            _ => break,
        }
    }
    Ok(())
}

/// FSCTL_SET_ZERO_DATA (MS-FSA 2.1.5.10.37): FILE_ZERO_DATA_INFORMATION gives FileOffset and
/// BeyondFinalZero; the bytes between read as zeros after it, the size stays.
fn set_zero_data(t: &Target, input: &[u8], read_only: bool, files: &dyn Files, now: u64) -> Result<(Vec<u8>, bool), u32> {
    let (offset, beyond) = range_at(input, 0)?;
    if offset > beyond {
        return Err(status::INVALID_PARAMETER);
    }
    if read_only {
        return Err(status::MEDIA_WRITE_PROTECTED);
    }
    if t.access & FILE_WRITE_DATA == 0 {
        return Err(status::ACCESS_DENIED);
    }
    zero(t, offset, beyond, files, now)?;
    Ok((Vec::new(), false))
}

/// FSCTL_FILE_LEVEL_TRIM (MS-FSCC 2.3.13, 2.3.14; MS-FSA 2.1.5.10.6): FILE_LEVEL_TRIM is Key
/// (4 bytes, 0), NumRanges (4) and that many (Offset, Length) pairs; each range, taken inward
/// to whole 4 KiB pages, may lose its data (here it reads as zeros after). The reply,
/// FILE_LEVEL_TRIM_OUTPUT, counts the ranges done, when the client leaves room for it.
fn file_level_trim(t: &Target, input: &[u8], max_out: u32, files: &dyn Files, now: u64) -> Result<(Vec<u8>, bool), u32> {
    if t.access & FILE_WRITE_DATA == 0 {
        return Err(status::ACCESS_DENIED);
    }
    let (Some(key), Some(count)) = (u32_at(input, 0), u32_at(input, 4)) else { return Err(status::INVALID_PARAMETER) };
    let count = count as usize;
    if key != 0 || count == 0 || count > MAX_TRIM_RANGES || input.len() < 8 + count * RANGE_BYTES || (max_out != 0 && max_out < 4) {
        return Err(status::INVALID_PARAMETER);
    }
    let ranges = (0..count).map(|i| range_at(input, 8 + i * RANGE_BYTES)).collect::<Result<Vec<_>, u32>>()?;
    // Each range taken inward to whole pages and cut at the file's size; then sorted and
    // merged, so a request naming one range many times does the work once.
    let size = files.stat(&t.share, t.id).map_err(|e| e.status())?.size;
    let mut pages = Vec::with_capacity(ranges.len());
    for &(offset, len) in &ranges {
        let end = offset.checked_add(len).filter(|&e| e <= MAX_OFFSET).ok_or(status::INTEGER_OVERFLOW)?;
        let (first, stop) = (offset.div_ceil(TRIM_PAGE_BYTES) * TRIM_PAGE_BYTES, (end / TRIM_PAGE_BYTES * TRIM_PAGE_BYTES).min(size));
        if first < stop {
            pages.push((first, stop));
        }
    }
    pages.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(pages.len());
    for (first, stop) in pages {
        match merged.last_mut() {
            Some((_, e)) if first <= *e => *e = (*e).max(stop),
            _ => merged.push((first, stop)),
        }
    }
    for (first, stop) in merged {
        zero(t, first, stop, files, now)?;
    }
    let out = if max_out >= 4 { (count as u32).to_le_bytes().to_vec() } else { Vec::new() };
    Ok((out, false))
}

/// The page size trims are aligned to (MS-FSA 2.1.5.10.6: the start rounded up, the end down).
const TRIM_PAGE_BYTES: u64 = 4096;


#[cfg(test)]
mod tests {
    use super::*;

    /// Storage holding `held` (whole ranges), answering in windows of `window` bytes.
    fn windows(held: &[(u64, u64)], window: u64) -> impl FnMut(u64, u64) -> Result<(Vec<(u64, u64)>, Option<u64>), u32> + '_ {
        move |from, len| {
            let end = (from + len).min(from + window);
            let found = held.iter().filter_map(|&(o, l)| {
                let (s, e) = (o.max(from), (o + l).min(end));
                (s < e).then(|| (s, e - s))
            });
            Ok((found.collect(), (end < from + len).then_some(end)))
        }
    }

    #[test]
    fn ranges_that_go_on_across_windows_are_merged_and_bounded_by_the_room() {
        let held = [(0, 10), (50, 100), (300, 5)];
        for window in [1, 7, 64, 1000] {
            let mut got = Vec::new();
            assert!(!collect_ranges(0, 1000, 8, &mut got, windows(&held, window)).unwrap(), "window {window}");
            assert_eq!(got, held, "window {window}");
            let mut got = Vec::new();
            assert!(collect_ranges(5, 302, 2, &mut got, windows(&held, window)).unwrap(), "a third range left out");
            assert_eq!(got, [(5, 5), (50, 100)], "cut to the range asked, window {window}");
        }
    }

    #[test]
    fn what_storage_gives_outside_the_range_asked_is_dropped_and_a_resume_that_goes_back_ends_it() {
        let mut got = Vec::new();
        let stray = |_: u64, _: u64| Ok((vec![(0, 5), (10, 0), (20, 1000), (5000, 1)], Some(3)));
        assert!(!collect_ranges(10, 100, 8, &mut got, stray).unwrap());
        assert_eq!(got, [(20, 80)]);
        let failing = |_: u64, _: u64| Err(status::INVALID_PARAMETER);
        assert_eq!(collect_ranges(0, 100, 8, &mut Vec::new(), failing), Err(status::INVALID_PARAMETER));
    }
}
