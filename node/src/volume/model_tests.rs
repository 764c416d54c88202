//! Model-based property tests: random sequences of file operations, snapshots, snapshot
//! deletes (with reclaim) and clones against plain in-memory trees; after every step, the
//! live volume, every live snapshot and every clone must read exactly like the model.

use std::collections::BTreeMap;

use proptest::prelude::*;
use uuid::Uuid;

use super::*;

/// A tree as the model keeps it: folded path -> (name as created, kind, content).
type Tree = BTreeMap<String, (String, Kind, Vec<u8>)>;

const NAMES: [&str; 4] = ["a", "A", "b", "B"];
const DIR: &str = "d";

#[derive(Clone, Debug)]
enum Op {
    Create { in_dir: bool, name: usize, view: usize },
    Mkdir { view: usize },
    Write { file: usize, offset: u64, len: usize, byte: u8, view: usize },
    SetSize { file: usize, size: u64, view: usize },
    Zero { file: usize, offset: u64, len: u64, view: usize },
    Unlink { file: usize, view: usize },
    RemoveDir { view: usize },
    Rename { from: usize, to: usize, to_dir: bool, replace: bool, view: usize },
    Snapshot,
    DeleteSnapshot { which: usize },
    Clone { which: usize },
    Seal { which: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let view = 0usize..3;
    let file = 0usize..8;
    prop_oneof![
        4 => (any::<bool>(), 0usize..4, view.clone()).prop_map(|(in_dir, name, view)| Op::Create { in_dir, name, view }),
        1 => view.clone().prop_map(|view| Op::Mkdir { view }),
        // Any range, and whole chunks (which skip reading the chunk they replace).
        6 => (file.clone(), prop_oneof![0u64..(3 * CHUNK_BYTES), (0u64..3).prop_map(|i| i * CHUNK_BYTES)], prop_oneof![0usize..(CHUNK_BYTES as usize + 300), Just(CHUNK_BYTES as usize)], any::<u8>(), view.clone())
            .prop_map(|(file, offset, len, byte, view)| Op::Write { file, offset, len, byte, view }),
        3 => (file.clone(), prop_oneof![Just(0u64), 0u64..(3 * CHUNK_BYTES)], view.clone()).prop_map(|(file, size, view)| Op::SetSize { file, size, view }),
        // Ranges inside one chunk, across chunks, and past the end.
        2 => (file.clone(), 0u64..(3 * CHUNK_BYTES), prop_oneof![0u64..300, 0u64..(3 * CHUNK_BYTES), Just(u64::MAX)], view.clone())
            .prop_map(|(file, offset, len, view)| Op::Zero { file, offset, len, view }),
        2 => (file.clone(), view.clone()).prop_map(|(file, view)| Op::Unlink { file, view }),
        1 => view.clone().prop_map(|view| Op::RemoveDir { view }),
        2 => (file.clone(), 0usize..4, any::<bool>(), any::<bool>(), view).prop_map(|(from, to, to_dir, replace, view)| Op::Rename { from, to, to_dir, replace, view }),
        2 => Just(Op::Snapshot),
        2 => (0usize..4).prop_map(|which| Op::DeleteSnapshot { which }),
        1 => (0usize..4).prop_map(|which| Op::Clone { which }),
        1 => (0usize..3).prop_map(|which| Op::Seal { which }),
    ]
}

/// Path of candidate file `i`: four names at the root, four in `d`.
fn path_of(i: usize) -> (bool, &'static str) {
    (i >= 4, NAMES[i % 4])
}

fn key(in_dir: bool, name: &str) -> String {
    let n = name.to_lowercase();
    if in_dir { format!("{DIR}/{n}") } else { n }
}

struct World {
    store: VolumeStore,
    /// The in-memory engine under the store, when the test runs on it.
    mem: Option<kv::MemKv>,
    vol: Uuid,
    live: Tree,
    snapshots: Vec<(Uuid, Tree)>,
    clones: Vec<(Uuid, Tree, bool)>,
    now: u64,
}

impl World {
    /// The view an op targets: 0 is live, 1.. are clones (falling back to live).
    fn target(&mut self, v: usize) -> (View, bool, &mut Tree) {
        if v > 0 && v <= self.clones.len() {
            let (id, tree, sealed) = &mut self.clones[v - 1];
            return (View::Clone(*id), !*sealed, tree);
        }
        (View::Live, true, &mut self.live)
    }

    fn dir_ino(&self, view: View, in_dir: bool) -> Option<u64> {
        if !in_dir {
            return Some(ROOT_INO);
        }
        self.store.lookup(self.vol, view, ROOT_INO, DIR).unwrap().filter(|e| e.inode.kind == Kind::Dir).map(|e| e.ino)
    }

    fn apply(&mut self, op: &Op) {
        self.now += 1;
        let now = self.now;
        let vol = self.vol;
        match op.clone() {
            Op::Create { in_dir, name, view } => {
                let name = NAMES[name];
                let (v, writable, _) = self.target(view);
                let parent = self.dir_ino(v, in_dir);
                let (_, _, tree) = self.target(view);
                let expect = writable && parent.is_some() && !tree.contains_key(&key(in_dir, name));
                let got = parent.map(|p| self.store.create(vol, v, p, name, Kind::File, now));
                assert_eq!(got.as_ref().is_some_and(|r| r.is_ok()), expect, "create {name} in_dir={in_dir}: {got:?}");
                if expect {
                    self.target(view).2.insert(key(in_dir, name), (name.to_string(), Kind::File, Vec::new()));
                }
            }
            Op::Mkdir { view } => {
                let (v, writable, tree) = self.target(view);
                let expect = writable && !tree.contains_key(DIR);
                let got = self.store.create(vol, v, ROOT_INO, DIR, Kind::Dir, now);
                assert_eq!(got.is_ok(), expect, "mkdir: {got:?}");
                if expect {
                    self.target(view).2.insert(DIR.into(), (DIR.into(), Kind::Dir, Vec::new()));
                }
            }
            Op::Write { file, offset, len, byte, view } => {
                let (in_dir, name) = path_of(file);
                let (v, writable, tree) = self.target(view);
                let Some((_, Kind::File, _)) = tree.get(&key(in_dir, name)) else { return };
                let entry = self.store.resolve(vol, v, &key(in_dir, name)).unwrap();
                let data = vec![byte; len];
                let got = self.store.write(vol, v, entry.ino, offset, &data, now);
                assert_eq!(got.is_ok(), writable, "{got:?}");
                if writable {
                    let content = &mut self.target(view).2.get_mut(&key(in_dir, name)).unwrap().2;
                    let end = offset as usize + len;
                    if content.len() < end {
                        content.resize(end, 0);
                    }
                    content[offset as usize..end].copy_from_slice(&data);
                }
            }
            Op::SetSize { file, size, view } => {
                let (in_dir, name) = path_of(file);
                let (v, writable, tree) = self.target(view);
                let Some((_, Kind::File, _)) = tree.get(&key(in_dir, name)) else { return };
                let entry = self.store.resolve(vol, v, &key(in_dir, name)).unwrap();
                let got = self.store.set_size(vol, v, entry.ino, size, now);
                assert_eq!(got.is_ok(), writable, "{got:?}");
                if writable {
                    self.target(view).2.get_mut(&key(in_dir, name)).unwrap().2.resize(size as usize, 0);
                }
            }
            Op::Zero { file, offset, len, view } => {
                let (in_dir, name) = path_of(file);
                let (v, writable, tree) = self.target(view);
                let Some((_, Kind::File, _)) = tree.get(&key(in_dir, name)) else { return };
                let entry = self.store.resolve(vol, v, &key(in_dir, name)).unwrap();
                let got = self.store.zero_range(vol, v, entry.ino, offset, len, now);
                assert_eq!(got.is_ok(), writable, "{got:?}");
                if writable {
                    assert_eq!(got.unwrap(), None, "a range this small is zeroed in one step");
                    let content = &mut self.target(view).2.get_mut(&key(in_dir, name)).unwrap().2;
                    let end = offset.saturating_add(len).min(content.len() as u64) as usize;
                    if (offset as usize) < end {
                        content[offset as usize..end].fill(0);
                    }
                }
            }
            Op::Unlink { file, view } => {
                let (in_dir, name) = path_of(file);
                let (v, writable, tree) = self.target(view);
                let exists = tree.contains_key(&key(in_dir, name));
                let Some(parent) = self.dir_ino(v, in_dir) else { return };
                let got = self.store.unlink(vol, v, parent, name, now);
                assert_eq!(got.is_ok(), writable && exists, "unlink {name}: {got:?}");
                if writable && exists {
                    self.target(view).2.remove(&key(in_dir, name));
                }
            }
            Op::RemoveDir { view } => {
                let (v, writable, tree) = self.target(view);
                let exists = tree.contains_key(DIR);
                let empty = !tree.keys().any(|k| k.starts_with("d/"));
                let got = self.store.unlink(vol, v, ROOT_INO, DIR, now);
                assert_eq!(got.is_ok(), writable && exists && empty, "rmdir: {got:?}");
                if !writable {
                    assert!(matches!(got, Err(VolumeError::ReadOnly(_))), "{got:?}");
                } else if !exists {
                    assert!(matches!(got, Err(VolumeError::NotFound(_))), "{got:?}");
                } else if !empty {
                    assert!(matches!(got, Err(VolumeError::NotEmpty)));
                }
                if got.is_ok() {
                    self.target(view).2.remove(DIR);
                }
            }
            Op::Rename { from, to, to_dir, replace, view } => self.rename(from, to, to_dir, replace, view, now),
            Op::Snapshot => {
                if self.snapshots.len() >= 6 {
                    return;
                }
                let id = Uuid::new_v4();
                self.store.snapshot_create(vol, id, now).unwrap();
                self.snapshots.push((id, self.live.clone()));
            }
            Op::DeleteSnapshot { which } => {
                if self.snapshots.is_empty() {
                    return;
                }
                let (id, _) = self.snapshots.remove(which % self.snapshots.len());
                self.store.snapshot_delete(vol, id).unwrap();
                assert!(self.store.read(vol, View::Snapshot(id), ROOT_INO, 0, 1).is_err(), "a deleting snapshot is not readable");
                // Small steps, so a reclaim spans several batches.
                while self.store.reclaim_step(vol, 3).unwrap() {}
                assert!(!self.store.snapshots(vol).unwrap().iter().any(|s| s.id == id));
            }
            Op::Clone { which } => {
                if self.snapshots.is_empty() || self.clones.len() >= 2 {
                    return;
                }
                let (snap, tree) = self.snapshots[which % self.snapshots.len()].clone();
                let id = Uuid::new_v4();
                self.store.clone_create(vol, snap, id).unwrap();
                self.clones.push((id, tree, false));
            }
            Op::Seal { which } => {
                if self.clones.is_empty() {
                    return;
                }
                let i = which % self.clones.len();
                self.store.clone_seal(vol, self.clones[i].0).unwrap();
                self.clones[i].2 = true;
            }
        }
    }

