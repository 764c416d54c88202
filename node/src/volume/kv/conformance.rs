//! One conformance suite for every [`Kv`] engine: each test runs on RocksDB and on the
//! in-memory engine, and a property test checks random batches against a plain ordered map.
//! The crash model of the in-memory engine (what a process death and a power loss keep) is
//! tested at the end.

use std::collections::BTreeMap;
use std::ops::Bound;

use proptest::prelude::*;

use super::*;

/// RocksKv's default: chunk values above it go to the data log.
const INLINE_MAX: usize = 4096;

/// An engine under test and a way to reopen it on what it stored (a restart).
struct Subject {
    reopen: Box<dyn Fn() -> Box<dyn Kv>>,
    _dir: Option<tempfile::TempDir>,
}

fn rocks() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    Subject { reopen: Box::new(move || Box::new(RocksKv::open(&path).unwrap())), _dir: Some(dir) }
}

/// RocksDB with every non-empty chunk value in the data log, restarted by a process death: the
/// engine is left open (RocksDB's memtables never written) and a copy of its files as the page
/// cache holds them is opened, so every reopen replays the log.
fn rocks_crashing() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let opened = std::sync::atomic::AtomicUsize::new(0);
    let reopen = move || -> Box<dyn Kv> {
        let n = opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = root.join(n.to_string());
        if n > 0 {
            copy_dir(&root.join((n - 1).to_string()), &path);
        }
        Box::new(RocksKv::open_with(&path, 0, true).unwrap())
    };
    Subject { reopen: Box::new(reopen), _dir: Some(dir) }
}

/// Copies a directory tree (what a crashed engine left on disk).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// After a failed sync no later sync succeeds (a retried fsync may return 0 for pages the
/// kernel dropped), and the engine does not close as if clean.
#[test]
fn a_broken_data_log_makes_no_later_sync_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let kv = RocksKv::open_with(dir.path(), 0, false).unwrap();
    let mut b = Batch::default();
    b.put(Cf::Chunks, b"k".to_vec(), vec![7u8; 10_000]);
    kv.write(b, Durability::Synced).unwrap();
    kv.break_writer();
    assert!(kv.sync_wal().is_err(), "a sync after the writer broke");
    let mut b = Batch::default();
    b.put(Cf::Chunks, b"j".to_vec(), vec![7u8; 10]);
    assert!(kv.write(b, Durability::Synced).is_err());
    drop(kv);
    assert!(!dir.path().join("datalog").join("clean").exists(), "no clean marker for a broken log");
}

/// An open that fails after the replay (here on a chunk value of no known form) writes no
/// clean marker and removes nothing on its way out: without the live counts its checkpoint
/// would have taken every old segment for empty.
#[test]
fn an_open_that_fails_leaves_the_data_log_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (live, lost) = (dir.path().join("live"), dir.path().join("lost"));
    let kv = RocksKv::open_with(&live, 0, true).unwrap();
    let mut b = Batch::default();
    b.put(Cf::Chunks, b"k".to_vec(), vec![9u8; 100_000]);
    kv.write(b, Durability::Synced).unwrap();
    drop(kv); // a crash: no clean marker, so the next open counts the live extents
    copy_dir(&live, &lost);
    {
        let mut opts = rocksdb::Options::default();
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, &lost, Cf::ALL.iter().map(|c| c.name())).unwrap();
        db.put_cf(db.cf_handle(Cf::Chunks.name()).unwrap(), b"bad", [0xEE, 1, 2, 3]).unwrap();
    }
    let listing = |p: &std::path::Path| -> Vec<(String, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(p.join("datalog")).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len())).collect();
        v.sort();
        v
    };
    let before = listing(&lost);
    assert!(RocksKv::open_with(&lost, 0, false).is_err(), "a chunk value of no known form");
    assert_eq!(listing(&lost), before, "the data log as it was, and no clean marker");
}

fn mem() -> Subject {
    let disk = MemKv::new();
    Subject { reopen: Box::new(move || Box::new(disk.clone())), _dir: None }
}

fn put(kv: &dyn Kv, cf: Cf, key: &[u8], value: &[u8]) {
    let mut b = Batch::default();
    b.put(cf, key, value);
    kv.write(b, Durability::Buffered).unwrap();
}

