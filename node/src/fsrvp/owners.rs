//! Calls to the volumes' owners, through the volume service with routing on (in-process when
//! this node owns the volume, gRPC otherwise). Idempotent: "already exists" and "not found"
//! answers to create and delete count as done, so a retry or a reconcile pass can repeat them.

use std::time::Duration;

use tonic::Request;
use umbra_proto::v1::volume_server::Volume as _;
use umbra_proto::v1::*;
use uuid::Uuid;

use super::Coordinator;
use crate::filetime_now;

fn target(volume: Uuid, snapshot: Option<Uuid>) -> VolumeTarget {
    VolumeTarget { volume: volume.to_string(), snapshot: snapshot.map(|s| s.to_string()).unwrap_or_default(), clone: String::new(), route: true }
}

fn kind(s: &tonic::Status) -> &str {
    s.metadata().get("umbra-error").and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn describe(volume: Uuid, what: &str, s: &tonic::Status) -> String {
    format!("volume {volume}: {what}: {}", s.message())
}

impl Coordinator {
    /// Raises the fence with `token` on `volume` and takes tentative snapshot `snapshot` at
    /// its fence point; `Ok` once the owner has synced it.
    pub(crate) async fn fence(&self, volume: Uuid, token: u64, ttl: Duration, snapshot: Uuid) -> Result<(), String> {
        let mut req = Request::new(FenceRequest { target: Some(target(volume, None)), token, ttl_ms: ttl.as_millis() as u64, snapshot: snapshot.to_string(), now: filetime_now() });
        req.set_timeout(ttl);
        self.service.fence(req).await.map(|_| ()).map_err(|s| describe(volume, "fence", &s))
    }

    /// Ends the fence: whether it held from its fence point until now, and how long writes
    /// were held.
    pub(crate) async fn release(&self, volume: Uuid, token: u64) -> Result<(bool, Duration), String> {
        let mut req = Request::new(ReleaseRequest { target: Some(target(volume, None)), token });
        req.set_timeout(Duration::from_secs(5));
        self.service.release(req).await.map(|r| r.into_inner()).map(|r| (r.held, Duration::from_micros(r.held_us))).map_err(|s| describe(volume, "release", &s))
    }

    pub(crate) async fn commit_snapshot(&self, volume: Uuid, snapshot: Uuid) -> Result<(), String> {
        let req = Request::new(SnapshotRequest { target: Some(target(volume, None)), id: snapshot.to_string(), now: 0 });
        self.service.snapshot_commit(req).await.map(|_| ()).map_err(|s| describe(volume, "snapshot commit", &s))
    }

    pub(crate) async fn create_clone(&self, volume: Uuid, snapshot: Uuid, clone: Uuid) -> Result<(), String> {
        let req = Request::new(CloneRequest { target: Some(target(volume, Some(snapshot))), id: clone.to_string() });
        match self.service.clone_create(req).await {
            Ok(_) => Ok(()),
            Err(s) if kind(&s) == "exists" => Ok(()),
            Err(s) => Err(describe(volume, "clone", &s)),
        }
    }

    pub(crate) async fn seal_clone(&self, volume: Uuid, clone: Uuid) -> Result<(), String> {
        let req = Request::new(CloneRequest { target: Some(target(volume, None)), id: clone.to_string() });
        self.service.clone_seal(req).await.map(|_| ()).map_err(|s| describe(volume, "seal", &s))
    }

    /// Deletes a shadow copy's writable branch (if any) and then its snapshot.
    pub(crate) async fn drop_copy(&self, volume: Uuid, snapshot: Option<Uuid>, clone: Option<Uuid>) -> Result<(), String> {
        if let Some(c) = clone {
            let req = Request::new(CloneRequest { target: Some(target(volume, None)), id: c.to_string() });
            match self.service.clone_delete(req).await {
                Ok(_) => {}
                Err(s) if kind(&s) == "not_found" => {}
                Err(s) => return Err(describe(volume, "clone delete", &s)),
            }
        }
        if let Some(snap) = snapshot {
            let req = Request::new(SnapshotRequest { target: Some(target(volume, None)), id: snap.to_string(), now: 0 });
            match self.service.snapshot_delete(req).await {
                Ok(_) => {}
                Err(s) if kind(&s) == "not_found" => {}
                Err(s) => return Err(describe(volume, "snapshot delete", &s)),
            }
        }
        Ok(())
    }

    pub(crate) async fn sync_volume(&self, volume: Uuid) -> Result<(), String> {
        self.service.sync(Request::new(target(volume, None))).await.map(|_| ()).map_err(|s| describe(volume, "sync", &s))
    }
}
