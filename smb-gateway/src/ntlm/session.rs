//! NTLM session security (MS-NLMP 3.4.4.2, extended session security): per-direction signing
//! and sealing keys from the exported session key, and the MAC that SPNEGO's mechListMIC uses.

use md5::{Digest, Md5};
use rc4::{KeyInit, Rc4, StreamCipher};

use super::verify::NEGOTIATE_KEY_EXCH;

const CLIENT_SIGN: &[u8] = b"session key to client-to-server signing key magic constant\0";
const SERVER_SIGN: &[u8] = b"session key to server-to-client signing key magic constant\0";
const CLIENT_SEAL: &[u8] = b"session key to client-to-server sealing key magic constant\0";
const SERVER_SEAL: &[u8] = b"session key to server-to-client sealing key magic constant\0";

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// One direction's state: its signing key, its RC4 handle (kept across messages) and sequence.
pub struct Direction {
    sign_key: [u8; 16],
    seal: Rc4<rc4::consts::U16>,
    key_exch: bool,
    seq: u32,
}

/// (client to server, server to client) for a session.
pub fn directions(exported_session_key: &[u8; 16], flags: u32) -> (Direction, Direction) {
    let make = |sign: &[u8], seal: &[u8]| Direction {
        sign_key: md5(&[exported_session_key, sign]),
        seal: Rc4::new(&md5(&[exported_session_key, seal]).into()),
        key_exch: flags & NEGOTIATE_KEY_EXCH != 0,
        seq: 0,
    };
    (make(CLIENT_SIGN, CLIENT_SEAL), make(SERVER_SIGN, SERVER_SEAL))
}

impl Direction {
    fn checksum(&self, message: &[u8]) -> [u8; 8] {
        use hmac::{Hmac, Mac};
        let mut h = <Hmac<Md5> as Mac>::new_from_slice(&self.sign_key).expect("HMAC takes any key length");
        h.update(&self.seq.to_le_bytes());
        h.update(message);
        h.finalize().into_bytes()[..8].try_into().expect("8 bytes")
    }

    /// Seals the checksum (with key exchange), builds the signature, and moves to the next
    /// sequence number.
    fn finish(&mut self, mut checksum: [u8; 8]) -> [u8; 16] {
        if self.key_exch {
            self.seal.apply_keystream(&mut checksum);
        }
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&1u32.to_le_bytes());
        out[4..12].copy_from_slice(&checksum);
        out[12..].copy_from_slice(&self.seq.to_le_bytes());
        self.seq = self.seq.wrapping_add(1);
        out
    }

    /// The 16-byte NTLMSSP_MESSAGE_SIGNATURE of `message` (version, checksum, sequence).
    pub fn mac(&mut self, message: &[u8]) -> [u8; 16] {
        let checksum = self.checksum(message);
        self.finish(checksum)
    }

    /// Sending with privacy: the signature covers `plain` (the message as it is before
    /// sealing), then `data` is encrypted in place, then the checksum (MS-NLMP 3.4.3).
    pub fn seal(&mut self, plain: &[u8], data: &mut [u8]) -> [u8; 16] {
        let checksum = self.checksum(plain);
        self.seal.apply_keystream(data);
        self.finish(checksum)
    }

    /// Receiving with privacy: decrypts `data` in place (then check the signature with `mac`
    /// over the now-plain message).
    pub fn unseal(&mut self, data: &mut [u8]) {
        self.seal.apply_keystream(data);
    }
}
