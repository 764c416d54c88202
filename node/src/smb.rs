//! The node's SMB gateway: users and shares come from the Raft state machine (read locally on
//! every lookup, so a share or user created with `umbra ctl` takes effect without a restart).

use umbra_raft::command::{NtHash, Role};
use umbra_raft::names::fold;
use umbra_raft::store::MetaReader;
use umbra_smb_gateway::server::{Config, Directory};

/// The cluster's one SMB server name (design.md section 5: one FSRVP server identity).
pub const NETBIOS_NAME: &str = "UMBRA";
/// Largest READ/WRITE offered: the volume service's whole-write bound.
pub const MAX_IO_BYTES: u32 = 8 * 1024 * 1024;

pub struct RaftDirectory {
    pub reader: MetaReader,
    pub fsrvp: Option<std::sync::Arc<crate::fsrvp::gateway::GatewayFsrvp>>,
    /// For a share this node has not seen yet: a linearizable read through the leader (a tree
    /// connect right after Expose returned on another node finds the new share).
    pub meta: Option<(std::sync::Arc<crate::meta::Meta>, tokio::runtime::Handle)>,
}

impl Directory for RaftDirectory {
    fn share_roots(&self) -> Vec<umbra_smb_gateway::server::notify::ShareRoot> {
        let state = self.reader.read();
        state
            .state
            .shares
            .values()
            .map(|s| umbra_smb_gateway::server::notify::ShareRoot {
                share: s.name.clone(),
                volume: format!("{} {:?}", s.volume, view_of(s)),
                root: s.path.split('/').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("\\"),
            })
            .collect()
    }

    fn user(&self, name: &str) -> Option<(NtHash, Role)> {
        self.reader.read().state.users.get(&fold(name)).map(|u| (u.nt_hash, u.role))
    }

    fn share(&self, name: &str) -> Option<(String, bool)> {
        let local = self.reader.read().state.shares.get(&fold(name)).map(|s| (s.name.clone(), s.read_only));
        if local.is_some() {
            return local;
        }
        let (meta, runtime) = self.meta.as_ref()?;
        match runtime.block_on(meta.query(&umbra_raft::query::Query::Share { name: name.to_string() })) {
            Ok((umbra_raft::query::QueryResult::Share(Some(s)), _)) => Some((s.name, s.read_only)),
            _ => None,
        }
    }

    fn shares(&self) -> Vec<String> {
        self.reader.read().state.shares.values().map(|s| s.name.clone()).collect()
    }

    fn snapshot_times(&self, share: &str) -> Vec<u64> {
        let state = self.reader.read();
        let Some(volume) = state.state.shares.get(&fold(share)).filter(|s| s.snapshot.is_none()).map(|s| s.volume) else { return Vec::new() };
        committed_copies(&state.state, volume).map(|(secs, _)| secs).collect()
    }

    fn shadow_copies(&self) -> Option<&dyn umbra_smb_gateway::rpc::ShadowCopies> {
        self.fsrvp.as_deref().map(|f| f as &dyn umbra_smb_gateway::rpc::ShadowCopies)
    }
}

/// The gateway's settings for node `id` (its server GUID is derived from the id, so it is
/// stable across restarts and distinct per node).
pub fn config(id: u64, tuning: &crate::config::SmbTuning) -> Config {
    let mut guid = *b"umbra-node\0\0\0\0\0\0";
    guid[8..].copy_from_slice(&id.to_le_bytes());
    let lock_retry = std::time::Duration::from_millis(tuning.lock_retry_ms);
    Config { server_guid: guid, netbios_name: NETBIOS_NAME.into(), dns_name: NETBIOS_NAME.to_lowercase(), signing_required: true, max_io_bytes: MAX_IO_BYTES, lock_retry }
}

/// Share storage for the gateway: every call goes through the volume service in-process with
/// routing on, so it reaches the volume's owner (this node's store, or a peer over gRPC) by the
/// same code path as any other client.
pub struct VolumeFiles {
    node: u64,
    store: std::sync::Arc<crate::volume::VolumeStore>,
    service: std::sync::Arc<crate::volume_service::VolumeService>,
    opens: std::sync::Arc<crate::gateway_opens::GatewayOpens>,
    meta: MetaReader,
}

use umbra_proto::v1::volume_server::Volume as _;
use umbra_proto::v1::*;
use umbra_smb_gateway::server::files::{FileInfo, Files, FsError, Looked, NewFile, Stamp};
use crate::volume_service::{keep_bits, stamp};

