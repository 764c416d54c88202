//! The table of opens of the volumes this node owns: every gateway (on any node) registers each
//! open that takes part in share-access checks here, so two clients on different nodes get
//! STATUS_SHARING_VIOLATION exactly as on one Windows server (the rule itself is
//! [`umbra_smb_gateway::share_modes`]). Pure: calls take `now_ms` from the owner's monotonic
//! clock; the volume service holds the table behind a mutex.
//!
//! Dead gateways: a gateway incarnation (node id and a number that grows with every start)
//! holds its opens on a volume under a lease of `lease_ms` (15 s by default) that each register
//! and renewal extends. An expired lease drops all its opens. A register or renewal from a newer
//! incarnation of the same node drops the older one's opens at once (a restarted gateway never
//! inherits its predecessor's opens); an older incarnation is refused.
//!
//! Owner restarts: the table is in memory and starts empty. A gateway's renewal (every
//! [`RENEW_INTERVAL_MS`]) lists every open it holds on the volume; an owner that does not know
//! the gateway's lease reinstates them as they are, without a share check (they were granted
//! before). Until that renewal has had time to arrive, new opens and locks on the volumes the
//! owner held at its start wait (the volume service's `OWNER_GRACE_MS`), so they are checked
//! against the reinstated opens and their locks. A gateway cut off from the owner for longer than its lease has its opens
//! dropped, and reinstated when its renewals get through again: a conflicting open granted in
//! between is kept too. A renewal from a known lease also drops the gateway's opens it no
//! longer lists (a lost release), for ids below `up_to`
//! (the gateway sets it below any open still waiting for this owner's answer; a renewal lists
//! only opens the owner accepted, so nothing is reinstated that was never checked).
//!
//! Delete at last close (MS-FSA 2.1.5.4): an open registered with delete-on-close, or
//! released with a delete disposition, makes its file delete-pending when it goes (closed, or
//! dropped with its gateway's lease); new opens of a delete-pending file are refused
//! (STATUS_DELETE_PENDING), and when the file's last open goes the table hands the deletion to
//! the owner ([`OpenTable::take_due`], [`OpenTable::take_due_of`]), which unlinks the name if it
//! still names the file.
//! The file stays delete-pending until the owner says the deletion is done
//! ([`OpenTable::deleted`]); one that failed for a reason that may pass (a fence, a full disk)
//! is due again ([`OpenTable::retry`]).
//!
//! Byte-range locks (MS-FSA 2.1.5.8): each held open keeps its locks here, so a LOCK through
//! any gateway is checked against every open's ([`OpenTable::lock`]), and so is each READ and
//! WRITE of a file that has any ([`OpenTable::io_conflict`]); the rules are
//! [`umbra_smb_gateway::byte_locks`]. They go with their open (a CLOSE, an expired lease), and
//! renewals list them, so an owner that restarted gets them back with the opens. A lock call
//! whose answer the gateway never had (the reply lost between nodes) may have left a lock here
//! that the gateway does not list: its later renewals list that open's locks as exact, with
//! the number of the last lock call it had sent (they are numbered per open), and the owner
//! lets go of the locks beyond the list unless it has taken a call numbered past that (the
//! list would predate it).

use std::collections::{HashMap, HashSet};

use umbra_smb_gateway::byte_locks::{self, ByteLock, Intent};
use umbra_smb_gateway::share_modes::{self, Mode};
use uuid::Uuid;

use crate::volume::View;

/// Opens the owner keeps per volume, from all gateways.
pub const MAX_OPENS_PER_VOLUME: usize = 65_536;
/// Opens one gateway may hold (the owner counts per volume; the gateway counts in total).
pub const MAX_OPENS_PER_GATEWAY: usize = 16_384;
/// Gateway incarnations holding leases on one volume.
pub const MAX_GATEWAYS_PER_VOLUME: usize = 1_024;
/// How long a gateway's opens outlive its last renewal.
pub const LEASE_MS: u64 = 15_000;
/// How often a gateway renews its leases (a third of the lease: two renewals may be lost).
pub const RENEW_INTERVAL_MS: u64 = 5_000;
/// Byte-range locks one open may hold (a quarter of a file's: one open cannot take them all).
pub const MAX_LOCKS_PER_OPEN: usize = 1_024;
/// Byte-range locks all the opens of one file may hold: a LOCK element, a READ and a WRITE of
/// a locked file each look at them all, under the table's lock.
pub const MAX_LOCKS_PER_FILE: usize = 4_096;
/// Byte-range locks the owner keeps per volume, from all opens (each is 24 bytes; a READ or
/// WRITE of a locked file looks at that file's locks).
pub const MAX_LOCKS_PER_VOLUME: usize = 65_536;

/// One start of one node's gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gateway {
    pub node: u64,
    /// Grows with every start of the node (its start time in Unix nanoseconds).
    pub incarnation: u64,
}

/// A file: which volume, which state of it (live, a snapshot, a clone), which inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub volume: Uuid,
    pub view: View,
    pub ino: u64,
}

/// Where a file is linked: its directory and name (for a deletion at its last close).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub parent: u64,
    pub name: String,
}

/// One open as a gateway registers it; `id` is unique within the gateway incarnation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenRecord {
    pub file: FileKey,
    pub id: u64,
    pub mode: Mode,
    /// Opened with delete-on-close: the file goes when this open and every other one have.
    pub delete_at_close: Option<Link>,
    /// A delete disposition set on it (a renewal lists it; a new open has none).
    pub disposed: Option<Link>,
    /// Its byte-range locks (a renewal lists them; a new open has none).
    pub locks: Vec<ByteLock>,
    /// `locks` are all it holds (a renewal's, after a lock call of the open had no answer):
    /// the owner lets go of others it holds for the open, unless it has taken one of the
    /// open's lock calls numbered past `lock_calls` (the list predates it).
    pub locks_exact: bool,
    /// The number of the open's last lock or unlock call when the gateway took the list.
    pub lock_calls: u64,
}

impl OpenRecord {
    /// An open as its gateway registers it: no disposition set, no locks.
    pub fn new(file: FileKey, id: u64, mode: Mode, delete_at_close: Option<Link>) -> OpenRecord {
        OpenRecord { file, id, mode, delete_at_close, disposed: None, locks: Vec::new(), locks_exact: false, lock_calls: 0 }
    }
}

/// A file whose last open went while it was delete-pending: the owner deletes `link` if it
/// still names `file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueDelete {
    pub file: FileKey,
    pub link: Link,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sharing violation: an open from node {holder_node} holds access {access:#x} and shares {share:#x}")]
    SharingViolation { holder_node: u64, access: u32, share: u32 },
    #[error("volume {volume} has {max} opens (max_opens_per_volume): close some and retry")]
    TooManyOnVolume { volume: Uuid, max: usize },
    #[error("the gateway of node {node} holds {max} opens on volume {volume} (max_opens_per_gateway): close some and retry")]
    TooManyForGateway { node: u64, volume: Uuid, max: usize },
    #[error("{max} gateway incarnations hold opens on volume {volume} (max_gateways_per_volume)")]
    TooManyGateways { volume: Uuid, max: usize },
    #[error("gateway incarnation {incarnation} of node {node} was replaced by incarnation {newer}")]
    StaleIncarnation { node: u64, incarnation: u64, newer: u64 },
    #[error("the file is being deleted: it goes when its last open closes")]
    DeletePending,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Another lock (of this open or another, through any gateway) is in the way.
    #[error("the range is locked (an open from node {holder_node} holds a conflicting lock)")]
    NotGranted { holder_node: u64 },
    #[error("this open holds no lock of exactly that offset and length")]
    RangeNotLocked,
    #[error("the lock's last byte lies past 2^64 - 1")]
    InvalidRange,
    #[error("this owner holds no such open (closed, or not yet listed again after a restart)")]
    UnknownOpen,
    #[error("{what} holds {max} byte-range locks ({name}): unlock some and retry")]
    TooMany { what: &'static str, max: usize, name: &'static str },
}

