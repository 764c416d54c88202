//! Security descriptors (MS-DTYP 2.4.6) as SMB2 QUERY_INFO and SET_INFO of
//! SMB2_0_INFO_SECURITY carry them: self-relative, an owner and a group SID, a SACL and a DACL,
//! each present or not, chosen by the request's AdditionalInformation bits.
//!
//! Umbra keeps each file's descriptor as clients set it (a backup that restores files restores
//! their ACLs, and reads them back); a new file or directory takes what its directory's
//! descriptor passes down ([`inherited`], computed by the volume's owner as it creates the
//! file), and one that never had either shows a default. It does not evaluate the ACLs: who
//! may do what is decided by the share and the user's role.
//!
//! Written by hand (no maintained crate parses Windows security descriptors without Windows):
//! [`Descriptor::parse`] checks every offset and length against the buffer and against
//! [`MAX_DESCRIPTOR_BYTES`], and each SID and ACL it keeps is well formed, so what is stored and
//! given back to other clients is always a descriptor Windows accepts.

use crate::wire::{u16_at, u32_at};

/// The largest descriptor kept: an ACL's size is 16 bits, and Windows bounds a whole
/// descriptor the same way.
pub const MAX_DESCRIPTOR_BYTES: usize = 64 * 1024;
/// Sub-authorities a SID has at most (MS-DTYP 2.4.2: SID_MAX_SUB_AUTHORITIES).
pub const MAX_SUB_AUTHORITIES: usize = 15;

/// AdditionalInformation bits (MS-DTYP 2.4.7).
pub const OWNER: u32 = 0x0000_0001;
pub const GROUP: u32 = 0x0000_0002;
pub const DACL: u32 = 0x0000_0004;
pub const SACL: u32 = 0x0000_0008;
/// The mandatory label: the SACL's SYSTEM_MANDATORY_LABEL ACEs only.
pub const LABEL: u32 = 0x0000_0010;
/// Everything: owner, group, DACL and SACL (BACKUP_SECURITY_INFORMATION).
pub const BACKUP: u32 = 0x0001_0000;

/// Control bits (MS-DTYP 2.4.6).
const SELF_RELATIVE: u16 = 0x8000;
const DACL_PRESENT: u16 = 0x0004;
const SACL_PRESENT: u16 = 0x0010;
/// SE_DACL_AUTO_INHERIT_REQ and SE_SACL_AUTO_INHERIT_REQ: asks of a set, never kept.
const AUTO_INHERIT_REQ: u16 = 0x0100 | 0x0200;
/// The ACE type of a mandatory label (SYSTEM_MANDATORY_LABEL_ACE_TYPE).
const MANDATORY_LABEL_ACE: u8 = 0x11;
/// The control bits that go with each part.
const OWNER_BITS: u16 = 0x0001;
const GROUP_BITS: u16 = 0x0002;
const DACL_BITS: u16 = 0x0004 | 0x0008 | 0x0100 | 0x0400 | 0x1000;
const SACL_BITS: u16 = 0x0010 | 0x0020 | 0x0200 | 0x0800 | 0x2000;

const HEADER_BYTES: usize = 20;
const ACL_HEADER_BYTES: usize = 8;
const ACE_HEADER_BYTES: usize = 4;

/// Why a descriptor was refused (STATUS_INVALID_SECURITY_DESCR).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdError {
    #[error("a security descriptor of {0} bytes is shorter than its header")]
    Truncated(usize),
    #[error("security descriptor revision {0} (only 1 exists)")]
    Revision(u8),
    #[error("a security descriptor of {0} bytes is larger than {MAX_DESCRIPTOR_BYTES}")]
    TooLarge(usize),
    #[error("not a self-relative security descriptor")]
    NotSelfRelative,
    #[error("the {what} at offset {offset} lies outside the {len} bytes of the descriptor")]
    Outside { what: &'static str, offset: usize, len: usize },
    #[error("the {0} is not a well-formed SID")]
    BadSid(&'static str),
    #[error("the {what} is not a well-formed ACL: {why}")]
    BadAcl { what: &'static str, why: &'static str },
    #[error("the descriptor would have no owner")]
    MissingOwner,
    #[error("the descriptor would have no group")]
    MissingGroup,
}

impl SdError {
    /// The NTSTATUS a client gets for it.
    pub fn status(&self) -> u32 {
        use crate::smb2::status;
        match self {
            SdError::MissingOwner => status::INVALID_OWNER,
            SdError::MissingGroup => status::INVALID_PRIMARY_GROUP,
            _ => status::INVALID_SECURITY_DESCR,
        }
    }
}

/// A security descriptor's parts, each as its bytes (a SID, an ACL) when present. A DACL or
/// SACL marked present in `control` without bytes is a NULL ACL (a NULL DACL allows everyone
/// everything); one not marked present has no bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub control: u16,
    pub owner: Option<Vec<u8>>,
    pub group: Option<Vec<u8>>,
    pub sacl: Option<Vec<u8>>,
    pub dacl: Option<Vec<u8>>,
}

