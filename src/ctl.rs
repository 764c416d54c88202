//! `umbra ctl`: cluster status, nodes, volumes, shares and users, through any node.
//! Tables for people; `--json` prints the fields documented in docs/cli.md.

use std::io::{BufRead, IsTerminal};
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use umbra_raft::command::{Applied, Command, NtHash, Role};
use umbra_raft::query::{Query, QueryResult};
use umbra_raft::status::NodeStatus;

use crate::client::Node;

/// The first node of `umbra up`'s default cluster.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7101";
/// How long `status` waits for each member.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest password accepted on stdin.
pub(crate) const MAX_PASSWORD_CHARS: usize = 256;

#[derive(Args)]
pub struct CtlArgs {
    /// Any node's gRPC address.
    #[arg(long, env = "UMBRA_ADDR", default_value = DEFAULT_ADDR, global = true)]
    addr: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// A file holding the cluster key (64 hex digits; `umbra up` writes DATA/cluster.key): every
    /// connection to a node with a key must prove it holds the same.
    #[arg(long, env = "UMBRA_CLUSTER_KEY_FILE", global = true)]
    key_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Nodes, roles, leader, term, log indexes, and which nodes answer.
    Status,
    #[command(subcommand)]
    Node(NodeCmd),
    #[command(subcommand)]
    Volume(VolumeCmd),
    #[command(subcommand)]
    Share(ShareCmd),
    #[command(subcommand)]
    User(UserCmd),
    /// Files on a volume, through this node (routed to the volume's owner).
    #[command(subcommand)]
    File(crate::files::FileCmd),
    /// FSRVP shadow-copy sets and the sequence timer.
    #[command(subcommand)]
    Shadow(crate::shadow::ShadowCmd),
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Add a node (it must be running): as a learner, then promoted to voter.
    Add {
        id: u64,
        #[arg(long)]
        grpc: String,
        #[arg(long)]
        smb: String,
        /// Keep it a learner (no vote).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    Remove { id: u64 },
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// Create a volume owned by a node.
    Create {
        name: String,
        #[arg(long)]
        node: u64,
    },
    List,
}

#[derive(Subcommand)]
enum ShareCmd {
    /// Create a share on a volume.
    Create {
        name: String,
        #[arg(long)]
        volume: String,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long)]
        read_only: bool,
    },
    List,
    Delete { name: String },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add (or replace) a user; the password comes from a prompt, or from stdin's first line.
    Add {
        name: String,
        #[arg(long)]
        role: Role,
    },
    List,
    Delete { name: String },
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let json = args.json;
    if let Some(path) = &args.key_file {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the cluster key from {}", path.display()))?;
        let key = umbra_raft::peer_auth::ClusterKey::from_hex(&text).with_context(|| format!("the cluster key in {}", path.display()))?;
        umbra_raft::peer_auth::install_key(key, None);
    }
    let node = Node::connect(&args.addr).await?;
    match args.command {
        CtlCommand::Status => status(&node, json).await,
        CtlCommand::Node(NodeCmd::Add { id, grpc, smb, learner }) => {
            let members = node.add_node(id, grpc, smb, !learner).await?;
            print(json, &members, || format!("node {id} added as {}", if learner { "learner" } else { "voter" }))
        }
        CtlCommand::Node(NodeCmd::Remove { id }) => {
            let members = node.remove_node(id).await?;
            print(json, &members, || format!("node {id} removed"))
        }
        CtlCommand::Volume(VolumeCmd::Create { name, node: owner }) => {
            write(&node, json, Command::CreateVolume { id: uuid::Uuid::new_v4(), name, owner }).await
        }
        CtlCommand::Volume(VolumeCmd::List) => list(&node, json, Query::Volumes).await,
        CtlCommand::Share(ShareCmd::Create { name, volume, path, read_only }) => {
            write(&node, json, Command::CreateShare { name, volume, path, read_only }).await
        }
        CtlCommand::Share(ShareCmd::List) => list(&node, json, Query::Shares).await,
        CtlCommand::Share(ShareCmd::Delete { name }) => write(&node, json, Command::DeleteShare { name }).await,
        CtlCommand::User(UserCmd::Add { name, role }) => {
            let password = read_password(&name)?;
            write(&node, json, Command::PutUser { name, nt_hash: NtHash::from_password(&password), role }).await
        }
        CtlCommand::User(UserCmd::List) => list(&node, json, Query::Users).await,
        CtlCommand::User(UserCmd::Delete { name }) => write(&node, json, Command::DeleteUser { name }).await,
        CtlCommand::File(cmd) => crate::files::run(&node, cmd, json).await,
        CtlCommand::Shadow(cmd) => crate::shadow::run(&node, json, cmd).await,
    }
}

fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", human());
    }
    Ok(())
}

async fn write(node: &Node, json: bool, command: Command) -> anyhow::Result<()> {
    let (response, _index) = node.write(command).await?;
    let applied = response.map_err(|e| anyhow!("{e}"))?;
    print(json, &applied, || match &applied {
        Applied::Volume(v) => format!("created volume {} ({}) on node {}", v.name, v.id, v.owner),
        Applied::Share(s) => format!("created share {} on volume {} at {}{}", s.name, s.volume, s.path, if s.read_only { " (read-only)" } else { "" }),
        Applied::ShareDeleted(s) => format!("deleted share {}", s.name),
        Applied::User(u) => format!("user {} saved with role {}", u.name, u.role),
        Applied::UserDeleted(u) => format!("deleted user {}", u.name),
        Applied::Fsrvp(a) => format!("{a:?}"),
    })
}

