//! The shadow-copy-set coordinator: what a gateway's FSRVP call does in the cluster.
//!
//! Data flow: the gateway decodes a call on \PIPE\FssagentRpc, checks the caller's rights and
//! hands it to [`Coordinator::call`]. State changes are Raft commands (rules and result codes are
//! decided in apply: `umbra_raft::fsrvp`); effects on volumes go to their owners through the
//! volume service with routing on ([`owners`]). Commit is the fenced two-phase protocol of
//! design.md section 5 ([`commit`]). [`reconcile`] runs on every node: it resolves each fenced
//! snapshot the node holds through Raft (keep, wait, delete) and, on the leader, proposes the
//! timer's `Expire` entries, so a crashed coordinator leaves nothing behind.

pub mod commit;
pub mod gateway;
mod owners;
pub mod reconcile;

use std::sync::Arc;
use std::time::Duration;

use umbra_raft::command::{Applied, Command, MetaError, Request};
use umbra_raft::fsrvp::{FsrvpAnswer, FsrvpCommand, FsrvpError, SetState};
use umbra_raft::names::fold;
use umbra_raft::query::{Query, QueryResult};
use umbra_raft::store::MetaReader;
use umbra_raft::types::NodeId;
use umbra_smb_gateway::rpc::fsrvp::{Call, Out, ShareMapping};
use umbra_smb_gateway::wire::filetime_of_ms;
use uuid::Uuid;

use crate::meta::Meta;
use crate::volume_service::VolumeService;

/// FSRVP protocol version this server speaks (MS-FSRVP 2.2.2.4).
pub const FSRVP_VERSION: u32 = 1;

/// Coordinator settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a fence may hold a volume: writes wait at most this long during a commit.
    pub fence_ttl: Duration,
    /// The cluster's one SMB server name (IsPathSupported's OwnerMachineName).
    pub server_name: String,
    /// Test only: pause the coordinator at one commit phase (`begun`, `fenced`, `released`),
    /// from UMBRA_TEST_COMMIT_PAUSE=phase:ms.
    pub pause: Option<(String, Duration)>,
    /// Where set, copy and attempt ids come from: random in production, seeded under simulation.
    pub ids: Ids,
    /// Test only: a deliberately broken commit, which the simulation's checkers must catch.
    pub broken: Option<BrokenCommit>,
    /// Test only: told each commit phase (`begun`, `fenced`, `released`) as it is reached (the
    /// simulation crashes the coordinator there).
    pub phases: Option<Phases>,
}

/// An observer of commit phases (see [`Settings::phases`]).
#[derive(Clone)]
pub struct Phases(pub Arc<dyn Fn(&'static str) + Send + Sync>);

impl std::fmt::Debug for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Phases")
    }
}

/// Deliberately broken commit protocols (test only; never set in production).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokenCommit {
    /// Each participant is released as soon as its own fence answers, not after all are fenced
    /// (the fence points no longer form one cut).
    ReleaseBeforeAllFenced,
    /// Commits whatever the fences and releases answered (a participant may lack its snapshot).
    CommitDespiteFailedFences,
}

/// A source of fresh ids (MS-FSRVP: the server makes set and copy ids).
#[derive(Clone)]
pub struct Ids(Arc<dyn Fn() -> Uuid + Send + Sync>);

impl Ids {
    /// Random (v4) ids.
    pub fn random() -> Self {
        Ids(Arc::new(Uuid::new_v4))
    }

    /// Ids from `next` (the simulation's seeded generator).
    pub fn from_fn(next: impl Fn() -> Uuid + Send + Sync + 'static) -> Self {
        Ids(Arc::new(next))
    }

    pub fn next(&self) -> Uuid {
        (self.0)()
    }
}

impl std::fmt::Debug for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ids")
    }
}

impl Settings {
    pub fn new(server_name: &str) -> Self {
        let pause = std::env::var("UMBRA_TEST_COMMIT_PAUSE").ok().and_then(|v| {
            let (phase, ms) = v.split_once(':')?;
            Some((phase.to_string(), Duration::from_millis(ms.parse().ok()?)))
        });
        Settings { fence_ttl: Duration::from_secs(5), server_name: server_name.into(), pause, ids: Ids::random(), broken: None, phases: None }
    }
}

/// Who is calling: the gateway's session (or DCE/RPC) user and the client's address, which
/// scopes the FSRVP context and sequence timer.
#[derive(Clone, Debug)]
pub struct Client {
    pub user: String,
    pub address: String,
}

