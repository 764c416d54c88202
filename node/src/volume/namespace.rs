//! The namespace: lookups, directory listings, create, unlink and rename.

use std::collections::{BTreeMap, HashMap};

use super::kv::{Batch, Durability};
use umbra_raft::names::{check_file_name, fold};
use uuid::Uuid;

use super::error::{Result, VolumeError};
use super::keys::{self, Epoch, Lineage, LIVE};
use super::store::*;
use super::types::*;

impl VolumeStore {
    /// Looks `name` up (any case) in directory `parent`.
    pub fn lookup(&self, vol: Uuid, view: View, parent: u64, name: &str) -> Result<Option<DirEntry>> {
        let st = self.volume(vol)?;
        let st = Self::lock(&st);
        let scope = Self::scope(&st, view)?;
        self.lookup_in(&st, &scope, parent, name)
    }

    pub(super) fn lookup_in(&self, st: &VolState, scope: &Scope, parent: u64, name: &str) -> Result<Option<DirEntry>> {
        let Some((name, ino, _)) = self.dirent_at(st.id, scope, parent, &fold(name))? else { return Ok(None) };
        let (inode, _) = self.inode_req(st.id, scope, ino)?;
        Ok(Some(DirEntry { name, ino, inode }))
    }

    /// Resolves a `/`-separated path from the root.
    pub fn resolve(&self, vol: Uuid, view: View, path: &str) -> Result<DirEntry> {
        match self.resolve_with_parent(vol, view, path)? {
            (Some(found), _) => Ok(found),
            (None, parent) if parent.inode.kind != Kind::Dir => Err(VolumeError::NotADirectory),
            (None, _) => Err(VolumeError::NotFound(path.to_string())),
        }
    }

    /// The entry at `path` (None when only its last name is missing, or its parent is not a
    /// directory) and its parent (the root is its own parent), read under one lock.
    pub fn resolve_with_parent(&self, vol: Uuid, view: View, path: &str) -> Result<(Option<DirEntry>, DirEntry)> {
        let st = self.volume(vol)?;
        let st = Self::lock(&st);
        let scope = Self::scope(&st, view)?;
        let (root, _) = self.inode_req(vol, &scope, ROOT_INO)?;
        let root = DirEntry { name: String::new(), ino: ROOT_INO, inode: root };
        let parts: Vec<&str> = path.split(['/', '\\']).filter(|p| !p.is_empty()).collect();
        let Some((last, dirs)) = parts.split_last() else { return Ok((Some(root.clone()), root)) };
        let mut parent = root;
        for part in dirs {
            if parent.inode.kind != Kind::Dir {
                return Err(VolumeError::NotADirectory);
            }
            parent = self.lookup_in(&st, &scope, parent.ino, part)?.ok_or_else(|| VolumeError::NotFound(path.to_string()))?;
        }
        if parent.inode.kind != Kind::Dir {
            return Ok((None, parent));
        }
        Ok((self.lookup_in(&st, &scope, parent.ino, last)?, parent))
    }

    pub fn stat(&self, vol: Uuid, view: View, ino: u64) -> Result<Inode> {
        let st = self.volume(vol)?;
        let st = Self::lock(&st);
        let scope = Self::scope(&st, view)?;
        Ok(self.inode_req(vol, &scope, ino)?.0)
    }

    /// Creates a file or directory `name` in `parent`; returns its inode number.
    pub fn create(&self, vol: Uuid, view: View, parent: u64, name: &str, kind: Kind, now: u64) -> Result<u64> {
        self.create_inheriting(vol, view, parent, name, kind, now, |_, _| None)
    }

    /// [`Self::create`], the new file's security descriptor made by `inherit` from its
    /// directory's, if that has one (the descriptor's format is the gateway's:
    /// `umbra_smb_gateway::security::inherited`), given whether the new one is a directory.
    /// None, or one past [`MAX_SECURITY_BYTES`], leaves it without one (the default).
    #[allow(clippy::too_many_arguments)]
    pub fn create_inheriting(&self, vol: Uuid, view: View, parent: u64, name: &str, kind: Kind, now: u64, inherit: impl FnOnce(&[u8], bool) -> Option<Vec<u8>>) -> Result<u64> {
        check_file_name(name)?;
        let entry = self.volume(vol)?;
        let (_pass, mut st) = entry.mutation()?;
        let scope = Self::writable(&st, view)?;
        let (mut dir, dir_key) = self.inode_req(vol, &scope, parent)?;
        if dir.kind != Kind::Dir {
            return Err(VolumeError::NotADirectory);
        }
        if let Some(existing) = self.lookup_in(&st, &scope, parent, name)? {
            return Err(VolumeError::Exists(existing.name));
        }
        let ino = st.meta.next_ino;
        st.meta.next_ino += 1;
        let security = dir.security.as_deref().and_then(|sd| inherit(sd, kind == Kind::Dir)).filter(|sd| sd.len() <= MAX_SECURITY_BYTES);
        let inode = Inode { kind, parent, size: 0, allocated: 0, generation: 0, created: now, written: now, changed: now, attributes: 0, cut: None, security };
        let mut batch = Batch::default();
        self.put_inode(&st, &scope, &mut batch, ino, &inode, None)?;
        let dirent = serde_json::to_vec(&DirentValue::Live { name: name.to_string(), ino })?;
        let object = |lin| keys::dirent(vol, lin, parent, &fold(name));
        let old = self.newest(CF_DIRENTS, &object(scope.lineage), scope.max_epoch)?.map(|(k, _)| k);
        self.put_version(&st, &scope, &mut batch, CF_DIRENTS, object(scope.lineage), dirent, old.as_deref());
        dir.written = now;
        dir.changed = now;
        self.put_inode(&st, &scope, &mut batch, parent, &dir, dir_key.as_deref())?;
        self.persist_meta(&st, &mut batch)?;
        self.kv.write(batch, Durability::Buffered)?;
        Ok(ino)
    }

