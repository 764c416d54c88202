//! `umbra up`: a local three-node cluster with a demo administrator, two volumes on two
//! different nodes and a share on each. Running it again reuses the data.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Args;
use umbra_raft::command::{Command, MetaError, NtHash, Role};
use umbra_raft::query::{Query, QueryResult};

use crate::client::Node;
use crate::local::LocalCluster;

const NODES: u64 = 3;
const ADMIN_USER: &str = "admin";
/// Marks a data directory whose demo metadata has been created.
const SEEDED_MARKER: &str = "seeded";
const PASSWORD_FILE: &str = "admin-password";

#[derive(Args)]
pub struct UpArgs {
    /// Where the three nodes keep their data.
    #[arg(long, default_value = "umbra-data")]
    data: PathBuf,
    /// Password for the `admin` user (default: generated once and kept in DATA/admin-password).
    #[arg(long)]
    password: Option<String>,
    /// Node N listens for gRPC on BASE+N and for SMB on BASE+10+N.
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut cluster = LocalCluster::prepare(&args.data, NODES, args.base_port, "")?;
    cluster.start()?;
    let outcome = tokio::select! {
        r = bring_up(&mut cluster, &args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted while starting")),
    };
    if let Err(e) = outcome {
        let _ = cluster.stop().await;
        return Err(e);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            // A node that dies (or is killed to watch a failover) is reported; the others go on.
            exited = cluster.next_exit() => eprintln!("warning: {exited}; the other nodes keep running"),
        }
    }
    println!("stopping the cluster...");
    if !cluster.stop().await {
        anyhow::bail!("a node did not stop cleanly; see its log");
    }
    println!("stopped; `umbra up` again reuses {}", args.data.display());
    Ok(())
}

async fn bring_up(cluster: &mut LocalCluster, args: &UpArgs) -> anyhow::Result<()> {
    cluster.wait_ready().await?;
    let node = Node::connect(cluster.first_addr()).await?;
    let password = admin_password(&args.data, args.password.as_deref())?;
    let marker = args.data.join(SEEDED_MARKER);
    if !marker.exists() || args.password.is_some() {
        let hash = NtHash::from_password(&password);
        ensure(&node, Command::PutUser { name: ADMIN_USER.into(), nt_hash: hash, role: Role::Admin }).await?;
    }
    if !marker.exists() {
        seed(&node).await?;
        std::fs::write(&marker, b"demo metadata created\n")?;
    }
    print_banner(cluster, &node, &args.data, &password).await
}

/// Two volumes on nodes 1 and 2, and a share on each; existing ones are kept.
async fn seed(node: &Node) -> anyhow::Result<()> {
    for (volume, owner, share) in [("vol1", 1, "share1"), ("vol2", 2, "share2")] {
        ensure(node, Command::CreateVolume { id: uuid::Uuid::new_v4(), name: volume.into(), owner }).await?;
        ensure(node, Command::CreateShare { name: share.into(), volume: volume.into(), path: "/".into(), read_only: false }).await?;
    }
    Ok(())
}

/// Applies a command; "already exists" counts as done (a seed interrupted half way).
async fn ensure(node: &Node, command: Command) -> anyhow::Result<()> {
    match node.write(command).await?.0 {
        Ok(_) | Err(MetaError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(anyhow!("{e}")),
    }
}

fn admin_password(data: &Path, given: Option<&str>) -> anyhow::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = data.join(PASSWORD_FILE);
    let password = match given {
        Some(p) => {
            // Kept one per line and read back without its line end: it must survive that.
            if p.is_empty() || p.contains(['\n', '\r']) || p.chars().count() > crate::ctl::MAX_PASSWORD_CHARS {
                anyhow::bail!("--password must be 1 to {} characters on one line", crate::ctl::MAX_PASSWORD_CHARS);
            }
            p.to_string()
        }
        None => match std::fs::read_to_string(&file) {
            Ok(p) => return Ok(p.trim_end_matches(['\r', '\n']).to_string()),
            Err(_) => uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
        },
    };
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&file).with_context(|| format!("writing {}", file.display()))?;
    std::io::Write::write_all(&mut f, format!("{password}\n").as_bytes())?;
    Ok(password)
}

async fn print_banner(cluster: &LocalCluster, node: &Node, data: &Path, password: &str) -> anyhow::Result<()> {
    let shares = match node.query(Query::Shares).await? {
        QueryResult::Shares(s) => s,
        _ => Vec::new(),
    };
    let first = cluster.first_addr();
    println!("Umbra is up: {} nodes on loopback, data in {}", cluster.nodes.len(), data.display());
    for n in &cluster.nodes {
        println!("  node {}  grpc {}  smb {}  log {}", n.id, n.grpc_addr, n.smb_addr, n.log.display());
    }
    println!("  user {ADMIN_USER}, password {password}");
    println!("  shares: {}", shares.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "));
    println!("Try (in another terminal):");
    let addr_flag = if first == crate::ctl::DEFAULT_ADDR { String::new() } else { format!(" --addr {first}") };
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "umbra".into());
    // Absolute, so the export works from any directory.
    let key_file = data.join(crate::local::KEY_FILE);
    let key_file = key_file.canonicalize().unwrap_or(key_file);
    if key_file.exists() {
        // The nodes take only connections that hold the cluster key.
        println!("  export UMBRA_CLUSTER_KEY_FILE={}", key_file.display());
    } else {
        println!("  (warning: {} was made before cluster keys: its nodes' gRPC ports are open to anyone who reaches them; a new data directory gets a key)", data.display());
    }
    println!("  {exe} ctl{addr_flag} status");
    println!("  {exe} ctl{addr_flag} share list");
    if let Some(s) = shares.first() {
        let smb = &cluster.nodes[0].smb_addr;
        let port = smb.rsplit(':').next().unwrap_or("445");
        println!("  smbclient //127.0.0.1/{} -p {port} -U '{ADMIN_USER}%{password}' -c ls", s.name);
    }
    println!("Ctrl-C stops the cluster.");
    Ok(())
}