impl VolumeFiles {
    pub fn new(
        node: u64,
        store: std::sync::Arc<crate::volume::VolumeStore>,
        service: std::sync::Arc<crate::volume_service::VolumeService>,
        opens: std::sync::Arc<crate::gateway_opens::GatewayOpens>,
        meta: MetaReader,
    ) -> Self {
        VolumeFiles { node, store, service, opens, meta }
    }

    /// The share's volume and view when this node owns it: data calls then go straight to
    /// the store (the connection already runs on the blocking pool), skipping the service's hops.
    fn local(&self, share: &str) -> Option<(uuid::Uuid, crate::volume::View)> {
        let state = self.meta.read();
        let (volume, view, _) = resolve_share(&state.state, share)?;
        let owner = state.state.volumes.get(&volume)?.owner;
        (owner == self.node).then_some((volume, view))
    }

    /// The share's volume target and its root path inside the volume. A shadow-copy share
    /// targets its snapshot, or its writable branch.
    fn target(&self, share: &str) -> Result<(VolumeTarget, String), FsError> {
        let state = self.meta.read();
        let (volume, view, path) = resolve_share(&state.state, share).ok_or(FsError::NotFound)?;
        let (snapshot, clone) = match view {
            crate::volume::View::Live => (String::new(), String::new()),
            crate::volume::View::Snapshot(s) => (s.to_string(), String::new()),
            crate::volume::View::Clone(c) => (String::new(), c.to_string()),
        };
        Ok((VolumeTarget { volume: volume.to_string(), snapshot, clone, route: true }, path))
    }

    /// Waits for `f` on this thread's own runtime ([`crate::dedicated`]): the gateway runs
    /// each request on a blocking-pool thread, which makes its calls to other nodes itself.
    fn wait<T>(&self, f: impl std::future::Future<Output = Result<T, FsError>>) -> Result<T, FsError> {
        crate::dedicated::block_on(f).map_err(|e| FsError::Other(format!("cannot start the thread's runtime: {e}")))?
    }

    fn call<T>(&self, f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<T, FsError> {
        self.wait(async { f.await.map(tonic::Response::into_inner).map_err(|s| fs_error(&s)) })
    }
}

/// The committed shadow copies of `volume`: (Unix seconds of the commit, snapshot id).
fn committed_copies(state: &umbra_raft::state::MetaState, volume: uuid::Uuid) -> impl Iterator<Item = (u64, uuid::Uuid)> + '_ {
    use umbra_raft::fsrvp::SetState;
    state.fsrvp.sets.values().filter(|s| s.state >= SetState::Committed).flat_map(move |s| {
        s.copies.iter().filter(move |c| c.volume == volume).filter_map(move |c| c.snapshot.map(|snap| (s.committed_ms / 1000, snap)))
    })
}

/// A share as the gateway names it: a share, or `base@GMT-...` for a base share as of one of
/// its shadow copies (Previous Versions): (volume, view, root path).
fn resolve_share(state: &umbra_raft::state::MetaState, share: &str) -> Option<(uuid::Uuid, crate::volume::View, String)> {
    if let Some(s) = state.shares.get(&fold(share)) {
        return Some((s.volume, view_of(s), s.path.clone()));
    }
    let (base, token) = share.split_at(share.find("@GMT-")?);
    let at = umbra_smb_gateway::server::previous_token(token)?;
    let s = state.shares.get(&fold(base)).filter(|s| s.snapshot.is_none())?;
    let (_, snap) = committed_copies(state, s.volume).find(|(secs, _)| *secs == at)?;
    Some((s.volume, crate::volume::View::Snapshot(snap), s.path.clone()))
}

/// Which state of the volume a share serves.
fn view_of(s: &umbra_raft::command::Share) -> crate::volume::View {
    match &s.snapshot {
        None => crate::volume::View::Live,
        Some(snap) => match snap.clone {
            Some(c) => crate::volume::View::Clone(c),
            None => crate::volume::View::Snapshot(snap.snapshot),
        },
    }
}

