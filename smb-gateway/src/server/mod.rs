//! The SMB2 server without I/O: a [`connection::Connection`] takes one frame from a client and
//! returns the frame to send back, using a [`Directory`] for users and shares and an
//! [`Environment`] for randomness and time. The tokio driver is a thin loop around it.

pub mod async_ops;
mod chain;
pub mod connection;
pub mod credits;
pub mod files;
pub mod notify;
mod ops;
pub use ops::{LOCK_RETRY_INTERVAL, MAX_COPY_CHUNK_BYTES, READ_ROOM};
mod session;
pub mod throttle;
#[cfg(test)]
pub(crate) mod testkit;

/// The Unix seconds an `@GMT-YYYY.MM.DD-HH.MM.SS` token names (Previous Versions).
pub fn previous_token(token: &str) -> Option<u64> {
    ops::previous::parse_token(token)
}

use umbra_raft::command::{NtHash, Role};

/// What the server looks up: users (for NTLMv2) and shares (for TREE_CONNECT).
pub trait Directory {
    /// A user by name, any case.
    fn user(&self, name: &str) -> Option<(NtHash, Role)>;
    /// A share by name, any case: (name as created, read-only).
    fn share(&self, name: &str) -> Option<(String, bool)>;
    /// Every share's name, for srvsvc's listing.
    fn shares(&self) -> Vec<String>;
    /// When each committed shadow copy of the share's volume was taken (Unix seconds), for
    /// Previous Versions (`@GMT-...` tokens).
    fn snapshot_times(&self, _share: &str) -> Vec<u64> {
        Vec::new()
    }
    /// The FSRVP service, when this server has one (then \PIPE\FssagentRpc opens).
    fn shadow_copies(&self) -> Option<&dyn crate::rpc::ShadowCopies> {
        None
    }
    /// Where every share's files live, when shares can overlap (several shares of one
    /// volume): a change made through one is then also reported to watches on the others.
    fn share_roots(&self) -> Vec<notify::ShareRoot> {
        Vec::new()
    }
}

/// Randomness and time, supplied by the driver.
pub trait Environment {
    fn random(&mut self, out: &mut [u8]);
    /// Now, as FILETIME (100 ns ticks since 1601).
    fn now(&self) -> u64;
    /// Failed-logon throttling, shared by the server's connections.
    fn throttle(&self) -> std::sync::MutexGuard<'_, throttle::Throttle>;
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub server_guid: [u8; 16],
    /// NetBIOS name, also the NTLM target (a standalone server).
    pub netbios_name: String,
    pub dns_name: String,
    /// Signing required of every session (the default); otherwise only enabled.
    pub signing_required: bool,
    /// Largest READ, WRITE and transaction the server offers.
    pub max_io_bytes: u32,
    /// How often a lock that waits for its range is asked for again when no release was heard
    /// of ([`LOCK_RETRY_INTERVAL`] unless set).
    pub lock_retry: std::time::Duration,
}
