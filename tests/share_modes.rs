//! Share modes across nodes: impacket clients (tests/clients/driven.py) on different
//! nodes' gateways open one file on a volume that a third node owns, and get
//! STATUS_SHARING_VIOLATION as on one Windows server; closing, a killed client and a dead
//! gateway node release the opens.

mod common;

use std::time::Duration;

use common::wire::*;
use common::*;

const PASSWORD: &str = DRIVEN_PASSWORD;
const SHARING_VIOLATION: &str = "ERR 0xc0000043";
const ACCESS_DENIED: &str = "ERR 0xc0000022";

#[test]
fn opens_through_two_nodes_conflict_as_on_one_windows_server_until_the_holder_closes() {
    let c = data_cluster(); // the volume lives on node 2
    let mut a = DrivenClient::connect(&c.node(1).smb);
    let mut b = DrivenClient::connect(&c.node(3).smb);
    assert_eq!(a.open("f", "f.txt", READ | WRITE, SHARE_READ, OVERWRITE_IF), "OK");
    assert_eq!(a.cmd("write f hello"), "OK");
    // A writes and shares only read: B may not write, nor read without sharing write.
    assert!(b.open("w", "f.txt", WRITE, SHARE_ALL, OPEN).starts_with(SHARING_VIOLATION), "a writer through node 3");
    assert!(b.open("r", "f.txt", READ, SHARE_READ, OPEN).starts_with(SHARING_VIOLATION), "a reader that does not share write");
    assert!(b.open("d", "f.txt", DELETE, SHARE_ALL, OPEN).starts_with(SHARING_VIOLATION), "A does not share delete");
    // A reader that shares write is fine, and so is an open for attributes only.
    assert_eq!(b.open("r", "f.txt", READ, SHARE_RW, OPEN), "OK");
    assert_eq!(b.open("attr", "f.txt", READ_ATTRIBUTES, SHARE_NONE, OPEN), "OK");
    assert_eq!(b.cmd("close attr"), "OK");
    // Through the owner's own gateway (node 2: the in-process path) the same holds.
    let mut owner = DrivenClient::connect(&c.node(2).smb);
    assert!(owner.open("w", "f.txt", WRITE, SHARE_ALL, OPEN).starts_with(SHARING_VIOLATION), "A shares only read");
    // Closing releases: once A and B close, an exclusive writer gets in from node 2.
    assert_eq!(a.cmd("close f"), "OK");
    assert_eq!(b.cmd("close r"), "OK");
    assert_eq!(owner.open("w", "f.txt", WRITE, SHARE_NONE, OPEN), "OK");
    assert!(a.open("f", "f.txt", READ, SHARE_ALL, OPEN).starts_with(SHARING_VIOLATION), "exclusive");
    assert_eq!(owner.cmd("close w"), "OK");
    assert_eq!(a.open("f", "f.txt", READ, SHARE_ALL, OPEN), "OK");
    assert_eq!(a.cmd("close f"), "OK");
}

