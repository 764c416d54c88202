//! Message signing (MS-SMB2 3.1.4.1) and the keys it uses (3.1.4.2, SP800-108 counter-mode KDF
//! with HMAC-SHA256), plus the 3.1.1 preauth integrity hash (SHA-512 over the negotiate and
//! session setup messages).
//!
//! AES-GMAC (what 3.1.1 clients such as smbclient choose) runs on aws-lc-rs: its GHASH uses the
//! CPU's carry-less multiply over many blocks at once, 23.5 GB/s on the benchmark machine
//! against 1.9 GB/s for RustCrypto's aes-gcm (same tags), where signing took 42% of a gateway's
//! CPU while serving a large read. HMAC-SHA256 (sha2: SHA-NI) and AES-CMAC (cmac: AES-NI, a
//! chain of blocks by definition) stay on RustCrypto.

use aes::Aes128;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use cmac::{Cmac, Mac};
use hmac::Hmac;
use sha2::{Digest, Sha256, Sha512};

use super::header::{FLAG_SERVER_TO_REDIR, HEADER_BYTES};
use super::negotiate::{DIALECT_300, DIALECT_302, DIALECT_311};

/// Where the signature sits in the header.
const SIGNATURE_AT: std::ops::Range<usize> = 48..64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha256,
    AesCmac,
    AesGmac,
}

impl Algorithm {
    /// The algorithm for a dialect; 3.1.1 uses what SIGNING_CAPABILITIES chose (default CMAC).
    pub fn for_dialect(dialect: u16, negotiated: Option<u16>) -> Algorithm {
        match (dialect, negotiated) {
            (DIALECT_311, Some(0)) => Algorithm::HmacSha256,
            (DIALECT_311, Some(2)) => Algorithm::AesGmac,
            (DIALECT_300 | DIALECT_302 | DIALECT_311, _) => Algorithm::AesCmac,
            _ => Algorithm::HmacSha256,
        }
    }
}

/// SP800-108 KDF in counter mode, HMAC-SHA256, one 128-bit block.
pub fn kdf(key: &[u8; 16], label: &[u8], context: &[u8]) -> [u8; 16] {
    let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(key).expect("HMAC takes any key length");
    hmac::Mac::update(&mut mac, &1u32.to_be_bytes());
    hmac::Mac::update(&mut mac, label);
    hmac::Mac::update(&mut mac, &[0]);
    hmac::Mac::update(&mut mac, context);
    hmac::Mac::update(&mut mac, &128u32.to_be_bytes());
    let out = hmac::Mac::finalize(mac).into_bytes();
    out[..16].try_into().expect("16 bytes")
}

/// The signing key of a session (MS-SMB2 3.3.5.5.3).
pub fn signing_key(dialect: u16, session_key: &[u8; 16], preauth: &[u8; 64]) -> [u8; 16] {
    match dialect {
        DIALECT_311 => kdf(session_key, b"SMBSigningKey\0", preauth),
        DIALECT_300 | DIALECT_302 => kdf(session_key, b"SMB2AESCMAC\0", b"SmbSign\0"),
        _ => *session_key,
    }
}

/// The signature of `message` (header and body; its signature field is treated as zero).
pub fn signature(algorithm: Algorithm, key: &[u8; 16], message: &[u8]) -> Option<[u8; 16]> {
    if message.len() < HEADER_BYTES {
        return None;
    }
    let mut m = message.to_vec();
    Some(compute(algorithm, key, &mut m))
}

/// Signs an outgoing message in place (no copy of its body).
pub fn sign_in_place(algorithm: Algorithm, key: &[u8; 16], message: &mut [u8]) {
    if message.len() >= HEADER_BYTES {
        let sig = compute(algorithm, key, message);
        message[SIGNATURE_AT].copy_from_slice(&sig);
    }
}

