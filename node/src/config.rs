//! A node's configuration: a TOML file, with command-line flags laid over it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Bound on the configuration file's size; anything larger is refused before parsing.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's id: unique in the cluster, never reused, not 0.
    pub id: u64,
    /// Where the node keeps its data (`raft/` holds the Raft RocksDB).
    pub data_dir: PathBuf,
    /// `host:port` of the gRPC server (Raft and Admin), as peers reach it.
    pub grpc_addr: String,
    /// `host:port` of the SMB gateway, as clients reach it.
    pub smb_addr: String,
    /// Start a new cluster with this node as its only member (ignored once initialised).
    #[serde(default)]
    pub bootstrap: bool,
    /// gRPC addresses of existing members to join through (ignored once initialised).
    #[serde(default)]
    pub join: Vec<String>,
    /// The cluster key (64 hex digits, `umbra up` makes one): every gRPC connection to or from
    /// this node must prove it holds the same (umbra_raft::peer_auth). Without one, the node's
    /// gRPC port is open to anyone who reaches it.
    #[serde(default)]
    pub cluster_key: Option<String>,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub volumes: VolumeTuning,
    #[serde(default)]
    pub smb: SmbTuning,
}

/// SMB gateway settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmbTuning {
    /// A byte-range lock that waits for its range is asked for again as soon as a volume's
    /// owner lets locks go (the owner's node tells every node), and every this many
    /// milliseconds in any case, for news that did not arrive (a relay message lost with its
    /// node, an owner that restarted without the locks it had).
    pub lock_retry_ms: u64,
}

impl Default for SmbTuning {
    fn default() -> Self {
        SmbTuning { lock_retry_ms: umbra_smb_gateway::server::LOCK_RETRY_INTERVAL.as_millis() as u64 }
    }
}

/// Bounds of [`SmbTuning::lock_retry_ms`]: each waiting lock costs a call to its owner at this
/// pace, and a release whose news was lost would go unseen for up to this long.
pub const LOCK_RETRY_MS: std::ops::RangeInclusive<u64> = 10..=60_000;

/// Bounds of [`VolumeTuning::owner_grace_ms`]: shorter than a gateway's renewal interval and a
/// second more, a renewal could come after it; longer than half a minute, a lock a client waits
/// for, retried meanwhile, holds its connection's other requests near a client's own timeout.
pub const OWNER_GRACE_BOUNDS_MS: std::ops::RangeInclusive<u64> = crate::opens::RENEW_INTERVAL_MS + 1_000..=30_000;

/// Bounds of [`VolumeTuning::release_delay_ms`]. Past the gateways' renewal interval a
/// renewal, which no longer lists a closed open, drops it first; tests set the longest, so that
/// only a ride or an owner's request sends a release within a test's steps.
pub const RELEASE_DELAY_BOUNDS_MS: std::ops::RangeInclusive<u64> = 1..=600_000;

/// Volume upkeep settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VolumeTuning {
    /// Work one reclaim step does: deadlist entries or chunks (one write batch each).
    pub reclaim_step_entries: usize,
    /// Reclaim steps run for this long per volume every 200 ms (at least one step).
    pub reclaim_slice_ms: u64,
    /// After this node starts, new opens and byte-range locks on the volumes it already owned
    /// wait this long from its start, for every live gateway's renewal to bring back the opens
    /// and locks it holds (`volume_service::OWNER_GRACE_MS`).
    pub owner_grace_ms: u64,
    /// A CLOSE's release to another node's volume waits at most this long for a call there to
    /// ride on before it is sent alone (`deferred_releases::RELEASE_DELAY`).
    pub release_delay_ms: u64,
}

impl Default for VolumeTuning {
    fn default() -> Self {
        VolumeTuning { reclaim_step_entries: crate::volume::reclaim::RECLAIM_STEP_ENTRIES, reclaim_slice_ms: crate::volumes_task::RECLAIM_SLICE.as_millis() as u64, owner_grace_ms: crate::volume_service::OWNER_GRACE_MS, release_delay_ms: crate::deferred_releases::RELEASE_DELAY.as_millis() as u64 }
    }
}

/// Raft timing and log compaction. The defaults suit a LAN; tests shorten them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot for lagging followers.
    pub keep_entries_after_snapshot: u64,
    /// How long a write or a linearizable read may wait for a leader and a quorum.
    pub request_timeout_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every_entries: 5000,
            keep_entries_after_snapshot: 1000,
            request_timeout_ms: 5000,
        }
    }
}

