//! CREATE (files, directories, pipes) and CLOSE.

use super::{Open, MAX_OPENS_PER_CONNECTION};
use super::super::connection::{Connection, Reply};
use super::super::files::{Basic, FileInfo, Files, FsError, Looked, NewFile};
use super::*;
use crate::smb2::header::{Header, Target, HEADER_BYTES};
use crate::share_modes;
use crate::smb2::status;

/// A registration with the volume's owner that is released unless the open is kept.
struct Held<'a> {
    files: &'a dyn Files,
    registration: Option<u64>,
}

impl<'a> Held<'a> {
    /// Registers an open that takes part in share-access checks; others need no registration.
    fn register(files: &'a dyn Files, share: &str, id: u64, mode: share_modes::Mode, delete_at_close: Option<(u64, &str)>) -> Result<Held<'a>, FsError> {
        let registration = if mode.counts() { Some(files.register_open(share, id, mode, delete_at_close)?) } else { None };
        Ok(Held { files, registration })
    }

    fn keep(mut self) -> Option<u64> {
        self.registration.take()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.registration.take() {
            self.files.release_open(r);
        }
    }
}

/// Create contexts one CREATE may carry before the rest are ignored.
const MAX_CREATE_CONTEXTS: usize = 32;

/// The data of the create context named `name` (MS-SMB2 2.2.13.2) of a CREATE request body `b`
/// (after the SMB2 header) within `message` (offsets count from the header): None without one
/// (or past a malformed list), Some(None) for one whose data lies outside the message.
pub(super) fn create_context<'a>(b: &[u8], message: &'a [u8], name: &[u8]) -> Option<Option<&'a [u8]>> {
    let (offset, length) = (u32_at(b, 48)? as usize, u32_at(b, 52)? as usize);
    if offset == 0 || length == 0 {
        return None;
    }
    let all = message.get(offset..offset.checked_add(length)?)?;
    let mut at = 0usize;
    for _ in 0..MAX_CREATE_CONTEXTS {
        let ctx = all.get(at..)?;
        let (next, name_off, name_len, data_off, data_len) = (u32_at(ctx, 0)? as usize, usize::from(u16_at(ctx, 4)?), usize::from(u16_at(ctx, 6)?), usize::from(u16_at(ctx, 10)?), u32_at(ctx, 12)? as usize);
        if ctx.get(name_off..name_off.checked_add(name_len)?)? == name {
            return Some(data_off.checked_add(data_len).and_then(|end| ctx.get(data_off..end)));
        }
        if next == 0 {
            return None;
        }
        at = at.checked_add(next)?;
    }
    None
}

/// What a SecD create context gives the file it creates: the descriptor, checked, and the
/// parts it has, which the owner lays over what the new file inherited from its directory (or
/// the default): one without an owner keeps that owner, one with only a DACL keeps the
/// inherited SACL. A SACL needs ACCESS_SYSTEM_SECURITY in the desired access, as a SET_INFO of
/// it does.
fn new_file_descriptor(data: Option<&[u8]>, access: u32) -> Result<(Vec<u8>, u32), u32> {
    use crate::security::{Descriptor, SACL};
    let given = Descriptor::parse(data.ok_or(status::INVALID_SECURITY_DESCR)?).map_err(|e| e.status())?;
    let parts = given.present_parts();
    if parts & SACL != 0 && access & share_modes::ACCESS_SYSTEM_SECURITY == 0 {
        return Err(status::ACCESS_DENIED);
    }
    Ok((given.encode(), parts))
}

