//! NTLMv2 response verification (MS-NLMP 3.3.2), done here against the NT hash the cluster
//! stores: NTOWFv2 = HMAC-MD5(NT hash, UTF-16LE(UPPER(user) + domain)); the client proves the
//! password with NTProofStr = HMAC-MD5(NTOWFv2, server challenge || blob), the first 16 bytes
//! of its NT response. An acceptor that skips this check (see ../shared/docs/stack.md) accepts
//! any password, so it is written and tested here with MS-NLMP's published vectors and real
//! client traffic.

use hmac::{Hmac, Mac};
use md5::Md5;
use umbra_raft::command::NtHash;

/// An NTLMv2 blob is at least 28 bytes (header, time, client challenge, reserved, AV_EOL).
pub const MIN_BLOB_BYTES: usize = 28;
/// The longest NT response accepted (the blob carries the target info, a few hundred bytes).
pub const MAX_NT_RESPONSE_BYTES: usize = 4096;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NtlmError {
    #[error("NTLMv1 responses are refused")]
    NtlmV1,
    #[error("anonymous logons are refused")]
    Anonymous,
    #[error("the NT response has {0} bytes; an NTLMv2 response has 44 to {MAX_NT_RESPONSE_BYTES}")]
    BadLength(usize),
    #[error("the NTLMv2 blob does not start with version 1.1")]
    BadBlob,
    #[error("wrong password")]
    WrongPassword,
}

type HmacMd5 = Hmac<Md5>;

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = HmacMd5::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// NTOWFv2: the key derived from the NT hash, the user (upper-cased) and the domain.
pub fn ntowf_v2(nt_hash: &NtHash, user: &str, domain: &str) -> [u8; 16] {
    let identity: Vec<u8> = user.to_uppercase().encode_utf16().chain(domain.encode_utf16()).flat_map(u16::to_le_bytes).collect();
    hmac_md5(&nt_hash.0, &[&identity])
}

/// Checks an NTLMv2 NT response; on success returns the session base key.
pub fn verify_ntlmv2(nt_hash: &NtHash, user: &str, domain: &str, server_challenge: &[u8; 8], nt_response: &[u8]) -> Result<[u8; 16], NtlmError> {
    match nt_response.len() {
        0 => return Err(NtlmError::Anonymous),
        24 => return Err(NtlmError::NtlmV1),
        n if !(16 + MIN_BLOB_BYTES..=MAX_NT_RESPONSE_BYTES).contains(&n) => return Err(NtlmError::BadLength(n)),
        _ => {}
    }
    let (proof, blob) = nt_response.split_at(16);
    if blob[0] != 1 || blob[1] != 1 {
        return Err(NtlmError::BadBlob);
    }
    let key = ntowf_v2(nt_hash, user, domain);
    let expected = hmac_md5(&key, &[server_challenge, blob]);
    // Constant time: every byte is compared whatever the first difference.
    let diff = expected.iter().zip(proof).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(NtlmError::WrongPassword);
    }
    Ok(hmac_md5(&key, &[proof]))
}

/// NTLMSSP_NEGOTIATE_KEY_EXCH: the client sent a random session key, RC4-encrypted.
pub const NEGOTIATE_KEY_EXCH: u32 = 0x4000_0000;

/// The session key both sides end with (MS-NLMP 3.2.5.1.2): for NTLMv2 the key exchange key is
/// the session base key; with KEY_EXCH the client's random key, decrypted with it. None when
/// KEY_EXCH was negotiated but the client sent no 16-byte key (the logon fails: the two sides
/// would not share a key).
pub fn exported_session_key(session_base_key: &[u8; 16], flags: u32, encrypted_random_key: &[u8]) -> Option<[u8; 16]> {
    use rc4::{KeyInit, Rc4, StreamCipher};
    if flags & NEGOTIATE_KEY_EXCH == 0 {
        return Some(*session_base_key);
    }
    let mut key = <[u8; 16]>::try_from(encrypted_random_key).ok()?;
    let mut rc4 = Rc4::new(session_base_key.into());
    rc4.apply_keystream(&mut key);
    Some(key)
}

/// MsvAvFlags (MS-NLMP 2.2.2.1, AvId 6): bit 0x2 says the AUTHENTICATE message carries a MIC.
const AV_FLAGS: u16 = 6;
const AV_FLAGS_MIC: u32 = 0x2;
/// Where the AV pairs start in an NTLMv2 response: NTProofStr (16), then the blob's fixed
/// part (MS-NLMP 2.2.2.7: versions, reserved, time stamp, client challenge, reserved).
const AV_PAIRS_AT: usize = 16 + 28;
/// Where the MIC lies in an AUTHENTICATE message (after the Version field), and its length.
const MIC_AT: usize = 72;
const MIC_BYTES: usize = 16;

