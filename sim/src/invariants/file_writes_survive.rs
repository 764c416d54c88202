//! File writes survive (design.md sections 3 and 7): once the cluster is quiet, the volume's
//! live file on the owner holds
//! - every acknowledged write, unless the owner lost power after the write was sent (a process
//!   death loses nothing acknowledged; a power loss, what was not synced);
//! - every write a successful flush covered, unless that power loss came before the flush's
//!   answer (the flush then did not cover what was already lost);
//! - no hole: writes go one at a time and a power loss keeps a prefix of the WAL, so a write
//!   lost to a power loss takes with it every write answered after it and before that loss.
//!
//! The volume store runs on the in-memory engine, whose power loss keeps what was synced and a
//! seeded prefix of the WAL written after.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::files::Ack;

/// Volume `name`'s file holds `present`; `acked` is what the writer was told, in order;
/// `flushed` what a successful flush covered, with when that flush was answered;
/// `power_losses` when the volume's owner lost power. Returns the writes lost to a power loss
/// (allowed), for the one-cut checker.
pub fn check(name: &str, present: &BTreeSet<u64>, acked: &[Ack], flushed: &BTreeMap<u64, Duration>, power_losses: &[Duration], violations: &mut Vec<String>) -> BTreeSet<u64> {
    let loss_after = |at: Duration| power_losses.iter().copied().filter(|&p| p >= at).min();
    let mut allowed = BTreeSet::new();
    let (mut flushed_lost, mut unexplained) = (Vec::new(), Vec::new());
    for (i, a) in acked.iter().enumerate() {
        if present.contains(&a.k) {
            continue;
        }
        let loss = loss_after(a.started);
        if flushed.get(&a.k).is_some_and(|&f| loss.is_none_or(|l| l > f)) {
            flushed_lost.push(a.k);
            continue;
        }
        let Some(loss) = loss else {
            unexplained.push(a.k);
            continue;
        };
        allowed.insert(a.k);
        // A prefix survived: no write answered after this one and before the loss is there.
        if let Some(later) = acked[i + 1..].iter().take_while(|l| l.answered < loss).find(|l| present.contains(&l.k)) {
            violations.push(format!("file writes survive: volume {name} lost write {} to the power loss at {} ms but kept write {}, answered after it (not a prefix of the WAL)", a.k, loss.as_millis(), later.k));
        }
    }
    if let Some(first) = flushed_lost.first() {
        violations.push(format!("file writes survive: volume {name} lost {} flushed writes (first: write {first})", flushed_lost.len()));
    }
    if let Some(first) = unexplained.first() {
        violations.push(format!("file writes survive: volume {name} lost {} of {} acknowledged writes with no power loss after them (first: write {first})", unexplained.len(), acked.len()));
    }
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t: u64) -> Duration {
        Duration::from_millis(t)
    }

    #[test]
    fn loss_is_allowed_only_after_a_power_loss_for_unflushed_writes_as_a_prefix() {
        let acked: Vec<Ack> = [(0, 10), (1, 20), (2, 30), (3, 40)].map(|(k, t)| Ack { k, volume: 0, started: ms(t - 5), answered: ms(t) }).into();
        let flushed: BTreeMap<u64, Duration> = [(0, ms(12)), (2, ms(50))].into();
        let mut v = Vec::new();
        // Write 2 lost to a power loss at 35 ms (the flush covering it came after: too late);
        // 3 was acknowledged after the loss.
        let present: BTreeSet<u64> = [0, 1, 3].into();
        let allowed = check("v", &present, &acked, &flushed, &[ms(35)], &mut v);
        assert_eq!(allowed, [2].into());
        assert!(v.is_empty(), "{v:?}");
        // 1 lost and 2 kept, both before the loss: a hole.
        let present: BTreeSet<u64> = [0, 2, 3].into();
        check("v", &present, &acked, &flushed, &[ms(35)], &mut v);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("not a prefix"));
        // Without a power loss, nothing may go; a flushed write never.
        let mut v = Vec::new();
        check("v", &[1, 2, 3].into(), &acked, &flushed, &[], &mut v);
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("flushed"), "{v:?}");
        let mut v = Vec::new();
        check("v", &[0, 1, 2].into(), &acked, &flushed, &[ms(5)], &mut v);
        assert!(v[0].contains("no power loss after them"), "{v:?}");
    }
}
