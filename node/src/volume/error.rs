//! The volume store's errors. The gateway maps them to NTSTATUS (one table, in the gateway).

use umbra_raft::names::NameError;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {0} is not on this node")]
    NoSuchVolume(Uuid),
    #[error("volume {0} already exists")]
    VolumeExists(Uuid),
    #[error("snapshot {0} does not exist")]
    NoSuchSnapshot(Uuid),
    #[error("clone {0} does not exist")]
    NoSuchClone(Uuid),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0:?} already exists")]
    Exists(String),
    #[error("the directory is not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("read-only: {0}")]
    ReadOnly(&'static str),
    /// The caller may not do this to that file now (a rename over a file some open holds).
    #[error("access denied: {0}")]
    AccessDenied(&'static str),
    /// A rename that an open is in the way of (over a file some open holds, or of a directory
    /// with opens below it): access denied, as [`VolumeError::AccessDenied`], but the owner may
    /// decide again once releases still on their way have come (node/src/deferred_releases.rs).
    #[error("access denied: {0}")]
    OpenInTheWay(&'static str),
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("{what} is {got}; at most {max} allowed")]
    TooLarge { what: &'static str, got: u64, max: u64 },
    #[error("the volume holds {max} snapshots already (its limit)")]
    TooManySnapshots { max: usize },
    #[error("busy: {0}")]
    Busy(&'static str),
    /// A mutation that was asked not to wait met a fence (`gate::refusing_at_fence`); the
    /// volume service waits the fence out and tries again, so this never reaches a client.
    #[error("a fence holds the volume")]
    AtFence,
    #[error("fence token {token} refused: {why}")]
    StaleToken { token: u64, why: &'static str },
    #[error("volume {volume} is owned by node {owner}")]
    WrongOwner { volume: Uuid, owner: u64 },
    #[error("the disk is full: {0}")]
    DiskFull(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A security descriptor the owner cannot keep (what a SET's parts make of the kept one).
    #[error("invalid security descriptor: {0}")]
    InvalidSecurity(String),
    #[error("storage error: {0}")]
    Storage(String),
}

impl From<rocksdb::Error> for VolumeError {
    fn from(e: rocksdb::Error) -> Self {
        let text = e.to_string();
        if text.contains("No space left") {
            VolumeError::DiskFull(text)
        } else {
            VolumeError::Storage(text)
        }
    }
}

impl From<serde_json::Error> for VolumeError {
    fn from(e: serde_json::Error) -> Self {
        VolumeError::Storage(format!("corrupt record: {e}"))
    }
}

pub type Result<T, E = VolumeError> = std::result::Result<T, E>;
