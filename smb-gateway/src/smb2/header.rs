//! The SMB2 packet header (MS-SMB2 2.2.1): 64 bytes before every message of a compound.

use crate::wire;
/// Bytes in an SMB2 header.
pub const HEADER_BYTES: usize = 64;
pub const PROTOCOL_ID: [u8; 4] = [0xFE, b'S', b'M', b'B'];
/// A TRANSFORM header (encrypted message) starts with this instead.
pub const TRANSFORM_PROTOCOL_ID: [u8; 4] = [0xFD, b'S', b'M', b'B'];

pub const FLAG_SERVER_TO_REDIR: u32 = 0x0000_0001;
pub const FLAG_ASYNC_COMMAND: u32 = 0x0000_0002;
pub const FLAG_RELATED_OPERATIONS: u32 = 0x0000_0004;
pub const FLAG_SIGNED: u32 = 0x0000_0008;

/// SMB2 commands (MS-SMB2 2.2.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Negotiate,
    SessionSetup,
    Logoff,
    TreeConnect,
    TreeDisconnect,
    Create,
    Close,
    Flush,
    Read,
    Write,
    Lock,
    Ioctl,
    Cancel,
    Echo,
    QueryDirectory,
    ChangeNotify,
    QueryInfo,
    SetInfo,
    OplockBreak,
}

impl Command {
    pub fn from_u16(v: u16) -> Option<Command> {
        use Command::*;
        Some(match v {
            0x00 => Negotiate,
            0x01 => SessionSetup,
            0x02 => Logoff,
            0x03 => TreeConnect,
            0x04 => TreeDisconnect,
            0x05 => Create,
            0x06 => Close,
            0x07 => Flush,
            0x08 => Read,
            0x09 => Write,
            0x0A => Lock,
            0x0B => Ioctl,
            0x0C => Cancel,
            0x0D => Echo,
            0x0E => QueryDirectory,
            0x0F => ChangeNotify,
            0x10 => QueryInfo,
            0x11 => SetInfo,
            0x12 => OplockBreak,
            _ => return None,
        })
    }

    pub fn code(self) -> u16 {
        use Command::*;
        match self {
            Negotiate => 0x00,
            SessionSetup => 0x01,
            Logoff => 0x02,
            TreeConnect => 0x03,
            TreeDisconnect => 0x04,
            Create => 0x05,
            Close => 0x06,
            Flush => 0x07,
            Read => 0x08,
            Write => 0x09,
            Lock => 0x0A,
            Ioctl => 0x0B,
            Cancel => 0x0C,
            Echo => 0x0D,
            QueryDirectory => 0x0E,
            ChangeNotify => 0x0F,
            QueryInfo => 0x10,
            SetInfo => 0x11,
            OplockBreak => 0x12,
        }
    }
}

/// Sync messages name a tree; async ones (FLAG_ASYNC_COMMAND) an async id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Sync { process_id: u32, tree_id: u32 },
    Async { async_id: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub credit_charge: u16,
    /// NTSTATUS in responses; ChannelSequence (low 16 bits) and reserved in 3.x requests.
    pub status: u32,
    pub command: Command,
    /// CreditRequest in requests, CreditResponse in responses.
    pub credits: u16,
    pub flags: u32,
    pub next_command: u32,
    pub message_id: u64,
    pub target: Target,
    pub session_id: u64,
    pub signature: [u8; 16],
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("message of {0} bytes is shorter than an SMB2 header")]
    Short(usize),
    #[error("not an SMB2 message (protocol id {0:02x?})")]
    NotSmb2([u8; 4]),
    #[error("an encrypted (TRANSFORM) message where a plain one was expected")]
    Transform,
    #[error("header StructureSize {0}, expected 64")]
    StructureSize(u16),
    #[error("unknown command {0:#06x}")]
    UnknownCommand(u16),
}




impl Header {
    /// Parses the header at the start of `msg` (which must hold at least 64 bytes).
    pub fn parse(msg: &[u8]) -> Result<Header, HeaderError> {
        let h = msg.get(..HEADER_BYTES).ok_or(HeaderError::Short(msg.len()))?;
        // Every offset below lies inside these 64 bytes.
        let u16_at = |at| wire::u16_at(h, at).expect("inside the header");
        let u32_at = |at| wire::u32_at(h, at).expect("inside the header");
        let u64_at = |at| wire::u64_at(h, at).expect("inside the header");
        let id: [u8; 4] = h[..4].try_into().expect("4 bytes");
        if id == TRANSFORM_PROTOCOL_ID {
            return Err(HeaderError::Transform);
        }
        if id != PROTOCOL_ID {
            return Err(HeaderError::NotSmb2(id));
        }
        let size = u16_at(4);
        if size != HEADER_BYTES as u16 {
            return Err(HeaderError::StructureSize(size));
        }
        let code = u16_at(12);
        let command = Command::from_u16(code).ok_or(HeaderError::UnknownCommand(code))?;
        let flags = u32_at(16);
        let target = if flags & FLAG_ASYNC_COMMAND != 0 {
            Target::Async { async_id: u64_at(32) }
        } else {
            Target::Sync { process_id: u32_at(32), tree_id: u32_at(36) }
        };
        Ok(Header {
            credit_charge: u16_at(6),
            status: u32_at(8),
            command,
            credits: u16_at(14),
            flags,
            next_command: u32_at(20),
            message_id: u64_at(24),
            target,
            session_id: u64_at(40),
            signature: h[48..64].try_into().expect("16 bytes"),
        })
    }

    /// Appends the 64 header bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.resize(at + HEADER_BYTES, 0);
        self.encode_into(&mut out[at..]);
    }

    /// Writes the 64 header bytes over the first [`HEADER_BYTES`] of `out` (room left for them
    /// before a body).
    pub fn encode_into(&self, out: &mut [u8]) {
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&PROTOCOL_ID);
        put(&(HEADER_BYTES as u16).to_le_bytes());
        put(&self.credit_charge.to_le_bytes());
        put(&self.status.to_le_bytes());
        put(&self.command.code().to_le_bytes());
        put(&self.credits.to_le_bytes());
        put(&self.flags.to_le_bytes());
        put(&self.next_command.to_le_bytes());
        put(&self.message_id.to_le_bytes());
        match self.target {
            Target::Async { async_id } => put(&async_id.to_le_bytes()),
            Target::Sync { process_id, tree_id } => {
                put(&process_id.to_le_bytes());
                put(&tree_id.to_le_bytes());
            }
        }
        put(&self.session_id.to_le_bytes());
        put(&self.signature);
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_SERVER_TO_REDIR != 0
    }
}
