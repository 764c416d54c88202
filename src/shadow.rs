//! `umbra ctl shadow`: shadow-copy sets for operators (list, show, delete) and the FSRVP
//! message sequence timer setting.

use anyhow::{anyhow, bail};
use clap::Subcommand;
use umbra_raft::command::{Applied, Command};
use umbra_raft::fsrvp::{FsrvpCommand, FsrvpState, ShadowSet};
use umbra_raft::query::{Query, QueryResult};
use uuid::Uuid;

use crate::client::Node;

#[derive(Subcommand)]
pub enum ShadowCmd {
    /// Every shadow-copy set: id, state, context, copies, exposed shares.
    List,
    /// One set with its copies, snapshots and share mappings.
    Show { set: Uuid },
    /// Remove a set (any state but a commit in progress): its exposed shares go at once, its
    /// snapshots as each owner reconciles.
    Delete { set: Uuid },
    /// The message sequence timer: seconds for every step, `0` off, `default` for the
    /// protocol's 180 s / 1800 s.
    Timeout { seconds: String },
    /// The snapshots a volume's owner holds (shadow copies and others), with their state.
    Snapshots { volume: String },
}

async fn state(node: &Node) -> anyhow::Result<FsrvpState> {
    match node.query(Query::Fsrvp).await? {
        QueryResult::Fsrvp(s) => Ok(s),
        other => bail!("unexpected answer {other:?}"),
    }
}

fn summary(s: &ShadowSet) -> Vec<String> {
    let exposed: Vec<&str> = s.copies.iter().flat_map(|c| &c.mappings).filter(|m| m.is_exposed).map(|m| m.exposed.as_str()).collect();
    vec![s.id.to_string(), format!("{:?}", s.state), format!("{:#x}", s.context), s.copies.len().to_string(), s.client.clone(), exposed.join(",")]
}

pub async fn run(node: &Node, json: bool, cmd: ShadowCmd) -> anyhow::Result<()> {
    match cmd {
        ShadowCmd::List => {
            let st = state(node).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
                return Ok(());
            }
            let timer = match st.timeout_s {
                None => "protocol default (180 s / 1800 s)".to_string(),
                Some(0) => "off".to_string(),
                Some(s) => format!("{s} s"),
            };
            println!("sequence timer: {timer}; {} set(s)", st.sets.len());
            let mut rows = vec![crate::ctl::row(&["SET", "STATE", "CONTEXT", "COPIES", "CLIENT", "EXPOSED"])];
            rows.extend(st.sets.values().map(summary));
            crate::ctl::print_table(&rows);
            Ok(())
        }
        ShadowCmd::Show { set } => {
            let st = state(node).await?;
            let s = st.sets.get(&set).ok_or_else(|| anyhow!("no shadow-copy set {set}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(s)?);
                return Ok(());
            }
            println!("set {} {:?} context {:#x} client {} committed_ms {}", s.id, s.state, s.context, s.client, s.committed_ms);
            let mut rows = vec![crate::ctl::row(&["COPY", "VOLUME", "SNAPSHOT", "SHARE", "EXPOSED AS", "EXPOSED"])];
            for c in &s.copies {
                for m in &c.mappings {
                    let snap = c.snapshot.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
                    rows.push(vec![c.id.to_string(), c.volume.to_string(), snap, m.share.clone(), m.exposed.clone(), m.is_exposed.to_string()]);
                }
            }
            crate::ctl::print_table(&rows);
            Ok(())
        }
        ShadowCmd::Delete { set } => write(node, json, FsrvpCommand::DeleteSet { set }, &format!("deleted shadow-copy set {set}")).await,
        ShadowCmd::Snapshots { volume } => {
            let vol = crate::files::volume_id(node, &volume).await?;
            let channel = umbra_raft::network::channel(&node.addr)?;
            let target = umbra_proto::v1::VolumeTarget { volume: vol.to_string(), snapshot: String::new(), clone: String::new(), route: true };
            let list = umbra_proto::v1::volume_client::VolumeClient::new(channel).snapshot_list(target).await.map_err(|s| anyhow!("{}", s.message()))?.into_inner();
            if json {
                let rows: Vec<serde_json::Value> = list.snapshots.iter().map(|s| serde_json::json!({"id": s.id, "state": s.state, "epoch": s.epoch, "created": s.created})).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            let mut rows = vec![crate::ctl::row(&["SNAPSHOT", "STATE", "EPOCH"])];
            rows.extend(list.snapshots.iter().map(|s| vec![s.id.clone(), s.state.clone(), s.epoch.to_string()]));
            crate::ctl::print_table(&rows);
            Ok(())
        }
        ShadowCmd::Timeout { seconds } => {
            let value = match seconds.as_str() {
                "default" => None,
                s => Some(s.parse::<u32>().map_err(|_| anyhow!("the timeout is a number of seconds, 0 (off) or `default`"))?),
            };
            write(node, json, FsrvpCommand::SetTimeout { seconds: value }, &format!("sequence timer set to {seconds}")).await
        }
    }
}

async fn write(node: &Node, json: bool, cmd: FsrvpCommand, done: &str) -> anyhow::Result<()> {
    let (response, _) = node.write(Command::Fsrvp(cmd)).await?;
    let applied: Applied = response.map_err(|e| anyhow!("{e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&applied)?);
    } else {
        println!("{done}");
    }
    Ok(())
}