impl Descriptor {
    /// A self-relative descriptor from a client (SET_INFO) or from storage.
    pub fn parse(b: &[u8]) -> Result<Descriptor, SdError> {
        if b.len() > MAX_DESCRIPTOR_BYTES {
            return Err(SdError::TooLarge(b.len()));
        }
        if b.len() < HEADER_BYTES {
            return Err(SdError::Truncated(b.len()));
        }
        if b[0] != 1 {
            return Err(SdError::Revision(b[0]));
        }
        let control = u16_at(b, 2).unwrap_or_default();
        if control & SELF_RELATIVE == 0 {
            return Err(SdError::NotSelfRelative);
        }
        let at = |i: usize| u32_at(b, 4 + 4 * i).unwrap_or_default() as usize;
        let (owner, group, sacl, dacl) = (at(0), at(1), at(2), at(3));
        // An ACL not marked present is not there, whatever its offset says.
        let (sacl, dacl) = (if control & SACL_PRESENT != 0 { sacl } else { 0 }, if control & DACL_PRESENT != 0 { dacl } else { 0 });
        Ok(Descriptor {
            control: control & !AUTO_INHERIT_REQ,
            owner: (owner != 0).then(|| sid(b, owner, "owner")).transpose()?,
            group: (group != 0).then(|| sid(b, group, "group")).transpose()?,
            sacl: (sacl != 0).then(|| acl(b, sacl, "SACL")).transpose()?,
            dacl: (dacl != 0).then(|| acl(b, dacl, "DACL")).transpose()?,
        })
    }

    /// The self-relative bytes: the header, then the SACL, DACL, owner and group (the order
    /// Windows writes them in).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_BYTES];
        out[0] = 1;
        out[2..4].copy_from_slice(&(self.control | SELF_RELATIVE).to_le_bytes());
        for (slot, part) in [(2, &self.sacl), (3, &self.dacl), (0, &self.owner), (1, &self.group)] {
            if let Some(bytes) = part {
                let offset = out.len() as u32;
                out[4 + 4 * slot..8 + 4 * slot].copy_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(bytes);
            }
        }
        out
    }

    /// The length of [`Self::encode`]'s bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + [&self.sacl, &self.dacl, &self.owner, &self.group].iter().filter_map(|p| p.as_ref()).map(Vec::len).sum::<usize>()
    }

    /// The parts `info` asks for (AdditionalInformation of a QUERY_INFO), with their control
    /// bits; the others absent. LABEL alone gives the SACL's mandatory-label ACEs only.
    pub fn select(&self, info: u32) -> Descriptor {
        let info = expand(info);
        let mut out = Descriptor { control: SELF_RELATIVE, ..Descriptor::default() };
        out.take(self, info);
        if info & LABEL != 0 && info & SACL == 0 {
            if let Some(sacl) = &self.sacl {
                out.sacl = Some(acl_of(sacl[0], aces(sacl).filter(|a| a[0] == MANDATORY_LABEL_ACE)));
                out.control |= SACL_PRESENT;
            }
        }
        out
    }

    /// Replaces the parts `info` names (AdditionalInformation of a SET_INFO) with `new`'s,
    /// with their control bits; the others stay. LABEL alone replaces the SACL's
    /// mandatory-label ACEs only. Refused when the result would have no owner or group where
    /// `info` names one, or would pass [`MAX_DESCRIPTOR_BYTES`].
    pub fn merge(&mut self, new: &Descriptor, info: u32) -> Result<(), SdError> {
        new.has_named(info)?;
        let info = expand(info);
        let mut merged = self.clone();
        merged.take(new, info);
        if info & LABEL != 0 && info & SACL == 0 {
            let kept = self.sacl.iter().flat_map(|s| aces(s)).filter(|a| a[0] != MANDATORY_LABEL_ACE);
            let given = new.sacl.iter().flat_map(|s| aces(s)).filter(|a| a[0] == MANDATORY_LABEL_ACE);
            let all: Vec<&[u8]> = kept.chain(given).collect();
            if self.sacl.is_some() || !all.is_empty() {
                let size = ACL_HEADER_BYTES + all.iter().map(|a| a.len()).sum::<usize>();
                if size > usize::from(u16::MAX) {
                    return Err(SdError::TooLarge(size));
                }
                let revision = self.sacl.as_ref().or(new.sacl.as_ref()).map_or(2, |s| s[0]);
                merged.sacl = Some(acl_of(revision, all.into_iter()));
                merged.control |= SACL_PRESENT;
            }
        }
        merged.control &= !AUTO_INHERIT_REQ;
        let len = merged.encoded_len();
        if len > MAX_DESCRIPTOR_BYTES {
            return Err(SdError::TooLarge(len));
        }
        *self = merged;
        Ok(())
    }

    /// Refused when `info` names the owner or group and this descriptor has none (a SET must
    /// not leave a file without them).
    pub fn has_named(&self, info: u32) -> Result<(), SdError> {
        let info = expand(info);
        if info & OWNER != 0 && self.owner.is_none() {
            return Err(SdError::MissingOwner);
        }
        if info & GROUP != 0 && self.group.is_none() {
            return Err(SdError::MissingGroup);
        }
        Ok(())
    }

    /// Each part: its AdditionalInformation bit, its control bits, and its bytes.
    fn parts_mut(&mut self) -> [(u32, u16, &mut Option<Vec<u8>>); 4] {
        [(OWNER, OWNER_BITS, &mut self.owner), (GROUP, GROUP_BITS, &mut self.group), (DACL, DACL_BITS, &mut self.dacl), (SACL, SACL_BITS, &mut self.sacl)]
    }

    fn take(&mut self, from: &Descriptor, info: u32) {
        let mut control = self.control;
        for ((bit, mask, mine), theirs) in self.parts_mut().into_iter().zip([&from.owner, &from.group, &from.dacl, &from.sacl]) {
            if info & bit != 0 {
                control = control & !mask | from.control & mask;
                mine.clone_from(theirs);
            }
        }
        self.control = control;
    }

    /// The AdditionalInformation bits of the parts this descriptor has (a DACL or SACL
    /// marked present counts, a NULL one too).
    pub fn present_parts(&self) -> u32 {
        let control = self.control;
        let present = [self.owner.is_some(), self.group.is_some(), control & DACL_PRESENT != 0 || self.dacl.is_some(), control & SACL_PRESENT != 0 || self.sacl.is_some()];
        [OWNER, GROUP, DACL, SACL].into_iter().zip(present).filter(|&(_, p)| p).fold(0, |info, (bit, _)| info | bit)
    }

    /// What a file that never had a descriptor set shows: owned by BUILTIN\Administrators
    /// (owner and group), and a DACL that allows Everyone full access (inherited by files and
    /// subdirectories, for a directory), as ACLs are not what decides access here.
    pub fn default_for(directory: bool) -> Descriptor {
        const ADMINISTRATORS: [u8; 16] = [1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 2, 0, 0];
        const EVERYONE: [u8; 12] = [1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        const ACCESS_ALLOWED: u8 = 0;
        const OBJECT_AND_CONTAINER_INHERIT: u8 = 0x03;
        let mut ace = vec![ACCESS_ALLOWED, if directory { OBJECT_AND_CONTAINER_INHERIT } else { 0 }];
        ace.extend_from_slice(&((ACE_HEADER_BYTES + 4 + EVERYONE.len()) as u16).to_le_bytes());
        ace.extend_from_slice(&crate::share_modes::FILE_ALL_ACCESS.to_le_bytes());
        ace.extend_from_slice(&EVERYONE);
        let dacl = acl_of(2, std::iter::once(&ace[..]));
        Descriptor { control: SELF_RELATIVE | DACL_PRESENT, owner: Some(ADMINISTRATORS.to_vec()), group: Some(ADMINISTRATORS.to_vec()), sacl: None, dacl: Some(dacl) }
    }
}

