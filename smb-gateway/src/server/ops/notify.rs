//! CHANGE_NOTIFY (MS-SMB2 3.3.5.19), and the changes this connection's file commands make,
//! which the driver publishes to every connection of the node.
//!
//! The paths of opens are kept here, beside the opens table: CREATE names one, a rename moves
//! it, CLOSE forgets it. A change is published when a command succeeded: CREATE that created
//! (added) or overwrote (modified), a rename, CLOSE of a file that was written or had its size
//! set (modified) or was to be deleted (removed).

use std::collections::HashMap;

use super::super::async_ops::{Waiting, ERROR_BODY};
use super::super::connection::{Connection, Reply};
use super::super::notify::{Change, ChangeKind, Watch, MAX_QUEUED_NOTIFY_BYTES_PER_CONNECTION, WATCH_TREE};
use super::*;
use crate::smb2::header::{Command, Header, HEADER_BYTES};
use crate::smb2::status;

/// A file or directory open on a share, by path.
#[derive(Clone, Debug)]
pub(in crate::server) struct OpenPath {
    share: String,
    path: String,
    directory: bool,
    written: bool,
}

/// The connection's watches, the paths of its opens, and the changes it made not yet published.
#[derive(Debug, Default)]
pub struct Tracking {
    paths: HashMap<u64, OpenPath>,
    watches: HashMap<u64, Watch>,
    published: Vec<Change>,
}

/// What a command's change needs to know from before it ran.
pub(in crate::server) enum Before {
    Nothing,
    /// CLOSE of a tracked open: its path, and whether it was to be deleted.
    Close(OpenPath, bool),
    /// SET_INFO on a tracked open.
    SetInfo(u64, OpenPath),
}

/// CREATE response CreateAction values.
const FILE_SUPERSEDED: u32 = 0;
const FILE_CREATED: u32 = 2;
const FILE_OVERWRITTEN: u32 = 3;

impl Connection {
    /// CHANGE_NOTIFY on an open directory: what its watch has queued, or a wait.
    pub(in crate::server) fn change_notify(&mut self, h: &Header, message: &[u8]) -> Reply {
        let b = &message[HEADER_BYTES..];
        let (Some(flags), Some(max_out), Some(volatile), Some(filter)) = (u16_at(b, 2), u32_at(b, 4), Self::file_id(b, 8), u32_at(b, 24)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        // MS-SMB2 3.3.5.19: a filter that asks for nothing is refused.
        if max_out > self.config.max_io_bytes || filter == 0 {
            return Reply::error(status::INVALID_PARAMETER);
        }
        match self.open_of(h, volatile) {
            Ok(o) if o.pipe.is_none() && o.info.directory => {}
            Ok(_) => return Reply::error(status::INVALID_PARAMETER),
            Err(s) => return Reply::error(s),
        }
        let Some(at) = self.tracking.paths.get(&volatile) else { return Reply::error(status::INVALID_PARAMETER) };
        let watch = self.tracking.watches.entry(volatile).or_insert_with(|| Watch::new(&at.share, &at.path));
        watch.arm(filter, flags & WATCH_TREE != 0, max_out as usize);
        if watch.is_ready() {
            return notify_reply(watch.take(max_out as usize));
        }
        Reply::wait(Waiting::Notify { volatile, max_out })
    }

    /// Changes made anywhere on the node (this connection's included): queued on the watches
    /// they concern, completing the CHANGE_NOTIFYs that wait on them.
    pub fn on_changes(&mut self, changes: &[Change]) {
        if self.tracking.watches.is_empty() {
            return;
        }
        let queued: usize = self.tracking.watches.values().map(Watch::queued_bytes).sum();
        let mut budget = MAX_QUEUED_NOTIFY_BYTES_PER_CONNECTION.saturating_sub(queued);
        for c in changes {
            for watch in self.tracking.watches.values_mut() {
                watch.record(c, &mut budget);
            }
            // A directory renamed through another connection (or node): opens and watches
            // below it move with it here too (a no-op for this connection's own renames,
            // which moved them already).
            if let (ChangeKind::Renamed { from }, true) = (&c.kind, c.directory) {
                for q in self.tracking.paths.values_mut().filter(|q| q.share.eq_ignore_ascii_case(&c.share)) {
                    if let Some(path) = super::super::notify::rebase(&q.path, from, &c.path) {
                        q.path = path;
                    }
                }
                for w in self.tracking.watches.values_mut() {
                    w.moved(&c.share, from, &c.path);
                }
            }
        }
        self.complete_notifies();
    }

    /// The node's notifier dropped changes meant for this connection: every watch reports
    /// NOTIFY_ENUM_DIR.
    pub fn on_changes_lost(&mut self) {
        for watch in self.tracking.watches.values_mut() {
            watch.overflow();
        }
        self.complete_notifies();
    }

    /// Whether any directory is watched (the driver listens to the node's changes only then).
    pub fn watching(&self) -> bool {
        !self.tracking.watches.is_empty()
    }

    /// Changes this connection's commands made since the last call, for the node's notifier.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.tracking.published)
    }