fn all(kv: &dyn Kv, cf: Cf, from: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    kv.scan(cf, from).map(|i| i.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect::<Result<_>>().unwrap()
}

fn seek(kv: &dyn Kv, cf: Cf, from: &[u8], how: Seek) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut out = None;
    let found = kv.seek(cf, from, how, Verify::Yes, &mut |k, v| out = Some((k.to_vec(), v.to_vec()))).unwrap();
    assert_eq!(found, out.is_some());
    out
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod rocks_kv {
            $( #[test] fn $test() { super::$test(super::rocks()) } )*
        }
        mod rocks_kv_crashing {
            $( #[test] fn $test() { super::$test(super::rocks_crashing()) } )*
        }
        mod mem_kv {
            $( #[test] fn $test() { super::$test(super::mem()) } )*
        }
    };
}

conformance!(
    column_families_are_separate,
    a_batch_applies_whole_and_in_order,
    delete_range_is_half_open,
    seek_finds_the_first_key_at_or_after_its_start,
    scan_returns_keys_in_byte_order_from_its_start,
    the_sequence_grows_with_every_batch,
    what_was_written_survives_a_restart,
    disk_bytes_follow_what_is_stored,
    a_shared_value_is_the_value,
);

fn column_families_are_separate(s: Subject) {
    let kv = (s.reopen)();
    for (i, cf) in Cf::ALL.into_iter().enumerate() {
        put(&*kv, cf, b"k", &[i as u8]);
    }
    for (i, cf) in Cf::ALL.into_iter().enumerate() {
        assert_eq!(kv.get(cf, b"k").unwrap(), Some(vec![i as u8]), "{cf:?}");
        assert_eq!(all(&*kv, cf, b"").len(), 1);
    }
    assert_eq!(kv.get(Cf::Meta, b"absent").unwrap(), None);
}

fn a_batch_applies_whole_and_in_order(s: Subject) {
    let kv = (s.reopen)();
    put(&*kv, Cf::Meta, b"gone", b"1");
    let mut b = Batch::default();
    b.put(Cf::Meta, b"a", b"1");
    b.delete(Cf::Meta, b"a".to_vec());
    b.delete(Cf::Meta, b"b".to_vec());
    b.put(Cf::Meta, b"b", b"2");
    b.put(Cf::Dead, b"c", b"3");
    b.put(Cf::Dead, b"c", b"4");
    b.delete(Cf::Meta, b"gone".to_vec());
    kv.write(b, Durability::Synced).unwrap();
    assert_eq!(kv.get(Cf::Meta, b"a").unwrap(), None, "a put then a delete in one batch: deleted");
    assert_eq!(kv.get(Cf::Meta, b"b").unwrap(), Some(b"2".to_vec()), "a delete then a put: present");
    assert_eq!(kv.get(Cf::Dead, b"c").unwrap(), Some(b"4".to_vec()), "the later put wins");
    assert_eq!(kv.get(Cf::Meta, b"gone").unwrap(), None);
    kv.write(Batch::default(), Durability::Buffered).unwrap();
}

fn delete_range_is_half_open(s: Subject) {
    let kv = (s.reopen)();
    for k in [&b"a"[..], b"b", b"b\0", b"bz", b"c", b"d"] {
        put(&*kv, Cf::Chunks, k, b"v");
    }
    let mut b = Batch::default();
    b.delete_range(Cf::Chunks, b"b".to_vec(), b"c".to_vec());
    kv.write(b, Durability::Buffered).unwrap();
    let keys: Vec<Vec<u8>> = all(&*kv, Cf::Chunks, b"").into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]);
}

fn seek_finds_the_first_key_at_or_after_its_start(s: Subject) {
    let kv = (s.reopen)();
    // Chunk-shaped keys: a fixed-length object and an 8-byte suffix (the store's versions).
    let object = |o: u8| vec![o; crate::volume::store::CHUNK_OBJECT_BYTES];
    let key = |o: u8, v: u8| {
        let mut k = object(o);
        k.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, v]);
        k
    };
    for (o, v) in [(1, 2), (1, 5), (3, 1)] {
        put(&*kv, Cf::Chunks, &key(o, v), &[o, v]);
    }
    for how in [Seek::TotalOrder, Seek::SamePrefix(crate::volume::store::CHUNK_OBJECT_BYTES)] {
        assert_eq!(seek(&*kv, Cf::Chunks, &key(1, 0), how), Some((key(1, 2), vec![1, 2])));
        assert_eq!(seek(&*kv, Cf::Chunks, &key(1, 2), how), Some((key(1, 2), vec![1, 2])), "an exact match");
        assert_eq!(seek(&*kv, Cf::Chunks, &key(1, 3), how), Some((key(1, 5), vec![1, 5])));
        assert_eq!(seek(&*kv, Cf::Chunks, &key(3, 0), how), Some((key(3, 1), vec![3, 1])));
        assert_eq!(seek(&*kv, Cf::Chunks, &key(4, 0), how), None, "past the last key");
        // Another object's key: a same-prefix seek may skip it, a total-order one may not.
        match (how, seek(&*kv, Cf::Chunks, &key(2, 0), how)) {
            (Seek::TotalOrder, found) => assert_eq!(found, Some((key(3, 1), vec![3, 1]))),
            (Seek::SamePrefix(_), found) => assert!(found.is_none() || found == Some((key(3, 1), vec![3, 1]))),
        }
    }
    assert_eq!(seek(&*kv, Cf::Meta, b"", Seek::TotalOrder), None, "an empty column family");
}

