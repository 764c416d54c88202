//! MS-FSRVP's FileServerVssAgent interface (pipe `\PIPE\FssagentRpc`) as NDR 2.0 stubs, without
//! I/O: [`decode`] turns the stub of a request into a [`Call`], [`encode`] turns a call's [out]
//! values and its result into the stub of the response. What the values are is the FSRVP state
//! machine's business; this module only puts them on the wire the way Samba's and Windows'
//! clients expect (docs/fsrvp.md §3).
//!
//! Hand-written because no maintained Rust crate marshals DCE/RPC NDR for MS-FSRVP: the one
//! DCE/RPC crate tried for the gateway (smb-rpc, from smb-rs) has no FSRVP and was rejected for
//! its PDU handling (docs/stack.md), and the interface is small (13 operations over GUIDs, u32s
//! and UTF-16 strings). Golden vectors from rpcclient traffic against Samba pin the layouts down
//! byte for byte.

use uuid::Uuid;

use super::ndr::{Reader, Writer};
use super::pdu::{Interface, NCA_OP_RNG_ERROR, RPC_BAD_STUB_DATA};

/// a8e0653c-2744-4389-a61d-7373df8b2292 version 1.0, as on the wire (16 bytes + u16 major + u16 minor LE).
pub const INTERFACE: Interface = [0x3c, 0x65, 0xe0, 0xa8, 0x44, 0x27, 0x89, 0x43, 0xa6, 0x1d, 0x73, 0x73, 0xdf, 0x8b, 0x22, 0x92, 1, 0, 0, 0];

/// The pipe clients open (SMB2 CREATE name; matched case-insensitively).
pub const PIPE_NAME: &str = "FssagentRpc";

/// FSRVP_RPC_VERSION_1, the only protocol version (GetSupportedVersion's min and max).
pub const RPC_VERSION_1: u32 = 1;

/// Longest share name (a UNC) a request may carry, in UTF-16 units without the terminating NUL.
pub const MAX_SHARE_NAME_UNITS: usize = 1024;

/// The one GetShareMapping level there is (FSSAGENT_SHARE_MAPPING_1).
pub const SHARE_MAPPING_LEVEL_1: u32 = 1;

/// Referent id of a reply's first non-null pointer; the next ones count up by 4, as Samba's do.
const FIRST_REFERENT: u32 = 0x0002_0000;

/// Shadow copy attributes (MS-FSRVP 2.2.2.1).
pub const ATTR_PERSISTENT: u32 = 0x0000_0001;
pub const ATTR_NO_AUTO_RECOVERY: u32 = 0x0000_0002;
pub const ATTR_NO_AUTO_RELEASE: u32 = 0x0000_0008;
pub const ATTR_NO_WRITERS: u32 = 0x0000_0010;
/// In the IDL only, not in the spec's tables.
pub const ATTR_FILE_SHARE: u32 = 0x0400_0000;
/// Writable between Expose and RecoveryComplete, read-only afterwards.
pub const ATTR_AUTO_RECOVERY: u32 = 0x0040_0000;

/// Shadow copy contexts (MS-FSRVP 2.2.2.2): combinations of the attributes above.
pub const CTX_BACKUP: u32 = 0x0000_0000;
pub const CTX_FILE_SHARE_BACKUP: u32 = ATTR_NO_WRITERS;
pub const CTX_NAS_ROLLBACK: u32 = ATTR_PERSISTENT | ATTR_NO_AUTO_RELEASE | ATTR_NO_WRITERS;
pub const CTX_APP_ROLLBACK: u32 = ATTR_PERSISTENT | ATTR_NO_AUTO_RELEASE;

/// IsPathShadowCopied's compatibility bits.
pub const COMPAT_DISABLE_DEFRAG: i32 = 0x1;
pub const COMPAT_DISABLE_CONTENTINDEX: i32 = 0x2;

/// Whether SetContext's `ctx` is one Samba accepts: one of the four contexts, optionally with
/// ATTR_AUTO_RECOVERY. (The spec also allows ATTR_NO_AUTO_RECOVERY; Samba refuses it, and so do we.)
pub fn valid_context(ctx: u32) -> bool {
    matches!(ctx & !ATTR_AUTO_RECOVERY, CTX_BACKUP | CTX_FILE_SHARE_BACKUP | CTX_NAS_ROLLBACK | CTX_APP_ROLLBACK)
}

/// The DWORD every operation returns (docs/fsrvp.md §2.2). These are results, never faults.
pub mod result {
    pub const OK: u32 = 0;
    /// Wrong set state, or no context set.
    pub const BAD_STATE: u32 = 0x8004_2301;
    /// Samba-only (an invalid share name inside the server).
    pub const BAD_ID: u32 = 0x8004_2302;
    pub const OBJECT_NOT_FOUND: u32 = 0x8004_2308;
    /// The share's file store cannot take snapshots.
    pub const NOT_SUPPORTED: u32 = 0x8004_230C;
    /// The share's volume is already in the set.
    pub const OBJECT_ALREADY_EXISTS: u32 = 0x8004_230D;
    /// GetShareMapping on a set not yet exposed (Windows Server 2012, copied by Samba).
    pub const INVALID_XML_DOCUMENT: u32 = 0x8004_2311;
    pub const SHADOW_COPY_SET_IN_PROGRESS: u32 = 0x8004_2316;
    /// Spec only; Samba answers E_INVALIDARG.
    pub const UNSUPPORTED_CONTEXT: u32 = 0x8004_231B;
    /// FSSAGENT_E_TIMEOUT (CommitShadowCopySet).
    pub const TIMEOUT: u32 = 0x8004_2500;
    /// Spec only, for an unknown set id; Samba answers E_INVALIDARG.
    pub const SHADOWCOPYSET_ID_MISMATCH: u32 = 0x8004_2501;
    /// Win32 WAIT_TIMEOUT: the high bit is clear.
    pub const WAIT_TIMEOUT: u32 = 0x0000_0102;
    pub const WAIT_FAILED: u32 = 0xFFFF_FFFF;
    pub const E_ACCESSDENIED: u32 = 0x8007_0005;
    /// Samba's answer for unknown ids and shares.
    pub const E_INVALIDARG: u32 = 0x8007_0057;
    pub const E_OUTOFMEMORY: u32 = 0x8007_000E;
    pub const E_FAIL: u32 = 0x8000_4005;

