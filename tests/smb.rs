//! The SMB gateway with a real client: Samba's smbclient against `umbra node` on loopback.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs `smbclient //127.0.0.1/SHARE -p PORT -U USER%PASS [-m DIALECT] -c CMD`.
fn smbclient(smb_addr: &str, share: &str, user: &str, password: &str, dialect: Option<&str>, cmd: &str) -> (bool, String) {
    let port = smb_addr.rsplit(':').next().unwrap();
    let mut c = Command::new("smbclient");
    c.arg(format!("//127.0.0.1/{share}")).args(["-p", port, "-U", &format!("{user}%{password}"), "-c", cmd]);
    if let Some(m) = dialect {
        c.args(["-m", m]);
    }
    let out = c.output().expect("smbclient runs (scripts/setup.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn cluster_with_admin() -> Cluster {
    let c = Cluster::start(3, "");
    assert!(ctl_at(c.addr(1), &["user", "add", "admin", "--role", "admin"], Some("S3cret-pw\n")).ok);
    assert!(c.ctl(1, &["volume", "create", "vol", "--node", "2"]).ok);
    assert!(c.ctl(1, &["share", "create", "Data", "--volume", "vol"]).ok);
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
