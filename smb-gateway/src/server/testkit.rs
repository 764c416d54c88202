//! Unit-test helpers for the connection state machine: in-memory storage, a directory, an
//! environment, and request builders.

use std::collections::HashMap;
use std::sync::Mutex;

use super::connection::{Connection, Outcome};
use super::files::{FileInfo, Files, FsError};
use super::throttle::Throttle;
use super::{Config, Directory, Environment};
use crate::smb2::header::{Command, Header, Target, HEADER_BYTES};
use crate::wire::put_utf16;

pub const SESSION: u64 = 0x11;
pub const TREE: u32 = 1;
pub const IPC: u32 = 2;

pub fn config() -> Config {
    Config { server_guid: [7; 16], netbios_name: "UMBRA".into(), dns_name: "umbra".into(), signing_required: false, max_io_bytes: 1 << 20, lock_retry: super::LOCK_RETRY_INTERVAL }
}

/// A connection with one session, tree 1 on share "data" and tree 2 on IPC$.
pub fn connection() -> Connection {
    Connection::established_for_test(config(), SESSION, &[(TREE, "data"), (IPC, "IPC$")])
}

/// The same, with signing required (the session's key: AES-CMAC, all 1s; see [`signed`]).
pub fn signing_connection() -> Connection {
    Connection::established_for_test(Config { signing_required: true, ..config() }, SESSION, &[(TREE, "data"), (IPC, "IPC$")])
}

/// The session's signing algorithm and key.
pub const KEY: (crate::smb2::signing::Algorithm, [u8; 16]) = (crate::smb2::signing::Algorithm::AesCmac, [1; 16]);

/// `message` signed with the session's key.
pub fn signed(mut message: Vec<u8>) -> Vec<u8> {
    let flags = u32::from_le_bytes(message[16..20].try_into().unwrap()) | crate::smb2::header::FLAG_SIGNED;
    message[16..20].copy_from_slice(&flags.to_le_bytes());
    crate::smb2::signing::sign_in_place(KEY.0, &KEY.1, &mut message);
    message
}

pub struct Dir;

impl Directory for Dir {
    fn user(&self, _: &str) -> Option<(umbra_raft::command::NtHash, umbra_raft::command::Role)> {
        None
    }
    fn share(&self, name: &str) -> Option<(String, bool)> {
        name.eq_ignore_ascii_case("data").then(|| ("data".into(), false))
    }
    fn shares(&self) -> Vec<String> {
        vec!["data".into()]
    }
}

pub struct Env(pub Mutex<Throttle>);

impl Env {
    pub fn new() -> Env {
        Env(Mutex::new(Throttle::default()))
    }
}

impl Environment for Env {
    fn random(&mut self, out: &mut [u8]) {
        out.fill(3);
    }
    fn now(&self) -> u64 {
        133_000_000_000_000_000
    }
    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.0.lock().expect("throttle")
    }
}

/// Files in memory, by lower-cased path; the root is id 1. The first flag makes them served by
/// another node ([`Files::is_remote`]); the second makes every READ find all the bytes it asks
/// for (zeros), where otherwise files are empty. Security descriptors are kept by id.
#[derive(Default)]
pub struct MemFiles(Mutex<(HashMap<String, FileInfo>, u64)>, pub bool, pub bool, Mutex<HashMap<u64, Vec<u8>>>);

fn info(id: u64, name: &str, directory: bool) -> FileInfo {
    FileInfo { id, name: name.into(), directory, size: 0, allocated: 0, created: 0, written: 0, changed: 0, attributes: 0, delete_pending: false }
}

impl MemFiles {
    pub fn with_dirs(dirs: &[&str]) -> MemFiles {
        let f = MemFiles::default();
        {
            let mut g = f.0.lock().unwrap();
            g.1 = 100;
            g.0.insert(String::new(), info(1, "", true));
            for (i, d) in dirs.iter().enumerate() {
                g.0.insert(d.to_lowercase(), info(2 + i as u64, d, true));
            }
        }
        f
    }

    /// What is kept at `path` (lower-cased, `\\`-separated).
    pub fn info_at(&self, path: &str) -> Option<FileInfo> {
        self.0.lock().unwrap().0.get(&path.to_lowercase()).cloned()
    }

    fn path_of(&self, id: u64) -> Option<String> {
        self.0.lock().unwrap().0.iter().find(|(_, i)| i.id == id).map(|(p, _)| p.clone())
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_lowercase()
    } else {
        format!("{dir}\\{}", name.to_lowercase())
    }
}