/// Cheap to clone (shared handles), so background work can hold one.
#[derive(Clone)]
pub struct Coordinator {
    pub(crate) node: NodeId,
    pub(crate) meta: Arc<Meta>,
    pub(crate) reader: MetaReader,
    pub(crate) service: Arc<VolumeService>,
    pub(crate) settings: Settings,
}

type FsResult<T> = Result<T, FsrvpError>;

impl Coordinator {
    pub fn new(node: NodeId, meta: Arc<Meta>, reader: MetaReader, service: Arc<VolumeService>, settings: Settings) -> Self {
        Coordinator { node, meta, reader, service, settings }
    }

    /// One FSRVP call, share names already reduced from UNC to the bare name.
    #[tracing::instrument(level = "info", skip(self), fields(op = call.name()))]
    pub async fn call(&self, client: &Client, call: &Call) -> FsResult<Out> {
        let out = match call {
            Call::GetSupportedVersion => Out::Versions { min: FSRVP_VERSION, max: FSRVP_VERSION },
            Call::SetContext { context } => {
                self.write(FsrvpCommand::SetContext { client: client.address.clone(), context: *context }).await?;
                Out::Nothing
            }
            // The server makes the ids (MS-FSRVP 3.1.4.3); the client's are not used.
            Call::StartShadowCopySet { .. } => {
                let set = self.settings.ids.next();
                self.write(FsrvpCommand::Start { client: client.address.clone(), set }).await?;
                Out::SetId(set)
            }
            Call::AddToShadowCopySet { set_id, share, .. } => match self.write(FsrvpCommand::Add { set: *set_id, copy: self.settings.ids.next(), share: share.clone() }).await? {
                FsrvpAnswer::Copy(copy) => Out::CopyId(copy),
                other => return Err(unexpected(other)),
            },
            Call::PrepareShadowCopySet { set_id, .. } => {
                self.write(FsrvpCommand::Prepare { set: *set_id }).await?;
                // Make the participants' acknowledged writes durable now, so the fence-point
                // sync at commit has little left to do.
                self.presync(*set_id).await;
                Out::Nothing
            }
            Call::CommitShadowCopySet { set_id, timeout_ms } => {
                self.commit(*set_id, *timeout_ms).await?;
                Out::Nothing
            }
            Call::ExposeShadowCopySet { set_id, .. } => {
                self.expose(*set_id).await?;
                Out::Nothing
            }
            Call::RecoveryCompleteShadowCopySet { set_id } => {
                self.recovery_complete(*set_id).await?;
                Out::Nothing
            }
            Call::AbortShadowCopySet { set_id } => {
                self.write(FsrvpCommand::Abort { set: *set_id }).await?;
                Out::Nothing
            }
            Call::IsPathSupported { share } => {
                self.local_share(share)?;
                Out::PathSupported { supported: true, owner_machine: self.settings.server_name.clone() }
            }
            Call::IsPathShadowCopied { share } => {
                let volume = self.local_share(share)?;
                let state = self.reader.read();
                let present = state.state.fsrvp.sets.values().filter(|s| s.state >= SetState::Committed).any(|s| s.copies.iter().any(|c| c.volume == volume));
                Out::ShadowCopied { present, compatibility: 0 }
            }
            Call::GetShareMapping { copy_id, set_id, share, level } => {
                let cmd = FsrvpCommand::GetMapping { set: *set_id, copy: *copy_id, share: share.clone(), level: *level };
                match self.write(cmd).await? {
                    FsrvpAnswer::Mapping(m) => Out::Mapping(ShareMapping {
                        set_id: m.set,
                        copy_id: m.copy,
                        share_unc: format!("\\\\{}\\{}", self.settings.server_name, m.share),
                        exposed_name: m.exposed,
                        created_filetime: filetime_of_ms(m.committed_ms),
                    }),
                    other => return Err(unexpected(other)),
                }
            }
            Call::DeleteShareMapping { set_id, copy_id, share } => {
                let cmd = FsrvpCommand::DeleteMapping { set: *set_id, copy: *copy_id, share: share.clone() };
                if let FsrvpAnswer::MappingDeleted { removed: Some(r) } = self.write(cmd).await? {
                    // Best effort now; the owners' reconcile finishes it if this fails.
                    if let Err(e) = self.drop_copy(r.volume, r.snapshot, r.writable.then_some(r.copy)).await {
                        tracing::warn!(error = %e, volume = %r.volume, "could not delete the shadow copy now; reconcile will");
                    }
                }
                Out::Nothing
            }
        };
        Ok(out)
    }