    fn rename(&mut self, from: usize, to: usize, to_dir: bool, replace: bool, view: usize, now: u64) {
        let vol = self.vol;
        let (from_in_dir, from_name) = path_of(from);
        let to_name = NAMES[to];
        let (v, writable, tree) = self.target(view);
        let from_key = key(from_in_dir, from_name);
        let to_key = key(to_dir, to_name);
        let Some(source) = tree.get(&from_key).cloned() else { return };
        let (Some(fp), Some(tp)) = (self.dir_ino(v, from_in_dir), self.dir_ino(v, to_dir)) else { return };
        let (_, _, tree) = self.target(view);
        let target = if from_key == to_key { None } else { tree.get(&to_key).cloned() };
        let expect = writable && match &target {
            None => true,
            Some((_, Kind::Dir, _)) => false,
            Some(_) => replace,
        };
        let got = self.store.rename(vol, v, fp, from_name, tp, to_name, replace, now);
        assert_eq!(got.is_ok(), expect, "rename {from_key} -> {to_key} replace={replace}: {got:?}");
        if expect {
            let tree = self.target(view).2;
            tree.remove(&from_key);
            tree.insert(to_key, (to_name.to_string(), source.1, source.2));
        }
    }

    fn check(&self) {
        assert_eq!(dump(&self.store, self.vol, View::Live), self.live, "live volume");
        for (id, tree) in &self.snapshots {
            assert_eq!(&dump(&self.store, self.vol, View::Snapshot(*id)), tree, "snapshot {id}");
        }
        for (id, tree, _) in &self.clones {
            assert_eq!(&dump(&self.store, self.vol, View::Clone(*id)), tree, "clone {id}");
        }
    }
}

/// The whole tree a view shows, read through the store's listing and reads.
fn dump(store: &VolumeStore, vol: Uuid, view: View) -> Tree {
    let mut out = Tree::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for e in store.list(vol, view, dir, None, MAX_LIST_ENTRIES).unwrap() {
            let path = format!("{prefix}{}", e.name.to_lowercase());
            let content = match e.inode.kind {
                Kind::File => {
                    let data = store.read(vol, view, e.ino, 0, e.inode.size).unwrap();
                    assert_eq!(data.len() as u64, e.inode.size);
                    let shared = checked(store.read_shared(vol, view, e.ino, 0, e.inode.size).unwrap());
                    assert!(shared == data, "{path}: the read handed out in pieces gives the same bytes");
                    if data.len() > 2 {
                        let inner = checked(store.read_shared(vol, view, e.ino, 1, e.inode.size - 2).unwrap());
                        assert!(inner[..] == data[1..data.len() - 1], "{path}: a read within the file, in pieces");
                    }
                    let (ranges, more) = store.allocated_ranges(vol, view, e.ino, 0, u64::MAX).unwrap();
                    assert_eq!((ranges, more), (allocated_in(&data), None), "{path}: allocated ranges are the chunks holding a non-zero byte");
                    data
                }
                Kind::Dir => {
                    stack.push((e.ino, format!("{path}/")));
                    Vec::new()
                }
            };
            out.insert(path, (e.name, e.inode.kind, content));
        }
    }
    out
}

/// The ranges of whole chunks (the last cut at the end) holding a non-zero byte of `data`,
/// merged where adjacent: what the store keeps, as it stores no chunk of zeros.
fn allocated_in(data: &[u8]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, chunk) in data.chunks(CHUNK_BYTES as usize).enumerate() {
        if chunk.iter().all(|&b| b == 0) {
            continue;
        }
        let start = i as u64 * CHUNK_BYTES;
        match out.last_mut() {
            Some((s, l)) if *s + *l == start => *l += chunk.len() as u64,
            _ => out.push((start, chunk.len() as u64)),
        }
    }
    out
}

/// The engine a model test runs the store on.
#[derive(Clone, Copy, Debug)]
enum Engine {
    Rocks,
    Mem,
}

/// The bytes [`VolumeStore::read_shared`] handed out, each piece checked by its checksums as
/// the receiver of a Read checks them.
fn checked(pieces: Vec<SharedPiece>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        let checks: Vec<umbra_proto::v1::Check> = p.spans.into_iter().map(Into::into).collect();
        umbra_proto::checks::verify(&p.data, &checks).expect("the pieces pass their checksums");
        out.extend_from_slice(&p.data);
    }
    out
}

fn world() -> (tempfile::TempDir, World) {
    world_on(Engine::Rocks)
}

fn world_on(engine: Engine) -> (tempfile::TempDir, World) {
    let dir = tempfile::tempdir().unwrap();
    let (store, mem) = match engine {
        Engine::Rocks => (VolumeStore::open(dir.path()).unwrap(), None),
        Engine::Mem => {
            let kv = kv::MemKv::new();
            (VolumeStore::open_on(std::sync::Arc::new(kv.clone())).unwrap(), Some(kv))
        }
    };
    let vol = Uuid::new_v4();
    store.create_volume(vol, 0).unwrap();
    (dir, World { store, mem, vol, live: Tree::new(), snapshots: Vec::new(), clones: Vec::new(), now: 0 })
}

fn the_store_reads_like_the_model(engine: Engine, ops: &[Op]) -> std::result::Result<(), TestCaseError> {
    let (_dir, mut w) = world_on(engine);
    for op in ops {
        w.apply(op);
        w.check();
    }
    // Every snapshot and clone goes: nothing is left but what the live volume needs.
    for (id, _, _) in std::mem::take(&mut w.clones) {
        w.store.clone_delete(w.vol, id).unwrap();
    }
    for (id, _) in std::mem::take(&mut w.snapshots) {
        w.store.snapshot_delete(w.vol, id).unwrap();
    }
    w.store.reclaim_all(w.vol).unwrap();
    w.check();
    prop_assert_eq!(count(&w.store, super::store::CF_DEAD), 0, "deadlists are empty once no pin is left");
    prop_assert_eq!(count(&w.store, super::store::CF_CHUNKS), live_chunks(&w.live), "only live chunks remain");
    Ok(())
}

/// What the model holds at one point.
type Trees = (Tree, Vec<(Uuid, Tree)>, Vec<(Uuid, Tree, bool)>);

