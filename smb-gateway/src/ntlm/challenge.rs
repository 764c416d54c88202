//! The server's CHALLENGE message (MS-NLMP 2.2.1.2).

use super::messages::SIGNATURE;

pub const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
pub const REQUEST_TARGET: u32 = 0x0000_0004;
pub const NEGOTIATE_SIGN: u32 = 0x0000_0010;
pub const NEGOTIATE_SEAL: u32 = 0x0000_0020;
pub const NEGOTIATE_NTLM: u32 = 0x0000_0200;
pub const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
pub const TARGET_TYPE_SERVER: u32 = 0x0002_0000;
pub const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
pub const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
pub const NEGOTIATE_VERSION: u32 = 0x0200_0000;
pub const NEGOTIATE_128: u32 = 0x2000_0000;
pub const NEGOTIATE_KEY_EXCH: u32 = 0x4000_0000;
pub const NEGOTIATE_56: u32 = 0x8000_0000;

/// Flags the server grants when the client asks for them.
const OPTIONAL: u32 = NEGOTIATE_SIGN | NEGOTIATE_SEAL | NEGOTIATE_ALWAYS_SIGN | NEGOTIATE_128 | NEGOTIATE_KEY_EXCH | NEGOTIATE_56 | NEGOTIATE_VERSION;
/// Flags the server always sets: Unicode, NTLM with extended session security (NTLMv2), target info.
const ALWAYS: u32 = NEGOTIATE_UNICODE | REQUEST_TARGET | NEGOTIATE_NTLM | TARGET_TYPE_SERVER | NEGOTIATE_EXTENDED_SESSIONSECURITY | NEGOTIATE_TARGET_INFO;

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn av(out: &mut Vec<u8>, id: u16, value: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}

/// The flags of a CHALLENGE answering a NEGOTIATE with `client_flags`.
pub fn flags_for(client_flags: u32) -> u32 {
    ALWAYS | (client_flags & OPTIONAL)
}

/// Builds a CHALLENGE for `netbios_name` (also the domain: a standalone server), with the
/// server challenge and the time (FILETIME) for MsvAvTimestamp.
pub fn build(flags: u32, server_challenge: &[u8; 8], netbios_name: &str, dns_name: &str, now: u64) -> Vec<u8> {
    let target = utf16(netbios_name);
    let mut info = Vec::new();
    av(&mut info, 2, &utf16(netbios_name)); // MsvAvNbDomainName
    av(&mut info, 1, &utf16(netbios_name)); // MsvAvNbComputerName
    av(&mut info, 4, &utf16(dns_name)); // MsvAvDnsDomainName
    av(&mut info, 3, &utf16(dns_name)); // MsvAvDnsComputerName
    av(&mut info, 7, &now.to_le_bytes()); // MsvAvTimestamp
    av(&mut info, 0, &[]); // MsvAvEOL
    const FIXED: usize = 56;
    let mut m = Vec::with_capacity(FIXED + target.len() + info.len());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&2u32.to_le_bytes());
    let field = |m: &mut Vec<u8>, len: usize, offset: usize| {
        m.extend_from_slice(&(len as u16).to_le_bytes());
        m.extend_from_slice(&(len as u16).to_le_bytes());
        m.extend_from_slice(&(offset as u32).to_le_bytes());
    };
    field(&mut m, target.len(), FIXED);
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(server_challenge);
    m.extend_from_slice(&[0; 8]);
    field(&mut m, info.len(), FIXED + target.len());
    // Version: 6.1 build 7601, NTLM revision 15 (what the field conventionally carries).
    m.extend_from_slice(&[6, 1, 0xb1, 0x1d, 0, 0, 0, 15]);
    m.extend_from_slice(&target);
    m.extend_from_slice(&info);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ntlm::messages::Challenge;

    #[test]
    fn a_built_challenge_parses_back() {
        let m = build(flags_for(0xe2088297), &[1, 2, 3, 4, 5, 6, 7, 8], "UMBRA", "umbra", 42);
        let c = Challenge::parse(&m).unwrap();
        assert_eq!(c.server_challenge, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(c.flags & NEGOTIATE_KEY_EXCH != 0 && c.flags & NEGOTIATE_EXTENDED_SESSIONSECURITY != 0);
        assert!(c.target_info.ends_with(&[0, 0, 0, 0]));
    }
}
