//! The node's SMB gateway: users and shares come from the Raft state machine (read locally on
//! every lookup, so a share or user created with `umbra ctl` takes effect without a restart).

use umbra_raft::command::{NtHash, Role};
use umbra_raft::names::fold;
use umbra_raft::store::MetaReader;
use umbra_smb_gateway::server::{Config, Directory};

/// The cluster's one SMB server name (design.md section 5: one FSRVP server identity).
pub const NETBIOS_NAME: &str = "UMBRA";
/// Largest READ/WRITE offered: the volume service's whole-write bound.
pub const MAX_IO_BYTES: u32 = 8 * 1024 * 1024;

pub struct RaftDirectory(pub MetaReader);

impl Directory for RaftDirectory {
    fn user(&self, name: &str) -> Option<(NtHash, Role)> {
        self.0.read().state.users.get(&fold(name)).map(|u| (u.nt_hash, u.role))
    }

    fn share(&self, name: &str) -> Option<(String, bool)> {
        self.0.read().state.shares.get(&fold(name)).map(|s| (s.name.clone(), s.read_only))
    }
}

/// The gateway's settings for node `id` (its server GUID is derived from the id, so it is
/// stable across restarts and distinct per node).
pub fn config(id: u64) -> Config {
    let mut guid = *b"umbra-node\0\0\0\0\0\0";
    guid[8..].copy_from_slice(&id.to_le_bytes());
    Config { server_guid: guid, netbios_name: NETBIOS_NAME.into(), dns_name: NETBIOS_NAME.to_lowercase(), signing_required: true, max_io_bytes: MAX_IO_BYTES }
}