    fn complete_notifies(&mut self) {
        let ready = self.waits.matching(|w| matches!(w, Waiting::Notify { volatile, .. } if self.tracking.watches.get(volatile).is_some_and(Watch::is_ready)));
        for id in ready {
            let Some(&Waiting::Notify { volatile, max_out }) = self.waits.get(id).map(|op| &op.waiting) else { continue };
            // Two CHANGE_NOTIFYs waiting on one watch: the first takes what is queued, the
            // second waits for more.
            let Some(watch) = self.tracking.watches.get_mut(&volatile).filter(|w| w.is_ready()) else { continue };
            let reply = notify_reply(watch.take(max_out as usize));
            self.waits.finish(id, reply.status, reply.body());
        }
    }

    /// Forgets the paths and watches of opens that are gone; their waiting requests end
    /// (CHANGE_NOTIFY with STATUS_NOTIFY_CLEANUP, pipe reads with STATUS_CANCELLED).
    pub(in crate::server) fn end_orphaned_waits(&mut self) {
        let opens = &self.opens;
        self.tracking.paths.retain(|v, _| opens.contains_key(v));
        self.tracking.watches.retain(|v, _| opens.contains_key(v));
        for id in self.waits.matching(|w| !opens.contains_key(&w.volatile())) {
            let status = match self.waits.get(id).map(|op| op.waiting) {
                Some(Waiting::Notify { .. }) => status::NOTIFY_CLEANUP,
                // A lock that waited on a handle since closed (smbtorture smb2.lock.cancel).
                Some(Waiting::Lock { .. }) => status::RANGE_NOT_LOCKED,
                _ => status::CANCELLED,
            };
            self.waits.finish(id, status, &ERROR_BODY);
        }
    }

    /// What a change by this command will need from before it runs.
    pub(in crate::server) fn before_command(&self, h: &Header, message: &[u8]) -> Before {
        let b = message.get(HEADER_BYTES..).unwrap_or_default();
        let at = match h.command {
            Command::Close => 8,
            Command::SetInfo => 16,
            _ => return Before::Nothing,
        };
        let Some(volatile) = Self::file_id(b, at) else { return Before::Nothing };
        let (Some(path), Some(open)) = (self.tracking.paths.get(&volatile), self.opens.get(&volatile)) else { return Before::Nothing };
        match h.command {
            Command::Close => Before::Close(path.clone(), open.delete_on_close),
            _ => Before::SetInfo(volatile, path.clone()),
        }
    }

    /// Records what a command changed, once it succeeded.
    pub(in crate::server) fn after_command(&mut self, h: &Header, message: &[u8], reply: &Reply, before: Before) {
        if reply.status != status::SUCCESS {
            return;
        }
        let b = message.get(HEADER_BYTES..).unwrap_or_default();
        match (h.command, before) {
            (Command::Create, _) => self.created(h, message, reply),
            (Command::Write, _) => {
                if let Some(volatile) = Self::file_id(b, 16) {
                    self.mark_written(volatile);
                }
            }
            (Command::Close, Before::Close(p, delete)) => {
                let kind = if delete && !p.path.is_empty() {
                    ChangeKind::Removed
                } else if p.written {
                    ChangeKind::Modified
                } else {
                    return;
                };
                self.publish(&p, kind);
            }
            (Command::SetInfo, Before::SetInfo(volatile, p)) => self.set(volatile, p, b, message),
            _ => {}
        }
    }

    /// A WRITE through the open succeeded: its CLOSE reports the file modified.
    pub(in crate::server) fn mark_written(&mut self, volatile: u64) {
        if let Some(p) = self.tracking.paths.get_mut(&volatile) {
            p.written = true;
        }
    }

