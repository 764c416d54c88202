//! NTLM: the NTLMSSP messages and NTLMv2 verification against the cluster's NT hashes.

pub mod challenge;
pub mod messages;
pub mod session;
pub mod verify;
