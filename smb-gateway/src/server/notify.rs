//! Directory change notification without I/O (MS-SMB2 2.2.35/2.2.36 and 3.3.5.19, MS-FSA
//! 2.1.5.11, MS-FSCC 2.7.1 FILE_NOTIFY_INFORMATION).
//!
//! File commands describe what they changed as [`Change`]s (a share and a path); the node's
//! notifier hands every change to every connection of the node. A [`Watch`] belongs to one open
//! directory once the client has sent CHANGE_NOTIFY on it: it keeps the changes that concern the
//! directory (its entries, or with WATCH_TREE anything below it) that pass the completion filter,
//! until a CHANGE_NOTIFY takes them. Its queue is bounded; when it overflows, or when the records
//! do not fit the client's output buffer, the client is told STATUS_NOTIFY_ENUM_DIR (re-read the
//! directory) instead.

use crate::smb2::status;
use crate::wire::put_utf16;

/// Records one watch keeps between two CHANGE_NOTIFY requests; more overflow to NOTIFY_ENUM_DIR.
pub const MAX_QUEUED_CHANGES_PER_WATCH: usize = 256;
/// Bytes of records (as FILE_NOTIFY_INFORMATION) all of one connection's watches keep at
/// once; a watch whose record would pass it overflows instead. One watch keeps no more than
/// its client's output buffer takes either (more would be answered NOTIFY_ENUM_DIR anyway).
pub const MAX_QUEUED_NOTIFY_BYTES_PER_CONNECTION: usize = 1024 * 1024;

/// CHANGE_NOTIFY Flags: report changes anywhere below the directory.
pub const WATCH_TREE: u16 = 0x0001;

/// CompletionFilter bits (MS-SMB2 2.2.35).
pub const FILTER_FILE_NAME: u32 = 0x0000_0001;
pub const FILTER_DIR_NAME: u32 = 0x0000_0002;
/// Attributes, size, last write, last access, creation: what a modification reports.
pub const FILTER_MODIFIED: u32 = 0x0000_0004 | 0x0000_0008 | 0x0000_0010 | 0x0000_0020 | 0x0000_0040;
/// FILE_NOTIFY_CHANGE_SECURITY.
pub const FILTER_SECURITY: u32 = 0x0000_0100;

/// FILE_NOTIFY_INFORMATION Action values (MS-FSCC 2.7.1).
pub const ACTION_ADDED: u32 = 1;
pub const ACTION_REMOVED: u32 = 2;
pub const ACTION_MODIFIED: u32 = 3;
pub const ACTION_RENAMED_OLD_NAME: u32 = 4;
pub const ACTION_RENAMED_NEW_NAME: u32 = 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
    /// Written (reported when the writer closes the file), or its size set.
    Modified,
    /// Renamed from this share-relative path to the change's path.
    Renamed { from: String },
    /// Its security descriptor set (a file's or a directory's).
    SecurityChanged,
}

/// One change a file command made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The share, as the tree names it (compared without case).
    pub share: String,
    /// Share-relative, `\`-separated, without a leading `\`.
    pub path: String,
    pub directory: bool,
    pub kind: ChangeKind,
}

/// The changes one open directory waits for.
#[derive(Debug)]
pub struct Watch {
    share: String,
    dir: String,
    tree: bool,
    filter: u32,
    queue: Vec<(u32, String)>,
    /// The queue's size as FILE_NOTIFY_INFORMATION records.
    queued_bytes: usize,
    /// The output buffer the latest CHANGE_NOTIFY offered.
    max_bytes: usize,
    overflowed: bool,
}

impl Watch {
    /// A watch on `dir` (share-relative; empty for the root) of `share`.
    pub fn new(share: &str, dir: &str) -> Watch {
        Watch { share: share.to_string(), dir: dir.to_string(), tree: false, filter: 0, queue: Vec::new(), queued_bytes: 0, max_bytes: 0, overflowed: false }
    }

    /// What the latest CHANGE_NOTIFY asked for, and the output buffer it offered.
    pub fn arm(&mut self, filter: u32, tree: bool, max_bytes: usize) {
        self.filter = filter;
        self.tree = tree;
        self.max_bytes = max_bytes;
    }

