//! Compounded related requests (MS-SMB2 3.3.5.2.7.2): a message with SMB2_FLAGS_RELATED_OPERATIONS
//! takes its SessionId, TreeId and (when its FileId is the all-ones placeholder) FileId from the
//! message before it in the same compound, and fails with that message's error when the
//! previous one failed to produce the file it needs.

use std::borrow::Cow;

use crate::smb2::header::{Command, Header, Target, FLAG_RELATED_OPERATIONS, HEADER_BYTES};
use crate::smb2::status;

/// What the previous message of the compound used or produced.
#[derive(Debug, Default)]
pub struct Chain {
    session_id: Option<u64>,
    tree_id: Option<u32>,
    /// (persistent, volatile) of the file the previous message used or created.
    file: Option<[u8; 16]>,
    /// The previous message's status when it failed.
    failed: Option<u32>,
}

/// Where a request's FileId lies in its body (after the header), by command.
pub fn file_id_offset(command: Command) -> Option<usize> {
    Some(match command {
        Command::Close | Command::Flush | Command::Lock | Command::Ioctl | Command::QueryDirectory | Command::ChangeNotify | Command::OplockBreak => 8,
        Command::Read | Command::Write | Command::SetInfo => 16,
        Command::QueryInfo => 24,
        _ => return None,
    })
}

const PLACEHOLDER: [u8; 16] = [0xFF; 16];

/// Offset of the FileId in a CREATE response body.
const CREATE_RESPONSE_FILE_ID: usize = 64;

impl Chain {
    /// The message as it is to be handled: related ones get the previous ids, or an error
    /// status to answer with instead.
    pub fn relate<'a>(&self, header: &Header, message: &'a [u8]) -> Result<(Header, Cow<'a, [u8]>), u32> {
        if header.flags & FLAG_RELATED_OPERATIONS == 0 {
            return Ok((header.clone(), Cow::Borrowed(message)));
        }
        let mut h = header.clone();
        if let Some(s) = self.session_id {
            h.session_id = s;
        }
        if let (Some(t), Target::Sync { process_id, .. }) = (self.tree_id, h.target) {
            h.target = Target::Sync { process_id, tree_id: t };
        }
        let Some(at) = file_id_offset(h.command).map(|o| HEADER_BYTES + o) else { return Ok((h, Cow::Borrowed(message))) };
        if message.get(at..at + 16) != Some(&PLACEHOLDER[..]) {
            return Ok((h, Cow::Borrowed(message)));
        }
        if let Some(failed) = self.failed {
            return Err(failed);
        }
        let Some(file) = self.file else { return Err(status::INVALID_HANDLE) };
        let mut owned = message.to_vec();
        owned[at..at + 16].copy_from_slice(&file);
        Ok((h, Cow::Owned(owned)))
    }

    /// Records what a handled message used (its header and bytes, after [`Chain::relate`]) and
    /// produced (its response status and body).
    pub fn handled(&mut self, h: &Header, message: &[u8], status: u32, session_id: Option<u64>, tree_id: Option<u32>, body: &[u8]) {
        self.session_id = Some(session_id.unwrap_or(h.session_id));
        self.tree_id = match h.target {
            Target::Sync { tree_id: t, .. } => Some(tree_id.unwrap_or(t)),
            Target::Async { .. } => tree_id.or(self.tree_id),
        };
        let failed = status & 0xC000_0000 == 0xC000_0000;
        let file = if h.command == Command::Create {
            body.get(CREATE_RESPONSE_FILE_ID..CREATE_RESPONSE_FILE_ID + 16).filter(|_| !failed).map(|b| b.try_into().expect("16 bytes"))
        } else {
            file_id_offset(h.command).and_then(|o| message.get(HEADER_BYTES + o..HEADER_BYTES + o + 16)).map(|b| b.try_into().expect("16 bytes"))
        };
        let uses_file = h.command == Command::Create || file_id_offset(h.command).is_some();
        if uses_file {
            self.file = file;
            self.failed = failed.then_some(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(command: Command, related: bool) -> Header {
        let flags = if related { FLAG_RELATED_OPERATIONS } else { 0 };
        Header { credit_charge: 1, status: 0, command, credits: 1, flags, next_command: 0, message_id: 1, target: Target::Sync { process_id: 0, tree_id: 0xFFFF_FFFF }, session_id: u64::MAX, signature: [0; 16] }
    }

    fn with_file(command: Command, file: [u8; 16]) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_BYTES + 40];
        let at = HEADER_BYTES + file_id_offset(command).unwrap();
        m[at..at + 16].copy_from_slice(&file);
        m
    }

    #[test]
    fn related_messages_take_the_previous_session_tree_and_created_file() {
        let mut chain = Chain::default();
        let create = Header { session_id: 7, target: Target::Sync { process_id: 0, tree_id: 3 }, ..header(Command::Create, false) };
        let mut body = vec![0u8; 89];
        body[64..80].copy_from_slice(&[5; 16]);
        chain.handled(&create, &[], status::SUCCESS, None, None, &body);
        let query = with_file(Command::QueryInfo, PLACEHOLDER);
        let (h, m) = chain.relate(&header(Command::QueryInfo, true), &query).unwrap();
        assert_eq!((h.session_id, h.target), (7, Target::Sync { process_id: 0, tree_id: 3 }));
        assert_eq!(&m[HEADER_BYTES + 24..HEADER_BYTES + 40], &[5; 16]);
        // An unrelated message keeps its own ids.
        let (h, _) = chain.relate(&header(Command::QueryInfo, false), &query).unwrap();
        assert_eq!(h.session_id, u64::MAX);
    }

    #[test]
    fn a_failed_create_fails_the_related_messages_that_need_its_file_with_its_status() {
        let mut chain = Chain::default();
        chain.handled(&header(Command::Create, false), &[], status::OBJECT_NAME_NOT_FOUND, None, None, &[9, 0, 0, 0, 0, 0, 0, 0, 0]);
        let close = with_file(Command::Close, PLACEHOLDER);
        assert_eq!(chain.relate(&header(Command::Close, true), &close).err(), Some(status::OBJECT_NAME_NOT_FOUND));
        let mut fresh = Chain::default();
        fresh.handled(&header(Command::Echo, false), &[], status::SUCCESS, None, None, &[]);
        assert_eq!(fresh.relate(&header(Command::Close, true), &close).err(), Some(status::INVALID_HANDLE), "no file before");
    }
}
