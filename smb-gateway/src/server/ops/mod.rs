//! File commands: CREATE, CLOSE, READ, WRITE, FLUSH, LOCK, QUERY_DIRECTORY, QUERY_INFO, SET_INFO,
//! each checked against its session, tree and open, and carried out through [`super::files::Files`]; named
//! pipes on IPC$ go to the DCE/RPC layer. One file per group of commands.

mod create;
mod data;
pub use data::READ_ROOM;
pub(in crate::server) use data::{ioctl_body, read_body, read_reply, write_body};
mod dir;
mod info;
mod lock;
pub use copy::MAX_COPY_CHUNK_BYTES;
pub use lock::LOCK_RETRY_INTERVAL;
pub(in crate::server) mod notify;
pub(in crate::server) mod previous;
pub(in crate::server) mod copy;
pub(in crate::server) mod sparse;

pub(in crate::server) use crate::wire::{put_utf16, u16_at, u32_at, u64_at, utf16_decode as utf16};
use super::connection::{Connection, Reply};
use super::files::{FileInfo, FsError};
use super::session::Session;
use crate::smb2::header::{Header, Target};
use crate::smb2::status;

/// Opens one connection may hold.
pub const MAX_OPENS_PER_CONNECTION: usize = 4096;
/// Named-pipe opens per connection, within [`MAX_OPENS_PER_CONNECTION`]: each may buffer a
/// request stub and replies ([`crate::rpc::MAX_STUB_BYTES`], [`crate::rpc::MAX_PIPE_OUTPUT_BYTES`]),
/// so this bounds what one connection's pipes hold (32 × 2 MiB).
pub const MAX_PIPES_PER_CONNECTION: usize = 32;
/// Entries one directory listing round asks storage for.
const LIST_BATCH: u32 = 256;

const FILE_DIRECTORY_FILE: u32 = 0x0000_0001;
const FILE_NON_DIRECTORY_FILE: u32 = 0x0000_0040;
const FILE_DELETE_ON_CLOSE: u32 = 0x0000_1000;
/// FILE_ATTRIBUTE_READONLY (MS-FSCC 2.6).
const FILE_ATTRIBUTE_READONLY: u32 = 0x0000_0001;
const ATTR_DIRECTORY: u32 = 0x10;
const ATTR_ARCHIVE: u32 = 0x20;
const ATTR_HIDDEN: u32 = 0x2;
const ATTR_TEMPORARY: u32 = 0x100;
const ATTR_SYSTEM: u32 = 0x4;
/// DOS attributes a client may set (MS-FSCC 2.6); FILE_ATTRIBUTE_NORMAL alone clears them all.
const SETTABLE_ATTRIBUTES: u32 = FILE_ATTRIBUTE_READONLY | ATTR_HIDDEN | ATTR_SYSTEM | ATTR_ARCHIVE | ATTR_TEMPORARY | 0x1000 | 0x2000;
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
    /// Its path from the share root, `\`-separated, as opened or last renamed (what
    /// FileAllInformation names).
    pub path: String,
    pub delete_on_close: bool,
    pub listing: Option<Listing>,
    /// A named pipe on IPC$ (then `info` is a placeholder).
    pub pipe: Option<crate::rpc::Pipe>,
    /// The access granted (generic rights mapped), checked by rename and delete.
    pub access: u32,
    /// The open's registration with the volume's owner for share-access checks, when its
    /// access takes part in them ([`crate::share_modes::Mode::counts`]).
    pub registration: Option<u64>,
    /// A delete disposition set on it and told to the owner (the file is delete-pending on
    /// every node): a rename through it tells the owner the new name.
    pub disposed: bool,
    /// Its resume key, once a client asked for one (FSCTL_SRV_REQUEST_RESUME_KEY): a
    /// server-side copy names its source by it.
    pub resume_key: Option<[u8; copy::RESUME_KEY_BYTES]>,
    /// Times its client set or froze through it, which its own writes then leave as they are.
    pub keep: super::files::Keep,
}

/// Where a QUERY_DIRECTORY enumeration stands.
pub struct Listing {
    pattern: String,
    after: String,
    /// Of `.` and `..`, how many were sent (2 also when the pattern names neither).
    dots: u8,
    done: bool,
}




/// Whether a path a client names (CREATE, a rename's target) can name anything: no name holds
/// a `/` (MS-FSCC 2.1.5.2), and storage would take one for a separator.
fn client_path_ok(path: &str) -> bool {
    !path.contains('/')
}