impl Files for MemFiles {
    fn lookup(&self, _: &str, path: &str) -> Result<FileInfo, FsError> {
        self.0.lock().unwrap().0.get(&path.to_lowercase()).cloned().ok_or(FsError::NotFound)
    }
    fn stat(&self, _: &str, id: u64) -> Result<FileInfo, FsError> {
        self.0.lock().unwrap().0.values().find(|i| i.id == id).cloned().ok_or(FsError::NotFound)
    }
    fn create(&self, _: &str, parent: u64, name: &str, directory: bool, _: u64) -> Result<FileInfo, FsError> {
        let dir = self.path_of(parent).ok_or(FsError::PathNotFound)?;
        let mut g = self.0.lock().unwrap();
        g.1 += 1;
        let i = info(g.1, name, directory);
        g.0.insert(join(&dir, name), i.clone());
        Ok(i)
    }
    /// The entries of directory `dir` (by lower-cased name) after `after`, named by their last
    /// path component.
    fn list(&self, _: &str, dir: u64, after: &str, limit: u32) -> Result<Vec<FileInfo>, FsError> {
        let g = self.0.lock().unwrap();
        let dir_path = g.0.iter().find(|(_, i)| i.id == dir).map(|(p, _)| p.clone()).ok_or(FsError::NotFound)?;
        let mut out: Vec<FileInfo> = g
            .0
            .iter()
            .filter_map(|(p, i)| {
                let (parent, name) = p.rsplit_once('\\').unwrap_or(("", p));
                (!p.is_empty() && parent == dir_path && name > after).then(|| FileInfo { name: i.name.rsplit('\\').next().unwrap_or_default().to_string(), ..i.clone() })
            })
            .collect();
        out.sort_by_key(|i| i.name.to_lowercase());
        out.truncate(limit as usize);
        Ok(out)
    }
    fn read(&self, _: &str, _: u64, _: u64, len: u32, room: usize, _: Option<u64>) -> Result<Vec<u8>, FsError> {
        Ok(vec![0; room + if self.2 { len as usize } else { 0 }])
    }
    fn is_remote(&self, _: &str) -> bool {
        self.1
    }
    fn write(&self, _: &str, _: u64, _: u64, _: &[u8], _: crate::server::files::Stamp, _: Option<u64>) -> Result<(), FsError> {
        Ok(())
    }
    fn set_size(&self, _: &str, id: u64, size: u64, _: crate::server::files::Stamp) -> Result<(), FsError> {
        let mut g = self.0.lock().unwrap();
        g.0.values_mut().find(|i| i.id == id).ok_or(FsError::NotFound)?.size = size;
        Ok(())
    }
    fn set_basic(&self, _: &str, id: u64, basic: crate::server::files::Basic) -> Result<(), FsError> {
        let mut g = self.0.lock().unwrap();
        let i = g.0.values_mut().find(|i| i.id == id).ok_or(FsError::NotFound)?;
        i.created = basic.created.unwrap_or(i.created);
        i.written = basic.written.unwrap_or(i.written);
        i.changed = basic.changed.unwrap_or(i.changed);
        const SPARSE: u32 = 0x200;
        i.attributes = basic.attributes.map_or(i.attributes, |a| a & !SPARSE | i.attributes & SPARSE);
        match basic.sparse {
            Some(true) => i.attributes |= SPARSE,
            Some(false) => i.attributes &= !SPARSE,
            None => {}
        }
        Ok(())
    }
    fn unlink(&self, _: &str, parent: u64, name: &str, _: u64) -> Result<(), FsError> {
        let dir = self.path_of(parent).ok_or(FsError::PathNotFound)?;
        self.0.lock().unwrap().0.remove(&join(&dir, name)).map(|_| ()).ok_or(FsError::NotFound)
    }
    fn rename(&self, _: &str, from_dir: u64, from: &str, to_dir: u64, to: &str, _: bool, _: u64) -> Result<(), FsError> {
        let (a, b) = (self.path_of(from_dir).ok_or(FsError::PathNotFound)?, self.path_of(to_dir).ok_or(FsError::PathNotFound)?);
        let mut g = self.0.lock().unwrap();
        let i = g.0.remove(&join(&a, from)).ok_or(FsError::NotFound)?;
        g.0.insert(join(&b, to), i);
        Ok(())
    }
    fn flush(&self, _: &str) -> Result<(), FsError> {
        Ok(())
    }
    fn security(&self, _: &str, id: u64) -> Result<Option<Vec<u8>>, FsError> {
        Ok(self.3.lock().unwrap().get(&id).cloned())
    }
    fn set_security(&self, _: &str, id: u64, descriptor: Vec<u8>, parts: u32, _: u64) -> Result<(), FsError> {
        let directory = self.stat("", id)?.directory;
        let mut kept = self.3.lock().unwrap();
        let merged = crate::security::merged(kept.get(&id).map(Vec::as_slice), directory, &descriptor, parts).map_err(|_| FsError::InvalidSecurity)?;
        kept.insert(id, merged);
        Ok(())
    }
}

