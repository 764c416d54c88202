//! Dedicated threads: threads that do one thing at a time and may block while they do it.
//!
//! Two kinds: a gRPC connection's thread ([`crate::grpc_server`]), which reads that connection's
//! requests, answers them and writes the replies; and a caller thread (the SMB gateway's
//! blocking workers), which waits for one call to another node at a time. On both, the volume
//! service runs store calls inline instead of handing them to the blocking pool and back. A
//! caller thread's calls to other nodes run on a current-thread runtime of its own
//! ([`block_on`]) over connections of its own, so the reply wakes the very thread that waits
//! for it.
//!
//! Why: each hop from one thread to another costs tens of microseconds on a small VM, and a
//! small call from a gateway to a volume's owner through the shared runtimes crossed about ten
//! (the caller, tonic's channel worker, the HTTP/2 connection tasks on both sides, the stream's
//! task, the blocking pool, and back: docs/benchmarks.md, SMB Run 15). Here it crosses two:
//! the owner's connection thread wakes for the request, the caller for the reply.

use std::cell::{Cell, RefCell};
use std::future::Future;

/// What this thread is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Not dedicated: an async worker, or a blocking-pool thread of the shared runtime.
    Shared,
    /// Serves one incoming gRPC connection.
    Connection,
    /// Waiting in [`block_on`] for its own calls to other nodes.
    Caller,
}

thread_local! {
    static KIND: Cell<Kind> = const { Cell::new(Kind::Shared) };
    /// A caller thread's runtime, made on its first call.
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// What the current thread is.
pub fn kind() -> Kind {
    KIND.with(Cell::get)
}

/// Marks the current thread as serving one gRPC connection (for its whole life).
pub fn mark_connection() {
    KIND.with(|k| k.set(Kind::Connection));
}

/// Whether the current thread may run a store call inline (it is dedicated, of either kind).
pub fn may_block() -> bool {
    kind() != Kind::Shared
}

/// Runs `f` to completion on this thread's own current-thread runtime, made on first use; the
/// thread is a caller while it runs (and only then: the same thread may later wait on the
/// node's runtime, where its own connections do not run). Tasks `f` spawns (a connection's
/// driver) stay on this runtime and run only while some `block_on` runs here, so every call
/// made under it must be awaited whole. Must not be called from async code (it blocks), nor
/// from inside itself; a blocking-pool thread of another runtime is fine.
pub fn block_on<F: Future>(f: F) -> std::io::Result<F::Output> {
    struct Restore(Kind);
    impl Drop for Restore {
        fn drop(&mut self) {
            KIND.with(|k| k.set(self.0));
        }
    }
    RUNTIME.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(|_| std::io::Error::other("dedicated::block_on called inside itself"))?;
        if slot.is_none() {
            *slot = Some(tokio::runtime::Builder::new_current_thread().enable_all().build()?);
        }
        let runtime = slot.as_ref().expect("made just above");
        let _restore = Restore(kind());
        KIND.with(|k| k.set(Kind::Caller));
        Ok(runtime.block_on(f))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_thread_keeps_one_runtime_and_its_tasks() {
        std::thread::spawn(|| {
            assert_eq!(kind(), Kind::Shared);
            // A task spawned under one block_on is still there for the next.
            let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
            block_on(async move {
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    let _ = tx.send(7);
                });
            })
            .unwrap();
            assert_eq!(kind(), Kind::Shared, "a caller only while block_on runs");
            assert_eq!(block_on(async { (kind(), may_block()) }).unwrap(), (Kind::Caller, true));
            assert_eq!(block_on(rx).unwrap().unwrap(), 7);
            assert!(block_on(async { block_on(async {}) }).unwrap().is_err(), "not inside itself");
        })
        .join()
        .unwrap();
        assert_eq!(kind(), Kind::Shared, "each thread has its own mark");
    }
}
