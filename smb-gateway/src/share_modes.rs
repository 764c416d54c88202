//! Share modes: the access a CREATE is granted and the MS-FSA 2.1.5.1.2 share-access check
//! between opens of one file. Pure: the table of opens that uses it lives with each volume's
//! owner (node/src/opens.rs), so the check holds across every node's gateway.

/// FILE_READ_DATA (FILE_LIST_DIRECTORY on a directory).
pub const FILE_READ_DATA: u32 = 0x0000_0001;
/// FILE_WRITE_DATA (FILE_ADD_FILE).
pub const FILE_WRITE_DATA: u32 = 0x0000_0002;
/// FILE_APPEND_DATA (FILE_ADD_SUBDIRECTORY).
pub const FILE_APPEND_DATA: u32 = 0x0000_0004;
pub const FILE_READ_EA: u32 = 0x0000_0008;
pub const FILE_WRITE_EA: u32 = 0x0000_0010;
/// FILE_EXECUTE (FILE_TRAVERSE).
pub const FILE_EXECUTE: u32 = 0x0000_0020;
pub const FILE_DELETE_CHILD: u32 = 0x0000_0040;
pub const FILE_READ_ATTRIBUTES: u32 = 0x0000_0080;
pub const FILE_WRITE_ATTRIBUTES: u32 = 0x0000_0100;
pub const DELETE: u32 = 0x0001_0000;
pub const READ_CONTROL: u32 = 0x0002_0000;
pub const WRITE_DAC: u32 = 0x0004_0000;
pub const WRITE_OWNER: u32 = 0x0008_0000;
pub const SYNCHRONIZE: u32 = 0x0010_0000;
pub const ACCESS_SYSTEM_SECURITY: u32 = 0x0100_0000;
pub const MAXIMUM_ALLOWED: u32 = 0x0200_0000;
pub const GENERIC_ALL: u32 = 0x1000_0000;
pub const GENERIC_EXECUTE: u32 = 0x2000_0000;
pub const GENERIC_WRITE: u32 = 0x4000_0000;
pub const GENERIC_READ: u32 = 0x8000_0000;

/// FILE_SHARE_READ, FILE_SHARE_WRITE, FILE_SHARE_DELETE (ShareAccess of a CREATE).
pub const SHARE_READ: u32 = 0x1;
pub const SHARE_WRITE: u32 = 0x2;
pub const SHARE_DELETE: u32 = 0x4;
pub const SHARE_ALL: u32 = SHARE_READ | SHARE_WRITE | SHARE_DELETE;

/// FILE_ALL_ACCESS: every specific and standard right a file has.
pub const FILE_ALL_ACCESS: u32 = 0x001F_01FF;
/// What a read-only share or a shadow copy grants at most (FILE_GENERIC_READ | FILE_EXECUTE).
pub const READ_ONLY_ACCESS: u32 = 0x0012_00A9;

/// The rights that take part in the share-access check: an open holding none of them (only
/// attributes, say) neither conflicts nor is counted (MS-FSA 2.1.5.1.2.1; IoCheckShareAccess).
pub const DATA_ACCESS: u32 = FILE_READ_DATA | FILE_WRITE_DATA | FILE_APPEND_DATA | FILE_EXECUTE | DELETE;

const READS: u32 = FILE_READ_DATA | FILE_EXECUTE;
const WRITES: u32 = FILE_WRITE_DATA | FILE_APPEND_DATA;

/// One open as the check sees it: the access it was granted and the sharing it allows others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mode {
    pub access: u32,
    pub share: u32,
}

impl Mode {
    /// Whether this open takes part in share-access checks at all.
    pub fn counts(&self) -> bool {
        self.access & DATA_ACCESS != 0
    }
}