/// The volume service's `umbra-error` kinds back to gateway errors.
pub(crate) fn fs_error(s: &tonic::Status) -> FsError {
    match s.metadata().get("umbra-error").and_then(|v| v.to_str().ok()) {
        Some("not_found") => FsError::NotFound,
        Some("exists") => FsError::Exists,
        Some("not_empty") => FsError::NotEmpty,
        Some("not_a_directory") => FsError::NotADirectory,
        Some("is_a_directory") => FsError::IsADirectory,
        Some("read_only") => FsError::ReadOnly,
        Some("access_denied" | "open_in_the_way") => FsError::AccessDenied,
        Some("invalid_name" | "invalid") => FsError::Invalid,
        Some("invalid_security") => FsError::InvalidSecurity,
        Some("too_large") => FsError::TooLarge,
        Some("disk_full") => FsError::DiskFull,
        Some("busy") => FsError::Busy,
        Some("sharing_violation") => FsError::SharingViolation(s.message().to_string()),
        Some("too_many_opens") => FsError::TooManyOpens(s.message().to_string()),
        Some("delete_pending") => FsError::DeletePending,
        Some("lock_not_granted") => FsError::LockNotGranted,
        Some("range_not_locked") => FsError::RangeNotLocked,
        Some("invalid_lock_range") => FsError::InvalidLockRange,
        Some("file_lock_conflict") => FsError::FileLockConflict,
        Some("too_many_locks") => FsError::TooManyLocks(s.message().to_string()),
        _ => FsError::Other(s.message().to_string()),
    }
}

/// A share-relative, `\\`-separated path as a path inside the share's volume (the share's root
/// is `root`, `/`-separated).
fn in_volume(root: &str, path: &str) -> String {
    format!("{}/{}", root.trim_end_matches('/'), path.replace('\\', "/"))
}

fn info(entry: Option<Entry>, name: &str) -> Result<FileInfo, FsError> {
    let e = entry.ok_or_else(|| FsError::Other("empty reply".into()))?;
    let a = e.attributes.unwrap_or_default();
    let name = if e.name.is_empty() { name.to_string() } else { e.name };
    Ok(FileInfo { id: a.ino, name, directory: a.directory, size: a.size, allocated: a.allocated, created: a.created, written: a.written, changed: a.changed, attributes: a.attributes, delete_pending: a.delete_pending })
}

impl Files for VolumeFiles {
    fn lookup(&self, share: &str, path: &str) -> Result<FileInfo, FsError> {
        let (target, root) = self.target(share)?;
        let full = in_volume(&root, path);
        let name = path.rsplit(['\\', '/']).next().unwrap_or("").to_string();
        let reply = self.call(self.service.resolve(tonic::Request::new(ResolveRequest { target: Some(target), path: full, ..Default::default() })))?;
        info(reply.entry, &name)
    }

    fn open_path(&self, share: &str, path: &str, create: Option<NewFile>) -> Result<Looked, FsError> {
        let (target, root) = self.target(share)?;
        let full = in_volume(&root, path);
        let name = path.rsplit(['\\', '/']).next().unwrap_or("");
        let mut req = ResolveRequest { target: Some(target.clone()), path: full, with_parent: true, create: create.map(|n| CreateIfMissing { directory: n.directory, now: n.now, open: None }) };
        let (reply, registration) = match create.and_then(|n| n.mode.map(|m| (m, n.delete_at_close))) {
            Some((mode, delete_at_close)) => self.wait(self.opens.open_new(&target, mode, delete_at_close, |open| {
                if let Some(c) = req.create.as_mut() {
                    c.open = Some(open);
                }
                async {
                    let reply = self.service.resolve(tonic::Request::new(req)).await?.into_inner();
                    let ino = reply.entry.as_ref().and_then(|e| e.attributes.as_ref()).map(|a| a.ino).filter(|_| reply.created);
                    let parent = reply.parent.as_ref().and_then(|e| e.attributes.as_ref()).map(|a| a.ino).unwrap_or_default();
                    Ok((reply, ino.map(|ino| (ino, DeleteAtClose { parent, name: name.to_string() }))))
                }
            }))?,
            None => (self.call(self.service.resolve(tonic::Request::new(req)))?, None),
        };
        let created = reply.created;
        let file = reply.entry.map(|e| info(Some(e), name)).transpose()?;
        // The share's root is its own parent, also when the share is a folder of its volume.
        let parent = match (&file, path.is_empty()) {
            (Some(root), true) => root.clone(),
            _ => info(reply.parent, "")?,
        };
        Ok(match file {
            Some(file) if created => Looked::Created { file, parent, registration },
            Some(file) => Looked::Found { file, parent },
            None => Looked::Missing { parent },
        })
    }

    fn stat(&self, share: &str, id: u64) -> Result<FileInfo, FsError> {
        let (target, _) = self.target(share)?;
        let reply = self.call(self.service.stat(tonic::Request::new(StatRequest { target: Some(target), ino: id, security: false })))?;
        info(reply.entry, "")
    }

