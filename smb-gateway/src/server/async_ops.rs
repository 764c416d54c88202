//! Requests that wait (MS-SMB2 3.3.4.2, 3.3.4.3, 3.3.5.16): a named-pipe READ with nothing to
//! read yet, a CHANGE_NOTIFY with nothing to report yet, a READ of a file another node serves,
//! a LOCK whose range another lock holds.
//! Such a request is answered at once with an interim response (STATUS_PENDING,
//! SMB2_FLAGS_ASYNC_COMMAND, a fresh AsyncId, the credits it asked for, unsigned), and later
//! with its final response: the same AsyncId, CreditResponse 0, signed as its request would
//! have been. The table of waiting requests is
//! bounded per connection; a request past the bound fails with STATUS_INSUFFICIENT_RESOURCES.
//! A CANCEL (by AsyncId, or by MessageId for its sync form) ends one with STATUS_CANCELLED and
//! gets no response of its own.

use std::collections::BTreeMap;

use crate::smb2::header::{Header, Target, FLAG_ASYNC_COMMAND, FLAG_RELATED_OPERATIONS, FLAG_SERVER_TO_REDIR, FLAG_SIGNED, HEADER_BYTES};
use crate::smb2::signing::{self, Algorithm};
use crate::smb2::status;

/// Requests one connection may have waiting at once.
pub const MAX_ASYNC_OPS_PER_CONNECTION: usize = 256;

/// What a waiting request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// A named-pipe READ of at most `len` bytes: completes when the pipe has output.
    PipeRead { volatile: u64, len: u32 },
    /// CHANGE_NOTIFY on a directory: completes when its watch has something to report.
    Notify { volatile: u64, max_out: u32 },
    /// A file READ served by another node: completes when the owner's data arrives, so that
    /// the connection goes on with the client's next requests meanwhile.
    FileRead { volatile: u64, offset: u64, len: u32 },
    /// A byte-range lock that waits for its range (LOCK without FAIL_IMMEDIATELY): asked for
    /// again now and then until granted.
    Lock { volatile: u64, lock: crate::byte_locks::ByteLock },
}

impl Waiting {
    /// The open it waits on.
    pub fn volatile(&self) -> u64 {
        match *self {
            Waiting::PipeRead { volatile, .. } | Waiting::Notify { volatile, .. } | Waiting::FileRead { volatile, .. } | Waiting::Lock { volatile, .. } => volatile,
        }
    }
}

/// A request answered STATUS_PENDING.
#[derive(Debug)]
pub struct AsyncOp {
    /// Its request header (with a related compound's ids filled in).
    pub request: Header,
    pub waiting: Waiting,
    /// The key its final response is signed with (a copy: it outlives a LOGOFF).
    signing: Option<(Algorithm, [u8; 16])>,
}

/// The connection's waiting requests, by AsyncId, and the final responses ready to send.
#[derive(Debug)]
pub struct AsyncOps {
    ops: BTreeMap<u64, AsyncOp>,
    next_id: u64,
    outbox: Vec<Vec<u8>>,
}

impl Default for AsyncOps {
    fn default() -> Self {
        AsyncOps { ops: BTreeMap::new(), next_id: 1, outbox: Vec::new() }
    }
}

impl AsyncOps {
    /// Registers a waiting request: its AsyncId (never 0, unique while it waits), or
    /// STATUS_INSUFFICIENT_RESOURCES past the bound.
    pub fn start(&mut self, request: Header, waiting: Waiting, signing: Option<(Algorithm, [u8; 16])>) -> Result<u64, u32> {
        if self.ops.len() >= MAX_ASYNC_OPS_PER_CONNECTION {
            return Err(status::INSUFFICIENT_RESOURCES);
        }
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        debug_assert!(id != 0 && !self.ops.contains_key(&id));
        self.ops.insert(id, AsyncOp { request, waiting, signing });
        Ok(id)
    }

    /// The waiting request a CANCEL names: by AsyncId (async form) or MessageId (sync form),
    /// in the CANCEL's session.
    pub fn find(&self, cancel: &Header) -> Option<u64> {
        let same_session = |op: &AsyncOp| op.request.session_id == cancel.session_id;
        match cancel.target {
            Target::Async { async_id } => self.ops.get(&async_id).filter(|op| same_session(op)).map(|_| async_id),
            Target::Sync { .. } => self.ops.iter().find(|(_, op)| op.request.message_id == cancel.message_id && same_session(op)).map(|(&id, _)| id),
        }
    }

    /// AsyncIds of the requests whose wait matches.
    pub fn matching(&self, mut f: impl FnMut(&Waiting) -> bool) -> Vec<u64> {
        self.ops.iter().filter(|(_, op)| f(&op.waiting)).map(|(&id, _)| id).collect()
    }

    /// What every waiting request waits for.
    pub fn waiting(&self) -> impl Iterator<Item = &Waiting> {
        self.ops.values().map(|op| &op.waiting)
    }

