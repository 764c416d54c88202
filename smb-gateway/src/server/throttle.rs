//! Failed-logon throttling: after [`MAX_FAILURES`] failures for one user name within
//! [`FAILURE_WINDOW_TICKS`], further logons for that name are refused for
//! [`LOCKOUT_TICKS`] whatever the password, which makes guessing slow. Times are FILETIME
//! ticks from the caller; the table is bounded in entries and in bytes: a name longer than any
//! user's ([`MAX_USER_NAME_CHARS`], three times that lower-cased) is not tracked (no such user can log on), and when the
//! table is full a locked name is the last to go, so a flood of other names cannot lift a
//! lockout.
//!
//! One server's throttle counts its own failures and those other servers of the cluster tell
//! it of ([`Throttle::failed_elsewhere`]); the names of its own failures wait, bounded, for the
//! node to pass them on ([`Throttle::take_to_relay`]), so guesses spread over the cluster's
//! nodes count as on one server.

use std::collections::HashMap;

use umbra_raft::names::MAX_USER_NAME_CHARS;

pub const MAX_FAILURES: u32 = 5;
/// 60 s in FILETIME ticks (100 ns).
pub const FAILURE_WINDOW_TICKS: u64 = 60 * 10_000_000;
/// 30 s in FILETIME ticks.
pub const LOCKOUT_TICKS: u64 = 30 * 10_000_000;
/// User names tracked at once; the stalest entry goes first.
pub const MAX_TRACKED_NAMES: usize = 10_000;
/// Failed names waiting to be passed on to the other nodes; past this, the oldest go.
pub const MAX_NAMES_TO_RELAY: usize = 1024;

#[derive(Clone, Copy)]
struct Record {
    failures: u32,
    since: u64,
    locked_until: u64,
}

#[derive(Default)]
pub struct Throttle {
    names: HashMap<String, Record>,
    /// This server's failures, lower-cased, for the other nodes.
    to_relay: std::collections::VecDeque<String>,
}

impl Throttle {
    pub fn allowed(&self, user: &str, now: u64) -> bool {
        self.names.get(&user.to_lowercase()).is_none_or(|r| now >= r.locked_until)
    }

    /// A failed logon here: counted, and kept to pass on to the other nodes.
    pub fn failed(&mut self, user: &str, now: u64) {
        if self.count(user, now) {
            if self.to_relay.len() >= MAX_NAMES_TO_RELAY {
                self.to_relay.pop_front();
            }
            self.to_relay.push_back(user.to_lowercase());
        }
    }

    /// A failed logon another node of the cluster told of: counted as one here.
    pub fn failed_elsewhere(&mut self, user: &str, now: u64) {
        self.count(user, now);
    }

    /// The names of this server's failures since the last call, to pass on.
    pub fn take_to_relay(&mut self) -> Vec<String> {
        self.to_relay.drain(..).collect()
    }

    /// Counts a failure; false for a name too long to be any user's (not tracked).
    fn count(&mut self, user: &str, now: u64) -> bool {
        // Bounded on the lower-cased name, as it is kept and as users are looked up: one
        // character may lower-case to up to three (İ to i and a combining dot), so a spelling
        // longer than any user's name may still name one, and must still count.
        if user.to_lowercase().chars().count() > MAX_USER_NAME_CHARS * 3 {
            return false;
        }
        if self.names.len() >= MAX_TRACKED_NAMES && !self.names.contains_key(&user.to_lowercase()) {
            // The stalest name not locked now; only if all are, the stalest.
            if let Some(stalest) = self.names.iter().min_by_key(|(_, r)| (now < r.locked_until, r.since)).map(|(k, _)| k.clone()) {
                self.names.remove(&stalest);
            }
        }
        let r = self.names.entry(user.to_lowercase()).or_insert(Record { failures: 0, since: now, locked_until: 0 });
        if now.saturating_sub(r.since) > FAILURE_WINDOW_TICKS {
            *r = Record { failures: 0, since: now, locked_until: 0 };
        }
        r.failures += 1;
        if r.failures >= MAX_FAILURES {
            r.locked_until = now + LOCKOUT_TICKS;
        }
        true
    }