/// What a renewal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewed {
    /// The lease was known: extended; `dropped` opens the gateway no longer lists were removed.
    Known { dropped: usize },
    /// The lease was unknown (this owner restarted, or the lease had expired): the listed opens
    /// were reinstated (`refused` of them did not fit the bounds and are not held).
    Reinstated { held: usize, refused: usize },
}

struct Lease {
    incarnation: u64,
    expires_ms: u64,
    /// A renewal has listed the gateway's opens since this lease began. A lease a register
    /// began (after an owner restart, or after the gateway's earlier lease expired) may lack
    /// opens the gateway still holds: its first renewal reinstates them.
    listed: bool,
    /// (view, ino) of each of this gateway's opens, by open id.
    opens: HashMap<u64, (View, u64)>,
}

struct Held {
    node: u64,
    id: u64,
    mode: Mode,
    delete_at_close: Option<Link>,
    /// A delete disposition set on the open while it is held: its file is delete-pending
    /// from then on (not only once the open goes), until the disposition is cleared.
    disposed: Option<Link>,
    locks: Vec<ByteLock>,
    /// The highest number of its lock and unlock calls taken here (from the renewal's when
    /// reinstated).
    last_call: u64,
}

/// One file's opens, and whether it is delete-pending (and where it is linked).
#[derive(Default)]
struct FileOpens {
    held: Vec<Held>,
    pending: Option<Link>,
}

impl FileOpens {
    /// Byte-range locks all the file's opens hold.
    fn locks(&self) -> usize {
        self.held.iter().map(|h| h.locks.len()).sum()
    }
}

/// One volume's opens.
#[derive(Default)]
struct VolumeOpens {
    /// By gateway node (one incarnation per node at a time).
    leases: HashMap<u64, Lease>,
    files: HashMap<(View, u64), FileOpens>,
    count: usize,
    /// Byte-range locks held by all of the volume's opens.
    locks: usize,
    /// Deletions due (a delete-pending file's last open went), for the owner to carry out.
    due: Vec<DueDelete>,
    /// Byte-range locks went since [`OpenTable::take_released`] last asked.
    released: bool,
}

#[derive(Default)]
pub struct OpenTable {
    volumes: HashMap<Uuid, VolumeOpens>,
    /// A call that can let locks go ran since [`OpenTable::take_released`] last looked (only
    /// then does it look through the volumes: the table is taken for every I/O's lock check).
    unseen: bool,
}

impl VolumeOpens {
    fn expire(&mut self, volume: Uuid, now_ms: u64) {
        let dead: Vec<u64> = self.leases.iter().filter(|(_, l)| l.expires_ms <= now_ms).map(|(n, _)| *n).collect();
        for node in dead {
            tracing::info!(node, "a gateway's lease expired: dropping its opens");
            self.drop_gateway(volume, node);
        }
    }

    fn drop_gateway(&mut self, volume: Uuid, node: u64) {
        let Some(lease) = self.leases.remove(&node) else { return };
        for (id, file) in lease.opens {
            self.unhold(volume, file, node, id);
        }
    }

    /// Drops one open; a delete-on-close open makes its file delete-pending, and the file's
    /// last open going makes a pending deletion due.
    fn unhold(&mut self, volume: Uuid, file: (View, u64), node: u64, id: u64) {
        if let Some(f) = self.files.get_mut(&file) {
            if let Some(i) = f.held.iter().position(|h| h.node == node && h.id == id) {
                let gone = f.held.swap_remove(i);
                self.locks -= gone.locks.len();
                self.released |= !gone.locks.is_empty();
                if f.pending.is_none() {
                    f.pending = gone.delete_at_close.or(gone.disposed);
                }
            }
            if f.held.is_empty() {
                // A delete-pending file keeps its entry (new opens are refused) until the owner
                // has deleted it.
                match f.pending.clone() {
                    Some(link) => self.due.push(DueDelete { file: FileKey { volume, view: file.0, ino: file.1 }, link }),
                    None => {
                        self.files.remove(&file);
                    }
                }
            }
        }
        self.count -= 1;
    }

    /// The gateway's lease, extended (created for a new incarnation, replacing an older one).
    /// `Ok(true)` when it was already known.
    fn admit(&mut self, volume: Uuid, gw: Gateway, now_ms: u64, lease_ms: u64) -> Result<bool, OpenError> {
        let known = match self.leases.get(&gw.node) {
            Some(l) if l.incarnation > gw.incarnation => {
                return Err(OpenError::StaleIncarnation { node: gw.node, incarnation: gw.incarnation, newer: l.incarnation });
            }
            Some(l) if l.incarnation == gw.incarnation => true,
            Some(_) => {
                tracing::info!(node = gw.node, "a gateway restarted: dropping its predecessor's opens");
                self.drop_gateway(volume, gw.node);
                false
            }
            None => false,
        };
        if !known && self.leases.len() >= MAX_GATEWAYS_PER_VOLUME {
            return Err(OpenError::TooManyGateways { volume, max: MAX_GATEWAYS_PER_VOLUME });
        }
        let lease = self.leases.entry(gw.node).or_insert_with(|| Lease { incarnation: gw.incarnation, expires_ms: 0, listed: false, opens: HashMap::new() });
        lease.expires_ms = now_ms.saturating_add(lease_ms);
        Ok(known)
    }

    /// A known gateway's renewal: each listed open whose locks are listed exactly lets go of
    /// the locks it holds here beyond those (a lock whose reply was lost, an unlock that never
    /// arrived), unless this owner has taken a lock call of the open numbered past the list's
    /// last (one sent after the list was taken, which it may not show yet). Numbers, not
    /// counts: a call that never reached this owner leaves a gap, not a count behind.
    fn reconcile_locks(&mut self, node: u64, listed: &[OpenRecord]) {
        for r in listed.iter().filter(|r| r.locks_exact) {
            let Some(h) = self.files.get_mut(&(r.file.view, r.file.ino)).and_then(|f| f.held.iter_mut().find(|h| h.node == node && h.id == r.id)) else { continue };
            if h.last_call > r.lock_calls {
                continue;
            }
            let mut kept = r.locks.clone();
            let before = h.locks.len();
            h.locks.retain(|l| match kept.iter().position(|k| k == l) {
                Some(i) => {
                    kept.swap_remove(i);
                    true
                }
                None => false,
            });
            let gone = before - h.locks.len();
            if gone > 0 {
                tracing::info!(node, id = r.id, gone, "let go of byte-range locks the open's gateway does not hold (a lost reply)");
                self.locks -= gone;
                self.released = true;
            }
        }
    }

    /// Adds an open without a share check, within the bounds.
    fn hold(&mut self, volume: Uuid, node: u64, r: &OpenRecord) -> Result<(), OpenError> {
        let lease = self.leases.get_mut(&node).expect("admitted before");
        if lease.opens.contains_key(&r.id) {
            return Ok(()); // a retried register or a reinstated open
        }
        if self.count >= MAX_OPENS_PER_VOLUME {
            return Err(OpenError::TooManyOnVolume { volume, max: MAX_OPENS_PER_VOLUME });
        }
        if lease.opens.len() >= MAX_OPENS_PER_GATEWAY {
            return Err(OpenError::TooManyForGateway { node, volume, max: MAX_OPENS_PER_GATEWAY });
        }
        // Locks listed by a renewal come back as they were, within the bounds.
        let on_file = self.files.get(&(r.file.view, r.file.ino)).map_or(0, FileOpens::locks);
        let room = MAX_LOCKS_PER_VOLUME.saturating_sub(self.locks).min(MAX_LOCKS_PER_OPEN).min(MAX_LOCKS_PER_FILE.saturating_sub(on_file));
        let locks: Vec<ByteLock> = r.locks.iter().take(room).copied().collect();
        lease.opens.insert(r.id, (r.file.view, r.file.ino));
        self.locks += locks.len();
        self.files.entry((r.file.view, r.file.ino)).or_default().held.push(Held { node, id: r.id, mode: r.mode, delete_at_close: r.delete_at_close.clone(), disposed: r.disposed.clone(), locks, last_call: r.lock_calls });
        self.count += 1;
        Ok(())
    }
}

