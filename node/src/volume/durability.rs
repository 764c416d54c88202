//! Durability: group-committed WAL syncs.
//!
//! An acknowledged write is in the WAL (the page cache); FLUSH, write-through and a fence's
//! release make it durable with [`SyncGroup::sync`], one WAL sync covering every write before
//! it. Between syncs the writing thread starts the WAL's writeback every
//! [`WAL_BYTES_PER_SYNC`] bytes, so a sync finds little left to do.

use std::sync::{Condvar, Mutex};

use super::kv::Kv;

use super::error::Result;

/// Unsynced WAL bytes after which the writing thread starts their writeback.
pub(super) const WAL_BYTES_PER_SYNC: u64 = 1024 * 1024;

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
    pub(super) fn sync(&self, kv: &dyn Kv) -> Result<()> {
        let target = kv.sequence();
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
            let covers = kv.sequence();
            drop(st);
            let result = kv.sync_wal();
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
