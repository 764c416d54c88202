//! CommitShadowCopySet: the fenced two-phase protocol of design.md section 5.
//!
//! 1. Raft: the set goes CreationInProgress; the entry's index is the attempt token, and the
//!    call's seed names its snapshots (so the call knows the attempt is its own).
//! 2. Every participant volume is fenced in parallel with the token; each owner drains its
//!    writes and takes a tentative snapshot at the fence point in one synced batch.
//! 3. All fences are released; each owner says whether its fence held the whole time.
//!    Commit only if every fence and release succeeded, every fence held, and the last
//!    answer came before the earliest fence send plus the TTL less a drift margin.
//! 4. One compare-and-set decision in Raft. A proposal that errors is unknown, not failed:
//!    propose Aborted and read which decision won.
//! 5. Tentative snapshots are deleted only after an Aborted decision has been read (here, or
//!    by the owners' reconcile); committed ones are promoted.

use std::time::Duration;

use tokio::time::Instant;

use umbra_raft::fsrvp::{Attempt, Decision, FsrvpAnswer, FsrvpCommand, FsrvpError, MAX_COMMIT_MS};
use uuid::Uuid;

use super::{BrokenCommit, Coordinator};

/// Clock drift the second timing guard allows for (fraction of the TTL).
const DRIFT_MARGIN: f64 = 0.05;
/// How often a Commit that found another attempt in progress checks for its decision.
const DECISION_POLL: Duration = Duration::from_millis(20);
/// An attempt's deadline, in fence TTLs.
const ATTEMPT_TTLS: u32 = 3;
/// Tries at resolving an unknown decision before giving up (the reconcile then finishes it).
const DECIDE_TRIES: usize = 20;

/// Whether `attempt` is the one a BeginCommit with `seed` began: its snapshots are named from
/// the seed (raft/src/fsrvp.rs, `begin_commit`).
fn own_attempt(attempt: &Attempt, seed: Uuid) -> bool {
    attempt.participants.iter().all(|p| p.snapshot == Uuid::from_u128(seed.as_u128() ^ p.copy.as_u128()))
}

impl Coordinator {
    #[tracing::instrument(level = "info", skip(self), fields(token))]
    pub async fn commit(&self, set: Uuid, timeout_ms: u32) -> Result<(), FsrvpError> {
        let timeout = Duration::from_millis(u64::from(timeout_ms).clamp(1, MAX_COMMIT_MS));
        let begun = Instant::now();
        // The attempt's deadline (after which the leader aborts it if undecided, and owners drop
        // its snapshots): the client's timeout, but never much past the fences' TTL, so a dead
        // coordinator's attempt is cleaned up in seconds whatever timeout the client gave.
        let deadline = timeout.min(self.settings.fence_ttl * ATTEMPT_TTLS);
        let seed = self.settings.ids.next();
        let answer = self.write(FsrvpCommand::BeginCommit { set, seed, timeout_ms: deadline.as_millis() as u64 }).await?;
        let FsrvpAnswer::Attempt(attempt) = answer else { return Err(FsrvpError::Failed(format!("unexpected answer {answer:?}"))) };
        tracing::Span::current().record("token", attempt.token);
        // This call's own attempt is the one whose snapshot ids come from its seed (not the
        // entry's index: a retried proposal answered from the dedupe table lands at another
        // index, and two Commits batched in one entry share it).
        if !own_attempt(&attempt, seed) {
            // Another Commit of this set is under way: wait for its decision, never start a second.
            return self.await_decision(&attempt, begun + timeout).await;
        }
        self.pause("begun").await;

        let ttl = self.settings.fence_ttl.min(timeout.saturating_sub(begun.elapsed())).max(Duration::from_millis(1));
        let sent = Instant::now();
        if self.settings.broken == Some(BrokenCommit::ReleaseBeforeAllFenced) {
            return self.broken_commit(set, &attempt, ttl, begun, timeout).await;
        }
        let fences = attempt.participants.iter().map(|p| self.fence(p.volume, attempt.token, ttl, p.snapshot));
        let fenced = futures::future::join_all(fences).await;
        let last_answer = sent.elapsed();
        self.pause("fenced").await;
        let releases = attempt.participants.iter().map(|p| self.release(p.volume, attempt.token));
        let released = futures::future::join_all(releases).await;

        let mut why = None;
        let hold = released.iter().filter_map(|r| r.as_ref().ok().map(|(_, d)| *d)).max().unwrap_or_default();
        for r in &fenced {
            if let Err(e) = r {
                why.get_or_insert_with(|| e.clone());
            }
        }
        for r in &released {
            match r {
                Err(e) => {
                    why.get_or_insert_with(|| e.clone());
                }
                Ok((false, _)) => {
                    why.get_or_insert_with(|| "a fence expired before every participant was fenced".into());
                }
                Ok((true, _)) => {}
            }
        }
        if last_answer >= ttl.mul_f64(1.0 - DRIFT_MARGIN) {
            why.get_or_insert_with(|| format!("the fences took {} ms, too close to their {} ms TTL", last_answer.as_millis(), ttl.as_millis()));
        }
        if begun.elapsed() >= timeout {
            why.get_or_insert_with(|| "timeout".into());
        }
        self.pause("released").await;
        let want = if why.is_none() || self.settings.broken == Some(BrokenCommit::CommitDespiteFailedFences) { Decision::Committed } else { Decision::Aborted };
        let decision = self.decide(set, attempt.token, want).await?;
        tracing::info!(?decision, participants = attempt.participants.len(), fence_ms = last_answer.as_millis() as u64, held_us = hold.as_micros() as u64, total_us = begun.elapsed().as_micros() as u64, "commit decided");
        // Owners promote (or drop) their snapshots in the background: Expose and the owners'
        // reconcile both finish it, so the client need not wait for it. (On the node's runtime:
        // the call may run on a gRPC connection's, which ends with the connection.)
        let coordinator = self.clone();
        let done = attempt.clone();
        umbra_raft::network::spawn_at_home(async move { coordinator.after_decision(&done, decision).await });
        match decision {
            Decision::Committed => Ok(()),
            Decision::Aborted if begun.elapsed() >= timeout => Err(FsrvpError::Timeout),
            Decision::Aborted => Err(FsrvpError::Failed(why.unwrap_or_else(|| "aborted by another decision".into()))),
        }
    }

