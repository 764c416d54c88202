//! The cluster foundation end to end: real `umbra node` processes on loopback, real RocksDB,
//! driven by the real `umbra ctl`.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn three_nodes_elect_one_leader_and_every_node_reads_what_any_node_wrote() {
    let c = Cluster::start(3, "");
    let leader = wait_for(Duration::from_secs(10), "all nodes to agree on a leader", || c.agreed_leader(&[1, 2, 3]));
    let states: Vec<String> = (1..=3).map(|id| c.status(id).unwrap()["asked"]["state"].as_str().unwrap().to_string()).collect();
    assert_eq!(states.iter().filter(|s| *s == "leader").count(), 1, "exactly one leader: {states:?}");
    assert_eq!(states[(leader - 1) as usize], "leader");

    // One write through each node, leader and followers alike.
    assert!(c.ctl(1, &["volume", "create", "vol1", "--node", "1"]).ok);
    assert!(c.ctl(2, &["volume", "create", "vol2", "--node", "2"]).ok);
    assert!(c.ctl(3, &["share", "create", "Backups", "--volume", "vol2", "--path", "/vm/backups"]).ok);
    let user = ctl_at(c.addr(2), &["user", "add", "backupop", "--role", "backup"], Some("S3cret!\n"));
    assert!(user.ok, "{}", user.stderr);

    // A forwarding follower answers only after applying: every node reads it right away.
    for via in 1..=3 {
        assert_eq!(c.names(via, "volume"), ["vol1", "vol2"], "volumes via node {via}");
        assert_eq!(c.names(via, "share"), ["Backups"], "shares via node {via}");
        assert_eq!(c.names(via, "user"), ["backupop"], "users via node {via}");
    }
    let share = &c.ctl(1, &["share", "list"]).json()[0];
    assert_eq!(share["path"], "/vm/backups");
    assert_eq!(share["read_only"], false);

    // Status reports every member answering, with committed and applied indexes.
    let s = c.status(3).unwrap();
    assert_eq!(s["leader"].as_u64(), Some(leader));
    for m in s["members"].as_array().unwrap() {
        assert_eq!(m["answers"], true);
        assert_eq!(m["role"], "voter");
        assert!(m["status"]["committed_index"].as_u64().unwrap() >= 4);
    }
}

#[test]
fn kill9_of_the_leader_elects_a_new_one_and_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, "");
    let leader = wait_for(Duration::from_secs(10), "a leader", || c.agreed_leader(&[1, 2, 3]));
    assert!(c.ctl(leader, &["volume", "create", "vol", "--node", "1"]).ok);
    let mut acked = Vec::new();
    for i in 0..20 {
        let name = format!("share{i}");
        let via = 1 + (i % 3);
        let out = c.ctl(via, &["share", "create", &name, "--volume", "vol"]);
        assert!(out.ok, "{}", out.stderr);
        acked.push(name);
    }

    let killed_at = Instant::now();
    c.kill9(leader);
    let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let new_leader = wait_for(Duration::from_secs(10), "a new leader", || c.agreed_leader(&others).filter(|&l| l != leader));
    let failover = killed_at.elapsed();
    eprintln!("failover took {failover:?} (election timeout at most {ELECTION_TIMEOUT_MAX:?})");
    assert!(failover < ELECTION_TIMEOUT_MAX * 8, "a new leader within a few election timeouts, took {failover:?}");

    acked.sort();
    for &id in &others {
        assert_eq!(c.names(id, "share"), acked, "acknowledged shares on node {id} after failover");
    }
    // The survivors keep accepting writes.
    assert!(c.ctl(new_leader, &["share", "create", "after", "--volume", "vol"]).ok);

    // The killed node restarts from its own RocksDB and catches up.
    c.start_node(leader);
    let target = c.applied(new_leader).unwrap();
    wait_for(Duration::from_secs(30), "the restarted node to catch up", || (c.applied(leader)? >= target).then_some(()));
    acked.push("after".into());
    acked.sort();
    assert_eq!(c.names(leader, "share"), acked);
    assert!(c.log(leader).contains("rejoining the cluster recorded in the data directory"));
}

