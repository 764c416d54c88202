//! One client connection: NEGOTIATE, SESSION_SETUP (SPNEGO + NTLMv2), signing, LOGOFF, ECHO,
//! TREE_CONNECT and TREE_DISCONNECT, compounds (related ones through [`super::chain`]), CANCEL
//! and requests that wait ([`super::async_ops`]); file commands are in `ops/`.
//!
//! Besides the reply to each frame, the connection makes final responses to requests that
//! waited ([`Connection::take_sends`], sent before the reply to the frame that made them) and
//! changes for the node's other connections ([`Connection::take_changes`]); it takes the node's
//! changes with [`Connection::on_changes`].

use std::collections::HashMap;

use super::async_ops::{self, AsyncOps, Waiting};
use super::chain::Chain;
use super::files::Files;
use super::ops::Open;
use super::session::{Established, Pending, Session, Tree};
use super::{Config, Directory, Environment};
use crate::ntlm::messages::{Authenticate, SIGNATURE};
use crate::ntlm::verify::{finish_logon, verify_ntlmv2};
use crate::ntlm::{challenge, session::directions};
use crate::smb2::header::{Command, Header, Target, FLAG_RELATED_OPERATIONS, FLAG_SERVER_TO_REDIR, FLAG_SIGNED, HEADER_BYTES};
use crate::smb2::negotiate::{self, DIALECT_202, DIALECT_210, DIALECT_300, DIALECT_302, DIALECT_311};
use crate::smb2::signing::{self, Algorithm, Preauth};
use crate::smb2::{compound, status};
use crate::spnego::{self, NegTokenResp, OID_NTLMSSP};
use crate::wire::{u16_at, u32_at, utf16_decode as utf16};

/// Dialects the server speaks, best last.
const DIALECTS: [u16; 5] = [DIALECT_202, DIALECT_210, DIALECT_300, DIALECT_302, DIALECT_311];
/// Sessions one connection may hold (pending included).
pub const MAX_SESSIONS_PER_CONNECTION: usize = 16;
/// Trees one session may connect.
pub const MAX_TREES_PER_SESSION: usize = 64;
/// The responses to one compound together: what one transport frame can carry. A compound
/// whose responses would pass it (many large READs in one small frame) ends its connection
/// once the responses made so far reach it, so no more than this plus one response is held.
pub const MAX_COMPOUND_RESPONSE_BYTES: usize = crate::smb2::frame::MAX_TRANSPORT_FRAME_BYTES;

const SECURITY_MODE_SIGNING_ENABLED: u16 = 0x1;
const SECURITY_MODE_SIGNING_REQUIRED: u16 = 0x2;
const CAP_LARGE_MTU: u32 = 0x4;

/// What the driver does after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send this frame (the messages' replies, compounded as the request was).
    Reply(Vec<u8>),
    /// Close the connection (a malformed or hostile frame).
    Close(String),
    /// Nothing to send for this frame (a CANCEL).
    NoReply,
}

/// What NEGOTIATE settled, for FSCTL_VALIDATE_NEGOTIATE_INFO to compare against.
struct Negotiated {
    client_capabilities: u32,
    client_guid: [u8; 16],
    client_security_mode: u16,
    server_capabilities: u32,
    server_security_mode: u16,
    /// The dialects the client's NEGOTIATE offered, in its order (VALIDATE_NEGOTIATE_INFO
    /// must repeat them).
    client_dialects: Vec<u16>,
}

pub struct Connection {
    pub(super) config: Config,
    negotiated: Option<Negotiated>,
    dialect: Option<u16>,
    signing_algorithm: Option<u16>,
    preauth: Preauth,
    pub(super) sessions: HashMap<u64, Session>,
    next_tree: u32,
    pub(super) opens: HashMap<u64, Open>,
    pub(super) next_file: u64,
    /// VALIDATE_NEGOTIATE_INFO found a difference: the connection ends.
    tampered: bool,
    credits: super::credits::Credits,
    /// The client's address (it scopes the FSRVP context), set by the driver.
    peer: String,
    /// An SMB1 NEGOTIATE was answered with the SMB2 wildcard dialect.
    smb1_upgraded: bool,
    /// Requests answered STATUS_PENDING, and their final responses to send.
    pub(super) waits: AsyncOps,
    /// Paths of opens, directory watches, changes to publish.
    pub(super) tracking: super::ops::notify::Tracking,
    /// READs of files another node serves, waiting to be started by the driver.
    file_reads: Vec<FileRead>,
    /// The bytes of each READ handed to the driver whose result has not come back, by async id.
    file_reads_started: HashMap<u64, u32>,
    /// A session LOGOFF removed in the frame being answered: its response is still signed
    /// with it (MS-SMB2 3.3.4.1.1), then it goes.
    logged_off: Option<(u64, Session)>,
    /// Signatures of the frame under way already checked in place ([`Connection::on_owned_frame`]):
    /// each message by where it lies (its first byte's address and its length: a message id
    /// can repeat within a frame, as a CANCEL's does), the session and the key checked with,
    /// and whether it verified.
    checked: Vec<((usize, usize, u64, [u8; 16]), bool)>,
    /// The frame [`Connection::on_owned_frame`] is running (its first byte's address and its
    /// length): a WRITE that is all of it may be handed to the driver ([`FileWrite`]).
    owned_frame: Option<(usize, usize)>,
    /// WRITEs for the driver to carry out, not taken yet.
    file_writes: Vec<FileWrite>,
    /// WRITEs handed to the driver whose result has not come back, by token.
    file_writes_started: HashMap<u64, StartedWrite>,
    next_write: u64,
}

/// A WRITE of a file that the driver carries out off the connection's thread, so that the
/// client's next WRITEs are read and checked while its data lands (on two CPUs, the socket and
/// the signature on one and the store's copy on the other, as smbd's thread pool does). Only
/// a WRITE that is a whole frame of its own, of at least [`FILE_WRITE_OFF_THREAD_MIN_BYTES`]:
/// its data is where the frame the driver owns has it ([`FileWrite::data`]), so the frame goes
/// with the write and is not copied. The driver runs every other request only once the WRITEs
/// it holds are done, so no request overtakes a WRITE sent before it (a CLOSE or a FLUSH finds
/// the data written, as with one thread). Its response, signed as usual, goes out with
/// [`Connection::take_sends`] once [`Connection::finish_file_write`] is called.
#[derive(Debug)]
pub struct FileWrite {
    pub token: u64,
    pub share: String,
    pub id: u64,
    pub offset: u64,
    /// Where its data lies in the frame.
    pub data: std::ops::Range<usize>,
    pub stamp: super::files::Stamp,
    /// The open's registration (byte-range locks are checked against it).
    pub open: Option<u64>,
}

/// What answering a [`FileWrite`] needs.
#[derive(Debug)]
struct StartedWrite {
    request: Header,
    volatile: u64,
    len: u32,
}