    /// The name of a result code, for logs.
    pub fn name(code: u32) -> Option<&'static str> {
        Some(match code {
            OK => "OK",
            BAD_STATE => "FSRVP_E_BAD_STATE",
            BAD_ID => "FSRVP_E_BAD_ID",
            OBJECT_NOT_FOUND => "FSRVP_E_OBJECT_NOT_FOUND",
            NOT_SUPPORTED => "FSRVP_E_NOT_SUPPORTED",
            OBJECT_ALREADY_EXISTS => "FSRVP_E_OBJECT_ALREADY_EXISTS",
            INVALID_XML_DOCUMENT => "VSS_E_INVALID_XML_DOCUMENT",
            SHADOW_COPY_SET_IN_PROGRESS => "FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS",
            UNSUPPORTED_CONTEXT => "FSRVP_E_UNSUPPORTED_CONTEXT",
            TIMEOUT => "FSSAGENT_E_TIMEOUT",
            SHADOWCOPYSET_ID_MISMATCH => "FSRVP_E_SHADOWCOPYSET_ID_MISMATCH",
            WAIT_TIMEOUT => "FSRVP_E_WAIT_TIMEOUT",
            WAIT_FAILED => "FSRVP_E_WAIT_FAILED",
            E_ACCESSDENIED => "E_ACCESSDENIED",
            E_INVALIDARG => "E_INVALIDARG",
            E_OUTOFMEMORY => "E_OUTOFMEMORY",
            E_FAIL => "E_FAIL",
            _ => return None,
        })
    }
}

/// Operation names, indexed by opnum.
const NAMES: [&str; 13] = [
    "GetSupportedVersion",
    "SetContext",
    "StartShadowCopySet",
    "AddToShadowCopySet",
    "CommitShadowCopySet",
    "ExposeShadowCopySet",
    "RecoveryCompleteShadowCopySet",
    "AbortShadowCopySet",
    "IsPathSupported",
    "IsPathShadowCopied",
    "GetShareMapping",
    "DeleteShareMapping",
    "PrepareShadowCopySet",
];

/// The name of `opnum`, or `None` past the last operation (12).
pub fn opnum_name(opnum: u16) -> Option<&'static str> {
    NAMES.get(usize::from(opnum)).copied()
}

/// A decoded request: the [in] parameters of one operation. Share names are the UNCs as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    GetSupportedVersion,
    SetContext { context: u32 },
    StartShadowCopySet { client_set_id: Uuid },
    AddToShadowCopySet { client_copy_id: Uuid, set_id: Uuid, share: String },
    CommitShadowCopySet { set_id: Uuid, timeout_ms: u32 },
    ExposeShadowCopySet { set_id: Uuid, timeout_ms: u32 },
    RecoveryCompleteShadowCopySet { set_id: Uuid },
    AbortShadowCopySet { set_id: Uuid },
    IsPathSupported { share: String },
    IsPathShadowCopied { share: String },
    /// The copy id comes first on the wire here, ...
    GetShareMapping { copy_id: Uuid, set_id: Uuid, share: String, level: u32 },
    /// ... and the set id first here.
    DeleteShareMapping { set_id: Uuid, copy_id: Uuid, share: String },
    PrepareShadowCopySet { set_id: Uuid, timeout_ms: u32 },
}

impl Call {
    pub fn opnum(&self) -> u16 {
        match self {
            Call::GetSupportedVersion => 0,
            Call::SetContext { .. } => 1,
            Call::StartShadowCopySet { .. } => 2,
            Call::AddToShadowCopySet { .. } => 3,
            Call::CommitShadowCopySet { .. } => 4,
            Call::ExposeShadowCopySet { .. } => 5,
            Call::RecoveryCompleteShadowCopySet { .. } => 6,
            Call::AbortShadowCopySet { .. } => 7,
            Call::IsPathSupported { .. } => 8,
            Call::IsPathShadowCopied { .. } => 9,
            Call::GetShareMapping { .. } => 10,
            Call::DeleteShareMapping { .. } => 11,
            Call::PrepareShadowCopySet { .. } => 12,
        }
    }

    pub fn name(&self) -> &'static str {
        NAMES[usize::from(self.opnum())]
    }
}

/// The [out] values of a call (what the server fills in on success).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Out {
    /// Operations without [out] values, and every failed call.
    #[default]
    Nothing,
    /// GetSupportedVersion.
    Versions { min: u32, max: u32 },
    /// StartShadowCopySet: the server's id for the new set.
    SetId(Uuid),
    /// AddToShadowCopySet: the server's id for the new shadow copy.
    CopyId(Uuid),
    /// IsPathSupported: an empty `owner_machine` goes out as a NULL pointer.
    PathSupported { supported: bool, owner_machine: String },
    /// IsPathShadowCopied: `compatibility` holds COMPAT_* bits.
    ShadowCopied { present: bool, compatibility: i32 },
    /// GetShareMapping at level 1.
    Mapping(ShareMapping),
}

