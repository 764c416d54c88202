//! srvsvc (MS-SRVS): NetShareEnumAll, so `smbclient -L` and Explorer list the shares.

use super::ndr::{Reader, Writer};
use super::pdu::{Interface, NCA_OP_RNG_ERROR, RPC_BAD_STUB_DATA};
use super::ShareEntry;

/// 4b324fc8-1670-01d3-1278-5a47bf6ee188 version 3.0, as on the wire.
pub const INTERFACE: Interface = [0xc8, 0x4f, 0x32, 0x4b, 0x70, 0x16, 0xd3, 0x01, 0x12, 0x78, 0x5a, 0x47, 0xbf, 0x6e, 0xe1, 0x88, 3, 0, 0, 0];

const NET_SHARE_ENUM_ALL: u16 = 15;
const NET_SHARE_GET_INFO: u16 = 16;
const NET_SERVER_GET_INFO: u16 = 21;
const ERROR_INVALID_LEVEL: u32 = 124;
const NERR_NET_NAME_NOT_FOUND: u32 = 2310;
/// The server name srvsvc reports (the cluster's one SMB name).
pub const SERVER_NAME: &str = "UMBRA";

/// Runs one call; `Err` is a fault status.
pub fn call(opnum: u16, stub: &[u8], shares: &[ShareEntry]) -> Result<Vec<u8>, u32> {
    match opnum {
        NET_SHARE_ENUM_ALL => share_enum_all(stub, shares),
        NET_SHARE_GET_INFO => share_get_info(stub, shares),
        NET_SERVER_GET_INFO => server_get_info(stub),
        _ => Err(NCA_OP_RNG_ERROR),
    }
}

/// Skips the optional server name every srvsvc call starts with.
fn skip_server_name(r: &mut Reader) -> Result<(), u32> {
    if r.u32().ok_or(RPC_BAD_STUB_DATA)? != 0 {
        r.skip_string().ok_or(RPC_BAD_STUB_DATA)?;
    }
    Ok(())
}

/// Levels of SHARE_INFO this server answers.
fn share_level(level: u32) -> bool {
    matches!(level, 0 | 1 | 2 | 501 | 502)
}

/// The fixed part of a SHARE_INFO_<level> (pointers as referent ids).
fn share_fixed(w: &mut Writer, s: &ShareEntry, level: u32) {
    w.pointer(); // netname
    if level != 0 {
        w.u32(s.kind);
        w.pointer(); // remark
    }
    if level == 501 {
        w.u32(0); // csc flags: manual caching
    }
    if level == 2 || level == 502 {
        w.u32(0); // permissions
        w.u32(u32::MAX); // max uses: unlimited
        w.u32(0); // current uses
        w.pointer(); // path
        w.u32(0); // password: null
    }
    if level == 502 {
        w.u32(0); // reserved (size of the security descriptor)
        w.u32(0); // security descriptor: null
    }
}

/// The deferred strings of a SHARE_INFO_<level>, in pointer order.
fn share_deferred(w: &mut Writer, s: &ShareEntry, level: u32) {
    w.string(&s.name);
    if level != 0 {
        w.string(&s.remark);
    }
    if level == 2 || level == 502 {
        w.string(&share_path(s));
    }
}

/// The share's path as Windows tools show it.
fn share_path(s: &ShareEntry) -> String {
    if s.kind == 0 { format!("C:\\{}", s.name) } else { String::new() }
}

/// NetrShareGetInfo (opnum 16): levels 0, 1, 2, 501 and 502 (502 with no security descriptor).
fn share_get_info(stub: &[u8], shares: &[ShareEntry]) -> Result<Vec<u8>, u32> {
    let mut r = Reader::new(stub);
    skip_server_name(&mut r)?;
    let name = r.string().ok_or(RPC_BAD_STUB_DATA)?;
    let level = r.u32().ok_or(RPC_BAD_STUB_DATA)?;
    let mut w = Writer::new();
    w.u32(level);
    let Some(s) = shares.iter().find(|s| s.name.eq_ignore_ascii_case(&name)) else {
        w.u32(0);
        w.u32(NERR_NET_NAME_NOT_FOUND);
        return Ok(w.buf);
    };
    if !share_level(level) {
        w.u32(0);
        w.u32(ERROR_INVALID_LEVEL);
        return Ok(w.buf);
    }
    w.pointer(); // the SHARE_INFO_<level>
    share_fixed(&mut w, s, level);
    share_deferred(&mut w, s, level);
    w.u32(0); // WERR_OK
    Ok(w.buf)
}

