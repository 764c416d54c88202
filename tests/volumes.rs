//! Volumes end to end: real nodes, real RocksDB, the volume gRPC service; kill -9 mid-load.

mod common;

use std::time::Duration;

use common::*;
use umbra_proto::v1::volume_client::VolumeClient;
use umbra_proto::v1::*;

/// A gRPC client for one node's volume service, on a runtime of its own.
struct Vol {
    rt: tokio::runtime::Runtime,
    client: VolumeClient<tonic::transport::Channel>,
    target: VolumeTarget,
}

impl Vol {
    fn connect(addr: &str, volume: &str) -> Vol {
        let rt = tokio::runtime::Runtime::new().unwrap();
        // Lazily connected: a node that is still starting fails calls, which callers retry.
        let client = rt.block_on(async {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
            VolumeClient::new(ch).max_decoding_message_size(32 << 20).max_encoding_message_size(32 << 20)
        });
        Vol { rt, client, target: VolumeTarget { volume: volume.into(), snapshot: String::new(), clone: String::new(), route: true } }
    }

    fn at_snapshot(&self, id: &str) -> VolumeTarget {
        VolumeTarget { snapshot: id.into(), ..self.target.clone() }
    }

    fn create(&self, name: &str) -> Result<u64, tonic::Status> {
        let req = CreateRequest { target: Some(self.target.clone()), parent: 1, name: name.into(), directory: false, now: 1 };
        let reply = self.rt.block_on(self.client.clone().create(req))?;
        Ok(reply.into_inner().entry.unwrap().attributes.unwrap().ino)
    }

    fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<u64, tonic::Status> {
        let msg = WriteChunk { target: Some(self.target.clone()), ino, offset, data: bytes::Bytes::copy_from_slice(data), now: 2, open: None, keep_times: 0 };
        Ok(self.rt.block_on(self.client.clone().write(tokio_stream::iter(vec![msg])))?.into_inner().written)
    }

    fn read_at(&self, target: VolumeTarget, ino: u64, len: u64) -> Result<Vec<u8>, tonic::Status> {
        self.rt.block_on(async {
            let mut s = self.client.clone().read(ReadRequest { target: Some(target), ino, offset: 0, length: len, open: None }).await?.into_inner();
            let mut out = Vec::new();
            while let Some(c) = s.message().await? {
                out.extend_from_slice(&umbra_node::volume_service::checked_data(c)?);
            }
            Ok(out)
        })
    }

    fn read(&self, ino: u64, len: u64) -> Result<Vec<u8>, tonic::Status> {
        self.read_at(self.target.clone(), ino, len)
    }

    fn snapshot(&self, id: &str) -> Result<(), tonic::Status> {
        self.rt.block_on(self.client.clone().snapshot_create(SnapshotRequest { target: Some(self.target.clone()), id: id.into(), now: 3 }))?;
        Ok(())
    }

    fn delete_snapshot(&self, id: &str) {
        self.rt.block_on(self.client.clone().snapshot_delete(SnapshotRequest { target: Some(self.target.clone()), id: id.into(), now: 4 })).unwrap();
    }
}

/// The uuid of volume `name`.
fn volume_id(c: &Cluster, via: u64, name: &str) -> String {
    let v = c.ctl(via, &["volume", "list"]).json();
    v.as_array().unwrap().iter().find(|v| v["name"] == name).unwrap()["id"].as_str().unwrap().to_string()
}

