//! The per-volume write gate, and the fence the shadow-copy coordinator raises on it.
//!
//! Every mutation passes the gate as one whole operation (one write batch). Raising a fence
//! stops new mutations at the gate (they wait, in a bounded queue), lets the ones in flight
//! finish, then runs the fence-point action (the tentative snapshot) with nothing in flight.
//! The fence ends at `release`, or by itself at its TTL whatever happens to the caller: a
//! waiting mutation wakes at the TTL and goes on. Reads never pass the gate.
//!
//! Time is the runtime's clock (`tokio::time::Instant`: the system clock in production, the
//! virtual one under simulation). Async callers wait out a fence with [`Gate::wait_open`]
//! before their synchronous mutation, so a single-threaded runtime never blocks on the gate.

use std::cell::Cell;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::error::{Result, VolumeError};

/// Mutations that may wait at a raised fence; more are refused as busy.
pub const MAX_HELD_MUTATIONS: usize = 4096;
/// The longest TTL a fence may ask for.
pub const MAX_FENCE_TTL: Duration = Duration::from_secs(60);

thread_local! {
    /// Set while [`refusing_at_fence`] runs a call, until its first mutation is admitted.
    static REFUSE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (one store call) so that its first mutation, if a fence holds, fails with
/// [`VolumeError::AtFence`] before it changes anything, instead of blocking the thread until
/// the fence ends. For a thread that serves others and must not stop at a gate (a gRPC
/// connection's thread: the fence's release may be queued behind it); the caller waits out the
/// fence asynchronously ([`Gate::wait_open`]) and runs `f` again. Mutations after the first
/// (a call that makes several) wait as usual: the call is under way.
pub fn refusing_at_fence<T>(f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            REFUSE.with(|r| r.set(false));
        }
    }
    REFUSE.with(|r| r.set(true));
    let _reset = Reset;
    f()
}

/// Whether this thread's call refuses to wait at a fence (see [`refusing_at_fence`]) and has
/// not yet had a mutation admitted.
pub(super) fn refusing() -> bool {
    REFUSE.with(Cell::get)
}

/// Arms refusal again (or not) for a call whose admitted mutation turned out to change
/// nothing, so that the call is still not under way.
pub(super) fn set_refusing(on: bool) {
    REFUSE.with(|r| r.set(on));
}

#[derive(Default)]
struct GateState {
    in_flight: usize,
    held: usize,
    fence: Option<Active>,
}

#[derive(Clone, Copy)]
struct Active {
    token: u64,
    /// When new mutations started to wait.
    raised: Instant,
    until: Instant,
}

impl GateState {
    /// The fence, if it still holds at `now`.
    fn holding(&self, now: Instant) -> Option<Active> {
        self.fence.filter(|f| now < f.until)
    }
}

#[derive(Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
    /// Wakes async waiters ([`Gate::wait_open`]) when a fence ends.
    opened: tokio::sync::Notify,
}

/// One mutation's passage; leaving the scope lets a draining fence go on.
pub struct Pass<'a> {
    gate: &'a Gate,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.in_flight -= 1;
        self.gate.changed.notify_all();
    }
}