    /// Lists directory `dir` in folded-name order, starting after the folded name `after`
    /// (the resume point of the previous call), at most `limit` entries.
    pub fn list(&self, vol: Uuid, view: View, dir: u64, after: Option<&str>, limit: usize) -> Result<Vec<DirEntry>> {
        let st = self.volume(vol)?;
        let st = Self::lock(&st);
        let scope = Self::scope(&st, view)?;
        self.list_in(&st, &scope, dir, after, limit.min(MAX_LIST_ENTRIES))
    }

    pub(super) fn list_in(&self, st: &VolState, scope: &Scope, dir: u64, after: Option<&str>, limit: usize) -> Result<Vec<DirEntry>> {
        let (inode, _) = self.inode_req(st.id, scope, dir)?;
        if inode.kind != Kind::Dir {
            return Err(VolumeError::NotADirectory);
        }
        // Names visible in the scope's lineage, then (for a clone) in its base.
        let mut names: BTreeMap<String, Option<(String, u64)>> = BTreeMap::new();
        let mut sources = vec![(scope.lineage, scope.max_epoch)];
        if let Some(base) = scope.base_epoch {
            sources.push((LIVE, base));
        }
        let passes = sources.len();
        for (i, (lin, max)) in sources.into_iter().enumerate() {
            // Deleted names matter only while a later lineage could still show them.
            self.scan_names(st.id, lin, dir, max, after, limit, i + 1 < passes, &mut names)?;
        }
        let mut out = Vec::new();
        for (_, entry) in names {
            if out.len() >= limit {
                break;
            }
            if let Some((name, ino)) = entry {
                let (inode, _) = self.inode_req(st.id, scope, ino)?;
                out.push(DirEntry { name, ino, inode });
            }
        }
        Ok(out)
    }