    /// Bytes its queued records take.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Queues what `change` means to this watch (nothing when it is elsewhere or filtered out),
    /// taking the records' bytes from `budget` (the connection's); it overflows instead when
    /// they would pass the budget or its client's output buffer.
    pub fn record(&mut self, change: &Change, budget: &mut usize) {
        if !change.share.eq_ignore_ascii_case(&self.share) {
            return;
        }
        let name_filter = if change.directory { FILTER_DIR_NAME } else { FILTER_FILE_NAME };
        let here = |path: &str| relative(&self.dir, path, self.tree);
        let records: Vec<(u32, String)> = match &change.kind {
            ChangeKind::Added if self.filter & name_filter != 0 => here(&change.path).map(|n| vec![(ACTION_ADDED, n)]).unwrap_or_default(),
            ChangeKind::Removed if self.filter & name_filter != 0 => here(&change.path).map(|n| vec![(ACTION_REMOVED, n)]).unwrap_or_default(),
            ChangeKind::Modified if self.filter & FILTER_MODIFIED != 0 && !change.directory => here(&change.path).map(|n| vec![(ACTION_MODIFIED, n)]).unwrap_or_default(),
            ChangeKind::SecurityChanged if self.filter & FILTER_SECURITY != 0 => here(&change.path).map(|n| vec![(ACTION_MODIFIED, n)]).unwrap_or_default(),
            ChangeKind::Renamed { from } if self.filter & name_filter != 0 => match (here(from), here(&change.path)) {
                (Some(old), Some(new)) => vec![(ACTION_RENAMED_OLD_NAME, old), (ACTION_RENAMED_NEW_NAME, new)],
                (Some(old), None) => vec![(ACTION_REMOVED, old)],
                (None, Some(new)) => vec![(ACTION_ADDED, new)],
                (None, None) => Vec::new(),
            },
            _ => Vec::new(),
        };
        for r in records {
            self.push(r, budget);
        }
    }

    fn push(&mut self, record: (u32, String), budget: &mut usize) {
        if self.overflowed {
            return;
        }
        // The records' length as `encode` lays them out: each after the previous one's
        // padding to 4 bytes, 12 bytes and the name in UTF-16.
        let after = self.queued_bytes.div_ceil(4) * 4 + 12 + record.1.encode_utf16().count() * 2;
        let bytes = after - self.queued_bytes;
        if self.queue.len() >= MAX_QUEUED_CHANGES_PER_WATCH || bytes > *budget || after > self.max_bytes {
            *budget += self.queued_bytes;
            self.overflow();
            return;
        }
        *budget -= bytes;
        self.queued_bytes = after;
        self.queue.push(record);
    }

    /// The watched directory, or one above it, was renamed from `from` to `to` in `share`.
    pub fn moved(&mut self, share: &str, from: &str, to: &str) {
        if !share.eq_ignore_ascii_case(&self.share) {
            return;
        }
        if let Some(dir) = rebase(&self.dir, from, to) {
            self.dir = dir;
        }
    }

    /// Changes were lost (the node's notifier dropped some for this connection).
    pub fn overflow(&mut self) {
        self.overflowed = true;
        self.queue = Vec::new();
        self.queued_bytes = 0;
    }

    /// A CHANGE_NOTIFY would complete now.
    pub fn is_ready(&self) -> bool {
        self.overflowed || !self.queue.is_empty()
    }

    /// Takes what is queued as FILE_NOTIFY_INFORMATION records for a client that offered
    /// `max_bytes`: `Err(STATUS_NOTIFY_ENUM_DIR)` after an overflow or when they do not fit.
    pub fn take(&mut self, max_bytes: usize) -> Result<Vec<u8>, u32> {
        let overflowed = std::mem::take(&mut self.overflowed);
        let queue = std::mem::take(&mut self.queue);
        self.queued_bytes = 0;
        if overflowed {
            return Err(status::NOTIFY_ENUM_DIR);
        }
        let out = encode(&queue);
        if out.len() > max_bytes {
            return Err(status::NOTIFY_ENUM_DIR);
        }
        Ok(out)
    }
}