/// The signature of a message whose signature field this zeroes (callers then set it).
fn compute(algorithm: Algorithm, key: &[u8; 16], m: &mut [u8]) -> [u8; 16] {
    m[SIGNATURE_AT].fill(0);
    let m: &[u8] = m;
    match algorithm {
        Algorithm::HmacSha256 => {
            let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(key).expect("HMAC takes any key length");
            hmac::Mac::update(&mut mac, m);
            hmac::Mac::finalize(mac).into_bytes()[..16].try_into().expect("16 bytes")
        }
        Algorithm::AesCmac => {
            let mut mac = <Cmac<Aes128> as Mac>::new_from_slice(key).expect("16-byte key");
            mac.update(m);
            mac.finalize().into_bytes().into()
        }
        Algorithm::AesGmac => {
            // Nonce: MessageId, then a 32-bit field whose bit 0 marks a server's message and
            // bit 1 a CANCEL request (MS-SMB2 3.1.4.1).
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&m[24..32]);
            let flags = u32::from_le_bytes(m[16..20].try_into().expect("4 bytes"));
            let command = u16::from_le_bytes([m[12], m[13]]);
            let role = u32::from(flags & FLAG_SERVER_TO_REDIR != 0) | (u32::from(command == 0x0C) << 1);
            nonce[8..].copy_from_slice(&role.to_le_bytes());
            // GMAC: GCM with the message as associated data and nothing to encrypt.
            let cipher = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).expect("a 16-byte AES-128 key"));
            // GCM refuses only inputs past 2^36 bytes; messages are bounded far below that.
            let tag = cipher.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(m), &mut [0u8; 0]).expect("message within GCM's limits");
            tag.as_ref().try_into().expect("a 16-byte GCM tag")
        }
    }
}

/// Whether `message` carries the right signature.
pub fn verify(algorithm: Algorithm, key: &[u8; 16], message: &[u8]) -> bool {
    match signature(algorithm, key, message) {
        Some(expected) => same_bytes(&expected, &message[SIGNATURE_AT]),
        None => false,
    }
}

/// [`verify`] without copying the message: its signature field is zeroed for the MAC and put
/// back, so the message is as it was when this returns.
pub fn verify_in_place(algorithm: Algorithm, key: &[u8; 16], message: &mut [u8]) -> bool {
    if message.len() < HEADER_BYTES {
        return false;
    }
    let sent: [u8; 16] = message[SIGNATURE_AT].try_into().expect("16 bytes");
    let expected = compute(algorithm, key, message);
    message[SIGNATURE_AT].copy_from_slice(&sent);
    same_bytes(&expected, &sent)
}

/// Whether two MACs are equal, in a time that does not depend on where they differ.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The 3.1.1 preauth integrity hash: SHA-512 chained over whole messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preauth(pub [u8; 64]);

impl Default for Preauth {
    fn default() -> Self {
        Preauth([0; 64])
    }
}

impl Preauth {
    pub fn update(&mut self, message: &[u8]) {
        let mut h = Sha512::new();
        h.update(self.0);
        h.update(message);
        self.0 = h.finalize().into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checking in place gives what checking a copy gives, for every algorithm, and leaves
    /// the message as it was.
    #[test]
    fn a_check_in_place_agrees_with_a_check_of_a_copy_and_changes_nothing() {
        let key = [7u8; 16];
        for algorithm in [Algorithm::HmacSha256, Algorithm::AesCmac, Algorithm::AesGmac] {
            let mut m: Vec<u8> = (0..HEADER_BYTES + 100).map(|i| i as u8).collect();
            m[..4].copy_from_slice(b"\xfeSMB");
            sign_in_place(algorithm, &key, &mut m);
            let signed = m.clone();
            assert!(verify(algorithm, &key, &m) && verify_in_place(algorithm, &key, &mut m), "{algorithm:?}");
            assert_eq!(m, signed, "{algorithm:?}: unchanged after the check");
            for at in [0, 50, HEADER_BYTES + 99] {
                let mut bad = signed.clone();
                bad[at] ^= 1;
                let copy = bad.clone();
                assert!(!verify(algorithm, &key, &bad) && !verify_in_place(algorithm, &key, &mut bad), "{algorithm:?}: byte {at} changed");
                assert_eq!(bad, copy);
            }
            assert!(!verify_in_place(algorithm, &key, &mut signed[..HEADER_BYTES - 1].to_vec()), "too short");
        }
    }
}
