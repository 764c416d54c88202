//! Golden vectors: real client traffic captured against Samba (testdata/, copied from
//! ../shared/captures). Every SMB2 message must parse and its header re-encode byte for byte;
//! the NTLMv2 exchanges must verify with the capture's credentials (user fsuser, password
//! Passw0rd!) and fail with any other password; mutated messages must never panic a parser.

use proptest::prelude::*;
use umbra_raft::command::NtHash;

use crate::ntlm::messages::{Authenticate, Challenge, SIGNATURE};
use crate::ntlm::verify::{verify_ntlmv2, NtlmError};
use crate::smb2::header::{Command, Header, HEADER_BYTES};
use crate::smb2::{compound, frame};

const CAPTURES: &[&str] = &[
    "smbclient-3.1.1-basic.pcap",
    "smbclient-2.1-basic.pcap",
    "smbclient-badpass.pcap",
    "smbclient-list.pcap",
    "rpcclient-fss-create-expose.pcap",
];

/// The TCP payload of each direction of the capture's SMB connection, in order:
/// (client to server, server to client).
pub(crate) fn streams(name: &str) -> (Vec<u8>, Vec<u8>) {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    let d = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(&d[..4], &0xa1b2c3d4u32.to_le_bytes(), "a little-endian pcap");
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let mut off = 24;
    while off + 16 <= d.len() {
        let incl = u32::from_le_bytes(d[off + 8..off + 12].try_into().unwrap()) as usize;
        let pkt = &d[off + 16..off + 16 + incl];
        off += 16 + incl;
        if pkt.len() < 14 + 20 || pkt[12..14] != [0x08, 0x00] {
            continue; // not IPv4
        }
        let ip = &pkt[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ip[9] != 6 {
            continue; // not TCP
        }
        let tcp = &ip[ihl..total];
        let (src, dst) = (u16::from_be_bytes([tcp[0], tcp[1]]), u16::from_be_bytes([tcp[2], tcp[3]]));
        let payload = &tcp[usize::from(tcp[12] >> 4) * 4..];
        if dst == 4450 || dst == 445 {
            to_server.extend_from_slice(payload);
        } else if src == 4450 || src == 445 {
            to_client.extend_from_slice(payload);
        }
    }
    (to_server, to_client)
}

/// Every frame of one direction.
fn frames(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((used, range)) = frame::next_frame(&stream[at..], frame::MAX_TRANSPORT_FRAME_BYTES).expect("a direct TCP stream") {
        out.push(stream[at..][range].to_vec());
        at += used;
    }
    assert_eq!(at, stream.len(), "the stream ends on a frame boundary");
    out
}

/// Every SMB2 message (with its header) in a capture, both directions.
fn messages(name: &str) -> Vec<Vec<u8>> {
    let (a, b) = streams(name);
    let mut out = Vec::new();
    for f in frames(&a).into_iter().chain(frames(&b)) {
        if f.starts_with(&crate::smb2::header::TRANSFORM_PROTOCOL_ID) {
            continue;
        }
        for (_, m) in compound::split(&f).unwrap_or_else(|e| panic!("{name}: {e}")) {
            out.push(m.to_vec());
        }
    }
    out
}

#[test]
fn every_captured_message_parses_and_its_header_reencodes_byte_for_byte() {
    let mut commands = std::collections::BTreeSet::new();
    for name in CAPTURES {
        let msgs = messages(name);
        assert!(msgs.len() > 5, "{name}: {} messages", msgs.len());
        for m in msgs {
            let h = Header::parse(&m).unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut again = Vec::new();
            h.encode(&mut again);
            assert_eq!(again, m[..HEADER_BYTES], "{name}: {:?} header round trip", h.command);
            commands.insert(format!("{:?}", h.command));
        }
    }
    for c in ["Negotiate", "SessionSetup", "TreeConnect", "Create", "Close", "Read", "Write", "Ioctl", "QueryInfo", "QueryDirectory", "SetInfo", "TreeDisconnect"] {
        assert!(commands.contains(c), "the captures exercise {c}: {commands:?}");
    }
}

/// The NTLMSSP messages carried by SESSION_SETUP, in capture order.
fn ntlmssp(name: &str) -> (Vec<Challenge>, Vec<Authenticate>) {
    let (mut challenges, mut auths) = (Vec::new(), Vec::new());
    for m in messages(name) {
        let h = Header::parse(&m).unwrap();
        if h.command != Command::SessionSetup {
            continue;
        }
        let Some(at) = m.windows(8).position(|w| w == SIGNATURE) else { continue };
        let token = &m[at..];
        match token.get(8) {
            Some(2) => challenges.push(Challenge::parse(token).unwrap()),
            Some(3) => auths.push(Authenticate::parse(token).unwrap()),
            _ => {}
        }
    }
    (challenges, auths)
}

#[test]
fn smbclients_ntlmv2_verifies_with_the_right_password_only() {
    for name in ["smbclient-3.1.1-basic.pcap", "smbclient-2.1-basic.pcap", "smbclient-list.pcap"] {
        let (challenges, auths) = ntlmssp(name);
        let (c, a) = (&challenges[0], &auths[0]);
        assert_eq!(a.user, "fsuser");
        let right = NtHash::from_password("Passw0rd!");
        let key = verify_ntlmv2(&right, &a.user, &a.domain, &c.server_challenge, &a.nt_response);
        assert!(key.is_ok(), "{name}: {key:?} (domain {:?})", a.domain);
        let wrong = NtHash::from_password("Passw0rd?");
        assert_eq!(verify_ntlmv2(&wrong, &a.user, &a.domain, &c.server_challenge, &a.nt_response), Err(NtlmError::WrongPassword));
        assert_eq!(verify_ntlmv2(&right, "root", &a.domain, &c.server_challenge, &a.nt_response), Err(NtlmError::WrongPassword), "another user");
    }
}

#[test]
fn the_bad_password_capture_fails_verification() {
    let (challenges, auths) = ntlmssp("smbclient-badpass.pcap");
    let (c, a) = (&challenges[0], &auths[0]);
    let right = NtHash::from_password("Passw0rd!");
    assert_eq!(verify_ntlmv2(&right, &a.user, &a.domain, &c.server_challenge, &a.nt_response), Err(NtlmError::WrongPassword));
}

fn all_messages() -> Vec<Vec<u8>> {
    CAPTURES.iter().flat_map(|n| messages(n)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Mutated real messages (bytes flipped, cut short): the parsers return errors, never panic.
    #[test]
    fn mutated_messages_never_panic_a_parser(pick in any::<prop::sample::Index>(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8), cut in any::<prop::sample::Index>()) {
        thread_local!(static MSGS: Vec<Vec<u8>> = all_messages());
        let mut m = MSGS.with(|all| all[pick.index(all.len())].clone());
        for (at, byte) in flips {
            let i = at.index(m.len());
            m[i] = byte;
        }
        let keep = cut.index(m.len() + 1);
        m.truncate(keep.max(m.len() / 2));
        let _ = Header::parse(&m);
        let _ = compound::split(&m);
        let mut framed = Vec::new();
        frame::encode_frame(&m, &mut framed).unwrap();
        let _ = frame::next_frame(&framed, 1 << 20);
        if m.len() > HEADER_BYTES {
            // SPNEGO from every offset a security buffer could start at.
            for at in (HEADER_BYTES..m.len()).step_by(7) {
                let _ = crate::spnego::parse_init(&m[at..]);
                let _ = crate::spnego::parse_resp(&m[at..]);
            }
            let _ = crate::smb2::negotiate::Request::parse(&m);
            let _ = crate::smb2::negotiate::Response::parse(&m);
        }
        if let Some(at) = m.windows(8).position(|w| w == SIGNATURE) {
            let _ = Challenge::parse(&m[at..]);
            if let Ok(a) = Authenticate::parse(&m[at..]) {
                let _ = verify_ntlmv2(&NtHash::from_password("x"), &a.user, &a.domain, &[0; 8], &a.nt_response);
            }
        }
    }
}

/// One direction's messages in order.
pub(crate) fn direction(stream: &[u8]) -> Vec<Vec<u8>> {
    frames(stream).iter().flat_map(|f| compound::split(f).unwrap().into_iter().map(|(_, m)| m.to_vec()).collect::<Vec<_>>()).collect()
}

fn first_of(msgs: &[Vec<u8>], command: Command) -> Vec<&Vec<u8>> {
    msgs.iter().filter(|m| Header::parse(m).unwrap().command == command).collect()
}

/// Derives the session's signing key from the capture (NTLMv2 with the capture's password,
/// KEY_EXCH, the dialect's KDF and, for 3.1.1, the preauth hash), then checks the signature of
/// every signed message in both directions.
fn check_signatures(name: &str, expect: Algorithm) {
    use crate::ntlm::verify::exported_session_key;
    use crate::smb2::negotiate;
    use crate::smb2::signing::{self, Preauth};

    let (up, down) = streams(name);
    let (requests, responses) = (direction(&up), direction(&down));
    let (neg_req, neg_resp) = (first_of(&requests, Command::Negotiate)[0], first_of(&responses, Command::Negotiate)[0]);
    let resp = negotiate::Response::parse(neg_resp).unwrap();
    let req = negotiate::Request::parse(neg_req).unwrap();
    assert!(req.dialects.contains(&resp.dialect));
    let setups = first_of(&requests, Command::SessionSetup);
    let setup_replies = first_of(&responses, Command::SessionSetup);
    let mut preauth = Preauth::default();
    preauth.update(neg_req);
    preauth.update(neg_resp);
    // Session preauth: every SESSION_SETUP request and every reply but the final one.
    for (i, r) in setups.iter().enumerate() {
        preauth.update(r);
        if i + 1 < setups.len() {
            preauth.update(setup_replies[i]);
        }
    }
    let (challenges, auths) = ntlmssp(name);
    let (c, a) = (&challenges[0], &auths[0]);
    let base = verify_ntlmv2(&NtHash::from_password("Passw0rd!"), &a.user, &a.domain, &c.server_challenge, &a.nt_response).unwrap();
    let session_key = exported_session_key(&base, a.flags, &a.encrypted_session_key).expect("a 16-byte key with KEY_EXCH");
    let algorithm = Algorithm::for_dialect(resp.dialect, resp.signing_algorithm());
    assert_eq!(algorithm, expect, "{name}: dialect {:#06x}", resp.dialect);
    let key = signing::signing_key(resp.dialect, &session_key, &preauth.0);
    let mut checked = 0;
    for m in requests.iter().chain(&responses) {
        let h = Header::parse(m).unwrap();
        if h.flags & crate::smb2::header::FLAG_SIGNED == 0 || h.session_id == 0 {
            continue;
        }
        assert!(signing::verify(algorithm, &key, m), "{name}: bad signature on {:?} message {}", h.command, h.message_id);
        let mut tampered = m.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(!signing::verify(algorithm, &key, &tampered), "{name}: a changed byte must break the signature");
        checked += 1;
    }
    assert!(checked >= 5, "{name}: only {checked} signed messages checked");
}

use crate::smb2::signing::Algorithm;

#[test]
fn smb_2_1_signatures_verify_with_hmac_sha256() {
    check_signatures("smbclient-2.1-basic.pcap", Algorithm::HmacSha256);
}

#[test]
fn smb_3_0_2_signatures_verify_with_aes_cmac() {
    check_signatures("smbclient-3.0.2-basic.pcap", Algorithm::AesCmac);
}

#[test]
fn smb_3_1_1_signatures_verify_with_aes_gmac_and_the_preauth_hash() {
    check_signatures("smbclient-3.1.1-basic.pcap", Algorithm::AesGmac);
}

/// The security buffer of a SESSION_SETUP request or response (offset from the header start).
fn security_buffer(m: &[u8]) -> &[u8] {
    let h = Header::parse(m).unwrap();
    let (off_at, len_at) = if h.is_response() { (HEADER_BYTES + 4, HEADER_BYTES + 6) } else { (HEADER_BYTES + 12, HEADER_BYTES + 14) };
    let off = usize::from(u16::from_le_bytes([m[off_at], m[off_at + 1]]));
    let len = usize::from(u16::from_le_bytes([m[len_at], m[len_at + 1]]));
    &m[off..off + len]
}

#[test]
fn captured_spnego_tokens_parse_and_server_tokens_reencode_byte_for_byte() {
    use crate::spnego::{self, OID_NTLMSSP};
    for name in ["smbclient-3.1.1-basic.pcap", "smbclient-2.1-basic.pcap", "smbclient-list.pcap"] {
        let (up, down) = streams(name);
        let (requests, responses) = (direction(&up), direction(&down));
        let setups = first_of(&requests, Command::SessionSetup);
        let init = spnego::parse_init(security_buffer(setups[0])).unwrap();
        assert!(init.mech_types.contains(&OID_NTLMSSP.to_vec()), "{name}");
        assert!(init.mech_token.as_ref().unwrap().starts_with(SIGNATURE), "{name}: NTLMSSP NEGOTIATE inside");
        let auth = spnego::parse_resp(security_buffer(setups[1])).unwrap();
        assert!(Authenticate::parse(auth.response_token.as_ref().unwrap()).is_ok(), "{name}");
        for reply in first_of(&responses, Command::SessionSetup) {
            let token = security_buffer(reply);
            if token.is_empty() {
                continue;
            }
            let parsed = spnego::parse_resp(token).unwrap();
            assert_eq!(spnego::encode_resp(&parsed), token, "{name}: server token re-encodes identically");
        }
    }
}

#[test]
fn spnego_mech_list_mics_verify_both_ways_with_ntlm_session_security() {
    use crate::ntlm::session::directions;
    use crate::ntlm::verify::exported_session_key;
    for name in ["smbclient-3.1.1-basic.pcap", "smbclient-2.1-basic.pcap", "smbclient-list.pcap"] {
        let (up, down) = streams(name);
        let (requests, responses) = (direction(&up), direction(&down));
        let setups = first_of(&requests, Command::SessionSetup);
        let replies = first_of(&responses, Command::SessionSetup);
        let init = crate::spnego::parse_init(security_buffer(setups[0])).unwrap();
        let client = crate::spnego::parse_resp(security_buffer(setups[1])).unwrap();
        let server = crate::spnego::parse_resp(security_buffer(replies[1])).unwrap();
        let (challenges, auths) = ntlmssp(name);
        let (c, a) = (&challenges[0], &auths[0]);
        let base = verify_ntlmv2(&NtHash::from_password("Passw0rd!"), &a.user, &a.domain, &c.server_challenge, &a.nt_response).unwrap();
        let exported = exported_session_key(&base, a.flags, &a.encrypted_session_key).expect("a 16-byte key with KEY_EXCH");
        let (mut to_server, mut to_client) = directions(&exported, a.flags);
        assert_eq!(to_server.mac(&init.mech_list_der).to_vec(), client.mech_list_mic.unwrap(), "{name}: the client's mechListMIC");
        assert_eq!(to_client.mac(&init.mech_list_der).to_vec(), server.mech_list_mic.unwrap(), "{name}: the server's mechListMIC");
    }
}

/// smbclient sends a MIC in its AUTHENTICATE (MsvAvFlags 0x2): it verifies under the session
/// key over the three messages as captured, and fails if any byte of them changed.
#[test]
fn smbclients_authenticate_mic_verifies_over_the_messages_as_sent() {
    use crate::ntlm::verify::{exported_session_key, mic_present, mic_verifies};
    for name in ["smbclient-3.1.1-basic.pcap", "smbclient-2.1-basic.pcap", "smbclient-3.0.2-basic.pcap", "smbclient-list.pcap"] {
        let (up, down) = streams(name);
        let (requests, responses) = (direction(&up), direction(&down));
        let setups = first_of(&requests, Command::SessionSetup);
        let replies = first_of(&responses, Command::SessionSetup);
        let negotiate = crate::spnego::parse_init(security_buffer(setups[0])).unwrap().mech_token.unwrap();
        let challenge = crate::spnego::parse_resp(security_buffer(replies[0])).unwrap().response_token.unwrap();
        let authenticate = crate::spnego::parse_resp(security_buffer(setups[1])).unwrap().response_token.unwrap();
        let (c, a) = (Challenge::parse(&challenge).unwrap(), Authenticate::parse(&authenticate).unwrap());
        assert!(mic_present(&a.nt_response), "{name}: smbclient says it sent a MIC");
        let base = verify_ntlmv2(&NtHash::from_password("Passw0rd!"), &a.user, &a.domain, &c.server_challenge, &a.nt_response).unwrap();
        let exported = exported_session_key(&base, a.flags, &a.encrypted_session_key).unwrap();
        assert!(mic_verifies(&exported, &negotiate, &challenge, &authenticate), "{name}");
        for (which, at) in [(0, 12), (1, 20), (2, 80), (2, authenticate.len() - 1)] {
            let mut msgs = [negotiate.clone(), challenge.clone(), authenticate.clone()];
            msgs[which][at] ^= 1;
            assert!(!mic_verifies(&exported, &msgs[0], &msgs[1], &msgs[2]), "{name}: message {which} byte {at} changed");
        }
        assert!(!mic_verifies(&[0; 16], &negotiate, &challenge, &authenticate), "{name}: another key");
    }
}

/// A live logon whose AUTHENTICATE says it carries a MIC: refused when the MIC is wrong (and
/// counted against the user), accepted when it is right. The client side is built here from
/// MS-NLMP: an NTLMv2 response with MsvAvFlags 0x2, no key exchange.
#[test]
fn a_logon_whose_authenticate_mic_fails_is_refused_and_counted() {
    use crate::ntlm::verify::ntowf_v2;
    use crate::server::connection::{Connection, Outcome};
    use crate::smb2::header::Target;
    use hmac::{Hmac, Mac};
    let hmac = |key: &[u8], parts: &[&[u8]]| -> Vec<u8> {
        let mut m = Hmac::<md5::Md5>::new_from_slice(key).unwrap();
        parts.iter().for_each(|p| m.update(p));
        m.finalize().into_bytes().to_vec()
    };
    let setup = |session_id: u64, message_id: u64, token: &[u8]| {
        let h = Header { credit_charge: 1, status: 0, command: Command::SessionSetup, credits: 8, flags: 0, next_command: 0, message_id, target: Target::Sync { process_id: 0, tree_id: 0 }, session_id, signature: [0; 16] };
        let mut out = Vec::new();
        h.encode(&mut out);
        out.extend_from_slice(&[25, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&88u16.to_le_bytes());
        out.extend_from_slice(&(token.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(token);
        out
    };
    let (up, down) = streams("smbclient-2.1-basic.pcap");
    let negotiate_frame = frames(&up)[0].clone();
    let init_token = security_buffer(first_of(&direction(&up), Command::SessionSetup)[0]).to_vec();
    let negotiate_msg = crate::spnego::parse_init(&init_token).unwrap().mech_token.unwrap();
    let _ = down;
    let logon = |e: &mut TestEnv, mic_flip: Option<usize>| -> u32 {
        let mut conn = Connection::new(test_config());
        let reply = |conn: &mut Connection, frame: &[u8], e: &mut TestEnv| match conn.on_frame(frame, &TestDir, &NoFiles, e) {
            Outcome::Reply(r) => r,
            _ => panic!("a reply"),
        };
        reply(&mut conn, &negotiate_frame, e);
        let r = reply(&mut conn, &setup(0, 1, &init_token), e);
        let h = Header::parse(&r).unwrap();
        let challenge_msg = crate::spnego::parse_resp(security_buffer(&r)).unwrap().response_token.unwrap();
        let c = Challenge::parse(&challenge_msg).unwrap();
        // NTLMv2 response: the blob's fixed part, MsvAvFlags = MIC present, MsvAvEOL.
        let mut blob = vec![1, 1, 0, 0, 0, 0, 0, 0];
        blob.extend_from_slice(&[0x11; 8]); // time stamp
        blob.extend_from_slice(&[0x22; 8]); // client challenge
        blob.extend_from_slice(&[0; 4]);
        blob.extend_from_slice(&[6, 0, 4, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        blob.extend_from_slice(&[0; 4]);
        let key = ntowf_v2(&NtHash::from_password("Passw0rd!"), "fsuser", "");
        let proof = hmac(&key, &[&c.server_challenge, &blob]);
        let exported = hmac(&key, &[&proof]);
        let nt_response = [proof, blob].concat();
        let user: Vec<u8> = "fsuser".encode_utf16().flat_map(u16::to_le_bytes).collect();
        let flags = c.flags & !crate::ntlm::verify::NEGOTIATE_KEY_EXCH;
        let mut auth = SIGNATURE.to_vec();
        auth.extend_from_slice(&3u32.to_le_bytes());
        let field = |auth: &mut Vec<u8>, len: usize, at: usize| {
            auth.extend_from_slice(&(len as u16).to_le_bytes());
            auth.extend_from_slice(&(len as u16).to_le_bytes());
            auth.extend_from_slice(&(at as u32).to_le_bytes());
        };
        field(&mut auth, 0, 88); // LM
        field(&mut auth, nt_response.len(), 88);
        field(&mut auth, 0, 88 + nt_response.len()); // domain
        field(&mut auth, user.len(), 88 + nt_response.len());
        field(&mut auth, 0, 88 + nt_response.len() + user.len()); // workstation
        field(&mut auth, 0, 88 + nt_response.len() + user.len()); // session key
        auth.extend_from_slice(&flags.to_le_bytes());
        auth.extend_from_slice(&[6, 1, 0, 0, 0, 0, 0, 15]); // version
        auth.extend_from_slice(&[0; 16]); // MIC, filled below
        auth.extend_from_slice(&nt_response);
        auth.extend_from_slice(&user);
        let mut mic = hmac(&exported, &[&negotiate_msg, &challenge_msg, &auth]);
        if let Some(at) = mic_flip {
            mic[at] ^= 1;
        }
        auth[72..88].copy_from_slice(&mic);
        let token = crate::spnego::encode_resp(&crate::spnego::NegTokenResp { response_token: Some(auth), ..Default::default() });
        let r = reply(&mut conn, &setup(h.session_id, 2, &token), e);
        Header::parse(&r).unwrap().status
    };
    let mut fresh = TestEnv(1, Default::default());
    assert_eq!(logon(&mut fresh, None), crate::smb2::status::SUCCESS, "the right MIC");
    let mut e = TestEnv(1, Default::default());
    for i in 0..crate::server::throttle::MAX_FAILURES as usize {
        assert_eq!(logon(&mut e, Some(i % 16)), crate::smb2::status::LOGON_FAILURE, "a MIC one bit off");
    }
    assert_eq!(logon(&mut e, None), crate::smb2::status::LOGON_FAILURE, "each failure counted: the user is locked out");
}

/// An authenticated DCE/RPC bind whose AUTHENTICATE fails counts against its user in the
/// same throttle as SESSION_SETUP, and a user locked out there cannot bind either (else binds
/// would be a way to guess passwords without a lockout).
#[test]
fn failed_authenticated_binds_count_in_the_logon_throttle() {
    use crate::rpc::auth::{Auth, AuthContext, Trailer, AUTH_TYPE_NTLMSSP};
    use crate::server::Directory;
    let (up, _) = streams("smbclient-2.1-basic.pcap");
    let requests = direction(&up);
    let setups = first_of(&requests, Command::SessionSetup);
    let negotiate = crate::spnego::parse_init(security_buffer(setups[0])).unwrap().mech_token.unwrap();
    // smbclient's AUTHENTICATE answers another challenge than the bind's: it fails.
    let authenticate = crate::spnego::parse_resp(security_buffer(setups[1])).unwrap().response_token.unwrap();
    let throttle = std::sync::Mutex::new(crate::server::throttle::Throttle::default());
    let lock = |f: &mut dyn FnMut(&mut crate::server::throttle::Throttle)| f(&mut throttle.lock().unwrap());
    let user = |name: &str| TestDir.user(name).map(|(hash, _)| hash);
    let ctx = AuthContext { user: &user, server_challenge: [9; 8], now: 1, netbios_name: "UMBRA", throttle: &lock };
    let trailer = Trailer { auth_type: AUTH_TYPE_NTLMSSP, level: 6, pad: 0, context_id: 0 };
    for _ in 0..crate::server::throttle::MAX_FAILURES {
        assert!(throttle.lock().unwrap().allowed("fsuser", 1));
        let (mut auth, _) = Auth::start(trailer, &negotiate, &ctx).unwrap();
        assert!(!auth.finish(&authenticate, &ctx), "a response to another challenge fails");
    }
    assert!(!throttle.lock().unwrap().allowed("fsuser", 1), "each failed bind was counted: the user is locked out");
    assert!(!throttle.lock().unwrap().allowed("FSUSER", 1), "under any spelling");
}

struct TestDir;

impl crate::server::Directory for TestDir {
    fn user(&self, name: &str) -> Option<(NtHash, umbra_raft::command::Role)> {
        name.eq_ignore_ascii_case("fsuser").then(|| (NtHash::from_password("Passw0rd!"), umbra_raft::command::Role::Backup))
    }
    fn share(&self, name: &str) -> Option<(String, bool)> {
        name.eq_ignore_ascii_case("share").then(|| ("share".into(), false))
    }
    fn shares(&self) -> Vec<String> {
        vec!["share".into()]
    }
}

/// Storage that has nothing: the protocol tests here never reach a file.
struct NoFiles;

impl crate::server::files::Files for NoFiles {
    fn lookup(&self, _: &str, _: &str) -> Result<crate::server::files::FileInfo, crate::server::files::FsError> {
        Err(crate::server::files::FsError::NotFound)
    }
    fn stat(&self, _: &str, _: u64) -> Result<crate::server::files::FileInfo, crate::server::files::FsError> {
        Err(crate::server::files::FsError::NotFound)
    }
    fn create(&self, _: &str, _: u64, _: &str, _: bool, _: u64) -> Result<crate::server::files::FileInfo, crate::server::files::FsError> {
        Err(crate::server::files::FsError::ReadOnly)
    }
    fn list(&self, _: &str, _: u64, _: &str, _: u32) -> Result<Vec<crate::server::files::FileInfo>, crate::server::files::FsError> {
        Ok(Vec::new())
    }
    fn read(&self, _: &str, _: u64, _: u64, _: u32, _: usize, _: Option<u64>) -> Result<Vec<u8>, crate::server::files::FsError> {
        Err(crate::server::files::FsError::NotFound)
    }
    fn write(&self, _: &str, _: u64, _: u64, _: &[u8], _: crate::server::files::Stamp, _: Option<u64>) -> Result<(), crate::server::files::FsError> {
        Err(crate::server::files::FsError::ReadOnly)
    }
    fn set_basic(&self, _: &str, _: u64, _: crate::server::files::Basic) -> Result<(), crate::server::files::FsError> {
        Err(crate::server::files::FsError::ReadOnly)
    }
    fn set_size(&self, _: &str, _: u64, _: u64, _: crate::server::files::Stamp) -> Result<(), crate::server::files::FsError> {
        Err(crate::server::files::FsError::ReadOnly)
    }
    fn unlink(&self, _: &str, _: u64, _: &str, _: u64) -> Result<(), crate::server::files::FsError> {
        Err(crate::server::files::FsError::NotFound)
    }
    fn rename(&self, _: &str, _: u64, _: &str, _: u64, _: &str, _: bool, _: u64) -> Result<(), crate::server::files::FsError> {
        Err(crate::server::files::FsError::NotFound)
    }
    fn flush(&self, _: &str) -> Result<(), crate::server::files::FsError> {
        Ok(())
    }
}

struct TestEnv(u8, std::sync::Mutex<crate::server::throttle::Throttle>);

impl crate::server::Environment for TestEnv {
    fn throttle(&self) -> std::sync::MutexGuard<'_, crate::server::throttle::Throttle> {
        self.1.lock().unwrap()
    }

    fn random(&mut self, out: &mut [u8]) {
        for b in out {
            self.0 = self.0.wrapping_mul(31).wrapping_add(7);
            *b = self.0;
        }
    }
    fn now(&self) -> u64 {
        133_000_000_000_000_000
    }
}

fn test_config() -> crate::server::Config {
    crate::server::Config { server_guid: [7; 16], netbios_name: "UMBRA".into(), dns_name: "umbra".into(), signing_required: true, max_io_bytes: 8 << 20, lock_retry: crate::server::LOCK_RETRY_INTERVAL }
}

#[test]
fn the_server_answers_smbclients_captured_negotiate_with_3_1_1_and_its_contexts() {
    use crate::server::connection::{Connection, Outcome};
    let (up, _) = streams("smbclient-3.1.1-basic.pcap");
    let first = &frames(&up)[0];
    let mut conn = Connection::new(test_config());
    let Outcome::Reply(reply) = conn.on_frame(first, &TestDir, &NoFiles, &mut TestEnv(1, Default::default())) else { panic!("a reply") };
    let resp = crate::smb2::negotiate::Response::parse(&reply).unwrap();
    assert_eq!(resp.dialect, crate::smb2::negotiate::DIALECT_311);
    assert_eq!(resp.signing_algorithm(), Some(2), "AES-GMAC, as smbclient offers it");
    assert!(resp.contexts.iter().any(|c| c.kind == crate::smb2::negotiate::CONTEXT_PREAUTH_INTEGRITY));
    let h = Header::parse(&reply).unwrap();
    assert!(h.is_response() && h.status == 0);
    // A second NEGOTIATE on the same connection ends it.
    assert!(matches!(conn.on_frame(first, &TestDir, &NoFiles, &mut TestEnv(1, Default::default())), Outcome::Close(_)));
}

/// MS-SMB2 3.3.5.4: a 3.1.1 NEGOTIATE whose preauth integrity context offers no SHA-512 is
/// refused (the same captured request, its one hash algorithm changed from 1).
#[test]
fn a_3_1_1_negotiate_without_sha512_preauth_is_refused() {
    use crate::server::connection::{Connection, Outcome};
    let (up, _) = streams("smbclient-3.1.1-basic.pcap");
    let mut first = frames(&up)[0].clone();
    // ContextType 1, DataLength 38, Reserved, HashAlgorithmCount 1, SaltLength 32, SHA-512.
    let pattern = [1u8, 0, 38, 0, 0, 0, 0, 0, 1, 0, 32, 0, 1, 0];
    let at = first.windows(pattern.len()).position(|w| w == pattern).expect("smbclient's preauth context") + 12;
    first[at] = 2;
    let mut conn = Connection::new(test_config());
    let Outcome::Reply(reply) = conn.on_frame(&first, &TestDir, &NoFiles, &mut TestEnv(1, Default::default())) else { panic!("a reply") };
    assert_eq!(Header::parse(&reply).unwrap().status, crate::smb2::status::INVALID_PARAMETER);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Mutated client frames, on a fresh connection and after a real NEGOTIATE: the server
    /// replies or closes the connection, and never panics.
    #[test]
    fn mutated_client_frames_never_panic_the_server(pick in any::<prop::sample::Index>(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8), negotiated in any::<bool>()) {
        use crate::server::connection::Connection;
        thread_local!(static CLIENT: Vec<Vec<u8>> = CAPTURES.iter().flat_map(|n| frames(&streams(n).0)).collect());
        let (first, mut f) = CLIENT.with(|all| (all[0].clone(), all[pick.index(all.len())].clone()));
        for (at, byte) in flips {
            let i = at.index(f.len());
            f[i] = byte;
        }
        let mut conn = Connection::new(test_config());
        if negotiated {
            let _ = conn.on_frame(&first, &TestDir, &NoFiles, &mut TestEnv(3, Default::default()));
        }
        let _ = conn.on_frame(&f, &TestDir, &NoFiles, &mut TestEnv(5, Default::default()));
    }
}
