//! The SMB2 wire format, without I/O: transport frames, compounds, headers.
//!
//! Written here rather than taken from a crate: smb-msg 0.12 rejected 41% of the real client
//! messages in ../shared/captures (every CLOSE and IOCTL among them) and ignores buffer offsets
//! (see ../shared/docs/stack.md). Every length and offset is checked against the buffer.

pub mod compound;
pub mod frame;
pub mod header;
pub mod negotiate;
pub mod signing;
pub mod status;
