//! DCE/RPC over named pipes (C706 connection-oriented PDUs, MS-RPCE), without I/O: a [`Pipe`]
//! takes request bytes written to the pipe and produces the bytes to read back. Interfaces, one
//! per pipe: srvsvc (share enumeration) and FileServerVssAgent (FSRVP, on FssagentRpc, whose
//! calls go to a [`ShadowCopies`] service). Unauthenticated binds take the SMB session's user;
//! NTLMSSP-authenticated binds the user they authenticated.

pub mod auth;
pub mod fsrvp;
pub mod ndr;
pub mod pdu;
pub mod srvsvc;

use auth::{Auth, AuthContext, Trailer, LEVEL_PRIVACY, SIGNATURE_BYTES};
use pdu::{Header, Interface, PduError};
use umbra_raft::command::Role;
use umbra_raft::fsrvp::FsrvpError;

/// Bytes one pipe buffers for the client at most; beyond, the connection is refused the call.
pub const MAX_PIPE_OUTPUT_BYTES: usize = 1 << 20;
/// Largest request stub reassembled from fragments (srvsvc's and FSRVP's requests are a few
/// hundred bytes).
pub const MAX_STUB_BYTES: usize = 1 << 20;
/// The fragment size this server offers and accepts.
pub const MAX_FRAGMENT_BYTES: u16 = 5840;

/// A share as srvsvc lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareEntry {
    pub name: String,
    /// STYPE_* (0 disk, 0x80000003 IPC$).
    pub kind: u32,
    pub remark: String,
}

/// Who calls through a pipe: the SMB session's user and role, and the client's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub role: Role,
    pub client: String,
}

/// FSRVP behind \PIPE\FssagentRpc: the node's shadow-copy-set coordinator. Blocking (the
/// driver runs connections on the blocking pool). Share names arrive bare (UNC parsed here).
pub trait ShadowCopies: Send + Sync {
    fn call(&self, caller: &Caller, call: &fsrvp::Call) -> Result<fsrvp::Out, FsrvpError>;
}

/// What a pipe's calls may use.
pub struct Host<'a> {
    pub shares: &'a [ShareEntry],
    pub auth: &'a AuthContext<'a>,
    pub caller: &'a Caller,
    /// A user's role by name (for a DCE/RPC-authenticated caller).
    pub role_of: &'a dyn Fn(&str) -> Option<Role>,
    pub fsrvp: Option<&'a dyn ShadowCopies>,
}

/// The interface a pipe serves, by its name.
fn interface_of(pipe: &str) -> Option<Interface> {
    if pipe.eq_ignore_ascii_case("srvsvc") {
        Some(srvsvc::INTERFACE)
    } else if pipe.eq_ignore_ascii_case(fsrvp::PIPE_NAME) {
        Some(fsrvp::INTERFACE)
    } else {
        None
    }
}

/// Whether a pipe of this name exists.
pub fn pipe_exists(name: &str) -> bool {
    interface_of(name).is_some()
}

/// The one table from coordinator refusals to FSRVP result codes (Samba's codes, fsrvp.md 4.3).
pub fn fsrvp_result(e: &FsrvpError) -> u32 {
    use fsrvp::result::*;
    match e {
        FsrvpError::BadState(_) => BAD_STATE,
        FsrvpError::InvalidArgument(_) => E_INVALIDARG,
        FsrvpError::ObjectNotFound(_) => OBJECT_NOT_FOUND,
        FsrvpError::AlreadyExists(_) => OBJECT_ALREADY_EXISTS,
        FsrvpError::InProgress(_) => SHADOW_COPY_SET_IN_PROGRESS,
        FsrvpError::NotSupported(_) => NOT_SUPPORTED,
        FsrvpError::NotExposed => INVALID_XML_DOCUMENT,
        FsrvpError::Timeout => TIMEOUT,
        FsrvpError::Failed(_) => E_FAIL,
    }
}