/// `path` as named from the watched `dir`: its last component when it is an entry of `dir`, or
/// with `tree` its path below `dir`; `None` when elsewhere. Components compare without case.
pub fn relative(dir: &str, path: &str, tree: bool) -> Option<String> {
    let d: Vec<&str> = dir.split('\\').filter(|c| !c.is_empty()).collect();
    let p: Vec<&str> = path.split('\\').filter(|c| !c.is_empty()).collect();
    if p.len() <= d.len() || !d.iter().zip(&p).all(|(a, b)| a.to_lowercase() == b.to_lowercase()) {
        return None;
    }
    let rest = &p[d.len()..];
    if !tree && rest.len() != 1 {
        return None;
    }
    Some(rest.join("\\"))
}

/// `path` after a rename of `from` to `to`: `to` for `from` itself, `to\rest` for a path below
/// it, `None` when it is elsewhere. Components compare without case.
pub fn rebase(path: &str, from: &str, to: &str) -> Option<String> {
    let f: Vec<&str> = from.split('\\').filter(|c| !c.is_empty()).collect();
    let p: Vec<&str> = path.split('\\').filter(|c| !c.is_empty()).collect();
    if f.is_empty() || p.len() < f.len() || !f.iter().zip(&p).all(|(a, b)| a.to_lowercase() == b.to_lowercase()) {
        return None;
    }
    Some(std::iter::once(to.trim_matches('\\')).chain(p[f.len()..].iter().copied()).filter(|c| !c.is_empty()).collect::<Vec<_>>().join("\\"))
}

/// Where a share's files live, so that a change made through one share reaches the watches of
/// the others over the same files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareRoot {
    pub share: String,
    /// The volume and the state of it the share serves (live, a snapshot, a clone), as one key.
    pub volume: String,
    /// The share's root inside the volume, `\`-separated, without a leading `\` (empty: the
    /// volume's root).
    pub root: String,
}

/// The changes in `changes` (each named by the share it was made through) as the other shares
/// over the same files name them: a share whose root holds a change's path gets the change with
/// its path below that root. A rename seen from a share that holds only one of its two names
/// is an addition or a removal there.
pub fn through_other_shares(changes: &[Change], roots: &[ShareRoot]) -> Vec<Change> {
    let mut out = Vec::new();
    for c in changes {
        let Some(from) = roots.iter().find(|r| r.share.eq_ignore_ascii_case(&c.share)) else { continue };
        let full = join(&from.root, &c.path);
        let old_full = match &c.kind {
            ChangeKind::Renamed { from: old } => Some(join(&from.root, old)),
            _ => None,
        };
        for other in roots.iter().filter(|r| r.volume == from.volume && !r.share.eq_ignore_ascii_case(&from.share)) {
            let here = below(&full, &other.root);
            let before = old_full.as_deref().map(|o| below(o, &other.root));
            let (path, kind) = match (here, before) {
                (Some(p), Some(Some(old))) => (p, ChangeKind::Renamed { from: old }),
                (Some(p), Some(None)) => (p, ChangeKind::Added),
                (None, Some(Some(old))) => (old, ChangeKind::Removed),
                (Some(p), None) => (p, c.kind.clone()),
                (None, _) => continue,
            };
            out.push(Change { share: other.share.clone(), path, directory: c.directory, kind });
        }
    }
    out
}

/// `a\b` from a root and a path below it.
fn join(root: &str, path: &str) -> String {
    [root, path].iter().map(|p| p.trim_matches('\\')).filter(|p| !p.is_empty()).collect::<Vec<_>>().join("\\")
}

/// `full` as a path below `root` (never the root itself: it is no entry of its share).
fn below(full: &str, root: &str) -> Option<String> {
    let rel = if root.is_empty() { Some(full.to_string()) } else { rebase(full, root, "") }?;
    (!rel.is_empty()).then_some(rel)
}

