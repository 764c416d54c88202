//! `umbra-sim`: runs seeds, prints a line per failing seed (with the command that replays it)
//! and a summary.

use std::time::Instant;

use clap::Parser;
use umbra_sim::run::{run, Broken, Options, Profile};

#[derive(Parser)]
#[command(about = "Deterministic simulation of an Umbra cluster under faults")]
struct Args {
    /// Seeds to run, as A..B (B excluded) or A..=B.
    #[arg(long, default_value = "1..101")]
    seeds: String,
    /// Run one seed (overrides --seeds).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the run's event trace.
    #[arg(long)]
    trace: bool,
    #[arg(long, value_enum, default_value = "all")]
    profile: Profile,
    /// A deliberately broken variant (to see the checkers fail).
    #[arg(long, value_enum)]
    broken: Option<Broken>,
    /// Virtual seconds of workload under faults.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Metadata only: no volumes, file writes or shadow-copy sets (replays seeds found before
    /// the volumes joined the simulation).
    #[arg(long)]
    metadata_only: bool,
}

fn parse_range(s: &str) -> anyhow::Result<std::ops::RangeInclusive<u64>> {
    if let Some((a, b)) = s.split_once("..=") {
        return Ok(a.parse()?..=b.parse()?);
    }
    let (a, b) = s.split_once("..").ok_or_else(|| anyhow::anyhow!("seeds are A..B or A..=B"))?;
    let (a, b): (u64, u64) = (a.parse()?, b.parse()?);
    anyhow::ensure!(b > a, "an empty seed range");
    Ok(a..=b - 1)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seeds = match args.seed {
        Some(s) => s..=s,
        None => parse_range(&args.seeds)?,
    };
    let started = Instant::now();
    let (mut runs, mut failed, mut simulated) = (0u64, 0u64, std::time::Duration::ZERO);
    let (mut file_writes, mut file_writes_lost, mut sets_tried, mut sets_committed) = (0usize, 0usize, 0usize, 0usize);
    for seed in seeds {
        let out = run(Options { seed, profile: args.profile, broken: args.broken, seconds: args.seconds, nodes: 3, volumes: !args.metadata_only });
        runs += 1;
        simulated += out.simulated;
        file_writes += out.file_writes;
        file_writes_lost += out.file_writes_lost;
        sets_tried += out.sets_tried;
        sets_committed += out.sets_committed;
        if args.trace {
            for line in &out.trace {
                println!("{line}");
            }
        }
        if !out.violations.is_empty() {
            failed += 1;
            let broken = args.broken.map(|b| format!(" --broken {}", clap::ValueEnum::to_possible_value(&b).map(|v| v.get_name().to_string()).unwrap_or_default())).unwrap_or_default();
            let profile = clap::ValueEnum::to_possible_value(&args.profile).map(|v| v.get_name().to_string()).unwrap_or_default();
            println!("FAIL seed {seed}: {}", out.violations.join("; "));
            let meta = if args.metadata_only { " --metadata-only" } else { "" };
            println!("  replay: cargo run -p umbra-sim --release -- --seed {seed} --profile {profile} --seconds {}{broken}{meta} --trace", args.seconds);
        }
    }
    let wall = started.elapsed();
    println!("umbra-sim: {file_writes} file writes acknowledged ({file_writes_lost} unflushed ones lost to power losses, as allowed), {sets_tried} shadow-copy sets tried, {sets_committed} committed");
    println!(
        "umbra-sim: {runs} seeds, {failed} failed, {:.1} seeds/s, simulated {:.0} s in {:.1} s wall ({:.1}x)",
        runs as f64 / wall.as_secs_f64(),
        simulated.as_secs_f64(),
        wall.as_secs_f64(),
        simulated.as_secs_f64() / wall.as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