impl Connection {
    pub(in crate::server) fn create(&mut self, h: &Header, message: &[u8], files: &dyn Files, dir: &dyn crate::server::Directory, now: u64) -> Reply {
        let b = &message[HEADER_BYTES..];
        let (Some(access), Some(disposition), Some(options), Some(name_off), Some(name_len)) = (u32_at(b, 24), u32_at(b, 36), u32_at(b, 40), u16_at(b, 44), u16_at(b, 46)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        let Some(path) = message.get(usize::from(name_off)..usize::from(name_off) + usize::from(name_len)).and_then(utf16).filter(|p| client_path_ok(p)) else {
            return Reply::error(status::OBJECT_NAME_INVALID);
        };
        // MS-FSA 2.1.5.1 parameter checks: a known disposition; not both directory options; a
        // directory is never superseded or overwritten.
        let directory_only = options & FILE_DIRECTORY_FILE != 0;
        if disposition > 5 || directory_only && options & FILE_NON_DIRECTORY_FILE != 0 || directory_only && matches!(disposition, 0 | 4 | 5) {
            return Reply::error(status::INVALID_PARAMETER);
        }
        let (mut share, mut read_only, ipc) = match self.tree(h) {
            Ok(t) => t,
            Err(s) => return Reply::error(s),
        };
        if self.opens.len() >= MAX_OPENS_PER_CONNECTION {
            return Reply::error(status::REQUEST_NOT_ACCEPTED);
        }
        if ipc {
            if self.opens.values().filter(|o| o.pipe.is_some()).count() >= super::MAX_PIPES_PER_CONNECTION {
                return Reply::error(status::REQUEST_NOT_ACCEPTED);
            }
            return self.open_pipe(h, &path, access, dir);
        }
        // Previous Versions: an @GMT path component or a TWrp context opens a shadow copy.
        let (path, at) = super::previous::strip_token(&path);
        let Ok(warp) = super::previous::timewarp(b, message) else { return Reply::error(status::INVALID_PARAMETER) };
        // A security descriptor for the file it creates (SecD, MS-SMB2 2.2.13.2.2), checked
        // before anything is created.
        let secd = match create_context(b, message, b"SecD") {
            None => None,
            Some(data) => match new_file_descriptor(data, access) {
                Ok(d) => Some(d),
                Err(s) => return Reply::error(s),
            },
        };
        if let Some(at) = at.or(warp) {
            if !dir.snapshot_times(&share).contains(&at) {
                return Reply::error(status::OBJECT_NAME_NOT_FOUND);
            }
            share = format!("{share}{}", super::previous::token(at));
            read_only = true;
            if access & WRITE_ACCESS != 0 && disposition == 1 {
                return Reply::error(status::MEDIA_WRITE_PROTECTED);
            }
        }
        let writes = access & WRITE_ACCESS != 0 || disposition != 1 || options & FILE_DELETE_ON_CLOSE != 0;
        if read_only && writes && disposition != 1 {
            return Reply::error(status::MEDIA_WRITE_PROTECTED);
        }
        // An open of an existing file on a read-only share gets no right to change it: not to
        // write, nor to delete (a DELETE or delete-on-close open is how clients delete).
        if read_only && writes {
            return Reply::error(status::ACCESS_DENIED);
        }
        let granted = share_modes::granted(access, if read_only { share_modes::READ_ONLY_ACCESS } else { share_modes::FILE_ALL_ACCESS });
        // MS-FSA 2.1.5.1: delete-on-close needs DELETE access on the open.
        if options & FILE_DELETE_ON_CLOSE != 0 && granted & share_modes::DELETE == 0 {
            return Reply::error(status::ACCESS_DENIED);
        }
        let share_access = u32_at(b, 32).unwrap_or(0) & share_modes::SHARE_ALL;
        // The attributes a created, superseded or overwritten file gets (MS-FSA 2.1.5.1.1 and
        // 2.1.5.1.2.1); ARCHIVE alone is what a file without any reports already.
        let asked = u32_at(b, 28).unwrap_or(0) & SETTABLE_ATTRIBUTES;
        // MS-FSA 2.1.5.1: a read-only file is never deleted, so never made to be at its close;
        // a directory is never temporary.
        if asked & FILE_ATTRIBUTE_READONLY != 0 && options & FILE_DELETE_ON_CLOSE != 0 {
            return Reply::error(status::CANNOT_DELETE);
        }
        if asked & ATTR_TEMPORARY != 0 && options & FILE_DIRECTORY_FILE != 0 {
            return Reply::error(status::INVALID_PARAMETER);
        }
        // Overwrite and supersede change the data: they are checked as writers.
        let implied = if matches!(disposition, 0 | 4 | 5) { share_modes::FILE_WRITE_DATA } else { 0 };
        let mode = share_modes::Mode { access: granted | implied, share: share_access };
        let path = path.trim_matches('\\').to_string();
        let name = path.rsplit_once('\\').map_or(path.as_str(), |(_, n)| n).to_string();
        let want_dir = options & FILE_DIRECTORY_FILE != 0;
        // Supersede, create, open-if and overwrite-if create a missing file: the owner then
        // creates it and registers this open in the same call.
        let creates = matches!(disposition, 0 | 2 | 3 | 5);
        let new = (creates && !read_only).then(|| NewFile { directory: want_dir, now, mode: mode.counts().then_some(mode), delete_at_close: options & FILE_DELETE_ON_CLOSE != 0 });
        let looked = match files.open_path(&share, &path, new) {
            Ok(looked) => looked,
            // Not even the directory that would hold it.
            Err(FsError::NotFound) => return Reply::error(status::OBJECT_PATH_NOT_FOUND),
            Err(e) => return fs(e),
        };
        let (info, action, parent, held) = match looked {
            Looked::Found { file: info, parent } => {
                if want_dir && !info.directory {
                    return Reply::error(status::NOT_A_DIRECTORY);
                }
                if options & FILE_NON_DIRECTORY_FILE != 0 && info.directory {
                    return Reply::error(status::FILE_IS_A_DIRECTORY);
                }
                if disposition == 2 {
                    return Reply::error(status::OBJECT_NAME_COLLISION);
                }
                let truncate = matches!(disposition, 0 | 4 | 5) && !info.directory;
                if truncate && read_only {
                    return Reply::error(status::MEDIA_WRITE_PROTECTED);
                }
                // A hidden or system file is replaced only by a caller that keeps it so.
                if truncate && info.attributes & (ATTR_HIDDEN | ATTR_SYSTEM) & !asked != 0 {
                    return Reply::error(status::ACCESS_DENIED);
                }
                // MS-FSA 2.1.5.1.2.1: a file with the READONLY attribute is neither deleted nor
                // opened to change its data.
                if info.attributes & FILE_ATTRIBUTE_READONLY != 0 {
                    if options & FILE_DELETE_ON_CLOSE != 0 {
                        return Reply::error(status::CANNOT_DELETE);
                    }
                    if !info.directory && (truncate || granted & (share_modes::FILE_WRITE_DATA | share_modes::FILE_APPEND_DATA) != 0) {
                        return Reply::error(status::ACCESS_DENIED);
                    }
                }
                let parent = parent.id;
                // The share-access check comes before the open changes anything.
                let doc = (options & FILE_DELETE_ON_CLOSE != 0 && !name.is_empty()).then_some((parent, name.as_str()));
                let held = match Held::register(files, &share, info.id, mode, doc) {
                    Ok(h) => h,
                    Err(e) => return fs(e),
                };
                if !truncate {
                    (info, 1, parent, held)
                } else {
                    if let Err(e) = files.set_size(&share, info.id, 0, now.into()) {
                        return fs(e);
                    }
                    // A file without attributes reports ARCHIVE: no call when that is all.
                    let replaced = asked | ATTR_ARCHIVE;
                    let reported = match info.attributes & SETTABLE_ATTRIBUTES {
                        0 => ATTR_ARCHIVE,
                        a => a,
                    };
                    if reported != replaced {
                        if let Err(e) = files.set_basic(&share, info.id, Basic { attributes: Some(replaced), ..Basic::default() }) {
                            return fs(e);
                        }
                    }
                    let info = match files.stat(&share, info.id) {
                        Ok(i) => i,
                        Err(e) => return fs(e),
                    };
                    (info, if disposition == 0 { 0 } else { 3 }, parent, held)
                }
            }
            Looked::Created { mut file, parent, registration } => {
                let held = Held { files, registration };
                // Attributes other than ARCHIVE cost one more call to the owner; a new file
                // without any reports ARCHIVE already.
                if asked & !ATTR_ARCHIVE != 0 {
                    let attributes = if want_dir { asked } else { asked | ATTR_ARCHIVE };
                    if let Err(e) = files.set_basic(&share, file.id, Basic { attributes: Some(attributes), ..Basic::default() }) {
                        // The CREATE fails: the file it made goes too (best effort), so that a
                        // retry finds no name taken.
                        let _ = files.unlink(&share, parent.id, &name, now);
                        return fs(e);
                    }
                    file.attributes = attributes;
                }
                if let Some((descriptor, parts)) = secd.filter(|(_, parts)| *parts != 0) {
                    if let Err(e) = files.set_security(&share, file.id, descriptor, parts, now) {
                        let _ = files.unlink(&share, parent.id, &name, now);
                        return fs(e);
                    }
                }
                (file, 2, parent.id, held)
            }
            Looked::Missing { .. } if !creates => return Reply::error(status::OBJECT_NAME_NOT_FOUND),
            Looked::Missing { .. } if read_only => return Reply::error(status::MEDIA_WRITE_PROTECTED),
            Looked::Missing { parent } if !parent.directory => return Reply::error(status::OBJECT_PATH_NOT_FOUND),
            Looked::Missing { .. } => return fs(FsError::Other("the file was neither found nor created".into())),
        };
        let volatile = self.next_file;
        self.next_file += 1;
        let tree = match h.target {
            Target::Sync { tree_id, .. } => tree_id,
            Target::Async { .. } => 0,
        };
        let mut r = vec![89, 0, 0, 0];
        r.extend_from_slice(&(action as u32).to_le_bytes());
        for t in [info.created, info.written, info.written, info.changed] {
            r.extend_from_slice(&t.to_le_bytes());
        }
        r.extend_from_slice(&info.allocated.to_le_bytes());
        r.extend_from_slice(&info.size.to_le_bytes());
        r.extend_from_slice(&attributes(&info).to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&volatile.to_le_bytes());
        r.extend_from_slice(&volatile.to_le_bytes());
        r.extend_from_slice(&[0; 8]);
        r.push(0);
        let delete_on_close = options & FILE_DELETE_ON_CLOSE != 0;
        let registration = held.keep();
        // The open holds what was granted: the write right an overwrite implies counts in the
        // share-access check only, not as a right of the handle.
        self.opens.insert(volatile, Open { session: h.session_id, tree, share, info, parent, name, path, delete_on_close, listing: None, pipe: None, access: granted, registration, disposed: false, resume_key: None, keep: Default::default() });
        Reply::ok(r)
    }

    /// (share, read-only, ipc) of the request's tree.
    pub(in crate::server) fn tree(&self, h: &Header) -> Result<(String, bool, bool), u32> {
        let Target::Sync { tree_id, .. } = h.target else { return Err(status::INVALID_PARAMETER) };
        match self.sessions.get(&h.session_id) {
            Some(Session::Established(s)) => s.trees.get(&tree_id).map(|t| (t.share.clone(), t.read_only, t.ipc)).ok_or(status::NETWORK_NAME_DELETED),
            _ => Err(status::USER_SESSION_DELETED),
        }
    }

    /// CREATE on IPC$: a named pipe served by the DCE/RPC layer (srvsvc; FssagentRpc when the
    /// server has an FSRVP service).
    pub(in crate::server) fn open_pipe(&mut self, h: &Header, path: &str, access: u32, dir: &dyn crate::server::Directory) -> Reply {
        let access = share_modes::granted(access, share_modes::FILE_ALL_ACCESS);
        let name = path.trim_start_matches('\\');
        let name = name.strip_prefix("pipe\\").or_else(|| name.strip_prefix("PIPE\\")).unwrap_or(name);
        let fsrvp = name.eq_ignore_ascii_case(crate::rpc::fsrvp::PIPE_NAME);
        if !crate::rpc::pipe_exists(name) || (fsrvp && dir.shadow_copies().is_none()) {
            return Reply::error(status::OBJECT_NAME_NOT_FOUND);
        }
        let volatile = self.next_file;
        self.next_file += 1;
        let tree = match h.target {
            Target::Sync { tree_id, .. } => tree_id,
            Target::Async { .. } => 0,
        };
        let info = FileInfo { id: volatile, name: name.to_string(), directory: false, size: 0, allocated: 0, created: 0, written: 0, changed: 0, attributes: 0x80, delete_pending: false };
        let mut r = vec![89, 0, 0, 0];
        r.extend_from_slice(&1u32.to_le_bytes()); // FILE_OPENED
        r.extend_from_slice(&[0; 48]); // times, allocation, end of file
        r.extend_from_slice(&0x80u32.to_le_bytes()); // FILE_ATTRIBUTE_NORMAL
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&volatile.to_le_bytes());
        r.extend_from_slice(&volatile.to_le_bytes());
        r.extend_from_slice(&[0; 8]);
        r.push(0);
        let pipe = crate::rpc::Pipe::new(name, (volatile as u32) | 0x1000);
        self.opens.insert(volatile, Open { session: h.session_id, tree, share: "IPC$".into(), info, parent: 0, name: name.to_string(), path: name.to_string(), delete_on_close: false, listing: None, pipe: Some(pipe), access, registration: None, disposed: false, resume_key: None, keep: Default::default() });
        Reply::ok(r)
    }