/// [`Kv::seek_shared`] gives the value as its head and tail, whatever its size, and only for
/// a key the caller wants.
fn a_shared_value_is_the_value(s: Subject) {
    let kv = (s.reopen)();
    let values = [Vec::new(), vec![3u8; 100], vec![5u8; INLINE_MAX + 1], (0..64 * 1024 + 4).map(|b| b as u8).collect(), vec![9u8; 64 * 1024 + 100]];
    for (i, v) in values.iter().enumerate() {
        put(&*kv, Cf::Chunks, &[i as u8], v);
    }
    for (i, v) in values.iter().enumerate() {
        let (head, tail) = kv.seek_shared(Cf::Chunks, &[i as u8], Seek::TotalOrder, &mut |k| k == [i as u8]).unwrap().expect("found");
        assert!([&head[..], &tail[..]].concat() == *v, "value {i} ({} bytes)", v.len());
    }
    assert!(kv.seek_shared(Cf::Chunks, &[0], Seek::TotalOrder, &mut |_| false).unwrap().is_none(), "a key not wanted");
    assert!(kv.seek_shared(Cf::Chunks, &[99], Seek::TotalOrder, &mut |_| true).unwrap().is_none(), "past the last key");
}

fn scan_returns_keys_in_byte_order_from_its_start(s: Subject) {
    let kv = (s.reopen)();
    let keys: [&[u8]; 6] = [b"\x02", b"\x01\xff", b"\x01", b"\x01\x00", b"\x00", b"\x01\x00\x00"];
    for k in keys {
        put(&*kv, Cf::Dirents, k, k);
    }
    let from: Vec<Vec<u8>> = all(&*kv, Cf::Dirents, b"\x01\x00").into_iter().map(|(k, v)| {
        assert_eq!(k, v);
        k
    }).collect();
    assert_eq!(from, vec![b"\x01\x00".to_vec(), b"\x01\x00\x00".to_vec(), b"\x01\xff".to_vec(), b"\x02".to_vec()]);
    assert_eq!(all(&*kv, Cf::Dirents, b"").len(), 6);
    assert!(all(&*kv, Cf::Dirents, b"\x03").is_empty());
}

fn the_sequence_grows_with_every_batch(s: Subject) {
    let kv = (s.reopen)();
    let mut last = kv.sequence();
    for i in 0..5u8 {
        put(&*kv, Cf::Meta, &[i], b"v");
        let now = kv.sequence();
        assert!(now > last, "batch {i}: {now} after {last}");
        last = now;
    }
    kv.sync_wal().unwrap();
    assert_eq!(kv.sequence(), last, "a sync writes no batch");
}

fn what_was_written_survives_a_restart(s: Subject) {
    {
        let kv = (s.reopen)();
        put(&*kv, Cf::Inodes, b"buffered", b"1");
        let mut b = Batch::default();
        b.put(Cf::Inodes, b"synced", b"2");
        kv.write(b, Durability::Synced).unwrap();
        put(&*kv, Cf::Inodes, b"after", b"3");
    }
    let kv = (s.reopen)();
    assert_eq!(all(&*kv, Cf::Inodes, b"").len(), 3);
    assert_eq!(kv.get(Cf::Inodes, b"after").unwrap(), Some(b"3".to_vec()));
}