    pub fn get(&self, async_id: u64) -> Option<&AsyncOp> {
        self.ops.get(&async_id)
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Ends a waiting request with its final response (`body` after the header); false if no
    /// request waits under that id.
    pub fn finish(&mut self, async_id: u64, status: u32, body: &[u8]) -> bool {
        if !self.ops.contains_key(&async_id) {
            return false;
        }
        let mut framed = Vec::with_capacity(HEADER_BYTES + body.len());
        framed.resize(HEADER_BYTES, 0);
        framed.extend_from_slice(body);
        self.finish_framed(async_id, status, framed)
    }

    /// [`Self::finish`] for a body after [`HEADER_BYTES`] of room: the header is written there.
    pub fn finish_framed(&mut self, async_id: u64, status: u32, mut out: Vec<u8>) -> bool {
        let Some(op) = self.ops.remove(&async_id) else { return false };
        let h = Header {
            credit_charge: op.request.credit_charge,
            status,
            command: op.request.command,
            credits: 0,
            flags: FLAG_SERVER_TO_REDIR | FLAG_ASYNC_COMMAND,
            next_command: 0,
            message_id: op.request.message_id,
            target: Target::Async { async_id },
            session_id: op.request.session_id,
            signature: [0; 16],
        };
        h.encode_into(&mut out[..HEADER_BYTES]);
        if let Some((algorithm, key)) = op.signing {
            let flags = u32::from_le_bytes(out[16..20].try_into().expect("4 bytes")) | FLAG_SIGNED;
            out[16..20].copy_from_slice(&flags.to_le_bytes());
            signing::sign_in_place(algorithm, &key, &mut out);
        }
        self.outbox.push(out);
        true
    }

    /// Queues a response made elsewhere (a WRITE the driver carried out) with the final ones.
    pub fn queue(&mut self, response: Vec<u8>) {
        self.outbox.push(response);
    }

    /// Final responses to send, in the order they were made.
    pub fn take_sends(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.outbox)
    }
}

/// The interim response to `request`, now waiting as `async_id`, granting `credits`; unsigned
/// (MS-SMB2 3.3.4.1.1: clients do not check interim signatures).
pub fn interim(request: &Header, async_id: u64, credits: u16) -> Vec<u8> {
    let h = Header {
        credit_charge: request.credit_charge,
        status: status::PENDING,
        command: request.command,
        credits,
        flags: FLAG_SERVER_TO_REDIR | FLAG_ASYNC_COMMAND | (request.flags & FLAG_RELATED_OPERATIONS),
        next_command: 0,
        message_id: request.message_id,
        target: Target::Async { async_id },
        session_id: request.session_id,
        signature: [0; 16],
    };
    let mut out = Vec::with_capacity(HEADER_BYTES + 9);
    h.encode(&mut out);
    out.extend_from_slice(&ERROR_BODY);
    out
}

/// An error response body (MS-SMB2 2.2.2): StructureSize 9, no error data.
pub const ERROR_BODY: [u8; 9] = [9, 0, 0, 0, 0, 0, 0, 0, 0];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smb2::header::Command;

    fn request(message_id: u64, session_id: u64) -> Header {
        Header { credit_charge: 1, status: 0, command: Command::ChangeNotify, credits: 8, flags: FLAG_SIGNED, next_command: 0, message_id, target: Target::Sync { process_id: 0, tree_id: 1 }, session_id, signature: [0; 16] }
    }

    const WAIT: Waiting = Waiting::Notify { volatile: 3, max_out: 100 };

    #[test]
    fn the_interim_and_the_final_response_carry_the_same_async_id_and_only_the_interim_grants_credits() {
        let mut ops = AsyncOps::default();
        let key = [1u8; 16];
        let id = ops.start(request(5, 9), WAIT, Some((Algorithm::HmacSha256, key))).unwrap();
        assert_ne!(id, 0);
        let i = Header::parse(&interim(&request(5, 9), id, 8)).unwrap();
        assert_eq!((i.status, i.target, i.credits, i.message_id), (status::PENDING, Target::Async { async_id: id }, 8, 5));
        assert_eq!(i.flags, FLAG_SERVER_TO_REDIR | FLAG_ASYNC_COMMAND, "async, and not signed");
        assert!(ops.finish(id, status::SUCCESS, &[9, 0, 72, 0, 0, 0, 0, 0, 0]));
        let sent = ops.take_sends();
        let f = Header::parse(&sent[0]).unwrap();
        assert_eq!((f.status, f.target, f.credits, f.message_id), (status::SUCCESS, Target::Async { async_id: id }, 0, 5));
        assert!(f.flags & FLAG_SIGNED != 0 && signing::verify(Algorithm::HmacSha256, &key, &sent[0]), "the final response is signed");
        assert!(!ops.finish(id, status::SUCCESS, &[]), "finished once");
        assert!(ops.is_empty());
    }

    #[test]
    fn cancel_finds_a_request_by_async_id_or_by_message_id_in_its_own_session() {
        let mut ops = AsyncOps::default();
        let a = ops.start(request(5, 9), WAIT, None).unwrap();
        let b = ops.start(request(6, 9), WAIT, None).unwrap();
        let cancel = |target, message_id, session_id| Header { command: Command::Cancel, target, message_id, session_id, ..request(0, 0) };
        assert_eq!(ops.find(&cancel(Target::Async { async_id: b }, 0, 9)), Some(b));
        assert_eq!(ops.find(&cancel(Target::Sync { process_id: 0, tree_id: 1 }, 5, 9)), Some(a));
        assert_eq!(ops.find(&cancel(Target::Async { async_id: b }, 0, 10)), None, "another session");
        assert_eq!(ops.find(&cancel(Target::Sync { process_id: 0, tree_id: 1 }, 7, 9)), None, "no such request");
    }

    #[test]
    fn past_the_bound_a_request_gets_insufficient_resources() {
        let mut ops = AsyncOps::default();
        for m in 0..MAX_ASYNC_OPS_PER_CONNECTION as u64 {
            ops.start(request(m, 1), WAIT, None).unwrap();
        }
        assert_eq!(ops.start(request(9999, 1), WAIT, None), Err(status::INSUFFICIENT_RESOURCES));
        let first = ops.matching(|_| true)[0];
        ops.finish(first, status::CANCELLED, &ERROR_BODY);
        assert!(ops.start(request(9999, 1), WAIT, None).is_ok(), "room again once one ends");
    }
}

