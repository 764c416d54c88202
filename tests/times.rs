//! File times through a handle, as Windows and Samba keep them (MS-FSA 2.1.5.15.2): a client
//! that sets a file's last-write or change time through a handle, or freezes it with -1, keeps
//! it through that handle's later writes until -2 lets it move again; other handles' writes
//! move it as before. Through another node's gateway and the owner's own.

mod common;

use common::wire::*;
use common::*;

/// A FILETIME in 2009, before anything this test writes.
const SET: u64 = 129_000_000_000_000_000;

fn times(c: &mut DrivenClient, handle: &str) -> (u64, u64) {
    let answer = c.cmd(&format!("times {handle}"));
    let words: Vec<u64> = answer.strip_prefix("OK ").unwrap_or_else(|| panic!("{answer}")).split(' ').map(|w| w.parse().unwrap()).collect();
    (words[0], words[1])
}

#[test]
fn a_time_set_or_frozen_through_a_handle_stays_through_its_writes_until_it_is_let_move() {
    let c = data_cluster(); // the volume lives on node 2
    let mut a = DrivenClient::connect(&c.node(1).smb);
    assert_eq!(a.open("t", "t.bin", READ | WRITE | WRITE_ATTRIBUTES, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(a.cmd("pwrite t 0 0x41 10"), "OK");
    let (_, changed) = times(&mut a, "t");
    // An explicit last-write time stays through this handle's writes; the change time moves.
    assert_eq!(a.cmd(&format!("settimes t {SET} 0")), "OK");
    assert_eq!(a.cmd("pwrite t 10 0x42 10"), "OK");
    let (written, changed_after) = times(&mut a, "t");
    assert_eq!(written, SET, "set through this handle: its writes leave it");
    assert!(changed_after > changed, "the change time still moves: {changed_after} after {changed}");
    // -2 lets the last-write time move again; -1 freezes the change time as it is.
    assert_eq!(a.cmd("settimes t -2 -1"), "OK");
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(a.cmd("pwrite t 20 0x43 10"), "OK");
    let (written, changed_frozen) = times(&mut a, "t");
    assert!(written > SET, "moves again after -2");
    assert_eq!(changed_frozen, changed_after, "frozen by -1");
    // Another handle (through the owner's own gateway) keeps nothing: its writes move both.
    let mut b = DrivenClient::connect(&c.node(2).smb);
    assert_eq!(b.open("t", "t.bin", READ | WRITE, SHARE_ALL, OPEN), "OK");
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(b.cmd("pwrite t 0 0x44 5"), "OK");
    let (written_b, changed_b) = times(&mut b, "t");
    assert!(written_b > written && changed_b > changed_frozen, "another handle's write moves both");
    assert_eq!(a.cmd(&format!("settimes t 0 {SET}")), "OK");
    assert_eq!(a.cmd("pwrite t 30 0x45 10"), "OK");
    assert_eq!(times(&mut b, "t").1, SET, "a's change time, set through a, stays through a's write");
    // So does zeroing through a (FSCTL_SET_ZERO_DATA of bytes 0..5).
    let zero = format!("fsctl t {SET_ZERO_DATA} {}{} 0", hex(&0u64.to_le_bytes()), hex(&5u64.to_le_bytes()));
    assert_eq!(a.cmd(&zero), "OK -");
    assert_eq!(a.cmd("read t 0 5"), "OK 5 0 0000000000", "zeroed");
    assert_eq!(times(&mut b, "t").1, SET, "and through a's zeroing");
    // The owner's own gateway (the store called in process) keeps them the same way.
    assert_eq!(b.open("u", "t.bin", READ | WRITE | WRITE_ATTRIBUTES, SHARE_ALL, OPEN), "OK");
    assert_eq!(b.cmd(&format!("settimes u {} 0", SET + 1)), "OK");
    assert_eq!(b.cmd("pwrite u 40 0x46 10"), "OK");
    assert_eq!(times(&mut b, "u").0, SET + 1, "set through the owner's gateway: its writes leave it");
}