    pub fn succeeded(&mut self, user: &str) {
        self.names.remove(&user.to_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_here_wait_to_be_passed_on_and_failures_elsewhere_count_without_being_passed_on() {
        let mut t = Throttle::default();
        t.failed("Bob", 10);
        t.failed_elsewhere("bob", 11);
        assert_eq!(t.take_to_relay(), vec!["bob".to_string()], "only this server's own failure");
        assert!(t.take_to_relay().is_empty());
        for i in 0..MAX_FAILURES - 2 {
            t.failed_elsewhere("BOB", 12 + u64::from(i));
        }
        assert!(!t.allowed("bob", 20), "failures here and elsewhere count together");
        for i in 0..MAX_NAMES_TO_RELAY + 5 {
            t.failed(&format!("u{i}"), 30);
        }
        let relayed = t.take_to_relay();
        assert_eq!((relayed.len(), relayed[0].as_str()), (MAX_NAMES_TO_RELAY, "u5"), "bounded: the oldest went");
        t.failed(&"x".repeat(MAX_USER_NAME_CHARS * 3 + 1), 40);
        assert!(t.take_to_relay().is_empty(), "a name no user has is not passed on");
    }

    #[test]
    fn five_failures_lock_a_name_for_a_while_and_success_clears_it() {
        let mut t = Throttle::default();
        for i in 0..MAX_FAILURES - 1 {
            t.failed("Bob", i as u64);
            assert!(t.allowed("bob", i as u64));
        }
        t.failed("BOB", 10);
        assert!(!t.allowed("bob", 11));
        assert!(t.allowed("alice", 11), "other names are unaffected");
        assert!(t.allowed("bob", 10 + LOCKOUT_TICKS));
        t.failed("carol", 0);
        t.succeeded("Carol");
        assert!(t.names.is_empty() || !t.names.contains_key("carol"));
        let mut old = Throttle::default();
        for _ in 0..3 {
            old.failed("dave", 0);
        }
        for _ in 0..3 {
            old.failed("dave", FAILURE_WINDOW_TICKS + 1);
        }
        assert!(old.allowed("dave", FAILURE_WINDOW_TICKS + 2), "failures outside the window do not add up");
    }

    /// A flood of failures for other names neither grows the table past its bound nor lifts
    /// a lockout; names no user can have are not tracked at all.
    #[test]
    fn a_flood_of_names_is_bounded_and_cannot_lift_a_lockout() {
        let mut t = Throttle::default();
        for i in 0..MAX_FAILURES {
            t.failed("bob", u64::from(i));
        }
        for i in 0..2 * MAX_TRACKED_NAMES as u64 {
            t.failed(&format!("n{i}"), 10 + i);
        }
        assert_eq!(t.names.len(), MAX_TRACKED_NAMES);
        assert!(!t.allowed("bob", 20), "still locked");
        let long = "x".repeat(3 * MAX_USER_NAME_CHARS + 1);
        t.failed(&long, 20);
        assert!(!t.names.contains_key(&long), "a name longer than any user's (in any spelling) is not kept");
    }

    /// A spelling longer than a user's name may still name the user (İ lower-cases to two
    /// characters): its failures count, under the name's lower-cased form.
    #[test]
    fn a_long_spelling_of_a_users_name_is_still_throttled() {
        let mut t = Throttle::default();
        let spelled = "i\u{307}".repeat(MAX_USER_NAME_CHARS / 2 + 1);
        assert!(spelled.chars().count() > MAX_USER_NAME_CHARS);
        for i in 0..MAX_FAILURES {
            t.failed(&spelled, u64::from(i));
        }
        assert!(!t.allowed(&spelled, 10));
        assert!(!t.allowed(&"İ".repeat(MAX_USER_NAME_CHARS / 2 + 1), 10), "nor in the spelling that lower-cases to it");
    }
}