async fn list(node: &Node, json: bool, query: Query) -> anyhow::Result<()> {
    let result = node.query(query).await?;
    if json {
        let value = match &result {
            QueryResult::Volumes(v) => serde_json::to_value(v)?,
            QueryResult::Shares(s) => serde_json::to_value(s)?,
            QueryResult::Users(u) => serde_json::to_value(u)?,
            QueryResult::Share(s) => serde_json::to_value(s)?,
            QueryResult::Fsrvp(s) => serde_json::to_value(s)?,
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = match &result {
        QueryResult::Volumes(v) => std::iter::once(row(&["NAME", "ID", "OWNER"]))
            .chain(v.iter().map(|v| vec![v.name.clone(), v.id.to_string(), v.owner.to_string()]))
            .collect(),
        QueryResult::Shares(s) => std::iter::once(row(&["NAME", "VOLUME", "PATH", "READ-ONLY"]))
            .chain(s.iter().map(|s| vec![s.name.clone(), s.volume.to_string(), s.path.clone(), s.read_only.to_string()]))
            .collect(),
        QueryResult::Users(u) => std::iter::once(row(&["NAME", "ROLE"])).chain(u.iter().map(|u| vec![u.name.clone(), u.role.to_string()])).collect(),
        QueryResult::Share(s) => std::iter::once(row(&["NAME", "VOLUME", "PATH"]))
            .chain(s.iter().map(|s| vec![s.name.clone(), s.volume.to_string(), s.path.clone()]))
            .collect(),
        QueryResult::Fsrvp(s) => std::iter::once(row(&["SET", "STATE"])).chain(s.sets.values().map(|s| vec![s.id.to_string(), format!("{:?}", s.state)])).collect(),
    };
    print_table(&rows);
    Ok(())
}

pub(crate) fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

pub(crate) fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// One member as `status` reports it.
#[derive(Serialize)]
struct MemberReport {
    id: u64,
    role: String,
    grpc_addr: String,
    smb_addr: String,
    answers: bool,
    status: Option<NodeStatus>,
    error: Option<String>,
}

#[derive(Serialize)]
struct StatusReport {
    /// The node `--addr` named.
    asked: NodeStatus,
    leader: Option<u64>,
    term: u64,
    members: Vec<MemberReport>,
}

async fn status(node: &Node, json: bool) -> anyhow::Result<()> {
    let asked = node.status(MEMBER_STATUS_TIMEOUT * 5).await?;
    let mut members = Vec::new();
    for m in &asked.members {
        let (status, error) = match member_status(&m.grpc_addr).await {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        members.push(MemberReport { id: m.id, role: m.role.clone(), grpc_addr: m.grpc_addr.clone(), smb_addr: m.smb_addr.clone(), answers: status.is_some(), status, error });
    }
    let leader = asked.leader;
    let term = members.iter().filter_map(|m| m.status.as_ref().map(|s| s.term)).max().unwrap_or(asked.term).max(asked.term);
    let report = StatusReport { asked, leader, term, members };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let leader_text = report.leader.map(|l| format!("node {l}")).unwrap_or_else(|| "none".into());
    println!("cluster: leader {leader_text}, term {}, {} members", report.term, report.members.len());
    let opt = |v: Option<u64>| v.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
    let mut rows = vec![row(&["ID", "ROLE", "STATE", "GRPC", "SMB", "TERM", "LAST LOG", "COMMITTED", "APPLIED", "ANSWERS"])];
    for m in &report.members {
        let s = m.status.as_ref();
        rows.push(vec![
            m.id.to_string(),
            m.role.clone(),
            s.map(|s| s.state.clone()).unwrap_or_else(|| "?".into()),
            m.grpc_addr.clone(),
            m.smb_addr.clone(),
            s.map(|s| s.term.to_string()).unwrap_or_else(|| "-".into()),
            opt(s.and_then(|s| s.last_log_index)),
            opt(s.and_then(|s| s.committed_index)),
            opt(s.and_then(|s| s.applied_index)),
            if m.answers { "yes".into() } else { "NO".into() },
        ]);
    }
    print_table(&rows);
    for m in report.members.iter().filter(|m| !m.answers) {
        println!("node {}: {}", m.id, m.error.as_deref().unwrap_or("no answer"));
    }
    Ok(())
}

async fn member_status(addr: &str) -> anyhow::Result<NodeStatus> {
    tokio::time::timeout(MEMBER_STATUS_TIMEOUT, async { Node::connect(addr).await?.status(MEMBER_STATUS_TIMEOUT).await })
        .await
        .map_err(|_| anyhow!("no answer within {} ms", MEMBER_STATUS_TIMEOUT.as_millis()))?
}

/// A prompt (twice) on a terminal; otherwise the first line of stdin.
fn read_password(user: &str) -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("password for {user}: "))?;
        let again = rpassword::prompt_password("again: ")?;
        if first != again {
            bail!("the passwords differ");
        }
        first
    } else {
        // One line, read through a bound so a huge stdin is never read whole.
        let mut line = String::new();
        std::io::Read::take(std::io::stdin().lock(), (MAX_PASSWORD_CHARS * 4 + 2) as u64).read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        bail!("empty password: give one on stdin or at the prompt");
    }
    if password.chars().count() > MAX_PASSWORD_CHARS {
        bail!("password longer than {MAX_PASSWORD_CHARS} characters");
    }
    Ok(password)
}