/// FSSAGENT_SHARE_MAPPING_1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareMapping {
    pub set_id: Uuid,
    pub copy_id: Uuid,
    pub share_unc: String,
    /// ShadowCopyShareName; `None` (a NULL pointer) while the copy is not exposed.
    pub exposed_name: Option<String>,
    /// CreationTimestamp: 100 ns units since 1601-01-01 UTC.
    pub created_filetime: u64,
}

/// Decodes a request stub. `Err` is a DCE/RPC fault status: NCA_OP_RNG_ERROR for an opnum past
/// 12, RPC_BAD_STUB_DATA for a stub that is short or malformed. Bytes after the parameters (a
/// verification trailer from an authenticated client) are ignored.
pub fn decode(opnum: u16, stub: &[u8]) -> Result<Call, u32> {
    let r = &mut Reader::new(stub);
    Ok(match opnum {
        0 => Call::GetSupportedVersion,
        1 => Call::SetContext { context: dword(r)? },
        2 => Call::StartShadowCopySet { client_set_id: guid(r)? },
        3 => {
            let (client_copy_id, set_id) = (guid(r)?, guid(r)?);
            Call::AddToShadowCopySet { client_copy_id, set_id, share: share_name(r)? }
        }
        4 => {
            let set_id = guid(r)?;
            Call::CommitShadowCopySet { set_id, timeout_ms: dword(r)? }
        }
        5 => {
            let set_id = guid(r)?;
            Call::ExposeShadowCopySet { set_id, timeout_ms: dword(r)? }
        }
        6 => Call::RecoveryCompleteShadowCopySet { set_id: guid(r)? },
        7 => Call::AbortShadowCopySet { set_id: guid(r)? },
        8 => Call::IsPathSupported { share: share_name(r)? },
        9 => Call::IsPathShadowCopied { share: share_name(r)? },
        10 => {
            let (copy_id, set_id, share) = (guid(r)?, guid(r)?, share_name(r)?);
            Call::GetShareMapping { copy_id, set_id, share, level: dword(r)? }
        }
        11 => {
            let (set_id, copy_id) = (guid(r)?, guid(r)?);
            Call::DeleteShareMapping { set_id, copy_id, share: share_name(r)? }
        }
        12 => {
            let set_id = guid(r)?;
            Call::PrepareShadowCopySet { set_id, timeout_ms: dword(r)? }
        }
        _ => return Err(NCA_OP_RNG_ERROR),
    })
}

fn dword(r: &mut Reader) -> Result<u32, u32> {
    r.u32().ok_or(RPC_BAD_STUB_DATA)
}

fn guid(r: &mut Reader) -> Result<Uuid, u32> {
    r.guid().ok_or(RPC_BAD_STUB_DATA)
}

/// A top-level `[in, string] LPWSTR`: max count, offset, actual count, then the UTF-16 units
/// with their terminating NUL. The offset must be 0, the NUL the last unit and the only one,
/// and neither count may exceed MAX_SHARE_NAME_UNITS (plus the NUL).
fn share_name(r: &mut Reader) -> Result<String, u32> {
    let (max, offset, actual) = (dword(r)?, dword(r)?, dword(r)?);
    let bound = MAX_SHARE_NAME_UNITS as u32 + 1;
    if offset != 0 || actual == 0 || actual > max || max > bound {
        return Err(RPC_BAD_STUB_DATA);
    }
    let bytes = r.bytes(actual as usize * 2).ok_or(RPC_BAD_STUB_DATA)?;
    let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    match units.split_last() {
        Some((0, text)) if !text.contains(&0) => String::from_utf16(text).map_err(|_| RPC_BAD_STUB_DATA),
        _ => Err(RPC_BAD_STUB_DATA),
    }
}

/// Encodes the response stub of `call`: its [out] parameters, then the DWORD `result`.
///
/// The [out] parameters are always marshalled, as Samba does and as NDR clients parse them
/// before the result: with `result != 0`, or with an `out` that does not belong to `call`, they
/// go out zeroed (nil GUIDs, FALSE, NULL pointers; GetShareMapping keeps its union switch).
pub fn encode(call: &Call, out: &Out, result: u32) -> Vec<u8> {
    let out = if result == result::OK { out } else { &Out::Nothing };
    let nil = Uuid::nil();
    let mut w = Writer::with_first_referent(FIRST_REFERENT);
    match call {
        Call::GetSupportedVersion => {
            let (min, max) = if let Out::Versions { min, max } = out { (*min, *max) } else { (0, 0) };
            w.u32(min);
            w.u32(max);
        }
        Call::StartShadowCopySet { .. } => w.guid(if let Out::SetId(id) = out { id } else { &nil }),
        Call::AddToShadowCopySet { .. } => w.guid(if let Out::CopyId(id) = out { id } else { &nil }),
        Call::IsPathSupported { .. } => path_supported(&mut w, out),
        Call::IsPathShadowCopied { .. } => {
            let (present, compatibility) = if let Out::ShadowCopied { present, compatibility } = out { (*present, *compatibility) } else { (false, 0) };
            w.u32(u32::from(present));
            w.u32(compatibility as u32);
        }
        Call::GetShareMapping { level, .. } => share_mapping(&mut w, *level, out),
        Call::SetContext { .. }
        | Call::CommitShadowCopySet { .. }
        | Call::ExposeShadowCopySet { .. }
        | Call::RecoveryCompleteShadowCopySet { .. }
        | Call::AbortShadowCopySet { .. }
        | Call::DeleteShareMapping { .. }
        | Call::PrepareShadowCopySet { .. } => {}
    }
    w.u32(result);
    w.buf
}

