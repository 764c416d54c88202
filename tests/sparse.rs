//! Sparse files over SMB, as backup software and Hyper-V use them: FSCTL_SET_SPARSE,
//! FSCTL_QUERY_ALLOCATED_RANGES, FSCTL_SET_ZERO_DATA and FSCTL_FILE_LEVEL_TRIM sent by impacket
//! clients (tests/clients/driven.py) through a gateway on another node than the volume's
//! owner and through the owner's own, against a 3-node cluster of real `umbra` processes.

mod common;

use common::wire::*;
use common::*;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 64 * 1024;

/// Two little-endian 64-bit numbers in hex: a FILE_ALLOCATED_RANGE_BUFFER or a
/// FILE_ZERO_DATA_INFORMATION.
fn pair(a: u64, b: u64) -> String {
    format!("{}{}", hex(&a.to_le_bytes()), hex(&b.to_le_bytes()))
}

/// The answer to a QUERY_ALLOCATED_RANGES that found `ranges`.
fn ranges(ranges: &[(u64, u64)]) -> String {
    let body: String = ranges.iter().map(|&(o, l)| pair(o, l)).collect();
    format!("OK {}", if body.is_empty() { "-".to_string() } else { body })
}

fn qar(c: &mut DrivenClient, handle: &str, offset: u64, len: u64, max_out: u32) -> String {
    c.cmd(&format!("fsctl {handle} {QUERY_ALLOCATED_RANGES:#x} {} {max_out}", pair(offset, len)))
}

/// [`data_cluster`] with a read-only share `frozen` of the same volume.
fn cluster() -> Cluster {
    let c = data_cluster();
    assert!(c.ctl(1, &["share", "create", "Frozen", "--volume", "vol", "--read-only"]).ok);
    c
}