/// The rules through the connection: frames in, replies and final responses out.
#[cfg(test)]
mod connection_rules {
    use super::*;
    use crate::server::testkit::*;
    use crate::smb2::header::{Command, FLAG_RELATED_OPERATIONS};

    /// smbclient's srvsvc bind (see rpc::tests): the pipe answers it with a bind_ack.
    const BIND: &str = "05000b03100000004800000001000000b810b810000000000100000000000100c84f324b7016d30112785a47bf6ee18803000000045d888aeb1cc9119fe808002b10486002000000";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn cancel(message_id: u64, async_id: Option<u64>) -> Vec<u8> {
        let mut m = request(Command::Cancel, message_id, IPC, &[4, 0, 0, 0]);
        if let Some(id) = async_id {
            let flags = u32::from_le_bytes(m[16..20].try_into().unwrap()) | FLAG_ASYNC_COMMAND;
            m[16..20].copy_from_slice(&flags.to_le_bytes());
            m[32..40].copy_from_slice(&id.to_le_bytes());
        }
        m
    }

    /// A READ of `len` bytes of file `f` with message id `id` and the CreditCharge it needs
    /// (64 KiB a credit); `id` moves past the ids it used. Its (first) response's header.
    fn charged_read(c: &mut Connection, files: &MemFiles, id: &mut u64, f: u64, len: u32) -> Header {
        let mut m = request(Command::Read, *id, TREE, &read(f, len));
        let charge = len.div_ceil(64 * 1024).max(1) as u16;
        m[6..8].copy_from_slice(&charge.to_le_bytes());
        *id += u64::from(charge);
        exchange(c, files, &m).0[0].0.clone()
    }

    /// A READ of the pipe that waits: its AsyncId.
    fn waiting_read(c: &mut Connection, files: &MemFiles, message_id: u64, pipe: u64) -> u64 {
        let (r, finals) = exchange(c, files, &request(Command::Read, message_id, IPC, &read(pipe, 4280)));
        assert!(finals.is_empty());
        let (h, _) = &r[0];
        assert_eq!((h.status, h.message_id), (status::PENDING, message_id));
        assert!(h.flags & FLAG_ASYNC_COMMAND != 0 && h.credits > 0, "interim: async, granting credits");
        let Target::Async { async_id } = h.target else { panic!("an async header") };
        async_id
    }

    use crate::server::connection::Connection;

    #[test]
    fn a_pipe_read_with_nothing_to_read_waits_and_completes_with_the_same_async_id_once_the_pipe_has_output() {
        let (mut c, files) = (connection(), MemFiles::with_dirs(&[]));
        let pipe = open(&mut c, &files, 1, IPC, "srvsvc", false, 1);
        let id = waiting_read(&mut c, &files, 2, pipe);
        let (r, finals) = exchange(&mut c, &files, &request(Command::Write, 3, IPC, &write(pipe, &hex(BIND))));
        assert_eq!(r[0].0.status, status::SUCCESS, "the WRITE");
        let (h, body) = &finals[0];
        assert_eq!((h.status, h.command, h.message_id, h.target, h.credits), (status::SUCCESS, Command::Read, 2, Target::Async { async_id: id }, 0));
        assert_eq!(&body[16..19], &[5, 0, 12], "the READ carries the bind_ack");
    }

