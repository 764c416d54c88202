//! Node-local volume upkeep, level-triggered from the Raft state (design.md section 2): create
//! in the volume store every volume Raft says this node owns, and run reclaim in bounded steps.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use umbra_raft::store::MetaReader;
use umbra_raft::NodeId;

use crate::volume::VolumeStore;

/// How often upkeep runs when nothing wakes it earlier.
const UPKEEP_PERIOD: Duration = Duration::from_millis(200);

/// The current time as FILETIME (100 ns ticks since 1601-01-01), as SMB and the store use it.
pub fn filetime_now() -> u64 {
    const UNIX_EPOCH_AS_FILETIME: u64 = 116_444_736_000_000_000;
    let since_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH_AS_FILETIME + (since_unix.as_nanos() / 100) as u64
}

/// Runs until `stop` changes.
pub async fn run(node: NodeId, store: Arc<VolumeStore>, meta: MetaReader, step_entries: usize, mut stop: watch::Receiver<bool>) {
    loop {
        let (s, m) = (store.clone(), meta.clone());
        match tokio::task::spawn_blocking(move || upkeep(node, &s, &m, step_entries)).await {
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
        store.create_volume(vol, filetime_now())?;
        tracing::info!(volume = %vol, "created volume");
    }
    for vol in store.volumes() {
        // One bounded step per volume per round, so no volume starves the others.
        store.reclaim_step(vol, step_entries)?;
    }
    Ok(())
}