/// One open pipe's DCE/RPC state.
pub struct Pipe {
    pub name: String,
    bound: Option<u16>,
    pending: Vec<u8>,
    stub: Vec<u8>,
    assoc_group: u32,
    /// NTLMSSP authentication of the association, when the bind asked for it.
    auth: Option<Auth>,
}

impl Pipe {
    pub fn new(name: &str, assoc_group: u32) -> Self {
        Pipe { name: name.to_string(), bound: None, pending: Vec::new(), stub: Vec::new(), assoc_group, auth: None }
    }

    /// Feeds one PDU the client wrote; replies are queued for reading.
    pub fn write(&mut self, pdu: &[u8], host: &Host) -> Result<(), PduError> {
        let ctx = host.auth;
        let h = Header::parse(pdu)?;
        let reply = match h.ptype {
            pdu::BIND | pdu::ALTER_CONTEXT => self.bind(&h, pdu, ctx)?,
            pdu::AUTH3 => {
                let (_, _, value) = auth::split(pdu, usize::from(h.auth_len)).ok_or(PduError::Malformed)?;
                let ok = self.auth.as_mut().is_some_and(|a| a.finish(value, ctx));
                if !ok {
                    self.auth = None;
                    self.bound = None; // calls on this association now fault
                }
                return Ok(());
            }
            pdu::REQUEST => match self.request(&h, pdu, host)? {
                Some(reply) => reply,
                None => return Ok(()),
            },
            _ => return Err(PduError::Unsupported(h.ptype)),
        };
        if self.pending.len() + reply.len() > MAX_PIPE_OUTPUT_BYTES {
            return Err(PduError::TooLarge);
        }
        self.pending.extend_from_slice(&reply);
        Ok(())
    }

    fn bind(&mut self, h: &Header, pdu: &[u8], ctx: &AuthContext) -> Result<Vec<u8>, PduError> {
        let auth_bytes = if h.auth_len > 0 { usize::from(h.auth_len) + 8 } else { 0 };
        let body_end = pdu.len().checked_sub(auth_bytes).ok_or(PduError::Malformed)?;
        let known: Vec<Interface> = interface_of(&self.name).into_iter().collect();
        let (mut reply, accepted) = pdu::bind_reply(h, &pdu[..body_end], &format!("\\pipe\\{}", self.name.to_lowercase()), self.assoc_group, &known)?;
        if accepted.is_some() {
            self.bound = accepted;
        }
        if h.auth_len > 0 {
            let (_, trailer, value) = auth::split(pdu, usize::from(h.auth_len)).ok_or(PduError::Malformed)?;
            let Some((auth, challenge)) = Auth::start(trailer, value, ctx) else { return Err(PduError::Unsupported(h.ptype)) };
            let pad = (4 - reply.len() % 4) % 4;
            reply.extend(std::iter::repeat_n(0, pad));
            reply.extend_from_slice(&Trailer { pad: pad as u8, ..trailer }.encode());
            reply.extend_from_slice(&challenge);
            let len = reply.len() as u16;
            reply[8..10].copy_from_slice(&len.to_le_bytes());
            reply[10..12].copy_from_slice(&(challenge.len() as u16).to_le_bytes());
            self.auth = Some(auth);
        }
        Ok(reply)
    }