/// NetrServerGetInfo (opnum 21): levels 100 and 101.
fn server_get_info(stub: &[u8]) -> Result<Vec<u8>, u32> {
    let mut r = Reader::new(stub);
    skip_server_name(&mut r)?;
    let level = r.u32().ok_or(RPC_BAD_STUB_DATA)?;
    let mut w = Writer::new();
    w.u32(level);
    if level != 100 && level != 101 {
        w.u32(0);
        w.u32(ERROR_INVALID_LEVEL);
        return Ok(w.buf);
    }
    w.pointer();
    w.u32(500); // PLATFORM_ID_NT
    w.pointer(); // name
    if level == 101 {
        w.u32(6); // version 6.1
        w.u32(1);
        w.u32(0x0000_9003); // workstation | server | NT server ... SV_TYPE_*
        w.pointer(); // comment
    }
    w.string(SERVER_NAME);
    if level == 101 {
        w.string("Umbra");
    }
    w.u32(0); // WERR_OK
    Ok(w.buf)
}

/// NetrShareEnum (opnum 15): [in] server name (unique), [in,out] info struct, [in] preferred
/// max length, [in,out] resume handle (unique). Levels 0, 1, 2, 501 and 502.
fn share_enum_all(stub: &[u8], shares: &[ShareEntry]) -> Result<Vec<u8>, u32> {
    let mut r = Reader::new(stub);
    skip_server_name(&mut r)?;
    let level = r.u32().ok_or(RPC_BAD_STUB_DATA)?;
    let mut w = Writer::new();
    w.u32(level);
    w.u32(level);
    if !share_level(level) {
        w.u32(0); // null container
        w.u32(0);
        w.u32(0);
        w.u32(ERROR_INVALID_LEVEL);
        return Ok(w.buf);
    }
    w.pointer(); // the container
    w.u32(shares.len() as u32);
    w.pointer(); // the array
    w.u32(shares.len() as u32);
    for s in shares {
        share_fixed(&mut w, s, level);
    }
    for s in shares {
        share_deferred(&mut w, s, level);
    }
    w.u32(shares.len() as u32); // total entries
    w.pointer(); // resume handle
    w.u32(0);
    w.u32(0); // WERR_OK
    Ok(w.buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The level-1 reply for Samba's four shares in smbclient-list.pcap, rebuilt byte for byte.
    #[test]
    fn level_1_reply_matches_samba_byte_for_byte() {
        let request = hex("00000200 0a000000 00000000 0a000000 3100320037002e0030002e0030002e0031000000 01000000 01000000 04000200 00000000 00000000 ffffffff 08000200 00000000");
        let shares = [
            ShareEntry { name: "share".into(), kind: 0, remark: "".into() },
            ShareEntry { name: "fsrvp_share".into(), kind: 0, remark: "".into() },
            ShareEntry { name: "fsrvp_share2".into(), kind: 0, remark: "".into() },
            ShareEntry { name: "IPC$".into(), kind: 0x8000_0003, remark: "IPC Service (Samba 4.17.12-Debian)".into() },
        ];
        let got = call(15, &request, &shares).unwrap();
        let samba = hex("01000000010000000c0002000400000010000200040000001400020000000000180002001c00020000000000200002002400020000000000280002002c0002000300008030000200060000000000000006000000730068006100720065000000010000000000000001000000000000000c000000000000000c000000660073007200760070005f00730068006100720065000000010000000000000001000000000000000d000000000000000d000000660073007200760070005f0073006800610072006500320000000000010000000000000001000000000000000500000000000000050000004900500043002400000000002300000000000000230000004900500043002000530065007200760069006300650020002800530061006d0062006100200034002e00310037002e00310032002d00440065006200690061006e0029000000000004000000340002000000000000000000");
        assert_eq!(hex_of(&got), hex_of(&samba));
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