/// FILE_NOTIFY_INFORMATION records, each starting 4-byte aligned, the last with
/// NextEntryOffset 0.
pub fn encode(records: &[(u32, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut previous: Option<usize> = None;
    for (action, name) in records {
        out.resize(out.len().div_ceil(4) * 4, 0);
        let at = out.len();
        if let Some(p) = previous {
            out[p..p + 4].copy_from_slice(&((at - p) as u32).to_le_bytes());
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&action.to_le_bytes());
        let mut name_bytes = Vec::with_capacity(name.len() * 2);
        put_utf16(&mut name_bytes, name);
        out.extend_from_slice(&(name_bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&name_bytes);
        previous = Some(at);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_through_one_share_reaches_the_other_shares_over_the_same_files() {
        let root = |share: &str, volume: &str, root: &str| ShareRoot { share: share.into(), volume: volume.into(), root: root.into() };
        let roots = [root("Data", "v1", ""), root("Projects", "v1", "work\\projects"), root("Other", "v2", ""), root("Work", "v1", "work")];
        let made = |share: &str, path: &str, kind: ChangeKind| Change { share: share.into(), path: path.into(), directory: false, kind };
        // Through the volume's root share, into a folder two other shares serve.
        let got = through_other_shares(&[made("data", "Work\\Projects\\a.txt", ChangeKind::Added)], &roots);
        assert_eq!(got, vec![made("Projects", "a.txt", ChangeKind::Added), made("Work", "Projects\\a.txt", ChangeKind::Added)]);
        // Through a folder share, back up to the root share; never to another volume.
        let got = through_other_shares(&[made("Projects", "b.txt", ChangeKind::Modified)], &roots);
        assert_eq!(got, vec![made("Data", "work\\projects\\b.txt", ChangeKind::Modified), made("Work", "projects\\b.txt", ChangeKind::Modified)]);
        // A rename out of a folder share's root is a removal there, and into one an addition.
        let got = through_other_shares(&[made("Data", "elsewhere.txt", ChangeKind::Renamed { from: "work\\projects\\c.txt".into() })], &roots);
        assert_eq!(got, vec![made("Projects", "c.txt", ChangeKind::Removed), made("Work", "projects\\c.txt", ChangeKind::Removed)]);
        let got = through_other_shares(&[made("Data", "work\\d.txt", ChangeKind::Renamed { from: "top.txt".into() })], &roots);
        assert_eq!(got, vec![made("Work", "d.txt", ChangeKind::Added)]);
        // The folder a share serves is no entry of that share; unknown shares change nothing.
        assert_eq!(through_other_shares(&[made("Data", "work", ChangeKind::Modified)], &roots), vec![]);
        assert_eq!(through_other_shares(&[made("Gone", "x", ChangeKind::Added)], &roots), vec![]);
    }

    fn change(path: &str, kind: ChangeKind) -> Change {
        Change { share: "Data".into(), path: path.into(), directory: false, kind }
    }

    #[test]
    fn names_are_relative_to_the_watched_directory_and_only_below_it_with_watch_tree() {
        assert_eq!(relative("", "a.txt", false), Some("a.txt".into()));
        assert_eq!(relative("", "d\\a.txt", false), None);
        assert_eq!(relative("", "d\\a.txt", true), Some("d\\a.txt".into()));
        assert_eq!(relative("D", "d\\A.txt", false), Some("A.txt".into()), "components compare without case");
        assert_eq!(relative("d", "d", true), None, "the directory itself is not its entry");
        assert_eq!(relative("d", "dx\\a", true), None);
        assert_eq!(relative("d\\e", "d\\e\\f\\g", true), Some("f\\g".into()));
    }

    #[test]
    fn a_watch_keeps_what_its_filter_and_scope_select_and_renames_across_its_edge_become_add_or_remove() {
        let mut w = Watch::new("data", "d");
        w.arm(FILTER_FILE_NAME, false, 4096);
        w.record(&change("d\\new.txt", ChangeKind::Added), &mut (1 << 20));
        w.record(&change("d\\new.txt", ChangeKind::Modified), &mut (1 << 20)); // filtered out
        w.record(&change("e\\x.txt", ChangeKind::Added), &mut (1 << 20)); // elsewhere
        w.record(&Change { share: "other".into(), ..change("d\\x.txt", ChangeKind::Added) }, &mut (1 << 20));
        w.record(&Change { directory: true, ..change("d\\sub", ChangeKind::Added) }, &mut (1 << 20)); // a directory: DIR_NAME not asked
        w.record(&change("d\\b.txt", ChangeKind::Renamed { from: "d\\a.txt".into() }), &mut (1 << 20));
        w.record(&change("e\\b.txt", ChangeKind::Renamed { from: "d\\c.txt".into() }), &mut (1 << 20));
        assert_eq!(
            w.queue,
            vec![(ACTION_ADDED, "new.txt".into()), (ACTION_RENAMED_OLD_NAME, "a.txt".into()), (ACTION_RENAMED_NEW_NAME, "b.txt".into()), (ACTION_REMOVED, "c.txt".into())]
        );
        let out = w.take(4096).unwrap();
        assert_eq!(&out[..12], &[28, 0, 0, 0, 1, 0, 0, 0, 14, 0, 0, 0], "first record: next at 28 (12 + 14 rounded up to 4), added, 14 name bytes");
        assert!(!w.is_ready(), "taking empties the queue");
    }

    #[test]
    fn a_rename_moves_the_paths_below_it() {
        assert_eq!(rebase("a\\b\\c", "A\\b", "x"), Some("x\\c".into()));
        assert_eq!(rebase("a\\b", "a\\b", "x\\y"), Some("x\\y".into()));
        assert_eq!(rebase("a\\bc", "a\\b", "x"), None);
        assert_eq!(rebase("a", "", "x"), None, "the root is never renamed");
        let mut w = Watch::new("data", "a\\b");
        w.arm(FILTER_FILE_NAME, false, 4096);
        w.moved("other", "a", "y");
        w.moved("DATA", "a", "z");
        w.record(&change("z\\b\\f", ChangeKind::Added), &mut (1 << 20));
        assert_eq!(w.queue, vec![(ACTION_ADDED, "f".into())]);
    }

    #[test]
    fn overflow_and_a_small_buffer_answer_notify_enum_dir() {
        let mut w = Watch::new("data", "");
        w.arm(FILTER_FILE_NAME | FILTER_MODIFIED, true, 1 << 20);
        for i in 0..=MAX_QUEUED_CHANGES_PER_WATCH {
            w.record(&change(&format!("f{i}"), ChangeKind::Added), &mut (1 << 20));
        }
        assert!(w.is_ready());
        assert_eq!(w.take(1 << 20), Err(status::NOTIFY_ENUM_DIR), "one record past the bound");
        w.record(&change("f", ChangeKind::Modified), &mut (1 << 20));
        assert_eq!(w.take(4), Err(status::NOTIFY_ENUM_DIR), "does not fit 4 bytes");
        w.record(&change("f", ChangeKind::Modified), &mut (1 << 20));
        assert_eq!(w.take(0), Err(status::NOTIFY_ENUM_DIR), "an empty buffer only learns that something changed");
        w.record(&change("f", ChangeKind::Modified), &mut (1 << 20));
        assert_eq!(w.take(64), Ok(encode(&[(ACTION_MODIFIED, "f".into())])));
    }

    /// What a watch keeps is bounded in bytes: by its client's output buffer (records past it
    /// would be answered NOTIFY_ENUM_DIR anyway) and by the connection's budget, which a watch
    /// that overflows gives back.
    #[test]
    fn queued_records_are_bounded_in_bytes() {
        let mut w = Watch::new("data", "");
        w.arm(FILTER_FILE_NAME, true, 40);
        let mut budget = 1 << 20;
        w.record(&change("ab", ChangeKind::Added), &mut budget); // 12 + 4 bytes
        w.record(&change("cd", ChangeKind::Added), &mut budget); // 16 + 16 = 32
        assert_eq!((w.queued_bytes(), budget), (32, (1 << 20) - 32));
        assert_eq!(w.queued_bytes(), encode(&[(ACTION_ADDED, "ab".into()), (ACTION_ADDED, "cd".into())]).len(), "counted as encoded");
        w.record(&change("ef", ChangeKind::Added), &mut budget); // 48 > 40: overflows
        assert_eq!((w.queued_bytes(), budget), (0, 1 << 20), "the overflowed watch gave its bytes back");
        assert_eq!(w.take(40), Err(status::NOTIFY_ENUM_DIR));
        let mut small = 20;
        w.record(&change("ab", ChangeKind::Added), &mut small);
        w.record(&change("cd", ChangeKind::Added), &mut small); // the connection's budget runs out
        assert_eq!((w.take(40), small), (Err(status::NOTIFY_ENUM_DIR), 20));
    }
}