/// Operations with crashes between them, on the in-memory engine. After every operation the
/// test notes the engine's unsynced batches and the model: a power loss keeps the writes up to
/// one of those points since the last sync (drawn by `at`) and the model goes back to that
/// point; a process death keeps everything. The reopened store must read like the model, at
/// every snapshot and clone.
fn crashes_lose_only_what_was_not_synced(ops: &[(Op, Option<(bool, usize)>)]) -> std::result::Result<(), TestCaseError> {
    let (_dir, mut w) = world_on(Engine::Mem);
    let kv = w.mem.clone().expect("the in-memory engine");
    let trees = |w: &World| -> Trees { (w.live.clone(), w.snapshots.clone(), w.clones.clone()) };
    // (unsynced batches, model) at the end of each operation since the last sync.
    let mut points: Vec<(usize, Trees)> = vec![(kv.unsynced_batches(), trees(&w))];
    let mut syncs_seen = kv.syncs();
    for (op, crash) in ops {
        w.apply(op);
        let unsynced = kv.unsynced_batches();
        if kv.syncs() != syncs_seen {
            // A sync (maybe inside the operation): nothing before it can be lost.
            syncs_seen = kv.syncs();
            points.clear();
        }
        points.push((unsynced, trees(&w)));
        if let Some((power, at)) = *crash {
            if power {
                let (reached, model) = points[at % points.len()].clone();
                kv.power_loss(reached);
                (w.live, w.snapshots, w.clones) = model;
                points = vec![(0, trees(&w))];
                syncs_seen = kv.syncs();
            }
            // A process death (power false) keeps the disk as it is: only the store reopens.
            w.store = VolumeStore::open_on(std::sync::Arc::new(kv.clone())).unwrap();
        }
        w.check();
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_store_reads_like_the_model_at_every_snapshot_and_clone(ops in prop::collection::vec(op(), 1..40)) {
        the_store_reads_like_the_model(Engine::Rocks, &ops)?;
    }

    #[test]
    fn the_store_on_the_in_memory_engine_reads_like_the_model(ops in prop::collection::vec(op(), 1..40)) {
        the_store_reads_like_the_model(Engine::Mem, &ops)?;
    }

    #[test]
    fn after_a_crash_the_store_reads_like_the_model_at_its_last_durable_point(
        ops in prop::collection::vec((op(), prop::option::weighted(0.15, (any::<bool>(), any::<usize>()))), 1..40)
    ) {
        crashes_lose_only_what_was_not_synced(&ops)?;
    }
}

fn count(store: &VolumeStore, cf: kv::Cf) -> usize {
    store.kv.scan(cf, &[]).count()
}

/// Chunks holding data in a tree (what the store must keep, no more).
fn live_chunks(tree: &Tree) -> usize {
    tree.values()
        .filter(|(_, k, _)| *k == Kind::File)
        .map(|(_, _, data)| data.chunks(CHUNK_BYTES as usize).filter(|c| c.iter().any(|&b| b != 0)).count())
        .sum()
}

/// Reads handed out as pieces of the data log's mapping, held while other threads overwrite
/// the file and checkpoint (which punch what the overwrites freed), keep the bytes they read:
/// every chunk of every read is one whole version written, never zeros or a mix.
#[test]
fn reads_held_while_the_file_is_overwritten_and_checkpointed_keep_their_bytes() {
    let (_dir, w) = world();
    let (store, vol) = (std::sync::Arc::new(w.store), w.vol);
    let ino = store.create(vol, View::Live, ROOT_INO, "f", Kind::File, 1).unwrap();
    const CHUNKS: u64 = 8;
    let version = |round: u8, chunk: u64| vec![round.wrapping_mul(31).wrapping_add(chunk as u8) | 1; CHUNK_BYTES as usize];
    let write_round = |round: u8| {
        let data: Vec<u8> = (0..CHUNKS).flat_map(|c| version(round, c)).collect();
        store.write(vol, View::Live, ino, 0, &data, 2).unwrap();
    };
    write_round(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for round in 1..=40u8 {
                write_round(round);
                store.kv.flush(kv::Cf::Chunks).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut held: std::collections::VecDeque<Vec<SharedPiece>> = std::collections::VecDeque::new();
        // Checked when used, as the receiver of a Read checks them: long after the read.
        let check = |pieces: &[SharedPiece]| {
            let all = checked(pieces.to_vec());
            assert_eq!(all.len() as u64, CHUNKS * CHUNK_BYTES);
            for (c, chunk) in all.chunks(CHUNK_BYTES as usize).enumerate() {
                assert!((0..=40u8).any(|r| chunk == &version(r, c as u64)[..]), "chunk {c} is no version written (first byte {})", chunk[0]);
            }
        };
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let pieces = store.read_shared(vol, View::Live, ino, 0, CHUNKS * CHUNK_BYTES).unwrap();
            check(&pieces);
            held.push_back(pieces);
            // Each read is kept through a few rounds of overwrites and checkpoints.
            if held.len() > 16 {
                check(&held.pop_front().unwrap());
            }
        }
        for pieces in held {
            check(&pieces);
        }
    });
}

