//! Direct TCP transport framing (MS-SMB2 2.1): every message follows a 4-byte header, a zero
//! byte and a 24-bit big-endian length. Sans-IO: the caller feeds bytes, gets whole frames.

/// The largest frame the transport can carry (24-bit length).
pub const MAX_TRANSPORT_FRAME_BYTES: usize = 0x00FF_FFFF;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not an SMB2 direct TCP frame (first byte {0:#04x}, expected 0)")]
    NotDirectTcp(u8),
    #[error("frame of {len} bytes is larger than the {max} this server accepts")]
    TooLarge { len: usize, max: usize },
}

/// The first whole frame at the start of `buf`: `Ok(Some((consumed, message_range)))`, or
/// `Ok(None)` when more bytes are needed. `max` bounds the message length (checked before
/// anything is buffered for it).
pub fn next_frame(buf: &[u8], max: usize) -> Result<Option<(usize, std::ops::Range<usize>)>, FrameError> {
    let Some(head) = buf.get(..4) else { return Ok(None) };
    if head[0] != 0 {
        return Err(FrameError::NotDirectTcp(head[0]));
    }
    let len = message_len(head);
    if len > max.min(MAX_TRANSPORT_FRAME_BYTES) {
        return Err(FrameError::TooLarge { len, max });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((4 + len, 4..4 + len)))
}

/// The whole size (transport header included) of the frame `buf` starts with, once its header
/// is in; the caller has already had [`next_frame`] check it against the bound.
pub fn announced_bytes(buf: &[u8]) -> Option<usize> {
    Some(4 + message_len(buf.get(..4)?))
}

/// The message length a 4-byte transport header announces (24 bits, big-endian).
fn message_len(head: &[u8]) -> usize {
    usize::from(head[1]) << 16 | usize::from(head[2]) << 8 | usize::from(head[3])
}

/// The transport header of a message of `len` bytes.
pub fn frame_header(len: usize) -> Result<[u8; 4], FrameError> {
    if len > MAX_TRANSPORT_FRAME_BYTES {
        return Err(FrameError::TooLarge { len, max: MAX_TRANSPORT_FRAME_BYTES });
    }
    Ok([0, (len >> 16) as u8, (len >> 8) as u8, len as u8])
}

/// Appends `message` to `out` with its transport header.
pub fn encode_frame(message: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    out.extend_from_slice(&frame_header(message.len())?);
    out.extend_from_slice(message);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_wait_for_more_and_refuse_oversize_and_netbios() {
        let mut buf = Vec::new();
        encode_frame(b"hello", &mut buf).unwrap();
        encode_frame(b"xy", &mut buf).unwrap();
        assert_eq!(next_frame(&buf, 100), Ok(Some((9, 4..9))));
        assert_eq!(next_frame(&buf[..6], 100), Ok(None));
        assert_eq!(announced_bytes(&buf[..6]), Some(9), "the whole first frame, header included");
        assert_eq!(announced_bytes(&buf[..3]), None);
        assert_eq!(next_frame(&buf[..3], 100), Ok(None));
        assert_eq!(next_frame(&[0, 0, 1, 0], 100), Err(FrameError::TooLarge { len: 256, max: 100 }));
        assert_eq!(next_frame(&[0x81, 0, 0, 0], 100), Err(FrameError::NotDirectTcp(0x81)));
    }
}