/// IsPathSupported's BOOL, then a unique pointer to OwnerMachineName (NULL when there is none).
fn path_supported(w: &mut Writer, out: &Out) {
    let Out::PathSupported { supported, owner_machine } = out else {
        w.u32(0);
        w.u32(0);
        return;
    };
    w.u32(u32::from(*supported));
    if owner_machine.is_empty() {
        w.u32(0);
    } else {
        w.pointer();
        w.string(owner_machine);
    }
}

/// FSSAGENT_SHARE_MAPPING: the union's switch value (the level), then for level 1 a unique
/// pointer to the 8-aligned FSSAGENT_SHARE_MAPPING_1, whose strings follow it (deferred).
fn share_mapping(w: &mut Writer, level: u32, out: &Out) {
    w.u32(level);
    if level != SHARE_MAPPING_LEVEL_1 {
        return; // the [default] arm is empty
    }
    let Out::Mapping(m) = out else {
        w.u32(0);
        return;
    };
    w.pointer();
    w.align(8); // the struct holds a hyper
    w.guid(&m.set_id);
    w.guid(&m.copy_id);
    w.pointer(); // ShareNameUNC
    if m.exposed_name.is_some() {
        w.pointer();
    } else {
        w.u32(0);
    }
    w.u64(m.created_filetime);
    w.string(&m.share_unc);
    if let Some(name) = &m.exposed_name {
        w.string(name);
    }
}

/// Splits a UNC share name the way Samba does (docs/fsrvp.md §5): `\\host\share`, optionally
/// with one trailing `\`; host and share non-empty. Returns (host, share); callers ignore the
/// host. A path below the share (`\\host\share\dir`) is refused.
#[allow(clippy::result_unit_err)] // every bad UNC is the same E_INVALIDARG to the caller
pub fn parse_unc(unc: &str) -> Result<(&str, &str), ()> {
    let rest = unc.strip_prefix("\\\\").ok_or(())?;
    let (host, rest) = rest.split_once('\\').ok_or(())?;
    let share = rest.strip_suffix('\\').unwrap_or(rest);
    if host.is_empty() || share.is_empty() || share.contains('\\') {
        return Err(());
    }
    Ok((host, share))
}

