//! Server-side copy (MS-SMB2 2.2.31.1, 2.2.32.1, 3.3.5.15.6): FSCTL_SRV_REQUEST_RESUME_KEY
//! names a source open; FSCTL_SRV_COPYCHUNK(_WRITE) on a target open copies ranges of it there.
//! Windows Explorer and robocopy copy files within a server this way, so the data never goes
//! to the client and back. Each chunk is read and written through storage as a READ and a
//! WRITE of the two opens would be (byte-range locks and all).
//!
//! A resume key is this open's volatile id and 16 bytes from the server's generator, made at
//! the first request and kept with the open: a key from another connection or session, or
//! guessed, names nothing (STATUS_OBJECT_NAME_NOT_FOUND).

use super::super::connection::{Connection, Reply};
use super::super::files::{CopySide, Files};
use super::{ioctl_body, u32_at, u64_at};
use crate::share_modes::{FILE_APPEND_DATA, FILE_READ_DATA, FILE_WRITE_DATA};
use crate::smb2::header::Header;
use crate::smb2::status;

pub(in crate::server) const FSCTL_SRV_REQUEST_RESUME_KEY: u32 = 0x0014_0078;
pub(in crate::server) const FSCTL_SRV_COPYCHUNK: u32 = 0x0014_40F2;
pub(in crate::server) const FSCTL_SRV_COPYCHUNK_WRITE: u32 = 0x0014_80F2;

/// Chunks one request may carry (Windows' ServerSideCopyMaxNumberofChunks).
pub const MAX_COPY_CHUNKS: u32 = 256;
/// Bytes one chunk may copy (ServerSideCopyMaxChunkSize).
pub const MAX_COPY_CHUNK_BYTES: u32 = 1 << 20;
/// Bytes one request may copy in all (ServerSideCopyMaxDataSize).
pub const MAX_COPY_BYTES: u32 = 16 << 20;
/// A resume key's bytes.
pub const RESUME_KEY_BYTES: usize = 24;
/// SRV_REQUEST_RESUME_KEY as sent: the key, ContextLength, and 4 bytes of Context.
const RESUME_KEY_REPLY_BYTES: u32 = 32;
/// SRV_COPYCHUNK_COPY's fixed part: SourceKey, ChunkCount, Reserved.
const COPY_HEADER_BYTES: usize = RESUME_KEY_BYTES + 8;
/// One SRV_COPYCHUNK: SourceOffset, TargetOffset, Length, Reserved.
const CHUNK_BYTES: usize = 24;
/// SRV_COPYCHUNK_RESPONSE: ChunksWritten, ChunkBytesWritten, TotalBytesWritten.
const RESPONSE_BYTES: u32 = 12;
/// The largest offset a copy may reach (MAXLONGLONG).
const MAX_OFFSET: u64 = i64::MAX as u64;
/// STATUS_INVALID_VIEW_SIZE: a chunk reaches past the source's end (as Windows answers).
const INVALID_VIEW_SIZE: u32 = 0xC000_0319;