fn disk_bytes_follow_what_is_stored(s: Subject) {
    let kv = (s.reopen)();
    // Bytes no compressor shrinks.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let value: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for i in 0..16u8 {
        let mut v = value.clone();
        v[0] = i;
        put(&*kv, Cf::Chunks, &[i], &v);
    }
    kv.flush(Cf::Chunks).unwrap();
    let full = kv.disk_bytes(Cf::Chunks).unwrap();
    assert!(full >= 16 * 64 * 1024, "{full} bytes for 1 MiB of values");
    let mut b = Batch::default();
    b.delete_range(Cf::Chunks, vec![0u8], vec![16u8]);
    kv.write(b, Durability::Buffered).unwrap();
    kv.flush(Cf::Chunks).unwrap();
    kv.compact(Cf::Chunks).unwrap();
    let emptied = kv.disk_bytes(Cf::Chunks).unwrap();
    assert!(emptied < full / 4, "{emptied} bytes left of {full} after deleting everything");
}

// ----- random batches against an ordered map -----

#[derive(Clone, Debug)]
enum Change {
    Put(usize, Vec<u8>, Vec<u8>),
    Delete(usize, Vec<u8>),
    DeleteRange(usize, Vec<u8>, Vec<u8>),
}

fn small_key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..4, 0..4)
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (0usize..5, small_key(), prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(cf, k, v)| Change::Put(cf, k, v)),
        2 => (0usize..5, small_key()).prop_map(|(cf, k)| Change::Delete(cf, k)),
        1 => (0usize..5, small_key(), small_key()).prop_map(|(cf, a, b)| Change::DeleteRange(cf, a.clone().min(b.clone()), a.max(b))),
    ]
}

type Model = [BTreeMap<Vec<u8>, Vec<u8>>; 5];

fn check_against(kv: &dyn Kv, model: &Model, probes: &[Vec<u8>]) -> std::result::Result<(), TestCaseError> {
    for cf in Cf::ALL {
        let m = &model[cf.index()];
        let expect: Vec<(Vec<u8>, Vec<u8>)> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(all(kv, cf, b""), expect);
        for p in probes {
            prop_assert_eq!(kv.get(cf, p).unwrap(), m.get(p).cloned());
            let first = m.range::<[u8], _>((Bound::Included(p.as_slice()), Bound::Unbounded)).next().map(|(k, v)| (k.clone(), v.clone()));
            prop_assert_eq!(seek(kv, cf, p, Seek::TotalOrder), first.clone());
            let from: Vec<(Vec<u8>, Vec<u8>)> = m.range::<[u8], _>((Bound::Included(p.as_slice()), Bound::Unbounded)).map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(all(kv, cf, p), from);
        }
    }
    Ok(())
}

/// The batch of `changes` (each value put through `value`), applied to `model` as well.
fn batch_of(changes: Vec<Change>, model: &mut Model, value: impl Fn(Vec<u8>) -> Vec<u8>) -> Batch {
    let mut b = Batch::default();
    for c in changes {
        match c {
            Change::Put(cf, k, v) => {
                let v = value(v);
                b.put(Cf::ALL[cf], k.clone(), v.clone());
                model[cf].insert(k, v);
            }
            Change::Delete(cf, k) => {
                b.delete(Cf::ALL[cf], k.clone());
                model[cf].remove(&k);
            }
            Change::DeleteRange(cf, from, to) => {
                b.delete_range(Cf::ALL[cf], from.clone(), to.clone());
                model[cf].retain(|k, _| !(k >= &from && k < &to));
            }
        }
    }
    b
}

fn random_batches(s: Subject, batches: Vec<(Vec<Change>, bool, bool)>, probes: Vec<Vec<u8>>) -> std::result::Result<(), TestCaseError> {
    let mut model: Model = Default::default();
    let mut kv = Some((s.reopen)());
    for (changes, synced, restart) in batches {
        let b = batch_of(changes, &mut model, |v| v);
        let durability = if synced { Durability::Synced } else { Durability::Buffered };
        kv.as_ref().unwrap().write(b, durability).unwrap();
        if restart {
            drop(kv.take()); // RocksDB's lock goes with the handle
            kv = Some((s.reopen)());
        }
        check_against(&**kv.as_ref().unwrap(), &model, &probes)?;
    }
    Ok(())
}

