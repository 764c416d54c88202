//! The gateway's view of the coordinator: a blocking [`ShadowCopies`] (the gateway runs each
//! connection's frames on the blocking pool).

use std::sync::Arc;

use umbra_raft::fsrvp::FsrvpError;
use umbra_smb_gateway::rpc::fsrvp::{Call, Out};
use umbra_smb_gateway::rpc::{Caller, ShadowCopies};

use super::{Client, Coordinator};

pub struct GatewayFsrvp {
    pub coordinator: Arc<Coordinator>,
    pub runtime: tokio::runtime::Handle,
}

impl ShadowCopies for GatewayFsrvp {
    fn call(&self, caller: &Caller, call: &Call) -> Result<Out, FsrvpError> {
        let client = Client { user: caller.user.clone(), address: caller.client.clone() };
        self.runtime.block_on(self.coordinator.call(&client, call))
    }
}
