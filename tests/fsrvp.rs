//! FSRVP end to end: Samba's rpcclient, smbclient and an impacket client against three
//! `umbra node` processes, with a shadow-copy set whose two volumes live on two nodes and
//! the client talking to the third; crashes of the coordinator, a participant and the leader.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const ADMIN: (&str, &str) = ("admin", "S3cret-pw");
const BACKUP: (&str, &str) = ("backup", "B4ckup-pw");

/// A set as `fss_create_expose` printed it.
#[derive(Debug)]
struct Created {
    set: String,
    /// Base share -> shadow copy id.
    copies: BTreeMap<String, String>,
}

impl Created {
    fn exposed(&self, share: &str) -> String {
        format!("{share}@{{{}}}", self.copies[share])
    }
}

fn parse_created(out: &str) -> Option<Created> {
    let set = out.lines().find(|l| l.ends_with("shadow-copy set created"))?.split(':').next()?.to_string();
    let mut copies = BTreeMap::new();
    for l in out.lines().filter(|l| l.contains("shadow-copy added to set")) {
        let copy = l.split_once('(')?.1.split_once(')')?.0.to_string();
        let share = l.split('\\').nth(3)?.to_string();
        copies.insert(share, copy);
    }
    Some(Created { set, copies })
}

/// Three nodes; users admin, backup (backup operator) and joe (plain user); volumes vol1 on
/// `owners.0` and vol2 on `owners.1`; shares s1 and s2 on them.
fn setup(c: &Cluster, owners: (u64, u64)) {
    assert!(ctl_at(c.addr(1), &["user", "add", ADMIN.0, "--role", "admin"], Some(&format!("{}\n", ADMIN.1))).ok);
    assert!(ctl_at(c.addr(1), &["user", "add", BACKUP.0, "--role", "backup"], Some(&format!("{}\n", BACKUP.1))).ok);
    assert!(ctl_at(c.addr(1), &["user", "add", "joe", "--role", "user"], Some("Us3r-pw\n")).ok);
    assert!(c.ctl(1, &["volume", "create", "vol1", "--node", &owners.0.to_string()]).ok);
    assert!(c.ctl(1, &["volume", "create", "vol2", "--node", &owners.1.to_string()]).ok);
    assert!(c.ctl(1, &["share", "create", "s1", "--volume", "vol1"]).ok);
    assert!(c.ctl(1, &["share", "create", "s2", "--volume", "vol2"]).ok);
    for share in ["s1", "s2"] {
        for id in 1..=3 {
            let smb = c.node(id).smb.clone();
            wait_for(Duration::from_secs(15), "the share's volume to exist", || smbclient(&smb, share, ADMIN.0, ADMIN.1, None, "ls").0.then_some(()));
        }
    }
}

fn put(smb: &str, share: &str, name: &str, content: &str) -> (bool, String) {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), content).unwrap();
    smbclient(smb, share, ADMIN.0, ADMIN.1, None, &format!("put {} {name}", tmp.path().display()))
}

fn get(smb: &str, share: &str, name: &str) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("got");
    let (ok, _) = smbclient(smb, share, ADMIN.0, ADMIN.1, None, &format!("get {name} {}", local.display()));
    ok.then(|| std::fs::read(&local).unwrap())
}

fn rpc(c: &Cluster, via: u64, cmd: &str) -> (bool, String) {
    rpcclient(&c.node(via).smb, BACKUP.0, BACKUP.1, cmd)
}

fn shadow_state(c: &Cluster, via: u64) -> serde_json::Value {
    let out = c.ctl(via, &["shadow", "list"]);
    assert!(out.ok, "{}", out.stderr);
    out.json()
}

/// Snapshots the owner of `volume` holds, but for those being reclaimed (already unreadable;
/// their record goes when reclaim finishes).
fn snapshots(c: &Cluster, via: u64, volume: &str) -> Vec<serde_json::Value> {
    let out = c.ctl(via, &["shadow", "snapshots", volume]);
    assert!(out.ok, "{}", out.stderr);
    out.json().as_array().cloned().unwrap_or_default().into_iter().filter(|s| s["state"] != "deleting").collect()
}