/// A directory with a file open anywhere below it does not move, whichever node's gateway holds
/// the file and whichever renames the directory: ACCESS_DENIED, as from Windows and Samba, and
/// nothing changes. Once the file is closed the directory moves, with the file in it.
#[test]
fn a_directory_with_a_file_open_below_it_does_not_move_until_the_file_closes() {
    let c = data_cluster(); // the volume lives on node 2
    let (ok, out) = smbclient(&c.node(2).smb, "data", "admin", PASSWORD, None, "mkdir top; mkdir top\\sub");
    assert!(ok, "{out}");
    let mut holder = DrivenClient::connect(&c.node(1).smb);
    assert_eq!(holder.open("f", "top\\sub\\f.txt", READ | WRITE, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(holder.cmd("write f kept"), "OK");
    let dir_open = |handle: &str, path: &str| format!("open {handle} {path} {:#x} {SHARE_ALL:#x} {OPEN} 0x1", READ_ATTRIBUTES | DELETE);
    let mut mover = DrivenClient::connect(&c.node(3).smb);
    assert_eq!(mover.cmd(&dir_open("d", "top")), "OK");
    assert!(mover.cmd("rename d top2").starts_with(ACCESS_DENIED), "a file two levels below is open through node 1");
    // The directory just above the file, through the owner's own gateway (the in-process path).
    let mut owner = DrivenClient::connect(&c.node(2).smb);
    assert_eq!(owner.cmd(&dir_open("s", "top\\sub")), "OK");
    assert!(owner.cmd("rename s sub2").starts_with(ACCESS_DENIED), "the file below sub is open");
    // (The two directories' opens ask for DELETE, which a listing does not share: the file
    // is read by its path.)
    let (ok, out) = smbclient(&c.node(1).smb, "data", "admin", PASSWORD, None, "get top\\sub\\f.txt /dev/stdout");
    assert!(ok && out.contains("kept"), "nothing moved: {out}");
    // An open directory below counts too; a file beside the directory does not stop it, nor
    // do the directory's own opens.
    assert_eq!(holder.cmd("close f"), "OK");
    assert!(mover.cmd("rename d top2").starts_with(ACCESS_DENIED), "sub is open through node 2");
    assert_eq!(owner.cmd("close s"), "OK");
    assert_eq!(holder.open("g", "beside.txt", READ | WRITE, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(mover.cmd("rename d top2"), "OK");
    let (ok, out) = smbclient(&c.node(3).smb, "data", "admin", PASSWORD, None, "get top2\\sub\\f.txt /dev/stdout");
    assert!(ok && out.contains("kept"), "the file moved with its directory: {out}");
}

#[test]
fn rename_and_delete_need_delete_access_on_the_open() {
    let c = data_cluster();
    let mut a = DrivenClient::connect(&c.node(1).smb);
    assert_eq!(a.open("g", "g.txt", READ | WRITE, SHARE_ALL, OVERWRITE_IF), "OK");
    assert!(a.cmd("rename g g2.txt").starts_with(ACCESS_DENIED), "rename without DELETE");
    assert!(a.cmd("delete g").starts_with(ACCESS_DENIED), "delete-on-close disposition without DELETE");
    // FILE_DELETE_ON_CLOSE (with FILE_NON_DIRECTORY_FILE) asked without DELETE access.
    assert!(a.cmd(&format!("open h g.txt {:#x} {SHARE_ALL:#x} {OPEN} 0x1040", READ | WRITE)).starts_with(ACCESS_DENIED));
    assert_eq!(a.cmd("close g"), "OK");
    assert_eq!(a.open("g", "g.txt", READ | DELETE, SHARE_ALL, OPEN), "OK");
    assert_eq!(a.cmd("rename g g2.txt"), "OK");
    assert_eq!(a.cmd("delete g"), "OK");
    assert_eq!(a.cmd("close g"), "OK");
    let (ok, out) = smbclient(&c.node(3).smb, "data", "admin", PASSWORD, None, "ls");
    assert!(ok && !out.contains("g.txt") && !out.contains("g2.txt"), "renamed, then deleted on close: {out}");
}

#[test]
fn a_killed_client_and_a_dead_gateway_node_release_their_opens() {
    let mut c = data_cluster();
    // A client whose connection just ends: its gateway closes its opens at once.
    let mut a = DrivenClient::connect(&c.node(1).smb);
    let mut b = DrivenClient::connect(&c.node(3).smb);
    assert_eq!(a.open("x", "x.txt", READ | WRITE, SHARE_NONE, OVERWRITE_IF), "OK");
    assert!(b.open("x", "x.txt", READ, SHARE_ALL, OPEN).starts_with(SHARING_VIOLATION));
    a.kill();
    wait_for(Duration::from_secs(5), "the killed client's open to be released", || (b.open("x", "x.txt", READ | WRITE, SHARE_NONE, OPEN) == "OK").then_some(()));
    // TREE_DISCONNECT and LOGOFF without a CLOSE release the tree's and the session's opens.
    let mut d = DrivenClient::connect(&c.node(1).smb);
    assert_eq!(b.cmd("close x"), "OK");
    assert_eq!(d.open("x", "x.txt", READ | WRITE, SHARE_NONE, OPEN), "OK");
    assert!(b.open("x", "x.txt", READ, SHARE_ALL, OPEN).starts_with(SHARING_VIOLATION));
    assert_eq!(d.cmd("tdis"), "OK");
    assert_eq!(b.open("x", "x.txt", READ, SHARE_NONE, OPEN), "OK", "released by TREE_DISCONNECT");
    assert!(d.open("x", "x.txt", READ, SHARE_ALL, OPEN).starts_with(SHARING_VIOLATION));
    assert_eq!(b.cmd("close x"), "OK");
    assert_eq!(d.open("x", "x.txt", READ | WRITE, SHARE_NONE, OPEN), "OK");
    assert!(b.open("x", "x.txt", READ, SHARE_ALL, OPEN).starts_with(SHARING_VIOLATION));
    assert_eq!(d.cmd("logoff"), "OK");
    assert_eq!(b.open("x", "x.txt", READ | WRITE, SHARE_NONE, OPEN), "OK", "released by LOGOFF");
    // A gateway node that dies (kill -9) holding an open: the owner drops it when the
    // gateway's lease (15 s) expires.
    let mut held = DrivenClient::connect(&c.node(1).smb);
    assert_eq!(b.cmd("close x"), "OK");
    assert_eq!(held.open("x", "x.txt", READ | WRITE, SHARE_NONE, OPEN), "OK");
    assert!(b.open("x", "x.txt", READ, SHARE_ALL, OPEN).starts_with(SHARING_VIOLATION));
    c.kill9(1);
    drop(held);
    let started = std::time::Instant::now();
    wait_for(Duration::from_secs(30), "the dead gateway's lease to expire", || (b.open("x", "x.txt", READ, SHARE_ALL, OPEN) == "OK").then_some(()));
    assert!(started.elapsed() >= Duration::from_secs(5), "held under the lease for a while, not dropped at once");
    // The restarted node's gateway is a new incarnation that holds nothing.
    c.start_node(1);
    c.wait_up(1);
    let mut again = DrivenClient::connect(&c.node(1).smb);
    assert_eq!(again.open("x", "x.txt", READ, SHARE_ALL, OPEN), "OK");
    assert_eq!(b.cmd("close x"), "OK");
    assert_eq!(again.cmd("close x"), "OK");
}

#[test]
fn an_owner_that_restarts_gets_the_live_gateways_opens_back_at_their_next_renewal() {
    let mut c = data_cluster(); // the volume lives on node 2
    let mut a = DrivenClient::connect(&c.node(1).smb);
    assert_eq!(a.open("y", "y.txt", READ | WRITE, SHARE_NONE, OVERWRITE_IF), "OK");
    c.kill9(2);
    c.start_node(2);
    c.wait_up(2);
    // The owner starts with an empty table; node 1's gateway renews within 5 s and the owner
    // reinstates its open. An open asked meanwhile waits out the owner's grace period, so it
    // is checked against the reinstated open, not granted in the gap.
    let mut b = DrivenClient::connect(&c.node(3).smb);
    assert!(b.open("y", "y.txt", READ, SHARE_ALL, OPEN).starts_with(SHARING_VIOLATION), "the reinstated open still excludes");
    assert!(c.log(2).contains("reinstated a gateway's opens"));
    assert_eq!(a.cmd("close y"), "OK");
    assert_eq!(b.open("y", "y.txt", READ, SHARE_ALL, OPEN), "OK");
}

#[test]
fn a_deleted_share_releases_the_opens_made_through_it() {
    let c = data_cluster();
    assert!(c.ctl(1, &["share", "create", "Other", "--volume", "vol"]).ok);
    let mut a = DrivenClient::connect_to(&c.node(1).smb, "other");
    let mut b = DrivenClient::connect(&c.node(3).smb);
    assert_eq!(a.open("z", "z.txt", READ | WRITE, SHARE_NONE, OVERWRITE_IF), "OK");
    assert!(b.open("z", "z.txt", READ, SHARE_ALL, OPEN).starts_with(SHARING_VIOLATION), "one volume, one file, two shares");
    assert!(c.ctl(1, &["share", "delete", "Other"]).ok);
    // The gateway notices at the client's next request on the tree (NETWORK_NAME_DELETED) and
    // closes the tree's opens.
    assert!(a.open("w", "w.txt", READ, SHARE_ALL, OVERWRITE_IF).starts_with("ERR 0xc00000c9"));
    assert_eq!(b.open("z", "z.txt", READ, SHARE_ALL, OPEN), "OK");
}

const DELETE_PENDING: &str = "ERR 0xc0000056";
/// CreateOptions: FILE_NON_DIRECTORY_FILE | FILE_DELETE_ON_CLOSE.
const DELETE_ON_CLOSE: u32 = 0x1040;

fn listed(c: &Cluster, node: u64, name: &str) -> bool {
    let (ok, out) = smbclient(&c.node(node).smb, "data", "admin", PASSWORD, None, "ls");
    assert!(ok, "{out}");
    out.contains(name)
}

#[test]
fn a_delete_on_close_file_goes_at_its_last_close_whichever_node_holds_the_opens() {
    let c = data_cluster(); // the volume lives on node 2
    let mut a = DrivenClient::connect(&c.node(1).smb);
    let mut b = DrivenClient::connect(&c.node(3).smb);
    // Delete-on-close while another node's client holds the file open: it stays until that
    // open closes, refusing new opens meanwhile (delete pending).
    let doc = format!("open d d.txt {:#x} {SHARE_ALL:#x} {OVERWRITE_IF} {DELETE_ON_CLOSE:#x}", READ | WRITE | DELETE);
    assert_eq!(a.cmd(&doc), "OK");
    assert_eq!(a.cmd("write d bye"), "OK");
    assert_eq!(b.open("r", "d.txt", READ, SHARE_ALL, OPEN), "OK");
    // Not delete-pending until the delete-on-close open goes (as Windows and Samba report it),
    // then for every open left.
    assert_eq!(a.cmd("pending d"), "OK 0");
    assert_eq!(b.cmd("pending r"), "OK 0");
    assert_eq!(a.cmd("close d"), "OK");
    assert_eq!(b.cmd("pending r"), "OK 1", "the delete-on-close open went");
    assert!(listed(&c, 2, "d.txt"), "node 3's client still holds it");
    assert!(a.open("again", "d.txt", READ, SHARE_ALL, OPEN).starts_with(DELETE_PENDING));
    assert_eq!(b.cmd("close r"), "OK");
    assert!(!listed(&c, 2, "d.txt"), "gone at its last close");
    // A delete disposition (FileDispositionInformation) works the same way, and the file is
    // delete-pending on every node as soon as it is set, until it is cleared.
    assert_eq!(a.open("s", "s.txt", READ | WRITE | DELETE, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(b.open("r", "s.txt", READ, SHARE_ALL, OPEN), "OK");
    assert_eq!(b.cmd("pending r"), "OK 0");
    assert_eq!(a.cmd("delete s"), "OK");
    // Every open of the file sees it delete-pending (FileStandardInformation), as on one server.
    assert_eq!(a.cmd("pending s"), "OK 1");
    assert_eq!(b.cmd("pending r"), "OK 1", "B's open, through another node");
    assert!(b.open("r2", "s.txt", READ, SHARE_ALL, OPEN).starts_with(DELETE_PENDING), "pending before the disposed open closes");
    assert!(b.open("r2", "s.txt", READ_ATTRIBUTES, SHARE_NONE, OPEN).starts_with(DELETE_PENDING), "an open for attributes only too");
    assert_eq!(a.cmd("undelete s"), "OK");
    assert_eq!(b.cmd("pending r"), "OK 0", "cleared");
    assert_eq!(b.open("r2", "s.txt", READ, SHARE_ALL, OPEN), "OK", "cleared");
    assert_eq!(b.cmd("close r2"), "OK");
    assert_eq!(a.cmd("delete s"), "OK");
    // Renamed after its disposition was set: the owner knows the new name.
    assert_eq!(a.cmd("rename s s2.txt"), "OK");
    assert!(b.open("r2", "s2.txt", READ, SHARE_ALL, OPEN).starts_with(DELETE_PENDING));
    assert_eq!(a.cmd("close s"), "OK");
    assert!(listed(&c, 1, "s2.txt"));
    assert_eq!(b.cmd("close r"), "OK");
    assert!(!listed(&c, 1, "s2.txt"));
    // A directory whose disposition is set takes nothing new, from any node.
    let dir = format!("open dd dd {:#x} {SHARE_ALL:#x} {OPEN_IF} 0x1", READ | DELETE);
    assert_eq!(a.cmd(&dir), "OK");
    assert_eq!(a.cmd("delete dd"), "OK");
    assert!(b.open("x", "dd\\x.txt", READ | WRITE, SHARE_ALL, OVERWRITE_IF).starts_with(DELETE_PENDING));
    assert_eq!(a.cmd("close dd"), "OK");
    assert!(!listed(&c, 3, "dd"), "the empty directory went at its close");
    // A client whose connection ends holding a delete-on-close open: the file goes with it.
    let mut k = DrivenClient::connect(&c.node(1).smb);
    let doc = format!("open k k.txt {:#x} {SHARE_ALL:#x} {OVERWRITE_IF} {DELETE_ON_CLOSE:#x}", READ | WRITE | DELETE);
    assert_eq!(k.cmd(&doc), "OK");
    assert!(listed(&c, 3, "k.txt"));
    k.kill();
    wait_for(Duration::from_secs(5), "the killed client's delete-on-close file to go", || (!listed(&c, 3, "k.txt")).then_some(()));
    // Renamed through the open after it was made: the file goes under its new name, and the
    // file now at its old name stays.
    let doc = format!("open m m.txt {:#x} {SHARE_ALL:#x} {OVERWRITE_IF} {DELETE_ON_CLOSE:#x}", READ | WRITE | DELETE);
    assert_eq!(a.cmd(&doc), "OK");
    assert_eq!(a.cmd("rename m m2.txt"), "OK");
    assert_eq!(b.open("n", "m.txt", READ | WRITE, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(b.cmd("close n"), "OK");
    assert_eq!(a.cmd("close m"), "OK");
    assert!(!listed(&c, 2, "m2.txt") && listed(&c, 2, "m.txt"));
}

/// A CLOSE through a node other than the volume's owner is answered before the owner hears of
/// it (node/src/deferred_releases.rs): its release rides on the next call there. Here a release
/// never goes alone (a ten-minute delay), so wherever an open that is closed already would be in
/// the way, the owner has to ask for it first: clients see what they would see on one server.
#[test]
fn closes_answered_before_the_owner_hears_of_them_are_never_in_the_way() {
    let c = data_cluster_with("[volumes]\nrelease_delay_ms = 600000\n"); // the volume lives on node 2
    let mut a = DrivenClient::connect(&c.node(1).smb);
    let mut b = DrivenClient::connect(&c.node(3).smb);
    let mut owner = DrivenClient::connect(&c.node(2).smb);
    // Written and closed through node 1, then opened exclusively through node 3 and through
    // the owner's own gateway, one after the other.
    assert_eq!(a.open("f", "f.txt", READ | WRITE, SHARE_NONE, OVERWRITE_IF), "OK");
    assert_eq!(a.cmd("write f hello"), "OK");
    assert_eq!(a.cmd("close f"), "OK");
    assert_eq!(b.open("x", "f.txt", READ | WRITE, SHARE_NONE, OPEN), "OK", "node 1's client closed it");
    assert_eq!(b.cmd("close x"), "OK");
    assert_eq!(owner.open("x", "f.txt", READ | WRITE, SHARE_NONE, OPEN), "OK", "node 3's client closed it");
    assert_eq!(owner.cmd("close x"), "OK");
    // Through one node, again and again; a conflict with an open still held stands.
    for _ in 0..3 {
        assert_eq!(b.open("x", "f.txt", READ | WRITE, SHARE_NONE, OPEN), "OK");
        assert!(a.open("y", "f.txt", READ, SHARE_ALL, OPEN).starts_with(SHARING_VIOLATION), "held through node 3");
        assert_eq!(b.cmd("close x"), "OK");
    }
    assert_eq!(a.open("y", "f.txt", READ, SHARE_NONE, OPEN), "OK");
    assert_eq!(a.cmd("read y 0 5"), "OK 5 5 68656c6c6f");
    assert_eq!(a.cmd("close y"), "OK");

    // A directory whose files were written and closed through node 1 moves through node 3 (the
    // directories made through the owner: nothing is in the way of the directory's own open).
    let (ok, out) = smbclient(&c.node(2).smb, "data", "admin", PASSWORD, None, "mkdir top; mkdir top\\sub");
    assert!(ok, "{out}");
    for name in ["top\\one.txt", "top\\sub\\two.txt"] {
        assert_eq!(a.open("n", name, READ | WRITE, SHARE_READ, OVERWRITE_IF), "OK");
        assert_eq!(a.cmd("write n data"), "OK");
        assert_eq!(a.cmd("close n"), "OK");
    }
    let dir_open = format!("open d top {:#x} {SHARE_ALL:#x} {OPEN} 0x1", READ_ATTRIBUTES | DELETE);
    assert_eq!(b.cmd(&dir_open), "OK");
    assert_eq!(b.cmd("rename d top2"), "OK", "the files below were closed through node 1");
    assert_eq!(b.cmd("close d"), "OK");
    let (ok, out) = smbclient(&c.node(2).smb, "data", "admin", PASSWORD, None, "get top2\\sub\\two.txt /dev/stdout");
    assert!(ok && out.contains("data"), "moved with its files: {out}");

    // Deleted through node 3 after node 1's client closed it: gone at that delete's CLOSE.
    assert_eq!(a.open("g", "g.txt", READ | WRITE, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(a.cmd("close g"), "OK");
    let doc = |h: &str, name: &str| format!("open {h} {name} {:#x} {SHARE_ALL:#x} {OPEN} {DELETE_ON_CLOSE:#x}", READ | DELETE);
    assert_eq!(b.cmd(&doc("g", "g.txt")), "OK");
    assert_eq!(b.cmd("close g"), "OK");
    assert!(!listed(&c, 2, "g.txt"), "node 1's client had closed it");
    // Deleted through node 3 while node 1's client holds it: gone when that client closes it.
    assert_eq!(a.open("h", "h.txt", READ | WRITE, SHARE_ALL, OVERWRITE_IF), "OK");
    assert_eq!(b.cmd(&doc("h", "h.txt")), "OK");
    assert_eq!(b.cmd("close h"), "OK");
    assert!(listed(&c, 2, "h.txt"), "node 1's client holds it");
    assert!(owner.open("again", "h.txt", READ, SHARE_ALL, OPEN).starts_with(DELETE_PENDING));
    assert_eq!(a.cmd("close h"), "OK");
    assert!(!listed(&c, 2, "h.txt"), "gone at its last CLOSE, through node 1");
    assert_eq!(owner.open("again", "h.txt", READ | WRITE, SHARE_NONE, OVERWRITE_IF), "OK", "a new file of that name");
    assert_eq!(owner.cmd("close again"), "OK");
}