fn batches() -> impl Strategy<Value = Vec<(Vec<Change>, bool, bool)>> {
    prop::collection::vec((prop::collection::vec(change(), 0..6), any::<bool>(), prop::bool::weighted(0.1)), 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn rocks_kv_reads_like_an_ordered_map(batches in batches(), probes in prop::collection::vec(small_key(), 1..4)) {
        random_batches(rocks(), batches, probes)?;
    }

    #[test]
    fn rocks_kv_restarted_by_crashes_reads_like_an_ordered_map(batches in batches(), probes in prop::collection::vec(small_key(), 1..4)) {
        random_batches(rocks_crashing(), batches, probes)?;
    }

    #[test]
    fn mem_kv_reads_like_an_ordered_map(batches in batches(), probes in prop::collection::vec(small_key(), 1..4)) {
        random_batches(mem(), batches, probes)?;
    }
}

// ----- the in-memory engine's crash model -----

#[test]
fn a_power_loss_keeps_what_was_synced_and_the_prefix_that_reached_the_disk() {
    let kv = MemKv::new();
    put(&kv, Cf::Meta, b"1", b"");
    let mut b = Batch::default();
    b.put(Cf::Meta, b"2", b"");
    kv.write(b, Durability::Synced).unwrap();
    assert_eq!(kv.unsynced_batches(), 0, "a synced write covers every earlier one");
    for k in [b"3", b"4", b"5"] {
        put(&kv, Cf::Meta, k, b"");
    }
    assert_eq!(kv.unsynced_batches(), 3);
    kv.power_loss(1);
    let keys: Vec<Vec<u8>> = all(&kv, Cf::Meta, b"").into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);
    // What survived is on the disk: a second power loss keeps it.
    kv.power_loss(0);
    assert_eq!(all(&kv, Cf::Meta, b"").len(), 3);
    put(&kv, Cf::Meta, b"6", b"");
    kv.sync_wal().unwrap();
    kv.power_loss(0);
    assert_eq!(all(&kv, Cf::Meta, b"").len(), 4, "sync_wal makes earlier writes durable");
}

#[test]
fn with_syncs_broken_a_power_loss_drops_synced_writes() {
    let kv = MemKv::new();
    kv.break_syncs_for_tests();
    let mut b = Batch::default();
    b.put(Cf::Meta, b"synced", b"");
    kv.write(b, Durability::Synced).unwrap();
    kv.power_loss(0);
    assert_eq!(kv.get(Cf::Meta, b"synced").unwrap(), None);
}

#[test]
fn a_scan_reads_a_snapshot_of_the_in_memory_table() {
    let kv = MemKv::new();
    put(&kv, Cf::Meta, b"a", b"");
    put(&kv, Cf::Meta, b"b", b"");
    let mut scan = kv.scan(Cf::Meta, b"");
    assert_eq!(&*scan.next().unwrap().unwrap().0, b"a");
    put(&kv, Cf::Meta, b"c", b"");
    assert_eq!(&*scan.next().unwrap().unwrap().0, b"b");
    assert!(scan.next().is_none());
}

// ----- the data log under RocksKv: power losses -----

/// What a power loss did to the log past a point.
#[derive(Clone, Debug)]
enum Damage {
    Truncated,
    /// Pages that never reached the disk (zeros) or stale bytes, the file's length kept.
    Overwritten(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        Just(Damage::Truncated),
        (1usize..20_000).prop_map(|n| Damage::Overwritten(vec![0; n])),
        prop::collection::vec(any::<u8>(), 1..5000).prop_map(Damage::Overwritten),
    ]
}

