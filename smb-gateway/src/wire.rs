//! Little-endian fields and UTF-16LE strings, read with bounds checks: the one place every
//! codec in this crate takes them from. Also FILETIME, the protocol's clock.

/// FILETIME (100 ns ticks since 1601-01-01) of the Unix epoch.
pub const UNIX_EPOCH_AS_FILETIME: u64 = 116_444_736_000_000_000;

/// Unix milliseconds as FILETIME.
pub fn filetime_of_ms(ms: u64) -> u64 {
    UNIX_EPOCH_AS_FILETIME + ms * 10_000
}

pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// UTF-16LE bytes as a string; `None` for an odd length or invalid UTF-16.
pub fn utf16_decode(bytes: &[u8]) -> Option<String> {
    if bytes.len() % 2 != 0 {
        return None;
    }
    String::from_utf16(&bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>()).ok()
}

/// Appends `s` as UTF-16LE.
pub fn put_utf16(out: &mut Vec<u8>, s: &str) {
    out.extend(s.encode_utf16().flat_map(u16::to_le_bytes));
}

pub fn utf16_encode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 2);
    put_utf16(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        assert_eq!(u16_at(&[1, 2], 0), Some(0x0201));
        assert_eq!(u16_at(&[1, 2], 1), None);
        assert_eq!(u32_at(&[0; 4], usize::MAX), None);
        assert_eq!(u64_at(&[0; 7], 0), None);
        assert_eq!(utf16_decode(&utf16_encode("héllo")), Some("héllo".into()));
        assert_eq!(utf16_decode(&[0x41]), None);
    }
}
