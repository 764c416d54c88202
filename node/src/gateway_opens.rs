//! This node's gateway side of share modes: every open that takes part in share-access checks
//! is registered with its volume's owner (node/src/opens.rs) through the volume service, and
//! the gateway renews its lease on each volume where it holds opens every
//! [`RENEW_INTERVAL_MS`](crate::opens::RENEW_INTERVAL_MS), listing them (which also restores
//! them on an owner that restarted, and drops any whose release was lost).
//!
//! The gateway incarnation is the node id and the process's start time in Unix nanoseconds: a
//! restarted node's gateway never inherits the opens of the previous run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use umbra_proto::v1::*;
use umbra_smb_gateway::server::files::FsError;
use umbra_smb_gateway::byte_locks::{self, ByteLock};
use umbra_smb_gateway::share_modes::Mode;

use crate::opens::{LEASE_MS, MAX_OPENS_PER_GATEWAY, RENEW_INTERVAL_MS};
use crate::volume_service::VolumeService;

/// One registered open: where it is and how it was opened.
struct Registered {
    target: VolumeTarget,
    ino: u64,
    mode: Mode,
    /// Opened with delete-on-close (listed in renewals, so a restarted owner knows).
    delete_at_close: Option<DeleteAtClose>,
    /// A delete disposition set on it (listed in renewals too).
    disposed: Option<DeleteAtClose>,
    /// The owner accepted it. Renewals list only confirmed opens (an owner reinstates what a
    /// renewal lists without a share check) and never name an unconfirmed one as lost.
    confirmed: bool,
    /// Its byte-range locks as the owner granted them (listed in renewals).
    locks: Vec<ByteLock>,
    /// Its lock and unlock calls to the owner.
    calls: LockCalls,
    /// Its file was made delete-pending through another gateway: its CLOSE releases it at once
    /// (see [`crate::deferred_releases`]).
    no_defer: bool,
}

impl Registered {
    /// Whether its CLOSE may be answered before the owner hears of it: nothing but the share
    /// check hangs on the release (no deletion, no byte-range lock ever), and the owner knows it.
    fn may_defer(&self, deleting: bool) -> bool {
        !deleting && self.confirmed && !self.no_defer && self.calls.last == 0 && self.locks.is_empty()
    }
}

/// An open's lock and unlock calls to the owner, numbered 1, 2, ...
#[derive(Clone, Copy, Debug, Default)]
struct LockCalls {
    /// The number of the last one sent.
    last: u64,
    /// Sent and not yet answered.
    under_way: u32,
    /// One had no answer from the owner (a lost reply): the owner may hold locks the open's
    /// list does not, so renewals list them as exact (see `HeldOpen.locks_exact`).
    uncertain: bool,
}

impl LockCalls {
    /// A call starts: its number.
    fn start(&mut self) -> u64 {
        self.last += 1;
        self.under_way += 1;
        self.last
    }

    /// A call's answer came: one that is not the owner's (no `umbra-error`: the call failed
    /// on its way, or its reply did) leaves what the owner holds unknown.
    fn end(&mut self, answer: &Result<impl Sized, tonic::Status>) {
        self.under_way -= 1;
        if matches!(answer, Err(s) if s.metadata().get("umbra-error").is_none()) {
            self.uncertain = true;
        }
    }

    /// A renewal lists the open's locks as exact: after a lost reply, once none is under way.
    fn exact(&self) -> bool {
        self.uncertain && self.under_way == 0
    }
}

#[derive(Default)]
struct Held {
    next_id: u64,
    opens: HashMap<u64, Registered>,
}

pub struct GatewayOpens {
    gateway: GatewayIncarnation,
    held: Mutex<Held>,
}

impl GatewayOpens {
    pub fn new(node: u64) -> Self {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let incarnation = since.as_nanos() as u64;
        tracing::info!(node, incarnation, "gateway incarnation");
        GatewayOpens { gateway: GatewayIncarnation { node, incarnation }, held: Mutex::new(Held { next_id: 1, opens: HashMap::new() }) }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().expect("gateway opens lock")
    }