    fn create(&self, share: &str, parent: u64, name: &str, directory: bool, now: u64) -> Result<FileInfo, FsError> {
        let (target, _) = self.target(share)?;
        let req = CreateRequest { target: Some(target), parent, name: name.into(), directory, now };
        info(self.call(self.service.create(tonic::Request::new(req)))?.entry, name)
    }

    fn list(&self, share: &str, dir: u64, after: &str, limit: u32) -> Result<Vec<FileInfo>, FsError> {
        let (target, _) = self.target(share)?;
        let req = ListRequest { target: Some(target), dir, after: after.into(), limit };
        let reply = self.call(self.service.list(tonic::Request::new(req)))?;
        reply.entries.into_iter().map(|e| { let n = e.name.clone(); info(Some(e), &n) }).collect()
    }

    fn read(&self, share: &str, id: u64, offset: u64, len: u32, room: usize, open: Option<u64>) -> Result<Vec<u8>, FsError> {
        let open = open.map(|o| self.opens.open_ref(o));
        if let Some((vol, view)) = self.local(share) {
            self.service.check_io(crate::opens::FileKey { volume: vol, view, ino: id }, open.as_ref(), offset, u64::from(len), false, false).map_err(|s| fs_error(&s))?;
            return self.store.read_after(room, vol, view, id, offset, u64::from(len)).map_err(|e| fs_error(&crate::volume_service::status_of(e)));
        }
        let (target, _) = self.target(share)?;
        let req = ReadRequest { target: Some(target), ino: id, offset, length: u64::from(len), open };
        self.wait(async {
            let mut out = Vec::with_capacity(room + len as usize);
            out.resize(room, 0);
            self.service.read_into(req, &mut out).await.map_err(|s| fs_error(&s))?;
            Ok(out)
        })
    }

    fn is_remote(&self, share: &str) -> bool {
        self.local(share).is_none()
    }

    fn write(&self, share: &str, id: u64, offset: u64, data: &[u8], now: Stamp, open: Option<u64>) -> Result<(), FsError> {
        let (now, keep_times) = (now.now, keep_bits(now.keep));
        let open = open.map(|o| self.opens.open_ref(o));
        if let Some((vol, view)) = self.local(share) {
            self.service.check_io(crate::opens::FileKey { volume: vol, view, ino: id }, open.as_ref(), offset, data.len() as u64, true, false).map_err(|s| fs_error(&s))?;
            return self.store.write(vol, view, id, offset, data, stamp(now, keep_times)).map_err(|e| fs_error(&crate::volume_service::status_of(e)));
        }
        let (target, _) = self.target(share)?;
        // One whole write through the service's owner routing (a peer, or the local store).
        let msg = WriteChunk { target: Some(target), ino: id, offset, data: bytes::Bytes::copy_from_slice(data), now, open, keep_times };
        self.wait(async { self.service.write_one(msg).await.map_err(|s| fs_error(&s)) })
    }

    fn set_size(&self, share: &str, id: u64, size: u64, now: Stamp) -> Result<(), FsError> {
        let (target, _) = self.target(share)?;
        self.call(self.service.set_size(tonic::Request::new(SetSizeRequest { target: Some(target), ino: id, size, now: now.now, keep_times: keep_bits(now.keep) }))).map(|_| ())
    }

    fn set_basic(&self, share: &str, id: u64, basic: umbra_smb_gateway::server::files::Basic) -> Result<(), FsError> {
        let (target, _) = self.target(share)?;
        let req = SetInfoRequest { target: Some(target), ino: id, created: basic.created, written: basic.written, changed: basic.changed, attributes: basic.attributes, sparse: basic.sparse, ..Default::default() };
        self.call(self.service.set_info(tonic::Request::new(req))).map(|_| ())
    }

    fn security(&self, share: &str, id: u64) -> Result<Option<Vec<u8>>, FsError> {
        let (target, _) = self.target(share)?;
        let reply = self.call(self.service.stat(tonic::Request::new(StatRequest { target: Some(target), ino: id, security: true })))?;
        let security = reply.entry.and_then(|e| e.attributes).map(|a| a.security).unwrap_or_default();
        Ok((!security.is_empty()).then_some(security))
    }

    fn set_security(&self, share: &str, id: u64, descriptor: Vec<u8>, parts: u32, now: u64) -> Result<(), FsError> {
        let (target, _) = self.target(share)?;
        let req = SetInfoRequest { target: Some(target), ino: id, changed: Some(now), security: Some(descriptor), security_info: parts, ..Default::default() };
        self.call(self.service.set_info(tonic::Request::new(req))).map(|_| ())
    }