impl RaftTuning {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is {bytes} bytes; at most {MAX_CONFIG_BYTES} allowed")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Reads `path` as a TOML table (an empty table when `path` is None).
    pub fn load_table(path: Option<&Path>) -> Result<toml::Table, ConfigError> {
        let Some(path) = path else { return Ok(toml::Table::new()) };
        let read = |source| ConfigError::Read { path: path.into(), source };
        let bytes = std::fs::metadata(path).map_err(read)?.len();
        if bytes > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: path.into(), bytes });
        }
        // Read no more than the bound whatever the size said (a device or a growing file).
        let mut text = String::new();
        use std::io::Read as _;
        std::fs::File::open(path).map_err(read)?.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text).map_err(read)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: path.into(), bytes: text.len() as u64 });
        }
        text.parse::<toml::Table>().map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }

    /// Builds a config from a TOML table (the file, with flags already laid over it).
    pub fn from_table(table: toml::Table, origin: &Path) -> Result<Self, ConfigError> {
        let config: NodeConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse { path: origin.into(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.id == 0 {
            return bad("id must be at least 1".into());
        }
        for (field, addr) in [("grpc_addr", &self.grpc_addr), ("smb_addr", &self.smb_addr)] {
            match addr.parse::<SocketAddr>() {
                Err(_) => return bad(format!("{field} {addr:?} is not an IP:port address")),
                // The gRPC address is also what peers dial: it must name one host and port.
                Ok(a) if a.port() == 0 => return bad(format!("{field} {addr:?}: port 0 is not a port peers or clients can reach")),
                Ok(a) if field == "grpc_addr" && a.ip().is_unspecified() => return bad(format!("grpc_addr {addr:?}: other nodes dial this address; give one they can reach, not {}", a.ip())),
                Ok(_) => {}
            }
        }
        if let Some(k) = &self.cluster_key {
            if let Err(e) = umbra_raft::peer_auth::ClusterKey::from_hex(k) {
                return bad(format!("cluster_key: {e}"));
            }
        }
        for addr in &self.join {
            if addr.parse::<SocketAddr>().is_err() {
                return bad(format!("join address {addr:?} is not an IP:port address"));
            }
        }
        if self.bootstrap && !self.join.is_empty() {
            return bad("bootstrap and join exclude each other: start a new cluster or join one".into());
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_ms || r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad("raft timing needs 0 < heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms".into());
        }
        if self.volumes.reclaim_step_entries == 0 || self.volumes.reclaim_step_entries > 1_000_000 {
            return bad("volumes.reclaim_step_entries must be between 1 and 1000000".into());
        }
        if self.volumes.reclaim_slice_ms > crate::volumes_task::UPKEEP_PERIOD.as_millis() as u64 {
            return bad(format!("volumes.reclaim_slice_ms must be at most {} (the upkeep period)", crate::volumes_task::UPKEEP_PERIOD.as_millis()));
        }
        if !OWNER_GRACE_BOUNDS_MS.contains(&self.volumes.owner_grace_ms) {
            return bad(format!("volumes.owner_grace_ms must be between {} and {}", OWNER_GRACE_BOUNDS_MS.start(), OWNER_GRACE_BOUNDS_MS.end()));
        }
        if !RELEASE_DELAY_BOUNDS_MS.contains(&self.volumes.release_delay_ms) {
            return bad(format!("volumes.release_delay_ms must be between {} and {}", RELEASE_DELAY_BOUNDS_MS.start(), RELEASE_DELAY_BOUNDS_MS.end()));
        }
        if !LOCK_RETRY_MS.contains(&self.smb.lock_retry_ms) {
            return bad(format!("smb.lock_retry_ms must be between {} and {}", LOCK_RETRY_MS.start(), LOCK_RETRY_MS.end()));
        }
        if r.snapshot_every_entries == 0 || r.request_timeout_ms == 0 {
            return bad("raft.snapshot_every_entries and raft.request_timeout_ms must be positive".into());
        }
        Ok(())
    }

    pub fn raft_dir(&self) -> PathBuf {
        self.data_dir.join("raft")
    }

    pub fn openraft_config(&self) -> openraft::Config {
        let r = &self.raft;
        openraft::Config {
            cluster_name: "umbra".into(),
            heartbeat_interval: r.heartbeat_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_every_entries),
            max_in_snapshot_log_to_keep: r.keep_entries_after_snapshot,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse { path: "t".into(), message: e.to_string() })?;
        NodeConfig::from_table(table, Path::new("t"))
    }

    const GOOD: &str = "id = 1\ndata_dir = \"/tmp/x\"\ngrpc_addr = \"127.0.0.1:7101\"\nsmb_addr = \"127.0.0.1:4451\"\nbootstrap = true\n";

    #[test]
    fn a_minimal_config_parses_with_default_tuning() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.raft, RaftTuning::default());
        assert_eq!(c.smb.lock_retry_ms, 200);
        assert_eq!(parse(&format!("{GOOD}[smb]\nlock_retry_ms = 50\n")).unwrap().smb.lock_retry_ms, 50);
        assert!(c.openraft_config().validate().is_ok());
    }

    /// A config file is read up to its bound whatever its size claims (a device, a file that
    /// grows), and one past it is refused.
    #[test]
    fn a_config_larger_than_the_bound_is_refused_without_reading_it_all() {
        let e = NodeConfig::load_table(Some(Path::new("/dev/zero"))).unwrap_err();
        assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let cases = [
            (GOOD.replace("id = 1", "id = 0"), "id must be"),
            (GOOD.replace("127.0.0.1:7101", "nowhere"), "grpc_addr"),
            (format!("{GOOD}join = [\"127.0.0.1:1\"]\n"), "exclude"),
            (format!("{GOOD}colour = 3\n"), "unknown field"),
            (GOOD.replace("id = 1", "id = \"one\""), "invalid type"),
            (GOOD.replace("id = 1\n", ""), "missing field `id`"),
            (format!("{GOOD}[raft]\nheartbeat_ms = 900\n"), "raft timing"),
            (GOOD.replace("127.0.0.1:7101", "127.0.0.1:0"), "port 0"),
            (GOOD.replace("127.0.0.1:7101", "0.0.0.0:7101"), "other nodes dial"),
            (format!("{GOOD}[smb]\nlock_retry_ms = 0\n"), "smb.lock_retry_ms must be between 10 and 60000"),
            (format!("{GOOD}[volumes]\nowner_grace_ms = 1000\n"), "volumes.owner_grace_ms must be between 6000 and 30000"),
            (format!("{GOOD}[volumes]\nowner_grace_ms = 600000\n"), "volumes.owner_grace_ms"),
            (format!("{GOOD}[smb]\nlock_retry_ms = 3600000\n"), "smb.lock_retry_ms"),
            (format!("{GOOD}[smb]\nsigning = false\n"), "unknown field"),
        ];
        for (text, expect) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expect), "{err:?} should mention {expect:?}");
        }
    }
}