    /// Registers an open of `ino` in `target` (routed to the owner); the id it returns
    /// releases it. The open is listed locally before the owner hears of it, so a renewal
    /// taken meanwhile never drops it.
    pub async fn register(&self, service: &VolumeService, target: VolumeTarget, ino: u64, mode: Mode, delete_at_close: Option<DeleteAtClose>) -> Result<u64, FsError> {
        let id = self.reserve(&target, ino, mode, delete_at_close.clone())?;
        let req = OpenRegisterRequest { target: Some(target), gateway: Some(self.gateway), ino, id, access: mode.access, share_access: mode.share, lease_ms: LEASE_MS, delete_at_close };
        let result = service.open_register(req).await;
        self.confirm(id, None, result.map(|_| ()))?;
        Ok(id)
    }

    /// An open of a file that `call` may create: `call` gets the open to carry and answers
    /// with its reply and, when it created the file and the owner registered the open, the
    /// new file's ino and its link (directory and name). Returns the reply and, then, the
    /// registration; otherwise the reserved open is forgotten.
    pub async fn open_new<T, F, Fut>(&self, target: &VolumeTarget, mode: Mode, delete_at_close: bool, call: F) -> Result<(T, Option<u64>), FsError>
    where
        F: FnOnce(OpenOnCreate) -> Fut,
        Fut: std::future::Future<Output = Result<(T, Option<(u64, DeleteAtClose)>), tonic::Status>>,
    {
        // The new file's ino and link are learned from the reply; until then the open is
        // unconfirmed, so no renewal lists it.
        let id = self.reserve(target, 0, mode, None)?;
        let open = OpenOnCreate { gateway: Some(self.gateway), id, access: mode.access, share_access: mode.share, lease_ms: LEASE_MS, delete_at_close };
        match call(open).await {
            Ok((reply, Some((ino, link)))) => {
                self.confirm(id, Some((ino, delete_at_close.then_some(link))), Ok(()))?;
                Ok((reply, Some(id)))
            }
            Ok((reply, None)) => {
                self.held().opens.remove(&id);
                Ok((reply, None))
            }
            Err(status) => {
                self.held().opens.remove(&id);
                Err(crate::smb::fs_error(&status))
            }
        }
    }

    /// Lists an open locally before the owner hears of it (a renewal taken meanwhile never
    /// drops it); returns its id.
    fn reserve(&self, target: &VolumeTarget, ino: u64, mode: Mode, delete_at_close: Option<DeleteAtClose>) -> Result<u64, FsError> {
        let mut held = self.held();
        if held.opens.len() >= MAX_OPENS_PER_GATEWAY {
            return Err(FsError::TooManyOpens(format!("this gateway holds {MAX_OPENS_PER_GATEWAY} opens (max_opens_per_gateway): close some and retry")));
        }
        let id = held.next_id;
        held.next_id += 1;
        held.opens.insert(id, Registered { target: target.clone(), ino, mode, delete_at_close, disposed: None, confirmed: false, locks: Vec::new(), calls: LockCalls::default(), no_defer: false });
        Ok(id)
    }

    /// The owner's answer to a reserved open: confirmed (with its ino and delete-on-close link
    /// when learned now), or forgotten with the owner's error.
    fn confirm(&self, id: u64, learned: Option<(u64, Option<DeleteAtClose>)>, answer: Result<(), tonic::Status>) -> Result<(), FsError> {
        match answer {
            Ok(()) => {
                if let Some(r) = self.held().opens.get_mut(&id) {
                    r.confirmed = true;
                    if let Some((ino, link)) = learned {
                        r.ino = ino;
                        r.delete_at_close = link;
                    }
                }
                Ok(())
            }
            Err(status) => {
                self.held().opens.remove(&id);
                Err(crate::smb::fs_error(&status))
            }
        }
    }

