//! `umbra bench volume`: the volume store's speed and space, each figure beside a peer measured
//! in the same run: a plain file on the same filesystem (std::fs) for data, and the local store
//! for the gRPC path; plain TCP on loopback (two threads, std sockets) is also measured, as the
//! floor under any call and the ceiling over any stream between two nodes on this machine.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use umbra_node::volume::{Kind, View, VolumeStore, ROOT_INO};
use uuid::Uuid;

use crate::local::{free_base_port, LocalCluster};
use umbra_proto::v1::volume_client::VolumeClient;
use umbra_proto::v1::{CreateRequest, ReadRequest, StatRequest, VolumeTarget, WriteChunk};

const MIB: u64 = 1 << 20;

#[derive(Args)]
pub struct VolumeBenchArgs {
    /// Size of the sequential file, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Size of the large volume for the snapshot O(1) check, MiB.
    #[arg(long, default_value_t = 4096)]
    large_mib: u64,
    /// Where to put the data (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Write loads for the fence part, MB/s in all (0: flat out).
    #[arg(long, value_delimiter = ',', default_value = "0,200")]
    fence_load_mbps: Vec<u64>,
    /// Rounds of the sequential part (each the local store, then gRPC). On a VM that hands
    /// freed pages back to its host, the writer after a checkpoint that freed the last round's
    /// file gets recycled pages and the other new ones, so this alternates between the two from
    /// round to round: an even count gives both the same mix, and the ratio of the rounds'
    /// summed times compares them on it (docs/benchmarks.md, volume Run 12).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Reads of the file through gRPC from a caller thread in each round of the sequential
    /// part; their mean time is reported (more than one evens out this VM's variation).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    read_repeats: u32,
    /// Run only these parts (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

/// The parts of the volume benchmark, for `--only`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Sequential write and read, locally and through gRPC.
    Seq,
    /// 4 KiB random writes.
    Random,
    /// Snapshot cost against volume size.
    Snapshot,
    /// Space after a snapshot and an overwrite, and after reclaim.
    Space,
    /// Fence time under write load.
    Fence,
    /// Latency of one small call (a file's stat), locally and through gRPC.
    Calls,
}

impl VolumeBenchArgs {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// 1 MiB of non-zero data whose every 64 KiB chunk starts with a stamp of `i`: built from a
/// pattern made once, so the benchmark measures I/O, not data generation.
fn block(i: u64) -> Vec<u8> {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let mut b = PATTERN.get_or_init(|| (0..MIB).map(|j| (j % 251) as u8 + 1).collect()).clone();
    for chunk in b.chunks_mut(64 * 1024) {
        chunk[..8].copy_from_slice(&stamp(i));
    }
    b
}

fn stamp(i: u64) -> [u8; 8] {
    (i + 1).to_le_bytes()
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
        if let Ok(m) = e.metadata() {
            total += if m.is_dir() { dir_bytes(&e.path()) } else { m.len() };
        }
    }
    total
}