#[test]
fn sparse_files_report_their_holes_and_zeroing_frees_them_through_any_node() {
    let c = cluster();
    let mut a = DrivenClient::connect(&c.node(1).smb); // another node than the owner
    let mut owner = DrivenClient::connect(&c.node(2).smb);
    assert_eq!(a.open("f", "disk.vhdx", READ | WRITE | WRITE_ATTRIBUTES, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(a.cmd(&format!("pwrite f 0 0x41 {}", 3 * MIB)), "OK");
    assert_eq!(a.cmd(&format!("pwrite f {} 0x42 1", 60 * MIB)), "OK");
    let size = 60 * MIB + 1;
    assert_eq!(a.cmd("info f"), format!("OK {size} {} 0x20", 3 * MIB + CHUNK), "48 chunks and one hold data");

    // Not sparse yet: the range asked, cut at the size, whole.
    assert_eq!(qar(&mut a, "f", 0, 128 * MIB, 1024), ranges(&[(0, size)]));
    assert_eq!(qar(&mut a, "f", size, 10, 1024), ranges(&[]), "past the end: nothing");
    assert_eq!(qar(&mut a, "f", 0, 0, 1024), ranges(&[]), "length 0: nothing");

    // Sparse: the holes show, through either gateway.
    assert_eq!(a.cmd(&format!("fsctl f {SET_SPARSE:#x} - 0")), "OK -", "no buffer: sparse");
    assert_eq!(a.cmd("info f"), format!("OK {size} {} 0x220", 3 * MIB + CHUNK));
    assert_eq!(qar(&mut a, "f", 0, 128 * MIB, 1024), ranges(&[(0, 3 * MIB), (60 * MIB, 1)]));
    assert_eq!(owner.open("o", "disk.vhdx", READ, SHARE_ALL, OPEN), "OK");
    assert_eq!(qar(&mut owner, "o", MIB, 100 * MIB, 1024), ranges(&[(MIB, 2 * MIB), (60 * MIB, 1)]), "cut to the range asked");

    // Zero data: whole chunks become holes, the ends are zeroed, the size stays.
    assert_eq!(a.cmd(&format!("fsctl f {SET_ZERO_DATA:#x} {} 0", pair(100, 2 * MIB + 100))), "OK -");
    assert_eq!(a.cmd("read f 0 200"), format!("OK 200 100 {}", "41".repeat(64)));
    assert_eq!(a.cmd(&format!("read f {} {}", 2 * MIB, CHUNK)), format!("OK {CHUNK} {} {}", CHUNK - 100, "00".repeat(64)));
    assert_eq!(owner.cmd(&format!("read o {} {}", MIB, MIB)), format!("OK {MIB} 0 {}", "00".repeat(64)), "the owner's gateway reads the zeros");
    assert_eq!(qar(&mut owner, "o", 0, 128 * MIB, 1024), ranges(&[(0, CHUNK), (2 * MIB, MIB), (60 * MIB, 1)]));
    assert_eq!(a.cmd("info f"), format!("OK {size} {} 0x220", MIB + 2 * CHUNK), "31 chunks freed");
    assert_eq!(a.cmd(&format!("fsctl f {SET_ZERO_DATA:#x} {} 0", pair(size - 1, 100 * MIB))), "OK -", "past the end");
    assert_eq!(a.cmd("info f"), format!("OK {size} {} 0x220", MIB + CHUNK), "not extended; the last chunk freed");

    // An output buffer for one range of three: the first, and BUFFER_OVERFLOW; none at all.
    assert!(qar(&mut a, "f", 0, 128 * MIB, 16).starts_with("ERR 0x80000005"), "impacket raises on BUFFER_OVERFLOW");
    assert!(qar(&mut a, "f", 0, 128 * MIB, 8).starts_with("ERR 0xc0000023"), "BUFFER_TOO_SMALL");

    // A trim of whole pages inside the range: freed as well; the answer counts the ranges.
    let trim = format!("{}{}{}", hex(&0u32.to_le_bytes()), hex(&1u32.to_le_bytes()), pair(2 * MIB + CHUNK, MIB - CHUNK));
    assert_eq!(a.cmd(&format!("fsctl f {FILE_LEVEL_TRIM:#x} {trim} 4")), "OK 01000000");
    assert_eq!(qar(&mut a, "f", 0, 128 * MIB, 1024), ranges(&[(0, CHUNK), (2 * MIB, CHUNK)]));
    assert_eq!(a.cmd(&format!("read f {} 100", 2 * MIB + CHUNK - 50)), format!("OK 100 50 {}{}", "41".repeat(50), "00".repeat(14)));

    // Clearing sparse: the whole range again (storage keeps its holes; they read as zeros).
    assert_eq!(a.cmd(&format!("fsctl f {SET_SPARSE:#x} 00 0")), "OK -");
    assert_eq!(a.cmd("info f"), format!("OK {size} {} 0x20", 2 * CHUNK));
    assert_eq!(qar(&mut a, "f", 0, 128 * MIB, 1024), ranges(&[(0, size)]));
}

#[test]
fn sparse_fsctls_refuse_bad_input_wrong_access_directories_and_read_only_shares() {
    let c = cluster();
    let mut a = DrivenClient::connect(&c.node(3).smb);
    assert_eq!(a.open("f", "f.bin", READ | WRITE, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(a.cmd("pwrite f 0 0x41 1000"), "OK");
    const INVALID: &str = "ERR 0xc000000d";
    const DENIED: &str = "ERR 0xc0000022";
    assert!(a.cmd(&format!("fsctl f {SET_ZERO_DATA:#x} {} 0", pair(200, 100))).starts_with(INVALID), "offset past BeyondFinalZero");
    assert!(a.cmd(&format!("fsctl f {SET_ZERO_DATA:#x} {} 0", &pair(0, 100)[..16])).starts_with(INVALID), "8 bytes of 16");
    assert!(a.cmd(&format!("fsctl f {SET_ZERO_DATA:#x} {} 0", pair(0, 1 << 63))).starts_with(INVALID), "a negative BeyondFinalZero");
    assert!(a.cmd(&format!("fsctl f {QUERY_ALLOCATED_RANGES:#x} {} 1024", pair(512, u64::MAX >> 1))).starts_with(INVALID), "offset + length past MAXLONGLONG");
    assert!(a.cmd(&format!("fsctl f {QUERY_ALLOCATED_RANGES:#x} - 1024")).starts_with(INVALID), "no input");
    let trim = |key: u32, count: u32, rest: &str| format!("fsctl f {FILE_LEVEL_TRIM:#x} {}{}{rest} 4", hex(&key.to_le_bytes()), hex(&count.to_le_bytes()));
    assert!(a.cmd(&trim(1, 1, &pair(0, 4096))).starts_with(INVALID), "a key that is not 0");
    assert!(a.cmd(&trim(0, 0, "")).starts_with(INVALID), "no ranges");
    assert!(a.cmd(&trim(0, 2, &pair(0, 4096))).starts_with(INVALID), "fewer ranges than counted");
    assert_eq!(a.cmd("read f 0 1000"), "OK 1000 1000 ".to_string() + &"41".repeat(64), "nothing changed");

    // Zeroing needs write access, asking for ranges read access; SET_SPARSE either.
    assert_eq!(a.open("r", "f.bin", READ, SHARE_ALL, OPEN), "OK");
    assert!(a.cmd(&format!("fsctl r {SET_ZERO_DATA:#x} {} 0", pair(0, 100))).starts_with(DENIED));
    assert!(a.cmd(&format!("fsctl r {SET_SPARSE:#x} - 0")).starts_with(DENIED));
    assert_eq!(qar(&mut a, "r", 0, 100, 1024), ranges(&[(0, 100)]));
    assert_eq!(a.open("attr", "f.bin", READ_ATTRIBUTES | WRITE_ATTRIBUTES, SHARE_ALL, OPEN), "OK");
    assert!(qar(&mut a, "attr", 0, 100, 1024).starts_with(DENIED));
    assert_eq!(a.cmd(&format!("fsctl attr {SET_SPARSE:#x} 01 0")), "OK -", "write attributes suffice");
    assert!(a.cmd(&format!("fsctl attr {SET_ZERO_DATA:#x} {} 0", pair(0, 100))).starts_with(DENIED), "but not for zeroing");

    // A directory has no data.
    assert_eq!(a.cmd(&format!("open d sub {:#x} {SHARE_ALL:#x} {OPEN_IF} 1", READ | WRITE)), "OK");
    assert!(a.cmd(&format!("fsctl d {SET_SPARSE:#x} - 0")).starts_with(INVALID));
    assert!(a.cmd(&format!("fsctl d {SET_ZERO_DATA:#x} {} 0", pair(0, 100))).starts_with(INVALID));

    // A read-only share: asking is fine, changing is not.
    let mut frozen = DrivenClient::connect_to(&c.node(1).smb, "frozen");
    assert_eq!(frozen.open("f", "f.bin", READ, SHARE_ALL, OPEN), "OK");
    assert_eq!(qar(&mut frozen, "f", 0, 10_000, 1024), ranges(&[(0, 1000)]));
    const PROTECTED: &str = "ERR 0xc00000a2";
    assert!(frozen.cmd(&format!("fsctl f {SET_SPARSE:#x} - 0")).starts_with(PROTECTED));
    assert!(frozen.cmd(&format!("fsctl f {SET_ZERO_DATA:#x} {} 0", pair(0, 100))).starts_with(PROTECTED));
    assert_eq!(a.cmd("read f 0 1000"), "OK 1000 1000 ".to_string() + &"41".repeat(64), "nothing changed");
}
