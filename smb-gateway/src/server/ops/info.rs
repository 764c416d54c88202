//! QUERY_INFO and SET_INFO, and the information classes they carry.

use super::super::connection::{Connection, Reply};
use super::super::files::{FileInfo, Files, FsError};
use super::*;
use crate::smb2::header::{Header, HEADER_BYTES};
use crate::smb2::status;

impl Connection {
    pub(in crate::server) fn query_info(&mut self, h: &Header, message: &[u8], files: &dyn Files) -> Reply {
        let b = &message[HEADER_BYTES..];
        let (Some(&kind), Some(&class), Some(out_len), Some(volatile)) = (b.get(2), b.get(3), u32_at(b, 4), Self::file_id(b, 24)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        // Storage that keeps every open says whether the file is delete-pending (a disposition
        // set through any open; a delete-on-close open's file once that open went), not this
        // open's plan to delete it at its close (Windows and Samba report that only after the
        // close). Other storage has only this open's word.
        let (share, id, name, delete_pending, access) = match self.open_of(h, volatile) {
            Ok(o) => (o.share.clone(), o.info.id, o.path.clone(), !files.tracks_opens() && o.delete_on_close, o.access),
            Err(s) => return Reply::error(s),
        };
        let info = match files.stat(&share, id) {
            Ok(i) => i,
            Err(e) => return fs(e),
        };
        let delete_pending = delete_pending || info.delete_pending;
        let data = match (kind, class) {
            // No 8.3 names are made (as NTFS with 8dot3name off): clients skip the alternate name.
            (1, FILE_ALTERNATE_NAME_INFORMATION) => return Reply::error(status::NOT_SUPPORTED),
            (1, c) => match file_info(c, &info, &name, delete_pending, access) {
                Some(d) => d,
                None => return Reply::error(status::INVALID_INFO_CLASS),
            },
            (2, c) => match fs_info(c, &self.config.netbios_name) {
                Some(d) => d,
                None => return Reply::error(status::INVALID_INFO_CLASS),
            },
            (3, _) => match security_of(files, &share, &info, u32_at(b, 16).unwrap_or_default(), access) {
                Ok(d) if d.len() > out_len as usize => return buffer_too_small(d.len(), self.dialect() == Some(crate::smb2::negotiate::DIALECT_311)),
                Ok(d) => d,
                Err(s) => return Reply::error(s),
            },
            _ => return Reply::error(status::NOT_SUPPORTED),
        };
        // A buffer too small for a class's fixed part is a mismatch; one that holds the fixed
        // part of a class ending in a name gets what fits, with STATUS_BUFFER_OVERFLOW.
        let mut data = data;
        let overflow = data.len() > out_len as usize;
        if overflow {
            match fixed_part(kind, class) {
                Some(fixed) if out_len as usize >= fixed => data.truncate(out_len as usize),
                _ => return Reply::error(status::INFO_LENGTH_MISMATCH),
            }
        }
        let mut r = vec![9, 0];
        r.extend_from_slice(&((HEADER_BYTES + 8) as u16).to_le_bytes());
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        r.extend_from_slice(&data);
        Reply::ok(r).overflowing(overflow)
    }

    pub(in crate::server) fn set_info(&mut self, h: &Header, message: &[u8], files: &dyn Files, now: u64) -> Reply {
        let b = &message[HEADER_BYTES..];
        let (Some(&kind), Some(&class), Some(len), Some(off), Some(volatile)) = (b.get(2), b.get(3), u32_at(b, 4), u16_at(b, 8), Self::file_id(b, 16)) else {
            return Reply::error(status::INVALID_PARAMETER);
        };
        let Some(data) = message.get(usize::from(off)..usize::from(off) + len as usize) else { return Reply::error(status::INVALID_PARAMETER) };
        if kind != 1 && kind != 3 {
            return Reply::error(status::NOT_SUPPORTED);
        }
        if matches!(self.tree(h), Ok((_, true, _))) {
            return Reply::error(status::MEDIA_WRITE_PROTECTED);
        }
        let (share, info, parent, name, access, keep) = match self.open_of(h, volatile) {
            Ok(o) => (o.share.clone(), o.info.clone(), o.parent, o.name.clone(), o.access, o.keep),
            Err(s) => return Reply::error(s),
        };
        if kind == 3 {
            return match set_security(files, &share, &info, u32_at(b, 12).unwrap_or_default(), access, data, now) {
                Ok(()) => Reply::ok(vec![2, 0]),
                Err(s) => Reply::error(s),
            };
        }
        let stamp = crate::server::files::Stamp { now, keep };
        // MS-FSA 2.1.5.14.3 and 2.1.5.14.11: renaming and marking for deletion need DELETE
        // access on the open; MS-FSCC 2.4: sizes need write access, times and attributes
        // FILE_WRITE_ATTRIBUTES.
        let may_delete = access & crate::share_modes::DELETE != 0;
        let needs = match class {
            19 | 20 => crate::share_modes::FILE_WRITE_DATA,
            4 => crate::share_modes::FILE_WRITE_ATTRIBUTES,
            _ => 0,
        };
        if access & needs != needs {
            return Reply::error(status::ACCESS_DENIED);
        }
        let done = |r: Result<(), FsError>| match r {
            Ok(()) => Reply::ok(vec![2, 0]),
            Err(e) => fs(e),
        };
        match class {
            // FileRenameInformation: ReplaceIfExists, RootDirectory, FileName (from the share root).
            10 => {
                if !may_delete {
                    return Reply::error(status::ACCESS_DENIED);
                }
                let (Some(&replace), Some(name_len)) = (data.first(), u32_at(data, 16)) else { return Reply::error(status::INVALID_PARAMETER) };
                let Some(target) = data.get(20..20 + name_len as usize).and_then(utf16) else { return Reply::error(status::INVALID_PARAMETER) };
                if !super::client_path_ok(&target) {
                    return Reply::error(status::OBJECT_NAME_INVALID);
                }
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
                        o.path = target.clone();
                        // The owner deletes by name if this gateway goes: give it the new one.
                        if let (true, Some(registration)) = (o.disposed, o.registration) {
                            if let Err(e) = files.dispose_open(registration, Some((o.parent, o.name.as_str()))) {
                                tracing::warn!(name = %o.name, error = %e, "telling the owner a disposed file's new name failed; the CLOSE carries it");
                            }
                        }
                    }
                }
                done(result)
            }
            // FileDispositionInformation (a byte) / Ex (MS-FSCC 2.4.12: u32 flags): delete when
            // the last handle closes. Ex's ON_CLOSE sets or clears only this handle's
            // delete-on-close; IGNORE_READONLY_ATTRIBUTE deletes a read-only file; POSIX
            // semantics are taken as the ordinary ones (the name goes at the last close).
            13 | 64 => {
                let flags = match (class, data.first(), u32_at(data, 0)) {
                    (13, Some(&d), _) => u32::from(d & 1),
                    (64, _, Some(f)) => f,
                    _ => return Reply::error(status::INFO_LENGTH_MISMATCH),
                };
                let delete = flags & DISPOSITION_DELETE != 0;
                let on_close = flags & DISPOSITION_ON_CLOSE != 0;
                if delete && !may_delete {
                    return Reply::error(status::ACCESS_DENIED);
                }
                // A file or directory marked READONLY (now, not when it was opened) is not deleted.
                if delete && flags & DISPOSITION_IGNORE_READONLY == 0 && files.stat(&share, info.id).is_ok_and(|now| now.attributes & super::FILE_ATTRIBUTE_READONLY != 0) {
                    return Reply::error(status::CANNOT_DELETE);
                }
                if delete && info.directory && files.list(&share, info.id, "", 1).map(|l| !l.is_empty()).unwrap_or(false) {
                    return Reply::error(status::DIRECTORY_NOT_EMPTY);
                }
                let Some(o) = self.opens.get_mut(&volatile) else { return Reply::error(status::FILE_CLOSED) };
                // The owner refuses new opens of the file from now on, not from this CLOSE.
                if let (false, Some(registration)) = (on_close, o.registration) {
                    if delete || o.disposed {
                        if let Err(e) = files.dispose_open(registration, delete.then_some((o.parent, o.name.as_str()))) {
                            return fs(e);
                        }
                        o.disposed = delete;
                    }
                }
                o.delete_on_close = delete;
                Reply::ok(vec![2, 0])
            }
            // FileEndOfFileInformation.
            20 => match u64_at(data, 0) {
                Some(size) => done(files.set_size(&share, info.id, size, stamp)),
                None => Reply::error(status::INVALID_PARAMETER),
            },
            // FileBasicInformation: times and attributes, each left as it is when zero. A
            // last-write or change time set, or frozen with -1, stays through this open's own
            // later writes until -2 asks for automatic updates again (MS-FSA 2.1.5.15.2).
            4 => match basic_info(data, info.directory) {
                Ok(basic) => match files.set_basic(&share, info.id, basic) {
                    Ok(()) => {
                        if let Some(o) = self.opens.get_mut(&volatile) {
                            o.keep = kept_times(data, o.keep);
                        }
                        Reply::ok(vec![2, 0])
                    }
                    Err(e) => fs(e),
                },
                Err(s) => Reply::error(s),
            },
            // FileAllocationInformation: space is allocated as data is written, so a larger size
            // changes nothing; a size below the end of file truncates it there (MS-FSA 2.1.5.14.1).
            19 => match u64_at(data, 0) {
                Some(size) => match files.stat(&share, info.id) {
                    Ok(now_info) if size < now_info.size => done(files.set_size(&share, info.id, size, stamp)),
                    Ok(_) => Reply::ok(vec![2, 0]),
                    Err(e) => fs(e),
                },
                None => Reply::error(status::INVALID_PARAMETER),
            },
            _ => Reply::error(status::INVALID_INFO_CLASS),
        }
    }
}