#[test]
fn a_node_that_missed_a_log_compaction_catches_up_by_snapshot_install() {
    let mut c = Cluster::start(3, "snapshot_every_entries = 20\nkeep_entries_after_snapshot = 0\n");
    let leader = wait_for(Duration::from_secs(10), "a leader", || c.agreed_leader(&[1, 2, 3]));
    let lagger = (1..=3).find(|&id| id != leader).unwrap();
    assert!(c.ctl(leader, &["volume", "create", "vol", "--node", &leader.to_string()]).ok);
    c.stop(lagger);
    let behind = c.applied(leader).unwrap();

    for i in 0..60 {
        assert!(c.ctl(leader, &["share", "create", &format!("s{i}"), "--volume", "vol"]).ok);
    }
    let purged = wait_for(Duration::from_secs(20), "the leader to purge its log", || {
        let p = c.status(leader)?["asked"]["purged_index"].as_u64()?;
        (p > behind + 1).then_some(p)
    });
    eprintln!("node {lagger} stopped at index {behind}; leader purged up to {purged}");

    c.start_node(lagger);
    let target = c.applied(leader).unwrap();
    wait_for(Duration::from_secs(30), "the lagging node to catch up", || (c.applied(lagger)? >= target).then_some(()));
    let s = c.status(lagger).unwrap();
    let snapshot = s["asked"]["snapshot_index"].as_u64().expect("the lagging node holds a snapshot");
    assert!(snapshot > behind, "its snapshot ({snapshot}) covers entries it never received as log ({behind}..)");
    assert!(c.log(lagger).contains("installed snapshot"), "node {lagger} installed a snapshot");
    assert_eq!(c.names(lagger, "share").len(), 60);
}

#[test]
fn sigterm_while_a_node_is_still_joining_stops_it() {
    // Node 2 joins through node 1, which is not running: it keeps retrying until the signal.
    let mut c = Cluster::prepare(2, "");
    c.start_node(2);
    wait_for(Duration::from_secs(10), "node 2 to retry its join", || c.log(2).contains("join failed; retrying").then_some(()));
    c.stop(2);
}

#[test]
fn without_quorum_a_write_fails_clearly_in_bounded_time_and_works_once_quorum_returns() {
    let mut c = Cluster::start(3, "");
    assert!(c.ctl(1, &["volume", "create", "vol", "--node", "1"]).ok);
    c.stop(2);
    c.stop(3);

    let started = Instant::now();
    let out = c.ctl(1, &["share", "create", "lost", "--volume", "vol"]);
    let took = started.elapsed();
    assert!(!out.ok, "a write without quorum must fail");
    assert!(out.stderr.contains("no quorum") || out.stderr.contains("no leader"), "clear error, got: {}", out.stderr);
    assert!(took < Duration::from_secs(10), "bounded wait (request timeout 3 s), took {took:?}");
    let read = c.ctl(1, &["share", "list"]);
    assert!(!read.ok && (read.stderr.contains("no quorum") || read.stderr.contains("no leader")), "a linearizable read needs quorum too: {}", read.stderr);

    c.start_node(2);
    let out = wait_for(Duration::from_secs(30), "a write to succeed once quorum returns", || {
        let out = c.ctl(1, &["share", "create", "back", "--volume", "vol"]);
        if out.ok || out.stderr.contains("already exists") {
            Some(out)
        } else {
            None
        }
    });
    let _ = out;
    let shares = c.names(2, "share");
    assert!(shares.contains(&"back".to_string()), "{shares:?}");
}