/// The least data a WRITE hands to the driver: a smaller one costs less written at once than
/// the two thread handoffs, and a small file's create-write-close waits for each step anyway.
pub const FILE_WRITE_OFF_THREAD_MIN_BYTES: usize = 64 * 1024;
/// Bytes of WRITEs one connection has handed to the driver and not had back (the frames they
/// hold); past this, a WRITE is carried out on the connection's thread.
pub const MAX_FILE_WRITE_BYTES_IN_FLIGHT: u64 = 32 * 1024 * 1024;
/// WRITEs one connection has handed to the driver at once, however small (each holds a thread
/// of the node's blocking pool; writes to one volume land one at a time anyway).
pub const MAX_FILE_WRITES_IN_FLIGHT: usize = 4;

/// A READ of a file another node serves, for the driver to carry out off the connection's
/// thread and hand back with [`Connection::finish_file_read`].
#[derive(Debug)]
pub struct FileRead {
    pub async_id: u64,
    pub share: String,
    pub id: u64,
    pub offset: u64,
    pub len: u32,
    /// The open's registration (byte-range locks are checked against it).
    pub open: Option<u64>,
}

/// Bytes of READs of files on other nodes one connection has in flight at once (what their
/// replies may hold in memory before they are sent); past this, a READ waits for its data on
/// the connection's thread as a local one does. A read counts from the moment the driver is
/// asked to start it until its result comes back, also when its request no longer waits for it
/// (cancelled, or its file closed): the driver's work and memory go on until then.
pub const MAX_FILE_READ_BYTES_IN_FLIGHT: u64 = 16 * 1024 * 1024;
/// READs of files on other nodes one connection has in flight at once, however small.
pub const MAX_FILE_READS_IN_FLIGHT: usize = 64;

/// Finished READs of files on other nodes the driver holds for a connection before it takes
/// them in (each already counted in [`MAX_FILE_READ_BYTES_IN_FLIGHT`]).
pub const FILE_READ_RESULTS_QUEUED: usize = 64;

/// The dialect of an SMB2 answer to an SMB1 NEGOTIATE that offered "SMB 2.???".
const DIALECT_WILDCARD: u16 = 0x02FF;

/// A reply body and its status, before the header goes on.
pub(super) struct Reply {
    pub(super) status: u32,
    body: Vec<u8>,
    /// `body` starts with [`HEADER_BYTES`] of room for the header, written there in place.
    framed: bool,
    session_id: Option<u64>,
    tree_id: Option<u32>,
    /// The request waits: it gets an interim response now, its final one later.
    wait: Option<Waiting>,
    /// The request is carried out off the connection's thread and answered when it is done
    /// (a WRITE handed to the driver, see [`FileWrite`]): no response now.
    later: bool,
}

impl Reply {
    pub(super) fn ok(body: Vec<u8>) -> Reply {
        Reply { status: status::SUCCESS, body, framed: false, session_id: None, tree_id: None, wait: None, later: false }
    }

    /// A success whose body follows [`HEADER_BYTES`] of room for the header (a READ's data is
    /// not copied again to put the header before it).
    pub(super) fn framed(body: Vec<u8>) -> Reply {
        Reply { framed: true, ..Reply::ok(body) }
    }

    /// The request cannot complete yet: it waits for `w`.
    pub(super) fn wait(w: Waiting) -> Reply {
        Reply { status: status::PENDING, body: Vec::new(), framed: false, session_id: None, tree_id: None, wait: Some(w), later: false }
    }

    /// Answered later, when the driver has carried the request out (no response now).
    pub(super) fn later() -> Reply {
        Reply { status: status::PENDING, body: Vec::new(), framed: false, session_id: None, tree_id: None, wait: None, later: true }
    }

    pub(super) fn body(&self) -> &[u8] {
        &self.body[if self.framed { HEADER_BYTES } else { 0 }..]
    }

    /// An error response body (MS-SMB2 2.2.2).
    /// BUFFER_OVERFLOW (a success with more to read) when `more`.
    pub(super) fn overflowing(self, more: bool) -> Reply {
        if more {
            Reply { status: status::BUFFER_OVERFLOW, ..self }
        } else {
            self
        }
    }

    /// This reply's body with another status: a failure that still carries its body (a
    /// server-side copy says how far it got).
    pub(super) fn with_status(self, status: u32) -> Reply {
        Reply { status, ..self }
    }

    pub(super) fn error(status: u32) -> Reply {
        Reply { status, body: async_ops::ERROR_BODY.to_vec(), framed: false, session_id: None, tree_id: None, wait: None, later: false }
    }
}



const FSCTL_VALIDATE_NEGOTIATE_INFO: u32 = 0x0014_0204;
const FSCTL_DFS_GET_REFERRALS: u32 = 0x0006_0194;
const FSCTL_PIPE_TRANSCEIVE: u32 = 0x0011_C017;
const FSCTL_DFS_GET_REFERRALS_EX: u32 = 0x0006_01B0;
const FSCTL_SRV_ENUM_SNAPS: u32 = 0x0014_4064;
use super::ops::copy::{FSCTL_SRV_COPYCHUNK, FSCTL_SRV_COPYCHUNK_WRITE, FSCTL_SRV_REQUEST_RESUME_KEY};
use super::ops::sparse::{FSCTL_FILE_LEVEL_TRIM, FSCTL_QUERY_ALLOCATED_RANGES, FSCTL_SET_SPARSE, FSCTL_SET_ZERO_DATA};

impl Connection {
    pub fn new(config: Config) -> Self {
        Connection { config, negotiated: None, dialect: None, signing_algorithm: None, preauth: Preauth::default(), sessions: HashMap::new(), next_tree: 1, opens: HashMap::new(), next_file: 1, tampered: false, credits: Default::default(), peer: String::new(), smb1_upgraded: false, waits: AsyncOps::default(), tracking: Default::default(), file_reads: Vec::new(), file_reads_started: HashMap::new(), logged_off: None, checked: Vec::new(), owned_frame: None, file_writes: Vec::new(), file_writes_started: HashMap::new(), next_write: 1 }
    }

    /// The connection has ended (the client went away or was refused): every open it held is
    /// closed and its share-mode registration released.
    pub fn end(&mut self, files: &dyn Files, now: u64) {
        self.drop_opens(files, now, |_| true);
        self.sessions.clear();
    }

    /// Whether a session has been established (a user logged on).
    pub fn logged_on(&self) -> bool {
        self.sessions.values().any(|s| matches!(s, Session::Established(_)))
    }

    /// Records the client's address (IP without the port).
    pub fn set_peer(&mut self, peer: &str) {
        self.peer = peer.to_string();
    }

    /// The dialect negotiated, once it is.
    pub(super) fn dialect(&self) -> Option<u16> {
        self.dialect
    }

    /// Who an established session is, for the RPC layer.
    pub(super) fn caller(&self, session: u64) -> Option<crate::rpc::Caller> {
        match self.sessions.get(&session)? {
            Session::Established(e) => Some(crate::rpc::Caller { user: e.user.clone(), role: e.role, client: self.peer.clone() }),
            Session::Pending(_) => None,
        }
    }