    /// Step 4: the compare-and-set; an errored proposal is resolved by proposing Aborted.
    async fn decide(&self, set: Uuid, token: u64, want: Decision) -> Result<Decision, FsrvpError> {
        let mut proposal = want;
        let mut last = String::new();
        for _ in 0..DECIDE_TRIES {
            match self.write(FsrvpCommand::Decide { set, token, decision: proposal }).await {
                Ok(FsrvpAnswer::Decided(d)) => return Ok(d),
                Ok(other) => return Err(FsrvpError::Failed(format!("unexpected answer {other:?}"))),
                Err(FsrvpError::Failed(e)) => {
                    tracing::warn!(error = %e, ?proposal, "decision unknown; proposing Aborted to learn which decision holds");
                    last = e;
                    proposal = Decision::Aborted;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(FsrvpError::Failed(format!("the decision could not be read: {last}")))
    }

    /// Step 5: promote or delete the tentative snapshots (best effort; reconcile repeats it).
    async fn after_decision(&self, attempt: &Attempt, decision: Decision) {
        let work = attempt.participants.iter().map(|p| async move {
            let r = match decision {
                Decision::Committed => self.commit_snapshot(p.volume, p.snapshot).await,
                Decision::Aborted => self.drop_copy(p.volume, Some(p.snapshot), None).await,
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, ?decision, "owner not updated now; its reconcile will");
            }
        });
        futures::future::join_all(work).await;
    }

    /// The test-only [`BrokenCommit::ReleaseBeforeAllFenced`]: each participant is fenced and
    /// at once released, in parallel with the others, then Committed is proposed if all held.
    async fn broken_commit(&self, set: Uuid, attempt: &Attempt, ttl: Duration, begun: Instant, timeout: Duration) -> Result<(), FsrvpError> {
        let each = attempt.participants.iter().map(|p| async move {
            self.fence(p.volume, attempt.token, ttl, p.snapshot).await?;
            self.release(p.volume, attempt.token).await
        });
        let all_held = futures::future::join_all(each).await.iter().all(|r| matches!(r, Ok((true, _))));
        let want = if all_held && begun.elapsed() < timeout { Decision::Committed } else { Decision::Aborted };
        let decision = self.decide(set, attempt.token, want).await?;
        let coordinator = self.clone();
        let done = attempt.clone();
        umbra_raft::network::spawn_at_home(async move { coordinator.after_decision(&done, decision).await });
        match decision {
            Decision::Committed => Ok(()),
            Decision::Aborted => Err(FsrvpError::Failed("aborted".into())),
        }
    }

    async fn await_decision(&self, attempt: &Attempt, deadline: Instant) -> Result<(), FsrvpError> {
        loop {
            let decision = self.reader.read().state.fsrvp.attempts.get(&attempt.token).and_then(|a| a.decision);
            match decision {
                Some(Decision::Committed) => return Ok(()),
                Some(Decision::Aborted) => return Err(FsrvpError::Failed("the commit in progress was aborted".into())),
                None if Instant::now() >= deadline => return Err(FsrvpError::Timeout),
                None => tokio::time::sleep(DECISION_POLL).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_raft::fsrvp::Participant;

    /// A Commit knows its own attempt by the seed it sent, whatever log index answered it (a
    /// retried proposal, or two Commits in one entry), and another Commit's attempt is not its.
    #[test]
    fn a_commit_knows_its_own_attempt_by_its_seed() {
        let (seed, other) = (Uuid::from_u128(0xA5), Uuid::from_u128(0x5A));
        let copy = Uuid::from_u128(7);
        let participant = |seed: Uuid| Participant { copy, volume: Uuid::from_u128(1), owner: 1, snapshot: Uuid::from_u128(seed.as_u128() ^ copy.as_u128()) };
        let attempt = Attempt { set: Uuid::from_u128(9), token: 40, deadline_ms: 0, participants: vec![participant(seed)], decision: None };
        assert!(own_attempt(&attempt, seed));
        assert!(!own_attempt(&attempt, other));
    }
}
