//! NTLMSSP-authenticated DCE/RPC (MS-RPCE 2.2.2.11, 3.3.1.5.2): bind carries NEGOTIATE, the
//! bind_ack CHALLENGE, auth3 AUTHENTICATE; then every request and response is signed
//! (integrity, level 5) or sealed and signed (privacy, level 6) with this exchange's keys.

use umbra_raft::command::NtHash;

use crate::ntlm::challenge;
use crate::ntlm::messages::{Authenticate, SIGNATURE};
use crate::ntlm::session::{directions, Direction};
use crate::ntlm::verify::{finish_logon, verify_ntlmv2};

pub const AUTH_TYPE_NTLMSSP: u8 = 10;
pub const LEVEL_CONNECT: u8 = 2;
pub const LEVEL_INTEGRITY: u8 = 5;
pub const LEVEL_PRIVACY: u8 = 6;
/// Bytes of an NTLMSSP signature in a PDU's auth_value.
pub const SIGNATURE_BYTES: usize = 16;

/// What a pipe needs to authenticate a bind.
pub struct AuthContext<'a> {
    pub user: &'a dyn Fn(&str) -> Option<NtHash>,
    pub server_challenge: [u8; 8],
    pub now: u64,
    pub netbios_name: &'a str,
    /// The server's failed-logon throttle, which an authenticated bind counts in as a
    /// SESSION_SETUP does (else it would be a way to guess passwords without a lockout).
    /// Runs what it is given on the throttle, under its lock.
    pub throttle: &'a dyn Fn(&mut dyn FnMut(&mut crate::server::throttle::Throttle)),
}

impl AuthContext<'_> {
    fn with_throttle<T>(&self, f: impl FnOnce(&mut crate::server::throttle::Throttle) -> T) -> T {
        let (mut f, mut out) = (Some(f), None);
        (self.throttle)(&mut |t| out = f.take().map(|f| f(t)));
        out.expect("the throttle callback runs what it is given")
    }
}

/// The sec_trailer (8 bytes) that precedes an auth_value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    pub auth_type: u8,
    pub level: u8,
    pub pad: u8,
    pub context_id: u32,
}

impl Trailer {
    pub fn encode(&self) -> [u8; 8] {
        let mut t = [self.auth_type, self.level, self.pad, 0, 0, 0, 0, 0];
        t[4..].copy_from_slice(&self.context_id.to_le_bytes());
        t
    }
}

/// The trailer and auth_value of a PDU whose header says `auth_len`.
pub fn split(pdu: &[u8], auth_len: usize) -> Option<(usize, Trailer, &[u8])> {
    let value_at = pdu.len().checked_sub(auth_len)?;
    let trailer_at = value_at.checked_sub(8)?;
    let t = &pdu[trailer_at..value_at];
    let trailer = Trailer { auth_type: t[0], level: t[1], pad: t[2], context_id: u32::from_le_bytes(t[4..8].try_into().ok()?) };
    Some((trailer_at, trailer, &pdu[value_at..]))
}

/// One association's authentication.
pub struct Auth {
    pub trailer: Trailer,
    challenge: [u8; 8],
    flags: u32,
    /// (client to server, server to client) once auth3 has verified the client.
    pub keys: Option<(Direction, Direction)>,
    pub user: Option<String>,
    /// The NEGOTIATE and CHALLENGE messages as they went (the AUTHENTICATE's MIC covers them).
    sent: (Vec<u8>, Vec<u8>),
}

impl Auth {
    /// Answers the bind's NEGOTIATE with a CHALLENGE; `None` for what is not NTLMSSP.
    pub fn start(trailer: Trailer, negotiate: &[u8], ctx: &AuthContext) -> Option<(Auth, Vec<u8>)> {
        if trailer.auth_type != AUTH_TYPE_NTLMSSP || !negotiate.starts_with(SIGNATURE) || negotiate.get(8) != Some(&1) || negotiate.len() < 16 {
            return None;
        }
        let client_flags = u32::from_le_bytes(negotiate[12..16].try_into().ok()?);
        let flags = challenge::flags_for(client_flags);
        let msg = challenge::build(flags, &ctx.server_challenge, ctx.netbios_name, &ctx.netbios_name.to_lowercase(), ctx.now);
        let sent = (negotiate.to_vec(), msg.clone());
        Some((Auth { trailer, challenge: ctx.server_challenge, flags, keys: None, user: None, sent }, msg))
    }

    /// auth3's AUTHENTICATE: on success the keys for the calls that follow.
    pub fn finish(&mut self, authenticate: &[u8], ctx: &AuthContext) -> bool {
        let Ok(a) = Authenticate::parse(authenticate) else { return false };
        if !ctx.with_throttle(|t| t.allowed(&a.user, ctx.now)) {
            tracing::warn!(user = %a.user, "DCE/RPC bind refused: too many recent failed logons");
            return false;
        }
        let flags = a.flags & self.flags;
        let exported = (ctx.user)(&a.user).and_then(|hash| {
            let base = verify_ntlmv2(&hash, &a.user, &a.domain, &self.challenge, &a.nt_response).ok()?;
            finish_logon(&base, flags, &a, (&self.sent.0, &self.sent.1, authenticate))
        });
        let Some(exported) = exported else {
            ctx.with_throttle(|t| t.failed(&a.user, ctx.now));
            return false;
        };
        ctx.with_throttle(|t| t.succeeded(&a.user));
        self.keys = Some(directions(&exported, flags));
        tracing::info!(user = %a.user, level = self.trailer.level, "DCE/RPC bind authenticated");
        self.user = Some(a.user);
        true
    }
}