pub async fn run(args: VolumeBenchArgs) -> anyhow::Result<()> {
    let scratch = match &args.dir {
        Some(d) => d.join(format!("umbra-vbench-{}", Uuid::new_v4().simple())),
        None => std::env::temp_dir().join(format!("umbra-vbench-{}", Uuid::new_v4().simple())),
    };
    std::fs::create_dir_all(&scratch)?;
    let result = benches(&args, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn benches(args: &VolumeBenchArgs, scratch: &Path) -> anyhow::Result<()> {
    let size = args.size_mib * MIB;
    if args.runs(Part::Seq) || args.runs(Part::Random) {
        let (pw, pr) = plain_file(&scratch.join("plain.bin"), size)?;
        let store = Arc::new(VolumeStore::open(&scratch.join("store"))?);
        let vol = Uuid::new_v4();
        store.create_volume(vol, 0)?;
        // The random part writes into the file the sequential part makes.
        let ino = store.create(vol, View::Live, ROOT_INO, "seq.bin", Kind::File, 1)?;
        if args.runs(Part::Seq) {
            println!("sequential, {} MiB in 1 MiB I/Os (write includes a final sync)", args.size_mib);
            println!("  plain file   write {:.2} GB/s  read {:.2} GB/s", gbps(size, pw), gbps(size, pr));
            // Rounds of the local store then gRPC, one after the other, so both see the same
            // state of this machine; the ratios are each round's, and their median.
            let mut grpc = GrpcFile::start(&scratch.join("seq-cluster")).await?;
            let mut ratios = (Vec::new(), Vec::new(), Vec::new());
            let mut totals = [Duration::ZERO; 5];
            let rounds = async {
                for round in 1..=args.rounds {
                    let (lw, lr) = local_pass(&store, vol, ino, size)?;
                    let (gw, gr, cr) = grpc.pass(size, args.read_repeats).await?;
                    let ratio = |local: Duration, remote: Duration| local.as_secs_f64() / remote.as_secs_f64();
                    let (rw, rr, rc) = (ratio(lw, gw), ratio(lr, gr), ratio(lr, cr));
                    println!("  round {round}: volume store write {:.2} GB/s read {:.2} GB/s; through gRPC write {:.2} GB/s read {:.2} GB/s, from a caller thread {:.2} GB/s (ratio to local: write {rw:.2}, read {rr:.2}, {rc:.2})", gbps(size, lw), gbps(size, lr), gbps(size, gw), gbps(size, gr), gbps(size, cr));
                    for (total, d) in totals.iter_mut().zip([lw, lr, gw, gr, cr]) {
                        *total += d;
                    }
                    ratios.0.push(rw);
                    ratios.1.push(rr);
                    ratios.2.push(rc);
                }
                anyhow::Ok(())
            }
            .await;
            grpc.stop_after(rounds).await?;
            println!("  gRPC/local, median of {} rounds: write {:.2}, read {:.2}, read from a caller thread {:.2}", args.rounds, median(&mut ratios.0), median(&mut ratios.1), median(&mut ratios.2));
            let [lw, lr, gw, gr, cr] = totals.map(|d| d.as_secs_f64());
            println!("  gRPC/local, all rounds' times summed: write {:.2}, read {:.2}, read from a caller thread {:.2}", lw / gw, lr / gr, lr / cr);
            let tcp = tokio::task::spawn_blocking(move || tcp_stream_time(size)).await??;
            println!("  plain TCP on loopback, {} MiB in 1 MiB writes, one thread to another: {:.2} GB/s", args.size_mib, gbps(size, tcp));
        } else {
            local_pass(&store, vol, ino, size)?;
        }
        if args.runs(Part::Random) {
            let (plain_iops, store_iops) = random_4k(&store, vol, &scratch.join("plain.bin"), size)?;
            println!("4 KiB random writes: volume store {store_iops:.0}/s, plain file {plain_iops:.0}/s (ratio {:.2})", store_iops / plain_iops);
        }
        drop(store);
        let _ = std::fs::remove_file(scratch.join("plain.bin"));
    }
    if args.runs(Part::Calls) {
        calls(scratch).await?;
    }
    if args.runs(Part::Snapshot) {
        snapshot_o1(scratch, args.large_mib)?;
    }
    if args.runs(Part::Space) {
        space(scratch, size)?;
    }
    if args.runs(Part::Fence) {
        fence_p99(scratch, &args.fence_load_mbps)?;
    }
    Ok(())
}

fn plain_file(path: &Path, size: u64) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    let mut f = std::fs::File::create(path)?;
    for i in 0..size / MIB {
        f.write_all(&block(i))?;
    }
    f.sync_data()?;
    let w = t.elapsed();
    let t = Instant::now();
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut sum = 0u64;
    for _ in 0..size / MIB {
        f.read_exact(&mut buf)?;
        sum = sum.wrapping_add(buf[7] as u64);
    }
    std::hint::black_box(sum);
    Ok((w, t.elapsed()))
}

/// One pass over the local store: `size` bytes in 1 MiB writes and a sync, then read back in
/// 1 MiB reads (each checked): the times of the two.
fn local_pass(store: &VolumeStore, vol: Uuid, ino: u64, size: u64) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    for i in 0..size / MIB {
        store.write(vol, View::Live, ino, i * MIB, &block(i), 2)?;
    }
    store.sync()?;
    let w = t.elapsed();
    let t = Instant::now();
    for i in 0..size / MIB {
        let data = store.read(vol, View::Live, ino, i * MIB, MIB)?;
        anyhow::ensure!(data.len() as u64 == MIB, "read {} bytes at MiB {i}", data.len());
        check_stamps(i * MIB, &data)?;
    }
    Ok((w, t.elapsed()))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Checks the stamp [`block`] put at each 64 KiB boundary within `data`, read at `pos`.
fn check_stamps(pos: u64, data: &[u8]) -> anyhow::Result<()> {
    const STAMPED: u64 = 64 * 1024;
    let mut at = pos.next_multiple_of(STAMPED);
    while at + 8 <= pos + data.len() as u64 {
        let i = (at - pos) as usize;
        anyhow::ensure!(data[i..i + 8] == stamp(at / MIB), "read back differs at byte {at}");
        at += STAMPED;
    }
    Ok(())
}

/// A one-node cluster in its own process, and a file on a volume it owns, reached the way
/// nodes reach each other: `umbra_node::volume_wire` for the data, tonic's generated client for
/// the rest.
struct GrpcFile {
    cluster: LocalCluster,
    channel: tonic::transport::Channel,
    client: VolumeClient<tonic::transport::Channel>,
    target: VolumeTarget,
    ino: u64,
}

impl GrpcFile {
    /// A fresh one-node cluster in `dir` (which must not hold one already).
    async fn start(dir: &Path) -> anyhow::Result<GrpcFile> {
        let mut cluster = LocalCluster::prepare(dir, 1, free_base_port()?, "")?;
        cluster.start()?;
        match Self::connect(&mut cluster).await {
            Ok((channel, client, target, ino)) => Ok(GrpcFile { cluster, channel, client, target, ino }),
            Err(e) => {
                cluster.stop().await;
                Err(e)
            }
        }
    }

    async fn connect(cluster: &mut LocalCluster) -> anyhow::Result<(tonic::transport::Channel, VolumeClient<tonic::transport::Channel>, VolumeTarget, u64)> {
        cluster.wait_ready().await?;
        let node = crate::client::Node::connect(cluster.first_addr()).await?;
        let (resp, _) = node.write(umbra_raft::command::Command::CreateVolume { id: Uuid::new_v4(), name: "bench".into(), owner: 1 }).await?;
        let umbra_raft::command::Applied::Volume(v) = resp.map_err(|e| anyhow::anyhow!("{e}"))? else { anyhow::bail!("unexpected reply") };
        let channel = umbra_raft::network::channel(cluster.first_addr())?;
        let mut client = VolumeClient::new(channel.clone());
        let target = VolumeTarget { volume: v.id.to_string(), snapshot: String::new(), clone: String::new(), route: false };
        let ino = loop {
            let req = CreateRequest { target: Some(target.clone()), parent: ROOT_INO, name: "seq.bin".into(), directory: false, now: 1 };
            match client.create(req).await {
                Ok(r) => break r.into_inner().entry.and_then(|e| e.attributes).map(|a| a.ino).unwrap_or_default(),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await, // the volume is being created
            }
        };
        Ok((channel, client, target, ino))
    }

    /// Stops the cluster, whatever `result` says, and passes it on.
    async fn stop_after<T>(mut self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        self.cluster.stop().await;
        result
    }

    /// Like [`local_pass`]: one Write call streams the file (each message made as it goes out),
    /// a Sync call, then one Read call streams it back; then the same Read from a caller thread,
    /// as an SMB gateway reads a file another node owns (its own runtime and HTTP/2 connection:
    /// `umbra_node::dedicated`), `repeats` times. Returns the write's time and both reads' (the mean of
    /// the repeats for the second).
    async fn pass(&mut self, size: u64, repeats: u32) -> anyhow::Result<(Duration, Duration, Duration)> {
        let t = Instant::now();
        let (target, ino) = (self.target.clone(), self.ino);
        let msgs = tokio_stream::iter((0..size / MIB).map(move |i| Ok(WriteChunk { target: Some(target.clone()), ino, offset: i * MIB, data: block(i).into(), now: 2, open: None, keep_times: 0 })));
        umbra_node::volume_wire::write(self.channel.clone(), msgs).await?;
        self.client.sync(self.target.clone()).await?;
        let w = t.elapsed();
        let req = ReadRequest { target: Some(self.target.clone()), ino, offset: 0, length: size, open: None };
        let t = Instant::now();
        read_all(self.channel.clone(), req.clone(), size).await?;
        let r = t.elapsed();
        let addr = self.cluster.first_addr().to_string();
        let t = Instant::now();
        tokio::task::spawn_blocking(move || {
            for _ in 0..repeats {
                umbra_node::dedicated::block_on(read_all(umbra_node::direct_channel::DirectChannel::new(&addr), req.clone(), size))??;
            }
            anyhow::Ok(())
        })
        .await??;
        Ok((w, r, t.elapsed() / repeats))
    }
}

/// Reads `size` bytes with one Read call on `channel`, checking each message's stamps.
async fn read_all(channel: impl Into<umbra_node::direct_channel::PeerChannel>, req: ReadRequest, size: u64) -> anyhow::Result<()> {
    use tokio_stream::StreamExt;
    let mut stream = umbra_node::volume_wire::read(channel, req).await?;
    let mut pos = 0;
    while let Some(c) = stream.next().await {
        // Checked as a gateway checks what it reads from another node.
        let data = c.and_then(umbra_node::volume_service::checked_data)?;
        check_stamps(pos, &data)?;
        pos += data.len() as u64;
    }
    anyhow::ensure!(pos == size, "read {pos} bytes of {size}");
    Ok(())
}

/// One small call after another: a stat of a file, in the store and through gRPC (one node
/// in another process, as a gateway reaches a volume's owner), p50 and p99 of each.
async fn calls(scratch: &Path) -> anyhow::Result<()> {
    const CALLS: u64 = 5_000;
    let store = VolumeStore::open(&scratch.join("calls-store"))?;
    let vol = Uuid::new_v4();
    store.create_volume(vol, 0)?;
    let ino = store.create(vol, View::Live, ROOT_INO, "f", Kind::File, 1)?;
    let mut local = Histogram::<u64>::new(3)?;
    for _ in 0..CALLS {
        let t = Instant::now();
        std::hint::black_box(store.stat(vol, View::Live, ino)?);
        local.record(t.elapsed().as_nanos() as u64)?;
    }
    drop(store);
    let mut grpc = GrpcFile::start(&scratch.join("calls-cluster")).await?;
    let mut remote = Histogram::<u64>::new(3)?;
    let measured = async {
        for _ in 0..CALLS {
            let t = Instant::now();
            grpc.client.stat(StatRequest { target: Some(grpc.target.clone()), ino: grpc.ino, security: false }).await?;
            remote.record(t.elapsed().as_nanos() as u64)?;
        }
        // The same calls as the SMB gateway makes them: from a blocking-pool thread, on the
        // thread's own runtime and connection (umbra_node::dedicated), as short calls
        // (umbra_node::short_calls).
        let (addr, target, ino) = (grpc.cluster.first_addr().to_string(), grpc.target.clone(), grpc.ino);
        let waited = tokio::task::spawn_blocking(move || {
            let mut client = VolumeClient::new(umbra_node::direct_channel::DirectChannel::new(&addr));
            let mut h = Histogram::<u64>::new(3)?;
            for _ in 0..CALLS {
                let t = Instant::now();
                umbra_node::dedicated::block_on(client.stat(StatRequest { target: Some(target.clone()), ino, security: false }))??;
                h.record(t.elapsed().as_nanos() as u64)?;
            }
            anyhow::Ok(h)
        });
        waited.await?
    }
    .await;
    let from_caller = grpc.stop_after(measured).await?;
    let tcp = tokio::task::spawn_blocking(|| tcp_round_trips(CALLS)).await??;
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!("small calls, {CALLS} stats of a file one after another");
    println!("  volume store                         p50 {:.1} us  p99 {:.1} us", us(&local, 0.5), us(&local, 0.99));
    println!("  gRPC (HTTP/2), async caller          p50 {:.1} us  p99 {:.1} us", us(&remote, 0.5), us(&remote, 0.99));
    println!("  short call from a caller thread      p50 {:.1} us  p99 {:.1} us", us(&from_caller, 0.5), us(&from_caller, 0.99));
    println!("  plain TCP round trip                 p50 {:.1} us  p99 {:.1} us  ({TCP_MESSAGE_BYTES} bytes each way, one thread to another)", us(&tcp, 0.5), us(&tcp, 0.99));
    Ok(())
}

/// A small call's size on the wire, roughly: for the plain TCP round trips.
const TCP_MESSAGE_BYTES: usize = 200;

/// Two connected sockets on loopback (std, blocking, no Nagle).
fn tcp_pair() -> anyhow::Result<(std::net::TcpStream, std::net::TcpStream)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let a = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (b, _) = listener.accept()?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    Ok((a, b))
}