/// A power loss under RocksKv: the process dies, then the log keeps what was synced, and of what
/// followed, pages reached the disk in any order: from any point on, a stretch of it reads as
/// zeros or garbage, or the file ends there. The
/// reopened engine holds the state after some batch at or past the last synced one: a prefix,
/// never a hole, never a half batch.
fn power_loss_keeps_a_prefix(batches: Vec<(Vec<Change>, bool)>, cut: prop::sample::Index, damage: Damage) -> std::result::Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (live, lost) = (dir.path().join("live"), dir.path().join("lost"));
    let kv = RocksKv::open_with(&live, 0, true).unwrap();
    let mut model: Model = Default::default();
    let mut states = vec![model.clone()];
    let (mut synced_state, mut synced_end) = (0, kv.log_end());
    for (changes, synced) in batches {
        // Values that span pages, so records carry data.
        let b = batch_of(changes, &mut model, |v| v.iter().copied().cycle().take(v.len() * 1000).collect());
        kv.write(b, if synced { Durability::Synced } else { Durability::Buffered }).unwrap();
        states.push(model.clone());
        if synced {
            (synced_state, synced_end) = (states.len() - 1, kv.log_end());
        }
    }
    let end = kv.log_end();
    drop(kv); // a crash: RocksDB's memtables are gone with the process
    copy_dir(&live, &lost);
    let at = synced_end + cut.index((end - synced_end + 1) as usize) as u64;
    let segment = lost.join("datalog").join(format!("{:016x}.log", at / log::SEGMENT_BYTES));
    let f = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    match damage {
        Damage::Truncated => f.set_len(at % log::SEGMENT_BYTES).unwrap(),
        Damage::Overwritten(bytes) => std::os::unix::fs::FileExt::write_all_at(&f, &bytes, at % log::SEGMENT_BYTES).unwrap(),
    }
    drop(f);
    let kv = RocksKv::open_with(&lost, 0, false).unwrap();
    let found: Vec<Vec<(Vec<u8>, Vec<u8>)>> = Cf::ALL.iter().map(|&cf| all(&kv, cf, b"")).collect();
    let as_lists = |m: &Model| -> Vec<Vec<(Vec<u8>, Vec<u8>)>> { m.iter().map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).collect() };
    let kept = states.iter().enumerate().skip(synced_state).find(|(_, m)| as_lists(m) == found).map(|(i, _)| i);
    prop_assert!(kept.is_some(), "after a power loss the store matches no state from the last synced batch ({synced_state}) on");
    // What survived is whole: written again, it reads back after a clean restart.
    drop(kv);
    let kv = RocksKv::open_with(&lost, 0, false).unwrap();
    prop_assert_eq!(Cf::ALL.iter().map(|&cf| all(&kv, cf, b"")).collect::<Vec<_>>(), found);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn rocks_kv_after_a_power_loss_holds_a_prefix_with_every_synced_batch(
        batches in prop::collection::vec((prop::collection::vec(change(), 0..6), prop::bool::weighted(0.3)), 1..10),
        cut in any::<prop::sample::Index>(),
        damage in damage(),
    ) {
        power_loss_keeps_a_prefix(batches, cut, damage)?;
    }
}

#[test]
fn freed_log_pages_go_back_to_the_disk_and_empty_segments_go() {
    let dir = tempfile::tempdir().unwrap();
    let kv = RocksKv::open(dir.path()).unwrap();
    let value = vec![7u8; 64 * 1024];
    for i in 0..64u8 {
        put(&kv, Cf::Chunks, &[i], &value);
    }
    kv.flush(Cf::Chunks).unwrap();
    let full = kv.disk_bytes(Cf::Chunks).unwrap();
    assert!(full >= 64 * 64 * 1024, "{full}");
    // Overwrites free the old extents at the next checkpoint.
    for i in 0..64u8 {
        put(&kv, Cf::Chunks, &[i], &value);
    }
    kv.flush(Cf::Chunks).unwrap();
    let after = kv.disk_bytes(Cf::Chunks).unwrap();
    assert!(after < full + full / 8, "{after} bytes after overwriting {full}: the old extents stay");
    let mut b = Batch::default();
    b.delete_range(Cf::Chunks, vec![0u8], vec![64u8]);
    kv.write(b, Durability::Buffered).unwrap();
    kv.flush(Cf::Chunks).unwrap();
    let emptied = kv.disk_bytes(Cf::Chunks).unwrap();
    assert!(emptied < 64 * 1024, "{emptied} bytes left after deleting everything");
}

