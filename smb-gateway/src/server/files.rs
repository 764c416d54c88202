//! What the gateway asks of the storage behind a share (the node routes it to the volume's
//! owner). Synchronous: the driver runs connections on the blocking pool.

/// A file or directory as the gateway sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Stable file id (the volume's inode number).
    pub id: u64,
    pub name: String,
    pub directory: bool,
    pub size: u64,
    pub allocated: u64,
    pub created: u64,
    pub written: u64,
    pub changed: u64,
    pub attributes: u32,
    /// Some open of the file set a delete disposition, through any node (stat says; other
    /// calls leave it false).
    pub delete_pending: bool,
}

/// What FileBasicInformation sets (MS-FSCC 2.4.7): FILETIMEs and DOS attributes; `None` leaves
/// a field as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Basic {
    pub created: Option<u64>,
    pub written: Option<u64>,
    pub changed: Option<u64>,
    /// The DOS attributes but FILE_ATTRIBUTE_SPARSE_FILE, which storage keeps as it is.
    pub attributes: Option<u32>,
    /// Sets or clears FILE_ATTRIBUTE_SPARSE_FILE (FSCTL_SET_SPARSE).
    pub sparse: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("not found")]
    NotFound,
    #[error("the path's directory does not exist")]
    PathNotFound,
    #[error("already exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("read-only")]
    ReadOnly,
    /// Not allowed to this file now (a rename over a file some open holds).
    #[error("access denied")]
    AccessDenied,
    #[error("invalid name or request")]
    Invalid,
    /// An offset or size past what storage keeps (a write past the largest file).
    #[error("offset or size too large")]
    TooLarge,
    #[error("disk full")]
    DiskFull,
    #[error("busy")]
    Busy,
    /// Another open of the file, through any node's gateway, denies the access asked for
    /// (MS-FSA 2.1.5.1.2).
    #[error("sharing violation: {0}")]
    SharingViolation(String),
    /// A named bound on opens (per volume or per gateway) is reached.
    #[error("too many opens: {0}")]
    TooManyOpens(String),
    /// The file is delete-pending: it goes when its last open closes (MS-FSA 2.1.5.1.2).
    #[error("delete pending")]
    DeletePending,
    /// A byte-range lock of some open is in the way of a new lock (MS-FSA 2.1.5.8).
    #[error("lock not granted")]
    LockNotGranted,
    /// An unlock names no lock the open holds (MS-FSA 2.1.5.9).
    #[error("range not locked")]
    RangeNotLocked,
    /// A lock whose last byte lies past 2^64 - 1.
    #[error("invalid lock range")]
    InvalidLockRange,
    /// A byte-range lock is in the way of a READ or WRITE (MS-FSA 2.1.5.3, 2.1.5.4).
    #[error("file lock conflict")]
    FileLockConflict,
    /// A named bound on byte-range locks is reached.
    #[error("too many locks: {0}")]
    TooManyLocks(String),
    /// Storage that keeps no byte-range locks.
    #[error("not supported")]
    NotSupported,
    /// A security descriptor storage cannot keep (what a SET's parts make of the kept one: past
    /// its bound, or over a kept one that does not parse).
    #[error("invalid security descriptor")]
    InvalidSecurity,
    #[error("{0}")]
    Other(String),
}

impl FsError {
    /// The NTSTATUS table for storage errors.
    pub fn status(&self) -> u32 {
        use crate::smb2::status::*;
        match self {
            FsError::NotFound => OBJECT_NAME_NOT_FOUND,
            FsError::PathNotFound => OBJECT_PATH_NOT_FOUND,
            FsError::Exists => OBJECT_NAME_COLLISION,
            FsError::NotEmpty => DIRECTORY_NOT_EMPTY,
            FsError::NotADirectory => NOT_A_DIRECTORY,
            FsError::IsADirectory => FILE_IS_A_DIRECTORY,
            FsError::ReadOnly => MEDIA_WRITE_PROTECTED,
            FsError::AccessDenied => ACCESS_DENIED,
            FsError::Invalid => OBJECT_NAME_INVALID,
            FsError::InvalidSecurity => INVALID_SECURITY_DESCR,
            FsError::TooLarge => INVALID_PARAMETER,
            FsError::DiskFull => DISK_FULL,
            FsError::Busy => SHARING_VIOLATION,
            FsError::SharingViolation(_) => SHARING_VIOLATION,
            FsError::TooManyOpens(_) => INSUFFICIENT_RESOURCES,
            FsError::DeletePending => DELETE_PENDING,
            FsError::LockNotGranted => LOCK_NOT_GRANTED,
            FsError::RangeNotLocked => RANGE_NOT_LOCKED,
            FsError::InvalidLockRange => INVALID_LOCK_RANGE,
            FsError::FileLockConflict => FILE_LOCK_CONFLICT,
            FsError::TooManyLocks(_) => INSUFFICIENT_RESOURCES,
            FsError::NotSupported => NOT_SUPPORTED,
            FsError::Other(_) => UNEXPECTED_IO_ERROR,
        }
    }
}

