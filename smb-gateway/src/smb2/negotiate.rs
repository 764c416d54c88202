//! NEGOTIATE request and response bodies (MS-SMB2 2.2.3, 2.2.4) and negotiate contexts.
//! Offsets in these bodies count from the start of the SMB2 header, as the spec has them.

use crate::wire::{u16_at, u32_at};
use super::header::HEADER_BYTES;

pub const DIALECT_202: u16 = 0x0202;
pub const DIALECT_210: u16 = 0x0210;
pub const DIALECT_300: u16 = 0x0300;
pub const DIALECT_302: u16 = 0x0302;
pub const DIALECT_311: u16 = 0x0311;

pub const CONTEXT_PREAUTH_INTEGRITY: u16 = 0x0001;
pub const CONTEXT_ENCRYPTION: u16 = 0x0002;
pub const CONTEXT_SIGNING: u16 = 0x0008;

/// Negotiate contexts one message may carry.
pub const MAX_CONTEXTS: usize = 32;
/// Dialects one request may offer.
pub const MAX_DIALECTS: usize = 64;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NegotiateError {
    #[error("NEGOTIATE body too short or StructureSize {0} wrong")]
    Structure(u16),
    #[error("{0} lies outside the message")]
    Bounds(&'static str),
    #[error("too many {0}")]
    TooMany(&'static str),
}



#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub kind: u16,
    pub data: Vec<u8>,
}

/// Negotiate contexts: `count` of them from `offset` (from the header start), 8-byte aligned.
fn contexts(msg: &[u8], offset: usize, count: usize) -> Result<Vec<Context>, NegotiateError> {
    if count > MAX_CONTEXTS {
        return Err(NegotiateError::TooMany("negotiate contexts"));
    }
    let mut out = Vec::with_capacity(count);
    let mut at = offset;
    for i in 0..count {
        if i > 0 {
            at = at.checked_add(7).ok_or(NegotiateError::Bounds("a negotiate context"))? & !7;
        }
        let kind = u16_at(msg, at).ok_or(NegotiateError::Bounds("a negotiate context"))?;
        let len = usize::from(u16_at(msg, at + 2).ok_or(NegotiateError::Bounds("a negotiate context"))?);
        let data = msg.get(at + 8..at + 8 + len).ok_or(NegotiateError::Bounds("negotiate context data"))?;
        out.push(Context { kind, data: data.to_vec() });
        at += 8 + len;
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub security_mode: u16,
    pub capabilities: u32,
    pub client_guid: [u8; 16],
    pub dialects: Vec<u16>,
    pub contexts: Vec<Context>,
}

impl Request {
    /// Parses the body of a NEGOTIATE request (`msg` starts at its SMB2 header).
    pub fn parse(msg: &[u8]) -> Result<Request, NegotiateError> {
        let b = msg.get(HEADER_BYTES..).ok_or(NegotiateError::Structure(0))?;
        let size = u16_at(b, 0).ok_or(NegotiateError::Structure(0))?;
        if size != 36 || b.len() < 36 {
            return Err(NegotiateError::Structure(size));
        }
        let count = usize::from(u16_at(b, 2).unwrap_or(0));
        if count > MAX_DIALECTS {
            return Err(NegotiateError::TooMany("dialects"));
        }
        let list = b.get(36..36 + 2 * count).ok_or(NegotiateError::Bounds("the dialect list"))?;
        let dialects: Vec<u16> = list.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let contexts = if dialects.contains(&DIALECT_311) {
            let offset = u32_at(b, 28).unwrap_or(0) as usize;
            let n = usize::from(u16_at(b, 32).unwrap_or(0));
            contexts(msg, offset, n)?
        } else {
            Vec::new()
        };
        Ok(Request {
            security_mode: u16_at(b, 4).unwrap_or(0),
            capabilities: u32_at(b, 8).unwrap_or(0),
            client_guid: b[12..28].try_into().expect("16 bytes"),
            dialects,
            contexts,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub security_mode: u16,
    pub dialect: u16,
    pub server_guid: [u8; 16],
    pub capabilities: u32,
    pub contexts: Vec<Context>,
}

impl Response {
    /// Parses the body of a NEGOTIATE response (`msg` starts at its SMB2 header).
    pub fn parse(msg: &[u8]) -> Result<Response, NegotiateError> {
        let b = msg.get(HEADER_BYTES..).ok_or(NegotiateError::Structure(0))?;
        let size = u16_at(b, 0).ok_or(NegotiateError::Structure(0))?;
        if size != 65 || b.len() < 64 {
            return Err(NegotiateError::Structure(size));
        }
        let dialect = u16_at(b, 4).unwrap_or(0);
        let contexts = if dialect == DIALECT_311 {
            contexts(msg, u32_at(b, 60).unwrap_or(0) as usize, usize::from(u16_at(b, 6).unwrap_or(0)))?
        } else {
            Vec::new()
        };
        Ok(Response {
            security_mode: u16_at(b, 2).unwrap_or(0),
            dialect,
            server_guid: b[8..24].try_into().expect("16 bytes"),
            capabilities: u32_at(b, 24).unwrap_or(0),
            contexts,
        })
    }

    /// The signing algorithm a 3.1.1 response chose (SIGNING_CAPABILITIES), if any.
    pub fn signing_algorithm(&self) -> Option<u16> {
        let c = self.contexts.iter().find(|c| c.kind == CONTEXT_SIGNING)?;
        (u16_at(&c.data, 0)? == 1).then(|| u16_at(&c.data, 2)).flatten()
    }
}
