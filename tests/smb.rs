//! The SMB gateway with a real client: Samba's smbclient against `umbra node` on loopback.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn cluster_with_admin() -> Cluster {
    let c = Cluster::start(3, "");
    assert!(ctl_at(c.addr(1), &["user", "add", "admin", "--role", "admin"], Some("S3cret-pw\n")).ok);
    assert!(c.ctl(1, &["volume", "create", "vol", "--node", "2"]).ok);
    assert!(c.ctl(1, &["share", "create", "Data", "--volume", "vol"]).ok);
    // The owner creates the volume in its store within one upkeep round.
    let smb = c.node(1).smb.clone();
    wait_for(Duration::from_secs(10), "the share's volume to exist", || smbclient(&smb, "data", "admin", "S3cret-pw", None, "ls").0.then_some(()));
    c
}

#[test]
fn smbclient_authenticates_with_ntlmv2_and_signs_in_every_dialect_on_every_node() {
    let c = cluster_with_admin();
    for id in 1..=3 {
        let smb = c.node(id).smb.clone();
        for dialect in ["SMB2_02", "SMB2_10", "SMB3_00", "SMB3_02", "SMB3_11"] {
            // smbclient checks every signed response, so a session and a tree connect that get
            // through prove the keys, the signatures and (3.1.1) the preauth hash.
            let (ok, out) = smbclient(&smb, "data", "admin", "S3cret-pw", Some(dialect), "exit");
            assert!(ok, "node {id} {dialect}: {out}");
        }
        assert!(c.log(id).contains("session established"), "node {id} logs its sessions");
        // Dialects before 3.1.1 make smbclient check the negotiation with a signed IOCTL.
        assert!(c.log(id).contains("validated negotiate"), "node {id} answered FSCTL_VALIDATE_NEGOTIATE_INFO");
    }
}

#[test]
fn a_wrong_password_an_unknown_user_and_an_unknown_share_get_the_right_status() {
    let c = cluster_with_admin();
    let smb = c.node(1).smb.clone();
    let (ok, out) = smbclient(&smb, "data", "admin", "wrong-pw", None, "exit");
    assert!(!ok && out.contains("NT_STATUS_LOGON_FAILURE"), "{out}");
    let (ok, out) = smbclient(&smb, "data", "nobody", "S3cret-pw", None, "exit");
    assert!(!ok && out.contains("NT_STATUS_LOGON_FAILURE"), "{out}");
    let (ok, out) = smbclient(&smb, "nope", "admin", "S3cret-pw", None, "exit");
    assert!(!ok && out.contains("NT_STATUS_BAD_NETWORK_NAME"), "{out}");
}

#[test]
fn users_and_shares_created_with_ctl_take_effect_on_every_node_without_a_restart() {
    let c = cluster_with_admin();
    let smb3 = c.node(3).smb.clone();
    let (ok, _) = smbclient(&smb3, "later", "backup1", "B4ckup!", None, "exit");
    assert!(!ok);
    assert!(ctl_at(c.addr(2), &["user", "add", "backup1", "--role", "backup"], Some("B4ckup!\n")).ok);
    assert!(c.ctl(2, &["share", "create", "Later", "--volume", "vol"]).ok);
    wait_for(Duration::from_secs(10), "node 3 to see the new user and share", || smbclient(&smb3, "later", "backup1", "B4ckup!", None, "exit").0.then_some(()));
}

#[test]
fn smbclient_mkdir_put_ls_get_rename_rm_rmdir_through_a_node_that_does_not_own_the_volume() {
    let c = cluster_with_admin(); // share Data lives on node 2's volume
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..(64u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(dir.path().join("in.bin"), &data).unwrap();
    let smb1 = c.node(1).smb.clone();
    let cmds = format!(
        "lcd {}; mkdir d; put in.bin d\\f.bin; ls d\\*; get d\\f.bin out.bin; rename d\\f.bin d\\g.bin; ls d\\*",
        dir.path().display()
    );
    let (ok, out) = smbclient(&smb1, "data", "admin", "S3cret-pw", None, &cmds);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(dir.path().join("out.bin")).unwrap(), data, "get returns what put stored");
    assert!(out.contains("f.bin") && out.contains("g.bin") && out.contains(&data.len().to_string()), "{out}");
    // Node 3 sees the file node 1 wrote (the volume lives on node 2).
    let (ok, out) = smbclient(&c.node(3).smb, "data", "admin", "S3cret-pw", None, "ls d\\*");
    assert!(ok && out.contains("g.bin"), "{out}");
    // smbclient's exit status after a failed rmdir varies; its message does not.
    let (_, out) = smbclient(&smb1, "data", "admin", "S3cret-pw", None, "rmdir d");
    assert!(out.contains("NT_STATUS_DIRECTORY_NOT_EMPTY"), "a non-empty directory stays: {out}");
    let (ok, out) = smbclient(&smb1, "data", "admin", "S3cret-pw", None, "del d\\g.bin; rmdir d; ls");
    assert!(ok && !out.contains(" d "), "{out}");
}