/// SRV_COPYCHUNK_RESPONSE (MS-SMB2 2.2.32.1).
fn response(chunks: u32, chunk_bytes: u32, total: u32) -> Vec<u8> {
    [chunks, chunk_bytes, total].iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Connection {
    /// FSCTL_SRV_REQUEST_RESUME_KEY: the open's resume key (SRV_REQUEST_RESUME_KEY: the key,
    /// ContextLength 0).
    pub(in crate::server) fn resume_key(&mut self, h: &Header, body: &[u8], max_out: u32, random: &mut dyn FnMut(&mut [u8])) -> Reply {
        let Some(volatile) = Self::file_id(body, 8) else { return Reply::error(status::INVALID_PARAMETER) };
        match self.open_of(h, volatile) {
            Ok(o) if o.pipe.is_some() => return Reply::error(status::INVALID_DEVICE_REQUEST),
            Ok(_) => {}
            Err(s) => return Reply::error(s),
        }
        if max_out < RESUME_KEY_REPLY_BYTES {
            return Reply::error(status::INVALID_PARAMETER);
        }
        let Some(open) = self.opens.get_mut(&volatile) else { return Reply::error(status::FILE_CLOSED) };
        let key = *open.resume_key.get_or_insert_with(|| {
            let mut k = [0u8; RESUME_KEY_BYTES];
            k[..8].copy_from_slice(&volatile.to_le_bytes());
            random(&mut k[8..]);
            k
        });
        // ContextLength 0, and the 4 bytes of Context the reply always has (MS-SMB2 3.3.5.15.5:
        // OutputCount 32).
        let mut out = key.to_vec();
        out.extend_from_slice(&[0; 8]);
        Reply::ok(ioctl_body(body, &out))
    }

    /// FSCTL_SRV_COPYCHUNK and FSCTL_SRV_COPYCHUNK_WRITE on the target open `body` names.
    pub(in crate::server) fn copy_chunks(&mut self, h: &Header, body: &[u8], code: u32, input: &[u8], max_out: u32, files: &dyn Files, now: u64) -> Reply {
        let Some(volatile) = Self::file_id(body, 8) else { return Reply::error(status::INVALID_PARAMETER) };
        // Past the server's limits, or not a request it can read: INVALID_PARAMETER, with the
        // limits (MS-SMB2 3.3.5.15.6), which the client then keeps to.
        let limits = || Reply::ok(ioctl_body(body, &response(MAX_COPY_CHUNKS, MAX_COPY_CHUNK_BYTES, MAX_COPY_BYTES))).with_status(status::INVALID_PARAMETER);
        let count = u32_at(input, RESUME_KEY_BYTES).unwrap_or(0);
        if count > MAX_COPY_CHUNKS {
            return limits();
        }
        let Some(list) = input.get(COPY_HEADER_BYTES..COPY_HEADER_BYTES + count as usize * CHUNK_BYTES) else { return limits() };
        // The source: the open the key names, in this session, open for reading.
        let key = &input[..RESUME_KEY_BYTES];
        let source = match self.opens.values().find(|o| o.session == h.session_id && o.resume_key.as_ref().is_some_and(|k| crate::smb2::signing::same_bytes(k, key))) {
            None => return Reply::error(status::OBJECT_NAME_NOT_FOUND),
            Some(o) if o.info.directory => return Reply::error(status::INVALID_PARAMETER),
            Some(o) if o.access & FILE_READ_DATA == 0 => return Reply::error(status::ACCESS_DENIED),
            Some(o) => (o.share.clone(), o.info.id, o.registration),
        };
        if max_out < RESPONSE_BYTES {
            return Reply::error(status::INVALID_PARAMETER);
        }
        // The target: a file open for writing (and, for COPYCHUNK, reading) on a writable tree.
        let (writes, reads) = (FILE_WRITE_DATA | FILE_APPEND_DATA, if code == FSCTL_SRV_COPYCHUNK { FILE_READ_DATA } else { 0 });
        let target = match self.open_of(h, volatile) {
            Ok(o) if o.pipe.is_some() => return Reply::error(status::INVALID_DEVICE_REQUEST),
            Ok(o) if o.info.directory => return Reply::error(status::INVALID_PARAMETER),
            Ok(o) if o.access & writes == 0 || o.access & reads != reads => return Reply::error(status::ACCESS_DENIED),
            Ok(o) => (o.share.clone(), o.info.id, o.registration, o.keep),
            Err(s) => return Reply::error(s),
        };
        // The copy writes through the target open: the times its client set or froze stay.
        let stamp = crate::server::files::Stamp { now, keep: target.3 };
        if matches!(self.tree(h), Ok((_, true, _))) {
            return Reply::error(status::MEDIA_WRITE_PROTECTED);
        }
        let chunks: Vec<(u64, u64, u32)> = list.chunks_exact(CHUNK_BYTES).map(|c| (u64_at(c, 0).unwrap_or(0), u64_at(c, 8).unwrap_or(0), u32_at(c, 16).unwrap_or(0))).collect();
        let total: u64 = chunks.iter().map(|c| u64::from(c.2)).sum();
        if chunks.iter().any(|c| c.2 == 0 || c.2 > MAX_COPY_CHUNK_BYTES) || total > u64::from(MAX_COPY_BYTES) {
            return limits();
        }
        // Offsets are LARGE_INTEGERs: none may be negative, nor a range reach past the last.
        if chunks.iter().any(|&(from, to, len)| from.max(to).checked_add(u64::from(len)).is_none_or(|end| end > MAX_OFFSET)) {
            return Reply::error(status::INVALID_PARAMETER);
        }
        let (mut done, mut written) = (0u32, 0u32);
        for (from, to, len) in chunks {
            // Within one share storage copies on its own; across shares, through here.
            let step = if source.0 == target.0 {
                let (from, to) = (CopySide { id: source.1, offset: from, open: source.2 }, CopySide { id: target.1, offset: to, open: target.2 });
                match files.copy_range(&target.0, from, to, len, stamp) {
                    Ok(n) if n < len => Err(INVALID_VIEW_SIZE),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.status()),
                }
            } else {
                match files.read(&source.0, source.1, from, len, 0, source.2) {
                    Ok(data) if data.len() < len as usize => Err(INVALID_VIEW_SIZE),
                    Ok(data) => files.write(&target.0, target.1, to, &data, stamp, target.2).map_err(|e| e.status()),
                    Err(e) => Err(e.status()),
                }
            };
            if let Err(s) = step {
                tracing::debug!(chunk = done, status = format_args!("{s:#010x}"), "server-side copy stopped");
                // INVALID_PARAMETER with a body would read as the server's limits.
                if s == status::INVALID_PARAMETER {
                    return Reply::error(s);
                }
                return Reply::ok(ioctl_body(body, &response(done, 0, written))).with_status(s);
            }
            done += 1;
            written += len;
        }
        Reply::ok(ioctl_body(body, &response(done, 0, written)))
    }
}