#[test]
fn duplicate_share_unknown_volume_and_bad_names_are_refused_and_change_nothing() {
    let c = Cluster::start(3, "");
    assert!(c.ctl(1, &["volume", "create", "vol", "--node", "2"]).ok);
    assert!(c.ctl(1, &["share", "create", "Data", "--volume", "vol"]).ok);
    let before_shares = c.ctl(2, &["share", "list"]).json();
    let before_volumes = c.ctl(2, &["volume", "list"]).json();

    let refusals: &[(&[&str], &str)] = &[
        (&["share", "create", "DATA", "--volume", "vol"], "already exists"),
        (&["share", "create", "other", "--volume", "nope"], "volume \"nope\" does not exist"),
        (&["share", "create", "a*b", "--volume", "vol"], "invalid share name"),
        (&["share", "create", "IPC$", "--volume", "vol"], "reserved"),
        (&["share", "create", "x", "--volume", "vol", "--path", "/a/../b"], "invalid path"),
        (&["volume", "create", "VOL", "--node", "1"], "already exists"),
        (&["volume", "create", "v2", "--node", "9"], "node 9 is not a member"),
        (&["share", "delete", "missing"], "does not exist"),
    ];
    for (args, expect) in refusals {
        for via in [1, 3] {
            let out = c.ctl(via, args);
            assert!(!out.ok, "{args:?} must fail");
            assert!(out.stderr.contains(expect), "{args:?} via {via}: expected {expect:?} in {:?}", out.stderr);
        }
    }
    assert_eq!(c.ctl(2, &["share", "list"]).json(), before_shares);
    assert_eq!(c.ctl(2, &["volume", "list"]).json(), before_volumes);
}

#[test]
fn garbage_on_the_grpc_port_is_refused_and_the_node_keeps_serving() {
    use std::io::{Read, Write};
    let c = Cluster::start(3, "");
    assert!(c.ctl(1, &["volume", "create", "vol", "--node", "1"]).ok);
    // Node 2 may not have applied the write node 1 answered yet: wait until it has.
    let before = wait_for(Duration::from_secs(10), "node 2 to catch up", || {
        let (one, two) = (c.applied(1)?, c.applied(2)?);
        (one == two).then_some(two)
    });
    let payloads: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0u8; 64 * 1024],
        (0..=255u8).cycle().take(100_000).collect(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\x04\x00\x00\x00\x00\x00".to_vec(),
    ];
    for p in payloads {
        let mut s = std::net::TcpStream::connect(c.addr(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&p);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    let s = c.status(2).expect("node 2 still answers");
    assert_eq!(s["asked"]["applied_index"].as_u64(), Some(before), "garbage changed nothing");
    assert!(c.ctl(2, &["share", "create", "still", "--volume", "vol"]).ok);
}

#[test]
fn malformed_raft_and_admin_payloads_get_invalid_argument() {
    let c = Cluster::start(1, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addr(1))).unwrap().connect().await.unwrap();
        let mut raft = umbra_proto::v1::raft_client::RaftClient::new(ch.clone());
        let mut admin = umbra_proto::v1::admin_client::AdminClient::new(ch);
        for junk in [b"".to_vec(), b"{".to_vec(), b"[1,2]".to_vec(), vec![0xff; 1000]] {
            let e = raft.append_entries(umbra_proto::v1::RaftPayload { json: junk.clone() }).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            let e = raft.vote(umbra_proto::v1::RaftPayload { json: junk.clone() }).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            let e = admin.write(umbra_proto::v1::WriteRequest { json: junk.clone(), forwarded: false }).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            let e = admin.query(umbra_proto::v1::QueryRequest { json: junk }).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
        }
        let e = admin
            .add_node(umbra_proto::v1::AddNodeRequest { node_id: 5, grpc_addr: "nowhere".into(), smb_addr: "x".into(), voter: true, forwarded: false })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // A request past the admin service's bound is refused before it is read whole.
        let huge = format!("{{\"CreateShare\":{{\"name\":\"{}\"}}}}", "x".repeat(umbra_node::admin::MAX_ADMIN_REQUEST_BYTES));
        let e = admin.write(umbra_proto::v1::WriteRequest { json: huge.into_bytes(), forwarded: false }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    });
    assert_eq!(c.status(1).unwrap()["asked"]["members"].as_array().unwrap().len(), 1);
}

