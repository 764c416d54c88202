//! Connection-oriented DCE/RPC PDUs (C706 12.6): header, bind / bind_ack, request / response,
//! fault. Offsets and lengths are checked against the PDU.

use crate::wire::{u16_at, u32_at};
pub const REQUEST: u8 = 0;
pub const RESPONSE: u8 = 2;
pub const FAULT: u8 = 3;
pub const BIND: u8 = 11;
pub const BIND_ACK: u8 = 12;
pub const ALTER_CONTEXT: u8 = 14;
pub const ALTER_CONTEXT_RESP: u8 = 15;
pub const AUTH3: u8 = 16;

pub const PFC_FIRST: u8 = 0x01;
pub const PFC_LAST: u8 = 0x02;
pub const PFC_DID_NOT_EXECUTE: u8 = 0x20;

pub const NCA_UNKNOWN_IF: u32 = 0x1C01_0003;
pub const NCA_OP_RNG_ERROR: u32 = 0x1C01_0002;
pub const RPC_BAD_STUB_DATA: u32 = 0x0000_06F7;
pub const ACCESS_DENIED: u32 = 0x0000_0005;

/// NDR v2 transfer syntax 8a885d04-1ceb-11c9-9fe8-08002b104860, version 2, as on the wire.
pub const NDR20: [u8; 20] = [0x04, 0x5d, 0x88, 0x8a, 0xeb, 0x1c, 0xc9, 0x11, 0x9f, 0xe8, 0x08, 0x00, 0x2b, 0x10, 0x48, 0x60, 2, 0, 0, 0];

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("DCE/RPC PDU truncated or inconsistent")]
    Malformed,
    #[error("DCE/RPC version {0}.{1} not supported")]
    Version(u8, u8),
    #[error("DCE/RPC PDU type {0} not supported here")]
    Unsupported(u8),
    #[error("DCE/RPC data too large")]
    TooLarge,
}

#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub ptype: u8,
    pub flags: u8,
    pub frag_len: u16,
    pub auth_len: u16,
    pub call_id: u32,
}



impl Header {
    pub fn parse(pdu: &[u8]) -> Result<Header, PduError> {
        if pdu.len() < 16 {
            return Err(PduError::Malformed);
        }
        if pdu[0] != 5 || pdu[1] > 1 {
            return Err(PduError::Version(pdu[0], pdu[1]));
        }
        if pdu[4] != 0x10 {
            return Err(PduError::Malformed); // big-endian data representation: no client sends it
        }
        let frag_len = u16_at(pdu, 8).ok_or(PduError::Malformed)?;
        if usize::from(frag_len) != pdu.len() {
            return Err(PduError::Malformed);
        }
        Ok(Header { ptype: pdu[2], flags: pdu[3], frag_len, auth_len: u16_at(pdu, 10).unwrap_or(0), call_id: u32_at(pdu, 12).unwrap_or(0) })
    }
}

/// Starts a PDU of `ptype` answering `call_id`; `finish` fills in the length.
fn start(ptype: u8, flags: u8, call_id: u32) -> Vec<u8> {
    let mut p = vec![5, 0, ptype, flags, 0x10, 0, 0, 0, 0, 0, 0, 0];
    p.extend_from_slice(&call_id.to_le_bytes());
    p
}

fn finish(mut p: Vec<u8>) -> Vec<u8> {
    let len = p.len() as u16;
    p[8..10].copy_from_slice(&len.to_le_bytes());
    p
}

/// An interface: its abstract syntax as on the wire (UUID 16 bytes, major u16, minor u16).
pub type Interface = [u8; 20];

