//! File commands: CREATE, CLOSE, READ, WRITE, FLUSH, QUERY_DIRECTORY, QUERY_INFO, SET_INFO,
//! each checked against its session, tree and open, and carried out through [`Files`].

use super::connection::{Connection, Reply};
use super::files::{FileInfo, Files, FsError};
use super::session::Session;
use crate::smb2::header::{Header, Target, HEADER_BYTES};
use crate::smb2::status;

/// Opens one connection may hold.
pub const MAX_OPENS_PER_CONNECTION: usize = 4096;
/// Entries one directory listing round asks storage for.
const LIST_BATCH: u32 = 256;

const FILE_DIRECTORY_FILE: u32 = 0x0000_0001;
const FILE_NON_DIRECTORY_FILE: u32 = 0x0000_0040;
const FILE_DELETE_ON_CLOSE: u32 = 0x0000_1000;
const ATTR_DIRECTORY: u32 = 0x10;
const ATTR_ARCHIVE: u32 = 0x20;
/// Access rights that change a file or its directory.
const WRITE_ACCESS: u32 = 0x0001_0000 | 0x0000_0002 | 0x0000_0004 | 0x0000_0100 | 0x0000_0010 | 0x4000_0000 | 0x1000_0000;

/// An open file or directory.
pub struct Open {
    pub session: u64,
    pub tree: u32,
    pub share: String,
    pub info: FileInfo,
    pub parent: u64,
    pub name: String,
    pub delete_on_close: bool,
    pub listing: Option<Listing>,
    /// A named pipe on IPC$ (then `info` is a placeholder).
    pub pipe: Option<crate::rpc::Pipe>,
}

/// Where a QUERY_DIRECTORY enumeration stands.
pub struct Listing {
    pattern: String,
    after: String,
    dots_sent: bool,
    done: bool,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn utf16(bytes: &[u8]) -> Option<String> {
    if bytes.len() % 2 != 0 {
        return None;
    }
    String::from_utf16(&bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>()).ok()
}

fn put_utf16(out: &mut Vec<u8>, s: &str) {
    out.extend(s.encode_utf16().flat_map(u16::to_le_bytes));
}

fn attributes(f: &FileInfo) -> u32 {
    let base = f.attributes & !ATTR_DIRECTORY;
    if f.directory {
        base | ATTR_DIRECTORY
    } else if base == 0 {
        ATTR_ARCHIVE
    } else {
        base
    }
}

/// `*` and `?` wildcards, case-insensitive (DOS wildcards `<`, `>`, `"` as `*`, `?`, `.`).
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().map(|c| match c { '<' => '*', '>' => '?', '"' => '.', c => c }).collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn fs(e: FsError) -> Reply {
    Reply::error(e.status())
}

impl Connection {
    fn file_id(body: &[u8], at: usize) -> Option<u64> {
        u64_at(body, at + 8)
    }

    /// The open `volatile` belongs to this session and tree.
    fn open_of(&self, h: &Header, volatile: u64) -> Result<&Open, u32> {
        let tree = match h.target {
            Target::Sync { tree_id, .. } => tree_id,
            Target::Async { .. } => 0,
        };
        self.opens.get(&volatile).filter(|o| o.session == h.session_id && (tree == 0 || o.tree == tree)).ok_or(status::FILE_CLOSED)
    }