fn pattern(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

#[test]
fn a_client_on_one_node_reads_and_writes_a_file_on_a_volume_another_node_owns() {
    let c = Cluster::start(3, "");
    assert!(c.ctl(1, &["volume", "create", "remote", "--node", "2"]).ok);
    let vol = volume_id(&c, 1, "remote");
    let on_1 = Vol::connect(c.addr(1), &vol);
    let ino = wait_for(Duration::from_secs(10), "node 2 to create the volume", || on_1.create("disk.bin").ok());
    let data = pattern(7, 3 << 20);
    assert_eq!(on_1.write(ino, 0, &data).unwrap(), data.len() as u64);
    let on_3 = Vol::connect(c.addr(3), &vol);
    assert_eq!(on_3.read(ino, data.len() as u64).unwrap(), data, "read through node 3 what node 1 wrote to node 2's volume");
    // The owner's errors come back through the forwarding node whole: code, message, metadata.
    for e in [on_3.read(ino + 1000, 10).unwrap_err(), on_1.write(ino + 1000, 0, b"x").unwrap_err()] {
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        assert_eq!(e.metadata().get("umbra-error").unwrap(), "not_found", "{e:?}");
    }

    // A forwarded write whose incoming stream is cut (here by a message over the limit) fails;
    // the owner never takes what came before it as the whole write.
    let over = 17 << 20;
    let msgs = vec![
        WriteChunk { target: Some(on_3.target.clone()), ino, offset: 0, data: bytes::Bytes::from(vec![1u8; 1 << 20]), now: 2, open: None, keep_times: 0 },
        WriteChunk { target: Some(on_3.target.clone()), ino, offset: 1 << 20, data: bytes::Bytes::from(vec![2u8; over]), now: 2, open: None, keep_times: 0 },
    ];
    let e = on_3.rt.block_on(on_3.client.clone().write(tokio_stream::iter(msgs))).unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");

    // Without routing, a node that does not own the volume says who does.
    let mut direct = Vol::connect(c.addr(1), &vol);
    direct.target.route = false;
    let e = direct.read(ino, 10).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(e.metadata().get("umbra-error").unwrap(), "wrong_owner");
    assert_eq!(e.metadata().get("umbra-owner").unwrap(), "2");

    // ctl does the same from the command line.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in");
    std::fs::write(&src, &data[..100_000]).unwrap();
    assert!(c.ctl(3, &["file", "put", "remote", "copy.bin", "--from", src.to_str().unwrap()]).ok);
    let dst = dir.path().join("out");
    assert!(c.ctl(1, &["file", "get", "remote", "copy.bin", "--to", dst.to_str().unwrap()]).ok);
    assert_eq!(std::fs::read(&dst).unwrap(), &data[..100_000]);
    let missing = c.ctl(1, &["file", "get", "remote", "nope.bin", "--to", dst.to_str().unwrap()]);
    assert!(!missing.ok && missing.stderr.contains("not found"), "{}", missing.stderr);
}

#[test]
fn kill9_during_a_write_load_loses_no_acknowledged_write_and_no_snapshot_changes() {
    let mut c = Cluster::start(1, "");
    assert!(c.ctl(1, &["volume", "create", "v", "--node", "1"]).ok);
    let vol = volume_id(&c, 1, "v");
    let client = Vol::connect(c.addr(1), &vol);
    let ino = wait_for(Duration::from_secs(10), "the volume", || client.create("log.bin").ok());

    // A writer thread appends 16 KiB records; every acknowledged one is counted.
    let addr = c.addr(1).to_string();
    let vol2 = vol.clone();
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let a = acked.clone();
    let writer = std::thread::spawn(move || {
        let w = Vol::connect(&addr, &vol2);
        for i in 0.. {
            if w.write(ino, i * 16384, &pattern(i, 16384)).is_err() {
                break;
            }
            a.store(i + 1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // Snapshots while the load runs; each one's content is read back before the crash.
    let mut snaps = Vec::new();
    for k in 0..3 {
        std::thread::sleep(Duration::from_millis(150));
        let id = uuid::Uuid::new_v4().to_string();
        client.snapshot(&id).unwrap();
        let content = client.read_at(client.at_snapshot(&id), ino, 1 << 40).unwrap();
        assert!(!content.is_empty() || k == 0);
        snaps.push((id, content));
    }
    std::thread::sleep(Duration::from_millis(100));
    c.kill9(1);
    writer.join().unwrap();
    let acked = acked.load(std::sync::atomic::Ordering::SeqCst);
    assert!(acked > 10, "the load ran ({acked} writes)");

    c.start_node(1);
    let client = Vol::connect(c.addr(1), &vol);
    let data = wait_for(Duration::from_secs(20), "the node to serve again", || client.read(ino, 1 << 40).ok());
    assert!(data.len() as u64 >= acked * 16384, "{} bytes back, {acked} records acknowledged", data.len());
    for i in 0..acked {
        assert_eq!(&data[(i * 16384) as usize..((i + 1) * 16384) as usize], pattern(i, 16384).as_slice(), "record {i}");
    }
    for (id, before) in &snaps {
        assert_eq!(&client.read_at(client.at_snapshot(id), ino, 1 << 40).unwrap(), before, "snapshot {id} reads as before");
    }
}

#[test]
fn kill9_during_snapshot_reclaim_keeps_every_other_snapshot_and_finishes_after_restart() {
    // Small reclaim steps, one per round, so reclaiming 32 MiB of versions spans many steps
    // and the kill lands in the middle.
    let mut c = Cluster::start(1, "[volumes]\nreclaim_step_entries = 32\nreclaim_slice_ms = 0\n");
    assert!(c.ctl(1, &["volume", "create", "v", "--node", "1"]).ok);
    let vol = volume_id(&c, 1, "v");
    let client = Vol::connect(c.addr(1), &vol);
    let ino = wait_for(Duration::from_secs(10), "the volume", || client.create("big.bin").ok());
    // Three generations of 32 MiB, a snapshot after each: the middle one's deletion frees a lot.
    let size = 32u64 << 20;
    let mut ids = Vec::new();
    for g in 0..3u64 {
        for off in (0..size).step_by(4 << 20) {
            client.write(ino, off, &pattern(g * 1000 + off / (4 << 20), 4 << 20)).unwrap();
        }
        let id = uuid::Uuid::new_v4().to_string();
        client.snapshot(&id).unwrap();
        ids.push(id);
    }
    let keep: Vec<(String, Vec<u8>)> = [&ids[0], &ids[2]].iter().map(|id| (id.to_string(), client.read_at(client.at_snapshot(id), ino, size).unwrap())).collect();
    let live = client.read(ino, size).unwrap();
    client.delete_snapshot(&ids[1]);
    std::thread::sleep(Duration::from_millis(700));
    let state = client.rt.block_on(client.client.clone().snapshot_list(client.target.clone())).unwrap().into_inner().snapshots;
    let deleting = state.iter().find(|s| s.id == ids[1]).map(|s| s.state.clone());
    assert_eq!(deleting.as_deref(), Some("deleting"), "reclaim is under way when the node dies");
    c.kill9(1);
    c.start_node(1);
    let client = Vol::connect(c.addr(1), &vol);
    wait_for(Duration::from_secs(30), "reclaim to finish after the restart", || {
        let snaps = client.rt.block_on(client.client.clone().snapshot_list(client.target.clone())).ok()?.into_inner().snapshots;
        (!snaps.iter().any(|s| s.id == ids[1])).then_some(())
    });
    assert_eq!(client.read(ino, size).unwrap(), live);
    for (id, before) in &keep {
        assert_eq!(&client.read_at(client.at_snapshot(id), ino, size).unwrap(), before, "snapshot {id}");
    }
}

#[test]
fn a_writable_clone_over_grpc_is_isolated_and_refuses_writes_once_sealed() {
    let c = Cluster::start(2, "");
    assert!(c.ctl(1, &["volume", "create", "v", "--node", "2"]).ok);
    let vol = volume_id(&c, 1, "v");
    let client = Vol::connect(c.addr(1), &vol);
    let ino = wait_for(Duration::from_secs(10), "the volume", || client.create("vm.vhdx").ok());
    client.write(ino, 0, b"base").unwrap();
    let snap = uuid::Uuid::new_v4().to_string();
    client.snapshot(&snap).unwrap();
    let clone = uuid::Uuid::new_v4().to_string();
    let req = CloneRequest { target: Some(client.at_snapshot(&snap)), id: clone.clone() };
    client.rt.block_on(client.client.clone().clone_create(req)).unwrap();
    let in_clone = VolumeTarget { clone: clone.clone(), ..client.target.clone() };
    let w = WriteChunk { target: Some(in_clone.clone()), ino, offset: 0, data: bytes::Bytes::from_static(b"CLON"), now: 5, open: None, keep_times: 0 };
    client.rt.block_on(client.client.clone().write(tokio_stream::iter(vec![w.clone()]))).unwrap();
    client.write(ino, 0, b"live").unwrap();
    assert_eq!(client.read_at(in_clone.clone(), ino, 4).unwrap(), b"CLON");
    assert_eq!(client.read(ino, 4).unwrap(), b"live");
    assert_eq!(client.read_at(client.at_snapshot(&snap), ino, 4).unwrap(), b"base");
    let req = CloneRequest { target: Some(client.target.clone()), id: clone.clone() };
    assert!(client.rt.block_on(client.client.clone().clone_seal(req)).unwrap().into_inner().sealed);
    let e = client.rt.block_on(client.client.clone().write(tokio_stream::iter(vec![w]))).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(e.metadata().get("umbra-error").unwrap(), "read_only");
    assert_eq!(client.read_at(in_clone, ino, 4).unwrap(), b"CLON", "a sealed clone still reads");
}

/// Volume "own" on node 1 of `c`, with file "f.bin" made in it: its target, a caller thread's
/// own channel to node 1 and a client on it, and the file's inode.
fn own_volume_with_a_file(c: &Cluster) -> (VolumeTarget, umbra_node::direct_channel::DirectChannel, VolumeClient<umbra_node::direct_channel::DirectChannel>, u64) {
    use umbra_node::dedicated::block_on;
    assert!(c.ctl(1, &["volume", "create", "own", "--node", "1"]).ok);
    let target = VolumeTarget { volume: volume_id(&c, 1, "own"), snapshot: String::new(), clone: String::new(), route: false };
    let channel = umbra_node::direct_channel::DirectChannel::new(c.addr(1));
    let client = VolumeClient::new(channel.clone());
    let create = CreateRequest { target: Some(target.clone()), parent: 1, name: "f.bin".into(), directory: false, now: 1 };
    let ino = wait_for(Duration::from_secs(10), "the volume to exist", || block_on(client.clone().create(create.clone())).unwrap().ok());
    let ino = ino.into_inner().entry.unwrap().attributes.unwrap().ino;
    (target, channel, client, ino)
}

/// One Read call through a caller thread's own channel, each message checked as a gateway
/// checks what it reads from another node.
fn read_through(channel: &umbra_node::direct_channel::DirectChannel, read: ReadRequest) -> Result<Vec<u8>, tonic::Status> {
    umbra_node::dedicated::block_on(async {
        use tokio_stream::StreamExt;
        let mut m = umbra_node::volume_wire::read(channel.clone(), read).await?;
        let mut out = Vec::new();
        while let Some(chunk) = m.next().await {
            out.extend_from_slice(&chunk.and_then(umbra_node::volume_service::checked_data)?);
        }
        Ok(out)
    })
    .unwrap()
}

/// The SMB gateway's way to a volume's owner, here from a test thread: calls made on the
/// thread's own runtime (`umbra_node::dedicated`) over its own HTTP/2 connection
/// (`umbra_node::direct_channel`), or for quick calls one of its short-call connections
/// (`umbra_node::short_calls`). Unary and streamed calls, the owner's errors with their
/// metadata, an answer that cuts a streamed request short, and a new connection after the
/// node restarts, on the first call.
#[test]
fn a_caller_threads_own_channel_carries_every_kind_of_call_and_reconnects_after_a_restart() {
    use umbra_node::dedicated::block_on;
    use umbra_node::volume_wire;

    let mut c = Cluster::start(1, "");
    let (target, channel, client, ino) = own_volume_with_a_file(&c);

    // A write of three 2 MiB messages (the later ones wait for send capacity), read back.
    const PART: usize = 2 << 20;
    let msgs: Vec<_> = (0..3u64).map(|i| Ok(WriteChunk { target: Some(target.clone()), ino, offset: i * PART as u64, data: pattern(i, PART).into(), now: 2, open: None, keep_times: 0 })).collect();
    let written = block_on(volume_wire::write(channel.clone(), tokio_stream::iter(msgs))).unwrap().unwrap();
    assert_eq!(written.written, 3 * PART as u64);
    let read = ReadRequest { target: Some(target.clone()), ino, offset: 0, length: 3 * PART as u64, open: None };
    let back = read_through(&channel, read.clone()).unwrap();
    let expected: Vec<u8> = (0..3).flat_map(|i| pattern(i, PART)).collect();
    assert!(back == expected, "read back {} bytes, not what was written", back.len());
    // The same read as a short call, its data landing after what the buffer held.
    let mut short = vec![5u8; 7];
    block_on(channel.read_into(read, &mut short)).unwrap().unwrap();
    assert!(short[..7] == [5u8; 7] && short[7..] == expected[..], "a short read gives the same bytes");

    // A small write goes as a short call (umbra_node::short_calls), as do stats: the call leaves
    // its connection idle for the next.
    assert_eq!(channel.idle_short_connections(), 1, "the short read above");
    let small = WriteChunk { target: Some(target.clone()), ino, offset: 5, data: vec![7u8; 1000].into(), now: 3, open: None, keep_times: 0 };
    assert_eq!(block_on(volume_wire::write_small(channel.clone(), small)).unwrap().unwrap().written, 1000);
    assert_eq!(channel.idle_short_connections(), 1, "the write reused it");
    let back = read_through(&channel, ReadRequest { target: Some(target.clone()), ino, offset: 0, length: 1010, open: None }).unwrap();
    assert!(back[..5] == expected[..5] && back[5..1005].iter().all(|&b| b == 7) && back[1005..] == expected[1005..1010]);

    // The owner's error, whole (a stat: a short call).
    let e = block_on(client.clone().stat(StatRequest { target: Some(target.clone()), ino: ino + 1000, security: false })).unwrap().unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert_eq!(e.metadata().get("umbra-error").unwrap(), "not_found", "{e:?}");
    // A message over the limit: the node answers while the request is still being sent.
    let over = vec![Ok(WriteChunk { target: Some(target.clone()), ino, offset: 0, data: vec![9u8; 17 << 20].into(), now: 3, open: None, keep_times: 0 })];
    let e = block_on(volume_wire::write(channel.clone(), tokio_stream::iter(over))).unwrap().unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");

    // The node restarts: the first call after finds the old connection closed and makes another.
    c.stop(1);
    c.start_node(1);
    c.wait_up(1);
    let stat = StatRequest { target: Some(target.clone()), ino, security: false };
    let after = wait_for(Duration::from_secs(10), "the volume to be served again", || match block_on(client.clone().stat(stat.clone())).unwrap() {
        Err(e) if e.code() == tonic::Code::NotFound => None,
        other => Some(other),
    });
    assert_eq!(after.unwrap().into_inner().entry.unwrap().attributes.unwrap().size, 3 * PART as u64);
}

/// A byte of a file changed on its owner's disk: the owner sends the chunk as it is, and the
/// node that asked refuses it with the store's checksum error; the bytes before it still read.
#[test]
fn data_changed_on_the_owners_disk_fails_the_read_on_the_node_that_asked() {
    use umbra_node::dedicated::block_on;
    use umbra_node::volume_wire;

    let c = Cluster::start(1, "");
    let (target, channel, _, ino) = own_volume_with_a_file(&c);
    // 4 MiB of bytes that do not repeat.
    let mut x = 7u64;
    let data: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as u8
        })
        .collect();
    let msg = WriteChunk { target: Some(target.clone()), ino, offset: 0, data: data.clone().into(), now: 2, open: None, keep_times: 0 };
    block_on(volume_wire::write(channel.clone(), tokio_stream::iter(vec![Ok(msg)]))).unwrap().unwrap();
    let read = ReadRequest { target: Some(target.clone()), ino, offset: 0, length: data.len() as u64, open: None };
    let read_all = |read: ReadRequest| read_through(&channel, read);
    assert!(read_all(read.clone()).unwrap() == data, "read back as written");

    // One byte 3 MiB in changes in the node's data log (a disk giving a page back wrong).
    let at = 3 << 20;
    let changed = files_under(&c.data_dir(1)).into_iter().filter(|p| p.extension().is_some_and(|e| e == "log")).any(|path| {
        let Ok(bytes) = std::fs::read(&path) else { return false };
        let Some(pos) = bytes.windows(64).position(|w| w == &data[at..at + 64]) else { return false };
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_at(&[!bytes[pos + 5]], (pos + 5) as u64).unwrap();
        true
    });
    assert!(changed, "the data lies in a data log segment under the node's directory");
    // The owner sends the chunk as it is; the reader refuses it, with the store's kind of error.
    let e = read_all(read.clone()).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    assert!(e.message().contains("fails its checksum"), "{e:?}");
    assert_eq!(e.metadata().get("umbra-error").unwrap(), "storage", "{e:?}");
    // As a short call (how a gateway reads another node's file): the same error.
    let e = block_on(channel.read_into(read.clone(), &mut Vec::new())).unwrap().unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    assert!(e.message().contains("fails its checksum"), "{e:?}");
    assert_eq!(e.metadata().get("umbra-error").unwrap(), "storage", "{e:?}");
    // What lies before it still reads.
    let head = read_all(ReadRequest { length: at as u64 - (64 << 10), ..read }).unwrap();
    assert!(head.len() == at - (64 << 10) && head[..] == data[..head.len()]);
}

/// A node's gRPC server bounds the calls one connection may have under way (HTTP/2
/// SETTINGS_MAX_CONCURRENT_STREAMS): a peer learns the bound when it connects.
#[test]
fn a_nodes_grpc_server_bounds_the_calls_one_connection_has_under_way() {
    let c = Cluster::start(1, "");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let advertised = rt.block_on(async {
        let io = tokio::net::TcpStream::connect(c.addr(1)).await.unwrap();
        let (sender, mut connection) = h2::client::handshake(io).await.unwrap();
        let mut pings = connection.ping_pong().unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        // The server's SETTINGS come before its answer to a ping.
        pings.ping(h2::Ping::opaque()).await.unwrap();
        sender.current_max_send_streams()
    });
    assert_eq!(advertised, umbra_node::grpc_server::MAX_STREAMS_PER_CONNECTION as usize);
}

/// A create that carries its open makes the file, then registers the open; when the owner
/// refuses the open (here: a stale gateway incarnation), the call fails and the file it made
/// is gone again.
#[test]
fn a_create_whose_open_is_refused_leaves_no_file_behind() {
    let c = Cluster::start(1, "");
    assert!(c.ctl(1, &["volume", "create", "own", "--node", "1"]).ok);
    let v = Vol::connect(c.addr(1), &volume_id(&c, 1, "own"));
    let held = wait_for(Duration::from_secs(10), "the volume to exist", || v.create("held.bin").ok());
    let target = Some(v.target.clone());
    // Incarnation 200 of node 9's gateway holds an open: 100 is stale from now on.
    let newer = OpenRegisterRequest { target: target.clone(), gateway: Some(GatewayIncarnation { node: 9, incarnation: 200 }), ino: held, id: 1, access: 1, share_access: 7, lease_ms: 15_000, delete_at_close: None };
    v.rt.block_on(v.client.clone().open_register(newer)).unwrap();
    let stale = OpenOnCreate { gateway: Some(GatewayIncarnation { node: 9, incarnation: 100 }), id: 2, access: 1, share_access: 7, lease_ms: 15_000, delete_at_close: false };
    let create = ResolveRequest { target: target.clone(), path: "/new.bin".into(), with_parent: true, create: Some(CreateIfMissing { directory: false, now: 5, open: Some(stale) }) };
    let e = v.rt.block_on(v.client.clone().resolve(create)).unwrap_err();
    assert_eq!(e.metadata().get("umbra-error").unwrap(), "stale_incarnation", "{e:?}");
    let look = ResolveRequest { target, path: "/new.bin".into(), with_parent: true, create: None };
    let found = v.rt.block_on(v.client.clone().resolve(look)).unwrap().into_inner();
    assert!(found.entry.is_none(), "the file the refused call made is gone: {:?}", found.entry);
}