/// The generic rights (GENERIC_READ ...) and MAXIMUM_ALLOWED of a CREATE's DesiredAccess mapped
/// to specific file rights (MS-FSA's file generic mapping), limited to what the share grants
/// (`max`: [`FILE_ALL_ACCESS`], or [`READ_ONLY_ACCESS`] on a read-only share). Specific rights
/// outside `max` stay in the result, so the caller can refuse them.
pub fn granted(desired: u32, max: u32) -> u32 {
    const FILE_GENERIC_READ: u32 = READ_CONTROL | FILE_READ_DATA | FILE_READ_ATTRIBUTES | FILE_READ_EA | SYNCHRONIZE;
    const FILE_GENERIC_WRITE: u32 = READ_CONTROL | FILE_WRITE_DATA | FILE_WRITE_ATTRIBUTES | FILE_WRITE_EA | FILE_APPEND_DATA | SYNCHRONIZE;
    const FILE_GENERIC_EXECUTE: u32 = READ_CONTROL | FILE_READ_ATTRIBUTES | FILE_EXECUTE | SYNCHRONIZE;
    let mut access = desired & (FILE_ALL_ACCESS | ACCESS_SYSTEM_SECURITY);
    if desired & GENERIC_READ != 0 {
        access |= FILE_GENERIC_READ & max;
    }
    if desired & GENERIC_WRITE != 0 {
        access |= FILE_GENERIC_WRITE & max;
    }
    if desired & GENERIC_EXECUTE != 0 {
        access |= FILE_GENERIC_EXECUTE & max;
    }
    if desired & (GENERIC_ALL | MAXIMUM_ALLOWED) != 0 {
        access |= max;
    }
    access
}

/// The new open `new` against one existing open of the same file: true when they conflict
/// (MS-FSA 2.1.5.1.2.1, both directions).
pub fn conflicts(existing: &Mode, new: &Mode) -> bool {
    if !existing.counts() || !new.counts() {
        return false;
    }
    let denied = |holder: &Mode, other: &Mode| {
        (holder.share & SHARE_READ == 0 && other.access & READS != 0)
            || (holder.share & SHARE_WRITE == 0 && other.access & WRITES != 0)
            || (holder.share & SHARE_DELETE == 0 && other.access & DELETE != 0)
    };
    denied(existing, new) || denied(new, existing)
}