/// How a fence ended, as `release` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Released {
    /// Held from the fence point until this release.
    Held,
    /// Its TTL ran out first: mutations may have passed since the fence point.
    Expired,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().expect("gate lock")
    }

    /// Waits while a fence holds (at most until its TTL), then lets one mutation in. The store
    /// admits under its volume lock instead (`VolumeEntry::mutation`); this is the gate alone,
    /// for its own tests.
    #[cfg(test)]
    pub fn enter(&self) -> Result<Pass<'_>> {
        loop {
            self.wait_open_blocking()?;
            if let Some(pass) = self.admit() {
                return Ok(pass);
            }
        }
    }

    /// Waits while a fence holds, at most until its TTL; counts as held meanwhile. Admits
    /// nothing: the caller takes the volume lock and then asks [`Gate::admit`].
    pub fn wait_open_blocking(&self) -> Result<()> {
        let mut st = self.lock();
        if REFUSE.with(Cell::get) && st.holding(Instant::now()).is_some() {
            return Err(VolumeError::AtFence);
        }
        while let Some(f) = st.holding(Instant::now()) {
            if st.held >= MAX_HELD_MUTATIONS {
                return Err(VolumeError::Busy("too many writes are waiting at a fence"));
            }
            st.held += 1;
            let wait = f.until.saturating_duration_since(Instant::now());
            st = self.changed.wait_timeout(st, wait).expect("gate lock").0;
            st.held -= 1;
        }
        Ok(())
    }

    /// Lets one mutation in unless a fence holds now. A writer asks while holding the volume
    /// lock, so a fence raised while writers queue for that lock drains only the one holding
    /// it: the others find the fence here and go back to [`Gate::wait_open_blocking`].
    pub fn admit(&self) -> Option<Pass<'_>> {
        let mut st = self.lock();
        if st.holding(Instant::now()).is_some() {
            return None;
        }
        st.in_flight += 1;
        REFUSE.with(|r| r.set(false));
        Some(Pass { gate: self })
    }

    /// Raises a fence with `token` for `ttl`: new mutations wait, those in flight finish, then
    /// `at_fence` runs with none in flight. If they do not drain within the TTL the fence is
    /// dropped and the call fails.
    pub fn raise<T>(&self, token: u64, ttl: Duration, at_fence: impl FnOnce() -> Result<T>) -> Result<T> {
        if ttl.is_zero() || ttl > MAX_FENCE_TTL {
            return Err(VolumeError::Invalid(format!("a fence TTL is between 1 ms and {} s", MAX_FENCE_TTL.as_secs())));
        }
        let mut st = self.lock();
        if let Some(f) = st.holding(Instant::now()) {
            if f.token != token {
                return Err(VolumeError::Busy("another fence holds this volume"));
            }
        }
        let raised = Instant::now();
        let until = raised + ttl;
        st.fence = Some(Active { token, raised, until });
        while st.in_flight > 0 {
            let now = Instant::now();
            if now >= until {
                st.fence = None;
                self.changed.notify_all();
                drop(st);
                self.opened.notify_waiters();
                return Err(VolumeError::Busy("writes in flight did not drain within the fence TTL"));
            }
            st = self.changed.wait_timeout(st, until - now).expect("gate lock").0;
        }
        // Nothing is in flight, and nothing is admitted while the fence holds. The gate's lock
        // is let go first: a writer holding the volume lock asks `admit` before it lets go.
        drop(st);
        let result = at_fence();
        let mut st = self.lock();
        if result.is_err() || Instant::now() >= until {
            st.fence = None;
            self.changed.notify_all();
            drop(st);
            self.opened.notify_waiters();
        }
        result
    }

    /// Ends the fence raised with `token`; says whether it held the whole time, and how long
    /// mutations were held (zero if this fence no longer stood).
    pub fn release(&self, token: u64) -> (Released, Duration) {
        let mut st = self.lock();
        let now = Instant::now();
        let held = matches!(st.fence, Some(f) if f.token == token && now < f.until);
        let hold = match st.fence {
            Some(f) if f.token == token => now.min(f.until).saturating_duration_since(f.raised),
            _ => Duration::ZERO,
        };
        if matches!(st.fence, Some(f) if f.token == token) || st.holding(now).is_none() {
            st.fence = None;
        }
        self.changed.notify_all();
        drop(st);
        self.opened.notify_waiters();
        (if held { Released::Held } else { Released::Expired }, hold)
    }

    /// Waits, without blocking the thread, until no fence holds (at most until its TTL). A
    /// mutation that then runs without yielding to the runtime passes [`Gate::enter`] at once
    /// on a single-threaded runtime; elsewhere `enter` still waits out a fence raised since.
    /// Counts as held while it waits (also when the waiting future is dropped midway), so
    /// async and blocking writers together stay within [`MAX_HELD_MUTATIONS`].
    pub async fn wait_open(&self) -> Result<()> {
        /// One held writer, let go when the wait ends or is abandoned.
        struct Counted<'a>(&'a Gate);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.lock().held -= 1;
            }
        }
        let mut counted = None;
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            let until = {
                let mut st = self.lock();
                let Some(f) = st.holding(Instant::now()) else { return Ok(()) };
                if counted.is_none() {
                    if st.held >= MAX_HELD_MUTATIONS {
                        return Err(VolumeError::Busy("too many writes are waiting at a fence"));
                    }
                    st.held += 1;
                    counted = Some(Counted(self));
                }
                f.until
            };
            tokio::select! {
                _ = opened => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Whether a fence holds now (for tests and status).
    pub fn fenced(&self) -> bool {
        self.lock().holding(Instant::now()).is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_fence_waits_for_in_flight_writes_and_holds_new_ones_until_release() {
        let gate = Arc::new(Gate::default());
        let in_write = gate.enter().unwrap();
        let fenced_at = Arc::new(AtomicBool::new(false));
        let g = gate.clone();
        let f = fenced_at.clone();
        let fence = std::thread::spawn(move || g.raise(7, Duration::from_secs(5), || Ok(f.store(true, Ordering::SeqCst))));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!fenced_at.load(Ordering::SeqCst), "the fence point waits for the write in flight");
        drop(in_write);
        fence.join().unwrap().unwrap();
        assert!(fenced_at.load(Ordering::SeqCst));

        let passed = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let (g, p) = (gate.clone(), passed.clone());
                std::thread::spawn(move || {
                    let _pass = g.enter().unwrap();
                    p.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(passed.load(Ordering::SeqCst), 0, "no write lands inside the fence");
        let (outcome, hold) = gate.release(7);
        assert_eq!(outcome, Released::Held);
        assert!(hold >= Duration::from_millis(50), "the hold counts from the raise ({hold:?})");
        writers.into_iter().for_each(|w| w.join().unwrap());
        assert_eq!(passed.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_fence_whose_caller_vanished_ends_at_its_ttl_and_its_release_says_expired() {
        let gate = Gate::default();
        gate.raise(1, Duration::from_millis(100), || Ok(())).unwrap();
        assert!(gate.fenced());
        let start = Instant::now();
        drop(gate.enter().unwrap());
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(80), "the write waited for the TTL ({waited:?})");
        assert!(!gate.fenced());
        assert_eq!(gate.release(1).0, Released::Expired);
    }

    #[test]
    fn a_second_fence_is_refused_while_one_holds_and_bad_ttls_are_refused() {
        let gate = Gate::default();
        gate.raise(1, Duration::from_secs(5), || Ok(())).unwrap();
        assert!(matches!(gate.raise(2, Duration::from_secs(5), || Ok(())), Err(VolumeError::Busy(_))));
        assert!(matches!(gate.raise(3, Duration::ZERO, || Ok(())), Err(VolumeError::Invalid(_))));
        assert_eq!(gate.release(1).0, Released::Held);
    }

    #[tokio::test(start_paused = true)]
    async fn an_async_writer_waits_out_a_fence_on_the_runtime_clock_without_blocking() {
        let gate = Arc::new(Gate::default());
        gate.raise(1, Duration::from_secs(5), || Ok(())).unwrap();
        let start = Instant::now();
        let g = gate.clone();
        let waiter = tokio::spawn(async move {
            g.wait_open().await.unwrap();
            drop(g.enter().unwrap());
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "the writer waits while the fence holds");
        assert_eq!(gate.release(1).0, Released::Held);
        let passed = waiter.await.unwrap();
        assert_eq!(passed - start, Duration::from_secs(1), "release wakes the writer at once");

        gate.raise(2, Duration::from_millis(300), || Ok(())).unwrap();
        let start = Instant::now();
        gate.wait_open().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(300), "an unreleased fence ends at its TTL");
        assert_eq!(gate.release(2).0, Released::Expired);
    }

    /// Writers that wait out a fence asynchronously count against the same bound as blocking
    /// ones: past it, one more is refused as busy at once; an abandoned wait lets go of its
    /// place; and release lets every waiter through.
    #[tokio::test(start_paused = true)]
    async fn async_waiters_count_against_the_held_bound_and_an_abandoned_wait_lets_go() {
        let gate = Arc::new(Gate::default());
        gate.raise(1, Duration::from_secs(30), || Ok(())).unwrap();
        let waiters: Vec<_> = (0..MAX_HELD_MUTATIONS)
            .map(|_| {
                let g = gate.clone();
                tokio::spawn(async move { g.wait_open().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(gate.lock().held, MAX_HELD_MUTATIONS);
        assert!(matches!(gate.wait_open().await, Err(VolumeError::Busy(_))), "one past the bound is refused");
        assert!(matches!(gate.wait_open_blocking(), Err(VolumeError::Busy(_))), "blocking writers share the bound");
        let mut waiters = waiters.into_iter();
        let first = waiters.next().unwrap();
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        assert_eq!(gate.lock().held, MAX_HELD_MUTATIONS - 1, "the abandoned wait let go of its place");
        let g = gate.clone();
        let late = tokio::spawn(async move { g.wait_open().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!late.is_finished(), "a new writer waits again");
        assert_eq!(gate.release(1).0, Released::Held);
        for w in waiters.chain([late]) {
            w.await.unwrap().unwrap();
        }
        assert_eq!(gate.lock().held, 0);
    }
}
