//! The simulation's own guarantees: runs are deterministic, a bounded number of seeds passes
//! under every fault profile, and each deliberately broken variant is caught.

use umbra_sim::run::{run, Broken, Options, Profile};

fn opts(seed: u64, profile: Profile, broken: Option<Broken>) -> Options {
    Options { seed, profile, broken, seconds: 10, nodes: 3, volumes: true }
}

/// The metadata-only simulation (Raft, Admin, Meta), for the Raft-level broken variants.
fn metadata_opts(seed: u64, profile: Profile, broken: Option<Broken>) -> Options {
    Options { volumes: false, ..opts(seed, profile, broken) }
}

#[test]
fn one_seed_run_twice_gives_a_byte_identical_trace() {
    let a = run(opts(7, Profile::All, None));
    let b = run(opts(7, Profile::All, None));
    assert!(!a.trace.is_empty());
    assert_eq!(a.trace.join("\n"), b.trace.join("\n"));
    assert_eq!(a.violations, b.violations);
    assert!(a.file_writes > 0 && a.sets_tried > 0, "the run wrote files ({}) and tried sets ({})", a.file_writes, a.sets_tried);
    assert_eq!((a.file_writes, a.sets_tried, a.sets_committed), (b.file_writes, b.sets_tried, b.sets_committed));
}

/// Simulations started at once on several threads (as cargo runs tests) still replay exactly:
/// a run must not depend on what else the process has run before or runs beside it.
#[test]
fn one_seed_run_on_threads_beside_other_seeds_gives_the_same_trace() {
    let alone = run(Options { seconds: 5, ..opts(7, Profile::All, None) });
    let runs: Vec<_> = [7, 11, 7, 3]
        .into_iter()
        .map(|seed| std::thread::spawn(move || (seed, run(Options { seconds: 5, ..opts(seed, Profile::All, None) }))))
        .collect();
    for (seed, out) in runs.into_iter().map(|t| t.join().expect("a simulation thread")) {
        if seed == 7 {
            assert_eq!(out.trace.join("\n"), alone.trace.join("\n"));
        }
    }
}

/// CI's bounded run: 100 seeds over all faults, volumes and shadow-copy sets included, with 5
/// virtual seconds of workload each (more with `cargo run -p umbra-sim --release`).
#[test]
fn a_hundred_seeds_under_all_faults_keep_every_invariant() {
    let (mut acked, mut file_writes, mut committed) = (0, 0, 0);
    for seed in 1..=100 {
        let out = run(Options { seconds: 5, ..opts(seed, Profile::All, None) });
        assert!(out.violations.is_empty(), "seed {seed}: {:?}\nreplay: cargo run -p umbra-sim --release -- --seed {seed} --profile all --seconds 5 --trace", out.violations);
        acked += out.acked;
        file_writes += out.file_writes;
        committed += out.sets_committed;
    }
    eprintln!("100 seeds: {acked} metadata writes, {file_writes} file writes acknowledged, {committed} shadow-copy sets committed");
    assert!(acked > 100 * 5, "the workload got writes through ({acked} acknowledged)");
    assert!(file_writes > 100 * 5, "the file writer got writes through ({file_writes} acknowledged)");
    assert!(committed > 100, "shadow-copy sets were committed ({committed})");
}

fn caught_within(broken: Broken, profile: Profile, max_seeds: u64) -> u64 {
    caught_within_by(broken, max_seeds, |seed| opts(seed, profile, Some(broken)))
}

fn caught_within_by(broken: Broken, max_seeds: u64, opts: impl Fn(u64) -> Options) -> u64 {
    for seed in 1..=max_seeds {
        if !run(opts(seed)).violations.is_empty() {
            return seed;
        }
    }
    panic!("{broken:?} was not caught within {max_seeds} seeds");
}