    /// Releases an open; an owner that misses this drops it at the next renewal. With
    /// `delete` (the open's disposition asks for its file's deletion), the owner deletes the
    /// file if this was its last open (before answering) or at its last close; the error is
    /// that deletion's.
    ///
    /// A plain release to another node is deferred ([`crate::deferred_releases`]): it goes with
    /// the next call there. It is handed over under the lock of the opens, so an owner's mark
    /// ([`GatewayOpens::no_defer`]) comes either before (no deferral) or after (the flush that
    /// follows the mark takes it, or waits for the call that took it).
    pub async fn release(&self, service: &VolumeService, id: u64, delete: Option<DeleteAtClose>, now: u64) -> Result<(), FsError> {
        let (req, deleting) = {
            let mut held = self.held();
            let Some(r) = held.opens.remove(&id) else { return Ok(()) };
            let deleting = delete.is_some() || r.delete_at_close.is_some();
            let may_defer = r.may_defer(deleting);
            let mut req = OpenReleaseRequest { target: Some(r.target), gateway: Some(self.gateway), id, delete_at_close: delete, now };
            if may_defer {
                match service.defer_release(req) {
                    Ok(()) => return Ok(()),
                    Err(back) => req = back,
                }
            }
            (req, deleting)
        };
        match service.open_release(req).await {
            Ok(_) => Ok(()),
            Err(e) if deleting => Err(crate::smb::fs_error(&e)),
            Err(e) => {
                tracing::warn!(id, error = %e, "releasing an open failed; the owner drops it at the next renewal");
                Ok(())
            }
        }
    }

    /// Sets (`Some`) or clears an open's delete disposition with the owner: while set, new
    /// opens of the file from any gateway are refused (delete pending). An open this gateway
    /// does not hold (not registered: its mode takes no part in share checks) has nothing to
    /// tell; its CLOSE carries the deletion, as before.
    ///
    /// The disposition is kept here first and listed in every renewal, so an owner that
    /// restarts (or misses this call) learns it within a renewal. If the call fails, the
    /// disposition is taken back here; the CLOSE's release, which carries none, then clears it
    /// at the owner too.
    pub async fn dispose(&self, service: &VolumeService, id: u64, delete: Option<DeleteAtClose>) -> Result<(), FsError> {
        let (target, before) = {
            let mut held = self.held();
            let Some(r) = held.opens.get_mut(&id) else { return Ok(()) };
            let before = std::mem::replace(&mut r.disposed, delete.clone());
            (r.target.clone(), before)
        };
        let req = OpenDisposeRequest { target: Some(target), gateway: Some(self.gateway), id, delete_at_close: delete };
        let answer = service.open_dispose(req).await;
        if answer.is_err() {
            if let Some(r) = self.held().opens.get_mut(&id) {
                r.disposed = before;
            }
        }
        answer.map(|_| ()).map_err(|e| crate::smb::fs_error(&e))
    }

    /// The owner made these files delete-pending: the opens held of them are released at their
    /// CLOSE from now on, never deferred.
    pub fn no_defer(&self, files: &[FileRef]) {
        if files.is_empty() {
            return;
        }
        let mut held = self.held();
        for r in held.opens.values_mut() {
            // An open whose file the owner has not named yet (a create under way) may be of one.
            if files.iter().any(|f| f.volume == r.target.volume && (f.ino == r.ino || !r.confirmed)) {
                r.no_defer = true;
            }
        }
    }

    /// The open a READ or WRITE comes through, as the owner knows it (byte-range lock checks).
    pub fn open_ref(&self, id: u64) -> OpenRef {
        OpenRef { gateway: Some(self.gateway), id }
    }

    /// Takes byte-range locks for an open (all or none), or lets go of them, with the owner;
    /// kept here as the owner granted them, for renewals. An unlock the owner cannot place (it
    /// restarted and has not had this gateway's renewal yet) is done here alone: the renewal
    /// that reinstates the open no longer lists the lock. A lock it cannot place is not granted.
    pub async fn lock(&self, service: &VolumeService, id: u64, locks: &[ByteLock], unlock: bool) -> Result<(), FsError> {
        let Some((target, call)) = self.lock_call_starts(id) else { return Err(FsError::NotSupported) };
        let ranges = locks.iter().map(|l| LockRange { offset: l.offset, length: l.length, exclusive: l.exclusive }).collect();
        let req = OpenLockRequest { target: Some(target), gateway: Some(self.gateway), id, locks: ranges, unlock, call };
        let answer = service.open_lock(req).await;
        let unknown = matches!(&answer, Err(s) if s.metadata().get("umbra-error").is_some_and(|v| v == "unknown_open"));
        let mut held = self.held();
        let Some(r) = held.opens.get_mut(&id) else { return answer.map(|_| ()).map_err(|e| crate::smb::fs_error(&e)) };
        r.calls.end(&answer);
        match (answer, unlock) {
            (Ok(_), false) => r.locks.extend_from_slice(locks),
            (Ok(_), true) => unlock_here(&mut r.locks, locks, false),
            (Err(_), true) if unknown => unlock_here(&mut r.locks, locks, false),
            (Err(_), false) if unknown => return Err(FsError::LockNotGranted),
            (Err(e), _) => {
                // An unlock that stopped partway: the owner let go of those before the range it
                // did not know; so does this list.
                if unlock {
                    unlock_here(&mut r.locks, locks, true);
                }
                return Err(crate::smb::fs_error(&e));
            }
        }
        Ok(())
    }

