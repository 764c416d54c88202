//! What the volume store keeps: inodes, directory entries, snapshots, clones, and its limits.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::keys::{Epoch, Lineage};

/// File data is kept in chunks of this size. 64 KiB: a 1 MiB write is 16 keys, a 4 KiB random
/// write rewrites one 64 KiB chunk at most (and only the first write after a snapshot copies),
/// and a chunk is one page-aligned extent of the data log (whose pages are punched when freed),
/// far above the cost of its key and pointer in RocksDB.
pub const CHUNK_BYTES: u64 = 64 * 1024;
/// Snapshots a volume may hold (ONTAP's limit too); one more is refused with a clear error.
pub const MAX_SNAPSHOTS_PER_VOLUME: usize = 255;
/// Writable clones a volume may hold.
pub const MAX_CLONES_PER_VOLUME: usize = 64;
/// The largest read or write one call may ask for.
pub const MAX_IO_BYTES: u64 = 16 * 1024 * 1024;
/// Files end below this offset (16 TiB, as a VHDX can be 64 TiB we can raise it later).
pub const MAX_FILE_BYTES: u64 = 16 << 40;
/// Most entries one directory listing call returns.
pub const MAX_LIST_ENTRIES: usize = 4096;
/// The root directory's inode number in every volume.
pub const ROOT_INO: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
}

/// A file or directory. Times are FILETIME (100 ns since 1601), as SMB carries them; they are
/// set by the caller, never read from a clock here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub kind: Kind,
    pub parent: u64,
    pub size: u64,
    /// Bytes of chunks that hold data (holes excluded).
    pub allocated: u64,
    /// Bumped by truncate-to-0: chunks of older generations are invisible from then on.
    pub generation: u64,
    pub created: u64,
    pub written: u64,
    pub changed: u64,
    /// DOS attributes (FILE_ATTRIBUTE_*), besides DIRECTORY which `kind` gives.
    pub attributes: u32,
    /// Chunks of this generation past the end that a truncate has not yet removed; the file
    /// never grows over them until they are gone (see `VolumeStore::set_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<Cut>,
    /// The security descriptor a client set (self-relative bytes, checked by the gateway; at
    /// most [`MAX_SECURITY_BYTES`]), as hex; none for a file that never had one set.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_bytes")]
    pub security: Option<Vec<u8>>,
}

/// What a SET of a security descriptor makes of the one an inode keeps (none if never set),
/// given whether it is a directory ([`crate::volume::VolumeStore::set_info_and_security`]).
pub type SecurityUpdate<'a> = &'a dyn Fn(Option<&[u8]>, bool) -> super::error::Result<Vec<u8>>;

/// The largest security descriptor a file keeps (Windows bounds one at 64 KiB).
pub const MAX_SECURITY_BYTES: usize = 64 * 1024;

/// Bytes as a hex string in an inode's JSON (an array of numbers would take twice the room).
mod hex_bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => {
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                let hex: String = b.iter().flat_map(|x| [DIGITS[usize::from(x >> 4)] as char, DIGITS[usize::from(x & 15)] as char]).collect();
                s.serialize_some(&hex)
            }
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let Some(h) = Option::<String>::deserialize(d)? else { return Ok(None) };
        if h.len() % 2 != 0 || h.len() > 2 * super::MAX_SECURITY_BYTES {
            return Err(D::Error::custom("a security descriptor's hex of odd or too great a length"));
        }
        (0..h.len()).step_by(2).map(|i| h.get(i..i + 2).and_then(|x| u8::from_str_radix(x, 16).ok())).collect::<Option<Vec<u8>>>().map(Some).ok_or_else(|| D::Error::custom("a security descriptor's hex"))
    }
}

impl Inode {
    /// Bytes allocated to the file as a client sees it: chunks holding data, at most what the
    /// file's size spans. While a truncate's cut is pending (and for good in a snapshot taken
    /// meanwhile) this is an upper bound: chunks past the end still count where holes within
    /// the file leave room for them.
    pub fn allocation(&self) -> u64 {
        self.allocated.min(self.size.div_ceil(CHUNK_BYTES).saturating_mul(CHUNK_BYTES))
    }
}

/// Chunk indexes `from..upto` of a file's generation, past its end, that may still hold data
/// from before a truncate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    pub from: u64,
    pub upto: u64,
}

/// What SET_INFO may change; `None` keeps the current value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetInfo {
    pub created: Option<u64>,
    pub written: Option<u64>,
    pub changed: Option<u64>,
    /// The DOS attributes, but for [`ATTRIBUTE_SPARSE_FILE`], which they never change.
    pub attributes: Option<u32>,
    /// Sets or clears [`ATTRIBUTE_SPARSE_FILE`] (FSCTL_SET_SPARSE).
    pub sparse: Option<bool>,
}

/// The DOS attribute of a sparse file (MS-FSCC 2.6): set by FSCTL_SET_SPARSE alone, never by
/// the attributes a SET_INFO or CREATE gives. The store keeps holes in every file whatever it
/// says; it tells clients (and backup software) that asking for allocated ranges pays off.
pub const ATTRIBUTE_SPARSE_FILE: u32 = 0x200;