    /// A request fragment; the reply once the last fragment is in.
    fn request(&mut self, h: &Header, pdu: &[u8], host: &Host) -> Result<Option<Vec<u8>>, PduError> {
        let mut pdu = pdu.to_vec();
        let stub_at = if h.flags & 0x80 != 0 { 40 } else { 24 };
        let stub_end = match (&mut self.auth, h.auth_len) {
            (None, 0) => pdu.len(),
            (Some(a), n) if n as usize == SIGNATURE_BYTES && a.trailer.level >= auth::LEVEL_INTEGRITY => {
                let (trailer_at, trailer, sig) = auth::split(&pdu, SIGNATURE_BYTES).ok_or(PduError::Malformed)?;
                let sig: [u8; 16] = sig.try_into().map_err(|_| PduError::Malformed)?;
                let Some((to_server, _)) = a.keys.as_mut() else { return Ok(Some(pdu::fault(h, 0, pdu::ACCESS_DENIED))) };
                if trailer_at < stub_at {
                    return Err(PduError::Malformed);
                }
                if trailer.level == LEVEL_PRIVACY {
                    to_server.unseal(&mut pdu[stub_at..trailer_at]);
                }
                if to_server.mac(&pdu[..trailer_at + 8]) != sig {
                    return Ok(Some(pdu::fault(h, 0, pdu::ACCESS_DENIED)));
                }
                trailer_at.checked_sub(usize::from(trailer.pad)).filter(|&e| e >= stub_at).ok_or(PduError::Malformed)?
            }
            (Some(a), 0) if a.trailer.level <= auth::LEVEL_CONNECT => pdu.len(),
            _ => return Ok(Some(pdu::fault(h, 0, pdu::ACCESS_DENIED))),
        };
        let (ctx, opnum) = pdu::request_ids(&pdu).ok_or(PduError::Malformed)?;
        // An object UUID (flag 0x80) moves the stub past a PDU that may be too short for it.
        let stub_len = stub_end.checked_sub(stub_at).ok_or(PduError::Malformed)?;
        if h.flags & pdu::PFC_FIRST != 0 {
            self.stub.clear();
        }
        if self.stub.len() + stub_len > MAX_STUB_BYTES {
            return Err(PduError::TooLarge);
        }
        self.stub.extend_from_slice(&pdu[stub_at..stub_end]);
        if h.flags & pdu::PFC_LAST == 0 {
            return Ok(None);
        }
        let stub = std::mem::take(&mut self.stub);
        let out = match self.bound {
            Some(bound) if bound == ctx && interface_of(&self.name) == Some(fsrvp::INTERFACE) => self.fsrvp_call(opnum, &stub, host),
            Some(bound) if bound == ctx => srvsvc::call(opnum, &stub, host.shares),
            _ => Err(pdu::NCA_UNKNOWN_IF),
        };
        Ok(Some(match out {
            Ok(out) => self.respond(h, ctx, &out),
            Err(status) => pdu::fault(h, ctx, status),
        }))
    }

    /// One FSRVP call: decode, check the caller's rights (administrators and backup operators
    /// only; others get E_ACCESSDENIED as the result), reduce UNC share names, run, encode.
    fn fsrvp_call(&self, opnum: u16, stub: &[u8], host: &Host) -> Result<Vec<u8>, u32> {
        let mut call = fsrvp::decode(opnum, stub)?;
        let caller = match self.auth.as_ref().and_then(|a| a.user.clone()) {
            Some(user) => Caller { role: (host.role_of)(&user).unwrap_or(Role::User), user, client: host.caller.client.clone() },
            None => host.caller.clone(),
        };
        let refuse = |code: u32| Ok(fsrvp::encode(&call, &fsrvp::Out::Nothing, code));
        if !matches!(caller.role, Role::Admin | Role::Backup) {
            tracing::info!(user = %caller.user, op = call.name(), "FSRVP call refused: the caller is neither an administrator nor a backup operator");
            return refuse(fsrvp::result::E_ACCESSDENIED);
        }
        let share = match &mut call {
            fsrvp::Call::AddToShadowCopySet { share, .. }
            | fsrvp::Call::IsPathSupported { share }
            | fsrvp::Call::IsPathShadowCopied { share }
            | fsrvp::Call::GetShareMapping { share, .. }
            | fsrvp::Call::DeleteShareMapping { share, .. } => Some(share),
            _ => None,
        };
        if let Some(share) = share {
            match fsrvp::parse_unc(share) {
                Ok((_host, name)) => *share = name.to_string(),
                Err(()) => return Ok(fsrvp::encode(&call, &fsrvp::Out::Nothing, fsrvp::result::E_INVALIDARG)),
            }
        }
        let Some(service) = host.fsrvp else { return Ok(fsrvp::encode(&call, &fsrvp::Out::Nothing, fsrvp::result::E_FAIL)) };
        Ok(match service.call(&caller, &call) {
            Ok(out) => fsrvp::encode(&call, &out, fsrvp::result::OK),
            Err(e) => {
                tracing::info!(op = call.name(), error = %e, "FSRVP call refused");
                fsrvp::encode(&call, &fsrvp::Out::Nothing, fsrvp_result(&e))
            }
        })
    }