/// `n` round trips of [`TCP_MESSAGE_BYTES`] each way between two threads: the transport's own
/// cost of a call, with no HTTP/2, gRPC or runtime on top.
fn tcp_round_trips(n: u64) -> anyhow::Result<Histogram<u64>> {
    let (mut client, mut server) = tcp_pair()?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; TCP_MESSAGE_BYTES];
        while server.read_exact(&mut buf).is_ok() && server.write_all(&buf).is_ok() {}
    });
    let mut h = Histogram::<u64>::new(3)?;
    let mut buf = [7u8; TCP_MESSAGE_BYTES];
    for _ in 0..n {
        let t = Instant::now();
        client.write_all(&buf)?;
        client.read_exact(&mut buf)?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    drop(client);
    echo.join().map_err(|_| anyhow::anyhow!("the echo thread panicked"))?;
    Ok(h)
}

/// The time to send `size` bytes in 1 MiB writes from one thread to another over loopback TCP,
/// the receiver reading into one 1 MiB buffer: what any stream between two processes here
/// costs before a byte of it is produced or used.
fn tcp_stream_time(size: u64) -> anyhow::Result<Duration> {
    let (mut sender, mut receiver) = tcp_pair()?;
    let send = std::thread::spawn(move || -> std::io::Result<()> {
        let block = block(0);
        for _ in 0..size / MIB {
            sender.write_all(&block)?;
        }
        Ok(())
    });
    let mut buf = vec![0u8; MIB as usize];
    let (t, mut got) = (Instant::now(), 0u64);
    while got < size / MIB * MIB {
        match receiver.read(&mut buf)? {
            0 => anyhow::bail!("the sender stopped after {got} bytes"),
            n => got += n as u64,
        }
    }
    let took = t.elapsed();
    send.join().map_err(|_| anyhow::anyhow!("the sending thread panicked"))??;
    Ok(took)
}

