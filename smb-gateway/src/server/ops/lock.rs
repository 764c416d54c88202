//! LOCK (MS-SMB2 2.2.26, 3.3.5.14): byte-range locks of an open, kept by the volume's owner
//! with the open's registration ([`Files::lock`]), so locks taken through different nodes'
//! gateways meet as on one server; READ and WRITE are checked against them there.
//!
//! A request either unlocks (its first element has UNLOCK: every element must be a plain
//! UNLOCK, done in order until one fails) or locks (no element may unlock; all its locks are
//! taken or none). A lock without FAIL_IMMEDIATELY (alone in its request) waits for the range:
//! the request goes async and the connection asks the owner again whenever an owner let locks
//! go (an unlock, the close of an open that held locks, a gateway's lease expiring: the
//! owner's node tells its gateway and, through the change relay, the other nodes'
//! ([`crate::driver::Releases`]), and every [`LOCK_RETRY_INTERVAL`] in any case, until it is
//! granted, cancelled, or its open closed (then STATUS_RANGE_NOT_LOCKED, as Windows answers). LockSequence is not looked at: this server
//! offers no resilient, durable or multichannel opens, for which alone it counts.

use super::super::async_ops::Waiting;
use super::super::connection::{Connection, Reply};
use super::super::files::{Files, FsError};
use super::{fs, u16_at, u32_at, u64_at};
use crate::byte_locks::{self, ByteLock};
use crate::share_modes::{FILE_READ_DATA, FILE_WRITE_DATA};
use crate::smb2::header::{Header, HEADER_BYTES};
use crate::smb2::status;

const SHARED: u32 = 0x1;
const EXCLUSIVE: u32 = 0x2;
const UNLOCK: u32 = 0x4;
const FAIL_IMMEDIATELY: u32 = 0x10;
/// Bytes of one SMB2_LOCK_ELEMENT.
const ELEMENT_BYTES: usize = 24;
/// Elements one LOCK may carry (clients send one or a few): the owner checks each against
/// every lock of the file under its table's lock, so this bounds that work.
pub const MAX_LOCK_ELEMENTS: usize = 64;
/// Locks one connection may have waiting at once; past this a lock that would wait is not
/// granted. Each waiting lock costs a call to its owner every periodic retry
/// ([`LOCK_RETRY_INTERVAL`] unless set) and on releases, at most 100 a second
/// ([`crate::driver::RELEASE_RETRY_GAP`]).
pub const MAX_WAITING_LOCKS_PER_CONNECTION: usize = 32;
/// How often a waiting lock is asked for again when no release was heard of.
pub const LOCK_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// The LOCK response body (MS-SMB2 2.2.27).
const LOCK_RESPONSE: [u8; 4] = [4, 0, 0, 0];

/// What a LOCK request asks, once checked.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    /// Let go of these ranges, in order; `then` is the status after them when an element past
    /// them was malformed (those before it are still unlocked, as on Windows).
    Unlock { ranges: Vec<ByteLock>, then: Option<u32> },
    /// Take all these locks or none; `wait`: a single lock that waits for its range.
    Lock { locks: Vec<ByteLock>, wait: bool },
}

/// Parses and checks the elements (MS-SMB2 3.3.5.14.1, 3.3.5.14.2).
fn asked(elements: &[u8], count: usize) -> Result<Asked, u32> {
    let element = |i: usize| {
        let at = i * ELEMENT_BYTES;
        let (offset, length, flags) = (u64_at(elements, at).unwrap_or(0), u64_at(elements, at + 8).unwrap_or(0), u32_at(elements, at + 16).unwrap_or(0));
        (ByteLock { offset, length, exclusive: flags & EXCLUSIVE != 0 }, flags)
    };
    if element(0).1 & UNLOCK != 0 {
        let mut ranges = Vec::new();
        for i in 0..count {
            let (l, flags) = element(i);
            if flags != UNLOCK {
                return Ok(Asked::Unlock { ranges, then: Some(status::INVALID_PARAMETER) });
            }
            ranges.push(l);
        }
        return Ok(Asked::Unlock { ranges, then: None });
    }
    let mut locks = Vec::with_capacity(count);
    for i in 0..count {
        let (l, flags) = element(i);
        let valid = matches!(flags & !FAIL_IMMEDIATELY, SHARED | EXCLUSIVE);
        // Several locks in one request must each fail at once rather than wait.
        if !valid || count > 1 && flags & FAIL_IMMEDIATELY == 0 {
            return Err(status::INVALID_PARAMETER);
        }
        if !byte_locks::valid_range(l.offset, l.length) {
            return Err(status::INVALID_LOCK_RANGE);
        }
        locks.push(l);
    }
    let wait = count == 1 && element(0).1 & FAIL_IMMEDIATELY == 0;
    Ok(Asked::Lock { locks, wait })
}

