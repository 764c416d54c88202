//! Durability: group-committed WAL syncs, and how the WAL's dirty pages reach the disk between
//! syncs.
//!
//! An acknowledged write is in the WAL (the page cache); FLUSH, write-through and a fence's
//! release make it durable with [`SyncGroup::sync`], one WAL sync covering every write before
//! it. Between syncs the WAL's dirty pages go out either from the writing thread (RocksDB's
//! `wal_bytes_per_sync`: every so many bytes the writer starts their writeback itself) or from a
//! background syncer thread of the store's own ([`WalTuning::sync_interval`]), so writers never
//! wait on writeback and the next caller's sync finds little left to do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rocksdb::DB;

use super::error::Result;

/// How the WAL's dirty pages are written out between syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalTuning {
    /// Unsynced WAL bytes after which the writing thread starts their writeback (0: never).
    pub bytes_per_sync: u64,
    /// How often a background thread syncs the WAL when writes are pending (None: never).
    pub sync_interval: Option<Duration>,
}

/// The longest interval a background WAL syncer may be given.
pub const MAX_WAL_SYNC_INTERVAL: Duration = Duration::from_secs(10);

impl Default for WalTuning {
    fn default() -> Self {
        WalTuning { bytes_per_sync: 1024 * 1024, sync_interval: None }
    }
}

/// Group commit for `sync`: one WAL sync at a time, covering every write before it.
#[derive(Default)]
pub(super) struct SyncGroup {
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Default)]
struct SyncState {
    running: bool,
    /// Every write with a sequence number up to this one is synced.
    synced_upto: u64,
    /// WAL syncs run so far.
    performed: u64,
}

impl SyncGroup {
    /// Makes every write acknowledged before the call durable. Concurrent callers share syncs:
    /// a caller whose writes a finished sync covered returns without one.
    pub(super) fn sync(&self, db: &DB) -> Result<()> {
        let target = db.latest_sequence_number();
        let mut st = self.state.lock().expect("sync lock");
        loop {
            if st.synced_upto >= target {
                return Ok(());
            }
            if st.running {
                st = self.done.wait(st).expect("sync lock");
                continue;
            }
            st.running = true;
            let covers = db.latest_sequence_number();
            drop(st);
            let result = db.flush_wal(true);
            st = self.state.lock().expect("sync lock");
            st.running = false;
            st.performed += 1;
            if result.is_ok() {
                st.synced_upto = st.synced_upto.max(covers);
            }
            self.done.notify_all();
            result?;
        }
    }

    /// WAL syncs run so far.
    pub(super) fn performed(&self) -> u64 {
        self.state.lock().expect("sync lock").performed
    }
}

/// A background thread that syncs the WAL every `interval` while writes are pending; stopped
/// and joined on drop (before the store closes its database).
pub(super) struct WalSyncer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl WalSyncer {
    pub(super) fn start(db: Arc<DB>, group: Arc<SyncGroup>, interval: Duration) -> WalSyncer {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let failed = AtomicBool::new(false);
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("umbra-wal-sync".into())
            .spawn(move || loop {
                let stopped = s.0.lock().expect("syncer lock");
                let (stopped, _) = s.1.wait_timeout(stopped, interval).expect("syncer lock");
                if *stopped {
                    return;
                }
                drop(stopped);
                // A failed sync is retried next round; callers' own syncs report errors.
                if let Err(e) = group.sync(&db) {
                    if !failed.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "background WAL sync failed");
                    }
                }
            })
            .expect("spawning the WAL syncer");
        WalSyncer { stop, thread: Some(thread) }
    }
}

impl Drop for WalSyncer {
    fn drop(&mut self) {
        *self.stop.0.lock().expect("syncer lock") = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