fn random_4k(store: &VolumeStore, vol: Uuid, plain: &Path, size: u64) -> anyhow::Result<(f64, f64)> {
    const WRITES: u64 = 20_000;
    let offsets: Vec<u64> = (0..WRITES).map(|i| (i.wrapping_mul(2_654_435_761) % (size / 4096)) * 4096).collect();
    let page = vec![0x5Au8; 4096];
    let mut f = std::fs::OpenOptions::new().write(true).open(plain)?;
    let t = Instant::now();
    for &o in &offsets {
        f.seek(SeekFrom::Start(o))?;
        f.write_all(&page)?;
    }
    f.sync_data()?;
    let plain_rate = WRITES as f64 / t.elapsed().as_secs_f64();
    let ino = store.resolve(vol, View::Live, "seq.bin")?.ino;
    let t = Instant::now();
    for &o in &offsets {
        store.write(vol, View::Live, ino, o, &page, 3)?;
    }
    store.sync()?;
    Ok((plain_rate, WRITES as f64 / t.elapsed().as_secs_f64()))
}

fn snapshot_o1(scratch: &Path, large_mib: u64) -> anyhow::Result<()> {
    println!("snapshot creation (median of 20; bytes the directory grew per snapshot)");
    for mib in [4, large_mib] {
        let path = scratch.join(format!("snap-{mib}"));
        let store = VolumeStore::open(&path)?;
        let vol = Uuid::new_v4();
        store.create_volume(vol, 0)?;
        let ino = store.create(vol, View::Live, ROOT_INO, "data", Kind::File, 1)?;
        for i in 0..mib {
            store.write(vol, View::Live, ino, i * MIB, &block(i), 2)?;
        }
        store.flush()?;
        let mut times = Vec::new();
        let before = dir_bytes(&path);
        for _ in 0..20 {
            let t = Instant::now();
            store.snapshot_create(vol, Uuid::new_v4(), 3)?;
            times.push(t.elapsed());
        }
        let grew = dir_bytes(&path).saturating_sub(before) / 20;
        times.sort();
        println!("  volume of {mib:>5} MiB: {:>8.3} ms per snapshot, {grew} bytes per snapshot", times[10].as_secs_f64() * 1e3);
        drop(store);
        std::fs::remove_dir_all(&path).context("removing the snapshot bench data")?;
    }
    Ok(())
}