impl Connection {
    pub(in crate::server) fn lock(&mut self, h: &Header, message: &[u8], files: &dyn Files) -> Reply {
        let b = &message[HEADER_BYTES.min(message.len())..];
        let (Some(48), Some(count), Some(volatile)) = (u16_at(b, 0), u16_at(b, 2).map(usize::from), Self::file_id(b, 8)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        if count == 0 || count > MAX_LOCK_ELEMENTS {
            return Reply::error(status::INVALID_PARAMETER);
        }
        let Some(elements) = b.get(24..24 + count * ELEMENT_BYTES) else { return Reply::error(status::INVALID_PARAMETER) };
        let registration = match self.open_of(h, volatile) {
            Ok(o) if o.pipe.is_some() => return Reply::error(status::INVALID_DEVICE_REQUEST),
            Ok(o) if o.info.directory => return Reply::error(status::INVALID_PARAMETER),
            Ok(o) if o.access & (FILE_READ_DATA | FILE_WRITE_DATA) == 0 => return Reply::error(status::ACCESS_DENIED),
            Ok(o) => o.registration,
            Err(s) => return Reply::error(s),
        };
        let Some(registration) = registration else { return Reply::error(status::NOT_SUPPORTED) };
        match asked(elements, count) {
            Err(s) => Reply::error(s),
            Ok(Asked::Unlock { ranges, then }) => match files.lock(registration, &ranges, true) {
                Ok(()) => then.map_or_else(|| Reply::ok(LOCK_RESPONSE.to_vec()), Reply::error),
                Err(e) => fs(e),
            },
            Ok(Asked::Lock { locks, wait }) => match files.lock(registration, &locks, false) {
                Ok(()) => Reply::ok(LOCK_RESPONSE.to_vec()),
                Err(FsError::LockNotGranted) if wait && self.waits.matching(|w| matches!(w, Waiting::Lock { .. })).len() < MAX_WAITING_LOCKS_PER_CONNECTION => {
                    Reply::wait(Waiting::Lock { volatile, lock: locks[0] })
                }
                Err(e) => fs(e),
            },
        }
    }

    /// Whether a lock waits for its range (the driver then calls [`Connection::retry_locks`]
    /// when locks were let go on any node, and every [`LOCK_RETRY_INTERVAL`] in any case).
    pub fn locks_waiting(&self) -> bool {
        self.waits.waiting().any(|w| matches!(w, Waiting::Lock { .. }))
    }

    /// Asks again for every lock that waits: one granted completes its request; one that fails
    /// otherwise than by a conflict completes it with that failure.
    pub fn retry_locks(&mut self, files: &dyn Files) {
        for id in self.waits.matching(|w| matches!(w, Waiting::Lock { .. })) {
            let Some(&Waiting::Lock { volatile, lock }) = self.waits.get(id).map(|op| &op.waiting) else { continue };
            let Some(registration) = self.opens.get(&volatile).and_then(|o| o.registration) else { continue };
            match files.lock(registration, &[lock], false) {
                Ok(()) => {
                    self.waits.finish(id, status::SUCCESS, &LOCK_RESPONSE);
                }
                Err(FsError::LockNotGranted) => {}
                Err(e) => {
                    self.waits.finish(id, e.status(), &super::super::async_ops::ERROR_BODY);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elements(list: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut b = Vec::new();
        for &(offset, length, flags) in list {
            b.extend_from_slice(&offset.to_le_bytes());
            b.extend_from_slice(&length.to_le_bytes());
            b.extend_from_slice(&flags.to_le_bytes());
            b.extend_from_slice(&7u32.to_le_bytes()); // Reserved: not looked at
        }
        b
    }

    fn parse(list: &[(u64, u64, u32)]) -> Result<Asked, u32> {
        asked(&elements(list), list.len())
    }

    const FI: u32 = FAIL_IMMEDIATELY;

    #[test]
    fn flags_decide_lock_or_unlock_and_bad_combinations_are_invalid() {
        let x = |offset, length| ByteLock { offset, length, exclusive: true };
        let s = |offset, length| ByteLock { offset, length, exclusive: false };
        assert_eq!(parse(&[(0, 10, EXCLUSIVE)]), Ok(Asked::Lock { locks: vec![x(0, 10)], wait: true }));
        assert_eq!(parse(&[(0, 10, SHARED | FI), (20, 5, EXCLUSIVE | FI)]), Ok(Asked::Lock { locks: vec![s(0, 10), x(20, 5)], wait: false }));
        for bad in [0, UNLOCK | SHARED, EXCLUSIVE | SHARED, 0x20 | EXCLUSIVE, FI] {
            let list = [(0, 1, SHARED | FI), (5, 1, bad)];
            assert_eq!(parse(&list), Err(status::INVALID_PARAMETER), "flags {bad:#x}");
        }
        assert_eq!(parse(&[(0, 1, 0)]), Err(status::INVALID_PARAMETER), "no flags");
        assert_eq!(parse(&[(0, 1, SHARED | FI), (5, 1, SHARED)]), Err(status::INVALID_PARAMETER), "a second lock that would wait");
        assert_eq!(parse(&[(u64::MAX, 2, EXCLUSIVE)]), Err(status::INVALID_LOCK_RANGE));
        assert_eq!(parse(&[(u64::MAX, 1, EXCLUSIVE)]), Ok(Asked::Lock { locks: vec![x(u64::MAX, 1)], wait: true }));
    }

    #[test]
    fn an_unlock_list_stops_at_its_first_malformed_element() {
        let r = |offset, length| ByteLock { offset, length, exclusive: false };
        assert_eq!(parse(&[(0, 10, UNLOCK), (20, 5, UNLOCK)]), Ok(Asked::Unlock { ranges: vec![r(0, 10), r(20, 5)], then: None }));
        assert_eq!(parse(&[(0, 10, UNLOCK), (20, 5, EXCLUSIVE)]), Ok(Asked::Unlock { ranges: vec![r(0, 10)], then: Some(status::INVALID_PARAMETER) }));
        assert_eq!(parse(&[(0, 10, UNLOCK | FI)]), Ok(Asked::Unlock { ranges: vec![], then: Some(status::INVALID_PARAMETER) }));
        assert_eq!(parse(&[(0, 10, SHARED | FI), (20, 5, UNLOCK)]), Err(status::INVALID_PARAMETER), "a lock request may not unlock");
    }
}