#[test]
fn rpcclient_through_a_third_node_creates_exposes_reads_recovers_and_deletes_a_set_across_two_owners() {
    let c = Cluster::start(3, "");
    setup(&c, (1, 2));
    let (n1, n3) = (c.node(1).smb.clone(), c.node(3).smb.clone());
    assert!(put(&n3, "s1", "f.txt", "before-1").0);
    assert!(put(&n3, "s2", "f.txt", "before-2").0);

    let (ok, out) = rpc(&c, 3, "fss_get_sup_version");
    assert!(ok && out.contains("supports FSRVP versions from 1 to 1"), "{out}");
    let (ok, out) = rpc(&c, 3, "fss_is_path_sup s1");
    assert!(ok && out.contains("supports shadow copy requests"), "{out}");
    let (ok, out) = rpc(&c, 3, "fss_has_shadow_copy s1");
    assert!(ok && out.contains("does not have an associated shadow-copy"), "{out}");

    // Writers keep writing to the base shares (through node 1) during the commit.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, n1) = (stop.clone(), n1.clone());
        std::thread::spawn(move || {
            let mut writes = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for share in ["s1", "s2"] {
                    let (ok, out) = put(&n1, share, "w.txt", &format!("during-{writes}"));
                    assert!(ok, "a write during the commit failed: {out}");
                }
                writes += 1;
            }
            writes
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let (ok, out) = rpc(&c, 3, "fss_create_expose backup ro s1 s2");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().expect("the writer never failed");
    assert!(ok, "{out}");
    assert!(writes > 0);
    let created = parse_created(&out).expect("set and copy ids printed");
    assert_eq!(created.copies.len(), 2, "{out}");
    assert!(out.contains(&format!("share {} exposed", created.exposed("s1"))), "{out}");

    assert!(put(&n3, "s1", "f.txt", "after-1").0);
    assert!(put(&n3, "s2", "f.txt", "after-2").0);
    // Each exposed share reads the pre-commit content on every node, at once.
    for id in 1..=3 {
        let smb = c.node(id).smb.clone();
        assert_eq!(get(&smb, &created.exposed("s1"), "f.txt").as_deref(), Some(b"before-1".as_slice()), "node {id}");
        assert_eq!(get(&smb, &created.exposed("s2"), "f.txt").as_deref(), Some(b"before-2".as_slice()), "node {id}");
    }
    assert_eq!(get(&n1, "s1", "f.txt").as_deref(), Some(b"after-1".as_slice()));
    // Previous Versions on the base share: the token lists, and an @GMT path reads the copy.
    let (ok, info) = smbclient(&n3, "s1", ADMIN.0, ADMIN.1, None, "allinfo f.txt");
    let token = info.lines().find(|l| l.starts_with("@GMT-")).map(str::to_string);
    let token = token.unwrap_or_else(|| panic!("FSCTL_SRV_ENUM_SNAPS lists the copy ({ok}): {info}"));
    assert_eq!(get(&n1, "s1", &format!("{token}\\f.txt")).as_deref(), Some(b"before-1".as_slice()));
    let (ok, out) = put(&n1, "s1", &format!("{token}\\new.txt"), "nope");
    assert!(!ok && out.contains("MEDIA_WRITE_PROTECTED"), "{out}");
    let (ok, out) = put(&n1, &created.exposed("s1"), "x.txt", "nope");
    assert!(!ok, "a read-only shadow copy refuses writes: {out}");
    let (ok, out) = rpc(&c, 3, "fss_has_shadow_copy s2");
    assert!(ok && out.contains("has an associated shadow-copy"), "{out}");

    // Several commands in one rpcclient run (each opens the pipe again).
    let (s, c1, c2) = (&created.set, &created.copies["s1"], &created.copies["s2"]);
    let (ok, out) = rpc(&c, 3, &format!("fss_get_mapping s1 {s} {c1}; fss_get_mapping s2 {s} {c2}; fss_delete s1 {s} {c1}; fss_delete s2 {s} {c2}"));
    assert!(ok, "{out}");
    assert!(out.contains(&format!("share {} is a shadow-copy of \\\\UMBRA\\s1", created.exposed("s1"))), "{out}");
    assert_eq!(out.matches("shadow-copy deleted").count(), 2, "{out}");
    let (ok, out) = smbclient(&n1, &created.exposed("s1"), ADMIN.0, ADMIN.1, None, "ls");
    assert!(!ok && out.contains("BAD_NETWORK_NAME"), "{out}");
    wait_for(Duration::from_secs(10), "the owners to drop the deleted snapshots", || (snapshots(&c, 1, "vol1").is_empty() && snapshots(&c, 1, "vol2").is_empty()).then_some(()));

    // Writable (auto-recovery) copy: writes stay in the copy until recovery completes.
    let (ok, out) = rpc(&c, 3, "fss_create_expose app_rollback rw s1 s2");
    assert!(ok, "{out}");
    let rw = parse_created(&out).unwrap();
    assert!(put(&n1, &rw.exposed("s1"), "recovered.txt", "fixed-up").0);
    assert_eq!(get(&n3, &rw.exposed("s1"), "recovered.txt").as_deref(), Some(b"fixed-up".as_slice()));
    assert_eq!(get(&n3, "s1", "recovered.txt"), None, "a write to the copy never reaches the base share");
    let (ok, out) = rpc(&c, 3, &format!("fss_recovery_complete {}", rw.set));
    assert!(ok, "{out}");
    let (ok, out) = put(&n1, &rw.exposed("s1"), "late.txt", "too late");
    assert!(!ok, "after recovery-complete the copy is read-only: {out}");
    assert_eq!(get(&n1, &rw.exposed("s2"), "f.txt").as_deref(), Some(b"after-2".as_slice()));
    for share in ["s1", "s2"] {
        let (ok, out) = rpc(&c, 3, &format!("fss_delete {share} {} {}", rw.set, rw.copies[share]));
        assert!(ok, "{out}");
    }
    assert!(shadow_state(&c, 2)["sets"].as_object().unwrap().is_empty());

    // Only administrators and backup operators may call FSRVP.
    let (ok, out) = rpcclient(&n3, "joe", "Us3r-pw", "fss_get_sup_version");
    assert!(!ok, "{out}");
}

/// Numbers present in a seq.bin (u64 records, 0 = not written).
fn numbers(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).filter(|&n| n != 0).collect()
}

