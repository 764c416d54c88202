//! The Admin gRPC service: decodes requests, calls [`Meta`], encodes replies. No logic here.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use umbra_proto::v1::admin_server::Admin;
use umbra_proto::v1::*;
use umbra_raft::command::Request as MetaRequest;
use umbra_raft::query::Query;
use umbra_raft::NodeInfo;

use crate::errors::NodeError;
use crate::meta::Meta;

pub struct AdminService {
    meta: Arc<Meta>,
}

impl AdminService {
    pub fn new(meta: Arc<Meta>) -> Self {
        AdminService { meta }
    }
}

fn decode<T: serde::de::DeserializeOwned>(json: &[u8], what: &str) -> Result<T, Status> {
    serde_json::from_slice(json).map_err(|e| NodeError::BadRequest(format!("malformed {what}: {e}")).into())
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(value).map_err(|e| Status::internal(format!("encoding reply: {e}")))
}

/// The largest request the admin service takes (a command's JSON: names and paths are a few
/// hundred bytes). Bounds what one proposal adds to the log, so a Raft entry of
/// [`crate::batcher::MAX_REQUESTS_PER_PROPOSAL`] requests stays within a Raft message.
pub const MAX_ADMIN_REQUEST_BYTES: usize = 64 * 1024;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(StatusReply { json: encode(&self.meta.status())? }))
    }

    async fn write(&self, req: Request<WriteRequest>) -> Result<Response<WriteReply>, Status> {
        let req = req.into_inner();
        let request: MetaRequest = decode(&req.json, "write request")?;
        let (response, log_index) = self.meta.write(request, req.forwarded).await?;
        Ok(Response::new(WriteReply { json: encode(&response)?, log_index }))
    }

    async fn query(&self, req: Request<QueryRequest>) -> Result<Response<QueryReply>, Status> {
        let query: Query = decode(&req.into_inner().json, "query")?;
        let (result, applied_index) = self.meta.query(&query).await?;
        Ok(Response::new(QueryReply { json: encode(&result)?, applied_index }))
    }

    async fn read_index(&self, _: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
        match self.meta.leader_read_index().await {
            Ok(read_index) => Ok(Response::new(ReadIndexReply { read_index })),
            Err(Ok(_)) => Err(Status::failed_precondition("not the leader")),
            Err(Err(e)) => Err(e.into()),
        }
    }

    async fn add_node(&self, req: Request<AddNodeRequest>) -> Result<Response<MembershipReply>, Status> {
        let r = req.into_inner();
        for (field, addr) in [("grpc_addr", &r.grpc_addr), ("smb_addr", &r.smb_addr)] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(NodeError::BadRequest(format!("{field} {addr:?} is not an IP:port address")).into());
            }
        }
        let info = NodeInfo { grpc_addr: r.grpc_addr, smb_addr: r.smb_addr };
        let members = self.meta.add_node(r.node_id, info, r.voter, r.forwarded).await?;
        Ok(Response::new(MembershipReply { json: encode(&members)? }))
    }

    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> Result<Response<MembershipReply>, Status> {
        let r = req.into_inner();
        let members = self.meta.remove_node(r.node_id, r.forwarded).await?;
        Ok(Response::new(MembershipReply { json: encode(&members)? }))
    }
}