/// What a file keeps after a SET_INFO of its descriptor: `kept` (the descriptor it keeps, or
/// none: the default for a file or a directory) with the parts `parts` names replaced by
/// `given`'s, encoded. One that names every part replaces the whole without reading `kept`.
pub fn merged(kept: Option<&[u8]>, directory: bool, given: &[u8], parts: u32) -> Result<Vec<u8>, SdError> {
    let given = Descriptor::parse(given)?;
    let every = OWNER | GROUP | DACL | SACL;
    let mut d = if expand(parts) & every == every {
        Descriptor::default()
    } else {
        kept.map_or_else(|| Ok(Descriptor::default_for(directory)), Descriptor::parse)?
    };
    d.merge(&given, parts)?;
    Ok(d.encode())
}

/// ACE flags (MS-DTYP 2.4.4.1).
const OBJECT_INHERIT_ACE: u8 = 0x01;
const CONTAINER_INHERIT_ACE: u8 = 0x02;
const NO_PROPAGATE_INHERIT_ACE: u8 = 0x04;
const INHERIT_ONLY_ACE: u8 = 0x08;
const INHERITED_ACE: u8 = 0x10;
const INHERIT_FLAGS: u8 = OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE | NO_PROPAGATE_INHERIT_ACE | INHERIT_ONLY_ACE;
/// SE_DACL_AUTO_INHERITED and SE_SACL_AUTO_INHERITED: a child's ACL follows its parent's.
const DACL_AUTO_INHERITED: u16 = 0x0400;
const SACL_AUTO_INHERITED: u16 = 0x0800;
/// The highest ACE type, all of whose kinds carry an access mask after the header (MS-DTYP
/// 2.4.4: up to SYSTEM_SCOPED_POLICY_ID_ACE_TYPE).
const MAX_KNOWN_ACE_TYPE: u8 = 0x13;
/// CREATOR OWNER (S-1-3-0) and CREATOR GROUP (S-1-3-1): in an inherited ACE that applies,
/// the new object's owner and group.
const CREATOR_OWNER: &[u8] = &[1, 1, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0];
const CREATOR_GROUP: &[u8] = &[1, 1, 0, 0, 0, 0, 0, 3, 1, 0, 0, 0];
/// Generic rights, and the file rights each stands for (MS-SMB2 2.2.13.1.1).
const GENERIC_MAP: [(u32, u32); 4] = [(0x8000_0000, 0x0012_0089), (0x4000_0000, 0x0012_0116), (0x2000_0000, 0x0012_00A0), (0x1000_0000, 0x001F_01FF)];
const GENERIC_BITS: u32 = 0xF000_0000;

