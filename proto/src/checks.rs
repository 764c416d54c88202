//! End-to-end checksums of file data read from a volume's owner.
//!
//! Data flow: the owner sends each stored chunk as it lies in its data log, with the CRC32C it
//! stored it with, without reading it again ([`crate::v1::DataChunk::checks`]); the node that
//! asked checks the spans ([`DataChunk::checked`]) before it uses the bytes. So a page the
//! owner's disk gives back wrong, or bytes changed between the two processes, fail the read where
//! the data is used, and the owner's CPU never touches the bytes it sends (the kernel copies
//! them into the socket).

use prost::bytes::Bytes;

use crate::v1::{Check, DataChunk};

/// Why a message's data is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("file data from the volume's owner fails its checksum (CRC32C) in bytes {at}..{end} of a {len}-byte message")]
    Mismatch { at: usize, end: usize, len: usize },
    #[error("the checksums of a {len}-byte message of file data cover {covered} bytes")]
    Coverage { covered: u64, len: usize },
    #[error("a message of file data has a checksum of no bytes")]
    EmptySpan,
}

impl Check {
    /// The check of `data`, whole.
    pub fn of(data: &[u8]) -> Check {
        Check { len: data.len() as u32, crc32c: crc32c::crc32c(data) }
    }
}

/// Whether `checks` cover `data` exactly, in order, and each span's CRC32C matches.
pub fn verify(data: &[u8], checks: &[Check]) -> Result<(), CheckError> {
    let covered: u64 = checks.iter().map(|c| u64::from(c.len)).sum();
    if covered != data.len() as u64 {
        return Err(CheckError::Coverage { covered, len: data.len() });
    }
    if checks.iter().any(|c| c.len == 0) {
        return Err(CheckError::EmptySpan);
    }
    let mut at = 0;
    for c in checks {
        let end = at + c.len as usize;
        if crc32c::crc32c(&data[at..end]) != c.crc32c {
            return Err(CheckError::Mismatch { at, end, len: data.len() });
        }
        at = end;
    }
    Ok(())
}

impl DataChunk {
    /// The message's data, once its checks pass.
    pub fn checked(self) -> Result<Bytes, CheckError> {
        verify(&self.data, &self.checks)?;
        Ok(self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spans(data: &[u8], cuts: &[usize]) -> Vec<Check> {
        let mut at = 0;
        let mut checks = Vec::new();
        for &end in cuts.iter().chain(std::iter::once(&data.len())) {
            if end > at {
                checks.push(Check::of(&data[at..end]));
                at = end;
            }
        }
        checks
    }

    #[test]
    fn data_whose_checks_cover_it_passes_and_a_flipped_byte_anywhere_fails() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let checks = spans(&data, &[1000, 1001, 4096]);
        assert_eq!(checks.len(), 4);
        assert_eq!(DataChunk { data: Bytes::from(data.clone()), checks: checks.clone() }.checked().unwrap(), data);
        for i in [0, 999, 1000, 1001, 4095, 4999] {
            let mut bad = data.clone();
            bad[i] ^= 0x10;
            assert!(matches!(verify(&bad, &checks), Err(CheckError::Mismatch { at, end, .. }) if at <= i && i < end), "byte {i}");
        }
        // Nothing, checked by nothing.
        assert_eq!(DataChunk::default().checked().unwrap(), Bytes::new());
    }

    #[test]
    fn checks_that_miss_bytes_overrun_them_or_cover_nothing_are_refused() {
        let data = vec![5u8; 100];
        assert!(matches!(verify(&data, &[]), Err(CheckError::Coverage { covered: 0, len: 100 })), "unchecked data");
        assert!(matches!(verify(&data, &[Check::of(&data[..99])]), Err(CheckError::Coverage { .. })));
        let over = Check { len: u32::MAX, crc32c: 0 };
        assert!(matches!(verify(&data, &[over, over, Check::of(&data)]), Err(CheckError::Coverage { .. })), "no overflow past the data");
        let empty = Check::of(&[]);
        assert_eq!(verify(&data, &[Check::of(&data), empty]), Err(CheckError::EmptySpan));
        assert!(matches!(verify(&[], &[empty]), Err(CheckError::EmptySpan)));
    }

    proptest! {
        #[test]
        fn any_cut_verifies_and_any_change_is_caught(data in proptest::collection::vec(any::<u8>(), 1..4096), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(data.len())).collect();
            cuts.sort_unstable();
            let checks = spans(&data, &cuts);
            prop_assert!(verify(&data, &checks).is_ok());
            let mut bad = data.clone();
            bad[flip.index(data.len())] ^= 1 << bit;
            prop_assert!(verify(&bad, &checks).is_err());
        }
    }
}
