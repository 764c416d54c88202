//! The Raft gRPC service: decodes a peer's JSON request, hands it to openraft, and returns
//! openraft's `Result` as JSON. A payload that does not decode is `InvalidArgument`; nothing
//! reaches openraft.

use tonic::{Request, Response, Status};
use umbra_proto::v1::raft_server::Raft as RaftRpc;
use umbra_proto::v1::RaftPayload;

use crate::types::Raft;

pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    pub fn new(raft: Raft) -> Self {
        RaftService { raft }
    }
}

fn decode<T: serde::de::DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().json).map_err(|e| Status::invalid_argument(format!("malformed raft message: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let json = serde_json::to_vec(value).map_err(|e| Status::internal(format!("encoding raft reply: {e}")))?;
    Ok(Response::new(RaftPayload { json }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        encode(&self.raft.append_entries(decode(req)?).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        encode(&self.raft.vote(decode(req)?).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        encode(&self.raft.install_snapshot(decode(req)?).await)
    }
}
