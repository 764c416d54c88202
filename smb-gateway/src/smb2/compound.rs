//! Compounded messages (MS-SMB2 3.2.4.1.4): one frame may hold several messages, each header's
//! NextCommand giving the 8-byte-aligned offset of the next.

use super::header::{Header, HeaderError, HEADER_BYTES};

/// Messages one compound may hold; more end the connection.
pub const MAX_COMPOUND_MESSAGES: usize = 64;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompoundError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("NextCommand {next} at offset {at} is not 8-byte aligned, is shorter than a header, or leaves the frame of {len} bytes")]
    BadNext { at: usize, next: u32, len: usize },
    #[error("more than {MAX_COMPOUND_MESSAGES} messages in one compound")]
    TooMany,
}

/// Splits a frame into its messages (each with its header), checking every NextCommand.
pub fn split(frame: &[u8]) -> Result<Vec<(Header, &[u8])>, CompoundError> {
    Ok(ranges(frame)?.into_iter().map(|(header, r)| (header, &frame[r])).collect())
}

/// Where each message of a frame lies (with its header), checking every NextCommand: what
/// [`split`] gives, as ranges, for a caller that changes the frame's bytes in place.
pub fn ranges(frame: &[u8]) -> Result<Vec<(Header, std::ops::Range<usize>)>, CompoundError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        if out.len() >= MAX_COMPOUND_MESSAGES {
            return Err(CompoundError::TooMany);
        }
        let rest = &frame[at..];
        let header = Header::parse(rest)?;
        let next = header.next_command as usize;
        if next == 0 {
            out.push((header, at..frame.len()));
            return Ok(out);
        }
        if next % 8 != 0 || next < HEADER_BYTES || next >= rest.len() {
            return Err(CompoundError::BadNext { at, next: header.next_command, len: frame.len() });
        }
        out.push((header, at..at + next));
        at += next;
    }
}
