//! Byte-range locks across nodes: impacket clients (tests/clients/driven.py) on different
//! nodes' gateways lock one file on a volume a third node owns, and see each other's locks as
//! on one Windows server: LOCK conflicts, READs and WRITEs refused under another open's lock,
//! a lock that waits until its range is free, and locks that go with their open.

mod common;

use std::time::{Duration, Instant};

use common::wire::*;
use common::*;

// LOCK element flags.
const SHARED: u32 = 0x1;
const EXCLUSIVE: u32 = 0x2;
const UNLOCK: u32 = 0x4;
const FI: u32 = 0x10;

const LOCK_NOT_GRANTED: &str = "ERR 0xc0000055";
const FILE_LOCK_CONFLICT: &str = "ERR 0xc0000054";
const RANGE_NOT_LOCKED: &str = "ERR 0xc000007e";
const INVALID_PARAMETER: &str = "ERR 0xc000000d";
const INVALID_LOCK_RANGE: &str = "ERR 0xc00001a1";

fn lock(c: &mut DrivenClient, handle: &str, elements: &[(u64, u64, u32)]) -> String {
    let list: Vec<String> = elements.iter().map(|(o, l, f)| format!("{o} {l} {f:#x}")).collect();
    c.cmd(&format!("lock {handle} {}", list.join(" ")))
}