    fn created(&mut self, h: &Header, message: &[u8], reply: &Reply) {
        let b = message.get(HEADER_BYTES..).unwrap_or_default();
        let (Ok((_, _, false)), Some(off), Some(len)) = (self.tree(h), u16_at(b, 44), u16_at(b, 46)) else { return };
        let Some(path) = message.get(usize::from(off)..usize::from(off) + usize::from(len)).and_then(utf16) else { return };
        let (Some(action), Some(volatile)) = (u32_at(reply.body(), 4), u64_at(reply.body(), 72)) else { return };
        let Some(open) = self.opens.get(&volatile) else { return };
        let p = OpenPath { share: open.share.clone(), path: path.trim_matches('\\').to_string(), directory: open.info.directory, written: false };
        match action {
            FILE_CREATED => self.publish(&p, ChangeKind::Added),
            FILE_OVERWRITTEN | FILE_SUPERSEDED => self.publish(&p, ChangeKind::Modified),
            _ => {}
        }
        self.tracking.paths.insert(volatile, p);
    }

    fn set(&mut self, volatile: u64, p: OpenPath, b: &[u8], message: &[u8]) {
        // A security descriptor's SET_INFO changes no name or size.
        if b.get(2) == Some(&3) {
            if u32_at(b, 12).is_some_and(crate::security::names_parts) {
                self.publish(&p, ChangeKind::SecurityChanged);
            }
            return;
        }
        let (Some(1), Some(&class), Some(len), Some(off)) = (b.get(2), b.get(3), u32_at(b, 4), u16_at(b, 8)) else { return };
        let Some(data) = message.get(usize::from(off)..usize::from(off) + len as usize) else { return };
        match class {
            // FileRenameInformation: the new name from the share root.
            10 => {
                let Some(target) = u32_at(data, 16).and_then(|n| data.get(20..20 + n as usize)).and_then(utf16) else { return };
                let to = target.trim_matches('\\').to_string();
                let moved = OpenPath { path: to.clone(), ..p.clone() };
                self.publish(&moved, ChangeKind::Renamed { from: p.path.clone() });
                self.tracking.paths.insert(volatile, moved);
                if p.directory {
                    // Opens and watches below a renamed directory move with it.
                    for q in self.tracking.paths.values_mut().filter(|q| q.share.eq_ignore_ascii_case(&p.share)) {
                        if let Some(path) = super::super::notify::rebase(&q.path, &p.path, &to) {
                            q.path = path;
                        }
                    }
                    for w in self.tracking.watches.values_mut() {
                        w.moved(&p.share, &p.path, &to);
                    }
                }
            }
            // FileEndOfFileInformation, FileAllocationInformation: the size changed.
            19 | 20 => {
                if let Some(t) = self.tracking.paths.get_mut(&volatile) {
                    t.written = true;
                }
            }
            _ => {}
        }
    }

    fn publish(&mut self, p: &OpenPath, kind: ChangeKind) {
        self.tracking.published.push(Change { share: p.share.clone(), path: p.path.clone(), directory: p.directory, kind });
    }
}

/// A CHANGE_NOTIFY response (MS-SMB2 2.2.36) for what a watch gave.
fn notify_reply(taken: Result<Vec<u8>, u32>) -> Reply {
    match taken {
        Ok(records) => {
            let mut r = vec![9, 0];
            r.extend_from_slice(&((HEADER_BYTES + 8) as u16).to_le_bytes());
            r.extend_from_slice(&(records.len() as u32).to_le_bytes());
            if records.is_empty() {
                r.push(0);
            }
            r.extend_from_slice(&records);
            Reply::ok(r)
        }
        Err(s) => Reply::error(s),
    }
}

#[cfg(test)]
mod tests {
    use crate::server::notify::{FILTER_DIR_NAME, FILTER_FILE_NAME, FILTER_MODIFIED};
    use crate::server::testkit::*;
    use crate::smb2::header::{Command, Target};
    use crate::smb2::status;