    pub(super) fn create(&mut self, h: &Header, message: &[u8], files: &dyn Files, now: u64) -> Reply {
        let b = &message[HEADER_BYTES..];
        let (Some(access), Some(disposition), Some(options), Some(name_off), Some(name_len)) = (u32_at(b, 24), u32_at(b, 36), u32_at(b, 40), u16_at(b, 44), u16_at(b, 46)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        let Some(path) = message.get(usize::from(name_off)..usize::from(name_off) + usize::from(name_len)).and_then(utf16) else {
            return Reply::error(status::OBJECT_NAME_INVALID);
        };
        let (share, read_only, ipc) = match self.tree(h) {
            Ok(t) => t,
            Err(s) => return Reply::error(s),
        };
        if self.opens.len() >= MAX_OPENS_PER_CONNECTION {
            return Reply::error(status::REQUEST_NOT_ACCEPTED);
        }
        if ipc {
            return self.open_pipe(h, &path);
        }
        let writes = access & WRITE_ACCESS != 0 || disposition != 1 || options & FILE_DELETE_ON_CLOSE != 0;
        if read_only && writes && disposition != 1 {
            return Reply::error(status::MEDIA_WRITE_PROTECTED);
        }
        let path = path.trim_matches('\\').to_string();
        let (parent_path, name) = match path.rsplit_once('\\') {
            Some((p, n)) => (p.to_string(), n.to_string()),
            None => (String::new(), path.clone()),
        };
        let want_dir = options & FILE_DIRECTORY_FILE != 0;
        let existing = files.lookup(&share, &path);
        let (info, action, parent) = match existing {
            Ok(info) => {
                if want_dir && !info.directory {
                    return Reply::error(status::NOT_A_DIRECTORY);
                }
                if options & FILE_NON_DIRECTORY_FILE != 0 && info.directory {
                    return Reply::error(status::FILE_IS_A_DIRECTORY);
                }
                let parent = if path.is_empty() { info.id } else { files.lookup(&share, &parent_path).map(|p| p.id).unwrap_or(info.id) };
                match disposition {
                    2 => return Reply::error(status::OBJECT_NAME_COLLISION),
                    0 | 4 | 5 if !info.directory => {
                        if read_only {
                            return Reply::error(status::MEDIA_WRITE_PROTECTED);
                        }
                        if let Err(e) = files.set_size(&share, info.id, 0, now) {
                            return fs(e);
                        }
                        let info = match files.stat(&share, info.id) {
                            Ok(i) => i,
                            Err(e) => return fs(e),
                        };
                        (info, if disposition == 0 { 0 } else { 3 }, parent)
                    }
                    _ => (info, 1, parent),
                }
            }
            Err(FsError::NotFound) if matches!(disposition, 0 | 2 | 3 | 5) => {
                if read_only {
                    return Reply::error(status::MEDIA_WRITE_PROTECTED);
                }
                let parent = match files.lookup(&share, &parent_path) {
                    Ok(p) if p.directory => p.id,
                    Ok(_) => return Reply::error(status::OBJECT_PATH_NOT_FOUND),
                    Err(_) => return Reply::error(status::OBJECT_PATH_NOT_FOUND),
                };
                match files.create(&share, parent, &name, want_dir, now) {
                    Ok(info) => (info, 2, parent),
                    Err(e) => return fs(e),
                }
            }
            Err(FsError::NotFound) => {
                return Reply::error(if files.lookup(&share, &parent_path).is_ok() { status::OBJECT_NAME_NOT_FOUND } else { status::OBJECT_PATH_NOT_FOUND })
            }
            Err(e) => return fs(e),
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
        self.opens.insert(volatile, Open { session: h.session_id, tree, share, info, parent, name, delete_on_close, listing: None, pipe: None });
        Reply::ok(r)
    }

    /// CREATE on IPC$: a named pipe served by the DCE/RPC layer (srvsvc for now).
    fn open_pipe(&mut self, h: &Header, path: &str) -> Reply {
        let name = path.trim_start_matches('\\');
        let name = name.strip_prefix("pipe\\").or_else(|| name.strip_prefix("PIPE\\")).unwrap_or(name);
        if !name.eq_ignore_ascii_case("srvsvc") {
            return Reply::error(status::OBJECT_NAME_NOT_FOUND);
        }
        let volatile = self.next_file;
        self.next_file += 1;
        let tree = match h.target {
            Target::Sync { tree_id, .. } => tree_id,
            Target::Async { .. } => 0,
        };
        let info = FileInfo { id: volatile, name: name.to_string(), directory: false, size: 0, allocated: 0, created: 0, written: 0, changed: 0, attributes: 0x80 };
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
        self.opens.insert(volatile, Open { session: h.session_id, tree, share: "IPC$".into(), info, parent: 0, name: name.to_string(), delete_on_close: false, listing: None, pipe: Some(pipe) });
        Reply::ok(r)
    }

    /// The shares srvsvc lists: every share in Raft and IPC$.
    pub(super) fn share_entries(dir: &dyn super::Directory) -> Vec<crate::rpc::ShareEntry> {
        let mut out: Vec<crate::rpc::ShareEntry> = dir.shares().into_iter().map(|name| crate::rpc::ShareEntry { name, kind: 0, remark: String::new() }).collect();
        out.push(crate::rpc::ShareEntry { name: "IPC$".into(), kind: 0x8000_0003, remark: "IPC Service (Umbra)".into() });
        out
    }

    /// FSCTL_PIPE_TRANSCEIVE: one request PDU in, the reply out (BUFFER_OVERFLOW when longer
    /// than the client's MaxOutputResponse; it reads the rest).
    pub(super) fn transceive(&mut self, h: &Header, body: &[u8], input: &[u8], max_out: u32, dir: &dyn super::Directory, env: &mut dyn super::Environment) -> Reply {
        let Some(volatile) = Self::file_id(body, 8) else { return Reply::error(status::INVALID_PARAMETER) };
        if let Err(s) = self.open_of(h, volatile) {
            return Reply::error(s);
        }
        if let Err(s) = self.feed_pipe(volatile, input, dir, env) {
            return Reply::error(s);
        }
        let Some(pipe) = self.opens.get_mut(&volatile).and_then(|o| o.pipe.as_mut()) else { return Reply::error(status::INVALID_DEVICE_REQUEST) };
        let out = pipe.read(max_out as usize);
        let more = pipe.pending() > 0;
        let mut r = vec![49, 0, 0, 0];
        r.extend_from_slice(&body[4..24]); // CtlCode, FileId
        r.extend_from_slice(&((HEADER_BYTES + 48) as u32).to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&((HEADER_BYTES + 48) as u32).to_le_bytes());
        r.extend_from_slice(&(out.len() as u32).to_le_bytes());
        r.extend_from_slice(&[0; 8]);
        r.extend_from_slice(&out);
        let mut reply = Reply::ok(r);
        if more {
            reply.status = status::BUFFER_OVERFLOW;
        }
        reply
    }

    /// (share, read-only, ipc) of the request's tree.
    fn tree(&self, h: &Header) -> Result<(String, bool, bool), u32> {
        let Target::Sync { tree_id, .. } = h.target else { return Err(status::INVALID_PARAMETER) };
        match self.sessions.get(&h.session_id) {
            Some(Session::Established(s)) => s.trees.get(&tree_id).map(|t| (t.share.clone(), t.read_only, t.ipc)).ok_or(status::NETWORK_NAME_DELETED),
            _ => Err(status::USER_SESSION_DELETED),
        }
    }

    pub(super) fn close(&mut self, h: &Header, message: &[u8], files: &dyn Files, now: u64) -> Reply {
        let b = &message[HEADER_BYTES..];
        let Some(volatile) = Self::file_id(b, 8) else { return Reply::error(status::INVALID_PARAMETER) };
        if let Err(s) = self.open_of(h, volatile) {
            return Reply::error(s);
        }
        let open = self.opens.remove(&volatile).expect("checked above");
        let postquery = u16_at(b, 2).unwrap_or(0) & 1 != 0;
        if open.delete_on_close && !open.name.is_empty() {
            if let Err(e) = files.unlink(&open.share, open.parent, &open.name, now) {
                return fs(e);
            }
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

    pub(super) fn write(&mut self, h: &Header, message: &[u8], files: &dyn Files, dir: &dyn super::Directory, env: &mut dyn super::Environment) -> Reply {
        let now = env.now();
        let b = &message[HEADER_BYTES..];
        let (Some(data_off), Some(len), Some(offset), Some(volatile)) = (u16_at(b, 2), u32_at(b, 4), u64_at(b, 8), Self::file_id(b, 16)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        if len > self.config.max_io_bytes {
            return Reply::error(status::INVALID_PARAMETER);
        }
        let Some(data) = message.get(usize::from(data_off)..usize::from(data_off) + len as usize) else { return Reply::error(status::INVALID_PARAMETER) };
        if self.opens.get(&volatile).is_some_and(|o| o.pipe.is_some()) && self.open_of(h, volatile).is_ok() {
            if let Err(s) = self.feed_pipe(volatile, data, dir, env) {
                return Reply::error(s);
            }
            let mut r = vec![17, 0, 0, 0];
            r.extend_from_slice(&len.to_le_bytes());
            r.extend_from_slice(&[0; 9]);
            return Reply::ok(r);
        }
        let (share, id) = match self.open_of(h, volatile) {
            Ok(o) if o.info.directory => return Reply::error(status::FILE_IS_A_DIRECTORY),
            Ok(o) => (o.share.clone(), o.info.id),
            Err(s) => return Reply::error(s),
        };
        if matches!(self.tree(h), Ok((_, true, _))) {
            return Reply::error(status::MEDIA_WRITE_PROTECTED);
        }
        if let Err(e) = files.write(&share, id, offset, data, now) {
            return fs(e);
        }
        let mut r = vec![17, 0, 0, 0];
        r.extend_from_slice(&len.to_le_bytes());
        r.extend_from_slice(&[0; 9]);
        Reply::ok(r)
    }

    pub(super) fn read(&mut self, h: &Header, message: &[u8], files: &dyn Files) -> Reply {
        let b = &message[HEADER_BYTES..];
        let (Some(len), Some(offset), Some(volatile)) = (u32_at(b, 4), u64_at(b, 8), Self::file_id(b, 16)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        if len > self.config.max_io_bytes {
            return Reply::error(status::INVALID_PARAMETER);
        }
        if let Some(pipe) = self.opens.get_mut(&volatile).and_then(|o| o.pipe.as_mut()) {
            let data = pipe.read(len as usize);
            if data.is_empty() {
                return Reply::error(status::PIPE_EMPTY);
            }
            let more = pipe.pending() > 0;
            let mut r = vec![17, 0, (HEADER_BYTES + 16) as u8, 0];
            r.extend_from_slice(&(data.len() as u32).to_le_bytes());
            r.extend_from_slice(&[0; 8]);
            r.extend_from_slice(&data);
            let mut reply = Reply::ok(r);
            if more {
                reply.status = status::BUFFER_OVERFLOW;
            }
            return reply;
        }
        let (share, id) = match self.open_of(h, volatile) {
            Ok(o) if o.info.directory => return Reply::error(status::INVALID_PARAMETER),
            Ok(o) => (o.share.clone(), o.info.id),
            Err(s) => return Reply::error(s),
        };
        let data = match files.read(&share, id, offset, len) {
            Ok(d) if d.is_empty() && len > 0 => return Reply::error(status::END_OF_FILE),
            Ok(d) => d,
            Err(e) => return fs(e),
        };
        let mut r = vec![17, 0, (HEADER_BYTES + 16) as u8, 0];
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        r.extend_from_slice(&[0; 8]);
        r.extend_from_slice(&data);
        Reply::ok(r)
    }

    /// One PDU into a pipe, with the shares and the NTLM context a call may need.
    fn feed_pipe(&mut self, volatile: u64, pdu: &[u8], dir: &dyn super::Directory, env: &mut dyn super::Environment) -> Result<(), u32> {
        let shares = Self::share_entries(dir);
        let mut server_challenge = [0u8; 8];
        env.random(&mut server_challenge);
        let user = |name: &str| dir.user(name).map(|(hash, _)| hash);
        let netbios = self.config.netbios_name.clone();
        let ctx = crate::rpc::auth::AuthContext { user: &user, server_challenge, now: env.now(), netbios_name: &netbios };
        let pipe = self.opens.get_mut(&volatile).and_then(|o| o.pipe.as_mut()).ok_or(status::FILE_CLOSED)?;
        pipe.write(pdu, &shares, &ctx).map_err(|_| status::INVALID_PARAMETER)
    }

    pub(super) fn flush(&mut self, h: &Header, message: &[u8], files: &dyn Files) -> Reply {
        let Some(volatile) = Self::file_id(&message[HEADER_BYTES..], 8) else { return Reply::error(status::INVALID_PARAMETER) };
        let share = match self.open_of(h, volatile) {
            Ok(o) => o.share.clone(),
            Err(s) => return Reply::error(s),
        };
        match files.flush(&share) {
            Ok(()) => Reply::ok(vec![4, 0, 0, 0]),
            Err(e) => fs(e),
        }
    }

    pub(super) fn query_directory(&mut self, h: &Header, message: &[u8], files: &dyn Files) -> Reply {
        let b = &message[HEADER_BYTES..];
        let (Some(&class), Some(&flags), Some(volatile), Some(name_off), Some(name_len), Some(out_len)) = (b.get(2), b.get(3), Self::file_id(b, 8), u16_at(b, 24), u16_at(b, 26), u32_at(b, 28)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        if !matches!(class, 1 | 2 | 3 | 12 | 37 | 38) {
            return Reply::error(status::INVALID_INFO_CLASS);
        }
        let pattern = message.get(usize::from(name_off)..usize::from(name_off) + usize::from(name_len)).and_then(utf16).unwrap_or_default();
        let (share, dir, is_dir) = match self.open_of(h, volatile) {
            Ok(o) => (o.share.clone(), o.info.clone(), o.info.directory),
            Err(s) => return Reply::error(s),
        };
        if !is_dir {
            return Reply::error(status::INVALID_PARAMETER);
        }
        let open = self.opens.get_mut(&volatile).expect("checked above");
        let restart = flags & (0x01 | 0x10) != 0 || open.listing.is_none();
        if restart {
            let pattern = if pattern.is_empty() { "*".to_string() } else { pattern };
            open.listing = Some(Listing { pattern, after: String::new(), dots_sent: false, done: false });
        }
        let listing = open.listing.as_mut().expect("set above");
        if listing.done {
            return Reply::error(status::NO_MORE_FILES);
        }
        let single = flags & 0x02 != 0;
        let limit = (out_len as usize).min(self.config.max_io_bytes as usize);
        let mut out: Vec<u8> = Vec::new();
        let mut last_entry_at: Option<usize> = None;
        let mut push = |out: &mut Vec<u8>, f: &FileInfo, name: &str| -> bool {
            let entry = dir_entry(class, f, name);
            let start = out.len().div_ceil(8) * 8;
            if start + entry.len() > limit {
                return false;
            }
            if let Some(prev) = last_entry_at {
                let next = (start - prev) as u32;
                out[prev..prev + 4].copy_from_slice(&next.to_le_bytes());
            }
            out.resize(start, 0);
            out.extend_from_slice(&entry);
            last_entry_at = Some(start);
            true
        };
        let mut any = false;
        if !listing.dots_sent && matches(&listing.pattern, ".") {
            for dot in [".", ".."] {
                if !push(&mut out, &dir, dot) {
                    break;
                }
                any = true;
            }
            listing.dots_sent = true;
        }
        listing.dots_sent = true;
        'outer: while !(single && any) {
            let batch = match files.list(&share, dir.id, &listing.after, LIST_BATCH) {
                Ok(b) => b,
                Err(e) => return fs(e),
            };
            if batch.is_empty() {
                listing.done = true;
                break;
            }
            for f in &batch {
                if !matches(&listing.pattern, &f.name) {
                    listing.after = f.name.to_lowercase();
                    continue;
                }
                if (single && any) || !push(&mut out, f, &f.name) {
                    break 'outer;
                }
                listing.after = f.name.to_lowercase();
                any = true;
            }
        }
        if !any {
            listing.done = true;
            return Reply::error(if restart { status::NO_SUCH_FILE } else { status::NO_MORE_FILES });
        }
        let mut r = vec![9, 0];
        r.extend_from_slice(&((HEADER_BYTES + 8) as u16).to_le_bytes());
        r.extend_from_slice(&(out.len() as u32).to_le_bytes());
        r.extend_from_slice(&out);
        Reply::ok(r)
    }

    pub(super) fn query_info(&mut self, h: &Header, message: &[u8], files: &dyn Files) -> Reply {
        let b = &message[HEADER_BYTES..];
        let (Some(&kind), Some(&class), Some(out_len), Some(volatile)) = (b.get(2), b.get(3), u32_at(b, 4), Self::file_id(b, 24)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        let (share, id, name, delete_pending) = match self.open_of(h, volatile) {
            Ok(o) => (o.share.clone(), o.info.id, o.name.clone(), o.delete_on_close),
            Err(s) => return Reply::error(s),
        };
        let info = match files.stat(&share, id) {
            Ok(i) => i,
            Err(e) => return fs(e),
        };
        let data = match (kind, class) {
            (1, c) => match file_info(c, &info, &name, delete_pending) {
                Some(d) => d,
                None => return Reply::error(status::INVALID_INFO_CLASS),
            },
            (2, c) => match fs_info(c, &self.config.netbios_name) {
                Some(d) => d,
                None => return Reply::error(status::INVALID_INFO_CLASS),
            },
            _ => return Reply::error(status::NOT_SUPPORTED),
        };
        if data.len() > out_len as usize {
            return Reply::error(status::INFO_LENGTH_MISMATCH);
        }
        let mut r = vec![9, 0];
        r.extend_from_slice(&((HEADER_BYTES + 8) as u16).to_le_bytes());
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        r.extend_from_slice(&data);
        Reply::ok(r)
    }

    pub(super) fn set_info(&mut self, h: &Header, message: &[u8], files: &dyn Files, now: u64) -> Reply {
        let b = &message[HEADER_BYTES..];
        let (Some(&kind), Some(&class), Some(len), Some(off), Some(volatile)) = (b.get(2), b.get(3), u32_at(b, 4), u16_at(b, 8), Self::file_id(b, 16)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        let Some(data) = message.get(usize::from(off)..usize::from(off) + len as usize) else { return Reply::error(status::INVALID_PARAMETER) };
        if kind != 1 {
            return Reply::error(status::NOT_SUPPORTED);
        }
        if matches!(self.tree(h), Ok((_, true, _))) {
            return Reply::error(status::MEDIA_WRITE_PROTECTED);
        }
        let (share, info, parent, name) = match self.open_of(h, volatile) {
            Ok(o) => (o.share.clone(), o.info.clone(), o.parent, o.name.clone()),
            Err(s) => return Reply::error(s),
        };
        let done = |r: Result<(), FsError>| match r {
            Ok(()) => Reply::ok(vec![2, 0]),
            Err(e) => fs(e),
        };
        match class {
            // FileRenameInformation: ReplaceIfExists, RootDirectory, FileName (from the share root).
            10 => {
                let (Some(&replace), Some(name_len)) = (data.first(), u32_at(data, 16)) else { return Reply::error(status::INVALID_PARAMETER) };
                let Some(target) = data.get(20..20 + name_len as usize).and_then(utf16) else { return Reply::error(status::INVALID_PARAMETER) };
                let target = target.trim_matches('\\').to_string();
                let (to_parent_path, to_name) = match target.rsplit_once('\\') {
                    Some((p, n)) => (p.to_string(), n.to_string()),
                    None => (String::new(), target.clone()),
                };
                let to_dir = match files.lookup(&share, &to_parent_path) {
                    Ok(d) if d.directory => d.id,
                    _ => return Reply::error(status::OBJECT_PATH_NOT_FOUND),
                };
                let result = files.rename(&share, parent, &name, to_dir, &to_name, replace != 0, now);
                if result.is_ok() {
                    if let Some(o) = self.opens.get_mut(&volatile) {
                        o.parent = to_dir;
                        o.name = to_name;
                    }
                }
                done(result)
            }
            // FileDispositionInformation / Ex: delete when the last handle closes.
            13 | 64 => {
                let delete = data.first().is_some_and(|&d| d & 1 != 0);
                if delete && info.directory && files.list(&share, info.id, "", 1).map(|l| !l.is_empty()).unwrap_or(false) {
                    return Reply::error(status::DIRECTORY_NOT_EMPTY);
                }
                if let Some(o) = self.opens.get_mut(&volatile) {
                    o.delete_on_close = delete;
                }
                Reply::ok(vec![2, 0])
            }
            // FileEndOfFileInformation.
            20 => match u64_at(data, 0) {
                Some(size) => done(files.set_size(&share, info.id, size, now)),
                None => Reply::error(status::INVALID_PARAMETER),
            },
            // FileAllocationInformation and FileBasicInformation: accepted (times and
            // attributes are kept by the store on writes; SET of times comes later).
            19 | 4 => Reply::ok(vec![2, 0]),
            _ => Reply::error(status::INVALID_INFO_CLASS),
        }
    }
}

/// One QUERY_DIRECTORY entry in information class `class` (MS-FSCC 2.4): FileDirectory (1),
/// FileFullDirectory (2), FileBothDirectory (3), FileNames (12), FileIdBothDirectory (37),
/// FileIdFullDirectory (38).
fn dir_entry(class: u8, f: &FileInfo, name: &str) -> Vec<u8> {
    let name_bytes = (name.encode_utf16().count() * 2) as u32;
    let mut e = Vec::with_capacity(104 + name_bytes as usize);
    e.extend_from_slice(&0u32.to_le_bytes()); // NextEntryOffset, patched by the caller
    e.extend_from_slice(&0u32.to_le_bytes()); // FileIndex
    if class == 12 {
        e.extend_from_slice(&name_bytes.to_le_bytes());
        put_utf16(&mut e, name);
        return e;
    }
    for t in [f.created, f.written, f.written, f.changed] {
        e.extend_from_slice(&t.to_le_bytes());
    }
    e.extend_from_slice(&f.size.to_le_bytes());
    e.extend_from_slice(&f.allocated.to_le_bytes());
    e.extend_from_slice(&attributes(f).to_le_bytes());
    e.extend_from_slice(&name_bytes.to_le_bytes());
    if class != 1 {
        e.extend_from_slice(&0u32.to_le_bytes()); // EaSize
    }
    match class {
        3 | 37 => {
            e.extend_from_slice(&[0; 2]); // ShortNameLength, Reserved1
            e.extend_from_slice(&[0; 24]); // ShortName
            if class == 37 {
                e.extend_from_slice(&[0; 2]); // Reserved2
                e.extend_from_slice(&f.id.to_le_bytes());
            }
        }
        38 => {
            e.extend_from_slice(&[0; 4]); // Reserved
            e.extend_from_slice(&f.id.to_le_bytes());
        }
        _ => {}
    }
    put_utf16(&mut e, name);
    e
}

fn basic(f: &FileInfo) -> Vec<u8> {
    let mut d = Vec::with_capacity(40);
    for t in [f.created, f.written, f.written, f.changed] {
        d.extend_from_slice(&t.to_le_bytes());
    }
    d.extend_from_slice(&attributes(f).to_le_bytes());
    d.extend_from_slice(&[0; 4]);
    d
}

fn standard(f: &FileInfo, delete_pending: bool) -> Vec<u8> {
    let mut d = Vec::with_capacity(24);
    d.extend_from_slice(&f.allocated.to_le_bytes());
    d.extend_from_slice(&f.size.to_le_bytes());
    d.extend_from_slice(&1u32.to_le_bytes());
    d.extend_from_slice(&[u8::from(delete_pending), u8::from(f.directory), 0, 0]);
    d
}

/// FILE_INFORMATION classes (MS-FSCC 2.4).
fn file_info(class: u8, f: &FileInfo, name: &str, delete_pending: bool) -> Option<Vec<u8>> {
    Some(match class {
        4 => basic(f),
        5 => standard(f, delete_pending),
        6 => f.id.to_le_bytes().to_vec(),
        7 => vec![0; 4],
        8 => 0x001f_01ffu32.to_le_bytes().to_vec(),
        14 => vec![0; 8],
        16 => vec![0; 4],
        17 => vec![0; 4],
        18 => {
            let mut d = basic(f);
            d.extend(standard(f, delete_pending));
            d.extend_from_slice(&f.id.to_le_bytes());
            d.extend_from_slice(&[0; 4]); // EA
            d.extend_from_slice(&0x001f_01ffu32.to_le_bytes()); // access
            d.extend_from_slice(&[0; 8]); // position
            d.extend_from_slice(&[0; 8]); // mode, alignment
            let mut n = Vec::new();
            put_utf16(&mut n, &format!("\\{name}"));
            d.extend_from_slice(&(n.len() as u32).to_le_bytes());
            d.extend(n);
            d
        }
        34 => {
            let mut d = Vec::with_capacity(56);
            for t in [f.created, f.written, f.written, f.changed] {
                d.extend_from_slice(&t.to_le_bytes());
            }
            d.extend_from_slice(&f.allocated.to_le_bytes());
            d.extend_from_slice(&f.size.to_le_bytes());
            d.extend_from_slice(&attributes(f).to_le_bytes());
            d.extend_from_slice(&[0; 4]);
            d
        }
        35 => {
            let mut d = attributes(f).to_le_bytes().to_vec();
            d.extend_from_slice(&[0; 4]);
            d
        }
        _ => return None,
    })
}

/// FS_INFORMATION classes (MS-FSCC 2.5); sizes are nominal until volumes report capacity.
fn fs_info(class: u8, label: &str) -> Option<Vec<u8>> {
    const UNITS: u64 = 1 << 30; // 4 TiB in 4 KiB units
    Some(match class {
        1 => {
            let mut d = vec![0; 8];
            d.extend_from_slice(&0x554d_4252u32.to_le_bytes());
            let mut l = Vec::new();
            put_utf16(&mut l, label);
            d.extend_from_slice(&(l.len() as u32).to_le_bytes());
            d.extend_from_slice(&[0, 0]);
            d.extend(l);
            d
        }
        3 => [UNITS.to_le_bytes(), UNITS.to_le_bytes()].concat().into_iter().chain(8u32.to_le_bytes()).chain(512u32.to_le_bytes()).collect(),
        4 => [7u32.to_le_bytes(), 0u32.to_le_bytes()].concat(),
        5 => {
            // Case-preserved, Unicode names, sparse files.
            let mut d = (0x0000_0002u32 | 0x0000_0004 | 0x0000_0040).to_le_bytes().to_vec();
            d.extend_from_slice(&255u32.to_le_bytes());
            let mut n = Vec::new();
            put_utf16(&mut n, "NTFS");
            d.extend_from_slice(&(n.len() as u32).to_le_bytes());
            d.extend(n);
            d
        }
        7 => [UNITS, UNITS, UNITS].iter().flat_map(|u| u.to_le_bytes()).chain(8u32.to_le_bytes()).chain(512u32.to_le_bytes()).collect(),
        11 => [512u32, 4096, 4096, 4096, 0x0000_0003, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn wildcards() {
        assert!(matches("*", "a.txt"));
        assert!(matches("*.TXT", "a.txt"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "abbc"));
        assert!(matches("g.txt", "G.TXT"));
        assert!(!matches("g.txt", "h.txt"));
        assert!(matches("<.txt", "x.txt"));
        assert!(matches("*", "."));
    }
}
