//! The credit window (MS-SMB2 3.3.1.1, 3.3.5.2.3): a client may use only message ids the server
//! granted, each once. Every response grants credits within a window of
//! [`MAX_OUTSTANDING_CREDITS`] ids from the lowest one not used yet, so what the server
//! remembers about used ids is bounded even when a client leaves one id unused forever.

use std::collections::BTreeSet;

use crate::smb2::header::Command;
use crate::wire::u32_at;

/// The credit window: ids from the lowest one not used yet, granted or used, at most.
pub const MAX_OUTSTANDING_CREDITS: u64 = 8192;
/// Credits one response grants at most.
pub const MAX_CREDITS_PER_RESPONSE: u16 = 512;

#[derive(Debug)]
pub struct Credits {
    /// Every id below this one has been used.
    low: u64,
    /// Ids at or above `low` that have been used.
    used: BTreeSet<u64>,
    /// The first id not granted yet.
    next: u64,
}

impl Default for Credits {
    fn default() -> Self {
        // Message id 0 (the first NEGOTIATE) is granted from the start.
        Credits { low: 0, used: BTreeSet::new(), next: 1 }
    }
}

impl Credits {
    /// Takes `charge` ids from `message_id` on (a charge of 0 counts as 1); false if any of
    /// them was not granted or was used before (the connection must end).
    pub fn consume(&mut self, message_id: u64, charge: u16) -> bool {
        let charge = u64::from(charge.max(1));
        let Some(end) = message_id.checked_add(charge) else { return false };
        if message_id < self.low || end > self.next || (message_id..end).any(|id| self.used.contains(&id)) {
            return false;
        }
        self.used.extend(message_id..end);
        while self.used.remove(&self.low) {
            self.low += 1;
        }
        true
    }

    /// Credits to grant for a response to a request asking for `requested`: at least one while
    /// the window has room; none once it is full. The client never runs dry: a full window
    /// holds at least one id granted and not used (the lowest).
    pub fn grant(&mut self, requested: u16) -> u16 {
        let room = MAX_OUTSTANDING_CREDITS.saturating_sub(self.next - self.low);
        let g = u64::from(requested.clamp(1, MAX_CREDITS_PER_RESPONSE)).min(room);
        self.next += g;
        g as u16
    }
}

/// Bytes one credit pays for (MS-SMB2 3.1.5.2).
pub const BYTES_PER_CREDIT: u64 = 65536;

/// MS-SMB2 3.3.5.2.5, for a multi-credit connection: whether a request's CreditCharge pays for
/// its payload or largest response. Checked for READ, WRITE, IOCTL, QUERY_DIRECTORY and
/// CHANGE_NOTIFY, whose charge clients compute (every other request is charged 1 whatever its
/// size). `body` is the
/// message after its header; a body too short to say passes here and fails in its handler.
pub fn charge_covers(command: Command, charge: u16, body: &[u8]) -> bool {
    let size = match command {
        Command::Read | Command::Write => u32_at(body, 4),
        Command::Ioctl => u32_at(body, 28).zip(u32_at(body, 44)).map(|(input, output)| input.max(output)),
        Command::QueryDirectory => u32_at(body, 28),
        Command::ChangeNotify => u32_at(body, 4),
        _ => None,
    };
    let Some(size) = size.map(u64::from) else { return true };
    if charge == 0 {
        return size <= BYTES_PER_CREDIT;
    }
    (size.max(1) - 1) / BYTES_PER_CREDIT < u64::from(charge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_pays_for_64_kib_each_and_only_sized_commands_are_checked() {
        let read = |len: u32| [vec![49, 0, 0, 0], len.to_le_bytes().to_vec(), vec![0; 41]].concat();
        assert!(charge_covers(Command::Read, 1, &read(65536)));
        assert!(!charge_covers(Command::Read, 1, &read(65537)));
        assert!(charge_covers(Command::Read, 2, &read(65537)));
        assert!(charge_covers(Command::Read, 0, &read(65536)), "0 counts as 1");
        assert!(!charge_covers(Command::Read, 0, &read(65537)));
        assert!(charge_covers(Command::Read, 1, &read(0)));
        let notify = |len: u32| [vec![32, 0, 0, 0], len.to_le_bytes().to_vec(), vec![0; 24]].concat();
        assert!(charge_covers(Command::ChangeNotify, 1, &notify(65536)));
        assert!(!charge_covers(Command::ChangeNotify, 1, &notify(8 << 20)), "a CHANGE_NOTIFY's output buffer is charged too");
        let mut ioctl = vec![0u8; 56];
        ioctl[44..48].copy_from_slice(&(200_000u32).to_le_bytes());
        assert!(!charge_covers(Command::Ioctl, 3, &ioctl) && charge_covers(Command::Ioctl, 4, &ioctl), "MaxOutputResponse counts");
        assert!(charge_covers(Command::QueryInfo, 1, &[0xff; 40]), "other commands are charged 1 whatever their size");
        assert!(charge_covers(Command::Write, 1, &[1]), "too short to say: the handler refuses it");
    }

    #[test]
    fn ids_must_be_granted_and_used_once() {
        let mut c = Credits::default();
        assert!(c.consume(0, 0), "the first NEGOTIATE");
        assert!(!c.consume(0, 1), "an id is used once");
        assert!(!c.consume(1, 1), "not granted yet");
        assert_eq!(c.grant(10), 10);
        assert!(c.consume(5, 4), "out of order, multi-credit");
        assert!(c.consume(1, 1));
        assert!(!c.consume(8, 1), "8 was part of 5..9");
        assert!(!c.consume(10, 2), "11 is beyond the grant");
        assert!(c.consume(2, 3));
        assert!(c.consume(9, 2));
        assert!(c.used.is_empty() && c.low == 11, "used ids below the window are forgotten");
    }

    #[test]
    fn grants_are_bounded_but_never_zero() {
        let mut c = Credits::default();
        let mut total = 0u64;
        for _ in 0..100 {
            total += u64::from(c.grant(u16::MAX));
        }
        assert!(total <= MAX_OUTSTANDING_CREDITS);
        assert!(c.consume(0, 1) && c.consume(1, 1));
        assert_eq!(c.grant(0), 1, "used ids make room again");
    }

    /// A client that leaves one granted id unused and uses every later one gets no more ids
    /// once the window is full: what the server remembers stays bounded, and the client still
    /// holds the id it left.
    #[test]
    fn an_id_left_unused_forever_stops_the_window_not_the_memory() {
        let mut c = Credits::default();
        assert!(c.consume(0, 1));
        let mut id = 2; // id 1 is never used
        for _ in 0..10 * MAX_OUTSTANDING_CREDITS {
            if c.grant(512) == 0 && id >= c.next {
                break;
            }
            while id < c.next {
                assert!(c.consume(id, 1));
                id += 1;
            }
        }
        assert_eq!(c.low, 1);
        assert!(c.next - c.low <= MAX_OUTSTANDING_CREDITS && c.used.len() as u64 <= MAX_OUTSTANDING_CREDITS);
        assert_eq!(c.grant(512), 0, "the window is full");
        assert!(c.consume(1, 1), "the id left unused is still the client's");
        assert!(c.used.is_empty() && c.grant(512) > 0, "and using it opens the window");
    }
}
