//! Per-session state: authentication in progress, then the established session's keys.

use umbra_raft::command::Role;

use crate::smb2::signing::{Algorithm, Preauth};

/// A session between its first SESSION_SETUP and the end of authentication.
pub struct Pending {
    pub server_challenge: [u8; 8],
    pub challenge_flags: u32,
    /// The client's MechTypeList, which both mechListMICs sign.
    pub mech_list_der: Vec<u8>,
    pub preauth: Preauth,
    /// The NTLMSSP NEGOTIATE and CHALLENGE messages as they went, which the AUTHENTICATE's
    /// MIC covers (bounded by the 64 KiB frames allowed before a session is established).
    pub negotiate_msg: Vec<u8>,
    pub challenge_msg: Vec<u8>,
}

/// An authenticated session.
pub struct Established {
    pub user: String,
    pub role: Role,
    pub signing_key: [u8; 16],
    pub algorithm: Algorithm,
    pub trees: std::collections::BTreeMap<u32, Tree>,
}

pub struct Tree {
    pub share: String,
    pub ipc: bool,
    pub read_only: bool,
}

pub enum Session {
    Pending(Pending),
    Established(Established),
}
