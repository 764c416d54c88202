//! Metadata commands: what a client proposes, and what the state machine answers.
//!
//! A command carries everything apply needs (ids made by the proposer, a leader time stamp),
//! so that apply is deterministic: no clock reads, no id generation (design.md section 2).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::names::NameError;
use crate::types::NodeId;

/// One proposal. `request_id` is generated once per client call and reused by every retry,
/// so a retry after a leader change applies once (the state machine remembers the answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub request_id: Uuid,
    /// Milliseconds since the Unix epoch, stamped by the leader when it proposes; apply uses
    /// `max(stamp, last stamp)`, so time in the state machine never goes backwards.
    #[serde(default)]
    pub stamp_ms: u64,
    pub command: Command,
}

impl Request {
    pub fn new(command: Command) -> Self {
        Request { request_id: Uuid::new_v4(), stamp_ms: 0, command }
    }
}

/// One Raft log entry: the requests a leader gathered while its previous entries were being
/// made durable, applied in order. Batching lets one synced append carry many commands
/// (openraft 0.9 syncs every append before taking the next).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub requests: Vec<Request>,
}

/// The state machine's answers to one entry: one per request of a [`Proposal`], none for a
/// blank or membership entry.
pub type Responses = Vec<Response>;

/// A user's role, as FSRVP and the gateway check it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Backup,
    User,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "admin" => Ok(Role::Admin),
            "backup" => Ok(Role::Backup),
            "user" => Ok(Role::User),
            other => Err(format!("unknown role {other:?}: expected admin, backup or user")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Backup => "backup",
            Role::User => "user",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Create a volume owned by `owner`; `id` is made by the proposer.
    CreateVolume { id: Uuid, name: String, owner: NodeId },
    /// Create a share on a volume (named or by uuid), at `path` inside it.
    CreateShare { name: String, volume: String, path: String, read_only: bool },
    /// Delete a share by name (any case).
    DeleteShare { name: String },
    /// Create a user, or replace an existing user's hash and role.
    PutUser { name: String, nt_hash: NtHash, role: Role },
    /// Delete a user by name (any case).
    DeleteUser { name: String },
    /// An FSRVP step (see [`crate::fsrvp`]).
    Fsrvp(crate::fsrvp::FsrvpCommand),
}

/// The NT hash (MD4 of the UTF-16LE password): the only secret the cluster stores.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NtHash(#[serde(with = "hex16")] pub [u8; 16]);

impl NtHash {
    /// MD4 over the UTF-16LE encoding of `password` (MS-NLMP 3.3.1, NTOWFv1).
    pub fn from_password(password: &str) -> Self {
        use md4::{Digest, Md4};
        let utf16: Vec<u8> = password.encode_utf16().flat_map(u16::to_le_bytes).collect();
        NtHash(Md4::digest(&utf16).into())
    }
}

impl std::fmt::Debug for NtHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NtHash(..)")
    }
}

mod hex16 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let text = String::deserialize(d)?;
        let bad = || serde::de::Error::custom("an NT hash is 32 hexadecimal digits");
        if text.len() != 32 || !text.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(out)
    }
}

/// A volume as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: Uuid,
    pub name: String,
    pub owner: NodeId,
    pub created_ms: u64,
}

/// A share: a case-insensitive, case-preserving name for a path inside a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub name: String,
    pub volume: Uuid,
    pub path: String,
    pub read_only: bool,
    pub created_ms: u64,
    /// Set for a share that exposes a shadow copy (`share@{copy-guid}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<ShareSnapshot>,
}

/// What an exposed shadow-copy share serves: a snapshot of its volume, or (writable
/// auto-recovery sets) the clone branched from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSnapshot {
    pub set: Uuid,
    pub copy: Uuid,
    pub snapshot: Uuid,
    pub clone: Option<Uuid>,
    /// The base share it was exposed from.
    pub base: String,
}

/// A user. The NT hash is kept in the state machine but never listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub nt_hash: NtHash,
    pub role: Role,
}

/// What a user listing shows (no secrets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
}

impl From<&User> for UserInfo {
    fn from(u: &User) -> Self {
        UserInfo { name: u.name.clone(), role: u.role }
    }
}

/// The state machine's answer to one command.
pub type Response = Result<Applied, MetaError>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Applied {
    Volume(Volume),
    Share(Share),
    ShareDeleted(Share),
    User(UserInfo),
    UserDeleted(UserInfo),
    Fsrvp(crate::fsrvp::FsrvpAnswer),
}

/// A command the state machine refused. Deterministic: every node refuses it the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum MetaError {
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: String, name: String },
    #[error("{kind} {name:?} already exists (as {existing:?}; names are case-insensitive)")]
    AlreadyExists { kind: String, name: String, existing: String },
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("node {node} is not a member of the cluster")]
    UnknownNode { node: NodeId },
    #[error(transparent)]
    Fsrvp(#[from] crate::fsrvp::FsrvpError),
    #[error("{limit} reached ({max}): {what}")]
    LimitReached { limit: String, max: usize, what: String },
}

impl MetaError {
    pub(crate) fn not_found(kind: &str, name: &str) -> Self {
        MetaError::NotFound { kind: kind.into(), name: crate::names::shown(name) }
    }
}
