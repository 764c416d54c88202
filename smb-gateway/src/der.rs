//! The little DER that SPNEGO needs: tag-length-value reading with every length checked
//! against the buffer, and minimal-length writing.

/// Nesting SPNEGO never exceeds; deeper input is refused.
pub const MAX_DEPTH: usize = 8;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DerError {
    #[error("DER element truncated")]
    Truncated,
    #[error("DER length form not supported (indefinite, or longer than 4 bytes)")]
    Length,
    #[error("expected DER tag {expected:#04x}, found {found:#04x}")]
    Tag { expected: u8, found: u8 },
}

/// Reads TLVs from a buffer, front to back.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { rest: buf }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element: (tag, value).
    pub fn next(&mut self) -> Result<(u8, &'a [u8]), DerError> {
        let (&tag, after) = self.rest.split_first().ok_or(DerError::Truncated)?;
        let (&first, after) = after.split_first().ok_or(DerError::Truncated)?;
        let (len, after) = if first < 0x80 {
            (usize::from(first), after)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err(DerError::Length);
            }
            let bytes = after.get(..n).ok_or(DerError::Truncated)?;
            (bytes.iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b)), &after[n..])
        };
        let value = after.get(..len).ok_or(DerError::Truncated)?;
        self.rest = &after[len..];
        Ok((tag, value))
    }

    /// The next element, which must carry `tag`.
    pub fn expect(&mut self, tag: u8) -> Result<&'a [u8], DerError> {
        let (found, value) = self.next()?;
        if found != tag {
            return Err(DerError::Tag { expected: tag, found });
        }
        Ok(value)
    }
}

/// Appends one element with a minimal-length length.
pub fn write(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    let len = value.len();
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
        0x100..=0xffff => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
        _ => out.extend_from_slice(&[0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(value);
}

/// One element as a new buffer.
pub fn wrap(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    write(&mut out, tag, value);
    out
}