const FILE_ALTERNATE_NAME_INFORMATION: u8 = 21;

use super::SETTABLE_ATTRIBUTES;

/// FILE_DISPOSITION_INFORMATION_EX flags (MS-FSCC 2.4.12).
const DISPOSITION_DELETE: u32 = 0x1;
const DISPOSITION_ON_CLOSE: u32 = 0x8;
const DISPOSITION_IGNORE_READONLY: u32 = 0x10;
const ATTRIBUTE_NORMAL: u32 = 0x80;

/// What an open keeps after a valid FileBasicInformation `data`, from what it kept: each of
/// LastWriteTime and ChangeTime left as it was when 0, resumed (not kept) when -2, kept when
/// -1 or set to a time.
fn kept_times(data: &[u8], before: crate::server::files::Keep) -> crate::server::files::Keep {
    let kept = |at: usize, was: bool| match u64_at(data, at) {
        Some(0) | None => was,
        Some(0xFFFF_FFFF_FFFF_FFFE) => false,
        Some(_) => true,
    };
    crate::server::files::Keep { written: kept(16, before.written), changed: kept(24, before.changed) }
}

/// FileBasicInformation for SET_INFO (MS-FSCC 2.4.7, MS-FSA 2.1.5.14.2): four FILETIMEs, where
/// 0 leaves a time as it is and -1/-2 (stop or resume automatic updates: [`kept_times`]) are
/// taken as 0, and the attributes, where 0 leaves them as they are. A directory flag that does
/// not match the file is refused.
fn basic_info(data: &[u8], directory: bool) -> Result<crate::server::files::Basic, u32> {
    let time = |at: usize| match u64_at(data, at) {
        Some(0 | u64::MAX | 0xFFFF_FFFF_FFFF_FFFE) => Ok(None),
        Some(t) if t >= 0x8000_0000_0000_0000 => Err(status::INVALID_PARAMETER),
        Some(t) => Ok(Some(t)),
        None => Err(status::INFO_LENGTH_MISMATCH),
    };
    let (created, _accessed, written, changed) = (time(0)?, time(8)?, time(16)?, time(24)?);
    let raw = u32_at(data, 32).ok_or(status::INFO_LENGTH_MISMATCH)?;
    let attributes = match raw {
        0 => None,
        a if a & ATTR_DIRECTORY != 0 && !directory => return Err(status::INVALID_PARAMETER),
        ATTRIBUTE_NORMAL => Some(0),
        a => Some(a & SETTABLE_ATTRIBUTES),
    };
    Ok(crate::server::files::Basic { created, written, changed, attributes, sparse: None })
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
fn file_info(class: u8, f: &FileInfo, name: &str, delete_pending: bool, access: u32) -> Option<Vec<u8>> {
    Some(match class {
        4 => basic(f),
        5 => standard(f, delete_pending),
        6 => f.id.to_le_bytes().to_vec(),
        7 => vec![0; 4],
        // FileAccessInformation: what this open was granted.
        8 => access.to_le_bytes().to_vec(),
        14 => vec![0; 8],
        16 => vec![0; 4],
        17 => vec![0; 4],
        18 => {
            let mut d = basic(f);
            d.extend(standard(f, delete_pending));
            d.extend_from_slice(&f.id.to_le_bytes());
            d.extend_from_slice(&[0; 4]); // EA
            d.extend_from_slice(&access.to_le_bytes()); // access granted
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
        // FileStreamInformation: a file has its one unnamed data stream, a directory none.
        22 if f.directory => Vec::new(),
        22 => {
            let mut n = Vec::new();
            put_utf16(&mut n, "::$DATA");
            let mut d = Vec::with_capacity(24 + n.len());
            d.extend_from_slice(&0u32.to_le_bytes());
            d.extend_from_slice(&(n.len() as u32).to_le_bytes());
            d.extend_from_slice(&f.size.to_le_bytes());
            d.extend_from_slice(&f.allocated.to_le_bytes());
            d.extend(n);
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

/// The fixed part of a class whose answer ends in a variable-length name (MS-FSCC): what a
/// buffer must hold to get a partial answer; None for fixed-size classes.
fn fixed_part(kind: u8, class: u8) -> Option<usize> {
    match (kind, class) {
        (1, 18) => Some(100), // FileAllInformation
        (1, 22) => Some(24),  // FileStreamInformation
        (2, 1) => Some(18),   // FileFsVolumeInformation
        (2, 5) => Some(12),   // FileFsAttributeInformation
        _ => None,
    }
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
        // Aligned device and partition; trims are taken (FSCTL_FILE_LEVEL_TRIM frees what they cover).
        11 => [512u32, 4096, 4096, 4096, 0x0000_0003 | 0x0000_0008, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
        _ => return None,
    })
}


/// The access a security descriptor's parts need, to read (READ_CONTROL; the SACL
/// ACCESS_SYSTEM_SECURITY) or to change (WRITE_OWNER for the owner, group and label, WRITE_DAC
/// for the DACL, ACCESS_SYSTEM_SECURITY for the SACL), MS-FSA 2.1.5.13 and 2.1.5.16.
fn security_access(info: u32, write: bool) -> u32 {
    use crate::security::{DACL, GROUP, LABEL, OWNER, SACL};
    use crate::share_modes::{ACCESS_SYSTEM_SECURITY, READ_CONTROL, WRITE_DAC, WRITE_OWNER};
    let info = crate::security::expand(info);
    let mut needs = 0;
    if info & (OWNER | GROUP | LABEL) != 0 {
        needs |= if write { WRITE_OWNER } else { READ_CONTROL };
    }
    if info & DACL != 0 {
        needs |= if write { WRITE_DAC } else { READ_CONTROL };
    }
    if info & SACL != 0 {
        needs |= ACCESS_SYSTEM_SECURITY;
    }
    needs
}

/// The file's descriptor as kept (or the default for one that never had one set).
fn kept_descriptor(files: &dyn Files, share: &str, info: &FileInfo) -> Result<crate::security::Descriptor, u32> {
    use crate::security::Descriptor;
    match files.security(share, info.id) {
        Ok(Some(bytes)) => Descriptor::parse(&bytes).map_err(|e| {
            tracing::warn!(id = info.id, error = %e, "a kept security descriptor does not parse");
            status::INTERNAL_ERROR
        }),
        Ok(None) | Err(FsError::NotSupported) => Ok(Descriptor::default_for(info.directory)),
        Err(e) => Err(e.status()),
    }
}

/// QUERY_INFO of SMB2_0_INFO_SECURITY: the parts of the file's descriptor `additional` asks
/// for, self-relative.
fn security_of(files: &dyn Files, share: &str, info: &FileInfo, additional: u32, access: u32) -> Result<Vec<u8>, u32> {
    let needs = security_access(additional, false);
    if access & needs != needs {
        return Err(status::ACCESS_DENIED);
    }
    Ok(kept_descriptor(files, share, info)?.select(additional).encode())
}

/// SET_INFO of SMB2_0_INFO_SECURITY: the parts `additional` names, from the client's
/// descriptor, replace the file's; the others stay.
fn set_security(files: &dyn Files, share: &str, info: &FileInfo, additional: u32, access: u32, data: &[u8], now: u64) -> Result<(), u32> {
    use crate::security::{Descriptor, SdError};
    let needs = security_access(additional, true);
    if access & needs != needs {
        return Err(status::ACCESS_DENIED);
    }
    let refused = |e: SdError| {
        tracing::debug!(error = %e, "refusing a security descriptor");
        e.status()
    };
    let new = Descriptor::parse(data).map_err(refused)?;
    // Storage merges it into the kept one; checked here first, so that a descriptor without
    // the owner or group it names gets its own status.
    new.has_named(additional).map_err(refused)?;
    if !crate::security::names_parts(additional) {
        // Names no part this server keeps: nothing changes (storage given no parts would keep
        // the descriptor whole, which needs no access here).
        return Ok(());
    }
    files.set_security(share, info.id, new.encode(), additional, now).map_err(|e| e.status())
}

/// STATUS_BUFFER_TOO_SMALL with the size the answer needs, so the client asks again with room
/// for it (MS-SMB2 3.3.5.20.3): the ErrorData is the 4-byte size, on 3.1.1 inside an error
/// context (2.2.2.1: ErrorDataLength, ErrorId 0).
fn buffer_too_small(needed: usize, in_context: bool) -> Reply {
    let needed = (needed as u32).to_le_bytes();
    let mut body = vec![9, 0, u8::from(in_context), 0];
    if in_context {
        body.extend_from_slice(&12u32.to_le_bytes());
        body.extend_from_slice(&4u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
    } else {
        body.extend_from_slice(&4u32.to_le_bytes());
    }
    body.extend_from_slice(&needed);
    Reply::ok(body).with_status(status::BUFFER_TOO_SMALL)
}

#[cfg(test)]
mod tests {
    use crate::server::files::Files;
    use crate::server::testkit::*;
    use crate::share_modes::{FILE_READ_ATTRIBUTES, FILE_READ_DATA, FILE_WRITE_ATTRIBUTES, FILE_WRITE_DATA};
    use crate::smb2::header::Command;
    use crate::smb2::status;

    const FILE_CREATE: u32 = 2;
    const FILE_OPEN: u32 = 1;

    fn set_info(volatile: u64, class: u8, data: &[u8]) -> Vec<u8> {
        crate::server::testkit::set_info(volatile, 1, class, 0, data)
    }

    fn open_for(c: &mut crate::server::connection::Connection, files: &MemFiles, id: u64, disposition: u32, access: u32) -> u64 {
        let (r, _) = exchange(c, files, &request(Command::Create, id, TREE, &create_with_access("f.txt", false, disposition, access)));
        assert_eq!(r[0].0.status, status::SUCCESS);
        u64::from_le_bytes(r[0].1[72..80].try_into().unwrap())
    }

    fn query(volatile: u64, kind: u8, class: u8, out_len: u32) -> Vec<u8> {
        let mut b = vec![41, 0, kind, class];
        b.extend_from_slice(&out_len.to_le_bytes());
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&volatile.to_le_bytes());
        b.extend_from_slice(&volatile.to_le_bytes());
        b
    }

    /// QUERY_INFO of the security descriptor's parts `additional` names.
    fn query_security(volatile: u64, additional: u32, out_len: u32) -> Vec<u8> {
        let mut b = query(volatile, 3, 0, out_len);
        b[16..20].copy_from_slice(&additional.to_le_bytes());
        b
    }

    /// SET_INFO of a security descriptor's parts `additional` names.
    fn set_security(volatile: u64, additional: u32, descriptor: &[u8]) -> Vec<u8> {
        crate::server::testkit::set_info(volatile, 3, 0, additional, descriptor)
    }

    /// A file shows the default descriptor until one is set; a SET_INFO replaces the parts it
    /// names and a QUERY_INFO gives the parts it asks for, each with the access it needs; a
    /// malformed descriptor is refused and changes nothing; a buffer too small says how much
    /// is needed.
    #[test]
    fn security_descriptors_are_kept_per_file_and_given_back_in_the_parts_asked_for() {
        use crate::security::{Descriptor, DACL, GROUP, OWNER, SACL};
        use crate::share_modes::{READ_CONTROL, WRITE_DAC, WRITE_OWNER};
        let (mut c, files) = (connection(), MemFiles::with_dirs(&[]));
        let f = open_for(&mut c, &files, 1, FILE_CREATE, FILE_READ_DATA | READ_CONTROL | WRITE_DAC);
        let ask = |c: &mut crate::server::connection::Connection, id: u64, additional: u32, out_len: u32| {
            let (r, _) = exchange(c, &files, &request(Command::QueryInfo, id, TREE, &query_security(f, additional, out_len)));
            (r[0].0.status, r[0].1.clone())
        };
        let (st, body) = ask(&mut c, 2, OWNER | GROUP | DACL, 4096);
        assert_eq!(st, status::SUCCESS);
        let shown = Descriptor::parse(&body[8..]).unwrap();
        assert_eq!(shown, Descriptor::default_for(false), "the default until one is set");
        // A DACL of one ACE allowing a user read access, set alone.
        let user = [1u8, 5, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0xe9, 3, 0, 0];
        let mut ace = vec![0u8, 0, (8 + user.len()) as u8, 0];
        ace.extend_from_slice(&0x0012_0089u32.to_le_bytes());
        ace.extend_from_slice(&user);
        let mut dacl = vec![2, 0, (8 + ace.len()) as u8, 0, 1, 0, 0, 0];
        dacl.extend_from_slice(&ace);
        let new = Descriptor { control: 0x8000 | 0x0004 | 0x1000, owner: Some(user.to_vec()), group: None, sacl: None, dacl: Some(dacl.clone()) };
        let (r, _) = exchange(&mut c, &files, &request(Command::SetInfo, 3, TREE, &set_security(f, DACL, &new.encode())));
        assert_eq!(r[0].0.status, status::SUCCESS);
        let (_, body) = ask(&mut c, 4, OWNER | DACL, 4096);
        let shown = Descriptor::parse(&body[8..]).unwrap();
        assert_eq!(shown.dacl.as_deref(), Some(&dacl[..]), "the DACL set");
        assert_eq!(shown.owner, Descriptor::default_for(false).owner, "the owner was not named: it stays");
        assert_eq!((shown.group, shown.control & 0x1000), (None, 0x1000), "no group asked for; the DACL's protection kept");
        // Setting the owner needs WRITE_OWNER, reading the SACL ACCESS_SYSTEM_SECURITY.
        let (r, _) = exchange(&mut c, &files, &request(Command::SetInfo, 5, TREE, &set_security(f, OWNER, &new.encode())));
        assert_eq!(r[0].0.status, status::ACCESS_DENIED);
        assert_eq!(ask(&mut c, 6, SACL, 4096).0, status::ACCESS_DENIED);
        // Malformed: refused, nothing changed.
        let mut bad = new.encode();
        bad[0] = 2;
        let (r, _) = exchange(&mut c, &files, &request(Command::SetInfo, 7, TREE, &set_security(f, DACL, &bad)));
        assert_eq!(r[0].0.status, status::INVALID_SECURITY_DESCR);
        let (_, body) = ask(&mut c, 8, DACL, 4096);
        assert_eq!(Descriptor::parse(&body[8..]).unwrap().dacl.as_deref(), Some(&dacl[..]));
        // Too small a buffer: STATUS_BUFFER_TOO_SMALL with the size needed.
        let (st, body) = ask(&mut c, 9, OWNER | GROUP | DACL, 16);
        assert_eq!(st, status::BUFFER_TOO_SMALL);
        let (_, full) = ask(&mut c, 10, OWNER | GROUP | DACL, 4096);
        assert_eq!((&body[..8], u32::from_le_bytes(body[8..12].try_into().unwrap()) as usize), (&[9, 0, 0, 0, 4, 0, 0, 0][..], full.len() - 8), "the size needed");
        // On 3.1.1 the size goes in an error context (MS-SMB2 3.3.5.20.3).
        let mut c311 = std::mem::replace(&mut c, connection()).with_dialect_for_test(crate::smb2::negotiate::DIALECT_311);
        let (r, _) = exchange(&mut c311, &files, &request(Command::QueryInfo, 16, TREE, &query_security(f, OWNER | GROUP | DACL, 16)));
        assert_eq!(r[0].0.status, status::BUFFER_TOO_SMALL);
        let mut want = vec![9, 0, 1, 0, 12, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&((full.len() - 8) as u32).to_le_bytes());
        assert_eq!(r[0].1, want);
        let mut c = c311;
        // Without READ_CONTROL nothing is shown; on a read-only open nothing is set.
        let reader = open_for(&mut c, &files, 11, FILE_OPEN, FILE_READ_DATA);
        let (r, _) = exchange(&mut c, &files, &request(Command::QueryInfo, 12, TREE, &query_security(reader, DACL, 4096)));
        assert_eq!(r[0].0.status, status::ACCESS_DENIED);
        let writer = open_for(&mut c, &files, 13, FILE_OPEN, READ_CONTROL | WRITE_OWNER);
        let (r, _) = exchange(&mut c, &files, &request(Command::SetInfo, 14, TREE, &set_security(writer, OWNER, &new.encode())));
        assert_eq!(r[0].0.status, status::SUCCESS, "WRITE_OWNER sets the owner");
        let (r, _) = exchange(&mut c, &files, &request(Command::QueryInfo, 15, TREE, &query_security(writer, OWNER, 4096)));
        assert_eq!(Descriptor::parse(&r[0].1[8..]).unwrap().owner.as_deref(), Some(&user[..]));
    }

    /// `body` (a CREATE's) with one create context `name` carrying `data`.
    fn with_context(mut body: Vec<u8>, name: &[u8; 4], data: &[u8]) -> Vec<u8> {
        body.resize(body.len().div_ceil(8) * 8, 0);
        let offset = 64 + body.len();
        let mut ctx = vec![0u8; 4];
        ctx.extend_from_slice(&16u16.to_le_bytes());
        ctx.extend_from_slice(&4u16.to_le_bytes());
        ctx.extend_from_slice(&[0, 0]);
        ctx.extend_from_slice(&24u16.to_le_bytes());
        ctx.extend_from_slice(&(data.len() as u32).to_le_bytes());
        ctx.extend_from_slice(name);
        ctx.extend_from_slice(&[0; 4]);
        ctx.extend_from_slice(data);
        body[48..52].copy_from_slice(&(offset as u32).to_le_bytes());
        body[52..56].copy_from_slice(&(ctx.len() as u32).to_le_bytes());
        body.extend_from_slice(&ctx);
        body
    }

    /// A SET whose parts would make the kept descriptor pass its bound is refused with
    /// INVALID_SECURITY_DESCR (storage's merge decides it), and nothing changes.
    #[test]
    fn a_set_that_would_make_the_descriptor_too_large_is_refused() {
        use crate::security::{Descriptor, DACL, SACL};
        use crate::share_modes::{ACCESS_SYSTEM_SECURITY, READ_CONTROL, WRITE_DAC};
        let (mut c, files) = (connection(), MemFiles::with_dirs(&[]));
        let f = open_for(&mut c, &files, 1, FILE_CREATE, READ_CONTROL | WRITE_DAC | ACCESS_SYSTEM_SECURITY);
        let everyone = [1u8, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        let mut ace = vec![2u8, 0x40, 20, 0, 0xff, 0x01, 0x1f, 0];
        ace.extend_from_slice(&everyone);
        let mut acl = vec![2, 0, 0, 0, 0, 0, 0, 0];
        for _ in 0..2000 {
            acl.extend_from_slice(&ace);
        }
        let size = acl.len() as u16;
        acl[2..4].copy_from_slice(&size.to_le_bytes());
        acl[4..6].copy_from_slice(&2000u16.to_le_bytes());
        let dacl = Descriptor { control: 0x8000 | 0x0004, dacl: Some(acl.clone()), ..Descriptor::default() };
        let sacl = Descriptor { control: 0x8000 | 0x0010, sacl: Some(acl), ..Descriptor::default() };
        let (r, _) = exchange(&mut c, &files, &request(Command::SetInfo, 2, TREE, &set_security(f, DACL, &dacl.encode())));
        assert_eq!(r[0].0.status, status::SUCCESS);
        let (r, _) = exchange(&mut c, &files, &request(Command::SetInfo, 3, TREE, &set_security(f, SACL, &sacl.encode())));
        assert_eq!(r[0].0.status, status::INVALID_SECURITY_DESCR);
        let (r, _) = exchange(&mut c, &files, &request(Command::QueryInfo, 4, TREE, &query_security(f, SACL, 1 << 20)));
        assert_eq!(Descriptor::parse(&r[0].1[8..]).unwrap().sacl, None, "no SACL kept");
    }

    /// A CREATE with a SecD context gives the file it creates that descriptor (the default's
    /// parts where it has none); a malformed one fails the CREATE, which then creates nothing;
    /// a file that exists keeps its own.
    #[test]
    fn a_secd_create_context_gives_the_new_file_its_descriptor() {
        use crate::security::Descriptor;
        use crate::share_modes::READ_CONTROL;
        let (mut c, files) = (connection(), MemFiles::with_dirs(&[]));
        let default = Descriptor::default_for(false);
        let user = [1u8, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0];
        let given = Descriptor { control: 0x8000, owner: Some(user.to_vec()), ..Descriptor::default() };
        let open = |c: &mut crate::server::connection::Connection, id: u64, disposition: u32, sd: &[u8]| {
            let (r, _) = exchange(c, &files, &request(Command::Create, id, TREE, &with_context(create_with_access("s.txt", false, disposition, FILE_READ_DATA | READ_CONTROL), b"SecD", sd)));
            (r[0].0.status, r[0].1.get(72..80).map(|v| u64::from_le_bytes(v.try_into().unwrap())))
        };
        let mut bad = given.encode();
        bad[0] = 9;
        assert_eq!(open(&mut c, 1, FILE_CREATE, &bad).0, status::INVALID_SECURITY_DESCR);
        assert!(files.info_at("s.txt").is_none(), "nothing created");
        // A SACL needs ACCESS_SYSTEM_SECURITY in the desired access, as SET_INFO would.
        let sacl = Descriptor { control: 0x8000 | 0x0010, sacl: Some(vec![2, 0, 8, 0, 0, 0, 0, 0]), ..Descriptor::default() };
        assert_eq!(open(&mut c, 10, FILE_CREATE, &sacl.encode()).0, status::ACCESS_DENIED);
        assert!(files.info_at("s.txt").is_none(), "nothing created");
        let (st, f) = open(&mut c, 2, FILE_CREATE, &given.encode());
        assert_eq!(st, status::SUCCESS);
        let (r, _) = exchange(&mut c, &files, &request(Command::QueryInfo, 3, TREE, &query_security(f.unwrap(), 7, 4096)));
        let shown = Descriptor::parse(&r[0].1[8..]).unwrap();
        assert_eq!((shown.owner.as_deref(), shown.group, shown.dacl), (Some(&user[..]), default.group, default.dacl), "its owner, the default's group and DACL");
        let other = Descriptor { control: 0x8000, owner: Some(vec![1, 1, 0, 0, 0, 0, 0, 5, 19, 0, 0, 0]), ..Descriptor::default() };
        let (st, g) = open(&mut c, 4, FILE_OPEN, &other.encode());
        assert_eq!(st, status::SUCCESS);
        let (r, _) = exchange(&mut c, &files, &request(Command::QueryInfo, 5, TREE, &query_security(g.unwrap(), 1, 4096)));
        assert_eq!(Descriptor::parse(&r[0].1[8..]).unwrap().owner.as_deref(), Some(&user[..]), "an existing file keeps its own");
    }

    /// A buffer that holds a class's fixed part but not its whole name gets what fits with
    /// STATUS_BUFFER_OVERFLOW; one smaller than the fixed part, or too small for a fixed-size
    /// class, INFO_LENGTH_MISMATCH.
    #[test]
    fn a_buffer_short_of_the_name_overflows_and_one_short_of_the_fixed_part_mismatches() {
        let (mut c, files) = (connection(), MemFiles::with_dirs(&[]));
        let f = open_for(&mut c, &files, 1, FILE_CREATE, FILE_READ_DATA | FILE_READ_ATTRIBUTES);
        for (id, kind, class, out_len, want) in [(2, 1, 18, 100, status::BUFFER_OVERFLOW), (3, 1, 18, 99, status::INFO_LENGTH_MISMATCH), (4, 2, 1, 18, status::BUFFER_OVERFLOW), (5, 1, 4, 39, status::INFO_LENGTH_MISMATCH), (6, 1, 18, 4096, status::SUCCESS)] {
            let (r, _) = exchange(&mut c, &files, &request(Command::QueryInfo, id, TREE, &query(f, kind, class, out_len)));
            assert_eq!(r[0].0.status, want, "kind {kind} class {class} buffer {out_len}");
            if want == status::BUFFER_OVERFLOW {
                assert_eq!(u32::from_le_bytes(r[0].1[4..8].try_into().unwrap()), out_len, "what fits");
            }
        }
    }

    fn basic(created: u64, attributes: u32) -> Vec<u8> {
        let mut d = Vec::new();
        for t in [created, 0, 0, 0] {
            d.extend_from_slice(&t.to_le_bytes());
        }
        d.extend_from_slice(&attributes.to_le_bytes());
        d.extend_from_slice(&[0; 4]);
        d
    }

    #[test]
    fn reads_writes_sizes_and_times_need_the_access_the_open_was_granted() {
        let files = MemFiles::with_dirs(&[]);
        let mut c = connection();
        let reader = open_for(&mut c, &files, 1, FILE_CREATE, FILE_READ_DATA | FILE_READ_ATTRIBUTES);
        let status_of = |c: &mut _, id, body: Vec<u8>, command| exchange(c, &files, &request(command, id, TREE, &body)).0[0].0.status;
        assert_eq!(status_of(&mut c, 2, write(reader, b"x"), Command::Write), status::ACCESS_DENIED, "WRITE needs write or append access");
        assert_eq!(status_of(&mut c, 3, set_info(reader, 20, &5u64.to_le_bytes()), Command::SetInfo), status::ACCESS_DENIED, "end of file needs write access");
        assert_eq!(status_of(&mut c, 4, set_info(reader, 4, &basic(7, 2)), Command::SetInfo), status::ACCESS_DENIED, "times need FILE_WRITE_ATTRIBUTES");
        assert_eq!(status_of(&mut c, 5, read(reader, 1), Command::Read), status::END_OF_FILE, "READ is allowed (the file is empty)");

        let writer = open_for(&mut c, &files, 6, FILE_OPEN, FILE_WRITE_DATA);
        assert_eq!(status_of(&mut c, 7, read(writer, 1), Command::Read), status::ACCESS_DENIED, "READ needs read or execute access");
        assert_eq!(status_of(&mut c, 8, write(writer, b"x"), Command::Write), status::SUCCESS);

        let attributes = open_for(&mut c, &files, 9, FILE_OPEN, FILE_WRITE_ATTRIBUTES);
        assert_eq!(status_of(&mut c, 10, set_info(attributes, 4, &basic(1234, 0x2 | 0x10)), Command::SetInfo), status::INVALID_PARAMETER, "a file is no directory");
        assert_eq!(status_of(&mut c, 11, set_info(attributes, 4, &basic(1234, 0x2)), Command::SetInfo), status::SUCCESS);
        let f = files.lookup("", "f.txt").unwrap();
        assert_eq!((f.created, f.attributes), (1234, 0x2), "creation time and HIDDEN set");
        assert_eq!(status_of(&mut c, 12, set_info(attributes, 4, &basic(0, 0x80)), Command::SetInfo), status::SUCCESS);
        let f = files.lookup("", "f.txt").unwrap();
        assert_eq!((f.created, f.attributes), (1234, 0), "a zero time is left as it is; NORMAL clears the attributes");
        assert_eq!(status_of(&mut c, 13, set_info(attributes, 4, &[0; 8]), Command::SetInfo), status::INFO_LENGTH_MISMATCH);
    }

    /// FileAllInformation names the file by its path from the share root, also after a rename.
    #[test]
    fn file_all_information_names_the_path_from_the_share_root() {
        let files = MemFiles::with_dirs(&["d"]);
        let mut c = connection();
        let (r, _) = exchange(&mut c, &files, &request(Command::Create, 1, TREE, &create_with_access("d\\f.txt", false, FILE_CREATE, FILE_READ_ATTRIBUTES | crate::share_modes::DELETE)));
        let f = u64::from_le_bytes(r[0].1[72..80].try_into().unwrap());
        let name_of = |c: &mut _, id| {
            let (r, _) = exchange(c, &files, &request(Command::QueryInfo, id, TREE, &query(f, 1, 18, 4096)));
            let d = &r[0].1[8..];
            let len = u32::from_le_bytes(d[96..100].try_into().unwrap()) as usize;
            String::from_utf16_lossy(&d[100..100 + len].chunks(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect::<Vec<_>>())
        };
        assert_eq!(name_of(&mut c, 2), "\\d\\f.txt");
        let mut rename = vec![0u8; 20];
        let mut to = Vec::new();
        crate::wire::put_utf16(&mut to, "g.txt");
        rename[16..20].copy_from_slice(&(to.len() as u32).to_le_bytes());
        rename.extend(to);
        let (r, _) = exchange(&mut c, &files, &request(Command::SetInfo, 3, TREE, &set_info(f, 10, &rename)));
        assert_eq!(r[0].0.status, status::SUCCESS);
        assert_eq!(name_of(&mut c, 4), "\\g.txt");
    }

    /// An allocation size below the end of file truncates the file there (a larger one changes
    /// nothing); FLUSH needs write or append access.
    #[test]
    fn a_smaller_allocation_truncates_and_flush_needs_write_access() {
        let files = MemFiles::with_dirs(&[]);
        let mut c = connection();
        let status_of = |c: &mut _, id, body: Vec<u8>, command| exchange(c, &files, &request(command, id, TREE, &body)).0[0].0.status;
        let w = open_for(&mut c, &files, 1, FILE_CREATE, FILE_WRITE_DATA | FILE_READ_DATA);
        assert_eq!(status_of(&mut c, 2, set_info(w, 20, &1000u64.to_le_bytes()), Command::SetInfo), status::SUCCESS);
        assert_eq!(status_of(&mut c, 3, set_info(w, 19, &4096u64.to_le_bytes()), Command::SetInfo), status::SUCCESS);
        assert_eq!(files.lookup("", "f.txt").unwrap().size, 1000, "a larger allocation changes nothing");
        assert_eq!(status_of(&mut c, 4, set_info(w, 19, &10u64.to_le_bytes()), Command::SetInfo), status::SUCCESS);
        assert_eq!(files.lookup("", "f.txt").unwrap().size, 10, "a smaller one truncates");
        let flush = |v: u64| [vec![24, 0, 0, 0, 0, 0, 0, 0], v.to_le_bytes().to_vec(), v.to_le_bytes().to_vec()].concat();
        assert_eq!(status_of(&mut c, 5, flush(w), Command::Flush), status::SUCCESS);
        let r = open_for(&mut c, &files, 6, FILE_OPEN, FILE_READ_DATA);
        assert_eq!(status_of(&mut c, 7, flush(r), Command::Flush), status::ACCESS_DENIED);
    }

    /// FileDispositionInformation needs its byte and the Ex class its four bytes of flags;
    /// Ex's IGNORE_READONLY_ATTRIBUTE deletes a read-only file, and ON_CLOSE sets the handle's
    /// delete-on-close (the file goes at its close).
    #[test]
    fn disposition_ex_flags_and_lengths() {
        use crate::share_modes::DELETE;
        let files = MemFiles::with_dirs(&[]);
        let mut c = connection();
        let status_of = |c: &mut _, id, body: Vec<u8>| exchange(c, &files, &request(Command::SetInfo, id, TREE, &body)).0[0].0.status;
        let f = open_for(&mut c, &files, 1, FILE_CREATE, FILE_READ_DATA | DELETE);
        assert_eq!(status_of(&mut c, 2, set_info(f, 13, &[])), status::INFO_LENGTH_MISMATCH);
        assert_eq!(status_of(&mut c, 3, set_info(f, 64, &[1, 0])), status::INFO_LENGTH_MISMATCH);
        let id = files.lookup("", "f.txt").unwrap().id;
        files.set_basic("", id, crate::server::files::Basic { attributes: Some(0x1), ..Default::default() }).unwrap();
        assert_eq!(status_of(&mut c, 4, set_info(f, 64, &1u32.to_le_bytes())), status::CANNOT_DELETE);
        assert_eq!(status_of(&mut c, 5, set_info(f, 64, &(0x1u32 | 0x10 | 0x8).to_le_bytes())), status::SUCCESS);
        let close = [vec![24, 0, 0, 0, 0, 0, 0, 0], f.to_le_bytes().to_vec(), f.to_le_bytes().to_vec()].concat();
        exchange(&mut c, &files, &request(Command::Close, 6, TREE, &close));
        assert!(files.lookup("", "f.txt").is_err(), "deleted at its close");
    }

    /// A file marked READONLY (MS-FSA 2.1.5.1.2.1) is not opened to change its data, nor
    /// deleted, by delete-on-close or by a disposition set on an open made before the mark;
    /// reading it is fine.
    #[test]
    fn a_readonly_file_is_neither_written_nor_deleted() {
        use crate::share_modes::DELETE;
        let files = MemFiles::with_dirs(&[]);
        let mut c = connection();
        let status_of = |c: &mut _, id, body: Vec<u8>, command| exchange(c, &files, &request(command, id, TREE, &body)).0[0].0.status;
        let early = open_for(&mut c, &files, 1, FILE_CREATE, FILE_READ_DATA | DELETE | FILE_WRITE_ATTRIBUTES);
        assert_eq!(status_of(&mut c, 2, set_info(early, 4, &basic(0, 0x1)), Command::SetInfo), status::SUCCESS, "marked READONLY");
        assert_eq!(status_of(&mut c, 3, create_with_access("f.txt", false, FILE_OPEN, FILE_WRITE_DATA), Command::Create), status::ACCESS_DENIED);
        assert_eq!(status_of(&mut c, 4, create_with_access("f.txt", false, 5, FILE_READ_DATA), Command::Create), status::ACCESS_DENIED, "no overwrite");
        let mut doomed = create_with_access("f.txt", false, FILE_OPEN, DELETE);
        doomed[40..44].copy_from_slice(&0x1000u32.to_le_bytes()); // FILE_DELETE_ON_CLOSE
        assert_eq!(status_of(&mut c, 5, doomed, Command::Create), status::CANNOT_DELETE);
        assert_eq!(status_of(&mut c, 6, set_info(early, 13, &[1]), Command::SetInfo), status::CANNOT_DELETE, "the open predates the mark");
        assert_eq!(status_of(&mut c, 7, create_with_access("f.txt", false, FILE_OPEN, FILE_READ_DATA), Command::Create), status::SUCCESS);
    }
}
