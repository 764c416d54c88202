//! `umbra bench meta`: metadata commits per second on a real three-node loopback cluster,
//! with p50 and p99 latency, for each requested number of concurrent clients; with
//! `--with-etcd`, the same load on a three-node etcd cluster in the same run (A B A B), so
//! the result is a ratio to the reference Raft-replicated metadata store.
//!
//! Each Umbra client repeatedly replaces its own user (PutUser): a real command that goes
//! through the leader, the synced Raft log on a quorum, and every state machine. Each etcd
//! client repeatedly puts its own key with a value of the same size.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::transport::Channel;
use umbra_proto::etcd::kv_client::KvClient;
use umbra_proto::etcd::maintenance_client::MaintenanceClient;
use umbra_proto::etcd::{PutRequest, StatusRequest};
use umbra_raft::command::{Command, NtHash, Role};

use crate::client::Node;
use crate::local::{free_base_port, LocalCluster};

/// Most concurrent clients one run may start.
const MAX_CLIENTS: usize = 4096;
/// Clients share this many gRPC connections (HTTP/2 multiplexes the rest).
const MAX_CONNECTIONS: usize = 16;
/// How long etcd may take to elect a leader.
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Metadata commands committed per second.
    Meta {
        /// Concurrent clients per round (repeatable).
        #[arg(long, default_values_t = [1usize, 64])]
        clients: Vec<usize>,
        /// Seconds per round.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Use this running cluster (any node) instead of starting a fresh one.
        #[arg(long, conflicts_with = "with_etcd")]
        addr: Option<String>,
        /// Send to followers in turn (forwarded writes) instead of to the leader.
        #[arg(long)]
        via_followers: bool,
        /// Also measure a local three-node etcd (`etcd` on PATH), alternating with Umbra.
        #[arg(long)]
        with_etcd: bool,
        #[arg(long)]
        json: bool,
    },
    /// Volume store: sequential and random I/O (local and through gRPC), snapshot cost
    /// against volume size, space after a snapshot, fence latency under load.
    Volume(crate::bench_volume::VolumeBenchArgs),
}

#[derive(Serialize)]
struct Round {
    system: &'static str,
    clients: usize,
    seconds: f64,
    commits: u64,
    errors: u64,
    commits_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Where a round's clients send their writes.
enum Target {
    Umbra(Vec<Node>),
    Etcd(Vec<KvClient<Channel>>),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Umbra(_) => "umbra",
            Target::Etcd(_) => "etcd",
        }
    }

    /// One committed write by client `c`.
    async fn put(&self, c: usize, hash: NtHash) -> anyhow::Result<()> {
        match self {
            Target::Umbra(conns) => {
                let cmd = Command::PutUser { name: format!("bench{c}"), nt_hash: hash, role: Role::User };
                conns[c % conns.len()].write(cmd).await?.0.map(|_| ()).map_err(|e| anyhow!("{e}"))
            }
            Target::Etcd(conns) => {
                let req = PutRequest { key: format!("bench{c}").into_bytes(), value: hash.0.to_vec() };
                conns[c % conns.len()].clone().put(req).await?;
                Ok(())
            }
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (clients, seconds, addr, via_followers, with_etcd, json) = match args.what {
        BenchWhat::Meta { clients, seconds, addr, via_followers, with_etcd, json } => (clients, seconds, addr, via_followers, with_etcd, json),
        BenchWhat::Volume(v) => return crate::bench_volume::run(v).await,
    };
    if clients.iter().any(|&c| c == 0 || c > MAX_CLIENTS) {
        bail!("--clients must be between 1 and {MAX_CLIENTS}");
    }
    let length = Duration::from_secs(seconds);
    let scratch = std::env::temp_dir().join(format!("umbra-bench-{}", uuid::Uuid::new_v4().simple()));
    let mut local = None;
    let addr = match addr {
        Some(a) => a,
        None => {
            let mut cluster = LocalCluster::prepare(&scratch.join("umbra"), 3, free_base_port()?, "")?;
            cluster.start()?;
            cluster.wait_ready().await?;
            let first = cluster.first_addr().to_string();
            local = Some(cluster);
            first
        }
    };
    let mut etcd = None;
    let result = async {
        let umbra = umbra_targets(&addr, via_followers).await?;
        let etcd_endpoints = if with_etcd {
            let cluster = EtcdCluster::start(&scratch.join("etcd")).await?;
            let endpoints = cluster.leader_endpoint().await?;
            etcd = Some(cluster);
            Some(endpoints)
        } else {
            None
        };
        let mut rounds = Vec::new();
        for &n in &clients {
            // A B A B: each system measured twice, interleaved, so drift hits both alike.
            let repeats = if etcd_endpoints.is_some() { 2 } else { 1 };
            for _ in 0..repeats {
                rounds.push(round(Target::Umbra(connect_umbra(&umbra, n).await?), n, length).await?);
                if let Some(ep) = &etcd_endpoints {
                    rounds.push(round(Target::Etcd(connect_etcd(ep, n).await?), n, length).await?);
                }
            }
        }
        anyhow::Ok(rounds)
    }
    .await;
    let mut clean = true;
    if let Some(mut cluster) = local {
        clean &= cluster.stop().await;
    }
    if let Some(mut e) = etcd {
        e.stop().await;
    }
    if clean {
        let _ = std::fs::remove_dir_all(&scratch);
    } else {
        eprintln!("kept {} for its logs", scratch.display());
    }
    report(&result?, json)
}

fn report(rounds: &[Round], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rounds)?);
        return Ok(());
    }
    println!("{:>6} {:>8} {:>9} {:>10} {:>8} {:>9} {:>9} {:>9}", "system", "clients", "commits", "commits/s", "errors", "p50 ms", "p99 ms", "max ms");
    for r in rounds {
        println!(
            "{:>6} {:>8} {:>9} {:>10.0} {:>8} {:>9.2} {:>9.2} {:>9.2}",
            r.system, r.clients, r.commits, r.commits_per_sec, r.errors, r.p50_ms, r.p99_ms, r.max_ms
        );
    }
    let mut counts: Vec<usize> = rounds.iter().map(|r| r.clients).collect();
    counts.dedup();
    for n in counts {
        let mean = |sys: &str| {
            let v: Vec<f64> = rounds.iter().filter(|r| r.system == sys && r.clients == n).map(|r| r.commits_per_sec).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        if let (Some(u), Some(e)) = (mean("umbra"), mean("etcd")) {
            println!("{n} clients: umbra/etcd commits per second = {:.2}", u / e);
        }
    }
    Ok(())
}

