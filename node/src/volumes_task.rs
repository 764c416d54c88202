//! Node-local volume upkeep, level-triggered from the Raft state (design.md section 2): create
//! in the volume store every volume Raft says this node owns, and run reclaim in bounded steps.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use umbra_raft::store::MetaReader;
use umbra_raft::NodeId;

use crate::volume::VolumeStore;
use crate::volume_service::StoreCalls;

/// How often upkeep runs when nothing wakes it earlier.
const UPKEEP_PERIOD: Duration = Duration::from_millis(200);

/// Runs until `stop` changes; store calls on the blocking pool or inline, as `calls` says.
pub async fn run(node: NodeId, store: Arc<VolumeStore>, meta: MetaReader, step_entries: usize, calls: StoreCalls, mut stop: watch::Receiver<bool>) {
    loop {
        let (s, m) = (store.clone(), meta.clone());
        let done = match calls {
            StoreCalls::Blocking => tokio::task::spawn_blocking(move || upkeep(node, &s, &m, step_entries)).await,
            StoreCalls::Inline => Ok(upkeep(node, &s, &m, step_entries)),
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

fn upkeep(node: NodeId, store: &VolumeStore, meta: &MetaReader, step_entries: usize) -> crate::volume::Result<()> {
    let mine: Vec<uuid::Uuid> = meta.read().state.volumes.values().filter(|v| v.owner == node).map(|v| v.id).collect();
    let have = store.volumes();
    for vol in mine.into_iter().filter(|v| !have.contains(v)) {
        store.create_volume(vol, crate::filetime_now())?;
        tracing::info!(volume = %vol, "created volume");
    }
    for vol in store.volumes() {
        // One bounded step per volume per round, so no volume starves the others; one whose
        // step fails holds up no other.
        if let Err(e) = store.reclaim_step(vol, step_entries) {
            tracing::error!(volume = %vol, error = %e, "a reclaim step failed; retried next round");
        }
    }
    Ok(())
}
