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

/// How long a call to a volume's owner (other than a fence, which is given its TTL) may take
/// before the coordinator gives up on it: a wedged owner that still answers pings must not hold
/// a Commit, an Expose or a reconcile for ever.
pub const OWNER_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A release: the owner's one group-committed WAL sync.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// `call` to `volume`'s owner, given at most `limit` (a request's own timeout does not reach
/// an owner in this process, nor survive the volume service's forwarding).
async fn within<T>(limit: Duration, volume: Uuid, what: &str, call: impl std::future::Future<Output = Result<T, tonic::Status>>) -> Result<T, tonic::Status> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded(format!("volume {volume}: no answer to {what} within {} ms", limit.as_millis()))))
}

impl Coordinator {
    /// Raises the fence with `token` on `volume` and takes tentative snapshot `snapshot` at
    /// its fence point; `Ok` once the owner has synced it.
    pub(crate) async fn fence(&self, volume: Uuid, token: u64, ttl: Duration, snapshot: Uuid) -> Result<(), String> {
        let req = Request::new(FenceRequest { target: Some(target(volume, None)), token, ttl_ms: ttl.as_millis() as u64, snapshot: snapshot.to_string(), now: filetime_now() });
        within(ttl, volume, "fence", self.service.fence(req)).await.map(|_| ()).map_err(|s| describe(volume, "fence", &s))
    }

    /// Ends the fence: whether it held from its fence point until now, and how long writes
    /// were held.
    pub(crate) async fn release(&self, volume: Uuid, token: u64) -> Result<(bool, Duration), String> {
        let req = Request::new(ReleaseRequest { target: Some(target(volume, None)), token });
        within(RELEASE_TIMEOUT, volume, "release", self.service.release(req)).await.map(|r| r.into_inner()).map(|r| (r.held, Duration::from_micros(r.held_us))).map_err(|s| describe(volume, "release", &s))
    }

    pub(crate) async fn commit_snapshot(&self, volume: Uuid, snapshot: Uuid) -> Result<(), String> {
        let req = Request::new(SnapshotRequest { target: Some(target(volume, None)), id: snapshot.to_string(), now: 0 });
        within(OWNER_CALL_TIMEOUT, volume, "snapshot commit", self.service.snapshot_commit(req)).await.map(|_| ()).map_err(|s| describe(volume, "snapshot commit", &s))
    }

    pub(crate) async fn create_clone(&self, volume: Uuid, snapshot: Uuid, clone: Uuid) -> Result<(), String> {
        let req = Request::new(CloneRequest { target: Some(target(volume, Some(snapshot))), id: clone.to_string() });
        match within(OWNER_CALL_TIMEOUT, volume, "clone", self.service.clone_create(req)).await {
            Ok(_) => Ok(()),
            Err(s) if kind(&s) == "exists" => Ok(()),
            Err(s) => Err(describe(volume, "clone", &s)),
        }
    }

    pub(crate) async fn seal_clone(&self, volume: Uuid, clone: Uuid) -> Result<(), String> {
        let req = Request::new(CloneRequest { target: Some(target(volume, None)), id: clone.to_string() });
        within(OWNER_CALL_TIMEOUT, volume, "seal", self.service.clone_seal(req)).await.map(|_| ()).map_err(|s| describe(volume, "seal", &s))
    }

    /// Deletes a shadow copy's writable branch (if any) and then its snapshot.
    pub(crate) async fn drop_copy(&self, volume: Uuid, snapshot: Option<Uuid>, clone: Option<Uuid>) -> Result<(), String> {
        if let Some(c) = clone {
            let req = Request::new(CloneRequest { target: Some(target(volume, None)), id: c.to_string() });
            match within(OWNER_CALL_TIMEOUT, volume, "clone delete", self.service.clone_delete(req)).await {
                Ok(_) => {}
                Err(s) if kind(&s) == "not_found" => {}
                Err(s) => return Err(describe(volume, "clone delete", &s)),
            }
        }
        if let Some(snap) = snapshot {
            let req = Request::new(SnapshotRequest { target: Some(target(volume, None)), id: snap.to_string(), now: 0 });
            match within(OWNER_CALL_TIMEOUT, volume, "snapshot delete", self.service.snapshot_delete(req)).await {
                Ok(_) => {}
                Err(s) if kind(&s) == "not_found" => {}
                Err(s) => return Err(describe(volume, "snapshot delete", &s)),
            }
        }
        Ok(())
    }

    pub(crate) async fn sync_volume(&self, volume: Uuid) -> Result<(), String> {
        within(OWNER_CALL_TIMEOUT, volume, "sync", self.service.sync(Request::new(target(volume, None)))).await.map(|_| ()).map_err(|s| describe(volume, "sync", &s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owner that never answers costs the coordinator its limit, no more.
    #[tokio::test(start_paused = true)]
    async fn a_call_to_an_owner_that_never_answers_ends_at_its_limit() {
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<Result<(), tonic::Status>>();
        let e = within(OWNER_CALL_TIMEOUT, Uuid::nil(), "sync", never).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(started.elapsed(), OWNER_CALL_TIMEOUT);
        assert!(within(OWNER_CALL_TIMEOUT, Uuid::nil(), "sync", async { Ok(7) }).await.is_ok());
    }
}