/// The descriptor a new file or directory takes from its parent directory's `parent` (MS-DTYP
/// 2.5.3.4.2, its inheritance rules): the parent's DACL and SACL ACEs that a file (object
/// inherit) or a directory (container inherit, or object inherit passed further down)
/// inherits, marked inherited, with generic rights made file rights and CREATOR OWNER and
/// CREATOR GROUP made its owner and group where they apply to the new one. Owner and group are
/// the default's (no user has a SID here). None when nothing is inherited, or the parent's
/// bytes do not parse: the new one then shows the default; nor when what it would inherit
/// passes the bounds of an ACL or a descriptor (logged), which then shows the default too.
pub fn inherited(parent: &[u8], directory: bool) -> Option<Vec<u8>> {
    let parent = Descriptor::parse(parent).ok()?;
    let mut d = Descriptor::default_for(directory);
    let (owner, group) = (d.owner.clone().unwrap_or_default(), d.group.clone().unwrap_or_default());
    let too_large = |bytes: usize| {
        tracing::warn!(bytes, "what a new file would inherit passes the bounds of a security descriptor: it shows the default");
        None
    };
    // Err: past an ACL's bound.
    let inherit = |acl: &Option<Vec<u8>>| -> Result<Option<Vec<u8>>, usize> {
        let Some(acl) = acl.as_ref() else { return Ok(None) };
        let mut out: Vec<Vec<u8>> = Vec::new();
        for ace in aces(acl) {
            out.extend(inherited_aces(ace, directory, &owner, &group));
        }
        let size = ACL_HEADER_BYTES + out.iter().map(Vec::len).sum::<usize>();
        match size <= usize::from(u16::MAX) {
            true => Ok((!out.is_empty()).then(|| acl_of(acl[0], out.iter().map(Vec::as_slice)))),
            false => Err(size),
        }
    };
    let (dacl, sacl) = match (inherit(&parent.dacl), inherit(&parent.sacl)) {
        (Ok(dacl), Ok(sacl)) => (dacl, sacl),
        (Err(size), _) | (_, Err(size)) => return too_large(size),
    };
    if dacl.is_none() && sacl.is_none() {
        return None;
    }
    if dacl.is_some() {
        d.dacl = dacl;
        d.control |= parent.control & DACL_AUTO_INHERITED;
    }
    if sacl.is_some() {
        d.sacl = sacl;
        d.control |= SACL_PRESENT | parent.control & SACL_AUTO_INHERITED;
    }
    let bytes = d.encode();
    match bytes.len() <= MAX_DESCRIPTOR_BYTES {
        true => Some(bytes),
        false => too_large(bytes.len()),
    }
}

/// What one of a parent's ACEs becomes in a new file or directory: nothing, the ACE as it
/// applies to the new one, one passed further down only (inherit-only), or, for an ACE that
/// applies and passes down but must change to apply (generic rights made file rights, CREATOR
/// OWNER or CREATOR GROUP made the new one's `owner` or `group`), both.
fn inherited_aces(ace: &[u8], directory: bool, owner: &[u8], group: &[u8]) -> Vec<Vec<u8>> {
    let flags = ace[1];
    let (object, container, no_propagate) = (flags & OBJECT_INHERIT_ACE != 0, flags & CONTAINER_INHERIT_ACE != 0, flags & NO_PROPAGATE_INHERIT_ACE != 0);
    let other = flags & !INHERIT_FLAGS & !INHERITED_ACE;
    // The access mask, in the ACE types that have one.
    let mask = u32_at(ace, 4).filter(|_| ace[0] <= MAX_KNOWN_ACE_TYPE);
    let generic = mask.is_some_and(|m| m & GENERIC_BITS != 0);
    // The creator SIDs, in the ACE types whose SID follows the mask and ends the ACE.
    let simple = matches!(ace[0], 0x00..=0x03 | MANDATORY_LABEL_ACE);
    let creator = simple.then(|| match ace.get(8..) {
        Some(CREATOR_OWNER) => Some(owner),
        Some(CREATOR_GROUP) => Some(group),
        _ => None,
    }).flatten();
    // `applies`: as it applies to the new one (generic rights mapped, creator SIDs replaced).
    let with = |flags: u8, applies: bool| {
        let mut a = ace.to_vec();
        a[1] = flags | INHERITED_ACE;
        if let (true, Some(mask)) = (applies, mask) {
            let mapped = GENERIC_MAP.iter().filter(|(g, _)| mask & g != 0).fold(mask & !GENERIC_BITS, |m, (_, f)| m | f);
            a[4..8].copy_from_slice(&mapped.to_le_bytes());
        }
        if let (true, Some(sid)) = (applies, creator) {
            a.truncate(8);
            a.extend_from_slice(sid);
            let size = a.len() as u16;
            a[2..4].copy_from_slice(&size.to_le_bytes());
        }
        a
    };
    match (directory, object, container) {
        (false, true, _) => vec![with(other, true)],
        (false, false, _) | (true, false, false) => Vec::new(),
        // Applies to the directory; stops here, or passes down as it is (split when it must
        // change to apply to the directory itself).
        (true, _, true) if no_propagate => vec![with(other, true)],
        (true, _, true) if generic || creator.is_some() => vec![with(other, true), with(other | flags & (OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE) | INHERIT_ONLY_ACE, false)],
        (true, _, true) => vec![with(other | flags & (OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE), false)],
        // For files only: passes down through the directory, unless it stops at the first level.
        (true, true, false) if no_propagate => Vec::new(),
        (true, true, false) => vec![with(other | OBJECT_INHERIT_ACE | INHERIT_ONLY_ACE, false)],
    }
}