/// A request: header then body.
pub fn request(command: Command, message_id: u64, tree: u32, body: &[u8]) -> Vec<u8> {
    let h = Header { credit_charge: 1, status: 0, command, credits: 4, flags: 0, next_command: 0, message_id, target: Target::Sync { process_id: 0, tree_id: tree }, session_id: SESSION, signature: [0; 16] };
    let mut out = Vec::new();
    h.encode(&mut out);
    out.extend_from_slice(body);
    out
}

fn file_id(out: &mut Vec<u8>, volatile: u64) {
    out.extend_from_slice(&volatile.to_le_bytes());
    out.extend_from_slice(&volatile.to_le_bytes());
}

/// CREATE of `path`: a directory (FILE_OPEN_IF) or a file (FILE_CREATE, or FILE_OPEN on IPC$).
pub fn create(path: &str, directory: bool, disposition: u32) -> Vec<u8> {
    // Read, write, attributes and DELETE (rename and delete-on-close need it).
    create_with_access(path, directory, disposition, 0x0013_019F)
}

/// CREATE of `path` asking for `access` (DesiredAccess).
pub fn create_with_access(path: &str, directory: bool, disposition: u32, access: u32) -> Vec<u8> {
    let mut b = vec![57, 0, 0, 0];
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    b.extend_from_slice(&access.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&7u32.to_le_bytes()); // ShareAccess
    b.extend_from_slice(&disposition.to_le_bytes());
    b.extend_from_slice(&u32::from(directory).to_le_bytes()); // FILE_DIRECTORY_FILE
    let mut name = Vec::new();
    put_utf16(&mut name, path);
    b.extend_from_slice(&((HEADER_BYTES + 56) as u16).to_le_bytes());
    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&name);
    if name.is_empty() {
        b.push(0);
    }
    b
}

pub fn change_notify(volatile: u64, filter: u32, flags: u16, max_out: u32) -> Vec<u8> {
    let mut b = vec![32, 0];
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&max_out.to_le_bytes());
    file_id(&mut b, volatile);
    b.extend_from_slice(&filter.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}

pub fn read(volatile: u64, len: u32) -> Vec<u8> {
    let mut b = vec![49, 0, 0, 0];
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    file_id(&mut b, volatile);
    b.extend_from_slice(&[0; 17]);
    b
}

pub fn write(volatile: u64, data: &[u8]) -> Vec<u8> {
    let mut b = vec![49, 0];
    b.extend_from_slice(&((HEADER_BYTES + 48) as u16).to_le_bytes());
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    file_id(&mut b, volatile);
    b.extend_from_slice(&[0; 16]);
    b.extend_from_slice(data);
    b
}

/// SET_INFO of `data` as information `kind` (1 file, 3 security), class `class`, with
/// AdditionalInformation `additional`.
pub fn set_info(volatile: u64, kind: u8, class: u8, additional: u32, data: &[u8]) -> Vec<u8> {
    let mut b = vec![33, 0, kind, class];
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&((HEADER_BYTES + 32) as u16).to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&additional.to_le_bytes());
    file_id(&mut b, volatile);
    b.extend_from_slice(data);
    b
}

pub fn close(volatile: u64) -> Vec<u8> {
    let mut b = vec![24, 0, 0, 0, 0, 0, 0, 0];
    file_id(&mut b, volatile);
    b
}

/// Messages of response frames, each with its body.
pub type Messages = Vec<(Header, Vec<u8>)>;

/// Sends one frame; the reply's messages (empty for none) and the final responses it made.
pub fn exchange(c: &mut Connection, files: &MemFiles, frame: &[u8]) -> (Messages, Messages) {
    let replies = match c.on_frame(frame, &Dir, files, &mut Env::new()) {
        Outcome::Reply(r) => split(&r),
        Outcome::NoReply => Vec::new(),
        Outcome::Close(why) => panic!("the connection closed: {why}"),
    };
    let finals = c.take_sends().iter().flat_map(|f| split(f)).collect();
    (replies, finals)
}

/// The messages of a response frame, each with its body.
pub fn split(frame: &[u8]) -> Messages {
    crate::smb2::compound::split(frame).expect("a well-formed reply").into_iter().map(|(h, m)| (h, m[HEADER_BYTES..].to_vec())).collect()
}

/// Opens `path` and returns its volatile FileId.
pub fn open(c: &mut Connection, files: &MemFiles, message_id: u64, tree: u32, path: &str, directory: bool, disposition: u32) -> u64 {
    let (r, _) = exchange(c, files, &request(Command::Create, message_id, tree, &create(path, directory, disposition)));
    assert_eq!(r[0].0.status, 0, "CREATE {path}");
    u64::from_le_bytes(r[0].1[72..80].try_into().unwrap())
}
