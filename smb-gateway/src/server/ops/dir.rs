//! QUERY_DIRECTORY and its entry formats.

use super::Listing;
use super::super::connection::{Connection, Reply};
use super::super::files::{FileInfo, Files};
use super::*;
use crate::smb2::header::{Header, HEADER_BYTES};
use crate::smb2::status;

impl Connection {
    pub(in crate::server) fn query_directory(&mut self, h: &Header, message: &[u8], files: &dyn Files) -> Reply {
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
        // MS-FSA 2.1.5.6.3: a buffer that cannot hold one entry's fixed part is refused, and
        // the listing stays where it was.
        let limit = (out_len as usize).min(self.config.max_io_bytes as usize);
        // An entry's fixed part: the entry with an empty name.
        let fixed = dir_entry(class, &dir, "").len();
        if limit < fixed {
            return Reply::error(status::INFO_LENGTH_MISMATCH);
        }
        let open = self.opens.get_mut(&volatile).expect("checked above");
        let restart = flags & (0x01 | 0x10) != 0 || open.listing.is_none();
        if restart {
            let pattern = if pattern.is_empty() { "*".to_string() } else { pattern };
            open.listing = Some(Listing { pattern, after: String::new(), dots: 0, done: false });
        }
        let listing = open.listing.as_mut().expect("set above");
        if listing.done {
            return Reply::error(status::NO_MORE_FILES);
        }
        let single = flags & 0x02 != 0;
        let mut out: Vec<u8> = Vec::new();
        let mut last_entry_at: Option<usize> = None;
        // The first entry always goes in, its name cut to what fits (BUFFER_OVERFLOW, as
        // MS-FSA has it): the listing moves past it, so a small buffer never ends it early.
        let overflow = std::cell::Cell::new(false);
        let mut push = |out: &mut Vec<u8>, f: &FileInfo, name: &str| -> bool {
            if overflow.get() {
                return false;
            }
            let mut entry = dir_entry(class, f, name);
            let start = out.len().div_ceil(8) * 8;
            if start + entry.len() > limit {
                if last_entry_at.is_some() {
                    return false;
                }
                entry.truncate(fixed + (limit - fixed) / 2 * 2);
                overflow.set(true);
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
        if !matches(&listing.pattern, ".") {
            listing.dots = 2;
        }
        // `.` then `..`, one at a time when the client asked for a single entry.
        while listing.dots < 2 && !(single && any) {
            if !push(&mut out, &dir, if listing.dots == 0 { "." } else { ".." }) {
                break;
            }
            listing.dots += 1;
            any = true;
        }
        'outer: while !(single && any) && !overflow.get() {
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
        Reply::ok(r).overflowing(overflow.get())
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

#[cfg(test)]
mod tests {
    use super::super::matches;

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

    /// With RETURN_SINGLE_ENTRY, `.` and `..` come one per call, like any other entry.
    #[test]
    fn a_single_entry_listing_gives_the_dot_entries_one_at_a_time() {
        use crate::server::testkit::*;
        use crate::smb2::header::Command;
        use crate::smb2::status;
        let (mut c, files) = (connection(), MemFiles::with_dirs(&["d"]));
        let d = open(&mut c, &files, 1, TREE, "d", true, 1);
        let query = |flags: u8| {
            let mut b = vec![33, 0, 12, flags, 0, 0, 0, 0];
            b.extend_from_slice(&d.to_le_bytes());
            b.extend_from_slice(&d.to_le_bytes());
            b.extend_from_slice(&96u16.to_le_bytes());
            b.extend_from_slice(&2u16.to_le_bytes());
            b.extend_from_slice(&4096u32.to_le_bytes());
            b.extend_from_slice(&[b'*', 0]);
            b
        };
        let mut names = Vec::new();
        for (id, flags) in [(2, 0x02 | 0x01), (3, 0x02), (4, 0x02)] {
            let (r, _) = exchange(&mut c, &files, &request(Command::QueryDirectory, id, TREE, &query(flags)));
            if r[0].0.status != status::SUCCESS {
                names.push(format!("{:#x}", r[0].0.status));
                continue;
            }
            let body = &r[0].1;
            assert_eq!(u32::from_le_bytes(body[4..8].try_into().unwrap()) as usize, 12 + 2 * (names.len() + 1), "one entry");
            let len = u32::from_le_bytes(body[16..20].try_into().unwrap()) as usize;
            names.push(String::from_utf16_lossy(&body[20..20 + len].chunks(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect::<Vec<_>>()));
        }
        assert_eq!(names, [".", "..", &format!("{:#x}", status::NO_MORE_FILES)]);
    }

    /// A buffer too small for one entry's fixed part is refused and the listing stays; one
    /// that holds the fixed part but not the name gets the entry with its name cut
    /// (BUFFER_OVERFLOW), and the listing goes on past it to every other entry.
    #[test]
    fn a_small_buffer_never_ends_a_listing_early() {
        use crate::server::testkit::*;
        use crate::smb2::header::Command;
        use crate::smb2::status;
        let (mut c, files) = (connection(), MemFiles::with_dirs(&["d", "d\\a-long-name.txt", "d\\b"]));
        let d = open(&mut c, &files, 1, TREE, "d", true, 1);
        let query = |flags: u8, out_len: u32| {
            let mut b = vec![33, 0, 12, flags, 0, 0, 0, 0];
            b.extend_from_slice(&d.to_le_bytes());
            b.extend_from_slice(&d.to_le_bytes());
            b.extend_from_slice(&96u16.to_le_bytes());
            b.extend_from_slice(&2u16.to_le_bytes());
            b.extend_from_slice(&out_len.to_le_bytes());
            b.extend_from_slice(&[b'*', 0]);
            b
        };
        let (r, _) = exchange(&mut c, &files, &request(Command::QueryDirectory, 2, TREE, &query(0x01, 11)));
        assert_eq!(r[0].0.status, status::INFO_LENGTH_MISMATCH, "below FileNamesInformation's 12 fixed bytes");
        let mut seen = Vec::new();
        for id in 3..20 {
            let (r, _) = exchange(&mut c, &files, &request(Command::QueryDirectory, id, TREE, &query(if id == 3 { 0x01 } else { 0 }, 16)));
            let st = r[0].0.status;
            if st == status::NO_MORE_FILES {
                break;
            }
            assert!(st == status::SUCCESS || st == status::BUFFER_OVERFLOW, "{st:#x}");
            let body = &r[0].1;
            let out = u32::from_le_bytes(body[4..8].try_into().unwrap()) as usize;
            assert!(out <= 16);
            let full = u32::from_le_bytes(body[16..20].try_into().unwrap()) as usize;
            assert_eq!(st == status::BUFFER_OVERFLOW, full > 4, "the name's full length, {full}, with what fits of it");
            seen.push(String::from_utf16_lossy(&body[20..8 + out].chunks(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect::<Vec<_>>()));
        }
        assert_eq!(seen, [".", "..", "a-", "b"], "every entry once, the long name cut to 4 bytes");
    }

    /// DOS wildcards as MS-FSA 2.1.4.4 defines them (what Windows clients send for `?`, `*`
    /// and `.` in a search).
    #[test]
    fn dos_wildcards_follow_ms_fsa() {
        assert!(matches("file>.txt", "file.txt"), "> matches nothing before a period");
        assert!(matches("file>.txt", "file1.txt"));
        assert!(!matches("file>.txt", "file12.txt"));
        assert!(matches("<.do>", "x.do"), "> matches nothing at the end");
        assert!(matches("<.do>", "x.doc"));
        assert!(matches("a<\"<", "abc"), "\" matches nothing at the end (a*.*)");
        assert!(matches("a<\"<", "abc.txt"));
        assert!(matches("<\"", "abc"), "*. : names without an extension");
        assert!(!matches("<\"", "abc.txt"));
        assert!(matches("<.txt", "a.b.txt"), "< may pass periods before the last");
        assert!(!matches(&"*".repeat(super::super::MAX_PATTERN_CHARS + 1), "a"), "an overlong pattern names nothing");
    }
}
