//! Key layout of the volume store. Every versioned key ends with the inverted epoch it was
//! written in, so a seek to `prefix ++ !E` lands on the newest version at or before epoch E.
//!
//! ```text
//! inodes   vol(16) lineage(4) ino(8)                          !epoch(8)
//! dirents  vol(16) lineage(4) parent(8) folded-name 0x00      !epoch(8)
//! chunks   vol(16) lineage(4) ino(8) generation(8) chunk(8)   !epoch(8)
//! dead     vol(16) dead-epoch(8) tag(1) payload               (deadlists, see reclaim)
//! meta     vol(16) tag(1) ...                                 (volume, snapshots, clones, reclaim queue)
//! ```
//! Lineage 0 is the live volume; a writable clone has a lineage of its own. Names cannot hold
//! NUL, so the 0x00 terminator keeps one name's versions apart from a longer name's.

use uuid::Uuid;

pub type Lineage = u32;
pub type Epoch = u64;

/// The live volume's lineage.
pub const LIVE: Lineage = 0;

pub fn inv(epoch: Epoch) -> [u8; 8] {
    (u64::MAX - epoch).to_be_bytes()
}

/// The epoch of a versioned key (its last 8 bytes).
pub fn epoch_of(key: &[u8]) -> Option<Epoch> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::MAX - u64::from_be_bytes(tail))
}

/// The key without its epoch.
pub fn object_of(key: &[u8]) -> &[u8] {
    &key[..key.len().saturating_sub(8)]
}

fn base(vol: Uuid, lin: Lineage) -> Vec<u8> {
    let mut k = Vec::with_capacity(64);
    k.extend_from_slice(vol.as_bytes());
    k.extend_from_slice(&lin.to_be_bytes());
    k
}

pub fn inode(vol: Uuid, lin: Lineage, ino: u64) -> Vec<u8> {
    let mut k = base(vol, lin);
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// Prefix of every entry of directory `parent`.
pub fn dir(vol: Uuid, lin: Lineage, parent: u64) -> Vec<u8> {
    inode(vol, lin, parent)
}

pub fn dirent(vol: Uuid, lin: Lineage, parent: u64, folded: &str) -> Vec<u8> {
    let mut k = dir(vol, lin, parent);
    k.extend_from_slice(folded.as_bytes());
    k.push(0);
    k
}

/// The folded name of a dirent key under `dir_prefix`.
pub fn name_of<'a>(key: &'a [u8], dir_prefix: &[u8]) -> Option<&'a str> {
    let rest = key.get(dir_prefix.len()..key.len().checked_sub(9)?)?;
    std::str::from_utf8(rest).ok()
}

pub fn chunk(vol: Uuid, lin: Lineage, ino: u64, generation: u64, index: u64) -> Vec<u8> {
    let mut k = generation_prefix(vol, lin, ino, generation);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Prefix of every chunk of one generation of a file.
pub fn generation_prefix(vol: Uuid, lin: Lineage, ino: u64, generation: u64) -> Vec<u8> {
    let mut k = inode(vol, lin, ino);
    k.extend_from_slice(&generation.to_be_bytes());
    k
}

/// The chunk index of a chunk key (the 8 bytes before its epoch).
pub fn chunk_index_of(key: &[u8]) -> Option<u64> {
    let end = key.len().checked_sub(8)?;
    let bytes: [u8; 8] = key.get(end.checked_sub(8)?..end)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

pub fn versioned(mut object: Vec<u8>, epoch: Epoch) -> Vec<u8> {
    object.extend_from_slice(&inv(epoch));
    object
}

/// Everything of one volume in a column family: `[vol, vol+1)`.
pub fn volume_range(vol: Uuid) -> (Vec<u8>, Vec<u8>) {
    let lo = vol.as_bytes().to_vec();
    let hi = (vol.as_u128().wrapping_add(1)).to_be_bytes().to_vec();
    (lo, hi)
}

/// Everything of one lineage of one volume: `[vol|lin, vol|lin+1)`.
pub fn lineage_range(vol: Uuid, lin: Lineage) -> (Vec<u8>, Vec<u8>) {
    (base(vol, lin), base(vol, lin + 1))
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

pub mod dead {
    //! Deadlist keys: `vol | dead-epoch | tag | payload`.
    use super::*;

    pub const INODE: u8 = b'i';
    pub const DIRENT: u8 = b'd';
    pub const CHUNK: u8 = b'c';
    /// A whole generation of a file's chunks died (truncate to 0, or delete).
    pub const GENERATION: u8 = b'g';

    pub fn key(vol: Uuid, dead: Epoch, tag: u8, payload: &[u8]) -> Vec<u8> {
        let mut k = vol.as_bytes().to_vec();
        k.extend_from_slice(&dead.to_be_bytes());
        k.push(tag);
        k.extend_from_slice(payload);
        k
    }

    pub fn epoch_prefix(vol: Uuid, dead: Epoch) -> Vec<u8> {
        let mut k = vol.as_bytes().to_vec();
        k.extend_from_slice(&dead.to_be_bytes());
        k
    }

    /// (dead epoch, tag, payload) of a deadlist key.
    pub fn parse(key: &[u8]) -> Option<(Epoch, u8, &[u8])> {
        let dead = u64::from_be_bytes(key.get(16..24)?.try_into().ok()?);
        Some((dead, *key.get(24)?, key.get(25..)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_versions_sort_first_and_names_stay_apart() {
        let v = Uuid::from_u128(7);
        let old = versioned(inode(v, LIVE, 5), 3);
        let new = versioned(inode(v, LIVE, 5), 9);
        assert!(new < old);
        assert_eq!(epoch_of(&old), Some(3));
        let a = versioned(dirent(v, LIVE, 1, "a"), 0);
        let ab = versioned(dirent(v, LIVE, 1, "ab"), 100);
        assert!(a < ab, "all versions of 'a' come before any of 'ab'");
        assert_eq!(name_of(&ab, &dir(v, LIVE, 1)), Some("ab"));
        let c = versioned(chunk(v, LIVE, 5, 2, 42), 1);
        assert_eq!(chunk_index_of(&c), Some(42));
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
    }
}