#[test]
fn a_malformed_config_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("id = 1\ndata_dir = \"d\"\ngrpc_addr = \"127.0.0.1:1\"\nsmb_addr = [", "not valid"),
        ("id = 0\ndata_dir = \"d\"\ngrpc_addr = \"127.0.0.1:1\"\nsmb_addr = \"127.0.0.1:2\"\n", "id must be at least 1"),
        ("id = 1\ndata_dir = \"d\"\ngrpc_addr = \"localhost\"\nsmb_addr = \"127.0.0.1:2\"\n", "grpc_addr"),
        ("id = 1\ndata_dir = \"d\"\ngrpc_addr = \"127.0.0.1:1\"\nsmb_addr = \"127.0.0.1:2\"\nsurprise = 1\n", "unknown field `surprise`"),
        ("data_dir = \"d\"\ngrpc_addr = \"127.0.0.1:1\"\nsmb_addr = \"127.0.0.1:2\"\n", "missing field `id`"),
        ("\u{0}\u{1}binary", "not valid"),
    ];
    for (i, (text, expect)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(UMBRA).arg("node").arg("--config").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "config {i} must be refused");
        assert!(stderr.contains(expect), "config {i}: expected {expect:?} in {stderr:?}");
        assert!(!dir.path().join("d").exists(), "a refused config creates nothing");
    }
    let out = std::process::Command::new(UMBRA).args(["node", "--config", "/nonexistent/umbra.toml"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file /nonexistent/umbra.toml"));
}

#[test]
fn user_passwords_never_reach_the_disk_only_their_nt_hash() {
    let mut c = Cluster::start(3, "");
    let password = "Correct-Horse-Battery-42";
    let out = ctl_at(c.addr(3), &["user", "add", "Operator", "--role", "admin"], Some(&format!("{password}\n")));
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.json(), serde_json::json!({"kind": "user", "value": {"name": "Operator", "role": "admin"}}));
    let users = c.ctl(1, &["user", "list"]).json();
    assert_eq!(users, serde_json::json!([{"name": "Operator", "role": "admin"}]), "listing shows no hash");
    let empty = ctl_at(c.addr(1), &["user", "add", "nopass", "--role", "user"], Some("\n"));
    assert!(!empty.ok && empty.stderr.contains("empty password"));

    for id in 1..=3 {
        c.stop(id);
    }
    // MD4(UTF-16LE(password)), as MS-NLMP defines the NT hash, in the hex the store keeps.
    let hash: String = umbra_raft::command::NtHash::from_password(password).0.iter().map(|b| format!("{b:02x}")).collect();
    let mut saw_hash = false;
    for id in 1..=3 {
        for f in files_under(&c.data_dir(id)) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(!contains(&bytes, password.as_bytes()), "{} holds the plaintext password", f.display());
            let utf16: Vec<u8> = password.encode_utf16().flat_map(u16::to_le_bytes).collect();
            assert!(!contains(&bytes, &utf16), "{} holds the UTF-16 password", f.display());
            saw_hash |= contains(&bytes, hash.as_bytes());
        }
    }
    assert!(saw_hash, "the NT hash {hash} is stored");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn nodes_are_added_as_learners_promoted_to_voters_and_removed() {
    let mut c = Cluster::prepare(4, "");
    for id in 1..=3 {
        c.start_node(id);
    }
    c.wait_voters(3);
    assert!(c.ctl(2, &["volume", "create", "vol", "--node", "1"]).ok);

    // Node 4 runs with neither bootstrap nor join: it waits to be added.
    let cfg = std::fs::read_to_string(&c.node(4).config).unwrap();
    let cfg: String = cfg.lines().filter(|l| !l.starts_with("join")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&c.node(4).config, cfg).unwrap();
    c.start_node(4);
    c.wait_up(4);
    let (grpc, smb) = (c.node(4).grpc.clone(), c.node(4).smb.clone());
    let learner = c.ctl(2, &["node", "add", "4", "--grpc", &grpc, "--smb", &smb, "--learner"]);
    assert!(learner.ok, "{}", learner.stderr);
    let roles = |v: &serde_json::Value| -> Vec<(u64, String)> {
        v["members"].as_array().unwrap().iter().map(|m| (m["id"].as_u64().unwrap(), m["role"].as_str().unwrap().to_string())).collect()
    };
    assert!(roles(&learner.json()).contains(&(4, "learner".into())));
    // The same node with other addresses is refused: Raft would keep the first ones.
    let other = c.ctl(2, &["node", "add", "4", "--grpc", "127.0.0.1:1", "--smb", &smb, "--learner"]);
    assert!(!other.ok && other.stderr.contains("already a member"), "{}", other.stderr);
    let voter = c.ctl(3, &["node", "add", "4", "--grpc", &grpc, "--smb", &smb]);
    assert!(voter.ok, "{}", voter.stderr);
    assert!(roles(&voter.json()).contains(&(4, "voter".into())));
    c.wait_voters(4);
    assert_eq!(c.names(4, "volume"), ["vol"], "the new node has the metadata");

    let removed = c.ctl(4, &["node", "remove", "4"]);
    assert!(removed.ok, "{}", removed.stderr);
    wait_for(Duration::from_secs(10), "node 4 to leave the membership", || {
        let s = c.status(1)?;
        (s["asked"]["members"].as_array()?.len() == 3).then_some(())
    });
    assert!(c.ctl(1, &["share", "create", "s", "--volume", "vol"]).ok, "three voters still make quorum");
}