fn space(scratch: &Path, size: u64) -> anyhow::Result<()> {
    let path = scratch.join("space");
    let store = VolumeStore::open(&path)?;
    let vol = Uuid::new_v4();
    store.create_volume(vol, 0)?;
    let ino = store.create(vol, View::Live, ROOT_INO, "data", Kind::File, 1)?;
    for i in 0..size / MIB {
        store.write(vol, View::Live, ino, i * MIB, &block(i), 2)?;
    }
    store.flush()?;
    let base = store.disk_bytes()?;
    let snap = Uuid::new_v4();
    store.snapshot_create(vol, snap, 3)?;
    let tenth = size / MIB / 10;
    for i in 0..tenth {
        let at = (i * 10 + 3) % (size / MIB);
        store.write(vol, View::Live, ino, at * MIB, &block(at + 7), 4)?;
    }
    store.flush()?;
    let after = store.disk_bytes()?;
    store.snapshot_delete(vol, snap)?;
    store.reclaim_all(vol)?;
    store.flush()?;
    store.compact()?;
    let reclaimed = store.disk_bytes()?;
    println!(
        "space: {} MiB written = {} MiB on disk; snapshot + 10% overwritten: +{:.1}% ({} MiB); snapshot deleted, reclaimed, compacted: {} MiB ({:+.1}% of the base)",
        size / MIB,
        base / MIB,
        (after as f64 - base as f64) / base as f64 * 100.0,
        (after - base) / MIB,
        reclaimed / MIB,
        (reclaimed as f64 - base as f64) / base as f64 * 100.0
    );
    Ok(())
}