/// A request stub as a client marshals it (the tests' client side).
#[cfg(test)]
fn encode_request(call: &Call) -> Vec<u8> {
    let mut w = Writer::new();
    match call {
        Call::GetSupportedVersion => {}
        Call::SetContext { context } => w.u32(*context),
        Call::StartShadowCopySet { client_set_id: id } | Call::RecoveryCompleteShadowCopySet { set_id: id } | Call::AbortShadowCopySet { set_id: id } => w.guid(id),
        Call::AddToShadowCopySet { client_copy_id: first, set_id: second, share } | Call::DeleteShareMapping { set_id: first, copy_id: second, share } => {
            w.guid(first);
            w.guid(second);
            w.string(share);
        }
        Call::GetShareMapping { copy_id, set_id, share, level } => {
            w.guid(copy_id);
            w.guid(set_id);
            w.string(share);
            w.u32(*level);
        }
        Call::CommitShadowCopySet { set_id, timeout_ms } | Call::ExposeShadowCopySet { set_id, timeout_ms } | Call::PrepareShadowCopySet { set_id, timeout_ms } => {
            w.guid(set_id);
            w.u32(*timeout_ms);
        }
        Call::IsPathSupported { share } | Call::IsPathShadowCopied { share } => w.string(share),
    }
    w.buf
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::result::*;
    use super::*;
    use crate::rpc::pdu;
    use crate::smb2::header::{Command, Header, HEADER_BYTES};
    use crate::wire::{u16_at, u32_at};

    const FSCTL_PIPE_TRANSCEIVE: u32 = 0x0011_C017;
    const STATUS_PENDING: u32 = 0x0000_0103;
    const SHARE: &str = "\\\\127.0.0.1\\fsrvp_share\\";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn id(s: &str) -> Uuid {
        Uuid::parse_str(s).unwrap()
    }

    /// The PDUs carried by FSCTL_PIPE_TRANSCEIVE in one direction of a capture, as
    /// (SMB2 message id, PDU); interim STATUS_PENDING replies are skipped.
    fn transceived(messages: &[Vec<u8>]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for m in messages {
            let h = Header::parse(m).unwrap();
            let body = &m[HEADER_BYTES..];
            if h.command != Command::Ioctl || (h.is_response() && h.status == STATUS_PENDING) || u32_at(body, 4) != Some(FSCTL_PIPE_TRANSCEIVE) {
                continue;
            }
            let (at, len) = if h.is_response() { (32, 36) } else { (24, 28) };
            let (off, len) = (u32_at(body, at).unwrap() as usize, u32_at(body, len).unwrap() as usize);
            out.push((h.message_id, m[off..off + len].to_vec()));
        }
        out
    }

    /// Every FSRVP call of a capture, in order: (opnum, request stub, response stub). The
    /// captures' rpcclient runs use no DCE/RPC auth, so a stub runs to the end of its PDU.
    fn captured_calls(name: &str) -> Vec<(u16, Vec<u8>, Vec<u8>)> {
        let (up, down) = crate::golden::streams(name);
        let requests = transceived(&crate::golden::direction(&up));
        let responses = transceived(&crate::golden::direction(&down));
        assert_eq!(requests.len(), responses.len(), "{name}: one reply per transceive");
        let mut calls = Vec::new();
        for ((asked, q), (answered, r)) in requests.into_iter().zip(responses) {
            assert_eq!(asked, answered, "{name}: replies in request order");
            let (hq, hr) = (pdu::Header::parse(&q).unwrap(), pdu::Header::parse(&r).unwrap());
            if hq.ptype == pdu::BIND {
                continue;
            }
            assert_eq!((hq.ptype, hr.ptype, hq.auth_len, hr.auth_len, hq.flags & 0x80), (pdu::REQUEST, pdu::RESPONSE, 0, 0, 0), "{name}");
            calls.push((u16_at(&q, 22).unwrap(), q[24..].to_vec(), r[24..].to_vec()));
        }
        calls
    }

    /// Checks a capture against the calls and replies it should hold: each request decodes to
    /// its call (and re-encodes to the same bytes), each reply is rebuilt byte for byte.
    fn check_capture(name: &str, expected: &[(Call, Out, u32)]) {
        let calls = captured_calls(name);
        assert_eq!(calls.len(), expected.len(), "{name}: {:?}", calls.iter().map(|c| c.0).collect::<Vec<_>>());
        for ((opnum, request, response), (call, out, result)) in calls.iter().zip(expected) {
            assert_eq!(decode(*opnum, request).as_ref(), Ok(call), "{name}: opnum {opnum}");
            assert_eq!(hex_of(&encode_request(call)), hex_of(request), "{name}: {} request re-encodes", call.name());
            assert_eq!(hex_of(&encode(call, out, *result)), hex_of(response), "{name}: {} reply", call.name());
        }
    }

    fn is_path_supported() -> (Call, Out, u32) {
        (Call::IsPathSupported { share: SHARE.into() }, Out::PathSupported { supported: true, owner_machine: "REFSMB".into() }, OK)
    }

    /// rpcclient fss_create_expose backup ro fsrvp_share.
    #[test]
    fn rpcclient_create_expose_decodes_and_every_reply_is_rebuilt_byte_for_byte() {
        let set = id("53e8fb51-2bc7-44e0-8097-4ba07736e048");
        let copy = id("a1c114a8-97b1-4218-94d0-beca2d016c6f");
        let mapping = ShareMapping {
            set_id: set,
            copy_id: copy,
            share_unc: "\\\\REFSMB\\fsrvp_share".into(),
            exposed_name: Some("fsrvp_share@{a1c114a8-97b1-4218-94d0-beca2d016c6f}".into()),
            created_filetime: 0x01dd_7c73_d48b_d500,
        };
        check_capture(
            "rpcclient-fss-create-expose.pcap",
            &[
                is_path_supported(),
                (Call::GetSupportedVersion, Out::Versions { min: RPC_VERSION_1, max: RPC_VERSION_1 }, OK),
                (Call::SetContext { context: CTX_BACKUP }, Out::Nothing, OK),
                (Call::StartShadowCopySet { client_set_id: id("193dde3f-ea8c-48b2-abcf-2ea40404d060") }, Out::SetId(set), OK),
                (Call::AddToShadowCopySet { client_copy_id: id("21c5fdd5-959f-483f-830a-7ec7ec49a6d9"), set_id: set, share: SHARE.into() }, Out::CopyId(copy), OK),
                (Call::PrepareShadowCopySet { set_id: set, timeout_ms: 240_000 }, Out::Nothing, OK),
                (Call::CommitShadowCopySet { set_id: set, timeout_ms: 180_000 }, Out::Nothing, OK),
                (Call::ExposeShadowCopySet { set_id: set, timeout_ms: 120_000 }, Out::Nothing, OK),
                (Call::GetShareMapping { copy_id: copy, set_id: set, share: SHARE.into(), level: 1 }, Out::Mapping(mapping), OK),
            ],
        );
    }

    /// Four rpcclient runs: fss_is_path_sup, fss_get_mapping, fss_recovery_complete, fss_delete.
    #[test]
    fn rpcclient_lifecycle_decodes_and_every_reply_is_rebuilt_byte_for_byte() {
        let set = id("4c2864ea-6a35-4622-a7c7-ef260a37af34");
        let copy = id("8ca219e0-f17d-4434-92ad-e70213574d53");
        let mapping = ShareMapping {
            set_id: set,
            copy_id: copy,
            share_unc: "\\\\REFSMB\\fsrvp_share".into(),
            exposed_name: Some("fsrvp_share@{8ca219e0-f17d-4434-92ad-e70213574d53}".into()),
            created_filetime: 0x01dd_7c73_fc7b_3880,
        };
        check_capture(
            "rpcclient-fss-lifecycle.pcap",
            &[
                is_path_supported(),
                (Call::GetShareMapping { copy_id: copy, set_id: set, share: SHARE.into(), level: 1 }, Out::Mapping(mapping), OK),
                (Call::RecoveryCompleteShadowCopySet { set_id: set }, Out::Nothing, OK),
                (Call::DeleteShareMapping { set_id: set, copy_id: copy, share: SHARE.into() }, Out::Nothing, OK),
            ],
        );
    }

    #[test]
    fn interface_is_a8e0653c_version_1_0() {
        assert_eq!(INTERFACE[..16], id("a8e0653c-2744-4389-a61d-7373df8b2292").to_bytes_le());
        assert_eq!(INTERFACE[16..], [1, 0, 0, 0]);
    }

    /// One call of every operation, with ids that tell the fields apart.
    fn one_of_each() -> Vec<Call> {
        let (a, b) = (id("00000001-0002-0003-0405-060708090a0b"), id("f0000001-0002-0003-0405-060708090a0b"));
        vec![
            Call::GetSupportedVersion,
            Call::SetContext { context: CTX_NAS_ROLLBACK | ATTR_AUTO_RECOVERY },
            Call::StartShadowCopySet { client_set_id: a },
            Call::AddToShadowCopySet { client_copy_id: a, set_id: b, share: SHARE.into() },
            Call::CommitShadowCopySet { set_id: a, timeout_ms: 180_000 },
            Call::ExposeShadowCopySet { set_id: a, timeout_ms: 120_000 },
            Call::RecoveryCompleteShadowCopySet { set_id: a },
            Call::AbortShadowCopySet { set_id: a },
            Call::IsPathSupported { share: SHARE.into() },
            Call::IsPathShadowCopied { share: SHARE.into() },
            Call::GetShareMapping { copy_id: a, set_id: b, share: SHARE.into(), level: 1 },
            Call::DeleteShareMapping { set_id: a, copy_id: b, share: SHARE.into() },
            Call::PrepareShadowCopySet { set_id: a, timeout_ms: 240_000 },
        ]
    }

    #[test]
    fn opnums_and_names_follow_the_idl() {
        for (i, call) in one_of_each().iter().enumerate() {
            assert_eq!(usize::from(call.opnum()), i);
            assert_eq!(opnum_name(call.opnum()), Some(call.name()));
        }
        assert_eq!(one_of_each()[10].name(), "GetShareMapping");
        assert_eq!(opnum_name(13), None);
    }

    /// What each operation sends back when it fails with E_INVALIDARG (57000780): every [out]
    /// zeroed, before the result.
    #[test]
    fn failed_calls_marshal_zeroed_outs_before_the_result() {
        let nil = "00000000 00000000 00000000 00000000";
        let zeroed = [
            "00000000 00000000", // MinVersion, MaxVersion
            "",
            nil, // pShadowCopySetId
            nil, // pShadowCopyId
            "",
            "",
            "",
            "",
            "00000000 00000000", // FALSE, NULL OwnerMachineName
            "00000000 00000000", // FALSE, no compatibility bits
            "01000000 00000000", // level 1, NULL ShareMapping1
            "",
            "",
        ];
        let full = [
            Out::Versions { min: 1, max: 1 },
            Out::Nothing,
            Out::SetId(Uuid::from_u128(7)),
            Out::CopyId(Uuid::from_u128(8)),
            Out::Nothing,
            Out::Nothing,
            Out::Nothing,
            Out::Nothing,
            Out::PathSupported { supported: true, owner_machine: "UMBRA".into() },
            Out::ShadowCopied { present: true, compatibility: 3 },
            Out::Mapping(mapping(Some("s@{x}"))),
            Out::Nothing,
            Out::Nothing,
        ];
        for ((call, zeroed), full) in one_of_each().iter().zip(zeroed).zip(&full) {
            let expect = hex(&format!("{zeroed} 57000780"));
            assert_eq!(encode(call, &Out::Nothing, E_INVALIDARG), expect, "{}", call.name());
            assert_eq!(encode(call, full, E_INVALIDARG), expect, "{}: values are dropped on failure", call.name());
        }
    }

    #[test]
    fn get_share_mapping_with_an_unknown_level_sends_only_the_level_and_the_result() {
        let call = Call::GetShareMapping { copy_id: Uuid::nil(), set_id: Uuid::nil(), share: SHARE.into(), level: 7 };
        assert_eq!(encode(&call, &Out::Nothing, E_INVALIDARG), hex("07000000 57000780"));
        assert_eq!(encode(&call, &Out::Mapping(mapping(None)), OK), hex("07000000 00000000"), "the default arm is empty");
    }

    #[test]
    fn a_success_whose_out_does_not_fit_the_call_goes_out_zeroed() {
        let calls = one_of_each();
        assert_eq!(encode(&calls[2], &Out::CopyId(Uuid::from_u128(1)), OK), [0; 20]);
        assert_eq!(encode(&calls[0], &Out::Nothing, OK), [0; 12]);
        assert_eq!(encode(&calls[10], &Out::SetId(Uuid::from_u128(1)), OK), hex("01000000 00000000 00000000"));
        assert_eq!(encode(&calls[8], &Out::ShadowCopied { present: true, compatibility: 1 }, OK), [0; 12]);
    }

    fn mapping(exposed_name: Option<&str>) -> ShareMapping {
        ShareMapping {
            set_id: id("00112233-4455-6677-8899-aabbccddeeff"),
            copy_id: id("ffeeddcc-bbaa-9988-7766-554433221100"),
            share_unc: "\\\\UMBRA\\s".into(),
            exposed_name: exposed_name.map(String::from),
            created_filetime: 0x0102_0304_0506_0708,
        }
    }

    #[test]
    fn an_unexposed_mapping_sends_a_null_shadow_copy_share_name() {
        let call = Call::GetShareMapping { copy_id: Uuid::nil(), set_id: Uuid::nil(), share: SHARE.into(), level: 1 };
        let got = encode(&call, &Out::Mapping(mapping(None)), OK);
        let expect = hex(
            "01000000 00000200
             33221100 55447766 8899aabb ccddeeff  ccddeeff aabb8899 77665544 33221100
             04000200 00000000 08070605 04030201
             0a000000 00000000 0a000000 5c005c00 55004d00 42005200 41005c00 73000000
             00000000",
        );
        assert_eq!(hex_of(&got), hex_of(&expect));
    }

    #[test]
    fn is_path_supported_and_is_path_shadow_copied_successes() {
        let calls = one_of_each();
        let unsupported = Out::PathSupported { supported: false, owner_machine: String::new() };
        assert_eq!(encode(&calls[8], &unsupported, OK), hex("00000000 00000000 00000000"), "no owner: a NULL pointer");
        let present = Out::ShadowCopied { present: true, compatibility: COMPAT_DISABLE_DEFRAG | COMPAT_DISABLE_CONTENTINDEX };
        assert_eq!(encode(&calls[9], &present, OK), hex("01000000 03000000 00000000"));
    }

    #[test]
    fn opnums_past_12_are_out_of_range_whatever_the_stub() {
        for opnum in [13, 14, 0x100, u16::MAX] {
            assert_eq!(decode(opnum, &[]), Err(pdu::NCA_OP_RNG_ERROR));
            assert_eq!(decode(opnum, &encode_request(&one_of_each()[3])), Err(pdu::NCA_OP_RNG_ERROR));
        }
    }

    #[test]
    fn every_truncated_request_is_bad_stub_data() {
        for call in one_of_each() {
            let full = encode_request(&call);
            assert_eq!(decode(call.opnum(), &full), Ok(call.clone()));
            for cut in 0..full.len() {
                assert_eq!(decode(call.opnum(), &full[..cut]), Err(pdu::RPC_BAD_STUB_DATA), "{} cut to {cut} bytes", call.name());
            }
        }
    }

    /// A verification trailer (MS-RPCE 2.2.2.13) after the parameters, as authenticated
    /// clients send it: aligned to 4, magic, then commands.
    #[test]
    fn a_verification_trailer_after_the_parameters_is_ignored() {
        for call in one_of_each() {
            let mut stub = encode_request(&call);
            stub.resize(stub.len().div_ceil(4) * 4, 0);
            stub.extend_from_slice(&hex("8ae31371 02f43671 0140 0400 01000000"));
            assert_eq!(decode(call.opnum(), &stub), Ok(call.clone()), "{}", call.name());
        }
    }

    /// IsPathSupported with the string header and units given.
    fn with_string(max: u32, offset: u32, actual: u32, units: &[u16]) -> Result<Call, u32> {
        let mut stub = Vec::new();
        for v in [max, offset, actual] {
            stub.extend_from_slice(&v.to_le_bytes());
        }
        stub.extend(units.iter().flat_map(|u| u.to_le_bytes()));
        decode(8, &stub)
    }

    #[test]
    fn malformed_share_name_strings_are_bad_stub_data() {
        let ab = [0x61, 0x62, 0];
        assert_eq!(with_string(3, 0, 3, &ab), Ok(Call::IsPathSupported { share: "ab".into() }));
        assert_eq!(with_string(5, 0, 3, &ab), Ok(Call::IsPathSupported { share: "ab".into() }), "max may exceed actual");
        let bad = pdu::RPC_BAD_STUB_DATA;
        assert_eq!(with_string(3, 1, 3, &ab), Err(bad), "offset must be 0");
        assert_eq!(with_string(2, 0, 3, &ab), Err(bad), "actual > max");
        assert_eq!(with_string(0, 0, 0, &[]), Err(bad), "no room for the NUL");
        assert_eq!(with_string(3, 0, 3, &[0x61, 0x62, 0x63]), Err(bad), "no terminating NUL");
        assert_eq!(with_string(3, 0, 3, &[0x61, 0, 0]), Err(bad), "a NUL inside");
        assert_eq!(with_string(3, 0, 3, &[0xd800, 0x62, 0]), Err(bad), "an unpaired surrogate");
        assert_eq!(with_string(4, 0, 4, &ab), Err(bad), "actual beyond the buffer");
        assert_eq!(with_string(u32::MAX, 0, u32::MAX, &ab), Err(bad), "huge counts");
        assert_eq!(with_string(0x8000_0000, 0, 0x8000_0000, &ab), Err(bad));
    }

    #[test]
    fn share_names_longer_than_the_bound_are_refused() {
        let longest: Vec<u16> = std::iter::repeat_n(0x61, MAX_SHARE_NAME_UNITS).chain([0]).collect();
        let n = longest.len() as u32;
        assert_eq!(with_string(n, 0, n, &longest), Ok(Call::IsPathSupported { share: "a".repeat(MAX_SHARE_NAME_UNITS) }));
        let over: Vec<u16> = std::iter::repeat_n(0x61, MAX_SHARE_NAME_UNITS + 1).chain([0]).collect();
        let n = over.len() as u32;
        assert_eq!(with_string(n, 0, n, &over), Err(pdu::RPC_BAD_STUB_DATA));
        assert_eq!(with_string(n, 0, 3, &[0x61, 0x62, 0]), Err(pdu::RPC_BAD_STUB_DATA), "a declared max past the bound");
    }

    #[test]
    fn unc_names_split_as_samba_splits_them() {
        assert_eq!(parse_unc("\\\\host\\share"), Ok(("host", "share")));
        assert_eq!(parse_unc("\\\\host\\share\\"), Ok(("host", "share")));
        assert_eq!(parse_unc("\\\\1.2.3.4\\Share$\\"), Ok(("1.2.3.4", "Share$")));
        assert_eq!(parse_unc("\\\\fs.example.com\\s@{x}"), Ok(("fs.example.com", "s@{x}")));
        for bad in ["share", "\\\\\\share", "\\\\host\\", "\\\\host\\share\\sub", "\\\\host", "\\\\host\\share\\\\", "\\host\\share", ""] {
            assert_eq!(parse_unc(bad), Err(()), "{bad:?}");
        }
    }

    #[test]
    fn contexts_are_the_four_with_auto_recovery_at_most() {
        for ctx in [CTX_BACKUP, CTX_FILE_SHARE_BACKUP, CTX_NAS_ROLLBACK, CTX_APP_ROLLBACK] {
            assert!(valid_context(ctx) && valid_context(ctx | ATTR_AUTO_RECOVERY), "{ctx:#x}");
            assert!(!valid_context(ctx | ATTR_NO_AUTO_RECOVERY), "Samba refuses {ctx:#x}|NO_AUTO_RECOVERY");
        }
        assert_eq!((CTX_FILE_SHARE_BACKUP, CTX_NAS_ROLLBACK, CTX_APP_ROLLBACK), (0x10, 0x19, 0x09));
        for ctx in [ATTR_PERSISTENT, ATTR_FILE_SHARE, 0x11, u32::MAX] {
            assert!(!valid_context(ctx), "{ctx:#x}");
        }
    }

    #[test]
    fn result_codes_have_their_documented_values() {
        assert_eq!((BAD_STATE, INVALID_XML_DOCUMENT, TIMEOUT, WAIT_TIMEOUT, E_INVALIDARG), (0x8004_2301, 0x8004_2311, 0x8004_2500, 0x102, 0x8007_0057));
        assert_eq!(name(OBJECT_ALREADY_EXISTS), Some("FSRVP_E_OBJECT_ALREADY_EXISTS"));
        assert_eq!(name(1), None);
    }

    fn arb_id() -> impl Strategy<Value = Uuid> {
        any::<u128>().prop_map(Uuid::from_u128)
    }

    /// Share names without NULs, astral characters (surrogate pairs on the wire) included.
    fn arb_share() -> impl Strategy<Value = String> {
        "\\PC{0,40}"
    }

    fn arb_call() -> impl Strategy<Value = Call> {
        prop_oneof![
            Just(Call::GetSupportedVersion),
            any::<u32>().prop_map(|context| Call::SetContext { context }),
            arb_id().prop_map(|client_set_id| Call::StartShadowCopySet { client_set_id }),
            (arb_id(), arb_id(), arb_share()).prop_map(|(client_copy_id, set_id, share)| Call::AddToShadowCopySet { client_copy_id, set_id, share }),
            (arb_id(), any::<u32>()).prop_map(|(set_id, timeout_ms)| Call::CommitShadowCopySet { set_id, timeout_ms }),
            (arb_id(), any::<u32>()).prop_map(|(set_id, timeout_ms)| Call::ExposeShadowCopySet { set_id, timeout_ms }),
            arb_id().prop_map(|set_id| Call::RecoveryCompleteShadowCopySet { set_id }),
            arb_id().prop_map(|set_id| Call::AbortShadowCopySet { set_id }),
            arb_share().prop_map(|share| Call::IsPathSupported { share }),
            arb_share().prop_map(|share| Call::IsPathShadowCopied { share }),
            (arb_id(), arb_id(), arb_share(), any::<u32>()).prop_map(|(copy_id, set_id, share, level)| Call::GetShareMapping { copy_id, set_id, share, level }),
            (arb_id(), arb_id(), arb_share()).prop_map(|(set_id, copy_id, share)| Call::DeleteShareMapping { set_id, copy_id, share }),
            (arb_id(), any::<u32>()).prop_map(|(set_id, timeout_ms)| Call::PrepareShadowCopySet { set_id, timeout_ms }),
        ]
    }

    fn arb_out() -> impl Strategy<Value = Out> {
        prop_oneof![
            Just(Out::Nothing),
            (any::<u32>(), any::<u32>()).prop_map(|(min, max)| Out::Versions { min, max }),
            arb_id().prop_map(Out::SetId),
            arb_id().prop_map(Out::CopyId),
            (any::<bool>(), arb_share()).prop_map(|(supported, owner_machine)| Out::PathSupported { supported, owner_machine }),
            (any::<bool>(), any::<i32>()).prop_map(|(present, compatibility)| Out::ShadowCopied { present, compatibility }),
            (arb_id(), arb_id(), arb_share(), proptest::option::of(arb_share()), any::<u64>())
                .prop_map(|(set_id, copy_id, share_unc, exposed_name, created_filetime)| Out::Mapping(ShareMapping { set_id, copy_id, share_unc, exposed_name, created_filetime })),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary bytes under any opnum: a call or a fault status, never a panic.
        #[test]
        fn arbitrary_stubs_never_panic_the_decoder(opnum in 0u16..16, stub in prop::collection::vec(any::<u8>(), 0..300)) {
            match decode(opnum, &stub) {
                Ok(call) => prop_assert_eq!(call.opnum(), opnum),
                Err(status) if opnum > 12 => prop_assert_eq!(status, pdu::NCA_OP_RNG_ERROR),
                Err(status) => prop_assert_eq!(status, pdu::RPC_BAD_STUB_DATA),
            }
        }

        /// Whatever a client marshals decodes back to the same call, trailing bytes or not.
        #[test]
        fn requests_round_trip(call in arb_call(), trailer in prop::collection::vec(any::<u8>(), 0..24)) {
            let mut stub = encode_request(&call);
            stub.extend_from_slice(&trailer);
            prop_assert_eq!(decode(call.opnum(), &stub), Ok(call));
        }

        /// Well-formed requests with bytes flipped and cut short: never a panic.
        #[test]
        fn mutated_requests_never_panic_the_decoder(call in arb_call(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
            let mut stub = encode_request(&call);
            if !stub.is_empty() {
                for (at, byte) in flips {
                    let i = at.index(stub.len());
                    stub[i] = byte;
                }
            }
            stub.truncate(cut.index(stub.len() + 1));
            if let Ok(decoded) = decode(call.opnum(), &stub) {
                prop_assert_eq!(decoded.opnum(), call.opnum());
            }
        }

        /// Every reply is whole 4-byte units ending in the result; a failure carries no values.
        #[test]
        fn replies_end_in_their_result(call in arb_call(), out in arb_out(), result in any::<u32>()) {
            let stub = encode(&call, &out, result);
            prop_assert_eq!(stub.len() % 4, 0);
            prop_assert_eq!(u32_at(&stub, stub.len() - 4), Some(result));
            if result != OK {
                prop_assert_eq!(&stub, &encode(&call, &Out::Nothing, result));
            }
        }
    }
}
