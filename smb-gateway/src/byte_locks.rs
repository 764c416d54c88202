//! Byte-range lock rules (MS-FSA 2.1.4.10, 2.1.5.8, 2.1.5.9), pure: which locks a new lock, a
//! READ or a WRITE conflicts with, and which lock an unlock removes. The owner of a volume keeps
//! every open's locks (node/src/opens.rs) and applies these rules to all of them, whatever
//! gateway each open came through, so two clients on different nodes see one Windows server.
//!
//! The rules, as Windows applies them (smbtorture's smb2.lock tests):
//! - an existing exclusive lock of another open conflicts with everything that overlaps it;
//!   one of the same open only with a new exclusive lock;
//! - an existing shared lock (of any open, the same one too) conflicts with a new exclusive
//!   lock and with a WRITE;
//! - a READ is blocked only by another open's exclusive lock;
//! - a lock of (0, 0) never conflicts, and a zero-length lock at N > 0 overlaps only a range
//!   holding both N - 1 and N (its last byte is N - 1).

/// One byte-range lock an open holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteLock {
    pub offset: u64,
    pub length: u64,
    pub exclusive: bool,
}

/// What is asked of a range that locks may block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// A new lock, exclusive or shared.
    Lock { exclusive: bool },
    Read,
    Write,
}

/// Whether `offset..offset+length` is a range a lock may name (MS-FSA 2.1.5.8): its last byte
/// must not wrap past 2^64 - 1 (else STATUS_INVALID_LOCK_RANGE). Length 0 always may.
pub fn valid_range(offset: u64, length: u64) -> bool {
    length == 0 || offset.checked_add(length - 1).is_some()
}

/// Whether two ranges overlap as MS-FSA 2.1.4.10 computes it: last bytes in wrapping
/// arithmetic, and (0, 0) overlapping nothing.
fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    if a == (0, 0) || b == (0, 0) {
        return false;
    }
    let last = |(o, l): (u64, u64)| o.wrapping_add(l).wrapping_sub(1);
    b.0 <= last(a) && last(b) >= a.0
}

/// Whether `existing`, held by the same open as the request or not, blocks `intent` on
/// `offset..offset+length`.
pub fn conflicts(existing: &ByteLock, same_open: bool, offset: u64, length: u64, intent: Intent) -> bool {
    if !overlaps((existing.offset, existing.length), (offset, length)) {
        return false;
    }
    let exclusive_intent = matches!(intent, Intent::Lock { exclusive: true } | Intent::Write);
    if existing.exclusive {
        !same_open || matches!(intent, Intent::Lock { exclusive: true })
    } else {
        exclusive_intent
    }
}

/// Which of an open's locks an unlock of exactly (`offset`, `length`) removes (MS-FSA 2.1.5.9):
/// the first exclusive one that matches, else the last shared one; None: STATUS_RANGE_NOT_LOCKED.
pub fn unlock_index(own: &[ByteLock], offset: u64, length: u64) -> Option<usize> {
    let matching = |l: &&ByteLock| l.offset == offset && l.length == length;
    own.iter().position(|l| matching(&l) && l.exclusive).or_else(|| own.iter().rposition(|l| matching(&l)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(offset: u64, length: u64) -> ByteLock {
        ByteLock { offset, length, exclusive: true }
    }

    fn s(offset: u64, length: u64) -> ByteLock {
        ByteLock { offset, length, exclusive: false }
    }

    const X: Intent = Intent::Lock { exclusive: true };
    const S: Intent = Intent::Lock { exclusive: false };

    /// smbtorture smb2.lock.zerobytelength: an exclusive (10, 0), then a second exclusive lock
    /// on the same or another handle.
    #[test]
    fn a_zero_length_lock_overlaps_only_ranges_holding_the_byte_before_it_and_its_own() {
        let held = x(10, 0);
        for same in [true, false] {
            for (o, l) in [(10, 0), (9, 1), (10, 1), (11, 1), (10, 2)] {
                assert!(!conflicts(&held, same, o, l, X), "({o}, {l}) is granted");
            }
            for (o, l) in [(9, 2), (9, 3)] {
                assert!(conflicts(&held, same, o, l, X), "({o}, {l}) is not");
                assert!(conflicts(&x(o, l), same, 10, 0, X), "nor the other way round");
            }
            assert!(!conflicts(&x(0, 0), same, 0, 0, X), "(0, 0) never conflicts");
            assert!(conflicts(&x(100, 10), same, 102, 0, X), "inside an exclusive lock");
            assert!(!conflicts(&x(u64::MAX, 0), same, u64::MAX, 0, X));
        }
    }

    #[test]
    fn own_exclusive_locks_admit_shared_locks_reads_and_writes_but_not_another_exclusive() {
        let held = x(0, 4);
        assert!(!conflicts(&held, true, 0, 4, S), "shared over own exclusive");
        assert!(conflicts(&held, true, 2, 4, X), "exclusive over own exclusive, even in part");
        assert!(!conflicts(&held, true, 0, 4, Intent::Read));
        assert!(!conflicts(&held, true, 0, 4, Intent::Write));
        for intent in [S, X, Intent::Read, Intent::Write] {
            assert!(conflicts(&held, false, 3, 1, intent), "another open: {intent:?}");
        }
        assert!(!conflicts(&held, false, 4, 10, Intent::Write), "past its end");
    }

    #[test]
    fn shared_locks_block_exclusive_locks_and_writes_of_every_open_and_nothing_else() {
        let held = s(0, 8);
        for same in [true, false] {
            assert!(!conflicts(&held, same, 0, 8, S));
            assert!(!conflicts(&held, same, 0, 8, Intent::Read));
            assert!(conflicts(&held, same, 7, 1, X));
            assert!(conflicts(&held, same, 7, 1, Intent::Write), "the holder's own write too");
        }
    }

    #[test]
    fn ranges_whose_last_byte_wraps_are_invalid_and_the_top_of_the_space_is_lockable() {
        assert!(valid_range(u64::MAX, 1) && valid_range(u64::MAX, 0) && valid_range(1 << 63, 1) && valid_range(0, u64::MAX));
        assert!(!valid_range(u64::MAX, 2) && !valid_range(u64::MAX, u64::MAX) && !valid_range(2, u64::MAX));
        assert!(valid_range(1, u64::MAX), "its last byte is the last there is");
        assert!(conflicts(&x(1 << 63, 1), false, 1 << 63, 1, S), "no 63-bit limit");
        assert!(conflicts(&x(u64::MAX, 1), false, u64::MAX, 1, S));
    }

    #[test]
    fn an_unlock_matches_offset_and_length_exactly_and_takes_an_exclusive_lock_first() {
        let own = [s(0, 4), x(0, 4), s(0, 4), s(110, 4), s(112, 4)];
        assert_eq!(unlock_index(&own, 0, 4), Some(1), "the exclusive one first");
        assert_eq!(unlock_index(&own[2..], 0, 4), Some(0));
        assert_eq!(unlock_index(&[s(0, 4), s(0, 4)], 0, 4), Some(1), "the last shared one");
        assert_eq!(unlock_index(&own, 110, 6), None, "coalesced ranges are not one lock");
        assert_eq!(unlock_index(&own, 0, 3), None, "no sub-ranges");
    }
}
