//! Node-local volume upkeep, level-triggered from the Raft state (design.md section 2): create
//! in the volume store every volume Raft says this node owns, and run reclaim in bounded steps.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use umbra_raft::store::MetaReader;
use umbra_raft::NodeId;

use crate::config::VolumeTuning;
use crate::volume::VolumeStore;
use crate::volume_service::StoreCalls;

/// How often upkeep runs when nothing wakes it earlier.
pub const UPKEEP_PERIOD: Duration = Duration::from_millis(200);
/// Reclaim steps run for at most this long per volume per round (a quarter of the period): a
/// large deletion is freed steadily, each step holding the volume only for its bounded batch.
pub const RECLAIM_SLICE: Duration = Duration::from_millis(50);

/// Runs until `stop` changes; store calls on the blocking pool or inline, as `calls` says.
pub async fn run(node: NodeId, store: Arc<VolumeStore>, meta: MetaReader, tuning: VolumeTuning, calls: StoreCalls, mut stop: watch::Receiver<bool>) {
    loop {
        let (s, m, t) = (store.clone(), meta.clone(), tuning.clone());
        let done = match calls {
            StoreCalls::Blocking => tokio::task::spawn_blocking(move || upkeep(node, &s, &m, &t)).await,
            StoreCalls::Inline => Ok(upkeep(node, &s, &m, &t)),
        };
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "volume upkeep failed; retrying"),
            Err(e) => tracing::error!(error = %e, "volume upkeep task failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(UPKEEP_PERIOD) => {}
            _ = stop.changed() => return,
        }
    }
}

fn upkeep(node: NodeId, store: &VolumeStore, meta: &MetaReader, tuning: &VolumeTuning) -> crate::volume::Result<()> {
    let mine: Vec<uuid::Uuid> = meta.read().state.volumes.values().filter(|v| v.owner == node).map(|v| v.id).collect();
    let have = store.volumes();
    for vol in mine.into_iter().filter(|v| !have.contains(v)) {
        store.create_volume(vol, crate::filetime_now())?;
        tracing::info!(volume = %vol, "created volume");
    }
    let slice = Duration::from_millis(tuning.reclaim_slice_ms);
    for vol in store.volumes() {
        // Bounded steps, for at most the slice per volume per round, so no volume starves the
        // others; none while a fence holds the volume (they would wait at it); one whose step
        // fails holds up no other.
        let started = std::time::Instant::now();
        while !store.fenced(vol).unwrap_or(true) {
            match store.reclaim_step(vol, tuning.reclaim_step_entries) {
                Ok(true) if started.elapsed() < slice => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(volume = %vol, error = %e, "a reclaim step failed; retried next round");
                    break;
                }
            }
        }
    }
    Ok(())
}