/// One version of an inode key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum InodeValue {
    Live(Inode),
    Deleted,
}

/// One version of a directory entry key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum DirentValue {
    Live { name: String, ino: u64 },
    Deleted,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The name as created (case preserved).
    pub name: String,
    pub ino: u64,
    pub inode: Inode,
}

/// Which state of a volume an operation sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum View {
    Live,
    /// Read-only, as the volume was when the snapshot was taken.
    Snapshot(Uuid),
    /// A writable clone of a snapshot (read-only once sealed).
    Clone(Uuid),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotState {
    /// Taken at a fence point; kept until the set's decision commits or deletes it.
    Tentative,
    Committed,
    /// Being reclaimed: no longer readable; its record goes last.
    Deleting,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: Uuid,
    /// The snapshot holds every version written at or before this epoch.
    pub epoch: Epoch,
    pub state: SnapshotState,
    /// Caller's time (FILETIME) when it was taken.
    pub created: u64,
    /// The fence token it was taken under (a shadow-copy set's commit attempt); `None` for a
    /// snapshot taken directly. Only fenced snapshots are resolved through Raft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneInfo {
    pub id: Uuid,
    pub lineage: Lineage,
    pub base_snapshot: Uuid,
    pub base_epoch: Epoch,
    pub sealed: bool,
}

/// Per-volume counters, persisted with every change to them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VolumeMeta {
    /// Writes to the live volume are versioned with this epoch.
    pub epoch: Epoch,
    pub next_ino: u64,
    pub next_lineage: Lineage,
    pub next_reclaim: u64,
}

/// Work the reclaimer still has to do, persisted with its cursor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ReclaimItem {
    /// Walk deadlists for dead epochs in (after, upto]; then drop `snapshot`'s record, if any.
    /// `within`: a generation entry (the one after `cursor`) a step left part-way.
    Range {
        after: Epoch,
        upto: Epoch,
        cursor: Option<Vec<u8>>,
        snapshot: Option<Uuid>,
        #[serde(default)]
        within: Option<WithinGeneration>,
    },
    /// Delete every chunk key in `from..to`: chunks nothing can read any more (a dead
    /// generation no pin reads, a deleted clone's), deleted in bounded steps rather than in
    /// the one batch that made them unreachable (the engine frees each one's extent).
    Chunks { from: Vec<u8>, to: Vec<u8> },
    /// Remove the chunks a truncate left past the end of file `ino` (its inode's `cut`) in the
    /// live volume, or in clone `clone`.
    Cut { clone: Option<Uuid>, ino: u64 },
}

/// How far reclaim went through one dead generation's chunks: the deadlist entry, the last
/// chunk key handled (none yet: None), and whether a pin still read any chunk before it (then the entry stays).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WithinGeneration {
    pub entry: Vec<u8>,
    pub after_chunk: Option<Vec<u8>>,
    pub kept: bool,
}

/// Fence tokens seen on a volume, with the answers given (retries get them again).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FenceBook {
    pub highest: u64,
    pub records: std::collections::BTreeMap<u64, FenceRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FenceRecord {
    pub snapshot: Uuid,
    pub released: Option<super::gate::Released>,
}

/// Fence records kept per volume (the newest tokens).
pub const MAX_FENCE_RECORDS: usize = 64;

impl FenceBook {
    /// For a fence call with `token`: the snapshot already taken for it (a retry), nothing
    /// (a new token), or a refusal (lower than one seen, or already released).
    pub fn recorded(&self, token: u64) -> Result<Option<Uuid>, super::VolumeError> {
        use super::VolumeError::StaleToken;
        if token < self.highest {
            return Err(StaleToken { token, why: "a newer fence token has been seen" });
        }
        match self.records.get(&token) {
            Some(r) if r.released.is_some() => Err(StaleToken { token, why: "that fence was already released" }),
            Some(r) => Ok(Some(r.snapshot)),
            None => Ok(None),
        }
    }

    pub fn record(&mut self, token: u64, snapshot: Uuid) {
        self.highest = self.highest.max(token);
        self.records.insert(token, FenceRecord { snapshot, released: None });
        while self.records.len() > MAX_FENCE_RECORDS {
            self.records.pop_first();
        }
    }
}

/// When a change to a file's data happened, and which of its times it moves: a client that set
/// a file's last-write or change time through a handle (or froze it with -1) keeps it through
/// that handle's later writes (MS-FSA 2.1.5.15.2: UserSetModificationTime, UserSetChangeTime),
/// as Windows and Samba do. A plain `u64` is a time that moves both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// FILETIME.
    pub now: u64,
    pub keep_written: bool,
    pub keep_changed: bool,
}

impl From<u64> for Stamp {
    fn from(now: u64) -> Stamp {
        Stamp { now, keep_written: false, keep_changed: false }
    }
}
