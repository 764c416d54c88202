//! Security descriptors through SMB (QUERY_INFO and SET_INFO of SMB2_0_INFO_SECURITY), with
//! impacket: a file shows the default descriptor until a client sets one; what a client sets
//! through one node's gateway, every node's gateway gives back, part by part; a malformed
//! descriptor is refused and changes nothing; each part needs its access; a new file or
//! directory takes what its directory's descriptor passes down. The volume lives on node 2;
//! the clients go through nodes 1 and 3.

mod common;

use common::wire::*;
use common::*;

const USER: &str = "S-1-5-21-1-2-3-1001";
const OWNER: u32 = 1;
const GROUP: u32 = 2;
const DACL: u32 = 4;

#[test]
fn a_descriptor_set_through_one_node_is_given_back_by_every_node_part_by_part() {
    let c = data_cluster(); // the volume lives on node 2
    let mut a = DrivenClient::connect(&c.node(1).smb);
    assert_eq!(a.open("f", "acl.bin", READ | WRITE | READ_CONTROL | WRITE_DAC | WRITE_OWNER, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(a.cmd("getsd f 7"), "OK S-1-5-32-544 S-1-5-32-544 0:0:0x1f01ff:S-1-1-0", "the default: Administrators, Everyone full access");
    // A DACL (read for a user, write denied to Everyone), set alone; then the owner alone.
    let dacl = format!("0:3:0x1200a9:{USER},1:0:0x2:S-1-1-0");
    assert_eq!(a.cmd(&format!("setsd f {DACL} - - {dacl}")), "OK");
    assert_eq!(a.cmd(&format!("setsd f {OWNER} {USER} - -")), "OK");
    assert_eq!(a.cmd("close f"), "OK");
    let mut b = DrivenClient::connect(&c.node(3).smb);
    assert_eq!(b.open("g", "acl.bin", READ | READ_CONTROL, SHARE_ALL, OPEN), "OK");
    assert_eq!(b.cmd("getsd g 7"), format!("OK {USER} S-1-5-32-544 {dacl}"), "through another node: the parts set, and the group as it was");
    assert_eq!(b.cmd(&format!("getsd g {OWNER}")), format!("OK {USER} - -"), "only the part asked for");
    assert_eq!(b.cmd(&format!("getsd g {}", GROUP | DACL)), format!("OK - S-1-5-32-544 {dacl}"));
    // Changing a part needs its access (WRITE_DAC here); reading needs READ_CONTROL.
    assert!(b.cmd(&format!("setsd g {DACL} - - 0:0:0x1f01ff:S-1-1-0")).starts_with("ERR 0xc0000022"), "ACCESS_DENIED");
    assert_eq!(b.open("r", "acl.bin", READ, SHARE_ALL, OPEN), "OK");
    assert!(b.cmd("getsd r 7").starts_with("ERR 0xc0000022"), "ACCESS_DENIED");
    // A malformed descriptor (revision 2) is refused, and nothing changes.
    assert_eq!(b.open("w", "acl.bin", READ | READ_CONTROL | WRITE_DAC, SHARE_ALL, OPEN), "OK");
    assert!(b.cmd(&format!("setsdhex w {DACL} 0200048014000000000000000000000000000000")).starts_with("ERR 0xc0000079"), "INVALID_SECURITY_DESCR");
    assert!(b.cmd(&format!("setsdhex w {DACL} 0100")).starts_with("ERR 0xc0000079"), "a truncated one too");
    assert_eq!(b.open("o", "acl.bin", READ | READ_CONTROL | WRITE_OWNER, SHARE_ALL, OPEN), "OK");
    assert!(b.cmd(&format!("setsd o {OWNER} - - -")).starts_with("ERR 0xc000005a"), "INVALID_OWNER: the owner named, none given");
    assert_eq!(b.cmd("getsd w 7"), format!("OK {USER} S-1-5-32-544 {dacl}"));
    // A SET that names no part (AdditionalInformation 0) changes nothing, and needs no access.
    assert_eq!(b.open("n", "acl.bin", READ, SHARE_ALL, OPEN), "OK");
    assert_eq!(b.cmd("setsd n 0 S-1-5-21-7-7-7-7 - 0:0:0x1:S-1-1-0"), "OK");
    assert_eq!(b.cmd("getsd w 7"), format!("OK {USER} S-1-5-32-544 {dacl}"), "unchanged");
    // The owner's own gateway gives back the same.
    let mut o = DrivenClient::connect(&c.node(2).smb);
    assert_eq!(o.open("f", "acl.bin", READ_CONTROL, SHARE_ALL, OPEN), "OK");
    assert_eq!(o.cmd("getsd f 7"), format!("OK {USER} S-1-5-32-544 {dacl}"));
}

/// Two clients set different parts of one file's descriptor at the same time, through
/// different nodes, again and again: the owner merges each SET under the volume's lock, so
/// neither loses the other's (a gateway that read, merged and wrote would let one SET put back
/// the part the other had just changed).
#[test]
fn sets_of_different_parts_at_once_through_two_nodes_both_land() {
    let c = data_cluster(); // the volume lives on node 2
    let mut setup = DrivenClient::connect(&c.node(2).smb);
    assert_eq!(setup.open("f", "both.bin", READ | WRITE, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(setup.cmd("close f"), "OK");
    const ROUNDS: u32 = 40;
    let run = |node: &str, part: u32| {
        let smb = node.to_string();
        std::thread::spawn(move || {
            let mut client = DrivenClient::connect(&smb);
            assert_eq!(client.open("f", "both.bin", READ_CONTROL | WRITE_DAC | WRITE_OWNER, SHARE_ALL, OPEN), "OK");
            for i in 1..=ROUNDS {
                let set = if part == OWNER { format!("setsd f {OWNER} S-1-5-21-1-2-3-{i} - -") } else { format!("setsd f {DACL} - - 0:0:0x1f01ff:S-1-5-21-9-9-9-{i}") };
                assert_eq!(client.cmd(&set), "OK");
            }
        })
    };
    let (a, b) = (run(&c.node(1).smb, OWNER), run(&c.node(3).smb, DACL));
    a.join().unwrap();
    b.join().unwrap();
    assert_eq!(setup.open("g", "both.bin", READ_CONTROL, SHARE_ALL, OPEN), "OK");
    assert_eq!(setup.cmd("getsd g 7"), format!("OK S-1-5-21-1-2-3-{ROUNDS} S-1-5-32-544 0:0:0x1f01ff:S-1-5-21-9-9-9-{ROUNDS}"), "both last SETs kept");
}

/// A file or directory made in a directory whose descriptor has inheritable ACEs takes them,
/// marked inherited (MS-DTYP's rules: a file takes the object-inherit ones; a directory the
/// container-inherit ones, still passing on, and the object-inherit ones as inherit-only);
/// one made where nothing was set shows the default. Through another node than the one that
/// set the directory's descriptor, and read back through a third.
#[test]
fn a_new_file_takes_what_its_directory_passes_down() {
    let c = data_cluster(); // the volume lives on node 2
    let mut a = DrivenClient::connect(&c.node(1).smb);
    let dir = format!("open d inh {:#x} {SHARE_ALL:#x} {OPEN_IF} 0x1", READ | READ_CONTROL | WRITE_DAC);
    assert_eq!(a.cmd(&dir), "OK");
    // Full access for the user on everything below, read for Everyone on files below.
    assert_eq!(a.cmd(&format!("setsd d {DACL} - - 0:3:0x1f01ff:{USER},0:1:0x1200a9:S-1-1-0")), "OK");
    assert_eq!(a.cmd("close d"), "OK");
    let mut b = DrivenClient::connect(&c.node(3).smb);
    assert_eq!(b.open("f", "inh\\f.bin", READ | WRITE | READ_CONTROL, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(b.cmd("getsd f 7"), format!("OK S-1-5-32-544 S-1-5-32-544 0:16:0x1f01ff:{USER},0:16:0x1200a9:S-1-1-0"), "a file: both ACEs, inherited");
    let sub = format!("open s inh\\sub {:#x} {SHARE_ALL:#x} {OPEN_IF} 0x1", READ | READ_CONTROL);
    assert_eq!(b.cmd(&sub), "OK");
    assert_eq!(b.cmd("getsd s 4"), format!("OK - - 0:19:0x1f01ff:{USER},0:25:0x1200a9:S-1-1-0"), "a directory: the first applies and passes on, the second only passes on");
    assert_eq!(b.open("g", "inh\\sub\\g.bin", READ | WRITE | READ_CONTROL, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(b.cmd("getsd g 4"), format!("OK - - 0:16:0x1f01ff:{USER},0:16:0x1200a9:S-1-1-0"), "two levels down");
    assert_eq!(b.open("r", "root.bin", READ | WRITE | READ_CONTROL, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(b.cmd("getsd r 7"), "OK S-1-5-32-544 S-1-5-32-544 0:0:0x1f01ff:S-1-1-0", "where nothing was set: the default");
    // A CREATE's SecD context lays its parts over what the file inherits: an owner alone
    // keeps the inherited DACL; a DACL alone replaces it and keeps the default owner.
    let secd = |handle: &str, name: &str, owner: &str, dacl: &str| format!("opensd {handle} inh\\{name} {:#x} {SHARE_ALL:#x} {OVERWRITE_IF} 0x40 {owner} - {dacl}", READ | WRITE | READ_CONTROL);
    assert_eq!(b.cmd(&secd("o1", "owned.bin", USER, "-")), "OK");
    assert_eq!(b.cmd("getsd o1 7"), format!("OK {USER} S-1-5-32-544 0:16:0x1f01ff:{USER},0:16:0x1200a9:S-1-1-0"));
    assert_eq!(b.cmd(&secd("o2", "own-dacl.bin", "-", "0:0:0x1:S-1-1-0")), "OK");
    assert_eq!(b.cmd("getsd o2 7"), "OK S-1-5-32-544 S-1-5-32-544 0:0:0x1:S-1-1-0");
    let mut o = DrivenClient::connect(&c.node(2).smb);
    assert_eq!(o.open("f", "inh\\f.bin", READ_CONTROL, SHARE_ALL, OPEN), "OK");
    assert_eq!(o.cmd("getsd f 4"), format!("OK - - 0:16:0x1f01ff:{USER},0:16:0x1200a9:S-1-1-0"), "the owner's gateway gives back the same");
}