#[test]
fn one_cut_an_alternating_writer_across_two_nodes_never_yields_a_number_without_its_predecessor() {
    let c = Cluster::start(3, "");
    setup(&c, (1, 2));
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let port = c.node(3).smb.rsplit(':').next().unwrap().to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/seq_writer.py");
    let writer = Command::new(venv_python()).arg(&script).args(["127.0.0.1", &port, ADMIN.0, ADMIN.1, "s1", "s2"]).arg(&stop).stdout(std::process::Stdio::piped()).spawn().expect("python runs");
    let n1 = c.node(1).smb.clone();
    wait_for(Duration::from_secs(20), "the writer to start", || get(&n1, "s2", "seq.bin").filter(|b| !numbers(b).is_empty()));
    let mut cuts = Vec::new();
    for round in 0..6 {
        let (ok, out) = rpc(&c, 2, "fss_create_expose backup ro s1 s2");
        assert!(ok, "round {round}: {out}");
        let set = parse_created(&out).unwrap();
        let a = numbers(&get(&n1, &set.exposed("s1"), "seq.bin").expect("copy of s1"));
        let b = numbers(&get(&n1, &set.exposed("s2"), "seq.bin").expect("copy of s2"));
        let mut all: Vec<u64> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        let m = all.len() as u64;
        assert!(all.iter().copied().eq(1..=m), "round {round}: the set holds {:?} .. {:?} with gaps (s1 {} numbers, s2 {})", all.first(), all.last(), a.len(), b.len());
        assert!(a.iter().all(|n| n % 2 == 1) && b.iter().all(|n| n % 2 == 0));
        cuts.push(m);
        for share in ["s1", "s2"] {
            assert!(rpc(&c, 2, &format!("fss_delete {share} {} {}", set.set, set.copies[share])).0);
        }
    }
    std::fs::write(&stop, b"").unwrap();
    let out = writer.wait_with_output().unwrap();
    assert!(out.status.success(), "the writer failed");
    let total: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(cuts.windows(2).all(|w| w[0] <= w[1]) && *cuts.last().unwrap() < total, "cuts {cuts:?} of {total} writes");
    assert!(cuts.windows(2).any(|w| w[0] < w[1]), "the writer kept writing between sets: {cuts:?}");
}

