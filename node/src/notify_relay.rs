//! Directory change notification across nodes: this node's gateway connections publish the
//! changes they make to the node's notifier (smb-gateway/src/driver.rs); the relay takes the
//! local ones, gathers them for up to [`RELAY_GATHER`], and sends them to every other member's
//! volume service (`Notify`), which publishes them to that node's notifier, so a watch sees
//! changes made through any node's gateway. The same messages say when this node's volume owner
//! let byte-range locks go (`unlocked`), so locks waiting for their ranges through every
//! node's gateway are asked for again. Best effort, as on one server whose watches can
//! overflow: a batch that could not reach a peer (or that this relay fell behind on) makes the
//! next one to that peer say `lost`, and its watches answer STATUS_NOTIFY_ENUM_DIR.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tonic::Status;
use umbra_proto::v1::{ChangeRecord, NotifyRequest};
use umbra_smb_gateway::driver::{ChangeBatch, Notifier};
use umbra_smb_gateway::server::notify::{Change, ChangeKind};

use crate::volume_service::VolumeService;

/// How long the relay gathers local changes before sending them.
pub const RELAY_GATHER: Duration = Duration::from_millis(20);
/// Changes in one relayed message (more go in the next).
pub const MAX_RELAYED_CHANGES: usize = 1024;
/// Bytes of a relayed share name or path (SMB paths are at most 32767 UTF-16 units).
pub const MAX_RELAYED_PATH_BYTES: usize = 4 * 32_768;
/// How long a peer may take to take a batch.
const RELAY_TIMEOUT: Duration = Duration::from_secs(2);
/// A peer that missed a message is sent another (`lost`, `unlocked`) within this, even when
/// nothing new happens here: its watches re-read and its waiting locks ask again.
const BEHIND_RETRY: Duration = Duration::from_secs(1);

fn record_of(c: &Change) -> ChangeRecord {
    let (kind, from) = match &c.kind {
        ChangeKind::Added => (1, String::new()),
        ChangeKind::Removed => (2, String::new()),
        ChangeKind::Modified => (3, String::new()),
        ChangeKind::Renamed { from } => (4, from.clone()),
        ChangeKind::SecurityChanged => (5, String::new()),
    };
    ChangeRecord { share: c.share.clone(), path: c.path.clone(), directory: c.directory, kind, from }
}

/// A relayed message as a batch for this node's notifier; bounded, and refused whole if any
/// record is malformed.
pub fn batch_of(r: &NotifyRequest) -> Result<ChangeBatch, Status> {
    if r.changes.len() > MAX_RELAYED_CHANGES {
        return Err(Status::invalid_argument(format!("{} relayed changes (max {MAX_RELAYED_CHANGES})", r.changes.len())));
    }
    let mut changes = Vec::with_capacity(r.changes.len());
    for c in &r.changes {
        if [&c.share, &c.path, &c.from].iter().any(|s| s.len() > MAX_RELAYED_PATH_BYTES) {
            return Err(Status::invalid_argument(format!("a relayed path is longer than {MAX_RELAYED_PATH_BYTES} bytes")));
        }
        let kind = match c.kind {
            1 => ChangeKind::Added,
            2 => ChangeKind::Removed,
            3 => ChangeKind::Modified,
            4 => ChangeKind::Renamed { from: c.from.clone() },
            5 => ChangeKind::SecurityChanged,
            k => return Err(Status::invalid_argument(format!("unknown change kind {k}"))),
        };
        changes.push(Change { share: c.share.clone(), path: c.path.clone(), directory: c.directory, kind });
    }
    Ok(ChangeBatch { from_peer: true, lost: r.lost, changes }.bounded())
}