/// Whether AdditionalInformation names any part kept here (owner, group, DACL, SACL, label).
pub fn names_parts(info: u32) -> bool {
    expand(info) & (OWNER | GROUP | DACL | SACL | LABEL) != 0
}

/// BACKUP_SECURITY_INFORMATION as the four parts it stands for.
pub(crate) fn expand(info: u32) -> u32 {
    if info & BACKUP != 0 {
        info | OWNER | GROUP | DACL | SACL
    } else {
        info
    }
}

/// The ACEs of an ACL [`acl`] checked, each with its bytes.
fn aces(acl: &[u8]) -> impl Iterator<Item = &[u8]> {
    let count = u16_at(acl, 4).unwrap_or(0);
    let mut at = ACL_HEADER_BYTES;
    (0..count).map_while(move |_| {
        let size = usize::from(u16_at(acl, at + 2)?);
        let ace = acl.get(at..at + size)?;
        at += size;
        Some(ace)
    })
}

/// An ACL of `revision` holding `aces` (their sizes bounded by the caller: at most 64 KiB).
fn acl_of<'a>(revision: u8, aces: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = vec![revision, 0, 0, 0, 0, 0, 0, 0];
    let mut count = 0u16;
    for ace in aces {
        out.extend_from_slice(ace);
        count += 1;
    }
    let size = out.len() as u16;
    out[2..4].copy_from_slice(&size.to_le_bytes());
    out[4..6].copy_from_slice(&count.to_le_bytes());
    out
}

/// The SID at `offset` (MS-DTYP 2.4.2.2: revision 1, up to 15 sub-authorities).
fn sid(b: &[u8], offset: usize, what: &'static str) -> Result<Vec<u8>, SdError> {
    sid_len(b, offset, what).map(|len| b[offset..offset + len].to_vec())
}

fn sid_len(b: &[u8], offset: usize, what: &'static str) -> Result<usize, SdError> {
    let outside = || SdError::Outside { what, offset, len: b.len() };
    let s = b.get(offset..).ok_or_else(outside)?;
    let (Some(&revision), Some(&count)) = (s.first(), s.get(1)) else { return Err(outside()) };
    if revision != 1 || usize::from(count) > MAX_SUB_AUTHORITIES {
        return Err(SdError::BadSid(what));
    }
    let len = 8 + 4 * usize::from(count);
    if s.len() < len {
        return Err(outside());
    }
    Ok(len)
}