    /// A renewal that listed these opens' locks as exact (with their last call's number) was
    /// taken: the owner now holds what each lists, unless a lock call of it came since.
    fn settled(&self, exact: &[(u64, u64)]) {
        let mut held = self.held();
        for (id, last_call) in exact {
            if let Some(r) = held.opens.get_mut(id).filter(|r| r.calls.last == *last_call) {
                r.calls.uncertain = false;
            }
        }
    }

    /// A lock or unlock call of open `id` starts (under way until [`LockCalls::end`]): where
    /// it goes and its number, if the open is held.
    fn lock_call_starts(&self, id: u64) -> Option<(VolumeTarget, u64)> {
        let mut held = self.held();
        let r = held.opens.get_mut(&id)?;
        Some((r.target.clone(), r.calls.start()))
    }

    /// One renewal per volume where this gateway holds opens, all at once, each given at
    /// most [`RENEW_INTERVAL_MS`]: an owner that is slow or gone holds up no other volume's.
    pub async fn renew(&self, service: &VolumeService) {
        let (up_to, by_volume) = renewals(&self.held());
        let each = by_volume.into_iter().map(|(volume, opens)| async move {
            let target = VolumeTarget { volume: volume.clone(), snapshot: String::new(), clone: String::new(), route: true };
            // With the deletion each listed open would ask at its close, for a release sent again.
            let listed: Vec<(u64, Option<DeleteAtClose>)> = opens.iter().map(|h| (h.id, h.disposed.clone().or_else(|| h.delete_at_close.clone()))).collect();
            let listed_locks: Vec<(u64, Vec<ByteLock>)> = opens.iter().map(|h| (h.id, h.locks.iter().map(|l| ByteLock { offset: l.offset, length: l.length, exclusive: l.exclusive }).collect())).collect();
            let exact: Vec<(u64, u64)> = opens.iter().filter(|h| h.locks_exact).map(|h| (h.id, h.lock_calls)).collect();
            let req = OpenRenewRequest { target: Some(target.clone()), gateway: Some(self.gateway), lease_ms: LEASE_MS, up_to, opens };
            let answer = tokio::time::timeout(std::time::Duration::from_millis(RENEW_INTERVAL_MS), service.open_renew(req)).await;
            if let Ok(Ok(_)) = &answer {
                self.settled(&exact);
            }
            match answer {
                Ok(Ok(r)) if !r.known => {
                    tracing::info!(%volume, reinstated = r.reinstated, refused = r.refused, "the volume's owner did not know this gateway: opens reinstated");
                    // An open closed after the list was taken may have been released before
                    // this renewal reinstated it: release it again.
                    let gone: Vec<(u64, Option<DeleteAtClose>)> = {
                        let held = self.held();
                        listed.into_iter().filter(|(id, _)| !held.opens.contains_key(id)).collect()
                    };
                    let again = async {
                        for (id, delete) in gone {
                            let req = OpenReleaseRequest { target: Some(target.clone()), gateway: Some(self.gateway), id, delete_at_close: delete, now: crate::filetime_now() };
                            if let Err(e) = service.open_release(req).await {
                                tracing::debug!(%volume, id, error = %e, "releasing again an open closed during a renewal");
                            }
                        }
                    };
                    // Whatever is left goes at the next renewal, which no longer lists it.
                    let _ = tokio::time::timeout(std::time::Duration::from_millis(RENEW_INTERVAL_MS), again).await;
                    // Likewise a lock let go of after the list was taken (the owner, not knowing
                    // the open then, could not take the unlock): let go of it again.
                    let unlocks: Vec<(u64, Vec<ByteLock>)> = {
                        let held = self.held();
                        listed_locks.into_iter().filter_map(|(id, listed)| Some((id, not_held(listed, &held.opens.get(&id)?.locks)))).filter(|(_, gone)| !gone.is_empty()).collect()
                    };
                    for (id, gone) in unlocks {
                        let Some((_, call)) = self.lock_call_starts(id) else { continue };
                        let locks = gone.iter().map(|l| LockRange { offset: l.offset, length: l.length, exclusive: l.exclusive }).collect();
                        let req = OpenLockRequest { target: Some(target.clone()), gateway: Some(self.gateway), id, locks, unlock: true, call };
                        let answer = service.open_lock(req).await;
                        if let Some(r) = self.held().opens.get_mut(&id) {
                            r.calls.end(&answer);
                        }
                        if let Err(e) = answer {
                            tracing::debug!(%volume, id, error = %e, "letting go again of locks let go of during a renewal");
                        }
                    }
                }
                Ok(Ok(r)) if r.dropped > 0 => tracing::info!(%volume, dropped = r.dropped, "the owner dropped opens whose release was lost"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(%volume, error = %e, "renewing this gateway's opens failed"),
                Err(_) => tracing::warn!(%volume, "renewing this gateway's opens took longer than the renewal interval: given up until the next"),
            }
        });
        futures::future::join_all(each).await;
    }

    /// Renews until `stop` turns true.
    pub async fn run(self: Arc<Self>, service: Arc<VolumeService>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(RENEW_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // A stop does not wait for a renewal to an owner that may be gone.
                    tokio::select! {
                        _ = self.renew(&service) => {}
                        _ = stop.changed() => return,
                    }
                }
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

/// The locks of `listed` (a renewal's list) that `now` no longer has, each counted as often as
/// it was listed beyond what `now` still holds.
fn not_held(listed: Vec<ByteLock>, now: &[ByteLock]) -> Vec<ByteLock> {
    let mut left = now.to_vec();
    listed
        .into_iter()
        .filter(|l| match left.iter().position(|h| h == l) {
            Some(i) => {
                left.swap_remove(i);
                false
            }
            None => true,
        })
        .collect()
}

/// Lets go of `ranges` in `own` in order as the owner does (byte_locks::unlock_index): up to
/// the first that names none when `stop_at_missing` (the owner stopped there), otherwise each
/// that names one (the owner let go of all; one missing here is one whose lock reply was lost).
fn unlock_here(own: &mut Vec<ByteLock>, ranges: &[ByteLock], stop_at_missing: bool) {
    for l in ranges {
        match byte_locks::unlock_index(own, l.offset, l.length) {
            Some(i) => {
                own.remove(i);
            }
            None if stop_at_missing => return,
            None => {}
        }
    }
}

/// What to renew: `up_to` and, per volume, the confirmed opens. `up_to` stops below the first
/// open still waiting for its owner's answer, so that open is neither reinstated unchecked nor
/// dropped as lost.
fn renewals(held: &Held) -> (u64, HashMap<String, Vec<HeldOpen>>) {
    let up_to = held.opens.iter().filter(|(_, r)| !r.confirmed).map(|(id, _)| *id).min().unwrap_or(held.next_id);
    let mut by_volume: HashMap<String, Vec<HeldOpen>> = HashMap::new();
    for (id, r) in held.opens.iter().filter(|(_, r)| r.confirmed) {
        let h = HeldOpen { snapshot: r.target.snapshot.clone(), clone: r.target.clone.clone(), ino: r.ino, id: *id, access: r.mode.access, share_access: r.mode.share, delete_at_close: r.delete_at_close.clone(), disposed: r.disposed.clone(), locks: r.locks.iter().map(|l| LockRange { offset: l.offset, length: l.length, exclusive: l.exclusive }).collect(), locks_exact: r.calls.exact(), lock_calls: r.calls.last };
        by_volume.entry(r.target.volume.clone()).or_default().push(h);
    }
    (up_to, by_volume)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(volume: &str, confirmed: bool) -> Registered {
        let target = VolumeTarget { volume: volume.into(), snapshot: String::new(), clone: String::new(), route: true };
        Registered { target, ino: 9, mode: Mode { access: 1, share: 1 }, delete_at_close: None, disposed: None, confirmed, locks: Vec::new(), calls: LockCalls::default(), no_defer: false }
    }

    #[test]
    fn a_renewal_lists_confirmed_opens_per_volume_and_covers_every_id_issued() {
        let held = Held { next_id: 4, opens: HashMap::from([(1, registered("a", true)), (3, registered("b", true))]) };
        let (up_to, by_volume) = renewals(&held);
        assert_eq!(up_to, 4);
        assert_eq!(by_volume["a"].iter().map(|h| h.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(by_volume["b"].iter().map(|h| h.id).collect::<Vec<_>>(), vec![3]);
    }

    /// A lock call whose answer is not the owner's (the call or its reply was lost) makes the
    /// open's locks listed as exact, once no lock call of it is under way; calls are numbered;
    /// a renewal that listed them so, with no call since, settles them.
    #[test]
    fn a_lock_call_without_the_owners_answer_makes_renewals_list_the_locks_exactly() {
        let gw = GatewayOpens::new(1);
        gw.held().opens.insert(1, registered("a", true));
        let listed = || {
            let (_, by_volume) = renewals(&gw.held());
            (by_volume["a"][0].locks_exact, by_volume["a"][0].lock_calls)
        };
        let end = |answer: Result<(), tonic::Status>| gw.held().opens.get_mut(&1).unwrap().calls.end(&answer);
        let mut not_granted = tonic::Status::failed_precondition("a lock of another open is in the way");
        not_granted.metadata_mut().insert("umbra-error", "lock_not_granted".parse().unwrap());
        for answer in [Ok(()), Err(not_granted)] {
            gw.lock_call_starts(1).unwrap();
            end(answer);
        }
        assert_eq!(listed(), (false, 2), "the owner answered both");
        assert_eq!(gw.lock_call_starts(1).unwrap().1, 3);
        assert_eq!(gw.lock_call_starts(1).unwrap().1, 4);
        end(Err(tonic::Status::unavailable("the connection went")));
        assert_eq!(listed(), (false, 4), "not while a call is under way");
        end(Ok(()));
        assert_eq!(listed(), (true, 4));
        gw.settled(&[(1, 3)]);
        assert_eq!(listed(), (true, 4), "a call numbered past the list's came since");
        gw.settled(&[(1, 4)]);
        assert_eq!(listed(), (false, 4));
        assert!(gw.lock_call_starts(2).is_none(), "an open not held");
    }

    /// An unlock the owner answered let go of every range it names; one that stopped partway,
    /// of those before the first the owner did not hold.
    #[test]
    fn an_unlock_lets_go_here_as_the_owner_did() {
        let l = |offset| ByteLock { offset, length: 1, exclusive: true };
        let mut own = vec![l(1), l(3)];
        unlock_here(&mut own, &[l(2), l(3)], false);
        assert_eq!(own, vec![l(1)], "a range not held here (a lost lock reply) is passed over");
        let mut own = vec![l(1), l(3)];
        unlock_here(&mut own, &[l(1), l(2), l(3)], true);
        assert_eq!(own, vec![l(3)], "stops where the owner stopped");
    }

    #[test]
    fn locks_let_go_of_since_a_renewal_listed_them_are_found_as_often_as_they_were_listed() {
        let l = |offset, exclusive| ByteLock { offset, length: 1, exclusive };
        assert_eq!(not_held(vec![l(0, true), l(5, false), l(5, false)], &[l(5, false), l(9, true)]), vec![l(0, true), l(5, false)]);
        assert!(not_held(vec![l(1, true)], &[l(1, true)]).is_empty());
    }

    #[test]
    fn an_open_waiting_for_its_owner_is_neither_listed_nor_below_up_to() {
        let held = Held { next_id: 6, opens: HashMap::from([(2, registered("a", true)), (3, registered("a", false)), (5, registered("a", true))]) };
        let (up_to, by_volume) = renewals(&held);
        assert_eq!(up_to, 3, "the owner may drop only unlisted opens below the waiting one");
        assert_eq!(by_volume["a"].iter().map(|h| h.id).collect::<std::collections::BTreeSet<_>>(), [2, 5].into());
    }
}