    /// Adds to `names` each name's visible version in one lineage (keeping what an earlier
    /// lineage already decided), stopping after `limit` names live once merged. Deleted names
    /// are kept only with `keep_deleted` (a later lineage's pass needs them to hide its own), so
    /// a page of a directory full of deleted names holds no more than its live ones.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_names(&self, vol: Uuid, lin: Lineage, dir: u64, max: Epoch, after: Option<&str>, limit: usize, keep_deleted: bool, names: &mut BTreeMap<String, Option<(String, u64)>>) -> Result<()> {
        let prefix = keys::dir(vol, lin, dir);
        let start = match after {
            Some(a) => keys::prefix_end(&keys::dirent(vol, lin, dir, a)),
            None => prefix.clone(),
        };
        let mut live = 0;
        let mut it = self.kv.scan(CF_DIRENTS, &start);
        let mut current: Option<String> = None;
        while let Some(item) = it.next() {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let Some(folded) = keys::name_of(&key, &prefix) else { continue };
            if current.as_deref() == Some(folded) || keys::epoch_of(&key).is_some_and(|e| e > max) {
                continue; // an older version of a name already decided, or too new for the scope
            }
            current = Some(folded.to_string());
            if live >= limit {
                break;
            }
            let entry = match Self::decode::<DirentValue>(&value)? {
                DirentValue::Live { name, ino } => Some((name, ino)),
                DirentValue::Deleted => None,
            };
            if entry.is_none() && !keep_deleted && !names.contains_key(folded) {
                continue;
            }
            // Counted as the merge decides it: a base name a clone deleted is not live.
            let merged = names.entry(folded.to_string()).or_insert(entry);
            live += usize::from(merged.is_some());
        }
        Ok(())
    }

    /// Removes `name` from `parent`; a directory must be empty.
    pub fn unlink(&self, vol: Uuid, view: View, parent: u64, name: &str, now: u64) -> Result<()> {
        self.unlink_where(vol, view, parent, name, None, now).map(|_| ())
    }

    /// Unlinks `name` only if it still names `ino`, in one mutation (a rename between a lookup
    /// and an unlink cannot make it delete another file); false when it names something else
    /// or nothing.
    pub fn unlink_if(&self, vol: Uuid, view: View, parent: u64, name: &str, ino: u64, now: u64) -> Result<bool> {
        self.unlink_where(vol, view, parent, name, Some(ino), now)
    }

    fn unlink_where(&self, vol: Uuid, view: View, parent: u64, name: &str, expect: Option<u64>, now: u64) -> Result<bool> {
        let entry = self.volume(vol)?;
        let (_pass, st) = entry.mutation()?;
        let scope = Self::writable(&st, view)?;
        let found = self.lookup_in(&st, &scope, parent, name)?;
        let entry = match (found, expect) {
            (Some(e), Some(ino)) if e.ino != ino => return Ok(false),
            (None, Some(_)) => return Ok(false),
            (found, _) => found.ok_or_else(|| VolumeError::NotFound(name.to_string()))?,
        };
        if entry.inode.kind == Kind::Dir && !self.list_in(&st, &scope, entry.ino, None, 1)?.is_empty() {
            return Err(VolumeError::NotEmpty);
        }
        let mut batch = Batch::default();
        self.drop_entry(&st, &scope, &mut batch, parent, &entry)?;
        let (mut dir, dir_key) = self.inode_req(vol, &scope, parent)?;
        dir.written = now;
        dir.changed = now;
        self.put_inode(&st, &scope, &mut batch, parent, &dir, dir_key.as_deref())?;
        self.kv.write(batch, Durability::Buffered)?;
        Ok(true)
    }

    /// Removes a directory entry, its inode and (for a file) its data.
    pub(super) fn drop_entry(&self, st: &VolState, scope: &Scope, batch: &mut Batch, parent: u64, entry: &DirEntry) -> Result<()> {
        let vol = st.id;
        let folded = fold(&entry.name);
        let (_, _, dirent_key) = self.dirent_at(vol, scope, parent, &folded)?.ok_or_else(|| VolumeError::NotFound(entry.name.clone()))?;
        let deleted_dirent = serde_json::to_vec(&DirentValue::Deleted)?;
        self.remove_version(st, scope, batch, CF_DIRENTS, |lin| keys::dirent(vol, lin, parent, &folded), &dirent_key, &deleted_dirent)?;
        let (_, inode_key) = self.inode_req(vol, scope, entry.ino)?;
        let deleted_inode = serde_json::to_vec(&InodeValue::Deleted)?;
        if let Some(k) = inode_key {
            self.remove_version(st, scope, batch, CF_INODES, |lin| keys::inode(vol, lin, entry.ino), &k, &deleted_inode)?;
        }
        if entry.inode.kind == Kind::File {
            self.retire_generation(st, scope, batch, entry.ino, entry.inode.generation)?;
        }
        Ok(())
    }

    /// Renames within a volume; `replace` allows replacing an existing file (never a directory).
    #[allow(clippy::too_many_arguments)]
    pub fn rename(&self, vol: Uuid, view: View, from_dir: u64, from: &str, to_dir: u64, to: &str, replace: bool, now: u64) -> Result<()> {
        self.rename_unless(vol, view, from_dir, from, to_dir, to, replace, now, &NothingOpen)
    }

    /// As [`VolumeStore::rename`], with what the volume's opens hold, decided under the volume
    /// lock: a target some open holds is not replaced, nor is a directory (MS-FSA 2.1.5.14.11:
    /// ACCESS_DENIED for both), and a directory with an open file or directory anywhere below
    /// it does not move (ACCESS_DENIED, as Windows and Samba answer: the opens below would
    /// otherwise find their paths changed under them).
    #[allow(clippy::too_many_arguments)]
    pub fn rename_unless(&self, vol: Uuid, view: View, from_dir: u64, from: &str, to_dir: u64, to: &str, replace: bool, now: u64, opens: &dyn OpenFiles) -> Result<()> {
        check_file_name(to)?;
        let entry = self.volume(vol)?;
        let (_pass, st) = entry.mutation()?;
        let scope = Self::writable(&st, view)?;
        let source = self.lookup_in(&st, &scope, from_dir, from)?.ok_or_else(|| VolumeError::NotFound(from.to_string()))?;
        let (target_dir, _) = self.inode_req(vol, &scope, to_dir)?;
        if target_dir.kind != Kind::Dir {
            return Err(VolumeError::NotADirectory);
        }
        if source.inode.kind == Kind::Dir {
            self.refuse_cycle(&scope, vol, source.ino, to_dir)?;
            if self.any_below(&scope, vol, source.ino, opens.held())? {
                return Err(VolumeError::OpenInTheWay("a directory with open files below it does not move"));
            }
        }
        let same_slot = from_dir == to_dir && fold(from) == fold(to);
        let mut batch = Batch::default();
        if !same_slot {
            if let Some(target) = self.lookup_in(&st, &scope, to_dir, to)? {
                if !replace {
                    return Err(VolumeError::Exists(target.name));
                }
                if target.inode.kind == Kind::Dir {
                    return Err(VolumeError::AccessDenied("a rename does not replace a directory"));
                }
                if opens.holds(target.ino) {
                    return Err(VolumeError::OpenInTheWay("a rename does not replace a file that is open"));
                }
                self.drop_entry(&st, &scope, &mut batch, to_dir, &target)?;
            }
            let folded = fold(from);
            let (_, _, old_key) = self.dirent_at(vol, &scope, from_dir, &folded)?.ok_or_else(|| VolumeError::NotFound(from.to_string()))?;
            let deleted = serde_json::to_vec(&DirentValue::Deleted)?;
            self.remove_version(&st, &scope, &mut batch, CF_DIRENTS, |lin| keys::dirent(vol, lin, from_dir, &folded), &old_key, &deleted)?;
        }
        let to_folded = fold(to);
        let object = |lin| keys::dirent(vol, lin, to_dir, &to_folded);
        let old = if same_slot { self.dirent_at(vol, &scope, to_dir, &to_folded)?.map(|(_, _, k)| k) } else { self.newest(CF_DIRENTS, &object(scope.lineage), scope.max_epoch)?.map(|(k, _)| k) };
        let value = serde_json::to_vec(&DirentValue::Live { name: to.to_string(), ino: source.ino })?;
        self.put_version(&st, &scope, &mut batch, CF_DIRENTS, object(scope.lineage), value, old.as_deref());
        let (mut inode, inode_key) = self.inode_req(vol, &scope, source.ino)?;
        inode.parent = to_dir;
        inode.changed = now;
        self.put_inode(&st, &scope, &mut batch, source.ino, &inode, inode_key.as_deref())?;
        self.kv.write(batch, Durability::Buffered)?;
        Ok(())
    }

    /// Refuses moving directory `ino` under itself.
    pub(super) fn refuse_cycle(&self, scope: &Scope, vol: Uuid, ino: u64, mut to_dir: u64) -> Result<()> {
        for _ in 0..MAX_TREE_DEPTH {
            if to_dir == ino {
                return Err(VolumeError::Invalid("a directory cannot move under itself".into()));
            }
            if to_dir == ROOT_INO {
                return Ok(());
            }
            to_dir = self.inode_req(vol, scope, to_dir)?.0.parent;
        }
        Err(VolumeError::Invalid(format!("directory tree deeper than {MAX_TREE_DEPTH}")))
    }

    /// Whether any of `files` (inodes some open holds) lies below directory `dir`, following
    /// parents up; each inode on the way is looked up once, however many files share it. An
    /// inode gone meanwhile (a file deleted while open) is not below anything.
    fn any_below(&self, scope: &Scope, vol: Uuid, dir: u64, files: Vec<u64>) -> Result<bool> {
        let mut known: HashMap<u64, bool> = HashMap::from([(dir, true), (ROOT_INO, false)]);
        for file in files.into_iter().filter(|&f| f != dir) {
            let (mut at, mut path) = (file, Vec::new());
            let below = loop {
                if let Some(&b) = known.get(&at) {
                    break b;
                }
                if path.len() >= MAX_TREE_DEPTH {
                    return Err(VolumeError::Invalid(format!("directory tree deeper than {MAX_TREE_DEPTH}")));
                }
                path.push(at);
                match self.inode_at(vol, scope, at)? {
                    Some((inode, _)) => at = inode.parent,
                    None => break false,
                }
            };
            if below {
                return Ok(true);
            }
            known.extend(path.into_iter().map(|p| (p, false)));
        }
        Ok(false)
    }
}

/// Deepest directory tree a walk up the parents follows (a cycle check, the opens below a
/// directory); deeper ones are refused as corrupt.
pub const MAX_TREE_DEPTH: usize = 4096;

/// What the open table says of a volume's files, for a rename decided under the volume lock.
pub trait OpenFiles {
    /// Whether some open holds `ino`.
    fn holds(&self, ino: u64) -> bool;
    /// Every inode some open holds (at most the volume's open bound).
    fn held(&self) -> Vec<u64>;
}

/// No opens: a rename by the store alone (tests, tools).
pub struct NothingOpen;

impl OpenFiles for NothingOpen {
    fn holds(&self, _: u64) -> bool {
        false
    }
    fn held(&self) -> Vec<u64> {
        Vec::new()
    }
}