#[test]
fn every_result_code_through_impacket_including_the_one_second_timer_and_a_caller_without_rights() {
    let c = Cluster::start(3, "");
    setup(&c, (1, 2));
    let port = c.node(3).smb.rsplit(':').next().unwrap().to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/fsrvp_codes.py");
    let codes = |scenarios: &[&str]| {
        let mut cmd = Command::new(venv_python());
        cmd.arg(&script)
            .args(["--host", "127.0.0.1", "--port", &port, "--user", BACKUP.0, "--password", BACKUP.1, "--share", "s1", "--share2", "s2"])
            .args(["--denied-user", "joe", "--denied-password", "Us3r-pw", "--timer-seconds", "1", "--server", "umbra"])
            .args(scenarios);
        let out = cmd.output().expect("python runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("fsrvp_codes:") && text.contains(" 0 failed"), "{text}");
        text.lines().filter(|l| l.starts_with("PASS")).count()
    };
    // The scenarios that wait out the sequence timer run first, with a one-second timer; the
    // others then under the protocol's, so that no step of theirs races a one-second expiry on
    // a loaded machine (a commit that timed out once went on to find its set expired).
    let timed = ["start_without_context", "timer"];
    assert!(c.ctl(2, &["shadow", "timeout", "1"]).ok);
    let mut passed = codes(&[&["--only"], &timed[..]].concat());
    assert!(c.ctl(2, &["shadow", "timeout", "default"]).ok);
    passed += codes(&[&["--skip"], &timed[..]].concat());
    assert!(passed >= 150, "{passed} checks passed");
    // The timer's one setting went back to the protocol's values with `default`.
    assert!(shadow_state(&c, 3)["timeout_s"].is_null());
}

/// Every set's state, as node `id` reads it.
fn set_states(c: &Cluster, id: u64) -> Vec<String> {
    shadow_state(c, id)["sets"].as_object().unwrap().values().map(|s| s["state"].as_str().unwrap().to_string()).collect()
}

/// Starts three nodes with the coordinator test pause on every node.
fn cluster_with_pause(phase: &str, ms: u64) -> Cluster {
    let mut c = Cluster::prepare(3, "");
    let pause = format!("{phase}:{ms}");
    for id in 1..=3 {
        c.start_node_with_env(id, &[("UMBRA_TEST_COMMIT_PAUSE", &pause)]);
    }
    c.wait_voters(3);
    c
}

/// The set ends aborted everywhere: every node drops it (its attempt passed its deadline with
/// no decision, or its coordinator reported the failure and the client aborted it), and no
/// owner keeps a snapshot.
fn assert_aborted_and_clean(c: &Cluster, alive: &[u64]) {
    for &id in alive {
        wait_for(Duration::from_secs(30), "the set to be aborted on every node", || {
            let st = shadow_state(c, id);
            st["sets"].as_object().unwrap().is_empty().then_some(())
        });
    }
    wait_for(Duration::from_secs(30), "every tentative snapshot to be gone", || (snapshots(c, alive[0], "vol1").is_empty() && snapshots(c, alive[0], "vol2").is_empty()).then_some(()));
}

fn spawn_create(c: &Cluster, via: u64) -> std::thread::JoinHandle<(bool, String)> {
    let smb = c.node(via).smb.clone();
    std::thread::spawn(move || rpcclient(&smb, BACKUP.0, BACKUP.1, "fss_create_expose backup ro s1 s2"))
}

fn wait_paused(c: &Cluster, id: u64) {
    wait_for(Duration::from_secs(20), "the coordinator to pause", || c.log(id).contains("test pause: commit paused").then_some(()));
}

#[test]
fn kill9_of_the_coordinator_between_fence_and_release_aborts_the_set_everywhere_and_leaves_nothing() {
    for phase in ["begun", "fenced", "released"] {
        let mut c = cluster_with_pause(phase, 4000);
        setup(&c, (1, 2));
        let client = spawn_create(&c, 3);
        wait_paused(&c, 3);
        let killed = Instant::now();
        c.kill9(3);
        let (ok, out) = client.join().unwrap();
        assert!(!ok, "{phase}: the client sees the failure: {out}");
        // A fence never outlives its TTL (5 s): a write on each volume passes soon after.
        let n1 = c.node(1).smb.clone();
        assert!(put(&n1, "s1", "after.txt", "x").0 && put(&n1, "s2", "after.txt", "x").0);
        assert!(killed.elapsed() < Duration::from_secs(12), "{phase}: writes waited {:?}", killed.elapsed());
        assert_aborted_and_clean(&c, &[1, 2]);
        // The cluster goes on: the restarted node coordinates a new set (pause and all).
        c.start_node(3);
        c.wait_up(3);
        let (ok, out) = rpc(&c, 3, "fss_create_expose backup ro s1 s2");
        assert!(ok, "{phase}: {out}");
    }
}

#[test]
fn kill9_of_a_participant_owner_mid_commit_aborts_and_its_snapshot_goes_after_restart() {
    let mut c = cluster_with_pause("fenced", 3000);
    setup(&c, (1, 2));
    let client = spawn_create(&c, 3);
    wait_paused(&c, 3);
    // Node 2 has fenced vol2 and holds a tentative snapshot: it dies with it.
    c.kill9(2);
    let (ok, out) = client.join().unwrap();
    assert!(!ok && out.contains("CommitShadowCopySet failed"), "the client gets a clear commit failure: {out}");
    assert!(snapshots(&c, 1, "vol1").is_empty(), "vol1's tentative snapshot is deleted at once");
    c.start_node(2);
    c.wait_up(2);
    assert_aborted_and_clean(&c, &[1, 2, 3]);
}

#[test]
fn kill9_of_the_raft_leader_mid_commit_still_ends_in_one_decision_and_sets_survive_restarts() {
    let mut c = cluster_with_pause("fenced", 2000);
    let leader = wait_for(Duration::from_secs(10), "a leader", || c.agreed_leader(&[1, 2, 3]));
    let others: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    setup(&c, (others[0], others[1]));
    let client = spawn_create(&c, others[0]);
    wait_paused(&c, others[0]);
    c.kill9(leader);
    let (ok, out) = client.join().unwrap();
    // Either way, one decision everywhere.
    let a = wait_for(Duration::from_secs(30), "the survivors to agree", || {
        let (x, y) = (set_states(&c, others[0]), set_states(&c, others[1]));
        (x == y).then_some(x)
    });
    if ok {
        assert_eq!(a, vec!["Exposed".to_string()], "{out}");
        let created = parse_created(&out).unwrap();
        let smb = c.node(others[1]).smb.clone();
        assert!(get(&smb, &created.exposed("s1"), "missing").is_none());
        assert!(smbclient(&smb, &created.exposed("s2"), ADMIN.0, ADMIN.1, None, "ls").0);
    } else {
        assert_aborted_and_clean(&c, &others);
    }
    // The old leader comes back and agrees; a restart of everything keeps the sets.
    c.start_node(leader);
    c.wait_up(leader);
    wait_for(Duration::from_secs(30), "the old leader to catch up", || (set_states(&c, leader) == a).then_some(()));
    for id in 1..=3 {
        c.stop(id);
    }
    for id in 1..=3 {
        c.start_node(id);
    }
    c.wait_voters(3);
    for id in 1..=3 {
        wait_for(Duration::from_secs(30), "the sets after a restart", || (set_states(&c, id) == a).then_some(()));
    }
}