fn fence_p99(scratch: &Path, loads_mbps: &[u64]) -> anyhow::Result<()> {
    for &mbps in loads_mbps {
        fence_under_load(scratch, mbps)?;
    }
    Ok(())
}

/// Fences under 4 writers of 64 KiB: flat out (`mbps` 0: the disk, not the writers, sets the
/// pace, and writes queue in the kernel's writeback), or paced to `mbps` MB/s in all.
fn fence_under_load(scratch: &Path, mbps: u64) -> anyhow::Result<()> {
    const WRITERS: u64 = 4;
    const WRITE_BYTES: u64 = 64 * 1024;
    let store = Arc::new(VolumeStore::open(&scratch.join(format!("fence-{mbps}")))?);
    let vol = Uuid::new_v4();
    store.create_volume(vol, 0)?;
    let stop = Arc::new(AtomicBool::new(false));
    // Each writer's time per write at the asked rate.
    let pace = (mbps > 0).then(|| Duration::from_secs_f64(WRITE_BYTES as f64 * WRITERS as f64 / (mbps as f64 * 1e6)));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (store, stop) = (store.clone(), stop.clone());
        let ino = store.create(vol, View::Live, ROOT_INO, &format!("w{w}"), Kind::File, 1)?;
        writers.push(std::thread::spawn(move || -> anyhow::Result<u64> {
            let data = vec![w as u8 + 1; WRITE_BYTES as usize];
            let start = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                store.write(vol, View::Live, ino, (n % 1024) * WRITE_BYTES, &data, 2)?;
                n += 1;
                if let Some(pace) = pace {
                    std::thread::sleep((start + pace * n as u32).saturating_duration_since(Instant::now()));
                }
            }
            Ok(n)
        }));
    }
    let load = if mbps == 0 { "flat out".to_string() } else { format!("paced to {mbps} MB/s in all") };
    let started = Instant::now();
    let mut syncs = Histogram::<u64>::new(3)?;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(5));
        let t = Instant::now();
        store.sync()?;
        syncs.record(t.elapsed().as_micros() as u64)?;
    }
    println!("under 4 writers of 64 KiB, {load}:");
    println!("  sync (WAL fsync): p50 {:.2} ms, p99 {:.2} ms", ms(syncs.value_at_quantile(0.5)), ms(syncs.value_at_quantile(0.99)));
    // Writes held: from the raise to the release (the gate's own measure); and the whole
    // fence + durable release, which the coordinator waits for before deciding.
    let mut hist = Histogram::<u64>::new(3)?;
    let mut durable = Histogram::<u64>::new(3)?;
    for token in 1..=200u64 {
        std::thread::sleep(Duration::from_millis(5));
        let t = Instant::now();
        let snap = Uuid::new_v4();
        store.fence(vol, token, Duration::from_secs(5), snap, 3)?;
        let (_, held) = store.release(vol, token)?;
        durable.record(t.elapsed().as_micros() as u64)?;
        hist.record(held.as_micros() as u64)?;
        store.snapshot_delete(vol, snap)?;
        store.reclaim_all(vol)?;
    }
    stop.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for w in writers {
        writes += w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    let rate = (writes * WRITE_BYTES) as f64 / started.elapsed().as_secs_f64() / 1e6;
    println!(
        "  fence (writes held; 200 fences, each with its tentative snapshot): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({writes} writes, {rate:.0} MB/s)",
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.max())
    );
    println!("  fence + durable release (snapshot synced): p50 {:.2} ms, p99 {:.2} ms", ms(durable.value_at_quantile(0.5)), ms(durable.value_at_quantile(0.99)));
    Ok(())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}