#[test]
fn a_write_to_a_read_only_share_is_refused_and_changes_nothing() {
    let c = cluster_with_admin();
    assert!(c.ctl(1, &["share", "create", "Frozen", "--volume", "vol", "--read-only"]).ok);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.bin"), b"hello").unwrap();
    let cmds = format!("lcd {}; put x.bin x.bin", dir.path().display());
    let (_, out) = smbclient(&c.node(1).smb, "frozen", "admin", "S3cret-pw", None, &cmds);
    assert!(out.contains("NT_STATUS_MEDIA_WRITE_PROTECTED") || out.contains("NT_STATUS_ACCESS_DENIED"), "{out}");
    let (ok, out) = smbclient(&c.node(1).smb, "frozen", "admin", "S3cret-pw", None, "ls");
    assert!(ok && !out.contains("x.bin"), "{out}");
    // A file and a folder made through the writable share over the same folder of the volume
    // cannot be deleted through the read-only one (a delete is an open for DELETE).
    let (ok, out) = smbclient(&c.node(1).smb, "data", "admin", "S3cret-pw", None, &format!("{cmds}; mkdir keep"));
    assert!(ok, "{out}");
    let (_, out) = smbclient(&c.node(1).smb, "frozen", "admin", "S3cret-pw", None, "rm x.bin; rmdir keep");
    assert!(out.contains("NT_STATUS_ACCESS_DENIED"), "{out}");
    let (ok, out) = smbclient(&c.node(1).smb, "data", "admin", "S3cret-pw", None, "ls");
    assert!(ok && out.contains("x.bin") && out.contains("keep"), "both are still there: {out}");
}

#[test]
fn after_kill9_of_one_node_clients_of_the_others_keep_working_on_volumes_that_live_elsewhere() {
    let mut c = cluster_with_admin(); // Data's volume lives on node 2
    c.kill9(3);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.bin"), vec![42u8; 300_000]).unwrap();
    let cmds = format!("lcd {}; put a.bin a.bin; get a.bin b.bin", dir.path().display());
    let (ok, out) = smbclient(&c.node(1).smb, "data", "admin", "S3cret-pw", None, &cmds);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(dir.path().join("b.bin")).unwrap(), vec![42u8; 300_000]);
    // A new session still authenticates (users come from Raft, which two nodes keep).
    let (ok, out) = smbclient(&c.node(2).smb, "data", "admin", "S3cret-pw", Some("SMB3_11"), "ls");
    assert!(ok && out.contains("a.bin"), "{out}");
}

