//! Server-side copy as Windows Explorer and robocopy do it: FSCTL_SRV_REQUEST_RESUME_KEY on the
//! source, FSCTL_SRV_COPYCHUNK_WRITE on the target, sent by impacket clients
//! (tests/clients/driven.py) through a gateway on another node than the volume's owner.

mod common;

use common::wire::*;
use common::*;

const MIB: u64 = 1 << 20;

/// The source's resume key (24 bytes, in hex).
fn resume_key(c: &mut DrivenClient, handle: &str) -> String {
    let out = c.cmd(&format!("fsctl {handle} {REQUEST_RESUME_KEY:#x} - 32"));
    let hex = out.strip_prefix("OK ").unwrap_or_else(|| panic!("a resume key: {out}"));
    assert_eq!(hex.len(), 2 * 32, "the key, ContextLength 0 and 4 bytes of Context: {hex}");
    assert!(hex.ends_with(&"00".repeat(8)));
    hex[..48].to_string()
}

/// SRV_COPYCHUNK_COPY with these (source offset, target offset, length) chunks.
fn copy(key: &str, chunks: &[(u64, u64, u32)]) -> String {
    let mut input = format!("{key}{}{}", hex(&(chunks.len() as u32).to_le_bytes()), hex(&[0; 4]));
    for &(from, to, len) in chunks {
        input += &format!("{}{}{}{}", hex(&from.to_le_bytes()), hex(&to.to_le_bytes()), hex(&len.to_le_bytes()), hex(&[0; 4]));
    }
    format!("fsctl d {COPYCHUNK_WRITE:#x} {input} 12")
}

/// SRV_COPYCHUNK_RESPONSE.
fn written(chunks: u32, chunk_bytes: u32, total: u32) -> String {
    format!("OK {}{}{}", hex(&chunks.to_le_bytes()), hex(&chunk_bytes.to_le_bytes()), hex(&total.to_le_bytes()))
}

#[test]
fn a_server_side_copy_through_another_node_copies_every_chunk_and_refuses_what_it_must() {
    let c = data_cluster(); // the volume lives on node 2
    let mut a = DrivenClient::connect(&c.node(1).smb);
    assert_eq!(a.open("s", "source.vhdx", READ | WRITE, SHARE_ALL, OVERWRITE_IF), "OK");
    for (i, byte) in [0x41u8, 0x42, 0x43].iter().enumerate() {
        assert_eq!(a.cmd(&format!("pwrite s {} {byte:#x} {}", i as u64 * MIB, MIB)), "OK");
    }
    assert_eq!(a.cmd(&format!("pwrite s {} 0x44 100", 3 * MIB)), "OK");
    let key = resume_key(&mut a, "s");
    assert_eq!(resume_key(&mut a, "s"), key, "one key per open");
    assert_eq!(a.open("d", "copy.vhdx", READ | WRITE, SHARE_ALL, OVERWRITE_IF), "OK");
    // Three whole MiB in order, the tail, and the first MiB again further on.
    let chunks = [(0, 0, MIB as u32), (MIB, MIB, MIB as u32), (2 * MIB, 2 * MIB, MIB as u32), (3 * MIB, 3 * MIB, 100), (0, 4 * MIB, 10)];
    assert_eq!(a.cmd(&copy(&key, &chunks)), written(5, 0, 3 * MIB as u32 + 110));
    assert_eq!(a.cmd("info d"), format!("OK {} {} 0x20", 4 * MIB + 10, 3 * MIB + 2 * 64 * 1024), "48 chunks, the tail's and the last's");
    for (at, byte) in [(0, "41"), (MIB + 7, "42"), (3 * MIB - 1, "43"), (3 * MIB + 99, "44"), (4 * MIB + 9, "41")] {
        assert_eq!(a.cmd(&format!("read d {at} 1")), format!("OK 1 1 {byte}"), "byte {at}");
    }
    assert_eq!(a.cmd(&format!("read d {} 100", 3 * MIB + 100)), format!("OK 100 0 {}", "00".repeat(64)), "the hole between");

    // A chunk past the source's end stops the copy there (as on Windows), saying how far it got.
    assert!(a.cmd(&copy(&key, &[(0, 0, 10), (3 * MIB + 50, 0, 100)])).starts_with("ERR 0xc0000319"));
    // A negative offset.
    assert!(a.cmd(&copy(&key, &[(1 << 63, 0, 10)])).starts_with("ERR 0xc000000d"));
    // Past the limits: 257 chunks, a chunk over 1 MiB, more than 16 MiB, a chunk of nothing.
    for bad in [vec![(0, 0, 1); 257], vec![(0, 0, MIB as u32 + 1)], vec![(0, 0, MIB as u32); 17], vec![(0, 0, 0)]] {
        assert!(a.cmd(&copy(&key, &bad)).starts_with("ERR 0xc000000d"), "{} chunks", bad.len());
    }
    // A key from another connection, or made up, names nothing.
    let mut b = DrivenClient::connect(&c.node(3).smb);
    assert_eq!(b.open("d", "copy.vhdx", READ | WRITE, SHARE_ALL, OVERWRITE_IF), "OK");
    assert!(b.cmd(&copy(&key, &[(0, 0, 10)])).starts_with("ERR 0xc0000034"));
    assert!(a.cmd(&copy(&"00".repeat(24), &[(0, 0, 10)])).starts_with("ERR 0xc0000034"));
    // The target must be open for writing.
    assert_eq!(a.open("r", "copy.vhdx", READ, SHARE_ALL, 1), "OK");
    assert!(a.cmd(&copy(&key, &[(0, 0, 10)]).replace("fsctl d ", "fsctl r ")).starts_with("ERR 0xc0000022"));
}
