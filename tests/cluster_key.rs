//! The cluster key (umbra_raft::peer_auth): nodes that hold it form a cluster and serve SMB
//! across nodes over keyed connections; `umbra ctl` needs it; a connection without it reaches
//! no service of a node's gRPC port.

mod common;

use std::io::{Read, Write};
use std::process::Command;

use common::*;

const KEY: &str = "5e11a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f";

/// `umbra ctl --addr ADDR status` with `key_file` (or none).
fn status_with(addr: &str, key_file: Option<&std::path::Path>) -> (bool, String) {
    let mut cmd = Command::new(UMBRA);
    cmd.args(["ctl", "--addr", addr, "status"]).env_remove("UMBRA_CLUSTER_KEY_FILE");
    if let Some(f) = key_file {
        cmd.env("UMBRA_CLUSTER_KEY_FILE", f);
    }
    let out = cmd.output().expect("umbra ctl runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn only_holders_of_the_cluster_key_reach_a_nodes_grpc_port() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("cluster.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    // The harness's own `umbra ctl` runs hold the key (children inherit the environment).
    std::env::set_var("UMBRA_CLUSTER_KEY_FILE", &key_file);
    let mut c = Cluster::prepare(3, "");
    for n in &c.nodes {
        let text = std::fs::read_to_string(&n.config).unwrap();
        std::fs::write(&n.config, format!("cluster_key = \"{KEY}\"\n{text}")).unwrap();
    }
    for id in 1..=3 {
        c.start_node(id);
    }
    c.wait_voters(3); // Raft between the nodes, over keyed connections

    // SMB through node 1 on a volume node 2 owns: the gateway's calls to the owner hold the key.
    assert!(ctl_at(c.addr(1), &["user", "add", "admin", "--role", "admin"], Some(&format!("{DRIVEN_PASSWORD}\n"))).ok);
    assert!(c.ctl(1, &["volume", "create", "vol", "--node", "2"]).ok);
    assert!(c.ctl(1, &["share", "create", "Data", "--volume", "vol"]).ok);
    let smb = c.node(1).smb.clone();
    wait_for(std::time::Duration::from_secs(10), "the share's volume to exist", || smbclient(&smb, "data", "admin", DRIVEN_PASSWORD, None, "ls").0.then_some(()));
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("in.bin"), vec![7u8; 300_000]).unwrap();
    let (ok, out) = smbclient(&smb, "data", "admin", DRIVEN_PASSWORD, None, &format!("lcd {}; put in.bin; get in.bin out.bin", files.path().display()));
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(files.path().join("out.bin")).unwrap(), vec![7u8; 300_000]);

    // `umbra ctl` without the key, or with another, is refused and says why.
    let (ok, out) = status_with(c.addr(2), None);
    assert!(!ok && out.contains("cluster key"), "{out}");
    let other = keys.path().join("other.key");
    std::fs::write(&other, "00".repeat(32)).unwrap();
    let (ok, out) = status_with(c.addr(2), Some(&other));
    assert!(!ok && out.contains("cluster key"), "{out}");
    let (ok, out) = status_with(c.addr(2), Some(&key_file));
    assert!(ok, "{out}");

    // A plain gRPC client gets the greeting and then nothing: its HTTP/2 preface is no answer.
    let mut s = std::net::TcpStream::connect(c.addr(3)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut hello = [0u8; 24];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"UMBRAK1\0");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the node answered {} bytes", rest.len());
    wait_for(std::time::Duration::from_secs(5), "the refusal in node 3's log", || c.log(3).contains("refused a gRPC connection").then_some(()));
}