    /// The response PDUs; with authentication, one signed (or sealed) fragment.
    fn respond(&mut self, h: &Header, ctx: u16, stub: &[u8]) -> Vec<u8> {
        let Some((trailer, to_client)) = self.auth.as_mut().and_then(|a| a.keys.as_mut().map(|(_, to_client)| (a.trailer, to_client))) else {
            return pdu::response(h, ctx, stub, MAX_FRAGMENT_BYTES);
        };
        if trailer.level < auth::LEVEL_INTEGRITY {
            return pdu::response(h, ctx, stub, MAX_FRAGMENT_BYTES);
        }
        // Fragments of at most MAX_FRAGMENT_BYTES, each with its own padding, trailer and
        // signature (a stub of any size: srvsvc's share list can pass 64 KiB).
        let room = (usize::from(MAX_FRAGMENT_BYTES) - 24 - 8 - SIGNATURE_BYTES) / 16 * 16;
        let pieces: Vec<&[u8]> = if stub.is_empty() { vec![&[]] } else { stub.chunks(room).collect() };
        let (count, mut remaining, mut out) = (pieces.len(), stub.len(), Vec::new());
        for (i, piece) in pieces.into_iter().enumerate() {
            let pad = (16 - piece.len() % 16) % 16;
            let mut body = piece.to_vec();
            body.extend(std::iter::repeat_n(0, pad));
            let mut p = pdu::response(h, ctx, &body, u16::MAX);
            p[3] = (p[3] & !(pdu::PFC_FIRST | pdu::PFC_LAST)) | if i == 0 { pdu::PFC_FIRST } else { 0 } | if i + 1 == count { pdu::PFC_LAST } else { 0 };
            p.extend_from_slice(&Trailer { pad: pad as u8, ..trailer }.encode());
            let signed_len = p.len();
            p.extend_from_slice(&[0; SIGNATURE_BYTES]);
            let len = p.len() as u16;
            p[8..10].copy_from_slice(&len.to_le_bytes());
            p[10..12].copy_from_slice(&(SIGNATURE_BYTES as u16).to_le_bytes());
            // alloc_hint counts the stub bytes from this fragment on.
            p[16..20].copy_from_slice(&(remaining as u32).to_le_bytes());
            remaining -= piece.len();
            let plain = p[..signed_len].to_vec();
            let sig = if trailer.level == LEVEL_PRIVACY {
                to_client.seal(&plain, &mut p[24..24 + body.len()])
            } else {
                to_client.mac(&plain)
            };
            p[signed_len..].copy_from_slice(&sig);
            out.extend_from_slice(&p);
        }
        out
    }

    /// Up to `max` bytes of queued replies.
    pub fn read(&mut self, max: usize) -> Vec<u8> {
        let n = max.min(self.pending.len());
        self.pending.drain(..n).collect()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static THROTTLE: std::sync::LazyLock<std::sync::Mutex<crate::server::throttle::Throttle>> = std::sync::LazyLock::new(Default::default);

    fn ctx() -> AuthContext<'static> {
        AuthContext { user: &|_| None, server_challenge: [1; 8], now: 0, netbios_name: "UMBRA", throttle: &|f| f(&mut THROTTLE.lock().unwrap()) }
    }

    fn caller() -> Caller {
        Caller { user: "u".into(), role: Role::User, client: "127.0.0.1".into() }
    }