/// A value handed out from the log's mapping keeps its bytes while it is held, though what
/// it was read from is overwritten and checkpointed: its pages are punched only at the first
/// checkpoint after it is dropped. A close while one is held leaves no clean marker, and the
/// next open finds every value and frees the pages.
#[test]
fn a_value_handed_out_keeps_its_pages_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let shared = |kv: &RocksKv, i: u32| kv.seek_shared(Cf::Chunks, &i.to_be_bytes(), Seek::TotalOrder, &mut |_| true).unwrap().expect("found");
    // Pages the data log's segments take on disk.
    let log_bytes = || -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(dir.path().join("datalog")).unwrap().map(|e| e.unwrap()).filter(|e| e.file_name().to_string_lossy().ends_with(".log")).map(|e| e.metadata().unwrap().blocks() * 512).sum()
    };
    let page = log::pages(64 * 1024);
    let kv = RocksKv::open(dir.path()).unwrap();
    put_chunks(&kv, 0..16, 0, 4);
    kv.flush(Cf::Chunks).unwrap();
    let (head, tail) = shared(&kv, 3);
    assert!([&head[..], &tail[..]].concat() == chunk_value(3, 0));
    // Values written in one batch lie one after the other: joined, they are one piece.
    let heads: Vec<Bytes> = (0..4).map(|i| shared(&kv, i).0).collect();
    let joined = kv.join_shared(heads.clone());
    assert_eq!(joined.len(), 1, "four adjacent values are one piece");
    assert!(joined[0] == heads.concat(), "and read as the four");
    let apart = kv.join_shared(vec![heads[0].clone(), heads[2].clone(), Bytes::from_static(b"x")]);
    assert_eq!(apart.len(), 3, "values that are not adjacent, or not mapped, stay apart");
    drop((heads, joined, apart));
    let base = log_bytes();
    put_chunks(&kv, 0..16, 1, 4);
    kv.flush(Cf::Chunks).unwrap();
    kv.checkpoint_under_load().unwrap();
    assert!(head[..] == chunk_value(3, 0)[..head.len()], "the held value's bytes are as they were read");
    let held = log_bytes();
    assert!(held >= base + page, "{base} -> {held}: the held value's pages stay");
    drop((head, tail));
    kv.flush(Cf::Chunks).unwrap();
    let after = log_bytes();
    assert!(after + page <= held, "{held} -> {after}: its pages go once it is dropped");

    // Held through the close.
    let kept = shared(&kv, 5);
    put_chunks(&kv, 5..6, 2, 1);
    drop(kv);
    assert!(!dir.path().join("datalog").join("clean").exists(), "no clean marker while a value is out");
    assert!(kept.0[..] == chunk_value(5, 1)[..kept.0.len()], "still as read after the close");
    drop(kept);
    let kv = RocksKv::open(dir.path()).unwrap();
    for i in 0..16u32 {
        assert_eq!(kv.get(Cf::Chunks, &i.to_be_bytes()).unwrap(), Some(chunk_value(i, if i == 5 { 2 } else { 1 })), "value {i}");
    }
    let reopened = log_bytes();
    assert!(reopened < after + page, "{after} -> {reopened}: the open scrubbed the pages the close left");
}

/// A 64 KiB chunk value that differs for each key and round.
fn chunk_value(i: u32, round: u8) -> Vec<u8> {
    (0..64 * 1024u32).map(|b| (b ^ i) as u8 ^ round).collect()
}

/// Puts `chunk_value(i, round)` under each key in `keys`, `per_batch` to a batch.
fn put_chunks(kv: &RocksKv, keys: std::ops::Range<u32>, round: u8, per_batch: usize) {
    for first in keys.clone().step_by(per_batch) {
        let mut b = Batch::default();
        for i in first..(first + per_batch as u32).min(keys.end) {
            b.put(Cf::Chunks, i.to_be_bytes(), chunk_value(i, round));
        }
        kv.write(b, Durability::Buffered).unwrap();
    }
}

#[test]
fn a_checkpoint_under_load_never_punches_the_segment_appends_go_to() {
    let dir = tempfile::tempdir().unwrap();
    let (live, lost) = (dir.path().join("live"), dir.path().join("lost"));
    let write = |kv: &RocksKv, round: u8, from: u32, to: u32| put_chunks(kv, from..to, round, 1);
    let value = chunk_value;
    let values = |n: u64| n * log::pages(64 * 1024);
    let kv = RocksKv::open_with(&live, INLINE_MAX, true).unwrap();
    write(&kv, 0, 0, 64);
    // A few frees (under 1 MiB, the test's roll threshold): they wait, appends stay put.
    write(&kv, 1, 0, 8);
    let end = kv.log_end();
    kv.checkpoint_under_load().unwrap();
    assert_eq!(kv.log_end(), end, "no roll for a few freed pages");
    assert!(kv.disk_bytes(Cf::Chunks).unwrap() >= values(72), "the current segment's freed pages wait");
    // Past the threshold: appends move to segment 1, then segment 0's freed pages go.
    write(&kv, 1, 8, 32);
    let roll_at = kv.log_end();
    kv.checkpoint_under_load().unwrap();
    assert_eq!(kv.log_end(), log::SEGMENT_BYTES, "the checkpoint rolled the log to segment 1");
    let bytes = kv.disk_bytes(Cf::Chunks).unwrap();
    assert!(bytes < values(64) + values(64) / 8, "{bytes} bytes on disk for {} of live values: the overwritten ones are punched", values(64));
    // The roll record's own page was freed with the rest: `applied` is past it.
    let mut header = [1u8; log::HEADER_BYTES];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(live.join("datalog").join(format!("{:016x}.log", 0))).unwrap(), &mut header, roll_at).unwrap();
    assert_eq!(header, [0u8; log::HEADER_BYTES], "the roll record's page is punched");
    // Records after the roll, then a crash: the open replays from the new segment.
    write(&kv, 2, 0, 4);
    drop(kv);
    copy_dir(&live, &lost);
    let expect = |i: u32| value(i, if i < 4 { 2 } else { u8::from(i < 32) });
    let kv = RocksKv::open_with(&lost, INLINE_MAX, false).unwrap();
    for i in 0..64u32 {
        assert_eq!(kv.get(Cf::Chunks, &i.to_be_bytes()).unwrap(), Some(expect(i)), "value {i}");
    }
    // A flush (no load) frees in place, in the segment appends go to: no roll.
    write(&kv, 3, 0, 4);
    let (end, before) = (kv.log_end(), kv.disk_bytes(Cf::Chunks).unwrap());
    assert_eq!(end / log::SEGMENT_BYTES, 1);
    kv.flush(Cf::Chunks).unwrap();
    assert_eq!(kv.log_end(), end);
    let after = kv.disk_bytes(Cf::Chunks).unwrap();
    assert!(after + 4 * log::pages(64 * 1024) <= before, "{before} -> {after}: the overwritten values in segment 1 are punched in place");
}

