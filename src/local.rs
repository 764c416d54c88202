//! A cluster of `umbra node` child processes on loopback, as `umbra up` and `umbra bench` run it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::client::Node;

/// How long the nodes may take to elect a leader and admit every member.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct NodeSpec {
    pub id: u64,
    pub grpc_addr: String,
    pub smb_addr: String,
    pub config: PathBuf,
    pub log: PathBuf,
}

pub struct LocalCluster {
    pub nodes: Vec<NodeSpec>,
    children: Vec<Child>,
    /// Per child: not yet seen to exit by `next_exit`.
    running: Vec<bool>,
}

/// Where a local cluster's data directory keeps its cluster key (`umbra ctl --key-file`).
pub const KEY_FILE: &str = "cluster.key";

/// Writes `text` to a new file only its owner may read.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(format!("{text}\n").as_bytes()).with_context(|| format!("writing {}", path.display()))
}

impl LocalCluster {
    /// Writes node configs under `data` (once; later runs reuse them and the data).
    /// Node 1 starts the cluster, the others join through it. gRPC ports are
    /// `base_port + id`, SMB ports `base_port + 10 + id`.
    pub fn prepare(data: &Path, count: u64, base_port: u16, extra_toml: &str) -> anyhow::Result<LocalCluster> {
        let top = u64::from(base_port) + 10 + count;
        if top > u64::from(u16::MAX) {
            anyhow::bail!("base port {base_port} leaves no room for {count} nodes: their ports would reach {top} (at most {})", u16::MAX);
        }
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        // The configs hold the cluster key: only this user reads the data directory.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("making {} private", data.display()))?;
        }
        let data = data.canonicalize()?;
        // The cluster's key: made with the data directory, kept with it; this process (which
        // talks to the nodes) holds it too. A data directory from before keys keeps none.
        let key_file = data.join(KEY_FILE);
        let fresh = !data.join("node1.toml").exists();
        if fresh && !key_file.exists() {
            write_private(&key_file, &umbra_raft::peer_auth::ClusterKey::generate().to_hex())?;
        }
        let key = match key_file.exists() {
            true => {
                let text = std::fs::read_to_string(&key_file).with_context(|| format!("reading {}", key_file.display()))?;
                Some(umbra_raft::peer_auth::ClusterKey::from_hex(&text).with_context(|| format!("the cluster key in {}", key_file.display()))?)
            }
            false => None,
        };
        if let Some(k) = &key {
            umbra_raft::peer_auth::install_key(k.clone(), None);
        }
        let grpc = |id: u64| format!("127.0.0.1:{}", u64::from(base_port) + id);
        let mut nodes = Vec::new();
        for id in 1..=count {
            let config = data.join(format!("node{id}.toml"));
            let spec = NodeSpec { id, grpc_addr: grpc(id), smb_addr: format!("127.0.0.1:{}", u64::from(base_port) + 10 + id), config, log: data.join(format!("node{id}.log")) };
            if spec.config.exists() {
                // A data directory made with other ports keeps them: say so rather than wait for
                // nodes on ports they do not use.
                let table = umbra_node::config::NodeConfig::load_table(Some(&spec.config))?;
                let kept = |key: &str| table.get(key).and_then(|v| v.as_str()).unwrap_or("").to_string();
                if kept("grpc_addr") != spec.grpc_addr || kept("smb_addr") != spec.smb_addr {
                    anyhow::bail!("{} was made for other ports (gRPC {}, SMB {}): use the base port it was made with, or another data directory", data.display(), kept("grpc_addr"), kept("smb_addr"));
                }
            } else {
                let mut t = toml::Table::new();
                t.insert("id".into(), toml::Value::Integer(id as i64));
                t.insert("data_dir".into(), toml::Value::String(data.join(format!("node{id}")).to_string_lossy().into_owned()));
                t.insert("grpc_addr".into(), toml::Value::String(spec.grpc_addr.clone()));
                t.insert("smb_addr".into(), toml::Value::String(spec.smb_addr.clone()));
                match id {
                    1 => t.insert("bootstrap".into(), toml::Value::Boolean(true)),
                    _ => t.insert("join".into(), toml::Value::Array(vec![toml::Value::String(grpc(1))])),
                };
                if let Some(k) = &key {
                    t.insert("cluster_key".into(), toml::Value::String(k.to_hex()));
                }
                // Written by the serializer: a data path with quotes or backslashes stays itself.
                let text = format!("{}{extra_toml}", toml::to_string(&t).context("writing a node config")?);
                write_private(&spec.config, text.trim_end())?;
            }
            nodes.push(spec);
        }
        Ok(LocalCluster { nodes, children: Vec::new(), running: Vec::new() })
    }

    /// Starts every node as a child of this process; a child gets SIGTERM if this process dies.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the umbra executable")?;
        for spec in &self.nodes {
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&spec.log)?;
            let mut cmd = Command::new(&exe);
            cmd.arg("node").arg("--config").arg(&spec.config).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
            // SAFETY: pre_exec runs in the forked child before exec; prctl is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
                });
            }
            let child = cmd.spawn().with_context(|| format!("starting node {}", spec.id))?;
            self.children.push(child);
            self.running.push(true);
        }
        Ok(())
    }

    pub fn first_addr(&self) -> &str {
        &self.nodes[0].grpc_addr
    }

    /// Waits until node 1 sees a leader and every node as a voter.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(exited) = self.exited()? {
                bail!("{exited}");
            }
            if let Ok(node) = Node::connect(self.first_addr()).await {
                if let Ok(s) = node.status(Duration::from_secs(1)).await {
                    let voters = s.members.iter().filter(|m| m.role == "voter").count();
                    if s.leader.is_some() && voters == self.nodes.len() {
                        return Ok(());
                    }
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the cluster was not ready within {} s; see the node logs", READY_TIMEOUT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Describes the first child that has exited, if any.
    pub fn exited(&mut self) -> anyhow::Result<Option<String>> {
        for (child, spec) in self.children.iter_mut().zip(&self.nodes) {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(format!("node {} exited ({status}); see {}", spec.id, spec.log.display())));
            }
        }
        Ok(None)
    }

    /// Resolves when a child that was running exits, describing it; pending forever once
    /// every child has exited.
    pub async fn next_exit(&mut self) -> String {
        let waits: Vec<_> = self
            .children
            .iter_mut()
            .zip(&self.nodes)
            .zip(self.running.iter_mut())
            .filter(|(_, running)| **running)
            .map(|((c, spec), running)| {
                Box::pin(async move {
                    let status = c.wait().await;
                    *running = false;
                    format!("node {} exited ({}); see {}", spec.id, status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()), spec.log.display())
                })
            })
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        futures::future::select_all(waits).await.0
    }

    /// SIGTERM to every node, then waits for each (killing any that does not stop in time).
    /// Returns whether every running node exited cleanly.
    pub async fn stop(&mut self) -> bool {
        let mut clean = true;
        for child in &self.children {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
        }
        for ((child, spec), running) in self.children.iter_mut().zip(&self.nodes).zip(&self.running) {
            if !running {
                continue;
            }
            match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => {
                    clean = false;
                    eprintln!("node {} stopped with {status}; see {}", spec.id, spec.log.display());
                }
                Ok(Err(e)) => {
                    clean = false;
                    eprintln!("node {}: {e}", spec.id);
                }
                Err(_) => {
                    clean = false;
                    eprintln!("node {} did not stop within {} s; killing it", spec.id, STOP_TIMEOUT.as_secs());
                    let _ = child.kill().await;
                }
            }
        }
        self.children.clear();
        self.running.clear();
        clean
    }
}

