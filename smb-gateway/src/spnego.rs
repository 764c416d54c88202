//! SPNEGO (RFC 4178) as SMB2 SESSION_SETUP carries it: the client's first token (GSS-API
//! InitialContextToken around a NegTokenInit), later NegTokenResp tokens both ways, and the
//! server's NegTokenInit in the NEGOTIATE response. Only NTLMSSP is offered.

use crate::der::{self, DerError, Reader};

/// OID 1.3.6.1.5.5.2 (SPNEGO), DER content bytes.
pub const OID_SPNEGO: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
/// OID 1.3.6.1.4.1.311.2.2.10 (NTLMSSP), DER content bytes.
pub const OID_NTLMSSP: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];

const TAG_APPLICATION_0: u8 = 0x60;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_OID: u8 = 0x06;
const TAG_OCTETS: u8 = 0x04;
const TAG_ENUM: u8 = 0x0a;
const fn ctx(n: u8) -> u8 {
    0xa0 | n
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpnegoError {
    #[error(transparent)]
    Der(#[from] DerError),
    #[error("not an SPNEGO token")]
    NotSpnego,
}

/// The client's first token.
#[derive(Debug, PartialEq, Eq)]
pub struct NegTokenInit {
    /// OIDs (DER content bytes), the client's preference first.
    pub mech_types: Vec<Vec<u8>>,
    /// The MechTypeList exactly as sent (its DER), which mechListMIC signs.
    pub mech_list_der: Vec<u8>,
    pub mech_token: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegState {
    AcceptCompleted = 0,
    AcceptIncomplete = 1,
    Reject = 2,
    RequestMic = 3,
}

/// A later token, either way.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NegTokenResp {
    pub state: Option<u8>,
    pub supported_mech: Option<Vec<u8>>,
    pub response_token: Option<Vec<u8>>,
    pub mech_list_mic: Option<Vec<u8>>,
}

/// Parses the client's first token: `60 { OID spnego, a0 { 30 { a0 mechTypes, a2 mechToken } } }`.
pub fn parse_init(token: &[u8]) -> Result<NegTokenInit, SpnegoError> {
    let mut outer = Reader::new(token);
    let app = outer.expect(TAG_APPLICATION_0).map_err(|_| SpnegoError::NotSpnego)?;
    let mut app = Reader::new(app);
    if app.expect(TAG_OID)? != OID_SPNEGO {
        return Err(SpnegoError::NotSpnego);
    }
    let init = Reader::new(app.expect(ctx(0))?).expect(TAG_SEQUENCE)?;
    let mut fields = Reader::new(init);
    let mut out = NegTokenInit { mech_types: Vec::new(), mech_list_der: Vec::new(), mech_token: None };
    while !fields.is_empty() {
        let (tag, value) = fields.next()?;
        match tag {
            t if t == ctx(0) => {
                out.mech_list_der = value.to_vec();
                let mut list = Reader::new(Reader::new(value).expect(TAG_SEQUENCE)?);
                while !list.is_empty() {
                    out.mech_types.push(list.expect(TAG_OID)?.to_vec());
                }
            }
            t if t == ctx(2) => out.mech_token = Some(Reader::new(value).expect(TAG_OCTETS)?.to_vec()),
            _ => {} // reqFlags, mechListMIC: not used
        }
    }
    Ok(out)
}

/// Parses `a1 { 30 { a0 negState, a1 supportedMech, a2 responseToken, a3 mechListMIC } }`.
pub fn parse_resp(token: &[u8]) -> Result<NegTokenResp, SpnegoError> {
    let seq = Reader::new(Reader::new(token).expect(ctx(1)).map_err(|_| SpnegoError::NotSpnego)?).expect(TAG_SEQUENCE)?;
    let mut fields = Reader::new(seq);
    let mut out = NegTokenResp::default();
    while !fields.is_empty() {
        let (tag, value) = fields.next()?;
        let mut inner = Reader::new(value);
        match tag {
            t if t == ctx(0) => out.state = inner.expect(TAG_ENUM)?.first().copied(),
            t if t == ctx(1) => out.supported_mech = Some(inner.expect(TAG_OID)?.to_vec()),
            t if t == ctx(2) => out.response_token = Some(inner.expect(TAG_OCTETS)?.to_vec()),
            t if t == ctx(3) => out.mech_list_mic = Some(inner.expect(TAG_OCTETS)?.to_vec()),
            _ => {}
        }
    }
    Ok(out)
}

/// Encodes a NegTokenResp (fields in order, absent ones left out).
pub fn encode_resp(resp: &NegTokenResp) -> Vec<u8> {
    let mut seq = Vec::new();
    if let Some(s) = resp.state {
        der::write(&mut seq, ctx(0), &der::wrap(TAG_ENUM, &[s]));
    }
    if let Some(m) = &resp.supported_mech {
        der::write(&mut seq, ctx(1), &der::wrap(TAG_OID, m));
    }
    if let Some(t) = &resp.response_token {
        der::write(&mut seq, ctx(2), &der::wrap(TAG_OCTETS, t));
    }
    if let Some(m) = &resp.mech_list_mic {
        der::write(&mut seq, ctx(3), &der::wrap(TAG_OCTETS, m));
    }
    der::wrap(ctx(1), &der::wrap(TAG_SEQUENCE, &seq))
}

/// The server's token in the NEGOTIATE response: SPNEGO offering NTLMSSP only.
pub fn encode_server_init() -> Vec<u8> {
    let mechs = der::wrap(TAG_SEQUENCE, &der::wrap(TAG_OID, OID_NTLMSSP));
    let init = der::wrap(TAG_SEQUENCE, &der::wrap(ctx(0), &mechs));
    let mut app = der::wrap(TAG_OID, OID_SPNEGO);
    der::write(&mut app, ctx(0), &init);
    der::wrap(TAG_APPLICATION_0, &app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_init_token_parses_back_as_ntlmssp_only() {
        let t = parse_init(&encode_server_init()).unwrap();
        assert_eq!(t.mech_types, vec![OID_NTLMSSP.to_vec()]);
        assert_eq!(t.mech_token, None);
    }

    #[test]
    fn resp_round_trips_and_bad_input_is_an_error() {
        let r = NegTokenResp { state: Some(1), supported_mech: Some(OID_NTLMSSP.to_vec()), response_token: Some(vec![7; 300]), mech_list_mic: None };
        assert_eq!(parse_resp(&encode_resp(&r)).unwrap(), r);
        assert!(parse_resp(&[0xa1, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(parse_resp(&[0xa1, 0x05, 0x30, 0x10]).is_err());
        assert!(parse_init(&[0x60, 0x02, 0x06, 0x00]).is_err());
    }
}