#[test]
fn smbclient_lists_every_share_through_srvsvc_on_any_node() {
    let c = cluster_with_admin();
    assert!(c.ctl(2, &["share", "create", "Backups", "--volume", "vol"]).ok);
    for id in 1..=3 {
        let port = c.node(id).smb.rsplit(':').next().unwrap().to_string();
        let out = Command::new("smbclient").args(["-L", "127.0.0.1", "-p", &port, "-U", "admin%S3cret-pw"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for share in ["Data", "Backups", "IPC$"] {
            assert!(text.contains(share), "node {id} lists {share}: {text}");
        }
    }
}

#[test]
fn repeated_failed_logons_lock_the_name_for_a_while_even_with_the_right_password() {
    let c = cluster_with_admin();
    assert!(ctl_at(c.addr(1), &["user", "add", "victim", "--role", "user"], Some("Right-pw-1\n")).ok);
    let smb = c.node(1).smb.clone();
    for _ in 0..5 {
        let (ok, out) = smbclient(&smb, "data", "victim", "guess", None, "exit");
        assert!(!ok && out.contains("NT_STATUS_LOGON_FAILURE"), "{out}");
    }
    let (ok, out) = smbclient(&smb, "data", "victim", "Right-pw-1", None, "exit");
    assert!(!ok && out.contains("NT_STATUS_LOGON_FAILURE"), "locked out: {out}");
    assert!(c.log(1).contains("too many recent failures"));
    // Other users are unaffected.
    let (ok, out) = smbclient(&smb, "data", "admin", "S3cret-pw", None, "exit");
    assert!(ok, "{out}");
}

/// Guesses spread over the nodes count as on one server: each node passes its failed logons on
/// to the others, so five failures through three nodes lock the name on every node.
#[test]
fn failed_logons_through_different_nodes_count_together() {
    let c = cluster_with_admin();
    assert!(ctl_at(c.addr(1), &["user", "add", "victim", "--role", "user"], Some("Right-pw-1\n")).ok);
    for (i, node) in [1, 2, 3, 1, 2].into_iter().enumerate() {
        let (ok, out) = smbclient(&c.node(node).smb, "data", "victim", "guess", None, "exit");
        assert!(!ok && out.contains("NT_STATUS_LOGON_FAILURE"), "guess {i} through node {node}: {out}");
        // Each node passes its failures on within a quarter of a second.
        std::thread::sleep(Duration::from_millis(400));
    }
    for node in 1..=3 {
        let (ok, out) = smbclient(&c.node(node).smb, "data", "victim", "Right-pw-1", None, "exit");
        assert!(!ok && out.contains("NT_STATUS_LOGON_FAILURE"), "locked out on node {node} (at most two failures there): {out}");
    }
    assert!(c.log(3).contains("too many recent failures"));
}

/// The test clients' Python (scripts/setup.sh makes the virtualenv).
#[test]
fn impacket_and_smbprotocol_round_trip_files_with_signing_required_in_2_1_3_0_2_and_3_1_1() {
    let c = cluster_with_admin();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/roundtrip.py");
    let smb1 = c.node(1).smb.clone();
    let port = smb1.rsplit(':').next().unwrap();
    for client in ["impacket", "smbprotocol"] {
        for dialect in ["2.1", "3.0.2", "3.1.1"] {
            let out = Command::new(venv_python()).args([script, client, port, "data", "admin", "S3cret-pw", dialect]).output().expect("the test venv (scripts/setup.sh)");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && text.contains("OK"), "{client} {dialect}: {text}");
        }
    }
}

#[test]
fn rpcclient_gets_server_and_share_information_over_srvsvc() {
    let c = cluster_with_admin();
    let port = c.node(3).smb.rsplit(':').next().unwrap().to_string();
    let cmds = "srvinfo; netsharegetinfo Data 1; netsharegetinfo Data 2; netsharegetinfo Data 501; netsharegetinfo Data 502; netshareenumall 2; netsharegetinfo nope";
    let out = Command::new("rpcclient").args(["-p", &port, "-U", "admin%S3cret-pw", "127.0.0.1", "-c", cmds]).output().expect("rpcclient runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("UMBRA") && text.contains("platform_id") && text.contains("500"), "{text}");
    // rpcclient prints levels 1, 2 and 502 (it has no printer for 501, which still succeeds).
    assert!(text.matches("netname: Data").count() >= 4, "three printed levels and the listing: {text}");
    assert!(!text.contains("WERR_INVALID_LEVEL"), "{text}");
    assert!(text.contains("path:\tC:\\Data") && text.contains("IPC$"), "{text}");
    assert!(text.contains("WERR_NERR_NETNAMENOTFOUND") || text.contains("NERR_NetNameNotFound"), "{text}");
}

#[test]
fn garbage_on_the_smb_port_ends_that_connection_only() {
    use std::io::{Read, Write};
    let c = cluster_with_admin();
    let smb = c.node(1).smb.clone();
    let payloads: Vec<Vec<u8>> = vec![
        vec![0xff; 4096],
        vec![0, 0xff, 0xff, 0xff],
        [vec![0, 0, 0, 80], vec![0xfe, b'S', b'M', b'B'], vec![0x41; 76]].concat(),
        [vec![0, 0, 0, 68], b"\\xffSMBr".to_vec(), vec![0; 63]].concat(),
    ];
    for p in payloads {
        let mut s = std::net::TcpStream::connect(&smb).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&p);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    let (ok, out) = smbclient(&smb, "data", "admin", "S3cret-pw", None, "ls");
    assert!(ok, "the node still serves: {out}");
}

#[test]
fn rpcclient_binds_with_ntlmssp_at_integrity_and_privacy_levels() {
    let c = cluster_with_admin();
    let port = c.node(2).smb.rsplit(':').next().unwrap().to_string();
    for binding in ["ncacn_np:127.0.0.1[sign]", "ncacn_np:127.0.0.1[seal]"] {
        let out = Command::new("rpcclient").args(["-p", &port, "-U", "admin%S3cret-pw", binding, "-c", "srvinfo; netsharegetinfo Data"]).output().expect("rpcclient runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // rpcclient checks every response's signature and, sealed, decrypts it.
        assert!(out.status.success() && text.contains("UMBRA") && text.contains("netname: Data"), "{binding}: {text}");
    }
    let log = c.log(2);
    assert!(log.contains("DCE/RPC bind authenticated") && log.contains("level=5") && log.contains("level=6"), "both levels were used");
}

/// A signed or sealed answer longer than one fragment (the list of 120 shares) goes out as
/// fragments, each padded, trailed and signed on its own: rpcclient checks every signature.
#[test]
fn rpcclient_reads_a_share_list_of_many_fragments_signed_and_sealed() {
    let c = cluster_with_admin();
    for i in 0..120 {
        assert!(c.ctl(1, &["share", "create", &format!("Share{i:03}"), "--volume", "vol"]).ok);
    }
    let port = c.node(1).smb.rsplit(':').next().unwrap().to_string();
    for binding in ["ncacn_np:127.0.0.1[sign]", "ncacn_np:127.0.0.1[seal]"] {
        let out = Command::new("rpcclient").args(["-p", &port, "-U", "admin%S3cret-pw", binding, "-c", "netshareenumall"]).output().expect("rpcclient runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let listed = (0..120).filter(|i| text.contains(&format!("netname: Share{i:03}"))).count();
        assert!(out.status.success() && listed == 120, "{binding}: {listed} of 120 shares listed: {text}");
    }
}

/// smbprotocol's FileSystemWatcher: a CHANGE_NOTIFY that waits (interim STATUS_PENDING) and
/// completes when another connection of the node creates a file, WATCH_TREE, and a watch the
/// client cancels (STATUS_CANCELLED), through a node that does not own the volume.
#[test]
fn change_notify_completes_on_another_connections_create_and_a_cancelled_one_ends_cancelled() {
    let c = cluster_with_admin();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/notify.py");
    let smb = c.node(1).smb.clone();
    let port = smb.rsplit(':').next().unwrap();
    let out = Command::new(venv_python()).args([script, port, "data", "admin", "S3cret-pw"]).output().expect("the test venv (scripts/setup.sh)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("OK"), "{text}");
}

/// The same watches on node 1's gateway, with the changes made through node 3's: each node
/// relays its gateway's changes to the others (node/src/notify_relay.rs).
#[test]
fn change_notify_sees_changes_made_through_another_nodes_gateway() {
    let c = cluster_with_admin();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/notify.py");
    let (smb1, smb3) = (c.node(1).smb.clone(), c.node(3).smb.clone());
    let (port1, port3) = (smb1.rsplit(':').next().unwrap(), smb3.rsplit(':').next().unwrap());
    let out = Command::new(venv_python()).args([script, port1, "data", "admin", "S3cret-pw", port3]).output().expect("the test venv (scripts/setup.sh)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("OK"), "{text}");
}

/// smbprotocol: a watch through one share sees changes made through another share over the same
/// folder of the volume (the volume's root share and a folder share), both ways, across nodes.
#[test]
fn change_notify_sees_changes_made_through_another_share_of_the_same_volume() {
    let c = cluster_with_admin();
    assert!(c.ctl(1, &["share", "create", "Proj", "--volume", "vol", "--path", "/proj"]).ok);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/notify_shares.py");
    let (smb1, smb3) = (c.node(1).smb.clone(), c.node(3).smb.clone());
    let (port1, port3) = (smb1.rsplit(':').next().unwrap(), smb3.rsplit(':').next().unwrap());
    let out = Command::new(venv_python()).args([script, port1, "data", "proj", port3, "proj", "admin", "S3cret-pw"]).output().expect("the test venv (scripts/setup.sh)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("OK"), "{text}");
}

/// smbprotocol on \PIPE\srvsvc: a READ with nothing to read waits (interim STATUS_PENDING) until
/// a WRITE on the same connection gives the pipe output, and a waiting READ the client cancels
/// ends with STATUS_CANCELLED.
#[test]
fn a_pipe_read_waits_for_data_and_a_cancelled_one_ends_cancelled() {
    let c = cluster_with_admin();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/pipe_read.py");
    let smb = c.node(3).smb.clone();
    let port = smb.rsplit(':').next().unwrap();
    let out = Command::new(venv_python()).args([script, port, "admin", "S3cret-pw"]).output().expect("the test venv (scripts/setup.sh)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("OK"), "{text}");
}

/// smbprotocol's smbclient.stat: one related compound (CREATE, QUERY_INFOs on the placeholder
/// FileId, CLOSE) on a file and a directory; a missing name fails the chain with the CREATE's error.
#[test]
fn related_compounds_from_smbprotocol_reach_the_created_file() {
    let c = cluster_with_admin();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/compound.py");
    let smb = c.node(2).smb.clone();
    let port = smb.rsplit(':').next().unwrap();
    let out = Command::new(venv_python()).args([script, port, "data", "admin", "S3cret-pw"]).output().expect("the test venv (scripts/setup.sh)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("OK"), "{text}");
}