/// A file CREATE may make when its name is missing ([`Files::open_path`]).
#[derive(Clone, Copy, Debug)]
pub struct NewFile {
    pub directory: bool,
    pub now: u64,
    /// The open to register, when its mode takes part in share-access checks.
    pub mode: Option<crate::share_modes::Mode>,
    /// The open has FILE_DELETE_ON_CLOSE.
    pub delete_at_close: bool,
}

/// What [`Files::open_path`] found at a path, with the path's parent directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Looked {
    Found { file: FileInfo, parent: FileInfo },
    /// Made by this call; `registration` releases its open.
    Created { file: FileInfo, parent: FileInfo, registration: Option<u64> },
    /// Only the last name is missing (and nothing was created).
    Missing { parent: FileInfo },
}

/// One side of a [`Files::copy_range`]: the file, the offset, and the open it goes through
/// (its registration, for byte-range lock checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopySide {
    pub id: u64,
    pub offset: u64,
    pub open: Option<u64>,
}

/// Automatic time updates an open's own changes to a file's data skip: those whose time its
/// client set through it, or froze with -1, until it asks for them again with -2 (MS-FSA
/// 2.1.5.15.2: UserSetModificationTime, UserSetChangeTime), as Windows and Samba keep them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keep {
    pub written: bool,
    pub changed: bool,
}

/// When a change to a file's data happened (FILETIME), and the times it leaves as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    pub now: u64,
    pub keep: Keep,
}

impl From<u64> for Stamp {
    fn from(now: u64) -> Stamp {
        Stamp { now, keep: Keep::default() }
    }
}

/// [`Files::copy_range`] as a READ of the source and a WRITE of the target.
pub fn copy_by_read_and_write(files: &(impl Files + ?Sized), share: &str, from: CopySide, to: CopySide, len: u32, now: Stamp) -> Result<u32, FsError> {
    let data = files.read(share, from.id, from.offset, len, 0, from.open)?;
    if data.len() < len as usize {
        return Ok(data.len() as u32);
    }
    files.write(share, to.id, to.offset, &data, now, to.open)?;
    Ok(len)
}

/// Bytes of zeros [`Files::zero_range`]'s default writes in one step.
pub const ZERO_WRITE_BYTES: u64 = 1 << 20;