    /// [`Connection::on_frame`] for a frame the caller owns: the signatures of its messages on
    /// sessions already established are checked in place first (each signature field zeroed
    /// for the MAC and put back) instead of on a copy of each message, which for an 8 MiB WRITE
    /// is a copy of 8 MiB. Messages that inherit their session from the one before (related
    /// operations) are checked as in [`Connection::on_frame`].
    pub fn on_owned_frame(&mut self, frame: &mut [u8], dir: &dyn Directory, files: &dyn Files, env: &mut dyn Environment) -> Outcome {
        self.checked.clear();
        // A malformed frame is refused by on_frame, which splits it the same way.
        for (h, range) in compound::ranges(frame).unwrap_or_default() {
            // A CANCEL is checked where it is handled (on a copy: it is small).
            if h.flags & FLAG_SIGNED != 0 && h.flags & FLAG_RELATED_OPERATIONS == 0 && h.command != Command::Cancel {
                if let Some(Session::Established(s)) = self.sessions.get(&h.session_id) {
                    let message = &mut frame[range];
                    let ok = signing::verify_in_place(s.algorithm, &s.signing_key, message);
                    self.checked.push(((message.as_ptr() as usize, message.len(), h.session_id, s.signing_key), ok));
                }
            }
        }
        self.owned_frame = Some((frame.as_ptr() as usize, frame.len()));
        let outcome = self.on_frame(frame, dir, files, env);
        self.checked.clear();
        self.owned_frame = None;
        outcome
    }

    /// Handles one frame from the client.
    pub fn on_frame(&mut self, frame: &[u8], dir: &dyn Directory, files: &dyn Files, env: &mut dyn Environment) -> Outcome {
        self.logged_off = None;
        if frame.starts_with(b"\xffSMB") {
            return self.smb1_negotiate(frame, env);
        }
        let messages = match compound::split(frame) {
            Ok(m) => m,
            Err(e) => return Outcome::Close(format!("malformed frame: {e}")),
        };
        let mut out = Vec::new();
        let count = messages.len();
        let mut chain = Chain::default();
        for (i, (header, message)) in messages.into_iter().enumerate() {
            if header.is_response() {
                return Outcome::Close("a response sent to the server".into());
            }
            if header.command == Command::Negotiate && self.dialect.is_some() {
                return Outcome::Close("a second NEGOTIATE".into());
            }
            // CANCEL takes no credit and gets no response.
            if header.command == Command::Cancel {
                self.cancel(&header, message);
                continue;
            }
            // Every other message must use ids it was granted, once.
            let charge = if self.dialect.unwrap_or(DIALECT_202) >= DIALECT_210 { header.credit_charge } else { 1 };
            if !self.credits.consume(header.message_id, charge) {
                return Outcome::Close(format!("message id {} outside the credit window", header.message_id));
            }
            let multi_credit = self.dialect.is_some_and(|d| d >= DIALECT_210);
            let body = message.get(HEADER_BYTES..).unwrap_or_default();
            let (h, reply) = match chain.relate(&header, message) {
                Ok((h, _)) if multi_credit && !super::credits::charge_covers(h.command, h.credit_charge, body) => {
                    tracing::debug!(command = ?h.command, charge = h.credit_charge, "CreditCharge too small for the payload");
                    chain.handled(&h, message, status::INVALID_PARAMETER, None, None, &[]);
                    (h, Reply::error(status::INVALID_PARAMETER))
                }
                Ok((h, related)) => {
                    let span = tracing::debug_span!("request", command = ?h.command, message_id = h.message_id, session = format_args!("{:#x}", h.session_id));
                    let reply = span.in_scope(|| self.handle(&h, &related, message, dir, files, env));
                    chain.handled(&h, &related, reply.status, reply.session_id, reply.tree_id, reply.body());
                    (h, reply)
                }
                Err(status) => {
                    chain.handled(&header, message, status, None, None, &[]);
                    (header.clone(), Reply::error(status))
                }
            };
            if self.tampered {
                return Outcome::Close("VALIDATE_NEGOTIATE_INFO does not match the negotiation".into());
            }
            if reply.later {
                // The driver answers it (only the whole of a frame is carried out later).
                continue;
            }
            let mut bytes = self.respond_or_wait(&h, reply, i + 1 == count);
            if i + 1 < count {
                let padded = bytes.len().div_ceil(8) * 8;
                bytes.resize(padded, 0);
                bytes[20..24].copy_from_slice(&(padded as u32).to_le_bytes());
                self.resign(&h, &mut bytes);
            }
            if count == 1 {
                return Outcome::Reply(bytes); // the common case: no copy
            }
            if out.len() + bytes.len() > MAX_COMPOUND_RESPONSE_BYTES {
                return Outcome::Close(format!("a compound whose responses pass {MAX_COMPOUND_RESPONSE_BYTES} bytes"));
            }
            out.extend_from_slice(&bytes);
        }
        if out.is_empty() {
            Outcome::NoReply
        } else {
            Outcome::Reply(out)
        }
    }

    /// READs of files on other nodes to carry out now (each already answered STATUS_PENDING).
    pub fn take_file_reads(&mut self) -> Vec<FileRead> {
        let reads = std::mem::take(&mut self.file_reads);
        self.file_reads_started.extend(reads.iter().map(|r| (r.async_id, r.len)));
        reads
    }

    /// The data (or the error) of a READ from [`Connection::take_file_reads`]: its final
    /// response goes out with [`Connection::take_sends`]. Nothing if it was cancelled or its
    /// open closed meanwhile.
    pub fn finish_file_read(&mut self, async_id: u64, result: Result<Vec<u8>, super::files::FsError>) {
        self.file_reads_started.remove(&async_id);
        self.file_reads.retain(|r| r.async_id != async_id);
        let Some(&Waiting::FileRead { len, .. }) = self.waits.get(async_id).map(|op| &op.waiting) else { return };
        let reply = super::ops::read_reply(len, result);
        if reply.framed {
            self.waits.finish_framed(async_id, reply.status, reply.body);
        } else {
            self.waits.finish(async_id, reply.status, reply.body());
        }
    }

    /// Whether one more READ of `len` bytes of a file on another node may be in flight (see
    /// [`MAX_FILE_READ_BYTES_IN_FLIGHT`]): those queued for the driver, and those it has not
    /// given back yet.
    pub(super) fn file_read_fits(&self, len: u32) -> bool {
        let queued = self.file_reads.iter().map(|r| u64::from(r.len));
        let bytes: u64 = queued.chain(self.file_reads_started.values().map(|&l| u64::from(l))).sum();
        self.file_reads.len() + self.file_reads_started.len() < MAX_FILE_READS_IN_FLIGHT && bytes + u64::from(len) <= MAX_FILE_READ_BYTES_IN_FLIGHT
    }

    /// WRITEs to carry out now, off the connection's thread ([`FileWrite`]).
    pub fn take_file_writes(&mut self) -> Vec<FileWrite> {
        std::mem::take(&mut self.file_writes)
    }

    /// Whether WRITEs handed to the driver have not come back yet (the driver keeps its own
    /// set of them).
    #[cfg(test)]
    pub(super) fn writes_in_flight(&self) -> bool {
        !self.file_writes_started.is_empty()
    }