    fn allocated_ranges(&self, share: &str, id: u64, offset: u64, length: u64) -> Result<(Vec<(u64, u64)>, Option<u64>), FsError> {
        let (target, _) = self.target(share)?;
        let reply = self.call(self.service.allocated_ranges(tonic::Request::new(RangesRequest { target: Some(target), ino: id, offset, length })))?;
        // Bounded by the owner (`MAX_ALLOCATED_SCAN_CHUNKS`), whose answer this takes as it is.
        Ok((reply.ranges.into_iter().map(|r| (r.offset, r.length)).collect(), (reply.more_from != 0).then_some(reply.more_from)))
    }

    fn zero_range(&self, share: &str, id: u64, offset: u64, length: u64, now: Stamp, open: Option<u64>) -> Result<Option<u64>, FsError> {
        let (target, _) = self.target(share)?;
        let open = open.map(|o| self.opens.open_ref(o));
        let reply = self.call(self.service.zero_range(tonic::Request::new(ZeroRangeRequest { target: Some(target), ino: id, offset, length, now: now.now, open, keep_times: keep_bits(now.keep) })))?;
        Ok((reply.more_from != 0).then_some(reply.more_from))
    }

    fn copy_range(&self, share: &str, from: umbra_smb_gateway::server::files::CopySide, to: umbra_smb_gateway::server::files::CopySide, len: u32, now: Stamp) -> Result<u32, FsError> {
        if self.local(share).is_some() {
            return umbra_smb_gateway::server::files::copy_by_read_and_write(self, share, from, to, len, now);
        }
        // Another node owns the volume: it reads and writes there.
        let (target, _) = self.target(share)?;
        let (source_open, target_open) = (from.open.map(|o| self.opens.open_ref(o)), to.open.map(|o| self.opens.open_ref(o)));
        let req = CopyRangeRequest { target: Some(target), source_ino: from.id, source_offset: from.offset, target_ino: to.id, target_offset: to.offset, length: len, now: now.now, source_open, target_open, keep_times: keep_bits(now.keep) };
        Ok(self.call(self.service.copy_range(tonic::Request::new(req)))?.copied)
    }

    fn unlink(&self, share: &str, parent: u64, name: &str, now: u64) -> Result<(), FsError> {
        let (target, _) = self.target(share)?;
        self.call(self.service.unlink(tonic::Request::new(UnlinkRequest { target: Some(target), parent, name: name.into(), now }))).map(|_| ())
    }

    fn rename(&self, share: &str, from_dir: u64, from: &str, to_dir: u64, to: &str, replace: bool, now: u64) -> Result<(), FsError> {
        let (target, _) = self.target(share)?;
        let req = RenameRequest { target: Some(target), from_dir, from: from.into(), to_dir, to: to.into(), replace, now };
        self.call(self.service.rename(tonic::Request::new(req))).map(|_| ())
    }

    fn flush(&self, share: &str) -> Result<(), FsError> {
        let (target, _) = self.target(share)?;
        self.call(self.service.sync(tonic::Request::new(target))).map(|_| ())
    }

    fn tracks_opens(&self) -> bool {
        true
    }

    fn register_open(&self, share: &str, id: u64, mode: umbra_smb_gateway::share_modes::Mode, delete_at_close: Option<(u64, &str)>) -> Result<u64, FsError> {
        let (target, _) = self.target(share)?;
        let delete = delete_at_close.map(|(parent, name)| DeleteAtClose { parent, name: name.to_string() });
        self.wait(self.opens.register(&self.service, target, id, mode, delete))
    }

    fn release_open(&self, registration: u64) {
        if let Err(e) = self.wait(self.opens.release(&self.service, registration, None, 0)) {
            tracing::warn!(registration, error = %e, "releasing an open");
        }
    }

    fn close_open(&self, _share: &str, registration: u64, delete: Option<(u64, &str)>, now: u64) -> Result<(), FsError> {
        let delete = delete.map(|(parent, name)| DeleteAtClose { parent, name: name.to_string() });
        self.wait(self.opens.release(&self.service, registration, delete, now))
    }

    fn dispose_open(&self, registration: u64, delete: Option<(u64, &str)>) -> Result<(), FsError> {
        let delete = delete.map(|(parent, name)| DeleteAtClose { parent, name: name.to_string() });
        self.wait(self.opens.dispose(&self.service, registration, delete))
    }

    fn lock(&self, registration: u64, locks: &[umbra_smb_gateway::byte_locks::ByteLock], unlock: bool) -> Result<(), FsError> {
        self.wait(self.opens.lock(&self.service, registration, locks, unlock))
    }
}