#[test]
fn skipping_the_raft_log_sync_is_caught_by_acknowledged_writes_survive() {
    let seed = caught_within_by(Broken::SkipLogSync, 30, |s| metadata_opts(s, Profile::Power, Some(Broken::SkipLogSync)));
    let out = run(metadata_opts(seed, Profile::Power, Some(Broken::SkipLogSync)));
    assert!(out.violations.iter().any(|v| v.contains("acknowledged writes lost") || v.contains("election safety") || v.contains("differ")), "{:?}", out.violations);
}

#[test]
fn skipping_the_vote_sync_is_caught() {
    caught_within_by(Broken::SkipVoteSync, 60, |s| metadata_opts(s, Profile::Power, Some(Broken::SkipVoteSync)));
}

#[test]
fn stale_follower_reads_are_caught_by_linearizable_reads() {
    let seed = caught_within_by(Broken::StaleReads, 30, |s| metadata_opts(s, Profile::Partitions, Some(Broken::StaleReads)));
    let out = run(metadata_opts(seed, Profile::Partitions, Some(Broken::StaleReads)));
    assert!(out.violations.iter().any(|v| v.contains("linearizable reads")), "{:?}", out.violations);
}

#[test]
fn releasing_before_every_volume_is_fenced_is_caught_by_one_cut() {
    let seed = caught_within(Broken::ReleaseBeforeAllFenced, Profile::Partitions, 30);
    let out = run(opts(seed, Profile::Partitions, Some(Broken::ReleaseBeforeAllFenced)));
    assert!(out.violations.iter().any(|v| v.contains("one cut")), "{:?}", out.violations);
}

#[test]
fn committing_despite_failed_fences_is_caught_by_set_atomicity() {
    let seed = caught_within(Broken::CommitDespiteFailedFences, Profile::All, 30);
    let out = run(opts(seed, Profile::All, Some(Broken::CommitDespiteFailedFences)));
    assert!(out.violations.iter().any(|v| v.contains("set atomicity")), "{:?}", out.violations);
}

#[test]
fn skipping_the_volume_store_sync_is_caught_by_file_writes_survive() {
    let seed = caught_within(Broken::SkipVolumeSync, Profile::Power, 20);
    let out = run(opts(seed, Profile::Power, Some(Broken::SkipVolumeSync)));
    assert!(out.violations.iter().any(|v| v.contains("file writes survive") && v.contains("flushed")), "{:?}", out.violations);
}

#[test]
fn a_reclaim_that_frees_what_snapshots_read_is_caught_by_reading_them_again_at_the_end() {
    let seed = caught_within(Broken::ReclaimTooMuch, Profile::All, 30);
    let out = run(opts(seed, Profile::All, Some(Broken::ReclaimTooMuch)));
    assert!(out.violations.iter().any(|v| v.contains("at the end, ") || v.contains("cannot be read at the end")), "{:?}", out.violations);
}

/// The power-loss profile drops unflushed file writes (as allowed) and nothing else: the
/// in-memory volume engine's power loss is exercised, not just present.
#[test]
fn power_losses_drop_only_unflushed_file_writes() {
    let mut lost = 0;
    for seed in 1..=20 {
        let out = run(Options { seconds: 5, ..opts(seed, Profile::Power, None) });
        assert!(out.violations.is_empty(), "seed {seed}: {:?}", out.violations);
        lost += out.file_writes_lost;
    }
    assert!(lost > 0, "no power loss took an unflushed write in 20 seeds");
}

/// Found by the simulation (seed 1916, metadata only, 20 s): openraft 0.9 restores a leader
/// from its vote after a power loss with a stale commit index, and its read log id let a
/// follower's read miss an acknowledged write. Linearizable reads now wait for the leader's
/// last log index (`Meta::leader_read_index`). Replayed exactly as found.
#[test]
fn seed_1916_a_read_after_a_power_loss_sees_every_acknowledged_write() {
    let out = run(Options { seed: 1916, profile: Profile::All, broken: None, seconds: 20, nodes: 3, volumes: false });
    assert!(out.violations.is_empty(), "{:?}\nreplay: cargo run -p umbra-sim --release -- --seed 1916 --metadata-only --trace", out.violations);
    assert!(out.trace.iter().any(|l| l.contains("PowerLoss")), "the replay still has its power loss");
}