/// Two clients through nodes 1 and 3 with the same file open for reading and writing.
fn two_clients(c: &Cluster) -> (DrivenClient, DrivenClient) {
    let mut a = DrivenClient::connect(&c.node(1).smb);
    let mut b = DrivenClient::connect(&c.node(3).smb);
    assert_eq!(a.open("f", "locked.bin", READ | WRITE, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(a.cmd("pwrite f 0 0x41 100"), "OK");
    assert_eq!(b.open("f", "locked.bin", READ | WRITE, SHARE_ALL, OPEN), "OK");
    (a, b)
}

#[test]
fn locks_through_two_nodes_conflict_and_guard_reads_and_writes_as_on_one_windows_server() {
    let c = data_cluster(); // the volume lives on node 2
    let (mut a, mut b) = two_clients(&c);
    assert_eq!(lock(&mut a, "f", &[(0, 10, EXCLUSIVE | FI)]), "OK");
    assert!(lock(&mut b, "f", &[(5, 10, SHARED | FI)]).starts_with(LOCK_NOT_GRANTED));
    assert!(b.cmd("read f 0 10").starts_with(FILE_LOCK_CONFLICT), "B may not read under A's exclusive lock");
    assert!(b.cmd("pwrite f 5 0x42 1").starts_with(FILE_LOCK_CONFLICT));
    assert_eq!(b.cmd("read f 10 10"), format!("OK 10 10 {}", "41".repeat(10)), "past the lock");
    assert_eq!(a.cmd("pwrite f 0 0x43 1"), "OK", "A writes under its own exclusive lock");
    // Through the owner's own gateway (the in-process path) the same holds.
    let mut owner = DrivenClient::connect(&c.node(2).smb);
    assert_eq!(owner.open("f", "locked.bin", READ, SHARE_ALL, OPEN), "OK");
    assert!(owner.cmd("read f 9 1").starts_with(FILE_LOCK_CONFLICT));
    assert!(lock(&mut owner, "f", &[(9, 1, SHARED | FI)]).starts_with(LOCK_NOT_GRANTED));

    // Stacking on one's own locks: exclusive over exclusive no, shared over exclusive yes; an
    // unlock takes the exclusive one first, and a shared lock blocks every write, its own too.
    assert!(lock(&mut a, "f", &[(2, 4, EXCLUSIVE | FI)]).starts_with(LOCK_NOT_GRANTED));
    assert_eq!(lock(&mut a, "f", &[(0, 10, SHARED | FI)]), "OK");
    assert_eq!(lock(&mut a, "f", &[(0, 10, UNLOCK)]), "OK");
    assert_eq!(b.cmd("read f 0 10"), format!("OK 10 10 43{}", "41".repeat(9)), "a shared lock lets others read");
    assert!(b.cmd("pwrite f 5 0x42 1").starts_with(FILE_LOCK_CONFLICT));
    assert!(a.cmd("pwrite f 5 0x42 1").starts_with(FILE_LOCK_CONFLICT), "the holder's own write too");
    assert_eq!(lock(&mut a, "f", &[(0, 10, UNLOCK)]), "OK");
    assert!(lock(&mut a, "f", &[(0, 10, UNLOCK)]).starts_with(RANGE_NOT_LOCKED));
    assert_eq!(b.cmd("pwrite f 5 0x42 1"), "OK", "nothing locked now");

    // A request is all or none: A's first lock is let go when its second is refused.
    assert_eq!(lock(&mut b, "f", &[(2, 1, SHARED | FI)]), "OK");
    assert!(lock(&mut a, "f", &[(20, 5, EXCLUSIVE | FI), (0, 5, EXCLUSIVE | FI)]).starts_with(LOCK_NOT_GRANTED));
    assert_eq!(lock(&mut b, "f", &[(20, 5, EXCLUSIVE | FI)]), "OK");

    // Malformed requests change nothing.
    assert!(lock(&mut a, "f", &[(30, 1, 0)]).starts_with(INVALID_PARAMETER), "no flags");
    assert!(lock(&mut a, "f", &[(30, 1, SHARED | FI), (40, 1, SHARED)]).starts_with(INVALID_PARAMETER), "a second lock that would wait");
    assert!(lock(&mut a, "f", &[(u64::MAX, 2, EXCLUSIVE | FI)]).starts_with(INVALID_LOCK_RANGE));
    assert_eq!(lock(&mut a, "f", &[(u64::MAX, 1, EXCLUSIVE | FI)]), "OK", "the last byte there is");
    assert_eq!(lock(&mut b, "f", &[(30, 1, EXCLUSIVE | FI)]), "OK", "nothing was taken at 30");

    // An append is checked where the file ends (a lock past the end, then appends: the usual
    // pattern), and a zeroing is a write to its range.
    assert_eq!(lock(&mut a, "f", &[(100, 10, EXCLUSIVE | FI)]), "OK");
    assert!(b.cmd(&format!("pwrite f {} 0x45 5", u64::MAX)).starts_with(FILE_LOCK_CONFLICT), "B's append lands in A's lock");
    assert_eq!(a.cmd(&format!("pwrite f {} 0x45 5", u64::MAX)), "OK", "A's own append does not");
    assert_eq!(lock(&mut a, "f", &[(40, 10, EXCLUSIVE | FI)]), "OK");
    let zero = |from: u64, to: u64| format!("fsctl f {SET_ZERO_DATA:#x} {}{} 0", hex(&from.to_le_bytes()), hex(&to.to_le_bytes()));
    assert!(b.cmd(&zero(35, 45)).starts_with(FILE_LOCK_CONFLICT));
    assert_eq!(a.cmd("read f 40 10"), format!("OK 10 10 {}", "41".repeat(10)), "nothing zeroed");
    assert_eq!(b.cmd(&zero(50, 60)), "OK -");
}

#[test]
fn a_lock_that_waits_is_granted_when_the_range_is_let_go_and_locks_go_with_their_open() {
    let c = data_cluster();
    let (mut a, mut b) = two_clients(&c);
    assert_eq!(lock(&mut b, "f", &[(20, 5, EXCLUSIVE | FI)]), "OK");
    // Without FAIL_IMMEDIATELY A's LOCK goes async (STATUS_PENDING) and waits.
    a.send(&format!("lock f 20 5 {EXCLUSIVE:#x}"));
    std::thread::sleep(Duration::from_millis(600));
    let unlocked = Instant::now();
    assert_eq!(lock(&mut b, "f", &[(20, 5, UNLOCK)]), "OK");
    assert_eq!(a.line(), "OK", "granted once B let go");
    assert!(unlocked.elapsed() < Duration::from_secs(5), "{:?}", unlocked.elapsed());
    assert!(lock(&mut b, "f", &[(22, 1, SHARED | FI)]).starts_with(LOCK_NOT_GRANTED), "A holds it now");

    // CLOSE lets go of an open's locks.
    assert_eq!(a.cmd("close f"), "OK");
    assert_eq!(lock(&mut b, "f", &[(22, 1, SHARED | FI)]), "OK");
    // So does the end of a client's connection (killed: no CLOSE, no LOGOFF).
    assert_eq!(lock(&mut b, "f", &[(60, 10, EXCLUSIVE | FI)]), "OK");
    b.kill();
    assert_eq!(a.open("g", "locked.bin", READ | WRITE, SHARE_ALL, OPEN), "OK");
    wait_for(Duration::from_secs(5), "the killed client's locks to go", || (lock(&mut a, "g", &[(60, 10, EXCLUSIVE | FI)]) == "OK").then_some(()));
    assert_eq!(a.cmd("pwrite g 60 0x44 10"), "OK");
}

/// A waiting lock is asked for again as soon as locks are let go through any node, not at its
/// periodic retry: with that retry set to a minute, a lock waiting through one node is granted
/// within seconds of an unlock through another, of the CLOSE of the open holding the range,
/// and of the end of the holder's connection.
#[test]
fn a_waiting_lock_hears_of_a_release_through_any_node_before_its_next_retry() {
    let c = data_cluster_with("[smb]\nlock_retry_ms = 60000\n");
    let (mut a, mut b) = two_clients(&c); // through nodes 1 and 3
    let soon = Duration::from_secs(5);
    // An unlock through node 3 wakes a lock waiting through node 1.
    assert_eq!(lock(&mut b, "f", &[(20, 5, EXCLUSIVE | FI)]), "OK");
    a.send(&format!("lock f 20 5 {EXCLUSIVE:#x}"));
    std::thread::sleep(Duration::from_millis(600)); // A's LOCK is pending by now
    let released = Instant::now();
    assert_eq!(lock(&mut b, "f", &[(20, 5, UNLOCK)]), "OK");
    assert_eq!(a.line(), "OK", "granted once B let go");
    assert!(released.elapsed() < soon, "granted {:?} after the unlock", released.elapsed());
    // A CLOSE through node 1 wakes a lock waiting through node 3.
    assert_eq!(lock(&mut a, "f", &[(30, 5, EXCLUSIVE | FI)]), "OK");
    b.send(&format!("lock f 30 5 {EXCLUSIVE:#x}"));
    std::thread::sleep(Duration::from_millis(600));
    let released = Instant::now();
    assert_eq!(a.cmd("close f"), "OK");
    assert_eq!(b.line(), "OK", "granted once A closed");
    assert!(released.elapsed() < soon, "granted {:?} after the close", released.elapsed());
    // The end of B's connection (killed: no CLOSE) wakes a lock waiting through node 1.
    assert_eq!(a.open("g", "locked.bin", READ | WRITE, SHARE_ALL, OPEN), "OK");
    a.send(&format!("lock g 30 5 {SHARED:#x}"));
    std::thread::sleep(Duration::from_millis(600));
    let released = Instant::now();
    b.kill();
    assert_eq!(a.line(), "OK", "granted once B's connection ended");
    assert!(released.elapsed() < soon, "granted {:?} after B went", released.elapsed());
}

/// Locks the owner lets go by itself wake waiting locks too: a client holding a range through
/// node 3 loses it when node 3 dies and its gateway's lease runs out at the owner (node 2),
/// and the lock waiting through node 1 is granted then, not at its next retry a minute later.
#[test]
fn a_waiting_lock_is_granted_when_a_dead_gateways_lease_runs_out() {
    let mut c = data_cluster_with("[smb]\nlock_retry_ms = 60000\n");
    let (mut a, mut b) = two_clients(&c); // through nodes 1 and 3
    assert_eq!(lock(&mut b, "f", &[(20, 5, EXCLUSIVE | FI)]), "OK");
    a.send(&format!("lock f 20 5 {EXCLUSIVE:#x}"));
    std::thread::sleep(Duration::from_millis(600)); // A's LOCK is pending, its first retry done
    let killed = Instant::now();
    c.kill9(3);
    assert_eq!(a.line(), "OK", "granted once node 3's lease ran out");
    // The lease is 15 s: the grant comes after it, and well before a retry a minute on.
    let waited = killed.elapsed();
    assert!(waited < Duration::from_secs(40), "granted {waited:?} after node 3 died");
    drop(b);
}

/// An owner that restarts gets each gateway's opens back with their locks at the gateway's next
/// renewal, and a lock asked before every gateway has renewed waits out the owner's grace
/// period rather than being granted in the gap. Node 1's gateway (A's, holding a lock) is
/// paused while the owner (node 2) restarts, so node 3's renewal comes first; B asks through
/// node 3 for A's range right after it, and is refused once node 1 goes on and renews.
#[test]
fn a_lock_asked_right_after_the_owner_restarts_still_meets_the_locks_held_before() {
    // A grace period long enough for the steps below on a busy machine.
    const GRACE: Duration = Duration::from_secs(30);
    let mut c = data_cluster_with(&format!("[volumes]\nowner_grace_ms = {}\n", GRACE.as_millis())); // the volume lives on node 2
    let (mut a, mut b) = two_clients(&c); // through nodes 1 and 3
    assert_eq!(lock(&mut a, "f", &[(0, 10, EXCLUSIVE | FI)]), "OK");
    c.pause(1, true);
    c.kill9(2);
    let started = Instant::now();
    c.start_node(2);
    c.wait_up(2);
    wait_for(Duration::from_secs(20), "node 3's gateway to renew with the new owner", || c.log(2).contains("reinstated a gateway's opens").then_some(()));
    assert!(!c.log(2).lines().any(|l| l.contains("reinstated a gateway's opens") && l.contains("node=1")), "node 1's gateway is paused");
    let asked = started.elapsed();
    b.send(&format!("lock f 0 10 {:#x}", EXCLUSIVE | FI));
    // Node 1 goes on a second later (B's lock has long reached the owner), or earlier if the
    // owner's grace period would otherwise end before node 1's renewal (one renewal interval,
    // as its first may fail on its connection to the old owner, and a margin).
    let resume = (started + GRACE - Duration::from_secs(8)).min(Instant::now() + Duration::from_secs(1));
    std::thread::sleep(resume.saturating_duration_since(Instant::now()));
    c.pause(1, false);
    assert!(b.line().starts_with(LOCK_NOT_GRANTED), "A's lock was back before B's was checked (B asked {asked:?} after the owner started)");
    assert!(started.elapsed() >= GRACE, "B's lock waited out the grace period ({:?})", started.elapsed());
    assert!(c.log(2).lines().any(|l| l.contains("reinstated a gateway's opens") && l.contains("node=1")), "node 1's renewal brought A's lock back");
    assert!(b.cmd("read f 0 10").starts_with(FILE_LOCK_CONFLICT), "and it guards A's range");
    assert_eq!(lock(&mut a, "f", &[(0, 10, UNLOCK)]), "OK");
    assert_eq!(lock(&mut b, "f", &[(0, 10, EXCLUSIVE | FI)]), "OK");
}