    /// The result of a WRITE from [`Connection::take_file_writes`]: its response goes out with
    /// [`Connection::take_sends`].
    pub fn finish_file_write(&mut self, token: u64, result: Result<(), super::files::FsError>) {
        let Some(w) = self.file_writes_started.remove(&token) else { return };
        let reply = match result {
            Ok(()) => {
                self.mark_written(w.volatile);
                Reply::ok(super::ops::write_body(w.len))
            }
            Err(e) => Reply::error(e.status()),
        };
        let out = self.respond(&w.request, reply);
        self.waits.queue(out);
    }

    /// Hands a WRITE to the driver when it may go off the connection's thread: the whole frame
    /// being run by [`Connection::on_owned_frame`] (`message` is all of it, `data` in it), large
    /// enough, and within the bounds of what is in flight. Its reply comes later.
    pub(super) fn write_later(&mut self, h: &Header, message: &[u8], data: &[u8], volatile: u64, write: impl FnOnce(u64, std::ops::Range<usize>) -> FileWrite) -> Option<Reply> {
        let (at, len) = self.owned_frame?;
        if message.as_ptr() as usize != at || message.len() != len || data.len() < FILE_WRITE_OFF_THREAD_MIN_BYTES {
            return None;
        }
        let in_flight: u64 = self.file_writes_started.values().map(|w| u64::from(w.len)).sum();
        if self.file_writes_started.len() >= MAX_FILE_WRITES_IN_FLIGHT || in_flight + data.len() as u64 > MAX_FILE_WRITE_BYTES_IN_FLIGHT {
            return None;
        }
        let start = data.as_ptr() as usize - at;
        let token = self.next_write;
        self.next_write += 1;
        self.file_writes.push(write(token, start..start + data.len()));
        self.file_writes_started.insert(token, StartedWrite { request: h.clone(), volatile, len: data.len() as u32 });
        Some(Reply::later())
    }

    /// Final responses to requests that waited, in order; send them before the reply to the
    /// frame (or the changes) that made them.
    pub fn take_sends(&mut self) -> Vec<Vec<u8>> {
        self.waits.take_sends()
    }

    /// One message of a frame (`signed` is its bytes as received, for the signature; `message`
    /// has a related compound's FileId filled in), and what follows from it: the changes it
    /// made, waiting requests it completed or orphaned.
    fn handle(&mut self, h: &Header, message: &[u8], signed: &[u8], dir: &dyn Directory, files: &dyn Files, env: &mut dyn Environment) -> Reply {
        let opens = self.opens.len();
        let before = self.before_command(h, message);
        let reply = self.dispatch(h, message, signed, dir, files, env);
        self.after_command(h, message, &reply, before);
        if self.opens.len() < opens {
            self.end_orphaned_waits();
        }
        self.complete_pipe_reads();
        reply
    }

    /// The response to a message, or for one that waits (only the last of a compound may, as
    /// in Samba; others fail with STATUS_INTERNAL_ERROR) the interim response.
    fn respond_or_wait(&mut self, h: &Header, mut reply: Reply, last: bool) -> Vec<u8> {
        let Some(waiting) = reply.wait.take() else { return self.respond(h, reply) };
        if !last {
            return self.respond(h, Reply::error(status::INTERNAL_ERROR));
        }
        let signing = match self.sessions.get(&h.session_id) {
            Some(Session::Established(s)) if self.config.signing_required || h.flags & FLAG_SIGNED != 0 => Some((s.algorithm, s.signing_key)),
            _ => None,
        };
        match self.waits.start(h.clone(), waiting, signing) {
            Ok(async_id) => {
                tracing::debug!(async_id, command = ?h.command, message_id = h.message_id, "request waits");
                if let Waiting::FileRead { volatile, offset, len } = waiting {
                    match self.opens.get(&volatile) {
                        Some(o) => self.file_reads.push(FileRead { async_id, share: o.share.clone(), id: o.info.id, offset, len, open: o.registration }),
                        None => {
                            self.waits.finish(async_id, status::FILE_CLOSED, &async_ops::ERROR_BODY);
                        }
                    }
                }
                let credits = self.credits.grant(h.credits);
                async_ops::interim(h, async_id, credits)
            }
            Err(status) => self.respond(h, Reply::error(status)),
        }
    }

    /// CANCEL (MS-SMB2 3.3.5.16): the waiting request it names ends with STATUS_CANCELLED.
    /// Unsigned CANCELs are accepted even when signing is required (as Samba does: some clients
    /// never sign them); a signed one must verify. Either way nothing answers the CANCEL itself.
    fn cancel(&mut self, h: &Header, message: &[u8]) {
        if h.flags & FLAG_SIGNED != 0 {
            let verified = matches!(self.sessions.get(&h.session_id), Some(Session::Established(s)) if signing::verify(s.algorithm, &s.signing_key, message));
            if !verified {
                tracing::debug!(message_id = h.message_id, "ignoring a CANCEL whose signature does not verify");
                return;
            }
        }
        match self.waits.find(h) {
            Some(async_id) => {
                tracing::debug!(async_id, "cancelled");
                self.waits.finish(async_id, status::CANCELLED, &async_ops::ERROR_BODY);
            }
            None => tracing::debug!(message_id = h.message_id, "CANCEL names no waiting request"),
        }
    }

    /// Named-pipe READs that waited and whose pipe now has output.
    fn complete_pipe_reads(&mut self) {
        if self.waits.is_empty() {
            return;
        }
        let opens = &self.opens;
        let ready = self.waits.matching(|w| matches!(w, Waiting::PipeRead { volatile, .. } if opens.get(volatile).and_then(|o| o.pipe.as_ref()).is_some_and(|p| p.pending() > 0)));
        for id in ready {
            let Some(&Waiting::PipeRead { volatile, len }) = self.waits.get(id).map(|op| &op.waiting) else { continue };
            let Some(pipe) = self.opens.get_mut(&volatile).and_then(|o| o.pipe.as_mut()) else { continue };
            let data = pipe.read(len as usize);
            let status = if pipe.pending() > 0 { status::BUFFER_OVERFLOW } else { status::SUCCESS };
            self.waits.finish(id, status, &super::ops::read_body(&data));
        }
    }

