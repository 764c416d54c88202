//! The node's errors, and the one table that maps them to gRPC status codes.

use tonic::{Code, Status};
use umbra_raft::command::MetaError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "no quorum: the write or read was not confirmed by a majority of voters within {waited_ms} ms \
         (are most nodes down or cut off?); a write may still apply later and is safe to retry"
    )]
    NoQuorum { waited_ms: u64 },
    #[error("no leader: none was elected within {waited_ms} ms (are most nodes down or cut off?)")]
    NoLeader { waited_ms: u64 },
    #[error("the leader (node {leader} at {addr}) did not answer: {reason}")]
    LeaderUnreachable { leader: u64, addr: String, reason: String },
    #[error("this node is not the leader (it was when the request was forwarded to it)")]
    NotLeader,
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Refused(#[from] MetaError),
    #[error("raft has stopped on this node: {0}")]
    Stopped(String),
}

impl From<NodeError> for Status {
    /// The gRPC mapping table. Retryable conditions are `Unavailable`; a refusal of the
    /// request itself is never retryable.
    fn from(e: NodeError) -> Status {
        let code = match &e {
            NodeError::NoQuorum { .. } | NodeError::NoLeader { .. } | NodeError::LeaderUnreachable { .. } => Code::Unavailable,
            NodeError::Stopped(_) | NodeError::NotLeader => Code::Unavailable,
            NodeError::Membership(_) => Code::FailedPrecondition,
            NodeError::BadRequest(_) => Code::InvalidArgument,
            NodeError::Refused(m) => match m {
                MetaError::NotFound { .. } | MetaError::UnknownNode { .. } => Code::NotFound,
                MetaError::AlreadyExists { .. } => Code::AlreadyExists,
                MetaError::InvalidName(_) => Code::InvalidArgument,
                MetaError::LimitReached { .. } => Code::ResourceExhausted,
                MetaError::Fsrvp(f) => match f {
                    umbra_raft::fsrvp::FsrvpError::ObjectNotFound(_) => Code::NotFound,
                    umbra_raft::fsrvp::FsrvpError::InvalidArgument(_) => Code::InvalidArgument,
                    _ => Code::FailedPrecondition,
                },
            },
        };
        Status::new(code, e.to_string())
    }
}