/// A base port B such that B+1..=B+3 and B+11..=B+13 are free on 127.0.0.1 right now.
pub fn free_base_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let base = 20_000 + (uuid::Uuid::new_v4().as_u128() % 40_000) as u16;
        let ports = (1..=3).chain(11..=13).map(|o| base + o);
        if ports.into_iter().all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no free range of loopback ports found")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ports that do not fit are refused before anything is written; a data path with a quote
    /// and a backslash reads back as itself; a data directory made for other ports says so.
    #[test]
    fn prepare_refuses_ports_past_the_range_keeps_odd_paths_and_names_a_port_mismatch() {
        let root = tempfile::tempdir().unwrap();
        let odd = root.path().join("a\\b \"c\"");
        let e = LocalCluster::prepare(&odd, 3, 65530, "").err().unwrap().to_string();
        assert!(e.contains("no room"), "{e}");
        assert!(!odd.exists(), "nothing written");
        let c = LocalCluster::prepare(&odd, 3, 27000, "").unwrap();
        let table = umbra_node::config::NodeConfig::load_table(Some(&c.nodes[1].config)).unwrap();
        let config = umbra_node::config::NodeConfig::from_table(table, &c.nodes[1].config).unwrap();
        assert_eq!(config.data_dir, odd.canonicalize().unwrap().join("node2"));
        let e = LocalCluster::prepare(&odd, 3, 28000, "").err().unwrap().to_string();
        assert!(e.contains("other ports"), "{e}");
        LocalCluster::prepare(&odd, 3, 27000, "").unwrap();
    }
}