/// Relays this node's changes until `stop` changes.
pub async fn run(node: u64, notifier: Notifier, service: Arc<VolumeService>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut rx = notifier.changes.subscribe();
    let mut released = notifier.releases.watch_here();
    // Peers whose last batch did not arrive: their next one says `lost`.
    let mut behind: HashSet<u64> = HashSet::new();
    loop {
        let (mut lost, mut unlocked) = (false, false);
        let mut changes: Vec<ChangeRecord> = Vec::new();
        // Wait for the first local change or release of locks, then gather for a moment. Peers
        // that missed a message hear again by this time (fixed for the wait: peers' own batches
        // arriving meanwhile do not put it off).
        let resend_at = tokio::time::Instant::now() + BEHIND_RETRY;
        let deadline = loop {
            tokio::select! {
                Ok(()) = released.changed() => {
                    unlocked = true;
                    break tokio::time::Instant::now() + RELAY_GATHER;
                }
                _ = tokio::time::sleep_until(resend_at), if !behind.is_empty() => break tokio::time::Instant::now(),
                got = rx.recv() => match got {
                    Ok(b) if b.from_peer => continue,
                    Ok(b) => {
                        changes.extend(b.changes.iter().map(record_of));
                        break tokio::time::Instant::now() + RELAY_GATHER;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        lost = true;
                        break tokio::time::Instant::now() + RELAY_GATHER;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = stop.changed() => return,
            }
        };
        while changes.len() < MAX_RELAYED_CHANGES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Ok(b)) if b.from_peer => {}
                Ok(Ok(b)) => changes.extend(b.changes.iter().map(record_of)),
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => lost = true,
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                Err(_) => break,
            }
        }
        // Releases meanwhile go in this message (the watch holds a count, not a queue).
        if released.has_changed().unwrap_or(false) {
            released.borrow_and_update();
            unlocked = true;
        }
        if changes.len() > MAX_RELAYED_CHANGES {
            // The rest of the last frame's changes would not fit: the peers re-read instead.
            changes.truncate(MAX_RELAYED_CHANGES);
            lost = true;
        }
        // The members as they are now; one that left is behind no more.
        let members = service.other_nodes();
        behind.retain(|peer| members.contains(peer));
        let sends = members.into_iter().map(|peer| {
            // A peer that missed a message may have missed a release in it.
            let behind_peer = behind.contains(&peer);
            let req = NotifyRequest { from_node: node, lost: lost || behind_peer, unlocked: unlocked || behind_peer, changes: changes.clone() };
            let service = service.clone();
            async move {
                let delivered = match service.peer(peer) {
                    Ok(mut client) => matches!(tokio::time::timeout(RELAY_TIMEOUT, client.notify(req)).await, Ok(Ok(_))),
                    Err(_) => false,
                };
                (peer, delivered)
            }
        });
        for (peer, delivered) in futures::future::join_all(sends).await {
            if delivered {
                behind.remove(&peer);
            } else {
                tracing::debug!(peer, "relaying changes failed; the next batch to it says some were lost");
                behind.insert(peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let changes = vec![
            Change { share: "data".into(), path: "a\\b.txt".into(), directory: false, kind: ChangeKind::Added },
            Change { share: "data".into(), path: "a\\c.txt".into(), directory: false, kind: ChangeKind::Renamed { from: "a\\b.txt".into() } },
            Change { share: "data".into(), path: "d".into(), directory: true, kind: ChangeKind::Removed },
            Change { share: "data".into(), path: "e".into(), directory: false, kind: ChangeKind::Modified },
            Change { share: "data".into(), path: "f".into(), directory: true, kind: ChangeKind::SecurityChanged },
        ];
        let req = NotifyRequest { from_node: 2, lost: true, unlocked: true, changes: changes.iter().map(record_of).collect() };
        let batch = batch_of(&req).unwrap();
        assert_eq!(batch.changes, changes);
        assert!(batch.from_peer && batch.lost);
        let mut bad = req.clone();
        bad.changes[1].kind = 9;
        assert!(batch_of(&bad).is_err());
        let mut long = req.clone();
        long.changes[0].path = "x".repeat(MAX_RELAYED_PATH_BYTES + 1);
        assert!(batch_of(&long).is_err());
        let many = NotifyRequest { changes: vec![record_of(&changes[0]); MAX_RELAYED_CHANGES + 1], ..req };
        assert!(batch_of(&many).is_err());
    }
}

/// How often this node passes its failed logons on to the other nodes.
pub const LOGON_RELAY_INTERVAL: Duration = Duration::from_millis(250);

/// Passes the gateway's failed logons (their user names) to every other member until `stop`
/// changes, best effort: a peer that misses some counts fewer.
pub async fn relay_logon_failures(node: u64, throttle: Arc<std::sync::Mutex<umbra_smb_gateway::server::throttle::Throttle>>, service: Arc<VolumeService>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(LOGON_RELAY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let users = throttle.lock().expect("throttle lock").take_to_relay();
        if users.is_empty() {
            continue;
        }
        let sends = service.other_nodes().into_iter().map(|peer| {
            let req = umbra_proto::v1::LogonFailuresRequest { from_node: node, users: users.clone() };
            let service = service.clone();
            async move {
                let sent = match service.peer(peer) {
                    Ok(mut client) => matches!(tokio::time::timeout(RELAY_TIMEOUT, client.logon_failures(req)).await, Ok(Ok(_))),
                    Err(_) => false,
                };
                if !sent {
                    tracing::debug!(peer, "passing failed logons on failed");
                }
            }
        });
        futures::future::join_all(sends).await;
    }
}