/// The ACL at `offset` (MS-DTYP 2.4.5): revision 2 or 4, its size within the descriptor, each
/// ACE within it, DWORD-sized, and the SID of every ACE type with a mask and a SID well formed.
fn acl(b: &[u8], offset: usize, what: &'static str) -> Result<Vec<u8>, SdError> {
    let bad = |why| SdError::BadAcl { what, why };
    let outside = || SdError::Outside { what, offset, len: b.len() };
    let a = b.get(offset..).ok_or_else(outside)?;
    let (Some(&revision), Some(size), Some(count)) = (a.first(), u16_at(a, 2), u16_at(a, 4)) else { return Err(outside()) };
    let size = usize::from(size);
    if revision != 2 && revision != 4 {
        return Err(bad("revision not 2 or 4"));
    }
    if size % 4 != 0 {
        return Err(bad("a size not a multiple of 4"));
    }
    if size < ACL_HEADER_BYTES || a.len() < size {
        return Err(outside());
    }
    let acl = &a[..size];
    let mut at = ACL_HEADER_BYTES;
    for _ in 0..count {
        let (Some(&kind), Some(ace_size)) = (acl.get(at), u16_at(acl, at + 2)) else { return Err(bad("an ACE past its end")) };
        let ace_size = usize::from(ace_size);
        if ace_size < ACE_HEADER_BYTES || ace_size % 4 != 0 || at + ace_size > size {
            return Err(bad("an ACE's size"));
        }
        // ACCESS_ALLOWED, ACCESS_DENIED, SYSTEM_AUDIT, SYSTEM_ALARM, SYSTEM_MANDATORY_LABEL,
        // SYSTEM_RESOURCE_ATTRIBUTE's and SCOPED_POLICY_ID's fixed part: a mask, then a SID.
        if matches!(kind, 0 | 1 | 2 | 3 | 0x11 | 0x12 | 0x13) {
            let ace = &acl[at..at + ace_size];
            sid_len(ace, ACE_HEADER_BYTES + 4, "SID of an ACE").map_err(|_| bad("an ACE's SID"))?;
        }
        at += ace_size;
    }
    Ok(acl.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const USER: [u8; 28] = [1, 5, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0xe9, 3, 0, 0];
    const EVERYONE: [u8; 12] = [1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];

    fn ace(kind: u8, flags: u8, mask: u32, sid: &[u8]) -> Vec<u8> {
        let mut a = vec![kind, flags];
        a.extend_from_slice(&((8 + sid.len()) as u16).to_le_bytes());
        a.extend_from_slice(&mask.to_le_bytes());
        a.extend_from_slice(sid);
        a
    }

    fn list(aces: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = aces.concat();
        let mut a = vec![2, 0];
        a.extend_from_slice(&((8 + body.len()) as u16).to_le_bytes());
        a.extend_from_slice(&(aces.len() as u16).to_le_bytes());
        a.extend_from_slice(&[0, 0]);
        a.extend_from_slice(&body);
        a
    }

    /// A descriptor as Windows writes one: owner and group, a protected DACL of two ACEs (an
    /// allow for a domain user's SID, a deny for Everyone), a SACL with one audit ACE.
    fn sample() -> Vec<u8> {
        let (user, everyone) = (USER, EVERYONE);
        let d = Descriptor {
            control: SELF_RELATIVE | DACL_PRESENT | 0x1000 | 0x0010,
            owner: Some(user.to_vec()),
            group: Some(everyone.to_vec()),
            sacl: Some(list(&[ace(2, 0x40, 0x0001_0000, &everyone)])),
            dacl: Some(list(&[ace(0, 0x03, 0x001F_01FF, &user), ace(1, 0, 0x0000_0002, &everyone)])),
        };
        d.encode()
    }

    #[test]
    fn a_descriptor_reads_back_as_written_and_the_default_is_well_formed() {
        let bytes = sample();
        let d = Descriptor::parse(&bytes).unwrap();
        assert_eq!(d.encode(), bytes);
        assert_eq!(d.dacl.as_ref().unwrap().len(), 8 + 36 + 20);
        for directory in [false, true] {
            let default = Descriptor::default_for(directory);
            assert_eq!(Descriptor::parse(&default.encode()), Ok(default));
        }
    }

    #[test]
    fn a_query_gets_the_parts_it_asks_for_and_a_set_replaces_only_those() {
        let d = Descriptor::parse(&sample()).unwrap();
        let owner_only = d.select(OWNER);
        assert_eq!((owner_only.owner.is_some(), owner_only.group, owner_only.dacl, owner_only.sacl, owner_only.control), (true, None, None, None, SELF_RELATIVE));
        let dacl = d.select(DACL);
        assert_eq!((dacl.owner, dacl.dacl.as_ref(), dacl.control), (None, d.dacl.as_ref(), SELF_RELATIVE | DACL_PRESENT | 0x1000));
        assert_eq!(d.select(BACKUP), d, "everything");
        let mut kept = Descriptor::default_for(false);
        kept.merge(&d, DACL).unwrap();
        assert_eq!((kept.owner.as_ref(), kept.dacl.as_ref()), (Descriptor::default_for(false).owner.as_ref(), d.dacl.as_ref()), "the owner stays, the DACL is the new one");
        assert_eq!(kept.control & 0x1000, 0x1000, "with its control bits (protected)");
        kept.merge(&Descriptor { control: SELF_RELATIVE, ..Descriptor::default() }, DACL).unwrap();
        assert_eq!((kept.dacl.as_ref(), kept.control & DACL_PRESENT), (None, 0), "a DACL taken away");
        // Naming the owner or group with a descriptor that has none is refused, nothing changed.
        let before = kept.clone();
        assert_eq!(kept.merge(&Descriptor::default(), OWNER), Err(SdError::MissingOwner));
        assert_eq!(kept.merge(&Descriptor::default(), GROUP | BACKUP), Err(SdError::MissingOwner));
        assert_eq!(kept.merge(&Descriptor::default(), GROUP), Err(SdError::MissingGroup));
        assert_eq!(kept, before);
        // A NULL DACL (present, no bytes) reads back as one; the auto-inherit asks are not kept.
        let null = Descriptor { control: SELF_RELATIVE | DACL_PRESENT | 0x0100, ..Descriptor::default() };
        kept.merge(&null, DACL).unwrap();
        assert_eq!((kept.dacl.as_ref(), kept.control & (DACL_PRESENT | 0x0100)), (None, DACL_PRESENT));
        assert_eq!(Descriptor::parse(&kept.encode()).unwrap(), kept);
    }

    /// LABEL alone asks for, or replaces, the SACL's mandatory-label ACEs only: the audit ACEs
    /// stay, and stay unseen.
    #[test]
    fn a_label_is_the_mandatory_label_aces_of_the_sacl_only() {
        let d = Descriptor::parse(&sample()).unwrap();
        let label_only = d.select(LABEL);
        assert_eq!(label_only.sacl.as_ref().map(|s| aces(s).count()), Some(0), "the sample's SACL holds an audit ACE only");
        let everyone = [1u8, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        let mut label = vec![MANDATORY_LABEL_ACE, 0, 20, 0, 1, 0, 0, 0];
        label.extend_from_slice(&everyone);
        let given = Descriptor { control: SELF_RELATIVE | SACL_PRESENT, sacl: Some(acl_of(2, [&label[..]].into_iter())), ..Descriptor::default() };
        let mut kept = d.clone();
        kept.merge(&given, LABEL).unwrap();
        let sacl = kept.sacl.clone().unwrap();
        assert_eq!(aces(&sacl).map(|a| a[0]).collect::<Vec<_>>(), [2, MANDATORY_LABEL_ACE], "the audit ACE stays, the label joins it");
        assert_eq!(kept.select(LABEL).sacl.map(|s| aces(&s).map(|a| a.to_vec()).collect::<Vec<_>>()), Some(vec![label.clone()]));
        assert_eq!(kept.select(SACL).sacl, Some(sacl), "the whole SACL with SACL");
        assert_eq!(Descriptor::parse(&kept.encode()).unwrap(), kept);
    }

    /// What a merge makes stays within MAX_DESCRIPTOR_BYTES, though each part came in a
    /// descriptor within it.
    #[test]
    fn a_merge_past_the_size_bound_is_refused() {
        let everyone = [1u8, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        let mut ace = vec![0u8, 0, 20, 0, 0xff, 0x01, 0x1f, 0];
        ace.extend_from_slice(&everyone);
        let big = acl_of(2, std::iter::repeat_n(&ace[..], 2000));
        let dacl = Descriptor { control: SELF_RELATIVE | DACL_PRESENT, dacl: Some(big.clone()), ..Descriptor::default() };
        let sacl = Descriptor { control: SELF_RELATIVE | SACL_PRESENT, sacl: Some(big), ..Descriptor::default() };
        let mut kept = Descriptor::default_for(false);
        kept.merge(&dacl, DACL).unwrap();
        let before = kept.clone();
        assert!(matches!(kept.merge(&sacl, SACL), Err(SdError::TooLarge(_))));
        assert_eq!(kept, before);
    }

    #[test]
    fn malformed_descriptors_are_refused() {
        let good = sample();
        let with = |at: usize, bytes: &[u8]| {
            let mut b = good.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            Descriptor::parse(&b)
        };
        assert_eq!(Descriptor::parse(&good[..19]), Err(SdError::Truncated(19)));
        assert_eq!(with(0, &[2]), Err(SdError::Revision(2)));
        assert_eq!(with(2, &0x0004u16.to_le_bytes()), Err(SdError::NotSelfRelative));
        assert!(matches!(with(4, &60_000u32.to_le_bytes()), Err(SdError::Outside { what: "owner", .. })));
        assert!(matches!(with(16, &(good.len() as u32 - 4).to_le_bytes()), Err(SdError::Outside { .. } | SdError::BadAcl { .. })));
        let owner = u32::from_le_bytes(good[4..8].try_into().unwrap()) as usize;
        assert_eq!(with(owner + 1, &[16]), Err(SdError::BadSid("owner")), "16 sub-authorities");
        let dacl = u32::from_le_bytes(good[16..20].try_into().unwrap()) as usize;
        assert!(matches!(with(dacl, &[3]), Err(SdError::BadAcl { why: "revision not 2 or 4", .. })));
        assert!(matches!(with(dacl + 4, &9u16.to_le_bytes()), Err(SdError::BadAcl { .. })), "more ACEs than it holds");
        assert!(matches!(with(dacl + 10, &6u16.to_le_bytes()), Err(SdError::BadAcl { why: "an ACE's size", .. })), "an ACE of 6 bytes");
        assert!(matches!(Descriptor::parse(&vec![0; MAX_DESCRIPTOR_BYTES + 1]), Err(SdError::TooLarge(_))));
        assert!(matches!(with(dacl + 2, &66u16.to_le_bytes()), Err(SdError::BadAcl { why: "a size not a multiple of 4", .. })));
        // A DACL offset without SE_DACL_PRESENT is no DACL, whatever it points at.
        let control = u16::from_le_bytes(good[2..4].try_into().unwrap()) & !DACL_PRESENT;
        assert_eq!(with(2, &control.to_le_bytes()).unwrap().dacl, None);
    }

    /// The ACEs of a descriptor's DACL or SACL, each as (type, flags, mask).
    fn summary(acl: &Option<Vec<u8>>) -> Vec<(u8, u8, u32)> {
        acl.iter().flat_map(|a| aces(a)).map(|a| (a[0], a[1], u32::from_le_bytes(a[4..8].try_into().unwrap()))).collect()
    }

    #[test]
    fn a_new_file_or_directory_inherits_what_its_parent_passes_down() {
        const GENERIC_READ: u32 = 0x8000_0000;
        const GENERIC_ALL: u32 = 0x1000_0000;
        let parent = Descriptor {
            control: SELF_RELATIVE | DACL_PRESENT | SACL_PRESENT | DACL_AUTO_INHERITED,
            owner: Some(USER.to_vec()),
            group: Some(USER.to_vec()),
            dacl: Some(list(&[
                ace(0, 0x03, 0x001F_01FF, &USER),       // files and directories, on down
                ace(0, 0x01, 0x0012_00A9, &EVERYONE),   // files only, on down
                ace(1, 0x02, 0x0000_0002, &EVERYONE),   // directories only, on down
                ace(0, 0x06, GENERIC_READ, &USER),      // the directory's children only
                ace(0, 0x00, 0x0000_0001, &EVERYONE),   // the directory's own
                ace(0, 0x03, GENERIC_ALL, &EVERYONE),   // generic, on down
                ace(0, 0x05, 0x0000_0004, &USER),       // files of the first level only
            ])),
            sacl: Some(list(&[ace(2, 0x41, 0x0001_0000, &EVERYONE)])),
        }
        .encode();
        let file = Descriptor::parse(&inherited(&parent, false).unwrap()).unwrap();
        let admins = Descriptor::default_for(false).owner;
        assert_eq!((&file.owner, &file.group), (&admins, &admins), "the default's owner and group");
        assert_eq!(file.control & (DACL_PRESENT | SACL_PRESENT | DACL_AUTO_INHERITED), DACL_PRESENT | SACL_PRESENT | DACL_AUTO_INHERITED);
        assert_eq!(summary(&file.dacl), vec![(0, 0x10, 0x001F_01FF), (0, 0x10, 0x0012_00A9), (0, 0x10, 0x001F_01FF), (0, 0x10, 0x0000_0004)], "what files inherit, generic rights made file rights, no inherit flags");
        assert_eq!(summary(&file.sacl), vec![(2, 0x50, 0x0001_0000)], "audit flags kept");
        let dir = Descriptor::parse(&inherited(&parent, true).unwrap()).unwrap();
        assert_eq!(
            summary(&dir.dacl),
            vec![
                (0, 0x13, 0x001F_01FF),  // applies, and passes on
                (0, 0x19, 0x0012_00A9),  // only passes on to files
                (1, 0x12, 0x0000_0002),  // applies, and passes on to directories
                (0, 0x10, 0x0012_0089),  // applies, stops here: generic read as file rights
                (0, 0x10, 0x001F_01FF),  // the generic one split: as it applies here...
                (0, 0x1B, GENERIC_ALL),  // ...and as it passes on
            ]
        );
        assert_eq!(summary(&dir.sacl), vec![(2, 0x59, 0x0001_0000)]);
        // CREATOR OWNER becomes the new one's owner where it applies; passed on as it is.
        let creator = Descriptor { dacl: Some(list(&[ace(0, 0x0B, GENERIC_ALL, CREATOR_OWNER)])), sacl: None, control: SELF_RELATIVE | DACL_PRESENT, ..Descriptor::parse(&parent).unwrap() }.encode();
        let admins = admins.unwrap();
        let sids = |d: &Descriptor| d.dacl.iter().flat_map(|a| aces(a)).map(|a| (a[1], a[8..].to_vec())).collect::<Vec<_>>();
        let file = Descriptor::parse(&inherited(&creator, false).unwrap()).unwrap();
        assert_eq!((summary(&file.dacl), sids(&file)), (vec![(0, 0x10, 0x001F_01FF)], vec![(0x10, admins.clone())]));
        let dir = Descriptor::parse(&inherited(&creator, true).unwrap()).unwrap();
        assert_eq!(sids(&dir), vec![(0x10, admins), (0x1B, CREATOR_OWNER.to_vec())], "the directory's own, then the one passed on");
        // Nothing to inherit, or a parent that does not parse: the default.
        let plain = Descriptor { dacl: Some(list(&[ace(0, 0, 0x1F01FF, &USER)])), ..Descriptor::parse(&parent).unwrap() };
        let plain = Descriptor { sacl: None, control: plain.control & !SACL_PRESENT, ..plain }.encode();
        assert_eq!((inherited(&plain, false), inherited(&plain, true)), (None, None));
        assert_eq!(inherited(&[1, 0], true), None);
        assert_eq!(inherited(&Descriptor::default_for(true).encode(), false).map(|d| summary(&Descriptor::parse(&d).unwrap().dacl)), Some(vec![(0, 0x10, 0x001F_01FF)]), "the default passes Everyone's access down");
    }

    proptest! {
        /// Whatever a parent holds, what a new file or directory inherits parses, every ACE in
        /// it is marked inherited, and a file's pass nothing further down.
        #[test]
        fn inheriting_from_any_parent_gives_a_well_formed_descriptor(changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6), directory in any::<bool>()) {
            let mut b = sample();
            for (at, v) in changes {
                let i = at.index(b.len());
                b[i] = v;
            }
            if let Some(child) = inherited(&b, directory) {
                let d = Descriptor::parse(&child);
                prop_assert!(d.is_ok(), "{:?}", d);
                let d = d.unwrap();
                for (_, flags, _) in summary(&d.dacl).into_iter().chain(summary(&d.sacl)) {
                    prop_assert!(flags & INHERITED_ACE != 0);
                    prop_assert!(directory || flags & INHERIT_FLAGS == 0);
                }
            }
        }

        /// Whatever bytes arrive, parsing never panics, and what it accepts encodes to a
        /// descriptor that parses to the same parts (so what is stored can be given back).
        #[test]
        fn any_bytes_parse_without_panic_and_what_is_accepted_round_trips(b in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(d) = Descriptor::parse(&b) {
                prop_assert_eq!(d.encoded_len(), d.encode().len());
                prop_assert_eq!(Descriptor::parse(&d.encode()), Ok(d));
            }
        }

        /// The same for a real descriptor with bytes changed.
        #[test]
        fn a_mutated_descriptor_parses_without_panic_and_round_trips(changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
            let mut b = sample();
            for (at, v) in changes {
                let i = at.index(b.len());
                b[i] = v;
            }
            let b = &b[..cut.index(b.len() + 1).max(1)];
            if let Ok(d) = Descriptor::parse(b) {
                prop_assert_eq!(Descriptor::parse(&d.encode()), Ok(d));
            }
        }
    }
}
