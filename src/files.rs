//! `umbra ctl file ...`: files on a volume through any node, which routes each call to the
//! volume's owner over the volume service (the path an SMB gateway takes).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use umbra_proto::v1::volume_client::VolumeClient;
use umbra_proto::v1::*;
use umbra_raft::query::{Query, QueryResult};

use crate::client::Node;

/// Bytes per write message of an upload.
const PUT_MESSAGE_BYTES: usize = 1024 * 1024;
const ROOT_INO: u64 = 1;

#[derive(Subcommand)]
pub enum FileCmd {
    /// List a directory (default: the volume's root).
    Ls { volume: String, path: Option<String> },
    /// Upload a file (from stdin, or --from), replacing its content.
    Put {
        volume: String,
        path: String,
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Download a file (to stdout, or --to).
    Get {
        volume: String,
        path: String,
        #[arg(long)]
        to: Option<PathBuf>,
    },
    Mkdir { volume: String, path: String },
    /// Remove a file or an empty directory.
    Rm { volume: String, path: String },
}

struct Files {
    client: VolumeClient<Channel>,
    target: VolumeTarget,
}

fn now() -> u64 {
    umbra_node::filetime_now()
}

fn split(path: &str) -> anyhow::Result<(String, String)> {
    let trimmed = path.trim_matches(['/', '\\']);
    match trimmed.rsplit_once(['/', '\\']) {
        Some((parent, name)) => Ok((parent.to_string(), name.to_string())),
        None if !trimmed.is_empty() => Ok((String::new(), trimmed.to_string())),
        None => bail!("a file path is needed, not the root"),
    }
}

/// A volume's id from its name or id.
pub async fn volume_id(node: &Node, volume: &str) -> anyhow::Result<uuid::Uuid> {
    let QueryResult::Volumes(volumes) = node.query(Query::Volumes).await? else { bail!("unexpected reply to a volume query") };
    let found = volumes.iter().find(|v| v.id.to_string() == volume || v.name.eq_ignore_ascii_case(volume)).ok_or_else(|| anyhow!("volume {volume:?} does not exist"))?;
    Ok(found.id)
}

impl Files {
    async fn open(node: &Node, volume: &str) -> anyhow::Result<Files> {
        let id = volume_id(node, volume).await?;
        let channel = umbra_raft::network::channel(&node.addr)?;
        let max = umbra_node::volume_service::MAX_VOLUME_MESSAGE_BYTES;
        let client = VolumeClient::new(channel).max_decoding_message_size(max).max_encoding_message_size(max);
        Ok(Files { client, target: VolumeTarget { volume: id.to_string(), snapshot: String::new(), clone: String::new(), route: true } })
    }

    fn target(&self) -> Option<VolumeTarget> {
        Some(self.target.clone())
    }

    async fn resolve(&self, path: &str) -> anyhow::Result<Entry> {
        let reply = self.client.clone().resolve(ResolveRequest { target: self.target(), path: path.into(), ..Default::default() }).await.map_err(|s| anyhow!("{path}: {}", s.message()))?;
        reply.into_inner().entry.ok_or_else(|| anyhow!("empty reply"))
    }