impl OpenTable {
    /// A new open: checked against every open of the file from every gateway, then held.
    pub fn register(&mut self, now_ms: u64, gw: Gateway, lease_ms: u64, r: OpenRecord) -> Result<(), OpenError> {
        self.unseen = true; // an expired or replaced lease
        let v = self.volumes.entry(r.file.volume).or_default();
        v.expire(r.file.volume, now_ms);
        v.admit(r.file.volume, gw, now_ms, lease_ms)?;
        if v.leases[&gw.node].opens.contains_key(&r.id) {
            return Ok(()); // a retry of a register that succeeded
        }
        if self.delete_pending(r.file) {
            return Err(OpenError::DeletePending);
        }
        let v = self.volumes.get_mut(&r.file.volume).expect("made above");
        if let Some(f) = v.files.get(&(r.file.view, r.file.ino)) {
            let modes: Vec<Mode> = f.held.iter().map(|h| h.mode).collect();
            if let Err(i) = share_modes::check(&modes, &r.mode) {
                let h = &f.held[i];
                return Err(OpenError::SharingViolation { holder_node: h.node, access: h.mode.access, share: h.mode.share });
            }
        }
        v.hold(r.file.volume, gw.node, &r)
    }

    /// Releases one open (a CLOSE); unknown opens and other incarnations are ignored.
    /// `delete`: the open's disposition asks for the file's deletion (the file becomes
    /// delete-pending; due at once if this was its last open). It is the gateway's last word:
    /// without it, neither the open's delete-on-close nor a disposition it set deletes the file
    /// (the client cleared them, or never heard that they were set).
    /// Returns the file of the open released (None when it was not held).
    pub fn release(&mut self, gw: Gateway, volume: Uuid, id: u64, delete: Option<Link>) -> Option<FileKey> {
        self.unseen = true;
        let v = self.volumes.get_mut(&volume)?;
        let lease = v.leases.get_mut(&gw.node).filter(|l| l.incarnation == gw.incarnation)?;
        let file = lease.opens.remove(&id)?;
        if let Some(h) = v.files.get_mut(&file).and_then(|f| f.held.iter_mut().find(|h| h.node == gw.node && h.id == id)) {
            h.delete_at_close = delete;
            h.disposed = None;
        }
        v.unhold(volume, file, gw.node, id);
        Some(FileKey { volume, view: file.0, ino: file.1 })
    }

    /// Sets (`Some`, where the file is linked) or clears the delete disposition of one held
    /// open (SET_INFO FileDispositionInformation): while any open's is set, its file is
    /// delete-pending to new opens, and the open going makes the deletion pending for good.
    /// Unknown opens and other incarnations are ignored, as by [`OpenTable::release`].
    /// Returns the file of the open (None when it is not held).
    pub fn dispose(&mut self, gw: Gateway, volume: Uuid, id: u64, delete: Option<Link>) -> Option<FileKey> {
        let v = self.volumes.get_mut(&volume)?;
        let file = *v.leases.get(&gw.node).filter(|l| l.incarnation == gw.incarnation).and_then(|l| l.opens.get(&id))?;
        if let Some(h) = v.files.get_mut(&file).and_then(|f| f.held.iter_mut().find(|h| h.node == gw.node && h.id == id)) {
            h.disposed = delete;
        }
        Some(FileKey { volume, view: file.0, ino: file.1 })
    }

    /// Whether `file` is to be deleted: a deletion pending at its last close, or a disposition
    /// set on one of its opens.
    pub fn delete_pending(&self, file: FileKey) -> bool {
        let f = self.volumes.get(&file.volume).and_then(|v| v.files.get(&(file.view, file.ino)));
        f.is_some_and(|f| f.pending.is_some() || f.held.iter().any(|h| h.disposed.is_some()))
    }

    /// The deletion due of `file`, if any (a CLOSE carries out its own file's deletion).
    pub fn take_due_of(&mut self, file: FileKey) -> Vec<DueDelete> {
        let Some(v) = self.volumes.get_mut(&file.volume) else { return Vec::new() };
        let (mine, rest) = std::mem::take(&mut v.due).into_iter().partition(|d| d.file == file);
        v.due = rest;
        mine
    }

    /// A file this owner just made whose open was refused: unless another open holds it
    /// already, it becomes delete-pending now (new opens are refused) and its deletion due.
    /// Returns that deletion.
    pub fn doom(&mut self, file: FileKey, link: Link) -> Option<DueDelete> {
        let v = self.volumes.entry(file.volume).or_default();
        let f = v.files.entry((file.view, file.ino)).or_default();
        if !f.held.is_empty() {
            return None;
        }
        f.pending = Some(link.clone());
        Some(DueDelete { file, link })
    }

    /// Deletions that became due, on every volume (the owner carries them out, then says so
    /// with [`OpenTable::deleted`] or [`OpenTable::retry`]).
    pub fn take_due(&mut self) -> Vec<DueDelete> {
        self.volumes.values_mut().flat_map(|v| std::mem::take(&mut v.due)).collect()
    }

    /// A due deletion is over (the file is gone, or its name no longer names it): the file is
    /// no longer delete-pending.
    pub fn deleted(&mut self, file: FileKey) {
        let Some(v) = self.volumes.get_mut(&file.volume) else { return };
        if v.files.get(&(file.view, file.ino)).is_some_and(|f| f.held.is_empty()) {
            v.files.remove(&(file.view, file.ino));
        }
    }

    /// A due deletion failed for a reason that may pass: it is due again, and the file stays
    /// delete-pending meanwhile.
    pub fn retry(&mut self, d: DueDelete) {
        self.volumes.entry(d.file.volume).or_default().due.push(d);
    }

    /// A gateway's renewal for one volume, listing every open it holds there that it
    /// registered before taking the list (ids below `up_to`).
    pub fn renew(&mut self, now_ms: u64, gw: Gateway, lease_ms: u64, volume: Uuid, up_to: u64, opens: &[OpenRecord]) -> Result<Renewed, OpenError> {
        self.unseen = true;
        let v = self.volumes.entry(volume).or_default();
        v.expire(volume, now_ms);
        let known = v.admit(volume, gw, now_ms, lease_ms)?;
        let lease = v.leases.get_mut(&gw.node).expect("admitted");
        let listed_before = std::mem::replace(&mut lease.listed, true);
        let mut dropped = 0;
        if known {
            let listed: HashSet<u64> = opens.iter().map(|r| r.id).collect();
            let lost: Vec<(u64, (View, u64))> = lease.opens.iter().filter(|(id, _)| **id < up_to && !listed.contains(id)).map(|(id, f)| (*id, *f)).collect();
            for (id, file) in &lost {
                v.leases.get_mut(&gw.node).expect("known").opens.remove(id);
                v.unhold(volume, *file, gw.node, *id);
            }
            v.reconcile_locks(gw.node, opens);
            if listed_before {
                return Ok(Renewed::Known { dropped: lost.len() });
            }
            dropped = lost.len();
        }
        // A lease new to this renewal, or begun by a register: what the gateway lists and this
        // owner does not hold is reinstated (held ones are kept as they are).
        let (mut held, mut refused) = (0, 0);
        for r in opens.iter().filter(|r| r.file.volume == volume) {
            if v.leases[&gw.node].opens.contains_key(&r.id) {
                continue;
            }
            match v.hold(volume, gw.node, r) {
                Ok(()) => held += 1,
                Err(_) => refused += 1,
            }
        }
        Ok(match known && held == 0 && refused == 0 {
            true => Renewed::Known { dropped },
            false => Renewed::Reinstated { held, refused },
        })
    }