#[test]
fn a_path_resolves_with_its_parent_in_one_call_and_a_missing_last_name_is_no_error() {
    let (_dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    let d = s.create(v, View::Live, ROOT_INO, "Dir", Kind::Dir, 1).unwrap();
    let f = s.create(v, View::Live, d, "File.txt", Kind::File, 2).unwrap();
    let with_parent = |path: &str| s.resolve_with_parent(v, View::Live, path).map(|(e, p)| (e.map(|e| e.ino), p.ino));
    assert_eq!(with_parent("").unwrap(), (Some(ROOT_INO), ROOT_INO), "the root is its own parent");
    assert_eq!(with_parent("dir\\file.TXT").unwrap(), (Some(f), d), "case-insensitive, either separator");
    assert_eq!(with_parent("Dir/new.txt").unwrap(), (None, d), "only the last name missing");
    assert_eq!(with_parent("Dir/File.txt/x").unwrap(), (None, f), "the parent is a file: the caller decides");
    assert!(matches!(s.resolve_with_parent(v, View::Live, "nodir/new.txt"), Err(VolumeError::NotFound(_))), "the parent missing too");
    assert!(matches!(s.resolve_with_parent(v, View::Live, "Dir/File.txt/x/y"), Err(VolumeError::NotADirectory)));
}

#[test]
fn truncate_to_zero_after_a_snapshot_then_extend_reads_zeros_while_the_snapshot_keeps_the_data() {
    let (_dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    let ino = s.create(v, View::Live, ROOT_INO, "disk.vhdx", Kind::File, 1).unwrap();
    let old = vec![0xAB; 3 * CHUNK_BYTES as usize];
    s.write(v, View::Live, ino, 0, &old, 2).unwrap();
    let snap = Uuid::new_v4();
    s.snapshot_create(v, snap, 3).unwrap();
    s.set_size(v, View::Live, ino, 0, 4).unwrap();
    s.set_size(v, View::Live, ino, old.len() as u64, 5).unwrap();
    assert_eq!(s.read(v, View::Live, ino, 0, old.len() as u64).unwrap(), vec![0; old.len()]);
    assert_eq!(s.read(v, View::Snapshot(snap), ino, 0, old.len() as u64).unwrap(), old);
    // Partial truncate then extend: the dropped range reads as zeros too.
    s.write(v, View::Live, ino, 0, &old, 6).unwrap();
    let snap2 = Uuid::new_v4();
    s.snapshot_create(v, snap2, 7).unwrap();
    s.set_size(v, View::Live, ino, 1000, 8).unwrap();
    s.set_size(v, View::Live, ino, old.len() as u64, 9).unwrap();
    let mut expect = vec![0u8; old.len()];
    expect[..1000].fill(0xAB);
    assert_eq!(s.read(v, View::Live, ino, 0, old.len() as u64).unwrap(), expect);
    assert_eq!(s.read(v, View::Snapshot(snap2), ino, 0, old.len() as u64).unwrap(), old);
    assert_eq!(s.read(v, View::Snapshot(snap), ino, 0, old.len() as u64).unwrap(), old);
}

/// A dead generation larger than a reclaim step is freed over several steps, each deleting at
/// most the step's budget, and a power loss between steps loses at most the progress since
/// the last sync: the reclaim goes on from where the disk says and frees everything.
#[test]
fn a_large_dead_generation_is_reclaimed_in_bounded_steps_that_survive_a_power_loss() {
    const CHUNKS: u64 = 40;
    const STEP: usize = 8;
    for lost_after in [1usize, 3] {
        let (_dir, mut w) = world_on(Engine::Mem);
        let kv = w.mem.clone().expect("the in-memory engine");
        let v = w.vol;
        let big = w.store.create(v, View::Live, ROOT_INO, "disk.vhdx", Kind::File, 1).unwrap();
        let kept = w.store.create(v, View::Live, ROOT_INO, "kept.txt", Kind::File, 1).unwrap();
        w.store.write(v, View::Live, big, 0, &vec![0x5A; (CHUNKS * CHUNK_BYTES) as usize], 2).unwrap();
        w.store.write(v, View::Live, kept, 0, b"still here", 2).unwrap();
        let a = Uuid::new_v4();
        w.store.snapshot_create(v, a, 3).unwrap();
        w.store.set_size(v, View::Live, big, 0, 4).unwrap(); // the generation dies, pinned by `a`
        let b = Uuid::new_v4();
        w.store.snapshot_create(v, b, 5).unwrap();
        w.store.snapshot_delete(v, a).unwrap();
        w.store.sync().unwrap();
        let chunks = |w: &World| count(&w.store, super::store::CF_CHUNKS);
        assert_eq!(chunks(&w), CHUNKS as usize + 1);
        let mut steps = 0;
        let mut before = chunks(&w);
        while w.store.reclaim_step(v, STEP).unwrap() {
            steps += 1;
            let now = chunks(&w);
            assert!(before - now <= STEP, "one step deleted {} chunks, more than its budget {STEP}", before - now);
            before = now;
            if steps == lost_after {
                // Every step so far was buffered: the disk keeps some of their batches (half
                // of them: the reclaim goes on from a cursor a step saved), or none.
                kv.power_loss(if lost_after == 1 { 0 } else { kv.unsynced_batches() / 2 });
                w.store = VolumeStore::open_on(std::sync::Arc::new(kv.clone())).unwrap();
                before = chunks(&w);
            }
        }
        assert!(steps as u64 >= CHUNKS / STEP as u64, "{steps} steps for {CHUNKS} chunks in steps of {STEP}");
        assert_eq!(chunks(&w), 1, "only the kept file's chunk is left");
        assert_eq!(count(&w.store, super::store::CF_DEAD), 0);
        assert!(w.store.snapshots(v).unwrap().iter().all(|s| s.id != a), "the deleted snapshot's record went last");
        assert_eq!(w.store.read(v, View::Snapshot(b), kept, 0, 100).unwrap(), b"still here");
        assert_eq!(w.store.stat(v, View::Snapshot(b), big).unwrap().size, 0);
    }
}

/// A truncate of a large file to a non-zero size costs one batch whatever the file held: the
/// chunks past the end go in bounded reclaim steps, or before a write or extend that would
/// reach them; reads never see them meanwhile, and a snapshot keeps its data throughout.
#[test]
fn a_truncate_leaves_the_chunks_past_the_end_to_bounded_steps() {
    const CHUNKS: u64 = 40;
    const STEP: usize = 8;
    let (_dir, w) = world_on(Engine::Mem);
    let (s, v) = (&w.store, w.vol);
    let chunks = || count(s, super::store::CF_CHUNKS);
    let old = vec![0x77u8; (CHUNKS * CHUNK_BYTES) as usize];
    let a = s.create(v, View::Live, ROOT_INO, "a.vhdx", Kind::File, 1).unwrap();
    let b = s.create(v, View::Live, ROOT_INO, "b.vhdx", Kind::File, 1).unwrap();
    s.write(v, View::Live, a, 0, &old, 2).unwrap();
    s.write(v, View::Live, b, 0, &old, 2).unwrap();
    let snap = Uuid::new_v4();
    s.snapshot_create(v, snap, 3).unwrap();
    let size = CHUNK_BYTES + 100;

    // `a`: truncated, then left to the reclaimer.
    let before = chunks();
    s.set_size(v, View::Live, a, size, 4).unwrap();
    assert!(chunks() <= before + 1, "the truncate itself wrote at most the zeroed tail's chunk");
    let st = s.stat(v, View::Live, a).unwrap();
    assert_eq!((st.size, st.allocation()), (size, 2 * CHUNK_BYTES), "the allocation counts what is within the file");
    assert_eq!(s.read(v, View::Live, a, 0, u64::MAX >> 40).unwrap(), old[..size as usize]);
    let mut steps = 0;
    let mut last = chunks();
    while s.reclaim_step(v, STEP).unwrap() {
        steps += 1;
        assert!(chunks() <= last + STEP, "a step writes at most its budget of tombstones");
        last = chunks();
    }
    assert!(steps as u64 >= (CHUNKS - 2) / STEP as u64, "{steps} steps");
    assert_eq!(s.stat(v, View::Live, a).unwrap().cut, None, "the cut is done");
    assert_eq!(s.stat(v, View::Live, a).unwrap().allocated, 2 * CHUNK_BYTES);

    // `b`: truncated, then extended at once: the extend removes the cut first.
    s.set_size(v, View::Live, b, size, 5).unwrap();
    s.set_size(v, View::Live, b, old.len() as u64, 6).unwrap();
    let mut expect = vec![0u8; old.len()];
    expect[..size as usize].copy_from_slice(&old[..size as usize]);
    assert_eq!(s.read(v, View::Live, b, 0, old.len() as u64).unwrap(), expect, "the extended range reads as zeros");
    assert_eq!(s.stat(v, View::Live, b).unwrap().cut, None);
    // And a write past the end after another truncate.
    s.set_size(v, View::Live, b, 10, 7).unwrap();
    s.write(v, View::Live, b, 5 * CHUNK_BYTES, b"x", 8).unwrap();
    let got = s.read(v, View::Live, b, 0, 5 * CHUNK_BYTES + 1).unwrap();
    assert_eq!(&got[..10], &old[..10]);
    assert!(got[10..5 * CHUNK_BYTES as usize].iter().all(|&x| x == 0), "nothing from before the truncate shows");
    assert_eq!(got[5 * CHUNK_BYTES as usize], b'x');

    for f in [a, b] {
        assert_eq!(s.read(v, View::Snapshot(snap), f, 0, old.len() as u64).unwrap(), old, "the snapshot reads as it was");
    }
    s.snapshot_delete(v, snap).unwrap();
    s.reclaim_all(v).unwrap();
    assert_eq!(count(s, super::store::CF_DEAD), 0);
    assert_eq!(chunks(), 2 + 2, "a's two chunks, b's first and the one written at 5 chunks");
}

/// Whatever happens while a cut is pending (part of it done, then an extend, a write at the
/// end, a truncate to 0, a clone of a snapshot taken meanwhile, a fence), no byte from before
/// the truncate shows past the new end anywhere but in the snapshots that had it.
#[test]
fn a_pending_cut_never_shows_old_data() {
    const CHUNKS: u64 = 12;
    let (_dir, w) = world_on(Engine::Mem);
    let (s, v) = (&w.store, w.vol);
    let old = vec![0xC3u8; (CHUNKS * CHUNK_BYTES) as usize];
    let all = old.len() as u64;
    let file = |name: &str| {
        let ino = s.create(v, View::Live, ROOT_INO, name, Kind::File, 1).unwrap();
        s.write(v, View::Live, ino, 0, &old, 2).unwrap();
        ino
    };
    let zeros_past = |view: View, ino: u64, keep: u64| {
        let got = s.read(v, view, ino, 0, all).unwrap();
        assert!(got[..keep as usize].iter().all(|&b| b == 0xC3), "the kept part");
        assert!(got[keep as usize..].iter().all(|&b| b == 0), "nothing from before the truncate past {keep}");
    };
    let (a, b, c, d) = (file("a"), file("b"), file("c"), file("d"));
    let snap = Uuid::new_v4();
    s.snapshot_create(v, snap, 3).unwrap();

    // `a`: part of the cut done by a small reclaim step, then an extend.
    s.set_size(v, View::Live, a, 100, 4).unwrap();
    s.reclaim_step(v, 3).unwrap();
    assert!(s.stat(v, View::Live, a).unwrap().cut.is_some(), "the cut is part done");
    s.set_size(v, View::Live, a, all, 5).unwrap();
    zeros_past(View::Live, a, 100);

    // `b`: one byte appended at the end (WRITE_AT_END) right after the truncate, then an
    // extend: the rest of the chunk the byte went into reads as zeros too.
    s.set_size(v, View::Live, b, 3 * CHUNK_BYTES, 4).unwrap();
    s.write(v, View::Live, b, super::data::WRITE_AT_END, b"\0", 5).unwrap();
    assert_eq!(s.stat(v, View::Live, b).unwrap().size, 3 * CHUNK_BYTES + 1);
    s.set_size(v, View::Live, b, all, 6).unwrap();
    zeros_past(View::Live, b, 3 * CHUNK_BYTES);

    // `c`: truncated to 0 while its cut is pending, then extended.
    s.set_size(v, View::Live, c, 100, 4).unwrap();
    s.set_size(v, View::Live, c, 0, 5).unwrap();
    assert_eq!(s.stat(v, View::Live, c).unwrap().cut, None);
    s.set_size(v, View::Live, c, all, 6).unwrap();
    zeros_past(View::Live, c, 0);

    // `d`: truncated, a snapshot taken while its cut is pending, a clone of that snapshot
    // written past the cut; then, at a fence, a growing write refuses to wait.
    s.set_size(v, View::Live, d, 2 * CHUNK_BYTES + 7, 4).unwrap();
    let during = Uuid::new_v4();
    s.snapshot_create(v, during, 5).unwrap();
    let clone = Uuid::new_v4();
    s.clone_create(v, during, clone).unwrap();
    s.write(v, View::Clone(clone), d, all - 1, b"\0", 6).unwrap();
    zeros_past(View::Clone(clone), d, 2 * CHUNK_BYTES + 7);
    assert_eq!(s.stat(v, View::Snapshot(during), d).unwrap().size, 2 * CHUNK_BYTES + 7);
    let at_fence = Uuid::new_v4();
    s.fence(v, 77, std::time::Duration::from_secs(5), at_fence, 7).unwrap();
    let refused = super::gate::refusing_at_fence(|| s.write(v, View::Live, d, all - 1, b"\0", 7));
    assert!(matches!(refused, Err(VolumeError::AtFence)), "{refused:?}");
    s.release(v, 77).unwrap();
    s.write(v, View::Live, d, all - 1, b"\0", 8).unwrap();
    zeros_past(View::Live, d, 2 * CHUNK_BYTES + 7);

    for f in [a, b, c, d] {
        assert_eq!(s.read(v, View::Snapshot(snap), f, 0, all).unwrap(), old, "the first snapshot reads as it was");
    }
    s.clone_delete(v, clone).unwrap();
    for id in [snap, during, at_fence] {
        s.snapshot_delete(v, id).unwrap();
    }
    s.reclaim_all(v).unwrap();
    assert_eq!(count(s, super::store::CF_DEAD), 0);
}

/// A file deleted with no snapshot, and a deleted clone, leave their chunks to the reclaimer,
/// which deletes them in steps of at most its budget.
#[test]
fn deleted_files_and_clones_free_their_chunks_in_bounded_steps() {
    const CHUNKS: u64 = 30;
    const STEP: usize = 8;
    let (_dir, w) = world_on(Engine::Mem);
    let (s, v) = (&w.store, w.vol);
    let chunks = || count(s, super::store::CF_CHUNKS);
    let f = s.create(v, View::Live, ROOT_INO, "f", Kind::File, 1).unwrap();
    s.write(v, View::Live, f, 0, &vec![1u8; (CHUNKS * CHUNK_BYTES) as usize], 2).unwrap();
    s.unlink(v, View::Live, ROOT_INO, "f", 3).unwrap();
    assert_eq!(chunks(), CHUNKS as usize, "the unlink itself deletes no chunk");
    reclaim_deleting_at_most(s, v, STEP);
    assert_eq!(chunks(), 0);

    let g = s.create(v, View::Live, ROOT_INO, "g", Kind::File, 4).unwrap();
    s.write(v, View::Live, g, 0, b"base", 5).unwrap();
    let snap = Uuid::new_v4();
    s.snapshot_create(v, snap, 6).unwrap();
    s.snapshot_commit(v, snap).ok();
    let c = Uuid::new_v4();
    s.clone_create(v, snap, c).unwrap();
    s.write(v, View::Clone(c), g, 0, &vec![2u8; (CHUNKS * CHUNK_BYTES) as usize], 7).unwrap();
    assert_eq!(chunks(), CHUNKS as usize + 1);
    s.clone_delete(v, c).unwrap();
    reclaim_deleting_at_most(s, v, STEP);
    assert_eq!(chunks(), 1, "only the live file's chunk is left");
    assert_eq!(s.read(v, View::Live, g, 0, 10).unwrap(), b"base");
}

/// Runs reclaim steps of `step` until none is left, each deleting at most `step` chunks.
fn reclaim_deleting_at_most(s: &VolumeStore, v: Uuid, step: usize) {
    let mut last = count(s, super::store::CF_CHUNKS);
    while s.reclaim_step(v, step).unwrap() {
        let now = count(s, super::store::CF_CHUNKS);
        assert!(last - now <= step, "one step deleted {} chunks", last - now);
        last = now;
    }
}

#[test]
fn snapshots_are_capped_and_snapshot_views_refuse_writes() {
    let (_dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    let ino = s.create(v, View::Live, ROOT_INO, "f", Kind::File, 1).unwrap();
    let first = Uuid::new_v4();
    s.snapshot_create(v, first, 1).unwrap();
    for _ in 1..MAX_SNAPSHOTS_PER_VOLUME {
        s.snapshot_create(v, Uuid::new_v4(), 1).unwrap();
    }
    assert!(matches!(s.snapshot_create(v, Uuid::new_v4(), 1), Err(VolumeError::TooManySnapshots { max: MAX_SNAPSHOTS_PER_VOLUME })));
    assert!(matches!(s.write(v, View::Snapshot(first), ino, 0, b"x", 2), Err(VolumeError::ReadOnly(_))));
    assert!(matches!(s.create(v, View::Live, ROOT_INO, "a:b", Kind::File, 1), Err(VolumeError::InvalidName(_))));
    assert!(matches!(s.write(v, View::Live, ino, MAX_FILE_BYTES, b"x", 2), Err(VolumeError::TooLarge { .. })));
    assert!(matches!(s.read(v, View::Live, ino, 0, MAX_IO_BYTES + 1), Err(VolumeError::TooLarge { .. })));
}

#[test]
fn the_store_reopens_with_its_volumes_snapshots_and_clones() {
    let dir = tempfile::tempdir().unwrap();
    let vol = Uuid::new_v4();
    let (snap, clone) = (Uuid::new_v4(), Uuid::new_v4());
    let ino;
    {
        let s = VolumeStore::open(dir.path()).unwrap();
        s.create_volume(vol, 0).unwrap();
        ino = s.create(vol, View::Live, ROOT_INO, "f", Kind::File, 1).unwrap();
        s.write(vol, View::Live, ino, 0, b"before", 2).unwrap();
        s.snapshot_create(vol, snap, 3).unwrap();
        s.write(vol, View::Live, ino, 0, b"after!", 4).unwrap();
        s.clone_create(vol, snap, clone).unwrap();
        s.write(vol, View::Clone(clone), ino, 0, b"cloned", 5).unwrap();
    }
    let s = VolumeStore::open(dir.path()).unwrap();
    assert_eq!(s.volumes(), vec![vol]);
    assert_eq!(s.read(vol, View::Live, ino, 0, 6).unwrap(), b"after!");
    assert_eq!(s.read(vol, View::Snapshot(snap), ino, 0, 6).unwrap(), b"before");
    assert_eq!(s.read(vol, View::Clone(clone), ino, 0, 6).unwrap(), b"cloned");
    let next = s.create(vol, View::Live, ROOT_INO, "g", Kind::File, 6).unwrap();
    assert!(next > ino, "inode numbers are never reused");
}

/// `descriptor` as the inode's security descriptor, its change time `now`.
fn set_security(s: &VolumeStore, vol: Uuid, view: View, ino: u64, descriptor: Vec<u8>, now: u64) -> Result<Inode> {
    s.set_info_and_security(vol, view, ino, SetInfo { changed: Some(now), ..SetInfo::default() }, Some(&|_, _| Ok(descriptor.clone())))
}

/// A security descriptor is kept per file, as given, through a restart; a snapshot keeps the
/// one it saw; an empty one removes it; one past the bound, or set in a snapshot, is refused.
#[test]
fn security_descriptors_are_kept_through_restarts_and_snapshots_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let (vol, snap) = (Uuid::new_v4(), Uuid::new_v4());
    let (first, second) = ((0u8..=255).collect::<Vec<u8>>(), vec![1u8, 0, 4, 0x80]);
    let ino;
    {
        let s = VolumeStore::open(dir.path()).unwrap();
        s.create_volume(vol, 0).unwrap();
        ino = s.create(vol, View::Live, ROOT_INO, "f", Kind::File, 1).unwrap();
        assert_eq!(s.stat(vol, View::Live, ino).unwrap().security, None, "none until one is set");
        assert_eq!(set_security(&s, vol, View::Live, ino, first.clone(), 5).unwrap().security.as_ref(), Some(&first));
        assert_eq!(s.stat(vol, View::Live, ino).unwrap().changed, 5, "a new descriptor is a change");
        s.snapshot_create(vol, snap, 2).unwrap();
        set_security(&s, vol, View::Live, ino, second.clone(), 6).unwrap();
        assert!(matches!(set_security(&s, vol, View::Snapshot(snap), ino, second.clone(), 6), Err(VolumeError::ReadOnly(_))));
        assert!(matches!(set_security(&s, vol, View::Live, ino, vec![1; MAX_SECURITY_BYTES + 1], 6), Err(VolumeError::TooLarge { .. })));
        s.write(vol, View::Live, ino, 0, b"data", 3).unwrap();
    }
    let s = VolumeStore::open(dir.path()).unwrap();
    assert_eq!(s.stat(vol, View::Live, ino).unwrap().security, Some(second), "kept through a restart and a write");
    assert_eq!(s.stat(vol, View::Snapshot(snap), ino).unwrap().security, Some(first), "the snapshot's own");
    set_security(&s, vol, View::Live, ROOT_INO, vec![9; 40], 8).unwrap();
    assert_eq!(s.stat(vol, View::Live, ROOT_INO).unwrap().security, Some(vec![9; 40]), "directories too");
}

#[test]
fn a_fence_drains_concurrent_writers_takes_the_cut_and_holds_until_release() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(VolumeStore::open(dir.path()).unwrap());
    let vol = Uuid::new_v4();
    store.create_volume(vol, 0).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let ino = store.create(vol, View::Live, ROOT_INO, &format!("log{w}"), Kind::File, 1).unwrap();
        let (store, stop) = (store.clone(), stop.clone());
        let acked = Arc::new(AtomicU64::new(0));
        let a = acked.clone();
        writers.push((ino, acked, std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                store.write(vol, View::Live, ino, n * 8, &n.to_le_bytes(), 2).unwrap();
                n += 1;
                a.store(n, Ordering::SeqCst);
            }
        })));
    }
    std::thread::sleep(Duration::from_millis(100));
    let snap = Uuid::new_v4();
    let info = store.fence(vol, 10, Duration::from_secs(10), snap, 3).unwrap();
    assert_eq!(info.state, SnapshotState::Tentative);
    let at_fence: Vec<u64> = writers.iter().map(|(ino, _, _)| store.stat(vol, View::Live, *ino).unwrap().size).collect();
    std::thread::sleep(Duration::from_millis(200));
    for ((ino, acked, _), size) in writers.iter().zip(&at_fence) {
        assert_eq!(store.stat(vol, View::Live, *ino).unwrap().size, *size, "no write lands inside the fence");
        assert!(acked.load(Ordering::SeqCst) * 8 >= *size);
    }
    assert!(store.fence(vol, 9, Duration::from_secs(1), Uuid::new_v4(), 4).is_err(), "a lower token is refused");
    assert_eq!(store.fence(vol, 10, Duration::from_secs(1), Uuid::new_v4(), 4).unwrap().id, snap, "a retry gets the recorded answer");
    assert_eq!(store.release(vol, 10).unwrap().0, Released::Held);
    assert_eq!(store.release(vol, 10).unwrap().0, Released::Held, "a retried release gets the recorded answer");
    assert!(store.fence(vol, 10, Duration::from_secs(1), Uuid::new_v4(), 4).is_err(), "a released token is refused");
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let mut grew = false;
    assert_eq!(store.snapshot_commit(vol, snap).unwrap().state, SnapshotState::Committed);
    for ((ino, _, handle), size) in writers.into_iter().zip(&at_fence) {
        handle.join().unwrap();
        grew |= store.stat(vol, View::Live, ino).unwrap().size > *size;
        // The committed snapshot is exactly the live file at the fence point.
        let cut = store.read(vol, View::Snapshot(snap), ino, 0, *size + 64).unwrap();
        assert_eq!(cut.len() as u64, *size);
        for (i, rec) in cut.chunks(8).enumerate() {
            assert_eq!(u64::from_le_bytes(rec.try_into().unwrap()), i as u64);
        }
    }
    assert!(grew, "writes go on after the release");
}