    async fn ino(&self, path: &str) -> anyhow::Result<u64> {
        if path.trim_matches(['/', '\\']).is_empty() {
            return Ok(ROOT_INO);
        }
        Ok(self.resolve(path).await?.attributes.map(|a| a.ino).unwrap_or_default())
    }
}

pub async fn run(node: &Node, cmd: FileCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        FileCmd::Ls { volume, path } => {
            let f = Files::open(node, &volume).await?;
            let dir = f.ino(path.as_deref().unwrap_or("")).await?;
            let mut after = String::new();
            let mut all = Vec::new();
            loop {
                let req = ListRequest { target: f.target(), dir, after: after.clone(), limit: 1000 };
                let entries = f.client.clone().list(req).await.map_err(|s| anyhow!("{}", s.message()))?.into_inner().entries;
                let Some(last) = entries.last() else { break };
                after = last.name.to_lowercase();
                all.extend(entries);
            }
            if json {
                let rows: Vec<serde_json::Value> = all
                    .iter()
                    .map(|e| {
                        let a = e.attributes.clone().unwrap_or_default();
                        serde_json::json!({"name": e.name, "directory": a.directory, "size": a.size, "allocated": a.allocated, "ino": a.ino})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for e in &all {
                    let a = e.attributes.clone().unwrap_or_default();
                    println!("{:>12}  {}{}", a.size, e.name, if a.directory { "/" } else { "" });
                }
            }
            Ok(())
        }
        FileCmd::Mkdir { volume, path } => {
            let f = Files::open(node, &volume).await?;
            let (parent, name) = split(&path)?;
            let parent = f.ino(&parent).await?;
            f.client.clone().create(CreateRequest { target: f.target(), parent, name, directory: true, now: now() }).await.map_err(|s| anyhow!("{}", s.message()))?;
            Ok(())
        }
        FileCmd::Rm { volume, path } => {
            let f = Files::open(node, &volume).await?;
            let (parent, name) = split(&path)?;
            let parent = f.ino(&parent).await?;
            f.client.clone().unlink(UnlinkRequest { target: f.target(), parent, name, now: now() }).await.map_err(|s| anyhow!("{}", s.message()))?;
            Ok(())
        }
        FileCmd::Put { volume, path, from } => put(node, &volume, &path, from).await,
        FileCmd::Get { volume, path, to } => get(node, &volume, &path, to).await,
    }
}

async fn put(node: &Node, volume: &str, path: &str, from: Option<PathBuf>) -> anyhow::Result<()> {
    let f = Files::open(node, volume).await?;
    let (parent, name) = split(path)?;
    let parent = f.ino(&parent).await?;
    let ino = match f.resolve(path).await {
        Ok(existing) => {
            let ino = existing.attributes.map(|a| a.ino).unwrap_or_default();
            f.client.clone().set_size(SetSizeRequest { target: f.target(), ino, size: 0, now: now(), keep_times: 0 }).await.map_err(|s| anyhow!("{}", s.message()))?;
            ino
        }
        Err(_) => {
            let req = CreateRequest { target: f.target(), parent, name, directory: false, now: now() };
            let created = f.client.clone().create(req).await.map_err(|s| anyhow!("{}", s.message()))?.into_inner();
            created.entry.and_then(|e| e.attributes).map(|a| a.ino).ok_or_else(|| anyhow!("empty reply"))?
        }
    };
    let mut input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match &from {
        Some(p) => Box::new(tokio::fs::File::open(p).await.with_context(|| format!("opening {}", p.display()))?),
        None => Box::new(tokio::io::stdin()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteChunk>(4);
    let target = f.target();
    let reader = tokio::spawn(async move {
        let mut offset = 0u64;
        loop {
            let mut buf = vec![0u8; PUT_MESSAGE_BYTES];
            let mut filled = 0;
            while filled < buf.len() {
                let n = input.read(&mut buf[filled..]).await?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return anyhow::Ok(offset);
            }
            buf.truncate(filled);
            let msg = WriteChunk { target: target.clone(), ino, offset, data: buf.into(), now: now(), open: None, keep_times: 0 };
            offset += filled as u64;
            if tx.send(msg).await.is_err() {
                return Ok(offset);
            }
        }
    });
    let written = f.client.clone().write(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map_err(|s| anyhow!("{}", s.message()))?.into_inner().written;
    let read = reader.await??;
    if written != read {
        bail!("wrote {written} of {read} bytes");
    }
    let sync = f.target.clone();
    f.client.clone().sync(sync).await.map_err(|s| anyhow!("{}", s.message()))?;
    Ok(())
}

async fn get(node: &Node, volume: &str, path: &str, to: Option<PathBuf>) -> anyhow::Result<()> {
    let f = Files::open(node, volume).await?;
    let entry = f.resolve(path).await?;
    let a = entry.attributes.unwrap_or_default();
    if a.directory {
        bail!("{path} is a directory");
    }
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &to {
        Some(p) => Box::new(tokio::fs::File::create(p).await.with_context(|| format!("creating {}", p.display()))?),
        None => Box::new(tokio::io::stdout()),
    };
    let mut stream = f.client.clone().read(ReadRequest { target: f.target(), ino: a.ino, offset: 0, length: a.size, open: None }).await.map_err(|s| anyhow!("{}", s.message()))?.into_inner();
    while let Some(chunk) = stream.message().await.map_err(|s| anyhow!("{}", s.message()))? {
        out.write_all(&umbra_node::volume_service::checked_data(chunk).map_err(|s| anyhow!("{}", s.message()))?).await?;
    }
    out.flush().await?;
    Ok(())
}
