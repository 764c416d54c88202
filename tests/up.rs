//! `umbra up`: a seeded local cluster from one command, stopped by Ctrl-C, reused on restart.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A running `umbra up`: a test that fails before [`interrupt`] still stops it (and with it
/// its nodes, which die with their parent), by its pid.
struct Up(Option<std::process::Child>);

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `umbra up` and returns it with the banner it printed once ready.
fn up(data: &std::path::Path, base: u16, password: Option<&str>) -> (Up, String) {
    let mut cmd = Command::new(UMBRA);
    cmd.args(["up", "--base-port", &base.to_string(), "--data"]).arg(data);
    if let Some(p) = password {
        cmd.args(["--password", p]);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn umbra up");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    for line in lines.by_ref() {
        let line = line.expect("stdout");
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("Ctrl-C stops") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (Up(Some(child)), banner)
}

fn interrupt(mut up: Up) {
    let mut child = up.0.take().expect("running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = wait_for(Duration::from_secs(30), "umbra up to stop", || child.try_wait().unwrap());
    assert!(status.success(), "umbra up exits cleanly on Ctrl-C: {status}");
}

/// A base port whose six ports (B+1..=B+3, B+11..=B+13) are free right now.
fn free_base() -> u16 {
    loop {
        let base = free_port().saturating_sub(20).max(1100);
        let ok = (1..=3).chain(11..=13).all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if ok {
            return base;
        }
    }
}

#[test]
fn umbra_up_starts_a_seeded_three_node_cluster_stops_on_ctrl_c_and_reuses_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("umbra-data");
    let base = free_base();
    let addr = format!("127.0.0.1:{}", base + 1);

    let (child, banner) = up(&data, base, Some("Adm1n-pass"));
    assert!(banner.contains("user admin, password Adm1n-pass"), "{banner}");
    assert!(banner.contains("ctl --addr"), "{banner}");
    assert!(banner.contains("smbclient //127.0.0.1/share"), "{banner}");
    // The cluster holds a key of its own, kept with its data; `umbra ctl` needs it.
    let key_file = data.join("cluster.key");
    assert!(banner.contains(&format!("export UMBRA_CLUSTER_KEY_FILE={}", key_file.canonicalize().unwrap().display())), "{banner}");
    assert!(!ctl_at(&addr, &["status"], None).ok, "no key, no answer");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&data), mode(&key_file), mode(&data.join("node1.toml"))), (0o700, 0o600, 0o600), "only this user reads the key");
    }
    std::env::set_var("UMBRA_CLUSTER_KEY_FILE", &key_file);
    let status = ctl_at(&addr, &["status"], None).json();
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    assert!(status["members"].as_array().unwrap().iter().all(|m| m["answers"] == true && m["role"] == "voter"));
    let volumes = ctl_at(&addr, &["volume", "list"], None).json();
    let owners: Vec<u64> = volumes.as_array().unwrap().iter().map(|v| v["owner"].as_u64().unwrap()).collect();
    assert_eq!(owners.len(), 2);
    assert_ne!(owners[0], owners[1], "the two volumes live on different nodes");
    let shares = ctl_at(&addr, &["share", "list"], None).json();
    assert_eq!(shares.as_array().unwrap().len(), 2);
    assert_eq!(ctl_at(&addr, &["user", "list"], None).json(), serde_json::json!([{"name": "admin", "role": "admin"}]));
    assert!(ctl_at(&addr, &["share", "create", "extra", "--volume", "vol1"], None).ok);
    interrupt(child);
    for id in 1..=3 {
        let log = std::fs::read_to_string(data.join(format!("node{id}.log"))).unwrap();
        assert!(log.contains("stopped"), "node {id} stopped cleanly:\n{log}");
    }
    assert!(!ctl_at(&addr, &["status"], None).ok, "nothing answers after Ctrl-C");

    // Again, without --password: the same data, the kept password, nothing seeded twice.
    let (child, banner) = up(&data, base, None);
    assert!(banner.contains("user admin, password Adm1n-pass"), "{banner}");
    let mut names: Vec<String> = ctl_at(&addr, &["share", "list"], None).json().as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    assert_eq!(names, ["extra", "share1", "share2"]);
    assert_eq!(ctl_at(&addr, &["volume", "list"], None).json().as_array().unwrap().len(), 2);
    interrupt(child);
}
