//! DCE/RPC over named pipes (C706 connection-oriented PDUs, MS-RPCE), without I/O: a [`Pipe`]
//! takes request bytes written to the pipe and produces the bytes to read back. Interfaces:
//! srvsvc (share enumeration). Unauthenticated binds take the SMB session's user.

pub mod ndr;
pub mod pdu;
pub mod srvsvc;

use pdu::{Header, PduError};

/// Bytes one pipe buffers for the client at most; beyond, the connection is refused the call.
pub const MAX_PIPE_OUTPUT_BYTES: usize = 1 << 20;
/// Largest request stub reassembled from fragments.
pub const MAX_STUB_BYTES: usize = 4 << 20;
/// The fragment size this server offers and accepts.
pub const MAX_FRAGMENT_BYTES: u16 = 5840;

/// A share as srvsvc lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareEntry {
    pub name: String,
    /// STYPE_* (0 disk, 0x80000003 IPC$).
    pub kind: u32,
    pub remark: String,
}

/// One open pipe's DCE/RPC state.
pub struct Pipe {
    pub name: String,
    bound: Option<u16>,
    pending: Vec<u8>,
    stub: Vec<u8>,
    assoc_group: u32,
}

impl Pipe {
    pub fn new(name: &str, assoc_group: u32) -> Self {
        Pipe { name: name.to_string(), bound: None, pending: Vec::new(), stub: Vec::new(), assoc_group }
    }

    /// Feeds one PDU the client wrote; replies are queued for reading.
    pub fn write(&mut self, pdu: &[u8], shares: &[ShareEntry]) -> Result<(), PduError> {
        let h = Header::parse(pdu)?;
        let reply = match h.ptype {
            pdu::BIND | pdu::ALTER_CONTEXT => {
                let (reply, ctx) = pdu::bind_reply(&h, pdu, &format!("\\pipe\\{}", self.name.to_lowercase()), self.assoc_group, &[srvsvc::INTERFACE])?;
                if ctx.is_some() {
                    self.bound = ctx;
                }
                reply
            }
            pdu::REQUEST => {
                let (ctx, opnum, stub) = pdu::request_parts(&h, pdu)?;
                if h.flags & pdu::PFC_FIRST != 0 {
                    self.stub.clear();
                }
                if self.stub.len() + stub.len() > MAX_STUB_BYTES {
                    return Err(PduError::TooLarge);
                }
                self.stub.extend_from_slice(stub);
                if h.flags & pdu::PFC_LAST == 0 {
                    return Ok(());
                }
                let stub = std::mem::take(&mut self.stub);
                match (self.bound, opnum) {
                    (Some(bound), _) if bound != ctx => pdu::fault(&h, ctx, pdu::NCA_UNKNOWN_IF),
                    (None, _) => pdu::fault(&h, ctx, pdu::NCA_UNKNOWN_IF),
                    (Some(_), op) => match srvsvc::call(op, &stub, shares) {
                        Ok(out) => pdu::response(&h, ctx, &out, MAX_FRAGMENT_BYTES),
                        Err(status) => pdu::fault(&h, ctx, status),
                    },
                }
            }
            _ => return Err(PduError::Unsupported(h.ptype)),
        };
        if self.pending.len() + reply.len() > MAX_PIPE_OUTPUT_BYTES {
            return Err(PduError::TooLarge);
        }
        self.pending.extend_from_slice(&reply);
        Ok(())
    }

    /// Up to `max` bytes of queued replies.
    pub fn read(&mut self, max: usize) -> Vec<u8> {
        let n = max.min(self.pending.len());
        self.pending.drain(..n).collect()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// smbclient -L's bind for srvsvc (smbclient-list.pcap) and Samba's bind_ack: the same bytes
    /// but for the association group id, which each server picks.
    #[test]
    fn srvsvc_bind_is_acknowledged_as_samba_does() {
        let bind = hex("05000b03100000004800000001000000b810b810000000000100000000000100c84f324b7016d30112785a47bf6ee18803000000045d888aeb1cc9119fe808002b10486002000000");
        let samba = hex("05000c03100000004400000001000000b810b810bc1900000d005c706970655c73727673766300000100000000000000045d888aeb1cc9119fe808002b10486002000000");
        let mut pipe = Pipe::new("srvsvc", 0x19bc);
        pipe.write(&bind, &[]).unwrap();
        assert_eq!(pipe.read(4280), samba);
        // A request on an unbound context is a fault, not a crash.
        let mut other = Pipe::new("srvsvc", 1);
        let request = hex("05000003100000001c000000020000000400000000000f0000000000");
        other.write(&request, &[]).unwrap();
        assert_eq!(other.read(4280)[2], pdu::FAULT);
        assert!(other.write(&request[..10], &[]).is_err(), "a truncated PDU is an error");
    }

    proptest::proptest! {
        /// Mutated binds and requests: the pipe answers or refuses, never panics.
        #[test]
        fn mutated_pdus_never_panic_the_pipe(flips in proptest::collection::vec((0usize..100, proptest::prelude::any::<u8>()), 0..6), cut in 0usize..100) {
            let bind = hex("05000b03100000004800000001000000b810b810000000000100000000000100c84f324b7016d30112785a47bf6ee18803000000045d888aeb1cc9119fe808002b10486002000000");
            let request = hex("05000003100000005c000000020000004400000000000f00000002000a000000000000000a0000003100320037002e0030002e0030002e00310000000100000001000000040002000000000000000000ffffffff0800020000000000");
            for base in [bind.clone(), request] {
                let mut pipe = Pipe::new("srvsvc", 1);
                let _ = pipe.write(&bind, &[]);
                let mut m = base.clone();
                for &(at, b) in &flips {
                    let i = at % m.len();
                    m[i] = b;
                }
                m.truncate(cut.max(1).min(m.len()));
                let shares = [ShareEntry { name: "s".into(), kind: 0, remark: String::new() }];
                let _ = pipe.write(&m, &shares);
                let _ = pipe.read(4280);
            }
        }
    }
}
