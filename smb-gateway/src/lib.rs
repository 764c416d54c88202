//! Umbra's SMB gateway (in progress: issue 4).
//!
//! Data flow, as it is being built: bytes from a client connection are cut into frames
//! ([`smb2::frame`]), each frame into its compounded messages ([`smb2::compound`]) with their
//! headers ([`smb2::header`]); SESSION_SETUP carries NTLMSSP (inside SPNEGO), whose AUTHENTICATE
//! message ([`ntlm::messages`]) is verified against the NT hash in Raft ([`ntlm::verify`]), giving
//! the session key; NEGOTIATE ([`smb2::negotiate`]) picks the dialect and, for 3.1.1, the signing
//! algorithm and the preauth hash that [`smb2::signing`] derives signing keys from. All of it is
//! sans-IO: functions over bytes, no sockets, no clocks; the tokio server, SPNEGO, sessions,
//! trees, opens, named pipes and DCE/RPC come next. [`share_modes`] holds the share-access
//! rule (MS-FSA 2.1.5.1.2) that each volume's owner applies to the opens every gateway registers
//! through [`server::files::Files::register_open`], and [`byte_locks`] the byte-range lock
//! rules (MS-FSA 2.1.4.10) it applies to every gateway's LOCKs, READs and WRITEs. [`security`]
//! checks the security descriptors clients set (SET_INFO, the SecD create context) before the
//! volume's owner keeps them with the file, and picks the parts a QUERY_INFO asks for.

pub mod byte_locks;
pub mod der;
pub mod driver;
pub mod ntlm;
pub mod rpc;
pub mod server;
pub mod security;
pub mod share_modes;
pub mod smb2;
pub mod spnego;
pub mod wire;

#[cfg(test)]
mod golden;