    /// Drops every expired lease (the service calls it now and then; register and renew expire
    /// the volume they touch themselves).
    pub fn expire(&mut self, now_ms: u64) {
        self.unseen = true;
        for (volume, v) in self.volumes.iter_mut() {
            v.expire(*volume, now_ms);
        }
        // A volume with nothing left goes once its released locks have been told of.
        self.volumes.retain(|_, v| !v.leases.is_empty() || !v.due.is_empty() || !v.files.is_empty() || v.released);
    }

    /// Takes byte-range locks for a held open (one LOCK request's elements, in order): all of
    /// them, or, when one conflicts with a lock of any open (this one's included, by the
    /// rules of [`byte_locks`]), none (those taken before it in the request are let go).
    pub fn lock(&mut self, gw: Gateway, volume: Uuid, id: u64, locks: &[ByteLock]) -> Result<(), LockError> {
        if locks.iter().any(|l| !byte_locks::valid_range(l.offset, l.length)) {
            return Err(LockError::InvalidRange);
        }
        let v = self.volumes.get_mut(&volume).ok_or(LockError::UnknownOpen)?;
        let file = *v.leases.get(&gw.node).filter(|l| l.incarnation == gw.incarnation).and_then(|l| l.opens.get(&id)).ok_or(LockError::UnknownOpen)?;
        let total = v.locks;
        let f = v.files.get_mut(&file).ok_or(LockError::UnknownOpen)?;
        let me = f.held.iter().position(|h| h.node == gw.node && h.id == id).ok_or(LockError::UnknownOpen)?;
        if total + locks.len() > MAX_LOCKS_PER_VOLUME {
            return Err(LockError::TooMany { what: "the volume", max: MAX_LOCKS_PER_VOLUME, name: "max_locks_per_volume" });
        }
        if f.held[me].locks.len() + locks.len() > MAX_LOCKS_PER_OPEN {
            return Err(LockError::TooMany { what: "this open", max: MAX_LOCKS_PER_OPEN, name: "max_locks_per_open" });
        }
        if f.locks() + locks.len() > MAX_LOCKS_PER_FILE {
            return Err(LockError::TooMany { what: "the file", max: MAX_LOCKS_PER_FILE, name: "max_locks_per_file" });
        }
        let before = f.held[me].locks.len();
        for l in locks {
            let intent = Intent::Lock { exclusive: l.exclusive };
            let holder = f.held.iter().enumerate().find(|(i, h)| h.locks.iter().any(|held| byte_locks::conflicts(held, *i == me, l.offset, l.length, intent))).map(|(_, h)| h.node);
            if let Some(holder_node) = holder {
                f.held[me].locks.truncate(before);
                return Err(LockError::NotGranted { holder_node });
            }
            f.held[me].locks.push(*l);
        }
        v.locks += locks.len();
        Ok(())
    }

    /// Notes that the held open's lock or unlock call numbered `call` by its gateway has come
    /// (before it is taken, whatever its outcome; see [`OpenRecord::locks_exact`]).
    pub fn lock_call(&mut self, gw: Gateway, volume: Uuid, id: u64, call: u64) {
        let Some(v) = self.volumes.get_mut(&volume) else { return };
        let Some(file) = v.leases.get(&gw.node).filter(|l| l.incarnation == gw.incarnation).and_then(|l| l.opens.get(&id)).copied() else { return };
        if let Some(h) = v.files.get_mut(&file).and_then(|f| f.held.iter_mut().find(|h| h.node == gw.node && h.id == id)) {
            h.last_call = h.last_call.max(call);
        }
    }

    /// Lets go of byte-range locks of a held open, each named by its exact offset and length,
    /// in order: at the first that names none, [`LockError::RangeNotLocked`] (those before it
    /// stay unlocked, as on Windows).
    pub fn unlock(&mut self, gw: Gateway, volume: Uuid, id: u64, ranges: &[(u64, u64)]) -> Result<(), LockError> {
        self.unseen = true;
        let v = self.volumes.get_mut(&volume).ok_or(LockError::UnknownOpen)?;
        let file = *v.leases.get(&gw.node).filter(|l| l.incarnation == gw.incarnation).and_then(|l| l.opens.get(&id)).ok_or(LockError::UnknownOpen)?;
        let h = v.files.get_mut(&file).and_then(|f| f.held.iter_mut().find(|h| h.node == gw.node && h.id == id)).ok_or(LockError::UnknownOpen)?;
        for &(offset, length) in ranges {
            let i = byte_locks::unlock_index(&h.locks, offset, length).ok_or(LockError::RangeNotLocked)?;
            h.locks.remove(i);
            v.locks -= 1;
            v.released = true;
        }
        Ok(())
    }

    /// Whether a READ or WRITE of `offset..offset+length` through `open` (the gateway node and
    /// open id it came through, when known) is blocked by a byte-range lock of the file
    /// (STATUS_FILE_LOCK_CONFLICT). Nothing of zero length is.
    pub fn io_conflict(&self, file: FileKey, open: Option<(u64, u64)>, offset: u64, length: u64, write: bool) -> bool {
        let Some(v) = self.volumes.get(&file.volume).filter(|v| v.locks > 0) else { return false };
        let Some(f) = v.files.get(&(file.view, file.ino)) else { return false };
        let intent = if write { Intent::Write } else { Intent::Read };
        length > 0 && f.held.iter().any(|h| h.locks.iter().any(|l| byte_locks::conflicts(l, open == Some((h.node, h.id)), offset, length, intent)))
    }

    /// Whether any open of `volume` holds a byte-range lock (else no I/O needs checking).
    pub fn has_locks(&self, volume: Uuid) -> bool {
        self.volumes.get(&volume).is_some_and(|v| v.locks > 0)
    }

    /// The byte-range locks a held open has (what its gateway lists in renewals).
    pub fn locks_of(&self, gw: Gateway, volume: Uuid, id: u64) -> Vec<ByteLock> {
        let Some(v) = self.volumes.get(&volume) else { return Vec::new() };
        let Some(file) = v.leases.get(&gw.node).filter(|l| l.incarnation == gw.incarnation).and_then(|l| l.opens.get(&id)) else { return Vec::new() };
        v.files.get(file).and_then(|f| f.held.iter().find(|h| h.node == gw.node && h.id == id)).map_or_else(Vec::new, |h| h.locks.clone())
    }

    /// Whether any gateway holds an open of `file`.
    pub fn has_opens(&self, file: FileKey) -> bool {
        self.volumes.get(&file.volume).and_then(|v| v.files.get(&(file.view, file.ino))).is_some_and(|f| !f.held.is_empty())
    }

    /// Every inode of `volume`'s `view` that some gateway holds open.
    pub fn held_files(&self, volume: Uuid, view: View) -> Vec<u64> {
        self.volumes.get(&volume).map_or_else(Vec::new, |v| v.files.iter().filter(|((at, _), f)| *at == view && !f.held.is_empty()).map(|((_, ino), _)| *ino).collect())
    }

    /// Whether byte-range locks went since the last call (an unlock, the release of an open
    /// that held locks, a lease that expired or was replaced, a renewal that no longer lists an
    /// open): locks waiting for their ranges are then asked for again.
    pub fn take_released(&mut self) -> bool {
        if !std::mem::take(&mut self.unseen) {
            return false;
        }
        self.volumes.values_mut().fold(false, |any, v| std::mem::take(&mut v.released) | any)
    }

    /// The nodes whose gateways hold opens of `file`, but the open `except` (node, id); a node
    /// once per open.
    pub fn holders_of(&self, file: FileKey, except: Option<(u64, u64)>) -> Vec<u64> {
        let f = self.volumes.get(&file.volume).and_then(|v| v.files.get(&(file.view, file.ino)));
        f.map(|f| f.held.iter().filter(|h| Some((h.node, h.id)) != except).map(|h| h.node).collect()).unwrap_or_default()
    }

    /// The nodes whose gateways hold opens on `volume`.
    pub fn holders(&self, volume: Uuid) -> Vec<u64> {
        let v = self.volumes.get(&volume);
        v.map(|v| v.leases.iter().filter(|(_, l)| !l.opens.is_empty()).map(|(n, _)| *n).collect()).unwrap_or_default()
    }

