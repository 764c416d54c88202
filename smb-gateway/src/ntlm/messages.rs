//! NTLMSSP messages (MS-NLMP 2.2.1): NEGOTIATE, CHALLENGE, AUTHENTICATE. Every field is a
//! (length, max length, offset) triple into the message, checked against its bounds.

use crate::wire::{u16_at, u32_at};
pub const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
pub const NEGOTIATE_UNICODE: u32 = 0x0000_0001;

/// The longest NTLMSSP message accepted.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("not an NTLMSSP message")]
    Signature,
    #[error("NTLMSSP message type {found}, expected {expected}")]
    Type { found: u32, expected: u32 },
    #[error("NTLMSSP message of {0} bytes is too short or too long")]
    Size(usize),
    #[error("field {field} (offset {offset}, length {len}) lies outside the {total}-byte message")]
    Field { field: &'static str, offset: usize, len: usize, total: usize },
    #[error("field {0} is not valid UTF-16")]
    Text(&'static str),
}



/// Checks the signature, type and size of a message.
fn header(msg: &[u8], expected: u32, min: usize) -> Result<(), MessageError> {
    if msg.len() > MAX_MESSAGE_BYTES {
        return Err(MessageError::Size(msg.len()));
    }
    if !msg.starts_with(SIGNATURE) {
        return Err(MessageError::Signature);
    }
    if msg.len() < min {
        return Err(MessageError::Size(msg.len()));
    }
    let found = u32_at(msg, 8).ok_or(MessageError::Size(msg.len()))?;
    if found != expected {
        return Err(MessageError::Type { found, expected });
    }
    Ok(())
}

/// The bytes a (len, maxlen, offset) field at `at` points to.
fn field<'a>(msg: &'a [u8], at: usize, name: &'static str) -> Result<&'a [u8], MessageError> {
    let len = usize::from(u16_at(msg, at).ok_or(MessageError::Size(msg.len()))?);
    let offset = u32_at(msg, at + 4).ok_or(MessageError::Size(msg.len()))? as usize;
    offset.checked_add(len).and_then(|end| msg.get(offset..end)).ok_or(MessageError::Field { field: name, offset, len, total: msg.len() })
}

fn text(bytes: &[u8], unicode: bool, name: &'static str) -> Result<String, MessageError> {
    if !unicode {
        return Ok(bytes.iter().map(|&b| b as char).collect());
    }
    crate::wire::utf16_decode(bytes).ok_or(MessageError::Text(name))
}

/// A CHALLENGE message's server challenge and target info.
#[derive(Debug, PartialEq, Eq)]
pub struct Challenge {
    pub flags: u32,
    pub server_challenge: [u8; 8],
    pub target_info: Vec<u8>,
}

impl Challenge {
    pub fn parse(msg: &[u8]) -> Result<Challenge, MessageError> {
        header(msg, 2, 48)?;
        Ok(Challenge {
            flags: u32_at(msg, 20).ok_or(MessageError::Size(msg.len()))?,
            server_challenge: msg[24..32].try_into().expect("8 bytes"),
            target_info: field(msg, 40, "TargetInfo")?.to_vec(),
        })
    }
}

/// An AUTHENTICATE message, as the server needs it.
#[derive(Debug, PartialEq, Eq)]
pub struct Authenticate {
    pub flags: u32,
    pub lm_response: Vec<u8>,
    pub nt_response: Vec<u8>,
    pub domain: String,
    pub user: String,
    pub workstation: String,
    pub encrypted_session_key: Vec<u8>,
}

impl Authenticate {
    pub fn parse(msg: &[u8]) -> Result<Authenticate, MessageError> {
        header(msg, 3, 64)?;
        let flags = u32_at(msg, 60).ok_or(MessageError::Size(msg.len()))?;
        let unicode = flags & NEGOTIATE_UNICODE != 0;
        Ok(Authenticate {
            flags,
            lm_response: field(msg, 12, "LmChallengeResponse")?.to_vec(),
            nt_response: field(msg, 20, "NtChallengeResponse")?.to_vec(),
            domain: text(field(msg, 28, "DomainName")?, unicode, "DomainName")?,
            user: text(field(msg, 36, "UserName")?, unicode, "UserName")?,
            workstation: text(field(msg, 44, "Workstation")?, unicode, "Workstation")?,
            encrypted_session_key: field(msg, 52, "EncryptedRandomSessionKey")?.to_vec(),
        })
    }
}