    #[test]
    fn a_read_of_a_file_another_node_serves_waits_while_the_next_requests_go_on() {
        let (mut c, mut files) = (connection(), MemFiles::with_dirs(&[]));
        files.1 = true;
        let f = open(&mut c, &files, 1, TREE, "f.txt", false, 2);
        let (r, finals) = exchange(&mut c, &files, &request(Command::Read, 2, TREE, &read(f, 100)));
        assert!(finals.is_empty());
        let (h, _) = &r[0];
        assert_eq!(h.status, status::PENDING);
        let Target::Async { async_id } = h.target else { panic!("an async header") };
        let jobs = c.take_file_reads();
        assert_eq!(jobs.iter().map(|j| (j.async_id, j.offset, j.len)).collect::<Vec<_>>(), vec![(async_id, 0, 100)]);
        assert!(c.take_file_reads().is_empty(), "each read is handed out once");
        // Meanwhile the connection answers the client's next request.
        let (r, _) = exchange(&mut c, &files, &request(Command::Echo, 3, TREE, &[4, 0, 0, 0]));
        assert_eq!(r[0].0.status, status::SUCCESS);
        // The owner's data completes the READ under its AsyncId.
        // (What Files::read gives: the data after room for the response's headers.)
        let after_room = |data: &[u8]| [&[0u8; crate::server::READ_ROOM][..], data].concat();
        c.finish_file_read(async_id, Ok(after_room(b"hello")));
        let (_, finals) = exchange(&mut c, &files, &request(Command::Echo, 4, TREE, &[4, 0, 0, 0]));
        let (h, body) = &finals[0];
        assert_eq!((h.status, h.command, h.message_id, h.target), (status::SUCCESS, Command::Read, 2, Target::Async { async_id }));
        assert_eq!(&body[16..21], b"hello");
        // Nothing read where the file ends: END_OF_FILE; an id that no longer waits: nothing.
        let (r, _) = exchange(&mut c, &files, &request(Command::Read, 5, TREE, &read(f, 100)));
        let Target::Async { async_id: eof } = r[0].0.target else { panic!("an async header") };
        c.finish_file_read(eof, Ok(after_room(b"")));
        c.finish_file_read(async_id, Ok(after_room(b"again")));
        let (_, finals) = exchange(&mut c, &files, &request(Command::Echo, 6, TREE, &[4, 0, 0, 0]));
        assert_eq!(finals.iter().map(|(h, _)| (h.status, h.message_id)).collect::<Vec<_>>(), vec![(status::END_OF_FILE, 5)]);
        // The bytes in flight are bounded: past the bound a READ is served on the spot.
        let max = 1u32 << 20;
        let fit = crate::server::connection::MAX_FILE_READ_BYTES_IN_FLIGHT / u64::from(max);
        let mut id = 10;
        let mut read_of = |c: &mut Connection, f: u64, len: u32| charged_read(c, &files, &mut id, f, len);
        for _ in 0..fit {
            assert_eq!(read_of(&mut c, f, max).status, status::PENDING);
        }
        let h = read_of(&mut c, f, max);
        assert_eq!((h.status, h.flags & FLAG_ASYNC_COMMAND), (status::END_OF_FILE, 0), "served at once");
        let started = c.take_file_reads();
        assert_eq!(started.len() as u64, fit);
        // A READ whose request no longer waits (its file closed, or a CANCEL) still counts until
        // the driver gives its result back.
        let (r, _) = exchange(&mut c, &files, &request(Command::Close, id, TREE, &close(f)));
        assert_eq!(r[0].0.status, status::SUCCESS);
        let f = open(&mut c, &files, id + 1, TREE, "f.txt", false, 1);
        id += 2;
        let mut read_of = |c: &mut Connection, len: u32| charged_read(c, &files, &mut id, f, len);
        assert_eq!(read_of(&mut c, 1).flags & FLAG_ASYNC_COMMAND, 0, "still served at once");
        for r in &started {
            c.finish_file_read(r.async_id, Ok(after_room(b"late")));
        }
        // And however small, at most MAX_FILE_READS_IN_FLIGHT.
        for _ in 0..crate::server::connection::MAX_FILE_READS_IN_FLIGHT {
            assert_eq!(read_of(&mut c, 1).status, status::PENDING);
        }
        assert_eq!(read_of(&mut c, 1).flags & FLAG_ASYNC_COMMAND, 0, "one read more is served at once");
    }

    #[test]
    fn cancel_by_async_id_or_by_message_id_ends_the_wait_with_cancelled_and_gets_no_response_itself() {
        let (mut c, files) = (connection(), MemFiles::with_dirs(&[]));
        let pipe = open(&mut c, &files, 1, IPC, "srvsvc", false, 1);
        let a = waiting_read(&mut c, &files, 2, pipe);
        let (r, finals) = exchange(&mut c, &files, &cancel(2, Some(a)));
        assert!(r.is_empty(), "no response to a CANCEL");
        assert_eq!((finals[0].0.status, finals[0].0.message_id, finals[0].0.target), (status::CANCELLED, 2, Target::Async { async_id: a }));
        let b = waiting_read(&mut c, &files, 3, pipe);
        assert_ne!(a, b);
        let (r, finals) = exchange(&mut c, &files, &cancel(3, None));
        assert!(r.is_empty());
        assert_eq!((finals[0].0.status, finals[0].0.target), (status::CANCELLED, Target::Async { async_id: b }), "the sync form, by MessageId");
        let (r, finals) = exchange(&mut c, &files, &cancel(3, None));
        assert!(r.is_empty() && finals.is_empty(), "nothing waits under that id any more");
    }

    #[test]
    fn past_the_bound_a_request_that_would_wait_fails_with_insufficient_resources() {
        let (mut c, files) = (connection(), MemFiles::with_dirs(&[]));
        let pipe = open(&mut c, &files, 1, IPC, "srvsvc", false, 1);
        for m in 0..MAX_ASYNC_OPS_PER_CONNECTION as u64 {
            waiting_read(&mut c, &files, 2 + m, pipe);
        }
        let next = 2 + MAX_ASYNC_OPS_PER_CONNECTION as u64;
        let (r, _) = exchange(&mut c, &files, &request(Command::Read, next, IPC, &read(pipe, 100)));
        assert_eq!((r[0].0.status, r[0].0.flags & FLAG_ASYNC_COMMAND), (status::INSUFFICIENT_RESOURCES, 0));
    }