    fn dispatch(&mut self, h: &Header, message: &[u8], signed: &[u8], dir: &dyn Directory, files: &dyn Files, env: &mut dyn Environment) -> Reply {
        if self.dialect.is_none() && h.command != Command::Negotiate {
            return Reply::error(status::INVALID_PARAMETER);
        }
        // ECHO needs no session (MS-SMB2 3.3.5.2.9); with one, its signature is checked.
        let sessionless = h.command == Command::Echo && h.session_id == 0;
        if !matches!(h.command, Command::Negotiate | Command::SessionSetup) && !sessionless {
            if let Err(status) = self.check_signature(h, signed) {
                return Reply::error(status);
            }
        }
        if self.share_deleted(h, dir, files, env.now()) {
            return Reply::error(status::NETWORK_NAME_DELETED);
        }
        match h.command {
            Command::Negotiate => self.negotiate(message, env),
            Command::SessionSetup => self.session_setup(h, message, dir, env),
            Command::Logoff => match self.sessions.remove(&h.session_id) {
                Some(session) => {
                    self.logged_off = Some((h.session_id, session));
                    self.drop_opens(files, env.now(), |o| o.session == h.session_id);
                    Reply::ok(vec![4, 0, 0, 0])
                }
                None => Reply::error(status::USER_SESSION_DELETED),
            },
            Command::Echo => Reply::ok(vec![4, 0, 0, 0]),
            Command::TreeConnect => self.tree_connect(h, message, dir),
            Command::TreeDisconnect => self.tree_disconnect(h, files, env.now()),
            Command::Ioctl => self.ioctl(h, message, files, dir, env),
            Command::Create => self.create(h, message, files, dir, env.now()),
            Command::Close => self.close(h, message, files, env.now()),
            Command::Read => self.read(h, message, files),
            Command::Write => self.write(h, message, files, dir, env),
            Command::Flush => self.flush(h, message, files),
            Command::QueryDirectory => self.query_directory(h, message, files),
            Command::QueryInfo => self.query_info(h, message, files),
            Command::SetInfo => self.set_info(h, message, files, env.now()),
            Command::ChangeNotify => self.change_notify(h, message),
            Command::Lock => self.lock(h, message, files),
            _ => Reply::error(status::NOT_SUPPORTED),
        }
    }

    /// A tree whose share no longer exists (a shadow copy's mapping deleted, a share removed):
    /// it is disconnected with its opens, and the request fails with NETWORK_NAME_DELETED.
    fn share_deleted(&mut self, h: &Header, dir: &dyn Directory, files: &dyn Files, now: u64) -> bool {
        let Target::Sync { tree_id, .. } = h.target else { return false };
        if matches!(h.command, Command::Negotiate | Command::SessionSetup | Command::Logoff | Command::Echo | Command::TreeConnect | Command::TreeDisconnect | Command::Cancel) {
            return false;
        }
        let Some(Session::Established(s)) = self.sessions.get_mut(&h.session_id) else { return false };
        let Some(tree) = s.trees.get(&tree_id) else { return false };
        if tree.ipc || dir.share(&tree.share).is_some() {
            return false;
        }
        if !self.file_writes_started.is_empty() {
            // A WRITE that runs while earlier ones are under way: their opens stay until they
            // are done (the next request that waits for them disconnects the tree).
            return true;
        }
        tracing::info!(share = %tree.share, tree_id, "the share is gone; disconnecting its tree");
        s.trees.remove(&tree_id);
        let session = h.session_id;
        self.drop_opens(files, now, |o| o.session == session && o.tree == tree_id);
        true
    }

    /// Requests on an established session must be signed when signing is required, and any
    /// signature must verify.
    fn check_signature(&self, h: &Header, message: &[u8]) -> Result<(), u32> {
        let Some(Session::Established(s)) = self.sessions.get(&h.session_id) else {
            return Err(status::USER_SESSION_DELETED);
        };
        let signed = h.flags & FLAG_SIGNED != 0;
        if !signed && self.config.signing_required {
            return Err(status::ACCESS_DENIED);
        }
        if signed {
            // Checked in place already when the driver owned the frame and the session's key
            // is the one it was checked with.
            let this = (message.as_ptr() as usize, message.len(), h.session_id, s.signing_key);
            let checked = self.checked.iter().find(|(at, _)| *at == this).map(|(_, ok)| *ok);
            if !checked.unwrap_or_else(|| signing::verify(s.algorithm, &s.signing_key, message)) {
                return Err(status::ACCESS_DENIED);
            }
        }
        Ok(())
    }

    fn negotiate(&mut self, message: &[u8], env: &mut dyn Environment) -> Reply {
        let Ok(req) = negotiate::Request::parse(message) else { return Reply::error(status::INVALID_PARAMETER) };
        let Some(dialect) = DIALECTS.iter().rev().copied().find(|d| req.dialects.contains(d)) else {
            return Reply::error(status::NOT_SUPPORTED);
        };
        self.negotiated_as(&req, message, dialect, env)
    }

