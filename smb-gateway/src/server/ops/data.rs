//! READ, WRITE and FLUSH, on files and on pipes (with FSCTL_PIPE_TRANSCEIVE).

use crate::share_modes;
use super::super::connection::{Connection, FileWrite, Reply};
use super::super::files::Files;
use super::*;
use crate::smb2::header::{Header, HEADER_BYTES};
use crate::smb2::status;

/// A WRITE's offset that means "at the end of the file" (MS-FSA 2.1.5.3:
/// FILE_WRITE_TO_END_OF_FILE), as the store resolves it.
const WRITE_AT_END: u64 = u64::MAX;

impl Connection {
    /// FSCTL_PIPE_TRANSCEIVE: one request PDU in, the reply out (BUFFER_OVERFLOW when longer
    /// than the client's MaxOutputResponse; it reads the rest).
    pub(in crate::server) fn transceive(&mut self, h: &Header, body: &[u8], input: &[u8], max_out: u32, dir: &dyn crate::server::Directory, env: &mut dyn crate::server::Environment) -> Reply {
        let Some(volatile) = Self::file_id(body, 8) else { return Reply::error(status::INVALID_PARAMETER) };
        if let Err(s) = self.open_of(h, volatile) {
            return Reply::error(s);
        }
        if let Err(s) = self.feed_pipe(h.session_id, volatile, input, dir, env) {
            return Reply::error(s);
        }
        let Some(pipe) = self.opens.get_mut(&volatile).and_then(|o| o.pipe.as_mut()) else { return Reply::error(status::INVALID_DEVICE_REQUEST) };
        let out = pipe.read(max_out as usize);
        Reply::ok(ioctl_body(body, &out)).overflowing(pipe.pending() > 0)
    }