    /// The shares srvsvc lists: every share in Raft and IPC$.
    pub(in crate::server) fn share_entries(dir: &dyn crate::server::Directory) -> Vec<crate::rpc::ShareEntry> {
        let mut out: Vec<crate::rpc::ShareEntry> = dir.shares().into_iter().map(|name| crate::rpc::ShareEntry { name, kind: 0, remark: String::new() }).collect();
        out.push(crate::rpc::ShareEntry { name: "IPC$".into(), kind: 0x8000_0003, remark: "IPC Service (Umbra)".into() });
        out
    }

    pub(in crate::server) fn close(&mut self, h: &Header, message: &[u8], files: &dyn Files, now: u64) -> Reply {
        let b = &message[HEADER_BYTES..];
        let Some(volatile) = Self::file_id(b, 8) else { return Reply::error(status::INVALID_PARAMETER) };
        if let Err(s) = self.open_of(h, volatile) {
            return Reply::error(s);
        }
        let open = self.opens.remove(&volatile).expect("checked above");
        let postquery = u16_at(b, 2).unwrap_or(0) & 1 != 0;
        if let Err(e) = Self::close_one(&open, files, now) {
            return fs(e);
        }
        let mut r = vec![60, 0];
        r.extend_from_slice(&u16::from(postquery).to_le_bytes());
        r.extend_from_slice(&[0; 4]);
        let info = if postquery { files.stat(&open.share, open.info.id).ok() } else { None };
        match info {
            Some(i) => {
                for t in [i.created, i.written, i.written, i.changed] {
                    r.extend_from_slice(&t.to_le_bytes());
                }
                r.extend_from_slice(&i.allocated.to_le_bytes());
                r.extend_from_slice(&i.size.to_le_bytes());
                r.extend_from_slice(&attributes(&i).to_le_bytes());
            }
            None => r.extend_from_slice(&[0; 52]),
        }
        Reply::ok(r)
    }
}