fn attributes(f: &FileInfo) -> u32 {
    let base = f.attributes & !ATTR_DIRECTORY;
    if f.directory {
        base | ATTR_DIRECTORY
    } else if base & SETTABLE_ATTRIBUTES == 0 {
        // A file that was given no attributes reports ARCHIVE, beside SPARSE_FILE if it is.
        base | ATTR_ARCHIVE
    } else {
        base
    }
}

/// Whether `name` is in the expression `pattern`, case-insensitive (MS-FSA 2.1.4.4): `*` any
/// run of characters, `?` one character, and the DOS wildcards clients send for them: `<` any
/// run that does not pass the name's last period, `>` one character, or none at a period or at
/// the end, `"` a period, or nothing at the end. A pattern longer than
/// [`MAX_PATTERN_CHARS`] matches nothing (the work is pattern x name).
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    if p.len() > MAX_PATTERN_CHARS {
        return false;
    }
    let last_dot = n.iter().rposition(|&c| c == '.');
    // at[pi][ni]: the pattern from pi matches the name from ni; filled from the ends.
    let width = n.len() + 1;
    let mut at = vec![false; (p.len() + 1) * width];
    at[p.len() * width + n.len()] = true;
    for pi in (0..p.len()).rev() {
        for ni in (0..=n.len()).rev() {
            let next = |pj: usize, nj: usize| at[pj * width + nj];
            let here = ni < n.len();
            at[pi * width + ni] = match p[pi] {
                '*' => next(pi + 1, ni) || here && next(pi, ni + 1),
                '?' => here && next(pi + 1, ni + 1),
                '<' => next(pi + 1, ni) || here && Some(ni) != last_dot && next(pi, ni + 1),
                '>' if here && n[ni] != '.' => next(pi + 1, ni + 1),
                '>' => next(pi + 1, ni),
                '"' if here => n[ni] == '.' && next(pi + 1, ni + 1),
                '"' => next(pi + 1, ni),
                c => here && n[ni] == c && next(pi + 1, ni + 1),
            };
        }
    }
    at[0]
}

/// The longest search pattern matched (a name is at most 255 characters; longer patterns name
/// nothing).
pub const MAX_PATTERN_CHARS: usize = 1024;

fn fs(e: FsError) -> Reply {
    Reply::error(e.status())
}

impl Connection {
    pub(in crate::server) fn file_id(body: &[u8], at: usize) -> Option<u64> {
        u64_at(body, at + 8)
    }

    /// Closes every open `which` selects without a CLOSE (LOGOFF, TREE_DISCONNECT, a deleted
    /// share, the end of the connection), as a CLOSE would: share-mode registrations released,
    /// delete-on-close and delete dispositions carried out (at the file's last close).
    pub(in crate::server) fn drop_opens(&mut self, files: &dyn super::files::Files, now: u64, which: impl Fn(&Open) -> bool) {
        let gone: Vec<u64> = self.opens.iter().filter(|(_, o)| which(o)).map(|(v, _)| *v).collect();
        for volatile in gone {
            if let Some(open) = self.opens.remove(&volatile) {
                if let Err(e) = Self::close_one(&open, files, now) {
                    tracing::warn!(share = %open.share, name = %open.name, error = %e, "closing an open the client left");
                }
            }
        }
    }

    /// Closes one open: its registration released and, when its disposition asks, its file
    /// deleted (by the owner at the file's last close; at once when the open has no
    /// registration).
    pub(in crate::server) fn close_one(open: &Open, files: &dyn super::files::Files, now: u64) -> Result<(), FsError> {
        let delete = (open.delete_on_close && !open.name.is_empty()).then_some((open.parent, open.name.as_str()));
        match open.registration {
            Some(r) => files.close_open(&open.share, r, delete, now),
            None => delete.map_or(Ok(()), |(parent, name)| files.unlink(&open.share, parent, name, now)),
        }
    }

    /// The open `volatile` belongs to this session and tree.
    pub(in crate::server) fn open_of(&self, h: &Header, volatile: u64) -> Result<&Open, u32> {
        let tree = match h.target {
            Target::Sync { tree_id, .. } => tree_id,
            Target::Async { .. } => 0,
        };
        self.opens.get(&volatile).filter(|o| o.session == h.session_id && (tree == 0 || o.tree == tree)).ok_or(status::FILE_CLOSED)
    }
}