/// Storage operations on a share; paths are relative to the share's root, `\`-separated.
pub trait Files: Send + Sync {
    fn lookup(&self, share: &str, path: &str) -> Result<FileInfo, FsError>;
    /// What CREATE needs in one call: the file at `path` and its parent directory (the root is
    /// its own parent); with `create`, a file whose last name alone is missing is created (and
    /// its open registered) when the parent is a directory. [`FsError::NotFound`] when the
    /// parent is missing too. Over the network this is one round trip.
    fn open_path(&self, share: &str, path: &str, create: Option<NewFile>) -> Result<Looked, FsError> {
        let (parent_path, name) = path.rsplit_once('\\').unwrap_or(("", path));
        let file = match self.lookup(share, path) {
            Ok(f) => Some(f),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        let parent = match &file {
            Some(root) if path.is_empty() => root.clone(),
            _ => self.lookup(share, parent_path)?,
        };
        match (file, create) {
            (Some(file), _) => Ok(Looked::Found { file, parent }),
            (None, Some(new)) if parent.directory => {
                let file = self.create(share, parent.id, name, new.directory, new.now)?;
                let registration = match new.mode {
                    Some(m) => Some(self.register_open(share, file.id, m, new.delete_at_close.then_some((parent.id, name)))?),
                    None => None,
                };
                Ok(Looked::Created { file, parent, registration })
            }
            (None, _) => Ok(Looked::Missing { parent }),
        }
    }
    fn stat(&self, share: &str, id: u64) -> Result<FileInfo, FsError>;
    fn create(&self, share: &str, parent: u64, name: &str, directory: bool, now: u64) -> Result<FileInfo, FsError>;
    /// Entries of a directory after the (folded) name `after`, at most `limit`.
    fn list(&self, share: &str, dir: u64, after: &str, limit: u32) -> Result<Vec<FileInfo>, FsError>;
    /// Up to `len` bytes at `offset`, after `room` bytes of zeros the caller fills (a READ
    /// response's headers), so the data is read once, into the response it goes out in.
    /// `open`: the registration of the open it comes through, for byte-range lock checks
    /// ([`FsError::FileLockConflict`]).
    fn read(&self, share: &str, id: u64, offset: u64, len: u32, room: usize, open: Option<u64>) -> Result<Vec<u8>, FsError>;
    /// Whether the share's files are served by another node: its READs then complete
    /// asynchronously ([`crate::server::async_ops::Waiting::FileRead`]), several at once.
    fn is_remote(&self, _share: &str) -> bool {
        false
    }
    /// `open` as for [`Files::read`].
    fn write(&self, share: &str, id: u64, offset: u64, data: &[u8], now: Stamp, open: Option<u64>) -> Result<(), FsError>;
    fn set_size(&self, share: &str, id: u64, size: u64, now: Stamp) -> Result<(), FsError>;
    fn set_basic(&self, share: &str, id: u64, basic: Basic) -> Result<(), FsError>;
    fn unlink(&self, share: &str, parent: u64, name: &str, now: u64) -> Result<(), FsError>;
    #[allow(clippy::too_many_arguments)]
    fn rename(&self, share: &str, from_dir: u64, from: &str, to_dir: u64, to: &str, replace: bool, now: u64) -> Result<(), FsError>;
    fn flush(&self, share: &str) -> Result<(), FsError>;

    /// The security descriptor set on the file (self-relative, as [`crate::security`] checked
    /// it when it was set), or None for a file that never had one set. Storage that keeps none
    /// answers NotSupported (files then show the default descriptor).
    fn security(&self, _share: &str, _id: u64) -> Result<Option<Vec<u8>>, FsError> {
        Err(FsError::NotSupported)
    }

    /// Replaces the parts `parts` names (AdditionalInformation bits) of the file's security
    /// descriptor with `descriptor`'s (self-relative, checked), as [`crate::security::merged`]
    /// does, in one step where the descriptor is kept (two SETs of different parts at once both
    /// land); the file's change time becomes `now` (MS-FSA 2.1.5.16).
    fn set_security(&self, _share: &str, _id: u64, _descriptor: Vec<u8>, _parts: u32, _now: u64) -> Result<(), FsError> {
        Err(FsError::NotSupported)
    }
    /// The ranges of `offset..offset+len` that hold data, up to the file's size, merged where
    /// adjacent (FSCTL_QUERY_ALLOCATED_RANGES), and the offset to ask again from when the
    /// answer covers less than the range. This default is for storage that keeps no holes:
    /// everything up to the size.
    fn allocated_ranges(&self, share: &str, id: u64, offset: u64, len: u64) -> Result<(Vec<(u64, u64)>, Option<u64>), FsError> {
        let end = offset.saturating_add(len).min(self.stat(share, id)?.size);
        Ok((if offset < end { vec![(offset, end - offset)] } else { Vec::new() }, None))
    }
    /// Zeroes `offset..offset+len` of a file up to its size, which stays (FSCTL_SET_ZERO_DATA,
    /// FILE_LEVEL_TRIM); storage that keeps holes frees what it covers. One call is a bounded
    /// step: it returns the offset to go on from while the range is not done. This default
    /// writes zeros, [`ZERO_WRITE_BYTES`] at a time. `open` as for [`Files::read`] (a
    /// zeroing is a write for byte-range locks).
    fn zero_range(&self, share: &str, id: u64, offset: u64, len: u64, now: Stamp, open: Option<u64>) -> Result<Option<u64>, FsError> {
        let end = offset.saturating_add(len).min(self.stat(share, id)?.size);
        if offset >= end {
            return Ok(None);
        }
        let stop = end.min(offset + ZERO_WRITE_BYTES);
        self.write(share, id, offset, &vec![0; (stop - offset) as usize], now, open)?;
        Ok((stop < end).then_some(stop))
    }
    /// Whether the storage keeps every open of its files (as [`Files::register_open`] says
    /// when it does): then [`Files::stat`] tells whether a file is delete-pending through any
    /// open ([`FileInfo::delete_pending`]). This default keeps none.
    fn tracks_opens(&self) -> bool {
        false
    }
    /// Registers an open of file `id` with the owner of the share's volume, which checks it
    /// against every other open of the file from any gateway (MS-FSA 2.1.5.1.2) and refuses it
    /// with [`FsError::SharingViolation`]. Returns the registration to release on close. Only
    /// opens whose mode [`counts`](crate::share_modes::Mode::counts) are registered.
    /// `delete_at_close`: the open was made with FILE_DELETE_ON_CLOSE (its file's directory and
    /// name): when it goes, the file is delete-pending and goes at its last close.
    fn register_open(&self, _share: &str, _id: u64, _mode: crate::share_modes::Mode, _delete_at_close: Option<(u64, &str)>) -> Result<u64, FsError> {
        Ok(0)
    }
    /// Releases a registration (CLOSE, LOGOFF, TREE_DISCONNECT, a deleted share, the end of
    /// the connection). Never fails: an owner that misses it drops the open when this gateway
    /// next renews its lease.
    fn release_open(&self, _registration: u64) {}
    /// Sets (with its directory and name) or clears the delete disposition of a registered
    /// open (SET_INFO FileDispositionInformation): while set, the file is delete-pending to
    /// every new open, on every node. Without share-mode registrations (this default) the
    /// disposition takes effect at the open's CLOSE only.
    fn dispose_open(&self, _registration: u64, _delete: Option<(u64, &str)>) -> Result<(), FsError> {
        Ok(())
    }
    /// Copies `len` bytes (at most [`crate::server::MAX_COPY_CHUNK_BYTES`]) from one file
    /// to another of the same share (a server-side copy's chunk): the source is read and the
    /// target written as a READ and a WRITE through their opens would. Returns the bytes
    /// copied: fewer than `len` when the source ends first (then nothing is written). This
    /// default reads and writes through [`Files::read`] and [`Files::write`]; storage on
    /// another node does both there, so the data does not cross the network.
    fn copy_range(&self, share: &str, from: CopySide, to: CopySide, len: u32, now: Stamp) -> Result<u32, FsError> {
        copy_by_read_and_write(self, share, from, to, len, now)
    }
    /// Takes byte-range locks for a registered open (all or none: [`FsError::LockNotGranted`]
    /// when one is in the way), or with `unlock` lets go of each listed range exactly as it was
    /// locked, in order ([`FsError::RangeNotLocked`] at the first that was not). The rules are
    /// [`crate::byte_locks`], applied by whoever keeps every open of the file. This default is
    /// for storage without registrations, which keeps no locks.
    fn lock(&self, _registration: u64, _locks: &[crate::byte_locks::ByteLock], _unlock: bool) -> Result<(), FsError> {
        Err(FsError::NotSupported)
    }
    /// Closes a registered open (CLOSE, and the opens LOGOFF, TREE_DISCONNECT or the end of the
    /// connection drop). With `delete` (its directory and name: the open's disposition asks for
    /// the file's deletion), the file is deleted now if this was its last open, else at its
    /// last close; the error is that deletion's. Without share-mode registrations (this
    /// default), every close is the last.
    fn close_open(&self, share: &str, registration: u64, delete: Option<(u64, &str)>, now: u64) -> Result<(), FsError> {
        self.release_open(registration);
        match delete {
            Some((parent, name)) => self.unlink(share, parent, name, now),
            None => Ok(()),
        }
    }
}