/// The share-access check of a new open against every existing open of the file:
/// `Err(index)` names the first existing open it conflicts with (STATUS_SHARING_VIOLATION).
pub fn check<'a>(existing: impl IntoIterator<Item = &'a Mode>, new: &Mode) -> Result<(), usize> {
    match existing.into_iter().position(|e| conflicts(e, new)) {
        Some(i) => Err(i),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(access: u32, share: u32) -> Mode {
        Mode { access, share }
    }

    #[test]
    fn a_reader_that_shares_read_admits_another_reader() {
        assert!(!conflicts(&m(FILE_READ_DATA, SHARE_READ), &m(FILE_READ_DATA, SHARE_READ)));
    }

    #[test]
    fn an_existing_open_without_share_read_refuses_a_reader_and_an_executor() {
        assert!(conflicts(&m(FILE_READ_DATA, SHARE_WRITE | SHARE_DELETE), &m(FILE_READ_DATA, SHARE_ALL)));
        assert!(conflicts(&m(FILE_READ_DATA, SHARE_WRITE | SHARE_DELETE), &m(FILE_EXECUTE, SHARE_ALL)));
    }

    #[test]
    fn an_existing_open_without_share_write_refuses_writers_and_appenders() {
        assert!(conflicts(&m(FILE_READ_DATA, SHARE_READ), &m(FILE_WRITE_DATA, SHARE_ALL)));
        assert!(conflicts(&m(FILE_READ_DATA, SHARE_READ), &m(FILE_APPEND_DATA, SHARE_ALL)));
    }

    #[test]
    fn an_existing_open_without_share_delete_refuses_delete_access() {
        assert!(conflicts(&m(FILE_READ_DATA, SHARE_READ | SHARE_WRITE), &m(DELETE, SHARE_ALL)));
        assert!(!conflicts(&m(FILE_READ_DATA, SHARE_ALL), &m(DELETE, SHARE_ALL)));
    }

    #[test]
    fn a_new_open_must_share_what_existing_opens_already_hold() {
        // The existing open writes; the new reader does not share write.
        assert!(conflicts(&m(FILE_WRITE_DATA, SHARE_ALL), &m(FILE_READ_DATA, SHARE_READ)));
        // The existing open reads; the new writer does not share read.
        assert!(conflicts(&m(FILE_READ_DATA, SHARE_ALL), &m(FILE_WRITE_DATA, SHARE_WRITE)));
        // The existing open may delete; the new open does not share delete.
        assert!(conflicts(&m(DELETE, SHARE_ALL), &m(FILE_READ_DATA, SHARE_READ | SHARE_WRITE)));
    }

    #[test]
    fn opens_without_data_access_neither_conflict_nor_are_refused() {
        let attributes_only = m(FILE_READ_ATTRIBUTES | FILE_WRITE_ATTRIBUTES | SYNCHRONIZE | READ_CONTROL, 0);
        assert!(!attributes_only.counts());
        assert!(!conflicts(&m(FILE_READ_DATA | FILE_WRITE_DATA | DELETE, 0), &attributes_only));
        assert!(!conflicts(&attributes_only, &m(FILE_READ_DATA | FILE_WRITE_DATA | DELETE, 0)));
    }

    #[test]
    fn share_none_excludes_every_data_open_both_ways() {
        let exclusive = m(FILE_READ_DATA, 0);
        for access in [FILE_READ_DATA, FILE_WRITE_DATA, FILE_APPEND_DATA, FILE_EXECUTE, DELETE] {
            assert!(conflicts(&exclusive, &m(access, SHARE_ALL)), "{access:#x}");
            assert!(conflicts(&m(access, SHARE_ALL), &exclusive), "{access:#x}");
        }
    }

    #[test]
    fn check_names_the_first_conflicting_open() {
        let opens = [m(FILE_READ_DATA, SHARE_ALL), m(FILE_READ_DATA, SHARE_READ), m(FILE_READ_DATA, 0)];
        assert_eq!(check(&opens, &m(FILE_WRITE_DATA, SHARE_ALL)), Err(1));
        assert_eq!(check(&opens[..1], &m(FILE_WRITE_DATA, SHARE_ALL)), Ok(()));
        assert_eq!(check(&[], &m(FILE_WRITE_DATA, 0)), Ok(()));
    }

    #[test]
    fn generic_rights_map_to_file_rights_within_what_the_share_grants() {
        assert_eq!(granted(GENERIC_READ, FILE_ALL_ACCESS) & DATA_ACCESS, FILE_READ_DATA);
        assert_eq!(granted(GENERIC_WRITE, FILE_ALL_ACCESS) & DATA_ACCESS, FILE_WRITE_DATA | FILE_APPEND_DATA);
        assert_eq!(granted(GENERIC_EXECUTE, FILE_ALL_ACCESS) & DATA_ACCESS, FILE_EXECUTE);
        assert_eq!(granted(GENERIC_ALL, FILE_ALL_ACCESS), FILE_ALL_ACCESS);
        assert_eq!(granted(MAXIMUM_ALLOWED, FILE_ALL_ACCESS), FILE_ALL_ACCESS);
        assert_eq!(granted(MAXIMUM_ALLOWED, READ_ONLY_ACCESS), READ_ONLY_ACCESS);
        assert_eq!(granted(GENERIC_WRITE, READ_ONLY_ACCESS) & WRITES, 0, "a read-only share grants no write through GENERIC_WRITE");
        assert_eq!(granted(DELETE | FILE_READ_ATTRIBUTES, FILE_ALL_ACCESS), DELETE | FILE_READ_ATTRIBUTES);
    }
}
