//! Level-triggered cleanup (design.md sections 2 and 5), on every node, every
//! [`RECONCILE_EVERY`] and at start-up.
//!
//! - Each owner lists the fenced snapshots and the writable branches on its volumes, then reads
//!   Raft linearizably (listing first: any snapshot listed was fenced under an attempt that
//!   Raft already knows) and resolves each: part of a committed set: keep (commit it if still
//!   tentative, seal its branch after recovery); attempt undecided: wait; otherwise delete.
//! - The leader proposes `Expire` when a sequence timer or a commit deadline is due, so an
//!   attempt whose coordinator died is decided Aborted and its snapshots then go.

use std::sync::Arc;
use std::time::Duration;

use umbra_raft::fsrvp::{FsrvpCommand, SnapshotFate};
use uuid::Uuid;

use super::Coordinator;
use crate::volume::{SnapshotState, VolumeStore};

pub const RECONCILE_EVERY: Duration = Duration::from_millis(500);

pub async fn run(coordinator: Arc<Coordinator>, store: Arc<VolumeStore>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        // A stop ends a pass where it stands (as a crash would): the next start reconciles again.
        tokio::select! {
            done = pass(&coordinator, &store) => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "shadow-copy reconcile pass incomplete; next pass retries");
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One pass; what it could not do now, a later pass does.
pub async fn pass(c: &Coordinator, store: &VolumeStore) -> Result<(), String> {
    expire_if_due(c).await;
    let mine: Vec<Uuid> = {
        let state = c.reader.read();
        store.volumes().into_iter().filter(|v| state.state.volumes.get(v).is_some_and(|m| m.owner == c.node)).collect()
    };
    let mut fenced = Vec::new();
    let mut clones = Vec::new();
    for vol in &mine {
        let snaps = store.snapshots(*vol).map_err(|e| e.to_string())?;
        let tokens: std::collections::BTreeMap<Uuid, u64> = snaps.iter().filter_map(|s| s.token.map(|t| (s.id, t))).collect();
        fenced.extend(snaps.into_iter().filter(|s| s.token.is_some() && s.state != SnapshotState::Deleting).map(|s| (*vol, s)));
        for cl in store.clones(*vol).map_err(|e| e.to_string())? {
            if tokens.contains_key(&cl.base_snapshot) {
                clones.push((*vol, cl));
            }
        }
    }
    if fenced.is_empty() && clones.is_empty() {
        return Ok(());
    }
    let state = c.state().await.map_err(|e| e.to_string())?;
    for (vol, cl) in clones {
        let copy = state.sets.values().find_map(|s| s.copies.iter().find(|cp| cp.id == cl.id).map(|_| s.state));
        match copy {
            None => {
                tracing::info!(volume = %vol, clone = %cl.id, "deleting a writable shadow copy no set holds");
                c.drop_copy(vol, None, Some(cl.id)).await?;
            }
            Some(umbra_raft::fsrvp::SetState::Recovered) if !cl.sealed => c.seal_clone(vol, cl.id).await?,
            Some(_) => {}
        }
    }
    for (vol, snap) in fenced {
        let token = snap.token.unwrap_or_default();
        match state.resolve_snapshot(vol, snap.id, token) {
            SnapshotFate::Keep { .. } if snap.state == SnapshotState::Tentative => c.commit_snapshot(vol, snap.id).await?,
            SnapshotFate::Keep { .. } | SnapshotFate::Wait => {}
            SnapshotFate::Delete => {
                tracing::info!(volume = %vol, snapshot = %snap.id, token, "deleting a fenced snapshot no committed set holds");
                let based: Vec<Uuid> = store.clones(vol).map_err(|e| e.to_string())?.into_iter().filter(|cl| cl.base_snapshot == snap.id).map(|cl| cl.id).collect();
                for cl in based {
                    c.drop_copy(vol, None, Some(cl)).await?;
                }
                c.drop_copy(vol, Some(snap.id), None).await?;
            }
        }
    }
    Ok(())
}

/// Leader only: proposes `Expire` once something is due by this node's clock (apply judges
/// by the entry's leader stamp, which is this clock too).
async fn expire_if_due(c: &Coordinator) {
    let leader = c.meta.raft().metrics().borrow().current_leader == Some(c.node);
    if !leader {
        return;
    }
    let due = c.reader.read().state.fsrvp.next_due_ms();
    let now = umbra_raft::clock::now_ms();
    if due.is_some_and(|d| d <= now) {
        if let Err(e) = c.write(FsrvpCommand::Expire).await {
            tracing::debug!(error = %e, "expire proposal failed; next pass retries");
        }
    }
}