    /// (action, name) records of a CHANGE_NOTIFY response body.
    fn records(body: &[u8]) -> Vec<(u32, String)> {
        let len = u32::from_le_bytes(body[4..8].try_into().unwrap()) as usize;
        let buf = &body[8..8 + len];
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let next = u32::from_le_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let action = u32::from_le_bytes(buf[at + 4..at + 8].try_into().unwrap());
            let n = u32::from_le_bytes(buf[at + 8..at + 12].try_into().unwrap()) as usize;
            out.push((action, crate::wire::utf16_decode(&buf[at + 12..at + 12 + n]).unwrap()));
            if next == 0 {
                return out;
            }
            at += next;
        }
    }

    #[test]
    fn a_waiting_change_notify_completes_with_the_same_async_id_when_another_connection_creates_a_file() {
        let files = MemFiles::with_dirs(&["d"]);
        let (mut watcher, mut writer) = (connection(), connection());
        let dir = open(&mut watcher, &files, 1, TREE, "d", true, 1);
        let (r, _) = exchange(&mut watcher, &files, &request(Command::ChangeNotify, 2, TREE, &change_notify(dir, FILTER_FILE_NAME, 0, 1024)));
        let Target::Async { async_id } = r[0].0.target else { panic!("an interim response") };
        assert_eq!(r[0].0.status, status::PENDING);
        assert!(watcher.take_sends().is_empty());
        open(&mut writer, &files, 1, TREE, "d\\new.txt", false, 2);
        let changes = writer.take_changes();
        assert_eq!(changes.len(), 1, "{changes:?}");
        watcher.on_changes(&changes);
        let finals: Vec<_> = watcher.take_sends().iter().flat_map(|f| split(f)).collect();
        let (h, body) = &finals[0];
        assert_eq!((h.status, h.command, h.message_id, h.target, h.credits), (status::SUCCESS, Command::ChangeNotify, 2, Target::Async { async_id }, 0));
        assert_eq!(records(body), vec![(1, "new.txt".to_string())]);
    }

    /// A security descriptor set on a file or a directory completes a watch for
    /// FILE_NOTIFY_CHANGE_SECURITY (as modified), and only such a watch.
    #[test]
    fn a_security_descriptor_set_is_a_security_change() {
        let files = MemFiles::with_dirs(&["d", "d\\sub"]);
        let (mut watcher, mut writer) = (connection(), connection());
        let dir = open(&mut watcher, &files, 1, TREE, "d", true, 1);
        exchange(&mut watcher, &files, &request(Command::ChangeNotify, 2, TREE, &change_notify(dir, crate::server::notify::FILTER_SECURITY, 0, 1024)));
        let mut other = connection();
        let dir2 = open(&mut other, &files, 1, TREE, "d", true, 1);
        exchange(&mut other, &files, &request(Command::ChangeNotify, 2, TREE, &change_notify(dir2, FILTER_MODIFIED | FILTER_FILE_NAME | FILTER_DIR_NAME, 0, 1024)));
        // Opened with WRITE_DAC (and the test kit's usual access).
        let (r, _) = exchange(&mut writer, &files, &request(Command::Create, 1, TREE, &create_with_access("d\\sub", true, 1, 0x0017_019F)));
        let sub = u64::from_le_bytes(r[0].1[72..80].try_into().unwrap());
        let _ = writer.take_changes();
        let sd = crate::security::Descriptor::default_for(true).encode();
        let (r, _) = exchange(&mut writer, &files, &request(Command::SetInfo, 2, TREE, &set_info(sub, 3, 0, crate::security::DACL, &sd)));
        assert_eq!(r[0].0.status, status::SUCCESS);
        let changes = writer.take_changes();
        watcher.on_changes(&changes);
        let finals: Vec<_> = watcher.take_sends().iter().flat_map(|f| split(f)).collect();
        assert_eq!(records(&finals[0].1), vec![(3, "sub".to_string())], "FILE_ACTION_MODIFIED");
        other.on_changes(&changes);
        assert!(other.take_sends().is_empty(), "not a change of names, sizes or times");
    }

    #[test]
    fn changes_queue_between_requests_renames_removes_and_writes_are_reported_and_watch_tree_reaches_below() {
        let files = MemFiles::with_dirs(&["d", "d\\sub"]);
        let mut c = connection();
        let root = open(&mut c, &files, 1, TREE, "", true, 1);
        let filter = FILTER_FILE_NAME | FILTER_DIR_NAME | FILTER_MODIFIED;
        let (r, _) = exchange(&mut c, &files, &request(Command::ChangeNotify, 2, TREE, &change_notify(root, filter, crate::server::notify::WATCH_TREE, 4096)));
        assert_eq!(r[0].0.status, status::PENDING);
        // Written then closed: added, then modified on close.
        let f = open(&mut c, &files, 3, TREE, "d\\sub\\f.txt", false, 2);
        exchange(&mut c, &files, &request(Command::Write, 4, TREE, &write(f, b"hello")));
        exchange(&mut c, &files, &request(Command::Close, 5, TREE, &close(f)));
        let made = c.take_changes();
        c.on_changes(&made);
        let finals: Vec<_> = c.take_sends().iter().flat_map(|f| split(f)).collect();
        assert_eq!(records(&finals[0].1), vec![(1, "d\\sub\\f.txt".to_string()), (3, "d\\sub\\f.txt".to_string())]);
        // Nothing waits now: the next change queues, and the next CHANGE_NOTIFY answers at once.
        let f = open(&mut c, &files, 6, TREE, "d\\sub\\f.txt", false, 1);
        let mut info = vec![0u8; 20];
        let mut name = Vec::new();
        crate::wire::put_utf16(&mut name, "d\\g.txt");
        info[16..20].copy_from_slice(&(name.len() as u32).to_le_bytes());
        info.extend_from_slice(&name);
        let (r, _) = exchange(&mut c, &files, &request(Command::SetInfo, 7, TREE, &set_info(f, 1, 10, 0, &info)));
        assert_eq!(r[0].0.status, status::SUCCESS);
        let made = c.take_changes();
        c.on_changes(&made);
        assert!(c.take_sends().is_empty(), "queued, nothing waits");
        let (r, _) = exchange(&mut c, &files, &request(Command::ChangeNotify, 8, TREE, &change_notify(root, filter, crate::server::notify::WATCH_TREE, 4096)));
        assert_eq!((r[0].0.status, r[0].0.target), (status::SUCCESS, Target::Sync { process_id: 0, tree_id: TREE }), "answered at once");
        assert_eq!(records(&r[0].1), vec![(4, "d\\sub\\f.txt".to_string()), (5, "d\\g.txt".to_string())]);
    }

    /// A directory renamed through another connection moves this connection's watch below it
    /// too; of two CHANGE_NOTIFYs waiting on one watch, the first takes the change and the
    /// second goes on waiting; a filter of nothing is refused.
    #[test]
    fn a_rename_elsewhere_moves_watches_and_a_second_waiting_notify_waits_on() {
        use crate::server::notify::{Change, ChangeKind};
        let files = MemFiles::with_dirs(&["a", "a\\b"]);
        let mut c = connection();
        let b = open(&mut c, &files, 1, TREE, "a\\b", true, 1);
        let (r, _) = exchange(&mut c, &files, &request(Command::ChangeNotify, 2, TREE, &change_notify(b, 0, 0, 1024)));
        assert_eq!(r[0].0.status, status::INVALID_PARAMETER, "a filter of nothing");
        for id in [3, 4] {
            let (r, _) = exchange(&mut c, &files, &request(Command::ChangeNotify, id, TREE, &change_notify(b, FILTER_FILE_NAME, 0, 1024)));
            assert_eq!(r[0].0.status, status::PENDING);
        }
        let change = |path: &str, kind| Change { share: "data".into(), path: path.into(), directory: false, kind };
        // Another node renames `a` to `z`, then creates a file in `z\b` and one in a new `a\b`.
        c.on_changes(&[Change { directory: true, ..change("z", ChangeKind::Renamed { from: "a".into() }) }]);
        c.on_changes(&[change("a\\b\\stale.txt", ChangeKind::Added), change("z\\b\\x.txt", ChangeKind::Added)]);
        let finals: Vec<_> = c.take_sends().iter().flat_map(|f| split(f)).collect();
        assert_eq!(finals.len(), 1, "one of the two waiting requests completes");
        assert_eq!((finals[0].0.message_id, records(&finals[0].1)), (3, vec![(1, "x.txt".to_string())]));
        c.on_changes(&[change("z\\b\\y.txt", ChangeKind::Added)]);
        let finals: Vec<_> = c.take_sends().iter().flat_map(|f| split(f)).collect();
        assert_eq!((finals[0].0.message_id, records(&finals[0].1)), (4, vec![(1, "y.txt".to_string())]));
    }

    #[test]
    fn change_notify_on_a_file_is_refused() {
        let files = MemFiles::with_dirs(&[]);
        let mut c = connection();
        let f = open(&mut c, &files, 1, TREE, "f.txt", false, 2);
        let (r, _) = exchange(&mut c, &files, &request(Command::ChangeNotify, 2, TREE, &change_notify(f, FILTER_FILE_NAME, 0, 1024)));
        assert_eq!(r[0].0.status, status::INVALID_PARAMETER);
    }
}