#[test]
fn a_segment_rolled_during_a_log_sync_stays_listed_until_a_sync_of_its_roll_record() {
    let dir = tempfile::tempdir().unwrap();
    let kv = RocksKv::open_with(dir.path(), INLINE_MAX, false).unwrap();
    put_chunks(&kv, 0..32, 0, 1);
    put_chunks(&kv, 0..32, 1, 1);
    // The checkpoint rolls (2 MiB freed in the segment appends go to) after the sync's fsync
    // of that segment: its roll record is not synced, so the segment must stay listed, or a
    // power loss before the next `applied` would cut off what later synced writes put after it.
    let unsynced = kv.sync_with_a_checkpoint_meanwhile().unwrap();
    assert_eq!(kv.log_end(), log::SEGMENT_BYTES, "the checkpoint rolled");
    assert_eq!(unsynced, 1, "the rolled segment is still to be synced");
    kv.sync_wal().unwrap();
    assert_eq!(kv.sync_with_a_checkpoint_meanwhile().unwrap(), 0);
}

#[test]
fn a_crash_after_the_log_crossed_segments_keeps_every_value_and_frees_what_was_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let (live, lost) = (dir.path().join("live"), dir.path().join("lost"));
    let write = |kv: &RocksKv, from: u32, to: u32, round: u8| put_chunks(kv, from..to, round, 16);
    let value = chunk_value;
    // Segments are 32 MiB under test: 1,280 values of 64 KiB take three of them. A checkpoint
    // midway, then overwrites of values in the first segment, then a crash.
    let kv = RocksKv::open_with(&live, INLINE_MAX, true).unwrap();
    write(&kv, 0, 800, 0);
    kv.flush(Cf::Chunks).unwrap();
    write(&kv, 800, 1280, 0);
    write(&kv, 0, 100, 1);
    assert!(kv.log_end() > 2 * log::SEGMENT_BYTES, "the log reached a third segment");
    drop(kv);
    copy_dir(&live, &lost);
    let expect = |i: u32| value(i, u8::from(i < 100));
    for round in 0..2 {
        let kv = RocksKv::open_with(&lost, INLINE_MAX, false).unwrap();
        for i in 0..1280u32 {
            assert_eq!(kv.get(Cf::Chunks, &i.to_be_bytes()).unwrap(), Some(expect(i)), "value {i} after reopen {round}");
        }
        let bytes = kv.disk_bytes(Cf::Chunks).unwrap();
        let values = 1280 * log::pages(64 * 1024);
        assert!(bytes < values + values / 8, "{bytes} bytes on disk for {values} of live values: what was overwritten is freed");
    }
    // After a clean close the open takes the live counts from the marker: overwriting every
    // value then empties and removes the old segments, and nothing live goes with them.
    let kv = RocksKv::open_with(&lost, INLINE_MAX, false).unwrap();
    write(&kv, 0, 1280, 2);
    kv.flush(Cf::Chunks).unwrap();
    drop(kv);
    let kv = RocksKv::open_with(&lost, INLINE_MAX, false).unwrap();
    for i in 0..1280u32 {
        assert_eq!(kv.get(Cf::Chunks, &i.to_be_bytes()).unwrap(), Some(value(i, 2)), "value {i} after overwriting all");
    }
    let segments = std::fs::read_dir(lost.join("datalog")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".log")).count();
    assert!(segments <= 4, "{segments} segment files for 80 MiB of live values in 32 MiB segments");
}
