//! `umbra bench meta`: metadata commits per second on a real three-node loopback cluster,
//! with p50 and p99 latency, for each requested number of concurrent clients.
//!
//! Each client repeatedly replaces its own user (PutUser): a real command that goes through
//! the leader, the synced Raft log on a quorum, and every state machine.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;
use umbra_raft::command::{Command, NtHash, Role};

use crate::client::Node;
use crate::local::LocalCluster;

/// Most concurrent clients one run may start.
const MAX_CLIENTS: usize = 4096;
/// Clients share this many gRPC connections (HTTP/2 multiplexes the rest).
const MAX_CONNECTIONS: usize = 16;

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
        #[arg(long)]
        addr: Option<String>,
        /// Send to followers in turn (forwarded writes) instead of to the leader.
        #[arg(long)]
        via_followers: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct Round {
    clients: usize,
    seconds: f64,
    commits: u64,
    errors: u64,
    commits_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let BenchWhat::Meta { clients, seconds, addr, via_followers, json } = args.what;
    if clients.iter().any(|&c| c == 0 || c > MAX_CLIENTS) {
        bail!("--clients must be between 1 and {MAX_CLIENTS}");
    }
    let mut local = None;
    let addr = match addr {
        Some(a) => a,
        None => {
            let dir = std::env::temp_dir().join(format!("umbra-bench-{}", uuid::Uuid::new_v4().simple()));
            let mut cluster = LocalCluster::prepare(&dir, 3, crate::local::free_base_port()?, "")?;
            cluster.start()?;
            cluster.wait_ready().await?;
            let first = cluster.first_addr().to_string();
            local = Some((cluster, dir));
            first
        }
    };
    let result = rounds(&addr, &clients, Duration::from_secs(seconds), via_followers).await;
    if let Some((mut cluster, dir)) = local {
        if cluster.stop().await {
            let _ = std::fs::remove_dir_all(dir);
        } else {
            eprintln!("kept {} for its logs", dir.display());
        }
    }
    let rounds = result?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rounds)?);
    } else {
        println!("{:>8} {:>9} {:>10} {:>8} {:>9} {:>9} {:>9}", "clients", "commits", "commits/s", "errors", "p50 ms", "p99 ms", "max ms");
        for r in &rounds {
            println!("{:>8} {:>9} {:>10.0} {:>8} {:>9.2} {:>9.2} {:>9.2}", r.clients, r.commits, r.commits_per_sec, r.errors, r.p50_ms, r.p99_ms, r.max_ms);
        }
    }
    Ok(())
}

async fn rounds(addr: &str, clients: &[usize], length: Duration, via_followers: bool) -> anyhow::Result<Vec<Round>> {
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
    let mut out = Vec::new();
    for &n in clients {
        out.push(round(&targets, n, length).await?);
    }
    Ok(out)
}

async fn round(targets: &[String], clients: usize, length: Duration) -> anyhow::Result<Round> {
    let mut conns = Vec::new();
    for i in 0..clients.min(MAX_CONNECTIONS) {
        conns.push(Node::connect(&targets[i % targets.len()]).await?);
    }
    let hash = NtHash::from_password("bench-password");
    let start = Instant::now();
    let deadline = start + length;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let node = conns[c % conns.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram bounds are valid");
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let cmd = Command::PutUser { name: format!("bench{c}"), nt_hash: hash, role: Role::User };
                match node.write(cmd).await {
                    Ok((Ok(_), _)) => {
                        let _ = hist.record(t0.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new(3).expect("histogram bounds are valid");
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        hist.add(h).map_err(|e| anyhow!("merging histograms: {e}"))?;
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(Round {
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
