//! Test harness: real `umbra node` processes on loopback, driven through `umbra ctl --json`.
//! Every process is started here and stopped by its pid; `Drop` kills what is left.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const UMBRA: &str = env!("CARGO_BIN_EXE_umbra");

/// Raft timing for tests: short enough for quick failovers, long enough for 2 busy cores.
pub const TUNING: &str = "[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 400\nelection_timeout_max_ms = 800\nrequest_timeout_ms = 3000\n";
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(800);

/// A port that was free a moment ago on 127.0.0.1, never handed out twice by this process.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        let mut given = GIVEN.lock().expect("port list");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub struct TestNode {
    pub id: u64,
    pub grpc: String,
    pub smb: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
}

pub struct Ctl {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    pub fn json(&self) -> Value {
        assert!(self.ok, "ctl failed: {}", self.stderr);
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("ctl printed no JSON ({e}): {}", self.stdout))
    }
}

fn ctl_output(out: Output) -> Ctl {
    Ctl { ok: out.status.success(), stdout: String::from_utf8_lossy(&out.stdout).into(), stderr: String::from_utf8_lossy(&out.stderr).into() }
}

/// Runs `umbra ctl --addr ADDR --json ARGS...` with `stdin` as its standard input.
pub fn ctl_at(addr: &str, args: &[&str], stdin: Option<&str>) -> Ctl {
    use std::io::Write;
    let mut child = Command::new(UMBRA)
        .args(["ctl", "--addr", addr, "--json"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn umbra ctl");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    ctl_output(child.wait_with_output().expect("umbra ctl output"))
}

/// Polls `f` until it returns Some, or panics after `timeout` naming `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// `n` nodes: node 1 bootstraps, the others join through it; waits until all are voters.
    pub fn start(n: u64, extra_toml: &str) -> Cluster {
        let mut c = Cluster::prepare(n, extra_toml);
        for id in 1..=n {
            c.start_node(id);
        }
        c.wait_voters(n as usize);
        c
    }

    /// Writes configs for `n` nodes without starting them.
    pub fn prepare(n: u64, extra_toml: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes: Vec<TestNode> = Vec::new();
        for id in 1..=n {
            let grpc = format!("127.0.0.1:{}", free_port());
            let smb = format!("127.0.0.1:{}", free_port());
            let start = match nodes.first() {
                None => "bootstrap = true".to_string(),
                Some(first) => format!("join = [\"{}\"]", first.grpc),
            };
            let config = dir.path().join(format!("node{id}.toml"));
            let data = dir.path().join(format!("node{id}"));
            let text = format!("id = {id}\ndata_dir = \"{}\"\ngrpc_addr = \"{grpc}\"\nsmb_addr = \"{smb}\"\n{start}\n{TUNING}{extra_toml}", data.display());
            std::fs::write(&config, text).expect("write config");
            let log = dir.path().join(format!("node{id}.log"));
            nodes.push(TestNode { id, grpc, smb, config, log, child: None });
        }
        Cluster { dir, nodes }
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[(id - 1) as usize]
    }

    pub fn addr(&self, id: u64) -> &str {
        &self.node(id).grpc
    }

    pub fn start_node(&mut self, id: u64) {
        self.start_node_with_env(id, &[]);
    }

    /// Starts node `id` with extra environment variables (test-only switches).
    pub fn start_node_with_env(&mut self, id: u64, env: &[(&str, &str)]) {
        let node = &mut self.nodes[(id - 1) as usize];
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).expect("open log");
        let child = Command::new(UMBRA)
            .args(["node", "--config"])
            .arg(&node.config)
            .env("UMBRA_LOG", "info,openraft=info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn umbra node");
        node.child = Some(child);
    }

    /// Waits until node `id` answers `status`.
    pub fn wait_up(&self, id: u64) {
        wait_for(Duration::from_secs(30), "the node to answer", || self.status(id).map(|_| ()));
    }

    /// SIGKILL: process death, nothing flushed on the way out.
    pub fn kill9(&mut self, id: u64) {
        let mut child = self.nodes[(id - 1) as usize].child.take().expect("node is running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// SIGSTOP (`true`) or SIGCONT: node `id` stops running without losing anything, as a
    /// process the machine does not schedule for a while, then goes on.
    pub fn pause(&self, id: u64, paused: bool) {
        let child = self.nodes[(id - 1) as usize].child.as_ref().expect("node is running");
        let signal = if paused { nix::sys::signal::Signal::SIGSTOP } else { nix::sys::signal::Signal::SIGCONT };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).expect("SIGSTOP or SIGCONT");
    }

    /// SIGTERM, and the node must exit cleanly.
    pub fn stop(&mut self, id: u64) {
        let mut child = self.nodes[(id - 1) as usize].child.take().expect("node is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                // Never leave the process behind a failed test.
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {id} did not exit within 15 s of SIGTERM (killed); log:\n{}", self.log(id));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "node {id} exited with {status} after SIGTERM; log:\n{}", self.log(id));
    }

    /// Whether node `id` still runs, with its config and log, for failure messages.
    pub fn describe(&self, id: u64) -> String {
        let node = self.node(id);
        let state = match node.child.as_ref().map(|c| c.id()) {
            Some(pid) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Ok(stat) => format!("pid {pid}: {}", stat.split(' ').nth(2).unwrap_or("?")),
                Err(_) => format!("pid {pid}: gone"),
            },
            None => "not started".into(),
        };
        let config = std::fs::read_to_string(&node.config).unwrap_or_default();
        format!("node {id} ({state})\nconfig:\n{config}\nlog:\n{}", self.log(id))
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    pub fn ctl(&self, via: u64, args: &[&str]) -> Ctl {
        ctl_at(self.addr(via), args, None)
    }

    /// `ctl status --json` as seen from `via`, if it answers.
    pub fn status(&self, via: u64) -> Option<Value> {
        let out = self.ctl(via, &["status"]);
        out.ok.then(|| out.json())
    }

    /// The leader every answering node agrees on, once there is one.
    pub fn agreed_leader(&self, among: &[u64]) -> Option<u64> {
        let leaders: Vec<Option<u64>> = among.iter().map(|&id| self.status(id).and_then(|s| s["asked"]["leader"].as_u64())).collect();
        let first = leaders.first().copied().flatten()?;
        leaders.iter().all(|l| *l == Some(first)).then_some(first)
    }

    pub fn wait_voters(&self, n: usize) {
        wait_for(Duration::from_secs(60), "every node to be a voter under one leader", || {
            let s = self.status(1)?;
            let voters = s["asked"]["members"].as_array()?.iter().filter(|m| m["role"] == "voter").count();
            (voters == n && s["asked"]["leader"].is_u64()).then_some(())
        });
    }

    /// Applied index of node `id`, from its own status.
    pub fn applied(&self, id: u64) -> Option<u64> {
        self.status(id)?["asked"]["applied_index"].as_u64()
    }

    /// Sorted names in a `ctl <kind> list` from `via`.
    pub fn names(&self, via: u64, kind: &str) -> Vec<String> {
        let out = self.ctl(via, &[kind, "list"]);
        assert!(out.ok, "ctl {kind} list via node {via} failed: {}\n{}", out.stderr, self.describe(via));
        let v = out.json();
        let mut names: Vec<String> = v.as_array().expect("a list").iter().map(|x| x["name"].as_str().expect("name").to_string()).collect();
        names.sort();
        names
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Every file under `dir`, for byte-level checks of what reached the disk.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Runs `smbclient //127.0.0.1/SHARE -p PORT -U USER%PASS [-m DIALECT] -c CMD`.
pub fn smbclient(smb_addr: &str, share: &str, user: &str, password: &str, dialect: Option<&str>, cmd: &str) -> (bool, String) {
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

/// Runs `rpcclient -p PORT -U USER%PASS 127.0.0.1 -c CMD` (FSRVP's fss_* commands).
pub fn rpcclient(smb_addr: &str, user: &str, password: &str, cmd: &str) -> (bool, String) {
    let port = smb_addr.rsplit(':').next().unwrap();
    let out = Command::new("rpcclient").args(["-p", port, "-U", &format!("{user}%{password}"), "127.0.0.1", "-c", cmd]).output().expect("rpcclient runs (scripts/setup.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && !text.contains("failed") && !text.contains("NT_STATUS"), text)
}

/// The Python of the project's venv (scripts/setup.sh makes it; UMBRA_VENV moves it).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var("UMBRA_VENV").unwrap_or_else(|_| format!("{}/.cache/umbra-venv", std::env::var("HOME").expect("HOME")));
    PathBuf::from(venv).join("bin/python")
}

/// DesiredAccess and ShareAccess bits, CreateDisposition values and FSCTL codes the driven
/// client tests send (MS-SMB2 2.2.13, MS-FSCC 2.3).
pub mod wire {
    pub const READ: u32 = 0x1;
    pub const WRITE: u32 = 0x2;
    pub const READ_ATTRIBUTES: u32 = 0x80;
    pub const WRITE_ATTRIBUTES: u32 = 0x100;
    pub const DELETE: u32 = 0x1_0000;
    pub const READ_CONTROL: u32 = 0x2_0000;
    pub const WRITE_DAC: u32 = 0x4_0000;
    pub const WRITE_OWNER: u32 = 0x8_0000;
    pub const SHARE_NONE: u32 = 0;
    pub const SHARE_READ: u32 = 1;
    pub const SHARE_RW: u32 = 3;
    pub const SHARE_ALL: u32 = 7;
    pub const OPEN: u32 = 1;
    pub const OPEN_IF: u32 = 3;
    pub const OVERWRITE_IF: u32 = 5;
    pub const SET_SPARSE: u32 = 0x0009_00C4;
    pub const QUERY_ALLOCATED_RANGES: u32 = 0x0009_40CF;
    pub const SET_ZERO_DATA: u32 = 0x0009_80C8;
    pub const FILE_LEVEL_TRIM: u32 = 0x0009_8208;
    pub const REQUEST_RESUME_KEY: u32 = 0x0014_0078;
    pub const COPYCHUNK_WRITE: u32 = 0x0014_80F2;
}

/// Bytes as lower-case hex (what tests/clients/driven.py takes and gives).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The password [`DrivenClient::connect`] logs on with.
pub const DRIVEN_PASSWORD: &str = "S3cret-pw";

/// A 3-node cluster with user `admin` (password [`DRIVEN_PASSWORD`]) and share `data` on a
/// volume node 2 owns, ready for [`DrivenClient`]s.
pub fn data_cluster() -> Cluster {
    data_cluster_with("")
}

/// [`data_cluster`] with `extra_toml` in every node's config.
pub fn data_cluster_with(extra_toml: &str) -> Cluster {
    let c = Cluster::start(3, extra_toml);
    assert!(ctl_at(c.addr(1), &["user", "add", "admin", "--role", "admin"], Some(&format!("{DRIVEN_PASSWORD}\n"))).ok);
    assert!(c.ctl(1, &["volume", "create", "vol", "--node", "2"]).ok);
    assert!(c.ctl(1, &["share", "create", "Data", "--volume", "vol"]).ok);
    let smb = c.node(1).smb.clone();
    wait_for(Duration::from_secs(10), "the share's volume to exist", || smbclient(&smb, "data", "admin", DRIVEN_PASSWORD, None, "ls").0.then_some(()));
    c
}

/// One impacket client process (tests/clients/driven.py) with its own SMB connection to one
/// node's gateway, driven a command a line.
pub struct DrivenClient {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl DrivenClient {
    /// A client of share `data` as user `admin` with password [`DRIVEN_PASSWORD`].
    pub fn connect(smb_addr: &str) -> DrivenClient {
        DrivenClient::connect_to(smb_addr, "data")
    }

    pub fn connect_to(smb_addr: &str, share: &str) -> DrivenClient {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/driven.py");
        let port = smb_addr.rsplit(':').next().unwrap();
        let mut child = Command::new(venv_python())
            .args([script, port, share, "admin", DRIVEN_PASSWORD])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the test venv (scripts/setup.sh)");
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut c = DrivenClient { child, stdin, out };
        assert_eq!(c.line(), "READY");
        c
    }

    pub fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).expect("the client answers");
        s.trim().to_string()
    }

    /// Sends a command without waiting for its answer (read it later with [`Self::line`]).
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("the client reads");
    }

    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("the client reads");
        self.line()
    }

    pub fn open(&mut self, handle: &str, path: &str, access: u32, share: u32, disposition: u32) -> String {
        self.cmd(&format!("open {handle} {path} {access:#x} {share:#x} {disposition}"))
    }

    /// SIGKILL: the client's TCP connection just ends, with no CLOSE or LOGOFF.
    pub fn kill(mut self) {
        self.child.kill().expect("kill the client");
        self.child.wait().expect("reap the client");
    }
}

impl Drop for DrivenClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