#[cfg(test)]
mod tests {
    use crate::server::files::{Basic, Files};
    use crate::server::testkit::*;
    use crate::smb2::header::Command;
    use crate::smb2::status;

    /// CREATE of `path` with `disposition`, asking for the DOS attributes `attributes`.
    fn create_with_attributes(path: &str, directory: bool, disposition: u32, attributes: u32) -> Vec<u8> {
        let mut b = create(path, directory, disposition);
        b[28..32].copy_from_slice(&attributes.to_le_bytes());
        b
    }

    /// A created file gets the attributes its CREATE asks for (and ARCHIVE); an overwrite
    /// replaces them, and is refused when it would drop HIDDEN or SYSTEM (MS-FSA 2.1.5.1.2.1).
    #[test]
    fn create_applies_the_attributes_asked_for_and_an_overwrite_keeps_hidden_files_hidden() {
        let (mut c, files) = (connection(), MemFiles::with_dirs(&[]));
        let mut id = 1;
        let mut send = |path: &str, disposition: u32, attributes: u32| {
            id += 1;
            let (r, _) = exchange(&mut c, &files, &request(Command::Create, id, TREE, &create_with_attributes(path, false, disposition, attributes)));
            let got = (r[0].0.status == status::SUCCESS).then(|| u32::from_le_bytes(r[0].1[56..60].try_into().unwrap()));
            (r[0].0.status, got)
        };
        assert_eq!(send("h.txt", 2, 0x2), (status::SUCCESS, Some(0x22)), "HIDDEN, and ARCHIVE as a new file has");
        assert_eq!(send("plain.txt", 2, 0x80), (status::SUCCESS, Some(0x20)), "NORMAL: nothing but ARCHIVE");
        assert_eq!(send("h.txt", 5, 0), (status::ACCESS_DENIED, None), "an overwrite that would drop HIDDEN");
        assert_eq!(send("h.txt", 4, 0x4), (status::ACCESS_DENIED, None), "nor with SYSTEM instead");
        assert_eq!(send("h.txt", 5, 0x6), (status::SUCCESS, Some(0x26)), "one that keeps it replaces the attributes");
        assert_eq!(send("plain.txt", 5, 0x1), (status::SUCCESS, Some(0x21)), "READONLY set by an overwrite");
        files.set_basic("", files.info_at("h.txt").unwrap().id, Basic { attributes: Some(0x2), ..Basic::default() }).unwrap();
        assert_eq!(send("h.txt", 5, 0x2), (status::SUCCESS, Some(0x22)), "an overwrite adds ARCHIVE to attributes that lacked it");
        let stored: Vec<u32> = ["h.txt", "plain.txt"].iter().map(|p| files.info_at(p).unwrap().attributes).collect();
        assert_eq!(stored, [0x22, 0x21], "as stored");
        let mut doc = create_with_attributes("ro.txt", false, 2, 0x1);
        doc[40..44].copy_from_slice(&0x1040u32.to_le_bytes()); // non-directory, delete-on-close
        let (r, _) = exchange(&mut c, &files, &request(Command::Create, 50, TREE, &doc));
        assert_eq!(r[0].0.status, status::CANNOT_DELETE, "read-only and delete-on-close");
        assert!(files.info_at("ro.txt").is_none());
        let (r, _) = exchange(&mut c, &files, &request(Command::Create, 51, TREE, &create_with_attributes("d", true, 2, 0x100)));
        assert_eq!(r[0].0.status, status::INVALID_PARAMETER, "a temporary directory");
        let (r, _) = exchange(&mut c, &files, &request(Command::Create, 52, TREE, &create_with_attributes("hd", true, 2, 0x2)));
        assert_eq!(u32::from_le_bytes(r[0].1[56..60].try_into().unwrap()), 0x12, "a directory gets what it asks, without ARCHIVE");
    }
}