/// Answers a bind or alter_context: accepts the first context whose interface is known and
/// offers NDR v2; rejects the others. Returns the reply and the accepted context id.
pub fn bind_reply(h: &Header, pdu: &[u8], sec_addr: &str, assoc_group: u32, known: &[Interface]) -> Result<(Vec<u8>, Option<u16>), PduError> {
    let max_xmit = u16_at(pdu, 16).ok_or(PduError::Malformed)?;
    let max_recv = u16_at(pdu, 18).ok_or(PduError::Malformed)?;
    let n_ctx = usize::from(*pdu.get(24).ok_or(PduError::Malformed)?);
    let mut at = 28;
    let mut results = Vec::with_capacity(n_ctx);
    let mut accepted = None;
    for _ in 0..n_ctx {
        let ctx_id = u16_at(pdu, at).ok_or(PduError::Malformed)?;
        let n_transfer = usize::from(*pdu.get(at + 2).ok_or(PduError::Malformed)?);
        let abstract_syntax: Interface = pdu.get(at + 4..at + 24).ok_or(PduError::Malformed)?.try_into().expect("20 bytes");
        let transfers = pdu.get(at + 24..at + 24 + 20 * n_transfer).ok_or(PduError::Malformed)?;
        at += 24 + 20 * n_transfer;
        let ndr = transfers.chunks_exact(20).any(|t| t == NDR20);
        if accepted.is_none() && ndr && known.contains(&abstract_syntax) {
            accepted = Some(ctx_id);
            results.push((0u16, 0u16, NDR20));
        } else {
            results.push((2, if known.contains(&abstract_syntax) { 2 } else { 1 }, [0; 20]));
        }
    }
    let frag = max_xmit.min(max_recv).clamp(2048, super::MAX_FRAGMENT_BYTES) & !7;
    let ptype = if h.ptype == BIND { BIND_ACK } else { ALTER_CONTEXT_RESP };
    let mut p = start(ptype, PFC_FIRST | PFC_LAST, h.call_id);
    p.extend_from_slice(&frag.to_le_bytes());
    p.extend_from_slice(&frag.to_le_bytes());
    p.extend_from_slice(&assoc_group.to_le_bytes());
    let addr: Vec<u8> = if h.ptype == BIND { sec_addr.bytes().chain([0]).collect() } else { Vec::new() };
    p.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    p.extend_from_slice(&addr);
    while p.len() % 4 != 0 {
        p.push(0);
    }
    p.extend_from_slice(&[results.len() as u8, 0, 0, 0]);
    for (result, reason, syntax) in results {
        p.extend_from_slice(&result.to_le_bytes());
        p.extend_from_slice(&reason.to_le_bytes());
        p.extend_from_slice(&syntax);
    }
    Ok((finish(p), accepted))
}

/// (context id, opnum) of a request PDU.
pub fn request_ids(pdu: &[u8]) -> Option<(u16, u16)> {
    Some((u16_at(pdu, 20)?, u16_at(pdu, 22)?))
}

/// Response PDUs carrying `stub`, fragmented to `max_frag`.
pub fn response(h: &Header, ctx: u16, stub: &[u8], max_frag: u16) -> Vec<u8> {
    let room = usize::from(max_frag).saturating_sub(24).max(8);
    let mut out = Vec::with_capacity(stub.len() + 24);
    let pieces: Vec<&[u8]> = if stub.is_empty() { vec![&[]] } else { stub.chunks(room).collect() };
    let mut remaining = stub.len();
    for (i, piece) in pieces.iter().enumerate() {
        let mut flags = 0;
        if i == 0 {
            flags |= PFC_FIRST;
        }
        if i + 1 == pieces.len() {
            flags |= PFC_LAST;
        }
        let mut p = start(RESPONSE, flags, h.call_id);
        p.extend_from_slice(&(remaining as u32).to_le_bytes());
        p.extend_from_slice(&ctx.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(piece);
        remaining -= piece.len();
        out.extend(finish(p));
    }
    out
}

/// A fault PDU with `status`.
pub fn fault(h: &Header, ctx: u16, status: u32) -> Vec<u8> {
    let mut p = start(FAULT, PFC_FIRST | PFC_LAST | PFC_DID_NOT_EXECUTE, h.call_id);
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&ctx.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    finish(p)
}