    /// Feeds `pdu` with these shares and no FSRVP service.
    fn feed(pipe: &mut Pipe, pdu: &[u8], shares: &[ShareEntry]) -> Result<(), PduError> {
        let (auth, caller) = (ctx(), caller());
        pipe.write(pdu, &Host { shares, auth: &auth, caller: &caller, role_of: &|_| None, fsrvp: None })
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// smbclient -L's bind for srvsvc (smbclient-list.pcap) and Samba's bind_ack: the same bytes
    /// but for the association group id, which each server picks.
    #[test]
    fn srvsvc_bind_is_acknowledged_as_samba_does() {
        let bind = hex("05000b03100000004800000001000000b810b810000000000100000000000100c84f324b7016d30112785a47bf6ee18803000000045d888aeb1cc9119fe808002b10486002000000");
        let samba = hex("05000c03100000004400000001000000b810b810bc1900000d005c706970655c73727673766300000100000000000000045d888aeb1cc9119fe808002b10486002000000");
        let mut pipe = Pipe::new("srvsvc", 0x19bc);
        feed(&mut pipe, &bind, &[]).unwrap();
        assert_eq!(pipe.read(4280), samba);
        // A request on an unbound context is a fault, not a crash.
        let mut other = Pipe::new("srvsvc", 1);
        let request = hex("05000003100000001c000000020000000400000000000f0000000000");
        feed(&mut other, &request, &[]).unwrap();
        assert_eq!(other.read(4280)[2], pdu::FAULT);
        assert!(feed(&mut other, &request[..10], &[]).is_err(), "a truncated PDU is an error");
    }

    /// A request whose object-UUID flag puts its stub past the PDU's end (alone, or after a
    /// first fragment left stub bytes waiting) is malformed: refused, never a panic.
    #[test]
    fn a_request_too_short_for_its_object_uuid_is_malformed() {
        let bind = hex("05000b03100000004800000001000000b810b810000000000100000000000100c84f324b7016d30112785a47bf6ee18803000000045d888aeb1cc9119fe808002b10486002000000");
        let mut pipe = Pipe::new("srvsvc", 1);
        feed(&mut pipe, &bind, &[]).unwrap();
        let _ = pipe.read(4280);
        let mut whole = hex("05000003100000001c000000020000000400000000000f0000000000");
        whole[3] = 0x83; // first, last, object UUID
        assert!(matches!(feed(&mut pipe, &whole, &[]), Err(PduError::Malformed)));
        // A first fragment with 16 stub bytes, then a short last one with the flag.
        let first = hex(&format!("05000001100000002c00000002000000140000000000{}", "0f00".to_owned() + &"00".repeat(20)));
        feed(&mut pipe, &first, &[]).unwrap();
        let mut last = hex("05000002100000001c000000020000000400000000000f0000000000");
        last[3] = 0x82;
        assert!(matches!(feed(&mut pipe, &last, &[]), Err(PduError::Malformed)));
    }

    proptest::proptest! {
        /// Mutated binds and requests: the pipe answers or refuses, never panics.
        #[test]
        fn mutated_pdus_never_panic_the_pipe(flips in proptest::collection::vec((0usize..100, proptest::prelude::any::<u8>()), 0..6), cut in 0usize..100) {
            let bind = hex("05000b03100000004800000001000000b810b810000000000100000000000100c84f324b7016d30112785a47bf6ee18803000000045d888aeb1cc9119fe808002b10486002000000");
            let request = hex("05000003100000005c000000020000004400000000000f00000002000a000000000000000a0000003100320037002e0030002e0030002e00310000000100000001000000040002000000000000000000ffffffff0800020000000000");
            for base in [bind.clone(), request] {
                let mut pipe = Pipe::new("srvsvc", 1);
                let _ = feed(&mut pipe, &bind, &[]);
                let mut m = base.clone();
                for &(at, b) in &flips {
                    let i = at % m.len();
                    m[i] = b;
                }
                m.truncate(cut.max(1).min(m.len()));
                let shares = [ShareEntry { name: "s".into(), kind: 0, remark: String::new() }];
                let _ = feed(&mut pipe, &m, &shares);
                let _ = pipe.read(4280);
            }
        }
    }
}