    pub(in crate::server) fn write(&mut self, h: &Header, message: &[u8], files: &dyn Files, dir: &dyn crate::server::Directory, env: &mut dyn crate::server::Environment) -> Reply {
        let now = env.now();
        let b = &message[HEADER_BYTES..];
        let (Some(data_off), Some(len), Some(offset), Some(volatile)) = (u16_at(b, 2), u32_at(b, 4), u64_at(b, 8), Self::file_id(b, 16)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        if len > self.config.max_io_bytes {
            return Reply::error(status::INVALID_PARAMETER);
        }
        let Some(data) = message.get(usize::from(data_off)..usize::from(data_off) + len as usize) else { return Reply::error(status::INVALID_PARAMETER) };
        if self.opens.get(&volatile).is_some_and(|o| o.pipe.is_some()) && self.open_of(h, volatile).is_ok() {
            if let Err(s) = self.feed_pipe(h.session_id, volatile, data, dir, env) {
                return Reply::error(s);
            }
            return Reply::ok(write_body(len));
        }
        let (share, id, registration, keep) = match self.open_of(h, volatile) {
            Ok(o) if o.info.directory => return Reply::error(status::FILE_IS_A_DIRECTORY),
            // MS-SMB2 3.3.5.13: the open must have been granted write or append access.
            Ok(o) if o.access & (share_modes::FILE_WRITE_DATA | share_modes::FILE_APPEND_DATA) == 0 => return Reply::error(status::ACCESS_DENIED),
            Ok(o) => (o.share.clone(), o.info.id, o.registration, o.keep),
            Err(s) => return Reply::error(s),
        };
        if matches!(self.tree(h), Ok((_, true, _))) {
            return Reply::error(status::MEDIA_WRITE_PROTECTED);
        }
        // A zero-length WRITE succeeds and changes nothing (MS-FSA 2.1.5.3), wherever it points.
        // Offset 0xFFFFFFFFFFFFFFFF writes at the end of the file, as the store resolves it.
        let stamp = crate::server::files::Stamp { now, keep };
        // Appends (at the end of the file, wherever that is when each lands) keep the order
        // they were sent in: written in turn.
        if offset != WRITE_AT_END {
            if let Some(later) = self.write_later(h, message, data, volatile, |token, range| FileWrite { token, share: share.clone(), id, offset, data: range, stamp, open: registration }) {
                return later;
            }
        }
        if !data.is_empty() {
            if let Err(e) = files.write(&share, id, offset, data, stamp, registration) {
                return fs(e);
            }
        }
        Reply::ok(write_body(len))
    }

    pub(in crate::server) fn read(&mut self, h: &Header, message: &[u8], files: &dyn Files) -> Reply {
        let b = &message[HEADER_BYTES..];
        let (Some(len), Some(offset), Some(volatile)) = (u32_at(b, 4), u64_at(b, 8), Self::file_id(b, 16)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        if len > self.config.max_io_bytes {
            return Reply::error(status::INVALID_PARAMETER);
        }
        if let Err(s) = self.open_of(h, volatile) {
            return Reply::error(s);
        }
        if let Some(pipe) = self.opens.get_mut(&volatile).and_then(|o| o.pipe.as_mut()) {
            let data = pipe.read(len as usize);
            if data.is_empty() {
                // Nothing to read yet: the READ waits for the pipe's next output.
                return Reply::wait(crate::server::async_ops::Waiting::PipeRead { volatile, len });
            }
            return Reply::ok(read_body(&data)).overflowing(pipe.pending() > 0);
        }
        let (share, id, registration) = match self.open_of(h, volatile) {
            Ok(o) if o.info.directory => return Reply::error(status::INVALID_PARAMETER),
            // MS-SMB2 3.3.5.12: the open must have been granted read or execute access.
            Ok(o) if o.access & (share_modes::FILE_READ_DATA | share_modes::FILE_EXECUTE) == 0 => return Reply::error(status::ACCESS_DENIED),
            Ok(o) => (o.share.clone(), o.info.id, o.registration),
            Err(s) => return Reply::error(s),
        };
        // Another node serves the file: the READ waits for the data off this connection's
        // thread, so the client's next READs start meanwhile (only the last of a compound).
        if h.next_command == 0 && files.is_remote(&share) && self.file_read_fits(len) {
            return Reply::wait(crate::server::async_ops::Waiting::FileRead { volatile, offset, len });
        }
        read_reply(len, files.read(&share, id, offset, len, READ_ROOM, registration))
    }

    /// One PDU into a pipe, with what its calls may use: the shares, the NTLM context, the
    /// caller (this session's user) and the FSRVP service.
    pub(in crate::server) fn feed_pipe(&mut self, session: u64, volatile: u64, pdu: &[u8], dir: &dyn crate::server::Directory, env: &mut dyn crate::server::Environment) -> Result<(), u32> {
        let shares = Self::share_entries(dir);
        let mut server_challenge = [0u8; 8];
        env.random(&mut server_challenge);
        let user = |name: &str| dir.user(name).map(|(hash, _)| hash);
        let role_of = |name: &str| dir.user(name).map(|(_, role)| role);
        let netbios = self.config.netbios_name.clone();
        let env: &dyn crate::server::Environment = env;
        let throttle = |f: &mut dyn FnMut(&mut crate::server::throttle::Throttle)| f(&mut env.throttle());
        let auth = crate::rpc::auth::AuthContext { user: &user, server_challenge, now: env.now(), netbios_name: &netbios, throttle: &throttle };
        let caller = self.caller(session).ok_or(status::USER_SESSION_DELETED)?;
        let host = crate::rpc::Host { shares: &shares, auth: &auth, caller: &caller, role_of: &role_of, fsrvp: dir.shadow_copies() };
        let pipe = self.opens.get_mut(&volatile).and_then(|o| o.pipe.as_mut()).ok_or(status::FILE_CLOSED)?;
        pipe.write(pdu, &host).map_err(|_| status::INVALID_PARAMETER)
    }

    pub(in crate::server) fn flush(&mut self, h: &Header, message: &[u8], files: &dyn Files) -> Reply {
        let Some(volatile) = Self::file_id(&message[HEADER_BYTES..], 8) else { return Reply::error(status::INVALID_PARAMETER) };
        let (share, access, pipe) = match self.open_of(h, volatile) {
            Ok(o) => (o.share.clone(), o.access, o.pipe.is_some()),
            Err(s) => return Reply::error(s),
        };
        // MS-SMB2 3.3.5.11: a flush needs write or append access; a pipe has nothing to flush.
        if access & (share_modes::FILE_WRITE_DATA | share_modes::FILE_APPEND_DATA) == 0 {
            return Reply::error(status::ACCESS_DENIED);
        }
        if pipe {
            return Reply::ok(vec![4, 0, 0, 0]);
        }
        match files.flush(&share) {
            Ok(()) => Reply::ok(vec![4, 0, 0, 0]),
            Err(e) => fs(e),
        }
    }
}

/// The reply to a READ of `len` bytes of a file, from what the read gave.
/// `read` is what [`Files::read`] gave with [`READ_ROOM`] bytes of room: the response is built
/// around the data where it lies.
pub(in crate::server) fn read_reply(len: u32, read: Result<Vec<u8>, FsError>) -> Reply {
    match read {
        Ok(d) if d.len() < READ_ROOM => Reply::error(status::INTERNAL_ERROR),
        Ok(d) if d.len() == READ_ROOM && len > 0 => Reply::error(status::END_OF_FILE),
        Ok(mut d) => {
            let fields = read_fields(d.len() - READ_ROOM);
            d[HEADER_BYTES..READ_ROOM].copy_from_slice(&fields);
            Reply::framed(d)
        }
        Err(e) => fs(e),
    }
}

/// Bytes before a READ response's data: the SMB2 header and the READ response's own fields.
pub const READ_ROOM: usize = HEADER_BYTES + 16;

/// A READ response's fields before its data (MS-SMB2 2.2.20), for `len` bytes of data.
fn read_fields(len: usize) -> [u8; 16] {
    let mut f = [0u8; 16];
    f[..4].copy_from_slice(&[17, 0, READ_ROOM as u8, 0]);
    f[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    f
}

/// A READ response body (MS-SMB2 2.2.20) carrying `data`.
pub(in crate::server) fn read_body(data: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(16 + data.len());
    r.extend_from_slice(&read_fields(data.len()));
    r.extend_from_slice(data);
    r
}

/// An IOCTL response body (MS-SMB2 2.2.32) for the request body `request`, carrying `out`.
pub(in crate::server) fn ioctl_body(request: &[u8], out: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(48 + out.len());
    r.extend_from_slice(&[49, 0, 0, 0]);
    r.extend_from_slice(&request[4..24]); // CtlCode and FileId, echoed
    r.extend_from_slice(&((HEADER_BYTES + 48) as u32).to_le_bytes()); // InputOffset
    r.extend_from_slice(&0u32.to_le_bytes()); // InputCount
    r.extend_from_slice(&((HEADER_BYTES + 48) as u32).to_le_bytes()); // OutputOffset
    r.extend_from_slice(&(out.len() as u32).to_le_bytes());
    r.extend_from_slice(&[0; 8]); // Flags, Reserved2
    r.extend_from_slice(out);
    r
}

/// A WRITE response's body: `len` bytes written (MS-SMB2 2.2.22).
pub(in crate::server) fn write_body(len: u32) -> Vec<u8> {
    let mut r = vec![17, 0, 0, 0];
    r.extend_from_slice(&len.to_le_bytes());
    r.extend_from_slice(&[0; 9]);
    r
}