/// Sends one `Request` (fixed request id) to `addr` over gRPC and returns the state machine's answer.
fn send_request(addr: &str, request: &umbra_raft::command::Request) -> Result<umbra_raft::command::Response, tonic::Status> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut admin = umbra_proto::v1::admin_client::AdminClient::new(ch);
        let json = serde_json::to_vec(request).unwrap();
        let reply = admin.write(umbra_proto::v1::WriteRequest { json, forwarded: false }).await?.into_inner();
        Ok(serde_json::from_slice(&reply.json).unwrap())
    })
}

#[test]
fn a_retried_request_applies_once_across_a_leader_change_and_a_restart() {
    use umbra_raft::command::{Applied, Command, Request};
    let mut c = Cluster::start(3, "");
    let leader = wait_for(Duration::from_secs(10), "a leader", || c.agreed_leader(&[1, 2, 3]));
    assert!(c.ctl(leader, &["volume", "create", "vol", "--node", "1"]).ok);
    let request = Request::new(Command::CreateShare { name: "Once".into(), volume: "vol".into(), path: "/".into(), read_only: false });
    let first = send_request(c.addr(leader), &request).expect("first attempt");
    assert!(matches!(first, Ok(Applied::Share(_))), "{first:?}");

    // The client never saw that answer (say): it retries the same request after the leader died.
    c.kill9(leader);
    let other = (1..=3).find(|&id| id != leader).unwrap();
    let retry = wait_for(Duration::from_secs(15), "the retry to be answered", || send_request(c.addr(other), &request).ok());
    assert_eq!(retry, first, "the retry gets the first answer, not 'already exists'");

    // The dedupe table is durable: the restarted node answers the same from its RocksDB.
    c.start_node(leader);
    let target = c.applied(other).unwrap();
    wait_for(Duration::from_secs(30), "the restarted node to catch up", || (c.applied(leader)? >= target).then_some(()));
    assert_eq!(send_request(c.addr(leader), &request).unwrap(), first);
    assert_eq!(c.names(leader, "share"), ["Once"]);

    // A new request for the same name is a different command: refused.
    let again = Request::new(Command::CreateShare { name: "ONCE".into(), volume: "vol".into(), path: "/".into(), read_only: false });
    assert!(matches!(send_request(c.addr(other), &again).unwrap(), Err(umbra_raft::command::MetaError::AlreadyExists { .. })));
}

#[test]
fn concurrent_creates_of_one_name_through_every_node_admit_exactly_one() {
    let c = Cluster::start(3, "");
    assert!(c.ctl(1, &["volume", "create", "vol", "--node", "3"]).ok);
    let results: Vec<Ctl> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..9)
            .map(|i| {
                let addr = c.addr(1 + (i % 3)).to_string();
                let name = if i % 2 == 0 { "Race" } else { "RACE" };
                s.spawn(move || ctl_at(&addr, &["share", "create", name, "--volume", "vol"], None))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won = results.iter().filter(|r| r.ok).count();
    assert_eq!(won, 1, "exactly one create wins: {:?}", results.iter().map(|r| &r.stderr).collect::<Vec<_>>());
    for r in results.iter().filter(|r| !r.ok) {
        assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    }
    for via in 1..=3 {
        assert_eq!(c.names(via, "share").len(), 1);
    }
}