    #[test]
    fn closing_the_handle_or_logging_off_ends_what_waits_on_it() {
        let (mut c, files) = (connection(), MemFiles::with_dirs(&["d"]));
        let pipe = open(&mut c, &files, 1, IPC, "srvsvc", false, 1);
        let read_id = waiting_read(&mut c, &files, 2, pipe);
        let (r, finals) = exchange(&mut c, &files, &request(Command::Close, 3, IPC, &close(pipe)));
        assert_eq!(r[0].0.status, status::SUCCESS);
        assert_eq!((finals[0].0.status, finals[0].0.target), (status::CANCELLED, Target::Async { async_id: read_id }));
        let dir = open(&mut c, &files, 4, TREE, "d", true, 1);
        let (r, _) = exchange(&mut c, &files, &request(Command::ChangeNotify, 5, TREE, &change_notify(dir, 1, 0, 1024)));
        assert_eq!(r[0].0.status, status::PENDING);
        let (_, finals) = exchange(&mut c, &files, &request(Command::Close, 6, TREE, &close(dir)));
        assert_eq!((finals[0].0.status, finals[0].0.message_id), (status::NOTIFY_CLEANUP, 5));
        let dir = open(&mut c, &files, 7, TREE, "d", true, 1);
        exchange(&mut c, &files, &request(Command::ChangeNotify, 8, TREE, &change_notify(dir, 1, 0, 1024)));
        let (_, finals) = exchange(&mut c, &files, &request(Command::Logoff, 9, 0, &[4, 0, 0, 0]));
        assert_eq!((finals[0].0.status, finals[0].0.message_id), (status::NOTIFY_CLEANUP, 8));
        assert!(c.waits.is_empty());
    }