/// The gRPC addresses Umbra clients write to: the leader, or every follower.
async fn umbra_targets(addr: &str, via_followers: bool) -> anyhow::Result<Vec<String>> {
    let status = Node::connect(addr).await?.status(Duration::from_secs(5)).await?;
    let leader = status.leader.ok_or_else(|| anyhow!("the cluster has no leader"))?;
    let targets: Vec<String> = status
        .members
        .iter()
        .filter(|m| if via_followers { m.id != leader } else { m.id == leader })
        .map(|m| m.grpc_addr.clone())
        .collect();
    if targets.is_empty() {
        bail!("no node to send to");
    }
    Ok(targets)
}

async fn connect_umbra(targets: &[String], clients: usize) -> anyhow::Result<Vec<Node>> {
    let mut conns = Vec::new();
    for i in 0..clients.min(MAX_CONNECTIONS) {
        conns.push(Node::connect(&targets[i % targets.len()]).await?);
    }
    Ok(conns)
}

async fn connect_etcd(endpoint: &str, clients: usize) -> anyhow::Result<Vec<KvClient<Channel>>> {
    let mut conns = Vec::new();
    for _ in 0..clients.min(MAX_CONNECTIONS) {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))?.tcp_nodelay(true).connect().await?;
        conns.push(KvClient::new(ch));
    }
    Ok(conns)
}

async fn round(target: Target, clients: usize, length: Duration) -> anyhow::Result<Round> {
    let target = Arc::new(target);
    let hash = NtHash::from_password("bench-password");
    let start = Instant::now();
    let deadline = start + length;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).expect("histogram bounds are valid");
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match target.put(c, hash).await {
                        Ok(()) => {
                            let _ = hist.record(t0.elapsed().as_micros() as u64);
                        }
                        Err(_) => errors += 1,
                    }
                }
                (hist, errors)
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new(3).expect("histogram bounds are valid");
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await?;
        hist.add(h).map_err(|e| anyhow!("merging histograms: {e}"))?;
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(Round {
        system: target.name(),
        clients,
        seconds,
        commits: hist.len(),
        errors,
        commits_per_sec: hist.len() as f64 / seconds,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1000.0,
    })
}

/// A three-member etcd cluster on loopback, as child processes.
struct EtcdCluster {
    children: Vec<tokio::process::Child>,
    client_addrs: Vec<String>,
}

impl EtcdCluster {
    async fn start(dir: &std::path::Path) -> anyhow::Result<EtcdCluster> {
        std::fs::create_dir_all(dir)?;
        let base = free_base_port()?;
        let client = |i: u16| format!("127.0.0.1:{}", base + i);
        let peer = |i: u16| format!("http://127.0.0.1:{}", base + 10 + i);
        let initial: Vec<String> = (1..=3).map(|i| format!("e{i}={}", peer(i))).collect();
        let mut children = Vec::new();
        for i in 1..=3u16 {
            let log = std::fs::File::create(dir.join(format!("etcd{i}.log")))?;
            let data: PathBuf = dir.join(format!("e{i}"));
            let child = tokio::process::Command::new("etcd")
                .args(["--name", &format!("e{i}"), "--data-dir"])
                .arg(&data)
                .args(["--listen-client-urls", &format!("http://{}", client(i)), "--advertise-client-urls", &format!("http://{}", client(i))])
                .args(["--listen-peer-urls", &peer(i), "--initial-advertise-peer-urls", &peer(i)])
                .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new", "--initial-cluster-token", "umbra-bench"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting etcd (install Debian's etcd-server for --with-etcd)")?;
            children.push(child);
        }
        Ok(EtcdCluster { children, client_addrs: (1..=3).map(client).collect() })
    }

    /// The client address of the member that is leader, once there is one.
    async fn leader_endpoint(&self) -> anyhow::Result<String> {
        let deadline = Instant::now() + ETCD_READY_TIMEOUT;
        while Instant::now() < deadline {
            for addr in &self.client_addrs {
                let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else { continue };
                let Ok(ch) = ep.connect().await else { continue };
                if let Ok(s) = MaintenanceClient::new(ch).status(StatusRequest {}).await {
                    let s = s.into_inner();
                    if s.leader != 0 && s.header.map(|h| h.member_id) == Some(s.leader) {
                        return Ok(addr.clone());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("etcd elected no leader within {} s", ETCD_READY_TIMEOUT.as_secs())
    }

    async fn stop(&mut self) {
        for child in &self.children {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}