    /// An SMB1 NEGOTIATE offering SMB2 (MS-SMB2 3.3.5.3.1), as Windows and impacket send first:
    /// with "SMB 2.???" the answer is an SMB2 NEGOTIATE response with the wildcard dialect
    /// 0x02FF and the client negotiates again in SMB2; with only "SMB 2.002", 2.0.2 is chosen.
    /// Anything else (SMB1 only) ends the connection.
    fn smb1_negotiate(&mut self, frame: &[u8], env: &mut dyn Environment) -> Outcome {
        const SMB1_HEADER_BYTES: usize = 32;
        const MAX_SMB1_DIALECTS: usize = 64;
        if self.dialect.is_some() || self.smb1_upgraded || frame.get(4) != Some(&0x72) {
            return Outcome::Close("an SMB1 message other than the first NEGOTIATE".into());
        }
        let Some(count) = frame.get(SMB1_HEADER_BYTES + 1..SMB1_HEADER_BYTES + 3).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]]))) else {
            return Outcome::Close("a truncated SMB1 NEGOTIATE".into());
        };
        let Some(list) = frame.get(SMB1_HEADER_BYTES + 3..SMB1_HEADER_BYTES + 3 + count) else { return Outcome::Close("a truncated SMB1 NEGOTIATE".into()) };
        let names: Vec<&[u8]> = list.split(|&b| b == 0).filter_map(|d| d.strip_prefix(&[2])).take(MAX_SMB1_DIALECTS).collect();
        let dialect = if names.contains(&b"SMB 2.???".as_slice()) {
            DIALECT_WILDCARD
        } else if names.contains(&b"SMB 2.002".as_slice()) {
            DIALECT_202
        } else {
            return Outcome::Close("the client speaks only SMB1".into());
        };
        if !self.credits.consume(0, 1) {
            return Outcome::Close("message id 0 reused".into());
        }
        self.smb1_upgraded = true;
        let req = negotiate::Request { security_mode: 0, capabilities: 0, client_guid: [0; 16], dialects: vec![dialect], contexts: Vec::new() };
        let reply = self.negotiated_as(&req, &[], dialect, env);
        let h = Header { credit_charge: 0, status: 0, command: Command::Negotiate, credits: 1, flags: 0, next_command: 0, message_id: 0, target: Target::Sync { process_id: 0, tree_id: 0 }, session_id: 0, signature: [0; 16] };
        Outcome::Reply(self.respond(&h, reply))
    }

    fn negotiated_as(&mut self, req: &negotiate::Request, message: &[u8], dialect: u16, env: &mut dyn Environment) -> Reply {
        // MS-SMB2 3.3.5.4: 3.1.1 needs a preauth integrity context that offers SHA-512 (1).
        let sha512 = |c: &negotiate::Context| c.kind == negotiate::CONTEXT_PREAUTH_INTEGRITY && c.data.get(4..).unwrap_or(&[]).chunks_exact(2).take(u16_at(&c.data, 0).unwrap_or(0).into()).any(|a| a == [1, 0]);
        if dialect == DIALECT_311 && !req.contexts.iter().any(sha512) {
            return Reply::error(status::INVALID_PARAMETER);
        }
        if dialect == DIALECT_WILDCARD {
            // Not negotiated yet: the SMB2 NEGOTIATE that follows decides.
            self.dialect = None;
        } else {
            self.dialect = Some(dialect);
        }
        let token = spnego::encode_server_init();
        let mode = SECURITY_MODE_SIGNING_ENABLED | if self.config.signing_required { SECURITY_MODE_SIGNING_REQUIRED } else { 0 };
        let caps = if dialect >= DIALECT_210 { CAP_LARGE_MTU } else { 0 };
        let max = self.config.max_io_bytes;
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(&65u16.to_le_bytes());
        b.extend_from_slice(&mode.to_le_bytes());
        b.extend_from_slice(&dialect.to_le_bytes());
        let contexts = if dialect == DIALECT_311 { self.contexts(req, env) } else { Vec::new() };
        b.extend_from_slice(&(contexts.len() as u16).to_le_bytes());
        b.extend_from_slice(&self.config.server_guid);
        b.extend_from_slice(&caps.to_le_bytes());
        for v in [max, max, max] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&env.now().to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&((HEADER_BYTES + 64) as u16).to_le_bytes());
        b.extend_from_slice(&(token.len() as u16).to_le_bytes());
        let context_offset_at = b.len();
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&token);
        if !contexts.is_empty() {
            b.resize((HEADER_BYTES + b.len()).div_ceil(8) * 8 - HEADER_BYTES, 0);
            let offset = (HEADER_BYTES + b.len()) as u32;
            b[context_offset_at..context_offset_at + 4].copy_from_slice(&offset.to_le_bytes());
            for (i, (kind, data)) in contexts.iter().enumerate() {
                if i > 0 {
                    b.resize((HEADER_BYTES + b.len()).div_ceil(8) * 8 - HEADER_BYTES, 0);
                }
                b.extend_from_slice(&kind.to_le_bytes());
                b.extend_from_slice(&(data.len() as u16).to_le_bytes());
                b.extend_from_slice(&[0; 4]);
                b.extend_from_slice(data);
            }
        }
        if dialect == DIALECT_311 {
            self.preauth.update(message);
        }
        self.negotiated = Some(Negotiated {
            client_capabilities: req.capabilities,
            client_guid: req.client_guid,
            client_security_mode: req.security_mode,
            server_capabilities: caps,
            server_security_mode: mode,
            client_dialects: req.dialects.clone(),
        });
        Reply::ok(b)
    }

    /// 3.1.1 negotiate contexts: preauth integrity (SHA-512, fresh salt) and signing.
    fn contexts(&mut self, req: &negotiate::Request, env: &mut dyn Environment) -> Vec<(u16, Vec<u8>)> {
        let mut salt = [0u8; 32];
        env.random(&mut salt);
        let mut preauth = vec![1, 0, 32, 0, 1, 0];
        preauth.extend_from_slice(&salt);
        let mut out = vec![(negotiate::CONTEXT_PREAUTH_INTEGRITY, preauth)];
        let offered: Vec<u16> = req
            .contexts
            .iter()
            .find(|c| c.kind == negotiate::CONTEXT_SIGNING)
            .map(|c| c.data.get(2..).unwrap_or(&[]).chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).take(u16_at(&c.data, 0).unwrap_or(0).into()).collect())
            .unwrap_or_default();
        // AES-GMAC, then AES-CMAC, then HMAC-SHA256, as offered.
        if let Some(&alg) = [2u16, 1, 0].iter().find(|a| offered.contains(a)) {
            self.signing_algorithm = Some(alg);
            let mut data = vec![1, 0];
            data.extend_from_slice(&alg.to_le_bytes());
            out.push((negotiate::CONTEXT_SIGNING, data));
        }
        out
    }

    fn session_setup(&mut self, h: &Header, message: &[u8], dir: &dyn Directory, env: &mut dyn Environment) -> Reply {
        let Some(token) = security_buffer(message, HEADER_BYTES + 12) else { return Reply::error(status::INVALID_PARAMETER) };
        let dialect = self.dialect.unwrap_or(DIALECT_202);
        if h.session_id == 0 {
            return self.start_session(message, token, dialect, env);
        }
        // Re-authenticating an established session is not offered: the session stays as it
        // is (removing it here left its opens and waits behind, out of the client's reach).
        let mut pending = match self.sessions.remove(&h.session_id) {
            Some(Session::Pending(p)) => p,
            Some(established) => {
                self.sessions.insert(h.session_id, established);
                return Reply { session_id: Some(h.session_id), ..Reply::error(status::NOT_SUPPORTED) };
            }
            None => return Reply::error(status::USER_SESSION_DELETED),
        };
        pending.preauth.update(message);
        match self.authenticate(h.session_id, &pending, token, dialect, dir, env) {
            Ok(reply) => reply,
            Err(status) => Reply { session_id: Some(h.session_id), ..Reply::error(status) },
        }
    }

    fn start_session(&mut self, message: &[u8], token: &[u8], dialect: u16, env: &mut dyn Environment) -> Reply {
        if self.sessions.len() >= MAX_SESSIONS_PER_CONNECTION {
            return Reply::error(status::REQUEST_NOT_ACCEPTED);
        }
        let Ok(init) = spnego::parse_init(token) else { return Reply::error(status::INVALID_PARAMETER) };
        let Some(negotiate_msg) = init.mech_token.clone().filter(|t| t.starts_with(SIGNATURE) && t.get(8) == Some(&1) && t.len() >= 16) else {
            return Reply::error(status::LOGON_FAILURE); // only NTLMSSP is offered
        };
        let client_flags = u32::from_le_bytes(negotiate_msg[12..16].try_into().expect("4 bytes"));
        let mut server_challenge = [0u8; 8];
        env.random(&mut server_challenge);
        let flags = challenge::flags_for(client_flags);
        let challenge_msg = challenge::build(flags, &server_challenge, &self.config.netbios_name, &self.config.dns_name, env.now());
        let mut id_bytes = [0u8; 8];
        env.random(&mut id_bytes);
        let session_id = u64::from_le_bytes(id_bytes) | 1;
        let mut preauth = self.preauth.clone();
        if dialect == DIALECT_311 {
            preauth.update(message);
        }
        let resp = NegTokenResp { state: Some(1), supported_mech: Some(OID_NTLMSSP.to_vec()), response_token: Some(challenge_msg.clone()), mech_list_mic: None };
        let body = setup_body(0, &spnego::encode_resp(&resp));
        let pending = Pending { server_challenge, challenge_flags: flags, mech_list_der: init.mech_list_der, preauth, negotiate_msg, challenge_msg };
        self.sessions.insert(session_id, Session::Pending(pending));
        Reply { status: status::MORE_PROCESSING_REQUIRED, body, framed: false, session_id: Some(session_id), tree_id: None, wait: None, later: false }
    }

    fn authenticate(&mut self, session_id: u64, p: &Pending, token: &[u8], dialect: u16, dir: &dyn Directory, env: &mut dyn Environment) -> Result<Reply, u32> {
        let resp = spnego::parse_resp(token).map_err(|_| status::INVALID_PARAMETER)?;
        let raw = resp.response_token.as_deref().unwrap_or(&[]);
        let auth = Authenticate::parse(raw).map_err(|_| status::INVALID_PARAMETER)?;
        let now = env.now();
        if !env.throttle().allowed(&auth.user, now) {
            tracing::warn!(user = %auth.user, "logon refused: too many recent failures");
            return Err(status::LOGON_FAILURE);
        }
        let verified = dir.user(&auth.user).ok_or(status::LOGON_FAILURE).and_then(|(hash, role)| {
            verify_ntlmv2(&hash, &auth.user, &auth.domain, &p.server_challenge, &auth.nt_response).map(|key| (key, role)).map_err(|_| status::LOGON_FAILURE)
        });
        let (base, role) = match verified {
            Ok(v) => v,
            Err(status) => {
                env.throttle().failed(&auth.user, now);
                return Err(status);
            }
        };
        // A MIC that fails counts as a failed logon: only the password's holder computes it.
        let Some(exported) = finish_logon(&base, auth.flags & p.challenge_flags, &auth, (&p.negotiate_msg, &p.challenge_msg, raw)) else {
            tracing::warn!(user = %auth.user, "logon refused: no shared session key, or the AUTHENTICATE's MIC fails");
            env.throttle().failed(&auth.user, now);
            return Err(status::LOGON_FAILURE);
        };
        let (mut to_server, mut to_client) = directions(&exported, auth.flags & p.challenge_flags);
        let mic = match resp.mech_list_mic {
            Some(theirs) => {
                if !crate::smb2::signing::same_bytes(to_server.mac(&p.mech_list_der).as_slice(), theirs.as_slice()) {
                    env.throttle().failed(&auth.user, now);
                    return Err(status::LOGON_FAILURE);
                }
                Some(to_client.mac(&p.mech_list_der).to_vec())
            }
            None => None,
        };
        env.throttle().succeeded(&auth.user);
        let algorithm = Algorithm::for_dialect(dialect, self.signing_algorithm);
        let signing_key = signing::signing_key(dialect, &exported, &p.preauth.0);
        let body = setup_body(0, &spnego::encode_resp(&NegTokenResp { state: Some(0), mech_list_mic: mic, ..Default::default() }));
        tracing::info!(session = format_args!("{session_id:#x}"), user = %auth.user, ?role, ?algorithm, dialect = format_args!("{dialect:#06x}"), "session established");
        let session = Established { user: auth.user, role, signing_key, algorithm, trees: Default::default() };
        self.sessions.insert(session_id, Session::Established(session));
        Ok(Reply { session_id: Some(session_id), ..Reply::ok(body) })
    }

    fn tree_connect(&mut self, h: &Header, message: &[u8], dir: &dyn Directory) -> Reply {
        let Some(path) = security_buffer(message, HEADER_BYTES + 4).and_then(utf16) else { return Reply::error(status::INVALID_PARAMETER) };
        let name = path.trim_start_matches('\\').split_once('\\').map(|(_, s)| s.to_string()).unwrap_or_default();
        let tree = if name.eq_ignore_ascii_case("IPC$") {
            Tree { share: "IPC$".into(), ipc: true, read_only: false }
        } else {
            match dir.share(&name) {
                Some((share, read_only)) => Tree { share, ipc: false, read_only },
                None => return Reply::error(status::BAD_NETWORK_NAME),
            }
        };
        let Some(Session::Established(s)) = self.sessions.get_mut(&h.session_id) else { return Reply::error(status::USER_SESSION_DELETED) };
        if s.trees.len() >= MAX_TREES_PER_SESSION {
            return Reply::error(status::REQUEST_NOT_ACCEPTED);
        }
        let tree_id = self.next_tree;
        self.next_tree = self.next_tree.wrapping_add(1).max(1);
        let (share_type, access) = if tree.ipc { (2u8, 0x001f_01ffu32) } else if tree.read_only { (1, 0x0012_0089) } else { (1, 0x001f_01ff) };
        tracing::debug!(user = %s.user, role = ?s.role, share = %tree.share, tree_id, "tree connected");
        s.trees.insert(tree_id, tree);
        let mut b = vec![16, 0, share_type, 0];
        b.extend_from_slice(&0u32.to_le_bytes()); // ShareFlags: manual caching
        b.extend_from_slice(&0u32.to_le_bytes()); // Capabilities
        b.extend_from_slice(&access.to_le_bytes());
        Reply { tree_id: Some(tree_id), ..Reply::ok(b) }
    }

    fn tree_disconnect(&mut self, h: &Header, files: &dyn Files, now: u64) -> Reply {
        let Target::Sync { tree_id, .. } = h.target else { return Reply::error(status::INVALID_PARAMETER) };
        let removed = match self.sessions.get_mut(&h.session_id) {
            Some(Session::Established(s)) => s.trees.remove(&tree_id).is_some(),
            _ => false,
        };
        if removed {
            self.drop_opens(files, now, |o| o.session == h.session_id && o.tree == tree_id);
            Reply::ok(vec![4, 0, 0, 0])
        } else {
            Reply::error(status::NETWORK_NAME_DELETED)
        }
    }

    /// IOCTLs: FSCTL_VALIDATE_NEGOTIATE_INFO, DFS referrals (this server has no DFS
    /// namespace), pipe transceives, previous versions, server-side copy and the FSCTLs on a
    /// file's holes.
    fn ioctl(&mut self, h: &Header, message: &[u8], files: &dyn Files, dir: &dyn Directory, env: &mut dyn Environment) -> Reply {
        let b = &message[HEADER_BYTES.min(message.len())..];
        let (Some(code), Some(input_offset), Some(input_len), Some(max_out)) = (u32_at(b, 4), u32_at(b, 24), u32_at(b, 28), u32_at(b, 44)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        let Some(input) = message.get(input_offset as usize..(input_offset as usize).saturating_add(input_len as usize)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        // MS-SMB2 3.3.5.15: no reply larger than the MaxTransactSize this server offered.
        if max_out > self.config.max_io_bytes {
            return Reply::error(status::INVALID_PARAMETER);
        }
        match code {
            FSCTL_VALIDATE_NEGOTIATE_INFO => self.validate_negotiate(b, input, max_out),
            FSCTL_PIPE_TRANSCEIVE => {
                let input = input.to_vec();
                self.transceive(h, b, &input, max_out, dir, env)
            }
            FSCTL_DFS_GET_REFERRALS | FSCTL_DFS_GET_REFERRALS_EX => Reply::error(status::NOT_FOUND),
            FSCTL_SRV_ENUM_SNAPS => self.enum_snaps(h, b, max_out, dir),
            FSCTL_SRV_REQUEST_RESUME_KEY => self.resume_key(h, b, max_out, &mut |out| env.random(out)),
            FSCTL_SRV_COPYCHUNK | FSCTL_SRV_COPYCHUNK_WRITE => self.copy_chunks(h, b, code, input, max_out, files, env.now()),
            FSCTL_SET_SPARSE | FSCTL_QUERY_ALLOCATED_RANGES | FSCTL_SET_ZERO_DATA | FSCTL_FILE_LEVEL_TRIM => self.sparse_fsctl(h, b, code, input, max_out, files, env.now()),
            _ => Reply::error(status::NOT_SUPPORTED),
        }
    }

    /// FSCTL_SRV_ENUM_SNAPS on an open of a share: its committed shadow copies as @GMT tokens.
    fn enum_snaps(&self, h: &Header, body: &[u8], max_out: u32, dir: &dyn Directory) -> Reply {
        let Some(volatile) = body.get(16..24).map(|v| u64::from_le_bytes(v.try_into().expect("8 bytes"))) else { return Reply::error(status::INVALID_PARAMETER) };
        let share = match self.open_of(h, volatile) {
            Ok(o) if o.pipe.is_none() => o.share.split('@').next().unwrap_or_default().to_string(),
            Ok(_) => return Reply::error(status::INVALID_DEVICE_REQUEST),
            Err(s) => return Reply::error(s),
        };
        match super::ops::previous::snapshot_array(&dir.snapshot_times(&share), max_out as usize) {
            Some(out) => Reply::ok(super::ops::ioctl_body(body, &out)),
            None => Reply::error(status::INVALID_PARAMETER),
        }
    }

    /// MS-SMB2 3.3.5.15.12: the client checks that nobody tampered with NEGOTIATE. Any
    /// difference from what was negotiated ends the connection, as does the request on a 3.1.1
    /// connection (whose preauth integrity hash protects NEGOTIATE instead) or one that leaves
    /// no room for the answer.
    fn validate_negotiate(&mut self, body: &[u8], input: &[u8], max_out: u32) -> Reply {
        let (Some(n), Some(dialect)) = (&self.negotiated, self.dialect) else { return Reply::error(status::INVALID_PARAMETER) };
        let count = usize::from(u16_at(input, 22).unwrap_or(0));
        let Some(list) = input.get(24..24 + 2 * count).filter(|_| input.len() >= 24) else { return Reply::error(status::INVALID_PARAMETER) };
        if dialect == DIALECT_311 || max_out < 24 {
            self.tampered = true;
            return Reply::error(status::ACCESS_DENIED);
        }
        let offered: Vec<u16> = list.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let best = DIALECTS.iter().rev().copied().find(|d| offered.contains(d));
        // This server implements 3.1.1: the list must be the one NEGOTIATE offered.
        let same = u32_at(input, 0) == Some(n.client_capabilities) && input[4..20] == n.client_guid && u16_at(input, 20) == Some(n.client_security_mode) && offered == n.client_dialects && best == Some(dialect);
        if !same {
            self.tampered = true;
            return Reply::error(status::ACCESS_DENIED);
        }
        tracing::info!(dialect = format_args!("{dialect:#06x}"), "validated negotiate");
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&n.server_capabilities.to_le_bytes());
        out.extend_from_slice(&self.config.server_guid);
        out.extend_from_slice(&n.server_security_mode.to_le_bytes());
        out.extend_from_slice(&dialect.to_le_bytes());
        Reply::ok(super::ops::ioctl_body(body, &out))
    }

    /// The response message: header (credits granted, ids, signature) and body.
    fn respond(&mut self, req: &Header, reply: Reply) -> Vec<u8> {
        let session_id = reply.session_id.unwrap_or(req.session_id);
        let target = match req.target {
            Target::Sync { process_id, tree_id } => Target::Sync { process_id, tree_id: reply.tree_id.unwrap_or(tree_id) },
            t => t,
        };
        let header = Header {
            credit_charge: req.credit_charge,
            status: reply.status,
            command: req.command,
            credits: self.credits.grant(req.credits),
            flags: FLAG_SERVER_TO_REDIR | (req.flags & FLAG_RELATED_OPERATIONS),
            next_command: 0,
            message_id: req.message_id,
            target,
            session_id,
            signature: [0; 16],
        };
        let mut out = if reply.framed {
            let mut out = reply.body;
            header.encode_into(&mut out[..HEADER_BYTES]);
            out
        } else {
            let mut out = Vec::with_capacity(HEADER_BYTES + reply.body.len());
            header.encode(&mut out);
            out.extend_from_slice(&reply.body);
            out
        };
        if req.command == Command::Negotiate && self.dialect == Some(DIALECT_311) {
            self.preauth.update(&out);
        }
        if req.command == Command::SessionSetup && reply.status == status::MORE_PROCESSING_REQUIRED {
            if let Some(Session::Pending(p)) = self.sessions.get_mut(&session_id) {
                if self.dialect == Some(DIALECT_311) {
                    p.preauth.update(&out);
                }
            }
        }
        self.resign(req, &mut out);
        out
    }

    /// Signs a response of an established session (every one while signing is required).
    fn resign(&self, req: &Header, out: &mut [u8]) {
        let session_id = u64::from_le_bytes(out[40..48].try_into().expect("8 bytes"));
        let logged_off = self.logged_off.as_ref().filter(|(id, _)| *id == session_id).map(|(_, s)| s);
        let Some(Session::Established(s)) = self.sessions.get(&session_id).or(logged_off) else { return };
        if !(self.config.signing_required || req.flags & FLAG_SIGNED != 0) {
            return;
        }
        let flags = u32::from_le_bytes(out[16..20].try_into().expect("4 bytes")) | FLAG_SIGNED;
        out[16..20].copy_from_slice(&flags.to_le_bytes());
        signing::sign_in_place(s.algorithm, &s.signing_key, out);
    }
}