    /// Opens held on `volume`, from every gateway.
    pub fn count(&self, volume: Uuid) -> usize {
        self.volumes.get(&volume).map_or(0, |v| v.count)
    }
}

/// One volume view's opens, as a rename decided under the volume lock asks about them.
pub struct OpensOf<'a> {
    pub table: &'a std::sync::Mutex<OpenTable>,
    pub volume: Uuid,
    pub view: View,
}

impl crate::volume::OpenFiles for OpensOf<'_> {
    fn holds(&self, ino: u64) -> bool {
        self.table.lock().expect("open table lock").has_opens(FileKey { volume: self.volume, view: self.view, ino })
    }
    fn held(&self) -> Vec<u64> {
        self.table.lock().expect("open table lock").held_files(self.volume, self.view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_smb_gateway::share_modes::*;

    const VOL: Uuid = Uuid::from_u128(7);
    const A: Gateway = Gateway { node: 1, incarnation: 100 };
    const B: Gateway = Gateway { node: 2, incarnation: 200 };

    fn file(ino: u64) -> FileKey {
        FileKey { volume: VOL, view: View::Live, ino }
    }

    fn open(ino: u64, id: u64, access: u32, share: u32) -> OpenRecord {
        OpenRecord::new(file(ino), id, Mode { access, share }, None)
    }

    fn reader(ino: u64, id: u64) -> OpenRecord {
        open(ino, id, FILE_READ_DATA, SHARE_READ)
    }

    fn writer(ino: u64, id: u64) -> OpenRecord {
        open(ino, id, FILE_WRITE_DATA, SHARE_ALL)
    }

    #[test]
    fn a_conflicting_open_from_another_gateway_is_a_sharing_violation_naming_the_holder() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, reader(5, 1)).unwrap();
        let e = t.register(0, B, LEASE_MS, writer(5, 1)).unwrap_err();
        assert_eq!(e, OpenError::SharingViolation { holder_node: 1, access: FILE_READ_DATA, share: SHARE_READ });
        assert_eq!(t.count(VOL), 1, "the refused open is not held");
    }

    #[test]
    fn opens_of_the_same_gateway_are_checked_too() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, reader(5, 1)).unwrap();
        assert!(matches!(t.register(0, A, LEASE_MS, writer(5, 2)), Err(OpenError::SharingViolation { .. })));
    }

    #[test]
    fn other_files_other_views_and_other_volumes_do_not_conflict() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, open(5, 1, FILE_READ_DATA, 0)).unwrap();
        t.register(0, B, LEASE_MS, writer(6, 1)).unwrap();
        let snap = OpenRecord { file: FileKey { view: View::Snapshot(Uuid::from_u128(1)), ..file(5) }, ..writer(5, 2) };
        t.register(0, B, LEASE_MS, snap).unwrap();
        let other = OpenRecord { file: FileKey { volume: Uuid::from_u128(8), ..file(5) }, ..writer(5, 3) };
        t.register(0, B, LEASE_MS, other).unwrap();
    }

    #[test]
    fn release_lets_the_conflicting_open_in() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, reader(5, 1)).unwrap();
        t.release(A, VOL, 1, None);
        t.register(0, B, LEASE_MS, writer(5, 1)).unwrap();
        assert_eq!(t.count(VOL), 1);
    }

    #[test]
    fn a_retried_register_is_held_once() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, open(5, 1, FILE_READ_DATA, 0)).unwrap();
        t.register(0, A, LEASE_MS, open(5, 1, FILE_READ_DATA, 0)).unwrap();
        assert_eq!(t.count(VOL), 1);
    }

    #[test]
    fn a_release_from_another_incarnation_or_an_unknown_id_changes_nothing() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, reader(5, 1)).unwrap();
        t.release(Gateway { node: 1, incarnation: 99 }, VOL, 1, None);
        t.release(A, VOL, 42, None);
        t.release(A, Uuid::from_u128(9), 1, None);
        assert_eq!(t.count(VOL), 1);
    }

    #[test]
    fn an_expired_lease_drops_every_open_of_that_gateway_only() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, reader(5, 1)).unwrap();
        t.register(10_000, B, LEASE_MS, reader(6, 1)).unwrap();
        // Just before expiry A still holds the file.
        assert!(t.register(LEASE_MS - 1, B, LEASE_MS, writer(5, 2)).is_err());
        t.register(LEASE_MS, B, LEASE_MS, writer(5, 2)).unwrap();
        assert_eq!(t.count(VOL), 2, "B's two opens; A's is gone");
    }

    #[test]
    fn a_renewal_keeps_the_lease_alive() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, reader(5, 1)).unwrap();
        assert_eq!(t.renew(10_000, A, LEASE_MS, VOL, 2, &[reader(5, 1)]).unwrap(), Renewed::Known { dropped: 0 });
        assert!(t.register(20_000, B, LEASE_MS, writer(5, 1)).is_err(), "renewed at 10 s: held until 25 s");
        t.register(25_000, B, LEASE_MS, writer(5, 1)).unwrap();
    }

    #[test]
    fn a_restarted_gateway_never_inherits_its_predecessors_opens_and_the_old_incarnation_is_refused() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, reader(5, 1)).unwrap();
        let a2 = Gateway { node: 1, incarnation: 101 };
        // The new incarnation's first call drops the old one's opens at once (no lease wait).
        t.register(1, a2, LEASE_MS, writer(5, 1)).unwrap();
        assert_eq!(t.count(VOL), 1);
        assert!(matches!(t.register(2, A, LEASE_MS, reader(6, 2)), Err(OpenError::StaleIncarnation { node: 1, incarnation: 100, newer: 101 })));
        assert!(matches!(t.renew(2, A, LEASE_MS, VOL, 9, &[]), Err(OpenError::StaleIncarnation { .. })));
    }

    #[test]
    fn an_owner_that_restarted_reinstates_a_renewing_gateways_opens_without_a_check() {
        let mut t = OpenTable::default(); // a fresh owner
        let listed = [reader(5, 1), open(5, 2, FILE_READ_DATA, SHARE_READ)];
        assert_eq!(t.renew(0, A, LEASE_MS, VOL, 3, &listed).unwrap(), Renewed::Reinstated { held: 2, refused: 0 });
        assert!(matches!(t.register(1, B, LEASE_MS, writer(5, 1)), Err(OpenError::SharingViolation { .. })));
        // The next renewal finds the lease known.
        assert_eq!(t.renew(5_000, A, LEASE_MS, VOL, 3, &listed).unwrap(), Renewed::Known { dropped: 0 });
    }

    /// A gateway cut off past its lease whose first call after is a register (not a renewal):
    /// its next renewal still reinstates the opens it kept, and they conflict again.
    #[test]
    fn a_register_before_the_first_renewal_does_not_stop_the_kept_opens_coming_back() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, reader(5, 1)).unwrap();
        t.register(LEASE_MS + 1, A, LEASE_MS, reader(6, 2)).unwrap(); // the old lease expired first
        assert_eq!(t.count(VOL), 1, "only the new open is held");
        assert_eq!(t.renew(LEASE_MS + 2, A, LEASE_MS, VOL, 3, &[reader(5, 1), reader(6, 2)]).unwrap(), Renewed::Reinstated { held: 1, refused: 0 });
        assert!(matches!(t.register(LEASE_MS + 3, B, LEASE_MS, writer(5, 1)), Err(OpenError::SharingViolation { .. })));
        assert_eq!(t.renew(LEASE_MS + 4, A, LEASE_MS, VOL, 3, &[reader(5, 1), reader(6, 2)]).unwrap(), Renewed::Known { dropped: 0 });
    }

    #[test]
    fn a_renewal_drops_opens_the_gateway_no_longer_lists_below_up_to_only() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, reader(5, 1)).unwrap(); // its release was lost
        t.register(0, A, LEASE_MS, reader(6, 2)).unwrap(); // still open
        t.register(0, A, LEASE_MS, reader(7, 3)).unwrap(); // registered after the list was taken
        assert_eq!(t.renew(1, A, LEASE_MS, VOL, 3, &[reader(6, 2)]).unwrap(), Renewed::Known { dropped: 1 });
        assert_eq!(t.count(VOL), 2);
        t.register(2, B, LEASE_MS, writer(5, 1)).unwrap();
    }

    #[test]
    fn the_bound_per_gateway_is_named_and_enforced() {
        let mut t = OpenTable::default();
        for id in 0..MAX_OPENS_PER_GATEWAY as u64 {
            t.register(0, A, LEASE_MS, reader(id, id)).unwrap();
        }
        let e = t.register(0, A, LEASE_MS, reader(1 << 40, 1 << 40)).unwrap_err();
        assert_eq!(e, OpenError::TooManyForGateway { node: 1, volume: VOL, max: MAX_OPENS_PER_GATEWAY });
        assert!(e.to_string().contains("max_opens_per_gateway"), "{e}");
        // Another gateway still gets in.
        t.register(0, B, LEASE_MS, reader(1 << 40, 1)).unwrap();
    }

    #[test]
    fn the_bound_per_volume_is_named_and_enforced() {
        let mut t = OpenTable::default();
        let per = MAX_OPENS_PER_GATEWAY as u64;
        let gateways = (MAX_OPENS_PER_VOLUME as u64).div_ceil(per);
        for g in 0..gateways {
            let gw = Gateway { node: 10 + g, incarnation: 1 };
            for id in 0..per.min(MAX_OPENS_PER_VOLUME as u64 - g * per) {
                t.register(0, gw, LEASE_MS, reader(g * per + id, id)).unwrap();
            }
        }
        assert_eq!(t.count(VOL), MAX_OPENS_PER_VOLUME);
        let e = t.register(0, A, LEASE_MS, reader(u64::MAX, 1)).unwrap_err();
        assert_eq!(e, OpenError::TooManyOnVolume { volume: VOL, max: MAX_OPENS_PER_VOLUME });
        assert!(e.to_string().contains("max_opens_per_volume"), "{e}");
    }

    #[test]
    fn the_bound_on_gateways_per_volume_is_enforced_and_expiry_frees_the_volume() {
        let mut t = OpenTable::default();
        for n in 0..MAX_GATEWAYS_PER_VOLUME as u64 {
            t.renew(0, Gateway { node: 1000 + n, incarnation: 1 }, LEASE_MS, VOL, 0, &[]).unwrap();
        }
        assert!(matches!(t.register(0, A, LEASE_MS, reader(5, 1)), Err(OpenError::TooManyGateways { .. })));
        t.expire(LEASE_MS);
        t.register(LEASE_MS, A, LEASE_MS, reader(5, 1)).unwrap();
    }

    fn doomed(ino: u64, id: u64) -> OpenRecord {
        OpenRecord { delete_at_close: Some(Link { parent: 1, name: format!("f{ino}") }), ..open(ino, id, FILE_READ_DATA | DELETE, SHARE_ALL) }
    }

    #[test]
    fn a_delete_on_close_file_goes_at_its_last_close_and_refuses_new_opens_meanwhile() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, doomed(5, 1)).unwrap();
        t.register(0, B, LEASE_MS, open(5, 1, FILE_READ_DATA, SHARE_ALL)).unwrap();
        // The gateway's CLOSE of a delete-on-close open carries the deletion.
        t.release(A, VOL, 1, Some(Link { parent: 1, name: "f5".into() }));
        assert!(t.take_due().is_empty(), "another open holds the file");
        assert_eq!(t.register(1, A, LEASE_MS, reader(5, 2)), Err(OpenError::DeletePending));
        t.release(B, VOL, 1, None);
        let due = t.take_due_of(file(5));
        assert_eq!(due, vec![DueDelete { file: file(5), link: Link { parent: 1, name: "f5".into() } }]);
        assert!(t.take_due().is_empty(), "handed out once");
        assert_eq!(t.register(2, A, LEASE_MS, reader(5, 3)), Err(OpenError::DeletePending), "pending until the owner has deleted it");
        // A deletion that failed for a while is due again, the file still pending.
        t.retry(due[0].clone());
        assert_eq!(t.register(2, A, LEASE_MS, reader(5, 3)), Err(OpenError::DeletePending));
        assert_eq!(t.take_due_of(file(5)), due);
        t.deleted(file(5));
        t.register(2, A, LEASE_MS, reader(5, 3)).unwrap();
    }

    /// A file the owner made for an open it then refused is doomed: new opens are refused until
    /// it is deleted, unless another open got it first. A CLOSE takes only its own file's
    /// deletion; others stay due.
    #[test]
    fn a_doomed_file_refuses_new_opens_and_a_close_takes_only_its_own_deletion() {
        let mut t = OpenTable::default();
        let d = t.doom(file(5), Link { parent: 1, name: "f5".into() }).unwrap();
        assert_eq!(t.register(0, A, LEASE_MS, reader(5, 1)), Err(OpenError::DeletePending));
        t.deleted(d.file);
        t.register(0, A, LEASE_MS, reader(5, 1)).unwrap();
        assert!(t.doom(file(5), Link { parent: 1, name: "f5".into() }).is_none(), "held by an open: not doomed");
        t.register(0, B, LEASE_MS, doomed(6, 1)).unwrap();
        t.expire(LEASE_MS + 1); // B's lease goes: file 6 is due
        t.register(LEASE_MS + 1, A, LEASE_MS, open(7, 2, DELETE, SHARE_ALL)).unwrap();
        let released = t.release(A, VOL, 2, Some(Link { parent: 1, name: "f7".into() })).unwrap();
        assert_eq!(t.take_due_of(released).iter().map(|d| d.file.ino).collect::<Vec<_>>(), vec![7]);
        assert_eq!(t.take_due().iter().map(|d| d.file.ino).collect::<Vec<_>>(), vec![6], "the other deletion stays due");
    }

    #[test]
    fn a_delete_disposition_at_release_deletes_at_once_when_it_is_the_last_open() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, open(6, 1, DELETE, SHARE_ALL)).unwrap();
        t.release(A, VOL, 1, Some(Link { parent: 3, name: "x".into() }));
        assert_eq!(t.take_due(), vec![DueDelete { file: file(6), link: Link { parent: 3, name: "x".into() } }]);
        // Without a disposition, nothing is deleted.
        t.register(0, A, LEASE_MS, open(7, 2, DELETE, SHARE_ALL)).unwrap();
        t.release(A, VOL, 2, None);
        assert!(t.take_due().is_empty());
    }

    /// A disposition set on an open makes its file delete-pending to every gateway at once,
    /// not at that open's close; cleared, it no longer is; the disposed open going leaves the
    /// file to be deleted at its last close.
    #[test]
    fn a_delete_disposition_makes_the_file_delete_pending_at_once_until_cleared() {
        let mut t = OpenTable::default();
        let link = Link { parent: 3, name: "x".into() };
        let sharing_reader = |ino, id| open(ino, id, FILE_READ_DATA, SHARE_ALL);
        t.register(0, A, LEASE_MS, open(6, 1, DELETE, SHARE_ALL)).unwrap();
        t.register(0, B, LEASE_MS, sharing_reader(6, 1)).unwrap();
        t.dispose(A, VOL, 1, Some(link.clone()));
        assert!(matches!(t.register(0, B, LEASE_MS, sharing_reader(6, 2)), Err(OpenError::DeletePending)), "pending before any close");
        t.dispose(B, VOL, 1, None); // another gateway's open of the same id changes nothing
        assert!(matches!(t.register(0, B, LEASE_MS, sharing_reader(6, 2)), Err(OpenError::DeletePending)));
        t.dispose(A, VOL, 1, None);
        t.register(0, B, LEASE_MS, sharing_reader(6, 2)).unwrap();
        t.release(B, VOL, 2, None);
        t.dispose(A, VOL, 1, Some(link.clone()));
        t.release(A, VOL, 1, Some(link.clone()));
        assert!(t.take_due().is_empty(), "node B's open still holds the file");
        assert!(matches!(t.register(0, B, LEASE_MS, sharing_reader(6, 3)), Err(OpenError::DeletePending)), "pending for good once the disposed open went");
        assert!(t.delete_pending(file(6)));
        t.release(B, VOL, 1, None);
        assert_eq!(t.take_due(), vec![DueDelete { file: file(6), link: link.clone() }]);
        // The CLOSE's release is the gateway's last word: one without a deletion clears a
        // disposition the owner holds (the client was told setting it failed).
        t.register(0, A, LEASE_MS, open(7, 4, DELETE, SHARE_ALL)).unwrap();
        t.dispose(A, VOL, 4, Some(link.clone()));
        t.release(A, VOL, 4, None);
        assert!(t.take_due().is_empty() && !t.delete_pending(file(7)));
        // A renewal that reinstates a disposed open (the owner restarted) makes the file
        // delete-pending again.
        let mut fresh = OpenTable::default();
        let listed = OpenRecord { disposed: Some(link.clone()), ..open(8, 5, DELETE, SHARE_ALL) };
        fresh.renew(0, A, LEASE_MS, VOL, 6, &[listed]).unwrap();
        assert!(matches!(fresh.register(0, B, LEASE_MS, sharing_reader(8, 1)), Err(OpenError::DeletePending)));
    }

    #[test]
    fn a_delete_on_close_open_lost_with_its_gateway_deletes_the_file() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, doomed(8, 1)).unwrap();
        t.expire(LEASE_MS + 1);
        assert_eq!(t.take_due().len(), 1, "the lease expired: the open went, and the file with it");
        // A restarted gateway (newer incarnation) drops its predecessor's opens the same way.
        t.register(0, A, LEASE_MS, doomed(9, 1)).unwrap();
        t.register(1, Gateway { node: 1, incarnation: 101 }, LEASE_MS, reader(10, 1)).unwrap();
        assert_eq!(t.take_due().iter().map(|d| d.file.ino).collect::<Vec<_>>(), vec![9]);
    }

    fn x(offset: u64, length: u64) -> ByteLock {
        ByteLock { offset, length, exclusive: true }
    }

    fn sh(offset: u64, length: u64) -> ByteLock {
        ByteLock { offset, length, exclusive: false }
    }

    /// Two opens of one file through two gateways: locks meet as on one server.
    fn two_opens() -> OpenTable {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, open(5, 1, FILE_READ_DATA | FILE_WRITE_DATA, SHARE_ALL)).unwrap();
        t.register(0, B, LEASE_MS, open(5, 7, FILE_READ_DATA | FILE_WRITE_DATA, SHARE_ALL)).unwrap();
        t
    }

    #[test]
    fn locks_through_two_gateways_conflict_and_reads_and_writes_are_checked_against_them() {
        let mut t = two_opens();
        t.lock(A, VOL, 1, &[x(0, 10)]).unwrap();
        assert_eq!(t.lock(B, VOL, 7, &[sh(5, 10)]), Err(LockError::NotGranted { holder_node: 1 }));
        assert!(t.io_conflict(file(5), Some((2, 7)), 0, 10, false), "B may not read under A's exclusive lock");
        assert!(!t.io_conflict(file(5), Some((1, 1)), 0, 10, true), "A may write under its own");
        assert!(t.io_conflict(file(5), None, 9, 1, false), "an I/O through no known open is another open's");
        assert!(!t.io_conflict(file(5), Some((2, 7)), 10, 10, true), "past the lock");
        assert!(!t.io_conflict(file(6), Some((2, 7)), 0, 10, true), "another file");
        assert!(!t.io_conflict(file(5), Some((2, 7)), 0, 0, true), "nothing of zero length");
        t.lock(A, VOL, 1, &[sh(0, 10)]).unwrap();
        t.unlock(A, VOL, 1, &[(0, 10)]).unwrap();
        assert!(!t.io_conflict(file(5), Some((2, 7)), 0, 10, false), "the exclusive one went first; a shared lock lets B read");
        assert!(t.io_conflict(file(5), Some((2, 7)), 0, 10, true), "but not write");
        assert!(t.io_conflict(file(5), Some((1, 1)), 0, 10, true), "nor A, whose own shared lock it is");
        t.unlock(A, VOL, 1, &[(0, 10)]).unwrap();
        assert_eq!(t.unlock(A, VOL, 1, &[(0, 10)]), Err(LockError::RangeNotLocked));
        assert!(!t.io_conflict(file(5), Some((2, 7)), 0, 10, true));
    }

    #[test]
    fn a_lock_request_is_all_or_nothing_and_an_unlock_list_stops_at_the_first_it_cannot_place() {
        let mut t = two_opens();
        t.lock(B, VOL, 7, &[sh(2, 1)]).unwrap();
        assert_eq!(t.lock(A, VOL, 1, &[x(20, 5), x(0, 5)]), Err(LockError::NotGranted { holder_node: 2 }));
        t.lock(B, VOL, 7, &[x(20, 5)]).expect("A's first lock was let go");
        assert_eq!(t.lock(A, VOL, 1, &[x(30, 5), x(32, 5)]), Err(LockError::NotGranted { holder_node: 1 }), "a request's own locks count");
        assert!(t.locks_of(A, VOL, 1).is_empty());
        t.lock(B, VOL, 7, &[x(40, 1), x(41, 1)]).unwrap();
        assert_eq!(t.unlock(B, VOL, 7, &[(40, 1), (99, 1), (41, 1)]), Err(LockError::RangeNotLocked));
        assert_eq!(t.locks_of(B, VOL, 7), vec![sh(2, 1), x(20, 5), x(41, 1)], "the first went, the third stayed");
        assert_eq!(t.lock(A, VOL, 1, &[x(u64::MAX, 2)]), Err(LockError::InvalidRange));
        assert_eq!(t.lock(A, VOL, 99, &[x(0, 1)]), Err(LockError::UnknownOpen));
        assert_eq!(t.lock(Gateway { node: 1, incarnation: 99 }, VOL, 1, &[x(0, 1)]), Err(LockError::UnknownOpen), "another incarnation");
    }

    #[test]
    fn locks_go_with_their_open_and_come_back_with_a_renewal_after_an_owner_restart() {
        let mut t = two_opens();
        t.lock(A, VOL, 1, &[x(0, 10)]).unwrap();
        t.release(A, VOL, 1, None);
        t.lock(B, VOL, 7, &[x(0, 10)]).expect("A's close let go of its lock");
        // B's lease runs out: its locks go too.
        t.expire(LEASE_MS + 1);
        // An owner that restarted knows nothing; B's renewal lists its open with its lock.
        let mut restarted = OpenTable::default();
        let listed = OpenRecord { locks: vec![x(50, 5), sh(60, 1)], ..open(5, 7, FILE_READ_DATA | FILE_WRITE_DATA, SHARE_ALL) };
        assert!(matches!(restarted.renew(0, B, LEASE_MS, VOL, 8, &[listed]), Ok(Renewed::Reinstated { held: 1, .. })));
        assert_eq!(restarted.locks_of(B, VOL, 7), vec![x(50, 5), sh(60, 1)]);
        assert!(restarted.io_conflict(file(5), None, 52, 1, false));
        assert!(t.locks_of(B, VOL, 7).is_empty(), "expired");
        assert_eq!(t.lock(B, VOL, 7, &[x(0, 1)]), Err(LockError::UnknownOpen));
    }

    /// A lock whose reply was lost (the owner granted it, the gateway does not list it) goes
    /// at the gateway's next renewal that lists the open's locks as exact; not from a renewal
    /// that does not say so, nor from one whose list predates a lock call the owner took.
    #[test]
    fn a_lock_whose_reply_was_lost_goes_at_a_renewal_that_lists_the_locks_exactly() {
        let mut t = two_opens();
        for (call, lock) in [(1, x(0, 10)), (2, sh(20, 5)), (3, sh(20, 5))] {
            t.lock_call(A, VOL, 1, call);
            t.lock(A, VOL, 1, &[lock]).unwrap(); // the third: its reply is lost
        }
        let listed = |locks: Vec<ByteLock>, locks_exact, lock_calls| OpenRecord { locks, locks_exact, lock_calls, ..open(5, 1, FILE_READ_DATA | FILE_WRITE_DATA, SHARE_ALL) };
        let held = vec![x(0, 10), sh(20, 5)];
        t.renew(0, A, LEASE_MS, VOL, 2, &[listed(held.clone(), false, 3)]).unwrap();
        assert_eq!(t.locks_of(A, VOL, 1).len(), 3, "not exact: nothing goes");
        t.renew(0, A, LEASE_MS, VOL, 2, &[listed(held.clone(), true, 2)]).unwrap();
        assert_eq!(t.locks_of(A, VOL, 1).len(), 3, "the list predates a call the owner took");
        t.renew(0, A, LEASE_MS, VOL, 2, &[listed(held.clone(), true, 3)]).unwrap();
        assert_eq!(t.locks_of(A, VOL, 1), held, "one of the two alike goes");
        assert_eq!(t.lock(B, VOL, 7, &[x(0, 30)]), Err(LockError::NotGranted { holder_node: 1 }));
        // Call 4 never reaches the owner; call 5 does, and overtakes a renewal taken before
        // it: that list (last call 4) does not apply, whatever the gap.
        t.lock_call(A, VOL, 1, 5);
        t.lock(A, VOL, 1, &[x(40, 1)]).unwrap();
        t.renew(0, A, LEASE_MS, VOL, 2, &[listed(held.clone(), true, 4)]).unwrap();
        assert_eq!(t.locks_of(A, VOL, 1), vec![x(0, 10), sh(20, 5), x(40, 1)], "call 5's lock stays");
        t.renew(0, A, LEASE_MS, VOL, 2, &[listed(Vec::new(), true, 5)]).unwrap();
        assert!(t.locks_of(A, VOL, 1).is_empty());
        t.lock(B, VOL, 7, &[x(0, 30)]).expect("A's locks went");
    }

    /// The files a rename asks about are those of its own view of the volume.
    #[test]
    fn held_files_are_those_of_one_view() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, open(5, 1, FILE_READ_DATA, SHARE_ALL)).unwrap();
        let in_clone = OpenRecord { file: FileKey { volume: VOL, view: View::Clone(Uuid::from_u128(9)), ino: 6 }, ..open(6, 2, FILE_READ_DATA, SHARE_ALL) };
        t.register(0, A, LEASE_MS, in_clone).unwrap();
        assert_eq!(t.held_files(VOL, View::Live), vec![5]);
        assert_eq!(t.held_files(VOL, View::Clone(Uuid::from_u128(9))), vec![6]);
        t.release(A, VOL, 1, None);
        assert!(t.held_files(VOL, View::Live).is_empty(), "released");
    }

    /// Who holds a file, and a volume: what an owner asks for releases still on their way.
    #[test]
    fn holders_name_the_gateways_that_hold_opens() {
        let mut t = OpenTable::default();
        t.register(0, A, LEASE_MS, open(5, 1, FILE_READ_DATA, SHARE_ALL)).unwrap();
        t.register(0, A, LEASE_MS, open(5, 2, FILE_READ_DATA, SHARE_ALL)).unwrap();
        t.register(0, B, LEASE_MS, open(5, 1, FILE_READ_DATA, SHARE_ALL)).unwrap();
        t.register(0, B, LEASE_MS, open(6, 2, FILE_READ_DATA, SHARE_ALL)).unwrap();
        let mut of5 = t.holders_of(file(5), None);
        of5.sort_unstable();
        assert_eq!(of5, vec![1, 1, 2]);
        assert_eq!(t.holders_of(file(5), Some((2, 1))), vec![1, 1], "but the open named");
        assert_eq!(t.holders_of(file(6), Some((2, 2))), Vec::<u64>::new());
        assert!(t.holders_of(file(7), None).is_empty());
        t.release(B, VOL, 1, None);
        t.release(B, VOL, 2, None);
        assert_eq!(t.holders(VOL), vec![1], "B holds nothing on the volume now");
        assert!(t.holders(Uuid::from_u128(8)).is_empty());
    }

    /// The table says when locks went, whichever way (the owner then wakes waiting locks on
    /// every node), and only then.
    #[test]
    fn the_table_says_when_locks_went_however_they_went() {
        let mut t = two_opens();
        t.register(0, A, LEASE_MS, open(9, 3, FILE_READ_DATA, SHARE_ALL)).unwrap();
        t.lock(A, VOL, 1, &[x(0, 10), x(20, 5)]).unwrap();
        assert_eq!(t.lock(B, VOL, 7, &[x(0, 1)]), Err(LockError::NotGranted { holder_node: 1 }));
        t.release(A, VOL, 3, None);
        assert!(!t.take_released(), "taking, refusing, and closing an open without locks let none go");
        t.unlock(A, VOL, 1, &[(20, 5)]).unwrap();
        assert!(t.take_released(), "an unlock");
        assert!(!t.take_released(), "told once");
        t.release(A, VOL, 1, None);
        assert!(t.take_released(), "the release of an open that held a lock");
        t.lock(B, VOL, 7, &[x(0, 10)]).unwrap();
        t.expire(LEASE_MS + 1);
        assert!(t.take_released(), "an expired lease, whose volume entry went with it");
        let mut t = two_opens();
        t.lock(B, VOL, 7, &[x(0, 10)]).unwrap();
        t.renew(1, Gateway { node: 2, incarnation: 201 }, LEASE_MS, VOL, 8, &[]).unwrap();
        assert!(t.take_released(), "a restarted gateway's predecessor's opens");
    }

    #[test]
    fn locks_are_bounded_per_open_and_per_file() {
        let mut t = OpenTable::default();
        let per_open = MAX_LOCKS_PER_OPEN as u64;
        let opens = (MAX_LOCKS_PER_FILE / MAX_LOCKS_PER_OPEN) as u64;
        for id in 1..=opens + 1 {
            t.register(0, A, LEASE_MS, open(5, id, FILE_READ_DATA, SHARE_ALL)).unwrap();
        }
        for id in 1..=opens {
            let many: Vec<ByteLock> = (0..per_open).map(|i| sh(id << 32 | i, 1)).collect();
            t.lock(A, VOL, id, &many).unwrap();
        }
        assert!(matches!(t.lock(A, VOL, 1, &[sh(1 << 40, 1)]), Err(LockError::TooMany { name: "max_locks_per_open", .. })));
        assert!(matches!(t.lock(A, VOL, opens + 1, &[sh(1 << 40, 1)]), Err(LockError::TooMany { name: "max_locks_per_file", .. })), "the file is full");
        t.unlock(A, VOL, 1, &[(1 << 32, 1)]).unwrap();
        t.lock(A, VOL, opens + 1, &[sh(1 << 40, 1)]).expect("room again");
        // A renewal reinstating more than the file has room for keeps what fits.
        let mut restarted = OpenTable::default();
        for id in 1..=opens {
            let listed = OpenRecord { locks: (0..per_open).map(|i| sh(id << 32 | i, 1)).collect(), ..open(5, id, FILE_READ_DATA, SHARE_ALL) };
            restarted.renew(0, A, LEASE_MS, VOL, 99, &[listed]).unwrap();
        }
        let extra = OpenRecord { locks: vec![sh(1 << 40, 1)], ..open(5, opens + 1, FILE_READ_DATA, SHARE_ALL) };
        restarted.renew(0, A, LEASE_MS, VOL, 99, &[extra]).unwrap();
        assert!(restarted.locks_of(A, VOL, opens + 1).is_empty(), "no room on the file");
    }
}