    #[test]
    fn a_related_compound_reaches_the_created_file_and_only_its_last_message_may_wait() {
        let (mut c, files) = (connection(), MemFiles::with_dirs(&["d"]));
        // CREATE d, then CHANGE_NOTIFY on the placeholder FileId, related.
        let mut first = request(Command::Create, 1, TREE, &create("d", true, 1));
        first.resize(first.len().div_ceil(8) * 8, 0);
        let next = first.len() as u32;
        first[20..24].copy_from_slice(&next.to_le_bytes());
        let mut second = request(Command::ChangeNotify, 2, u32::MAX, &change_notify(u64::MAX, 1, 0, 1024));
        second[16..20].copy_from_slice(&FLAG_RELATED_OPERATIONS.to_le_bytes());
        second[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        let (r, _) = exchange(&mut c, &files, &[first.clone(), second.clone()].concat());
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].0.status, r[1].0.status), (status::SUCCESS, status::PENDING), "the notify waits on the created directory");
        // The same pair followed by an ECHO: the notify is no longer last and fails.
        let mut middle = second.clone();
        middle[24..32].copy_from_slice(&4u64.to_le_bytes());
        let next = middle.len() as u32;
        middle[20..24].copy_from_slice(&next.to_le_bytes());
        first[24..32].copy_from_slice(&3u64.to_le_bytes());
        let echo = request(Command::Echo, 5, 0, &[4, 0, 0, 0]);
        let (r, _) = exchange(&mut c, &files, &[first, middle, echo].concat());
        assert_eq!(r.iter().map(|(h, _)| h.status).collect::<Vec<_>>(), vec![status::SUCCESS, status::INTERNAL_ERROR, status::SUCCESS]);
    }

    /// A frame the driver owns has its signatures checked in place: signed requests that
    /// verify are served, one with a changed byte is refused (ACCESS_DENIED, as when checked on
    /// a copy), in a compound each on its own, and the frame is as it was afterwards.
    #[test]
    fn signatures_checked_in_place_verify_as_on_a_copy_and_leave_the_frame_as_it_was() {
        let (mut c, files) = (signing_connection(), MemFiles::with_dirs(&[]));
        let echo = |id: u64, next: bool| {
            let mut m = request(Command::Echo, id, 0, &[4, 0, 0, 0]);
            if next {
                m.resize(m.len().div_ceil(8) * 8, 0);
                let len = m.len() as u32;
                m[20..24].copy_from_slice(&len.to_le_bytes());
            }
            signed(m)
        };
        let statuses = |c: &mut Connection, frame: &mut Vec<u8>| match c.on_owned_frame(frame, &Dir, &files, &mut Env::new()) {
            crate::server::connection::Outcome::Reply(r) => split(&r).iter().map(|(h, _)| h.status).collect::<Vec<_>>(),
            _ => panic!("a reply"),
        };
        let mut good = [echo(1, true), echo(2, false)].concat();
        let before = good.clone();
        assert_eq!(statuses(&mut c, &mut good), vec![status::SUCCESS, status::SUCCESS]);
        assert_eq!(good, before, "the frame is as it was");
        let mut bad = [echo(3, true), echo(4, false)].concat();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(statuses(&mut c, &mut bad), vec![status::SUCCESS, status::ACCESS_DENIED], "the changed message alone is refused");
        let mut unsigned = request(Command::Echo, 5, 0, &[4, 0, 0, 0]);
        assert_eq!(statuses(&mut c, &mut unsigned), vec![status::ACCESS_DENIED], "signing is required");
        // A genuine CANCEL (its id is not used up) before a forged request with the same id:
        // the CANCEL's signature says nothing of the request's.
        let mut cancel = request(Command::Cancel, 6, 0, &[4, 0, 0, 0]);
        cancel.resize(cancel.len().div_ceil(8) * 8, 0);
        let len = cancel.len() as u32;
        cancel[20..24].copy_from_slice(&len.to_le_bytes());
        let mut forged = echo(6, false);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let mut both = [signed(cancel), forged].concat();
        assert_eq!(statuses(&mut c, &mut both), vec![status::ACCESS_DENIED], "the forged ECHO is refused");
    }

    /// A large WRITE that is a whole frame the driver owns is handed to the driver (no reply
    /// now; its data where the frame has it) and answered, signed, when its result comes back,
    /// with the status storage gave; a small one, one in a frame the caller keeps, and one past
    /// the in-flight bound are written at once.
    #[test]
    fn a_large_write_goes_to_the_driver_and_its_response_is_signed_when_its_result_comes_back() {
        use crate::server::connection::{Outcome, FILE_WRITE_OFF_THREAD_MIN_BYTES, MAX_FILE_WRITES_IN_FLIGHT};
        let (mut c, files) = (signing_connection(), MemFiles::with_dirs(&[]));
        let (r, _) = exchange(&mut c, &files, &signed(request(Command::Create, 1, TREE, &create("f.bin", false, 2))));
        let volatile = u64::from_le_bytes(r[0].1[72..80].try_into().unwrap());
        let big = vec![7u8; FILE_WRITE_OFF_THREAD_MIN_BYTES];
        let mut frame = signed(request(Command::Write, 2, TREE, &write(volatile, &big)));
        assert!(matches!(c.on_owned_frame(&mut frame, &Dir, &files, &mut Env::new()), Outcome::NoReply), "no reply yet");
        let handed = c.take_file_writes();
        assert_eq!(handed.len(), 1);
        let w = &handed[0];
        assert_eq!((w.share.as_str(), w.offset, &frame[w.data.clone()]), ("data", 0, &big[..]), "the data where the frame has it");
        assert!(c.writes_in_flight() && c.take_sends().is_empty());
        c.finish_file_write(w.token, Ok(()));
        let sent = c.take_sends();
        let (h, body) = split(&sent[0]).remove(0);
        assert_eq!((h.command, h.message_id, h.status, u32::from_le_bytes(body[4..8].try_into().unwrap()) as usize), (Command::Write, 2, status::SUCCESS, big.len()));
        assert!(h.flags & FLAG_SIGNED != 0 && signing::verify(KEY.0, &KEY.1, &sent[0]), "signed");
        assert!(h.credits > 0, "it grants credits as a response at once would");
        assert!(!c.writes_in_flight());
        c.finish_file_write(w.token, Ok(()));
        assert!(c.take_sends().is_empty(), "a result given twice answers once");
        // Storage's error is the response's status.
        let mut frame = signed(request(Command::Write, 3, TREE, &write(volatile, &big)));
        assert!(matches!(c.on_owned_frame(&mut frame, &Dir, &files, &mut Env::new()), Outcome::NoReply));
        let token = c.take_file_writes()[0].token;
        c.finish_file_write(token, Err(crate::server::files::FsError::DiskFull));
        assert_eq!(split(&c.take_sends()[0])[0].0.status, crate::server::files::FsError::DiskFull.status());
        // Written at once: a small WRITE, and a large one in a frame the caller keeps.
        let mut small = signed(request(Command::Write, 4, TREE, &write(volatile, &big[1..])));
        assert!(matches!(c.on_owned_frame(&mut small, &Dir, &files, &mut Env::new()), Outcome::Reply(_)));
        let (r, _) = exchange(&mut c, &files, &signed(request(Command::Write, 5, TREE, &write(volatile, &big))));
        assert_eq!(r[0].0.status, status::SUCCESS);
        // At most MAX_FILE_WRITES_IN_FLIGHT: the next is written at once.
        for id in 6..6 + MAX_FILE_WRITES_IN_FLIGHT as u64 {
            let mut frame = signed(request(Command::Write, id, TREE, &write(volatile, &big)));
            assert!(matches!(c.on_owned_frame(&mut frame, &Dir, &files, &mut Env::new()), Outcome::NoReply));
        }
        let mut frame = signed(request(Command::Write, 6 + MAX_FILE_WRITES_IN_FLIGHT as u64, TREE, &write(volatile, &big)));
        assert!(matches!(c.on_owned_frame(&mut frame, &Dir, &files, &mut Env::new()), Outcome::Reply(_)), "past the bound");
        let handed = c.take_file_writes();
        assert_eq!(handed.len(), MAX_FILE_WRITES_IN_FLIGHT);
        for w in handed {
            c.finish_file_write(w.token, Ok(()));
        }
        // An append (offset 0xFFFFFFFFFFFFFFFF) is written in turn: appends keep their order.
        let mut append = write(volatile, &big);
        append[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut frame = signed(request(Command::Write, 7 + MAX_FILE_WRITES_IN_FLIGHT as u64, TREE, &append));
        assert!(matches!(c.on_owned_frame(&mut frame, &Dir, &files, &mut Env::new()), Outcome::Reply(_)), "an append");
        assert!(c.take_file_writes().is_empty());
    }

    /// A directory without the share "data" (an administrator deleted it).
    struct Deleted;

    impl crate::server::Directory for Deleted {
        fn user(&self, _: &str) -> Option<(umbra_raft::command::NtHash, umbra_raft::command::Role)> {
            None
        }
        fn share(&self, _: &str) -> Option<(String, bool)> {
            None
        }
        fn shares(&self) -> Vec<String> {
            Vec::new()
        }
    }

    /// A share deleted while WRITEs are under way: a WRITE that runs meanwhile is refused but
    /// leaves the tree's opens to the WRITEs under way; the next request (which the driver
    /// runs once they are done) disconnects the tree and closes them.
    #[test]
    fn a_share_deleted_while_writes_are_under_way_keeps_their_opens_until_they_are_done() {
        use crate::server::connection::{Outcome, FILE_WRITE_OFF_THREAD_MIN_BYTES};
        let (mut c, files) = (signing_connection(), MemFiles::with_dirs(&[]));
        let (r, _) = exchange(&mut c, &files, &signed(request(Command::Create, 1, TREE, &create("f.bin", false, 2))));
        let volatile = u64::from_le_bytes(r[0].1[72..80].try_into().unwrap());
        let mut frame = signed(request(Command::Write, 2, TREE, &write(volatile, &vec![7; FILE_WRITE_OFF_THREAD_MIN_BYTES])));
        assert!(matches!(c.on_owned_frame(&mut frame, &Dir, &files, &mut Env::new()), Outcome::NoReply));
        let token = c.take_file_writes()[0].token;
        let mut small = signed(request(Command::Write, 3, TREE, &write(volatile, b"x")));
        let Outcome::Reply(r) = c.on_owned_frame(&mut small, &Deleted, &files, &mut Env::new()) else { panic!("a reply") };
        assert_eq!(split(&r)[0].0.status, status::NETWORK_NAME_DELETED);
        assert!(c.opens.contains_key(&volatile), "the open stays while a WRITE on it is under way");
        c.finish_file_write(token, Ok(()));
        assert_eq!(split(&c.take_sends()[0])[0].0.status, status::SUCCESS);
        let Outcome::Reply(r) = c.on_owned_frame(&mut signed(request(Command::Flush, 4, TREE, &close(volatile))), &Deleted, &files, &mut Env::new()) else { panic!("a reply") };
        assert_eq!(split(&r)[0].0.status, status::NETWORK_NAME_DELETED);
        assert!(!c.opens.contains_key(&volatile), "closed with its tree");
    }

    /// The LOGOFF response is signed with the session it ends (MS-SMB2 3.3.4.1.1).
    #[test]
    fn a_logoff_response_is_signed_with_the_session_it_ends() {
        let (mut c, files) = (signing_connection(), MemFiles::with_dirs(&[]));
        let (r, _) = exchange(&mut c, &files, &signed(request(Command::Logoff, 1, 0, &[4, 0, 0, 0])));
        assert_eq!(r[0].0.status, status::SUCCESS);
        let reply = match c.on_frame(&signed(request(Command::Echo, 2, 0, &[4, 0, 0, 0])), &Dir, &files, &mut Env::new()) {
            crate::server::connection::Outcome::Reply(r) => r,
            _ => panic!("an ECHO reply"),
        };
        assert_eq!(Header::parse(&reply).unwrap().flags & FLAG_SIGNED, 0, "the session is gone: nothing signs the next reply");
        let mut again = signing_connection();
        let frame = match again.on_frame(&signed(request(Command::Logoff, 1, 0, &[4, 0, 0, 0])), &Dir, &files, &mut Env::new()) {
            crate::server::connection::Outcome::Reply(r) => r,
            _ => panic!("a LOGOFF reply"),
        };
        let h = Header::parse(&frame).unwrap();
        assert!(h.flags & FLAG_SIGNED != 0 && signing::verify(KEY.0, &KEY.1, &frame), "the LOGOFF response is signed");
    }

    #[test]
    fn with_signing_required_an_unsigned_cancel_still_cancels_a_badly_signed_one_is_ignored_and_the_final_response_is_signed() {
        let (mut c, files) = (signing_connection(), MemFiles::with_dirs(&[]));
        let (r, _) = exchange(&mut c, &files, &signed(request(Command::Create, 1, IPC, &create("srvsvc", false, 1))));
        let pipe = u64::from_le_bytes(r[0].1[72..80].try_into().unwrap());
        let (r, _) = exchange(&mut c, &files, &signed(request(Command::Read, 2, IPC, &read(pipe, 4280))));
        let (h, _) = &r[0];
        assert_eq!((h.status, h.flags & FLAG_SIGNED), (status::PENDING, 0), "the interim response is not signed");
        let Target::Async { async_id } = h.target else { panic!("async") };
        let mut forged = signed(cancel(2, Some(async_id)));
        forged[50] ^= 1;
        let (r, finals) = exchange(&mut c, &files, &forged);
        assert!(r.is_empty() && finals.is_empty(), "a CANCEL whose signature fails is ignored");
        assert!(matches!(c.on_frame(&cancel(2, Some(async_id)), &Dir, &files, &mut Env::new()), crate::server::connection::Outcome::NoReply));
        let finals = c.take_sends();
        let h = Header::parse(&finals[0]).unwrap();
        assert_eq!((h.status, h.target), (status::CANCELLED, Target::Async { async_id }), "an unsigned CANCEL is accepted");
        assert!(h.flags & FLAG_SIGNED != 0 && signing::verify(KEY.0, &KEY.1, &finals[0]), "the final response is signed");
    }

    /// One small frame asking for more response bytes than a frame carries (a compound of
    /// 1 MiB READs) ends the connection once the responses reach the bound; one that fits is
    /// answered.
    #[test]
    fn a_compound_whose_responses_pass_a_frame_ends_the_connection() {
        let (mut c, mut files) = (connection(), MemFiles::with_dirs(&[]));
        files.2 = true;
        let f = open(&mut c, &files, 1, TREE, "f", false, 2);
        let mib = 1u32 << 20;
        let compound = |first_id: u64, n: u64| {
            let mut frame = Vec::new();
            for i in 0..n {
                let mut m = request(Command::Read, first_id + i * 16, TREE, &read(f, mib));
                m[6..8].copy_from_slice(&16u16.to_le_bytes()); // CreditCharge for 1 MiB
                if i + 1 < n {
                    m.resize(m.len().div_ceil(8) * 8, 0);
                    let next = m.len() as u32;
                    m[20..24].copy_from_slice(&next.to_le_bytes());
                }
                frame.extend_from_slice(&m);
            }
            frame
        };
        let (r, _) = exchange(&mut c, &files, &compound(2, 4));
        assert_eq!(r.iter().map(|(h, _)| h.status).collect::<Vec<_>>(), vec![status::SUCCESS; 4], "four 1 MiB READs fit");
        let many = (crate::server::connection::MAX_COMPOUND_RESPONSE_BYTES as u64 >> 20) + 1;
        match c.on_frame(&compound(2 + 4 * 16, many), &Dir, &files, &mut Env::new()) {
            crate::server::connection::Outcome::Close(why) => assert!(why.contains("compound"), "{why}"),
            _ => panic!("{many} READs of 1 MiB in one compound must end the connection"),
        }
    }

    /// Re-authenticating an established session is refused, and the session goes on with its
    /// opens (it was dropped, its opens left out of the client's reach).
    #[test]
    fn a_session_setup_on_an_established_session_leaves_it_as_it_is() {
        let (mut c, files) = (connection(), MemFiles::with_dirs(&[]));
        let f = open(&mut c, &files, 1, TREE, "f.txt", false, 2);
        let mut body = vec![25, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&(HEADER_BYTES as u16 + 24).to_le_bytes());
        body.extend_from_slice(&2u16.to_le_bytes());
        body.extend_from_slice(&[0; 8]);
        body.extend_from_slice(&[0x30, 0]);
        let (r, _) = exchange(&mut c, &files, &request(Command::SessionSetup, 2, 0, &body));
        assert_eq!(r[0].0.status, status::NOT_SUPPORTED);
        let (r, _) = exchange(&mut c, &files, &request(Command::Read, 3, TREE, &read(f, 10)));
        assert_eq!(r[0].0.status, status::END_OF_FILE, "the session and its open are still there");
    }

    /// An overwrite checks its open as a writer for share access, but the handle gets only the
    /// rights granted: with read access alone, a WRITE is refused.
    #[test]
    fn an_overwrite_grants_no_write_right_the_client_did_not_ask_for() {
        let (mut c, files) = (connection(), MemFiles::with_dirs(&[]));
        let (r, _) = exchange(&mut c, &files, &request(Command::Create, 1, TREE, &create_with_access("f.txt", false, 5, crate::share_modes::FILE_READ_DATA)));
        assert_eq!(r[0].0.status, status::SUCCESS);
        let f = u64::from_le_bytes(r[0].1[72..80].try_into().unwrap());
        let (r, _) = exchange(&mut c, &files, &request(Command::Write, 2, TREE, &write(f, b"no")));
        assert_eq!(r[0].0.status, status::ACCESS_DENIED);
    }

    /// CREATE's parameter checks (MS-FSA 2.1.5.1): an unknown disposition, both directory
    /// options, or a directory superseded or overwritten is INVALID_PARAMETER.
    #[test]
    fn create_refuses_an_unknown_disposition_and_directory_option_conflicts() {
        let (mut c, files) = (connection(), MemFiles::with_dirs(&["d"]));
        let mut id = 1;
        for (directory, disposition, extra) in [(false, 6, 0), (true, 1, 0x40), (true, 0, 0), (true, 4, 0), (true, 5, 0)] {
            let mut body = create("d", directory, disposition);
            let options = u32::from_le_bytes(body[40..44].try_into().unwrap()) | extra;
            body[40..44].copy_from_slice(&options.to_le_bytes());
            let (r, _) = exchange(&mut c, &files, &request(Command::Create, id, TREE, &body));
            assert_eq!(r[0].0.status, status::INVALID_PARAMETER, "directory {directory}, disposition {disposition}, options {options:#x}");
            id += 1;
        }
        let (r, _) = exchange(&mut c, &files, &request(Command::Create, id, TREE, &create("d", true, 3)));
        assert_eq!(r[0].0.status, status::SUCCESS, "open-if of a directory is fine");
    }

    /// Named pipes per connection are bounded (each may buffer a stub and replies); a closed
    /// one makes room.
    #[test]
    fn pipes_per_connection_are_bounded() {
        let (mut c, files) = (connection(), MemFiles::with_dirs(&[]));
        let max = crate::server::ops::MAX_PIPES_PER_CONNECTION as u64;
        let pipes: Vec<u64> = (0..max).map(|i| open(&mut c, &files, 1 + i, IPC, "srvsvc", false, 1)).collect();
        let (r, _) = exchange(&mut c, &files, &request(Command::Create, 1 + max, IPC, &create("srvsvc", false, 1)));
        assert_eq!(r[0].0.status, status::REQUEST_NOT_ACCEPTED);
        let (r, _) = exchange(&mut c, &files, &request(Command::Close, 2 + max, IPC, &close(pipes[0])));
        assert_eq!(r[0].0.status, status::SUCCESS);
        open(&mut c, &files, 3 + max, IPC, "srvsvc", false, 1);
    }

    #[test]
    fn echo_needs_no_session() {
        let (mut c, files) = (connection(), MemFiles::with_dirs(&[]));
        let mut echo = request(Command::Echo, 1, 0, &[4, 0, 0, 0]);
        echo[40..48].fill(0);
        let (r, _) = exchange(&mut c, &files, &echo);
        assert_eq!((r[0].0.status, r[0].0.command), (status::SUCCESS, Command::Echo));
    }
}