#[test]
fn a_fence_drains_only_the_write_holding_the_volume_lock_and_queued_writes_step_back() {
    use std::sync::Arc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(VolumeStore::open(dir.path()).unwrap());
    let vol = Uuid::new_v4();
    store.create_volume(vol, 0).unwrap();
    let ino = store.create(vol, View::Live, ROOT_INO, "f", Kind::File, 1).unwrap();
    // A mutation in flight: admitted and holding the volume lock for a while.
    let entry = store.volume(vol).unwrap();
    let in_flight = std::thread::spawn({
        let entry = entry.clone();
        move || {
            let (_pass, _st) = entry.mutation().unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    // A write that passes the open gate and queues for the volume lock.
    let queued = std::thread::spawn({
        let store = store.clone();
        move || store.write(vol, View::Live, ino, 0, b"queued", 2).unwrap()
    });
    std::thread::sleep(Duration::from_millis(50));
    let snap = Uuid::new_v4();
    store.fence(vol, 1, Duration::from_secs(10), snap, 3).unwrap();
    in_flight.join().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(store.stat(vol, View::Live, ino).unwrap().size, 0, "the queued write is held by the fence, not drained into the cut");
    assert!(!queued.is_finished());
    assert_eq!(store.release(vol, 1).unwrap().0, Released::Held);
    queued.join().unwrap();
    store.snapshot_commit(vol, snap).unwrap();
    assert_eq!(store.stat(vol, View::Snapshot(snap), ino).unwrap().size, 0, "the cut is before the queued write");
    assert_eq!(store.read(vol, View::Live, ino, 0, 6).unwrap(), b"queued");
}

#[test]
fn a_fence_left_by_its_caller_expires_and_its_release_says_so() {
    use std::time::{Duration, Instant};
    let (_dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    let ino = s.create(v, View::Live, ROOT_INO, "f", Kind::File, 1).unwrap();
    s.fence(v, 1, Duration::from_millis(150), Uuid::new_v4(), 2).unwrap();
    let start = Instant::now();
    s.write(v, View::Live, ino, 0, b"late", 3).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(100), "the write waited for the TTL");
    assert!(!s.fenced(v).unwrap());
    assert_eq!(s.release(v, 1).unwrap().0, Released::Expired);
}

/// In a writable clone, a base name the clone deleted neither takes a place in a listing's page
/// nor makes a directory look empty.
#[test]
fn a_clone_lists_page_by_page_past_names_it_deleted_and_keeps_a_directory_with_base_names() {
    let (_dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    for name in ["a", "b", "c"] {
        s.create(v, View::Live, ROOT_INO, name, Kind::File, 1).unwrap();
    }
    let d = s.create(v, View::Live, ROOT_INO, "d", Kind::Dir, 1).unwrap();
    s.create(v, View::Live, d, "x", Kind::File, 1).unwrap();
    s.create(v, View::Live, d, "y", Kind::File, 1).unwrap();
    let snap = Uuid::new_v4();
    s.snapshot_create(v, snap, 2).unwrap();
    let clone = Uuid::new_v4();
    s.clone_create(v, snap, clone).unwrap();
    let c = View::Clone(clone);
    s.unlink(v, c, ROOT_INO, "a", 3).unwrap();
    s.create(v, c, ROOT_INO, "z", Kind::File, 3).unwrap();
    let names = |after: Option<&str>| s.list(v, c, ROOT_INO, after, 2).unwrap().into_iter().map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(names(None), vec!["b", "c"]);
    assert_eq!(names(Some("c")), vec!["d", "z"]);
    s.unlink(v, c, d, "x", 4).unwrap();
    assert!(matches!(s.unlink(v, c, ROOT_INO, "d", 4), Err(VolumeError::NotEmpty)), "y is still in it");
}

/// A snapshot or clone deletion whose write fails changes nothing, in memory either: the
/// snapshot still pins what it reads (a later write must not retire its versions), and the
/// deletion can be tried again.
#[test]
fn a_snapshot_or_clone_deletion_whose_write_fails_changes_nothing() {
    let (_dir, w) = world_on(Engine::Mem);
    let (s, v, mem) = (&w.store, w.vol, w.mem.clone().unwrap());
    let ino = s.create(v, View::Live, ROOT_INO, "f", Kind::File, 1).unwrap();
    s.write(v, View::Live, ino, 0, b"before", 2).unwrap();
    let snap = Uuid::new_v4();
    s.snapshot_create(v, snap, 3).unwrap();
    let clone = Uuid::new_v4();
    s.clone_create(v, snap, clone).unwrap();
    mem.fail_writes_for_tests(1);
    assert!(matches!(s.snapshot_delete(v, snap), Err(VolumeError::DiskFull(_))));
    mem.fail_writes_for_tests(1);
    assert!(matches!(s.clone_delete(v, clone), Err(VolumeError::DiskFull(_))));
    assert_eq!(s.snapshots(v).unwrap().iter().find(|i| i.id == snap).unwrap().state, SnapshotState::Committed);
    assert!(s.clones(v).unwrap().iter().any(|c| c.id == clone));
    // A later live write keeps what the snapshot and the clone read.
    s.write(v, View::Live, ino, 0, b"after!", 4).unwrap();
    assert_eq!(s.read(v, View::Snapshot(snap), ino, 0, 6).unwrap(), b"before");
    assert_eq!(s.read(v, View::Clone(clone), ino, 0, 6).unwrap(), b"before");
    s.clone_delete(v, clone).unwrap();
    s.snapshot_delete(v, snap).unwrap();
    assert_eq!(s.snapshots(v).unwrap().iter().find(|i| i.id == snap).unwrap().state, SnapshotState::Deleting);
}

/// A rename with replace refuses a target some open holds, and a directory target, with
/// access denied, changing nothing; a target nobody holds is replaced.
#[test]
fn a_rename_does_not_replace_an_open_file_or_a_directory() {
    let (_dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    let from = s.create(v, View::Live, ROOT_INO, "new", Kind::File, 1).unwrap();
    let held = s.create(v, View::Live, ROOT_INO, "held", Kind::File, 1).unwrap();
    s.create(v, View::Live, ROOT_INO, "dir", Kind::Dir, 1).unwrap();
    for to in ["held", "dir"] {
        let e = s.rename_unless(v, View::Live, ROOT_INO, "new", ROOT_INO, to, true, 2, &Held(vec![held])).unwrap_err();
        assert!(matches!(e, VolumeError::AccessDenied(_) | VolumeError::OpenInTheWay(_)), "{to}: {e:?}");
    }
    assert_eq!(s.lookup(v, View::Live, ROOT_INO, "held").unwrap().unwrap().ino, held, "unchanged");
    assert_eq!(s.lookup(v, View::Live, ROOT_INO, "new").unwrap().unwrap().ino, from);
    s.rename_unless(v, View::Live, ROOT_INO, "new", ROOT_INO, "held", true, 3, &NothingOpen).unwrap();
    assert_eq!(s.lookup(v, View::Live, ROOT_INO, "held").unwrap().unwrap().ino, from, "replaced once nobody holds it");
}

/// A change stamped to keep a time leaves it: writes, truncates and zeroing move only the
/// times they do not keep.
#[test]
fn a_change_leaves_the_times_it_keeps() {
    let (_dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    let ino = s.create(v, View::Live, ROOT_INO, "t", Kind::File, 1).unwrap();
    let times = || s.stat(v, View::Live, ino).map(|i| (i.written, i.changed)).unwrap();
    s.write(v, View::Live, ino, 0, b"abc", 10).unwrap();
    assert_eq!(times(), (10, 10));
    s.write(v, View::Live, ino, 3, b"def", Stamp { now: 20, keep_written: true, keep_changed: false }).unwrap();
    assert_eq!(times(), (10, 20));
    s.set_size(v, View::Live, ino, 2, Stamp { now: 30, keep_written: false, keep_changed: true }).unwrap();
    assert_eq!(times(), (30, 20));
    s.zero_range(v, View::Live, ino, 0, 2, Stamp { now: 40, keep_written: true, keep_changed: true }).unwrap();
    assert_eq!(times(), (30, 20));
    assert_eq!(s.read(v, View::Live, ino, 0, 8).unwrap(), vec![0, 0], "the changes themselves happened");
}

/// The inodes a test holds open.
struct Held(Vec<u64>);

impl OpenFiles for Held {
    fn holds(&self, ino: u64) -> bool {
        self.0.contains(&ino)
    }
    fn held(&self) -> Vec<u64> {
        self.0.clone()
    }
}

/// A directory with an open file or directory anywhere below it does not move (access denied,
/// nothing changed); opens of the directory itself, beside it or of a file gone meanwhile do
/// not stop it. (Which view's opens count is the open table's part: `OpenTable::held_files`.)
#[test]
fn a_directory_with_opens_below_it_does_not_move() {
    let (_dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    let a = s.create(v, View::Live, ROOT_INO, "a", Kind::Dir, 1).unwrap();
    let b = s.create(v, View::Live, a, "b", Kind::Dir, 1).unwrap();
    let deep = s.create(v, View::Live, b, "deep.txt", Kind::File, 1).unwrap();
    let beside = s.create(v, View::Live, ROOT_INO, "beside.txt", Kind::File, 1).unwrap();
    let gone = s.create(v, View::Live, a, "gone.txt", Kind::File, 1).unwrap();
    s.unlink(v, View::Live, a, "gone.txt", 1).unwrap();
    for held in [vec![deep], vec![beside, b], vec![ROOT_INO, deep]] {
        let e = s.rename_unless(v, View::Live, ROOT_INO, "a", ROOT_INO, "z", false, 2, &Held(held.clone())).unwrap_err();
        assert!(matches!(e, VolumeError::OpenInTheWay(_)), "{held:?}: {e:?}");
        assert_eq!(s.lookup(v, View::Live, ROOT_INO, "a").unwrap().unwrap().ino, a, "unchanged");
        assert!(s.lookup(v, View::Live, ROOT_INO, "z").unwrap().is_none());
    }
    // Moving b (inside a) out is stopped by the file below b, not by opens of a or of b.
    let e = s.rename_unless(v, View::Live, a, "b", ROOT_INO, "b2", false, 2, &Held(vec![a, deep])).unwrap_err();
    assert!(matches!(e, VolumeError::OpenInTheWay(_)), "{e:?}");
    s.rename_unless(v, View::Live, a, "b", ROOT_INO, "b2", false, 3, &Held(vec![a, b, beside, gone, ROOT_INO])).unwrap();
    // A file renamed while something below its own directory is open moves as before.
    s.rename_unless(v, View::Live, ROOT_INO, "beside.txt", ROOT_INO, "moved.txt", false, 4, &Held(vec![beside, deep])).unwrap();
    // a no longer holds deep.txt (it went with b): a moves while deep.txt stays open.
    s.rename_unless(v, View::Live, ROOT_INO, "a", ROOT_INO, "z", false, 5, &Held(vec![deep, a])).unwrap();
    assert_eq!(s.lookup(v, View::Live, ROOT_INO, "z").unwrap().unwrap().ino, a);
    let e = s.rename_unless(v, View::Live, ROOT_INO, "b2", ROOT_INO, "b3", false, 6, &Held(vec![deep])).unwrap_err();
    assert!(matches!(e, VolumeError::OpenInTheWay(_)), "deep.txt is below b2 now: {e:?}");
}

/// A write at offset u64::MAX (MS-FSA's write to end of file) lands at the file's end as it is
/// then; other writes past the largest file are refused.
#[test]
fn a_write_at_the_end_offset_appends() {
    let (_dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    let ino = s.create(v, View::Live, ROOT_INO, "log", Kind::File, 1).unwrap();
    s.write(v, View::Live, ino, 0, b"one,", 2).unwrap();
    s.write(v, View::Live, ino, super::data::WRITE_AT_END, b"two,", 3).unwrap();
    s.write(v, View::Live, ino, super::data::WRITE_AT_END, b"three", 4).unwrap();
    assert_eq!(s.read(v, View::Live, ino, 0, 100).unwrap(), b"one,two,three");
    assert!(matches!(s.write(v, View::Live, ino, u64::MAX - 2, b"x", 5), Err(VolumeError::TooLarge { .. })));
}

/// A release for a token no fence was raised with (the fence call failed on its way) is
/// refused, and the fence, if it arrives after, is refused too: no orphan fence holds the
/// volume for a TTL. A retried release gets the recorded answer.
#[test]
fn a_fence_that_arrives_after_its_release_is_refused() {
    use std::time::Duration;
    let (_dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    assert!(matches!(s.release(v, 7), Err(VolumeError::StaleToken { .. })));
    assert!(matches!(s.fence(v, 7, Duration::from_secs(5), Uuid::new_v4(), 2), Err(VolumeError::StaleToken { .. })));
    assert!(!s.fenced(v).unwrap());
    s.fence(v, 8, Duration::from_secs(5), Uuid::new_v4(), 3).unwrap();
    assert_eq!(s.release(v, 8).unwrap().0, Released::Held);
    assert_eq!(s.release(v, 8).unwrap().0, Released::Held, "a retry gets the recorded answer");
}

#[test]
fn a_mutation_asked_not_to_wait_is_refused_at_a_fence_and_changes_nothing() {
    use std::time::Duration;
    let (_dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    let ino = s.create(v, View::Live, ROOT_INO, "f", Kind::File, 1).unwrap();
    s.fence(v, 1, Duration::from_secs(30), Uuid::new_v4(), 2).unwrap();
    let refused = super::gate::refusing_at_fence(|| s.write(v, View::Live, ino, 0, b"held", 3));
    assert!(matches!(refused, Err(VolumeError::AtFence)), "{refused:?}");
    assert!(matches!(super::gate::refusing_at_fence(|| s.create(v, View::Live, ROOT_INO, "g", Kind::File, 3)), Err(VolumeError::AtFence)));
    assert_eq!(s.stat(v, View::Live, ino).unwrap().size, 0);
    assert!(s.lookup(v, View::Live, ROOT_INO, "g").unwrap().is_none(), "nothing was created");
    assert_eq!(s.release(v, 1).unwrap().0, Released::Held);
    // With no fence the same call goes through, and the flag does not outlive it.
    super::gate::refusing_at_fence(|| s.write(v, View::Live, ino, 0, b"free", 4)).unwrap();
    assert_eq!(s.read(v, View::Live, ino, 0, 4).unwrap(), b"free");
}

/// A thread that serves a connection runs a gated write while a fence holds: the write waits
/// without blocking the thread, so the fence's release (queued behind it on the same thread)
/// still runs, and then the write lands after the cut.
#[test]
fn a_write_on_a_serving_thread_waits_out_a_fence_without_blocking_the_thread() {
    use std::time::Duration;
    let (_dir, w) = world();
    let store = std::sync::Arc::new(w.store);
    let v = w.vol;
    let ino = store.create(v, View::Live, ROOT_INO, "f", Kind::File, 1).unwrap();
    let snap = Uuid::new_v4();
    store.fence(v, 7, Duration::from_secs(30), snap, 2).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let s = store.clone();
        let write = tokio::spawn(async move { s.run_unblocked(v, |s| s.write(v, View::Live, ino, 0, b"after", 3)).await });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!write.is_finished(), "the write is held by the fence");
        assert_eq!(store.release(v, 7).unwrap().0, Released::Held, "the release ran on the same thread");
        tokio::time::timeout(Duration::from_secs(5), write).await.expect("the write went on after the release").unwrap().unwrap();
    });
    store.snapshot_commit(v, snap).unwrap();
    assert_eq!(store.stat(v, View::Snapshot(snap), ino).unwrap().size, 0, "the cut is before the write");
    assert_eq!(store.read(v, View::Live, ino, 0, 5).unwrap(), b"after");
}

#[test]
fn the_close_watch_sees_the_store_closed_by_whichever_thread_drops_it_last() {
    use std::time::Duration;
    let (_dir, w) = world();
    let open = w.store.close_watch().unwrap();
    assert!(w.store.close_watch().is_none(), "one watch per store");
    assert!(!open.wait(Duration::from_millis(50)), "still open");
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(VolumeStore::open(dir.path()).unwrap());
    let watch = store.close_watch().unwrap();
    let held = store.clone();
    drop(store);
    let last = std::thread::spawn(move || drop(held));
    assert!(watch.wait(Duration::from_secs(30)), "closed on the other thread");
    last.join().unwrap();
    VolumeStore::open(dir.path()).expect("the database was closed cleanly and opens again");
}

#[test]
fn concurrent_syncs_are_group_committed() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(VolumeStore::open(dir.path()).unwrap());
    let vol = Uuid::new_v4();
    store.create_volume(vol, 0).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let ino = store.create(vol, View::Live, ROOT_INO, &format!("f{t}"), Kind::File, 1).unwrap();
                for i in 0..50u64 {
                    store.write(vol, View::Live, ino, i * 4096, &[1u8; 4096], 2).unwrap();
                    store.sync().unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let syncs = store.wal_syncs();
    assert!(syncs < 400, "400 write-through writes shared {syncs} WAL syncs");
    assert!(syncs > 0);
}

#[test]
fn sparse_files_report_allocated_ranges_and_set_info_changes_times_and_attributes() {
    let (_dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    let ino = s.create(v, View::Live, ROOT_INO, "sparse", Kind::File, 1).unwrap();
    let c = CHUNK_BYTES;
    s.write(v, View::Live, ino, 0, &[1u8; 10], 2).unwrap();
    s.write(v, View::Live, ino, 5 * c + 7, &[2u8; 10], 2).unwrap();
    s.write(v, View::Live, ino, 6 * c, &[3u8; 10], 2).unwrap();
    s.set_size(v, View::Live, ino, 100 * c, 3).unwrap();
    assert_eq!(s.allocated_ranges(v, View::Live, ino, 0, 100 * c).unwrap(), (vec![(0, c), (5 * c, 2 * c)], None));
    assert_eq!(s.allocated_ranges(v, View::Live, ino, 5 * c + 100, c).unwrap(), (vec![(5 * c + 100, c)], None));
    assert_eq!(s.stat(v, View::Live, ino).unwrap().allocated, 3 * c);
    s.write(v, View::Live, ino, 5 * c, &vec![0u8; c as usize], 4).unwrap();
    assert_eq!(s.allocated_ranges(v, View::Live, ino, 0, 100 * c).unwrap(), (vec![(0, c), (6 * c, c)], None), "zeroing a chunk makes it a hole");
    let info = SetInfo { created: Some(11), written: None, changed: Some(13), attributes: Some(0x20), sparse: None };
    let inode = s.set_info(v, View::Live, ino, info).unwrap();
    assert_eq!((inode.created, inode.written, inode.changed, inode.attributes), (11, 4, 13, 0x20));
    let sparse = SetInfo { sparse: Some(true), ..SetInfo::default() };
    assert_eq!(s.set_info(v, View::Live, ino, sparse).unwrap().attributes, 0x220);
    let attributes = SetInfo { attributes: Some(0x1 | ATTRIBUTE_SPARSE_FILE), ..SetInfo::default() };
    assert_eq!(s.set_info(v, View::Live, ino, attributes).unwrap().attributes, 0x201, "attributes keep the sparse bit as it is");
    let attributes = SetInfo { attributes: Some(0x20), ..SetInfo::default() };
    assert_eq!(s.set_info(v, View::Live, ino, attributes).unwrap().attributes, 0x220);
    let cleared = SetInfo { sparse: Some(false), ..SetInfo::default() };
    assert_eq!(s.set_info(v, View::Live, ino, cleared).unwrap().attributes, 0x20);
}

/// Zeroing a range larger than one step goes in steps, each saying where to go on; whole
/// chunks become holes, the ends are zeroed in place, the size stays, and a snapshot taken
/// before still reads the old data.
#[test]
fn zeroing_a_range_goes_in_bounded_steps_and_leaves_snapshots_as_they_were() {
    let (_dir, w) = world_on(Engine::Mem);
    let (s, v) = (&w.store, w.vol);
    let c = CHUNK_BYTES;
    let step = super::data::MAX_ZERO_STEP_CHUNKS;
    let ino = s.create(v, View::Live, ROOT_INO, "disk", Kind::File, 1).unwrap();
    let chunks = step + 3;
    for i in 0..chunks {
        s.write(v, View::Live, ino, i * c + 5, &[7u8; 3], 2).unwrap();
    }
    s.write(v, View::Live, ino, chunks * c, &[9u8; 10], 2).unwrap();
    let snap = uuid::Uuid::new_v4();
    s.snapshot_create(v, snap, 3).unwrap();
    let size = chunks * c + 10;
    // From inside chunk 0 to inside the last chunk, then past the end.
    let (from, len) = (6, chunks * c + 2 - 6);
    assert_eq!(s.zero_range(v, View::Live, ino, from, len, 4).unwrap(), Some(step * c), "one step, then where to go on");
    assert_eq!(s.zero_range(v, View::Live, ino, step * c, from + len - step * c, 4).unwrap(), None);
    assert_eq!(s.zero_range(v, View::Live, ino, size - 1, 100, 4).unwrap(), None, "past the end: up to the size only");
    let inode = s.stat(v, View::Live, ino).unwrap();
    assert_eq!(inode.size, size, "the size stays");
    let mut first = vec![0u8; c as usize];
    first[5] = 7;
    assert_eq!(s.read(v, View::Live, ino, 0, c).unwrap(), first, "zeroed from byte 6 on");
    for i in [1, step - 1, step, chunks - 1] {
        assert_eq!(s.read(v, View::Live, ino, i * c, c).unwrap(), vec![0u8; c as usize], "chunk {i}");
    }
    assert_eq!(s.read(v, View::Live, ino, chunks * c, c).unwrap(), [0, 0, 9, 9, 9, 9, 9, 9, 9, 0], "the last chunk zeroed up to the range's end, its last byte by the call past the end");
    assert_eq!(s.allocated_ranges(v, View::Live, ino, 0, u64::MAX).unwrap(), (vec![(0, c), (chunks * c, 10)], None), "whole chunks zeroed are holes");
    assert_eq!(inode.allocated, 2 * c);
    for i in [0, 1, step, chunks - 1] {
        assert_eq!(s.read(v, View::Snapshot(snap), ino, i * c + 5, 3).unwrap(), [7, 7, 7], "the snapshot reads the old data");
    }
    assert_eq!(s.read(v, View::Snapshot(snap), ino, chunks * c, 10).unwrap(), [9u8; 10]);
    assert!(matches!(s.zero_range(v, View::Snapshot(snap), ino, 0, 10, 5), Err(VolumeError::ReadOnly(_))), "a snapshot is read-only");
    assert!(matches!(s.zero_range(v, View::Live, ROOT_INO, 0, 10, 5), Err(VolumeError::IsADirectory)));

    // Holes cost nothing: a terabyte of them before the data takes no call of its own, and
    // a terabyte after it one seek.
    let far = s.create(v, View::Live, ROOT_INO, "far", Kind::File, 1).unwrap();
    s.write(v, View::Live, far, 1 << 40, &[1], 2).unwrap();
    s.set_size(v, View::Live, far, 2 << 40, 2).unwrap();
    let next = (1u64 << 40) + step * c;
    assert_eq!(s.zero_range(v, View::Live, far, 0, u64::MAX, 3).unwrap(), Some(next), "the data's step");
    assert_eq!(s.zero_range(v, View::Live, far, next, u64::MAX, 3).unwrap(), None, "then nothing stored");

    // A window whose stored chunks hold no data here (a version a snapshot keeps under a hole)
    // is passed over in the same call.
    let kept = s.create(v, View::Live, ROOT_INO, "kept", Kind::File, 1).unwrap();
    s.write(v, View::Live, kept, 0, &[1], 2).unwrap();
    s.write(v, View::Live, kept, 10 * step * c, &[1], 2).unwrap();
    s.snapshot_create(v, uuid::Uuid::new_v4(), 3).unwrap();
    assert_eq!(s.zero_range(v, View::Live, kept, 0, 1, 4).unwrap(), None);
    assert_eq!(s.zero_range(v, View::Live, kept, 0, u64::MAX, 5).unwrap(), None, "past the kept version's window to the data, in one call");
    assert_eq!(s.stat(v, View::Live, kept).unwrap().allocated, 0);
    assert_eq!(s.stat(v, View::Live, far).unwrap().allocated, 0);
    assert_eq!(s.zero_range(v, View::Live, far, 0, u64::MAX, 3).unwrap(), None, "nothing stored: one seek");
}

/// A deletion at last close unlinks a name only if it still names the file it was for: after
/// a rename put another file under the name, that file stays; the file's own name goes.
#[test]
fn unlink_if_deletes_a_name_only_while_it_names_the_file() {
    let (_dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    let doomed = s.create(v, View::Live, ROOT_INO, "doomed", Kind::File, 1).unwrap();
    let other = s.create(v, View::Live, ROOT_INO, "other", Kind::File, 1).unwrap();
    s.rename(v, View::Live, ROOT_INO, "doomed", ROOT_INO, "moved", false, 2).unwrap();
    s.rename(v, View::Live, ROOT_INO, "other", ROOT_INO, "doomed", false, 2).unwrap();
    assert!(!s.unlink_if(v, View::Live, ROOT_INO, "doomed", doomed, 3).unwrap(), "the name now names another file");
    assert_eq!(s.lookup(v, View::Live, ROOT_INO, "doomed").unwrap().unwrap().ino, other);
    assert!(s.unlink_if(v, View::Live, ROOT_INO, "moved", doomed, 3).unwrap());
    assert!(s.lookup(v, View::Live, ROOT_INO, "moved").unwrap().is_none());
    assert!(!s.unlink_if(v, View::Live, ROOT_INO, "moved", doomed, 4).unwrap(), "already gone: nothing to do");
}

/// An allocated-ranges answer looks at a bounded part of the file and gives a bounded number
/// of ranges, saying where to ask again; asking again from there gives the rest.
#[test]
fn allocated_ranges_are_bounded_and_say_where_to_ask_again() {
    let (_dir, w) = world_on(Engine::Mem);
    let (s, v) = (&w.store, w.vol);
    let ino = s.create(v, View::Live, ROOT_INO, "holes", Kind::File, 1).unwrap();
    let c = CHUNK_BYTES;
    let n = super::data::MAX_ALLOCATED_SCAN_CHUNKS / 2 + 1;
    for i in 0..n {
        s.write(v, View::Live, ino, 2 * i * c, &[1], 2).unwrap(); // every other chunk
    }
    let (first, more) = s.allocated_ranges(v, View::Live, ino, 0, c).unwrap();
    assert_eq!((first, more), (vec![(0, c)], None), "only the range asked");
    let (all, more) = s.allocated_ranges(v, View::Live, ino, 0, u64::MAX).unwrap();
    let window = super::data::MAX_ALLOCATED_SCAN_CHUNKS * c;
    assert_eq!((all.len() as u64, more), (n - 1, Some(window)), "one window of chunks");
    let (rest, more) = s.allocated_ranges(v, View::Live, ino, window, u64::MAX).unwrap();
    assert_eq!((rest, more), (vec![(2 * (n - 1) * c, 1)], None), "asked again from there");
}

#[test]
fn a_chunk_changed_in_the_data_log_is_handed_out_unread_and_fails_its_check_where_it_is_used() {
    let (dir, w) = world();
    let (s, v) = (&w.store, w.vol);
    let ino = s.create(v, View::Live, ROOT_INO, "f", Kind::File, 1).unwrap();
    // Bytes that do not repeat, so a window of them is found in one place only.
    let mut x = 1u64;
    let data: Vec<u8> = (0..3 * CHUNK_BYTES as usize)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as u8
        })
        .collect();
    s.write(v, View::Live, ino, 0, &data, 2).unwrap();
    assert_eq!(checked(s.read_shared(v, View::Live, ino, 0, data.len() as u64).unwrap()), data);
    // One byte of the second chunk changes in its data log segment (as a disk that gives a
    // page back wrong would have it).
    let damaged = files_under(dir.path()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "log")).find_map(|path| {
        let bytes = std::fs::read(&path).ok()?;
        let at = bytes.windows(64).position(|w| w == &data[CHUNK_BYTES as usize..CHUNK_BYTES as usize + 64])?;
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_at(&[!bytes[at + 10]], (at + 10) as u64).unwrap();
        Some(path)
    });
    assert!(damaged.is_some(), "the chunk lies in a data log segment");
    // Handed out without being read, with the checksum it was stored with: the check fails on
    // the second chunk's span, and only there.
    let pieces = s.read_shared(v, View::Live, ino, 0, data.len() as u64).unwrap();
    assert_eq!(pieces.len(), 1, "the chunks, written together, go out as one piece");
    let (piece, c) = (&pieces[0], CHUNK_BYTES as usize);
    assert_eq!(piece.spans.len(), 3, "a span for each chunk");
    let checks: Vec<umbra_proto::v1::Check> = piece.spans.iter().map(|&s| s.into()).collect();
    assert!(matches!(umbra_proto::checks::verify(&piece.data, &checks), Err(umbra_proto::checks::CheckError::Mismatch { at, end, .. }) if (at, end) == (c, 2 * c)));
    for i in [0, 2] {
        umbra_proto::checks::verify(&piece.data[i * c..(i + 1) * c], &checks[i..i + 1]).expect("the other chunks pass");
    }
    // A read in the process checks it and refuses.
    assert!(matches!(s.read(v, View::Live, ino, 0, data.len() as u64), Err(VolumeError::Storage(m)) if m.contains("checksum")));
    // The chunks around it still read.
    assert_eq!(s.read(v, View::Live, ino, 0, CHUNK_BYTES).unwrap(), data[..CHUNK_BYTES as usize]);
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_chunk_whose_bytes_changed_on_disk_fails_its_checksum_on_read() {
    for engine in [Engine::Rocks, Engine::Mem] {
        let (_dir, w) = world_on(engine);
        let (s, v) = (&w.store, w.vol);
        let ino = s.create(v, View::Live, ROOT_INO, "f", Kind::File, 1).unwrap();
        s.write(v, View::Live, ino, 0, b"intact data", 2).unwrap();
        assert_eq!(s.read(v, View::Live, ino, 0, 11).unwrap(), b"intact data");
        let (key, mut value) = s.kv.scan(super::store::CF_CHUNKS, &[]).next().unwrap().unwrap();
        assert_eq!(value.len(), 11 + super::data::CHUNK_CRC_BYTES, "the data, then its CRC32C");
        value[3] ^= 0x20;
        let mut batch = kv::Batch::default();
        batch.put(super::store::CF_CHUNKS, key.to_vec(), value.to_vec());
        s.kv.write(batch, kv::Durability::Buffered).unwrap();
        let err = s.read(v, View::Live, ino, 0, 11).unwrap_err();
        assert!(matches!(&err, VolumeError::Storage(m) if m.contains("checksum")), "{engine:?}: {err:?}");
        // A partial write over it refuses too, rather than spreading the damage.
        assert!(s.write(v, View::Live, ino, 4, b"x", 3).is_err());
    }
}