/// Whether an NTLMv2 response says its AUTHENTICATE message carries a MIC: its AV pairs (which
/// NTProofStr covers, so nobody between can remove the flag) hold MsvAvFlags with bit 0x2. The
/// walk stops at MsvAvEOL or at the first pair that would run past the response.
pub fn mic_present(nt_response: &[u8]) -> bool {
    let mut at = AV_PAIRS_AT;
    while let (Some(id), Some(len)) = (crate::wire::u16_at(nt_response, at), crate::wire::u16_at(nt_response, at + 2)) {
        let Some(value) = nt_response.get(at + 4..at + 4 + usize::from(len)) else { return false };
        match id {
            0 => return false,
            AV_FLAGS => return value.len() == 4 && u32::from_le_bytes(value.try_into().expect("4 bytes")) & AV_FLAGS_MIC != 0,
            _ => at += 4 + usize::from(len),
        }
    }
    false
}

/// Checks an AUTHENTICATE message's MIC (MS-NLMP 3.2.5.1.2): HMAC-MD5 under the exported
/// session key of the three messages as sent, the MIC's own 16 bytes taken as zeros. It binds
/// the NEGOTIATE and CHALLENGE to the logon, so a relay cannot change their flags (for example
/// to drop signing) unseen. Compared in constant time.
pub fn mic_verifies(exported_session_key: &[u8; 16], negotiate: &[u8], challenge: &[u8], authenticate: &[u8]) -> bool {
    let Some(theirs) = authenticate.get(MIC_AT..MIC_AT + MIC_BYTES) else { return false };
    let zeros = [0u8; MIC_BYTES];
    let ours = hmac_md5(exported_session_key, &[negotiate, challenge, &authenticate[..MIC_AT], &zeros, &authenticate[MIC_AT + MIC_BYTES..]]);
    ours.iter().zip(theirs).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The last step of an NTLMv2 logon that every acceptor shares: the session key exported from
/// the session base key, and the MIC checked when the response says there is one. None when
/// the logon must fail.
pub fn finish_logon(base: &[u8; 16], flags: u32, authenticate: &super::messages::Authenticate, raw: (&[u8], &[u8], &[u8])) -> Option<[u8; 16]> {
    let exported = exported_session_key(base, flags, &authenticate.encrypted_session_key)?;
    let (negotiate, challenge, authenticate_raw) = raw;
    if mic_present(&authenticate.nt_response) && !mic_verifies(&exported, negotiate, challenge, authenticate_raw) {
        return None;
    }
    Some(exported)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// MS-NLMP 4.2.4: NTLMv2 authentication with User/Domain/Password.
    #[test]
    fn ms_nlmp_published_vectors() {
        let hash = NtHash::from_password("Password");
        assert_eq!(hash.0.to_vec(), hex("a4f49c406510bdcab6824ee7c30fd852"), "NTOWFv1 (4.2.2.1.2)");
        assert_eq!(ntowf_v2(&hash, "User", "Domain").to_vec(), hex("0c868a403bfd7a93a3001ef22ef02e3f"), "NTOWFv2 (4.2.4.1.1)");
        let server_challenge: [u8; 8] = hex("0123456789abcdef").try_into().unwrap();
        // temp = 0x0101, reserved, time 0, client challenge aa.., reserved, AV pairs, reserved.
        let av = hex("02000c0044006f006d00610069006e0001000c0053006500720076006500720000000000");
        let mut blob = hex("01010000000000000000000000000000aaaaaaaaaaaaaaaa00000000");
        blob.extend(&av);
        blob.extend([0u8; 4]);
        let mut response = hex("68cd0ab851e51c96aabc927bebef6a1c");
        response.extend(&blob);
        let key = verify_ntlmv2(&hash, "User", "Domain", &server_challenge, &response).expect("the published response verifies");
        assert_eq!(key.to_vec(), hex("8de40ccadbc14a82f15cb0ad0de95ca3"), "SessionBaseKey (4.2.4.1.2)");
        assert_eq!(verify_ntlmv2(&NtHash::from_password("password"), "User", "Domain", &server_challenge, &response), Err(NtlmError::WrongPassword));
        assert_eq!(verify_ntlmv2(&hash, "Other", "Domain", &server_challenge, &response), Err(NtlmError::WrongPassword));
        let other_challenge = [0u8; 8];
        assert_eq!(verify_ntlmv2(&hash, "User", "Domain", &other_challenge, &response), Err(NtlmError::WrongPassword), "a replay against a new challenge fails");
        assert_eq!(verify_ntlmv2(&hash, "User", "Domain", &server_challenge, &[0u8; 24]), Err(NtlmError::NtlmV1));
        assert_eq!(verify_ntlmv2(&hash, "User", "Domain", &server_challenge, &[]), Err(NtlmError::Anonymous));
    }
}