    /// Proposes one FSRVP command; refusals come back as the state machine's FSRVP error.
    pub(crate) async fn write(&self, cmd: FsrvpCommand) -> FsResult<FsrvpAnswer> {
        let (response, _) = self.meta.write(Request::new(Command::Fsrvp(cmd)), false).await.map_err(|e| FsrvpError::Failed(e.to_string()))?;
        match response {
            Ok(Applied::Fsrvp(answer)) => Ok(answer),
            Ok(other) => Err(FsrvpError::Failed(format!("unexpected answer {other:?}"))),
            Err(MetaError::Fsrvp(e)) => Err(e),
            Err(e) => Err(FsrvpError::Failed(e.to_string())),
        }
    }

    /// A linearizable read of the FSRVP state.
    pub(crate) async fn state(&self) -> FsResult<umbra_raft::fsrvp::FsrvpState> {
        match self.meta.query(&Query::Fsrvp).await.map_err(|e| FsrvpError::Failed(e.to_string()))? {
            (QueryResult::Fsrvp(s), _) => Ok(s),
            (other, _) => Err(FsrvpError::Failed(format!("unexpected answer {other:?}"))),
        }
    }

    /// A base share's volume, from this node's state alone (IsPathSupported and
    /// IsPathShadowCopied never open a connection).
    fn local_share(&self, share: &str) -> FsResult<Uuid> {
        let state = self.reader.read();
        let s = state.state.shares.get(&fold(share)).ok_or_else(|| FsrvpError::InvalidArgument(format!("unknown share {share:?}")))?;
        if s.snapshot.is_some() {
            return Err(FsrvpError::NotSupported(format!("{share:?} is a shadow copy")));
        }
        Ok(s.volume)
    }

    async fn presync(&self, set: Uuid) {
        let volumes: Vec<Uuid> = self.reader.read().state.fsrvp.sets.get(&set).map(|s| s.copies.iter().map(|c| c.volume).collect()).unwrap_or_default();
        let syncs = volumes.into_iter().map(|v| self.sync_volume(v));
        for r in futures::future::join_all(syncs).await {
            if let Err(e) = r {
                tracing::debug!(error = %e, "pre-commit sync failed (the fence syncs anyway)");
            }
        }
    }

    async fn expose(&self, set: Uuid) -> FsResult<()> {
        let state = self.state().await?;
        if let Some(s) = state.sets.get(&set).filter(|s| s.state == SetState::Committed) {
            // The snapshots are committed (and writable branches exist) on every owner before
            // any share serves them.
            let work = s.copies.iter().filter_map(|c| c.snapshot.map(|snap| (c.volume, snap, c.id))).map(|(volume, snap, copy)| {
                let writable = s.writable();
                async move {
                    self.commit_snapshot(volume, snap).await?;
                    if writable {
                        self.create_clone(volume, snap, copy).await?;
                    }
                    Ok::<_, String>(())
                }
            });
            for r in futures::future::join_all(work).await {
                r.map_err(FsrvpError::Failed)?;
            }
        }
        self.write(FsrvpCommand::Expose { set }).await.map(|_| ())
    }

    async fn recovery_complete(&self, set: Uuid) -> FsResult<()> {
        let state = self.state().await?;
        if let Some(s) = state.sets.get(&set).filter(|s| s.state == SetState::Exposed && s.writable()) {
            // Every owner drains and seals its branch before the shares turn read-only.
            let seals = s.copies.iter().map(|c| self.seal_clone(c.volume, c.id));
            for r in futures::future::join_all(seals).await {
                r.map_err(FsrvpError::Failed)?;
            }
        }
        self.write(FsrvpCommand::RecoveryComplete { set }).await.map(|_| ())
    }

    pub(crate) async fn pause(&self, phase: &'static str) {
        if let Some(Phases(observe)) = &self.settings.phases {
            observe(phase);
        }
        if let Some((p, d)) = &self.settings.pause {
            if p == phase {
                tracing::warn!(phase, ms = d.as_millis() as u64, "test pause: commit paused");
                tokio::time::sleep(*d).await;
            }
        }
    }
}

fn unexpected(a: FsrvpAnswer) -> FsrvpError {
    FsrvpError::Failed(format!("unexpected answer {a:?}"))
}