/// A (offset u16, length u16) buffer at `at` in `message`, offsets from the header start.
fn security_buffer(message: &[u8], at: usize) -> Option<&[u8]> {
    let offset = usize::from(u16_at(message, at)?);
    let len = usize::from(u16_at(message, at + 2)?);
    message.get(offset..offset.checked_add(len)?)
}


/// A SESSION_SETUP response body with its security token.
fn setup_body(session_flags: u16, token: &[u8]) -> Vec<u8> {
    let mut b = vec![9, 0];
    b.extend_from_slice(&session_flags.to_le_bytes());
    b.extend_from_slice(&((HEADER_BYTES + 8) as u16).to_le_bytes());
    b.extend_from_slice(&(token.len() as u16).to_le_bytes());
    b.extend_from_slice(token);
    b
}

#[cfg(test)]
impl Connection {
    /// A connection past NEGOTIATE (3.0.2) holding one established session (AES-CMAC, key of
    /// 1s) with these trees (IPC$ by that name), and credits for message ids up to 512.
    pub(super) fn established_for_test(config: Config, session_id: u64, trees: &[(u32, &str)]) -> Connection {
        let mut c = Connection::new(config);
        c.dialect = Some(DIALECT_302);
        c.credits.consume(0, 1);
        c.credits.grant(512);
        let trees = trees.iter().map(|&(id, share)| (id, Tree { share: share.to_string(), ipc: share == "IPC$", read_only: false })).collect();
        let session = Established { user: "u".into(), role: umbra_raft::command::Role::Admin, signing_key: [1; 16], algorithm: Algorithm::AesCmac, trees };
        c.sessions.insert(session_id, Session::Established(session));
        c
    }

    /// As if `dialect` had been negotiated.
    pub(super) fn with_dialect_for_test(mut self, dialect: u16) -> Connection {
        self.dialect = Some(dialect);
        self
    }
}
