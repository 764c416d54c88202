//! gRPC message framing for bulk file data, without copies (sans-IO: bytes in, messages out).
//!
//! Why by hand: tonic's codec copies every message twice on its way. The sender encodes it into
//! one buffer, and the receiver puts every HTTP/2 DATA frame into one buffer before decoding.
//! A volume Read or Write message is mostly one file-data field of up to 1 MiB, so those two
//! copies cost as much as the store does. tonic's `Codec` cannot avoid them (it hands the
//! encoder a buffer to copy into and the decoder a buffer already copied), so the volume
//! service's two bulk calls frame their messages here instead:
//!
//! - [`frame_with_data`] turns a message into two pieces. The first is the gRPC prefix, the
//!   other fields, and the data field's key and length. The second is the data itself, the same
//!   `Bytes`, which HTTP/2 sends as it is.
//! - [`MessageReader`] keeps the DATA frames as they came and hands out each whole message as
//!   [`Segments`]. Its `copy_to_bytes` (how prost fills a `bytes::Bytes` field) slices a frame
//!   instead of copying when the field lies within one frame. HTTP/2 cuts data at the
//!   receiver's largest frame (1 MiB between Umbra nodes, 16 KiB for a client that keeps the
//!   protocol's default) and at flow-control edges, so a field that spans frames is copied
//!   once, as tonic would; frames under [`SMALL_FRAME_BYTES`] are always copied together.
//!
//! The wire is plain gRPC (length-prefixed messages, gRPC over HTTP/2), so tonic's generated
//! clients and servers read it and write it too. Compressed messages are refused: Umbra never
//! negotiates compression.

use std::collections::VecDeque;

use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;

/// The field numbers of the file data in `DataChunk` and `WriteChunk` (umbra.proto).
pub const DATA_CHUNK_DATA_FIELD: u32 = 1;
pub const WRITE_CHUNK_DATA_FIELD: u32 = 4;

/// The gRPC prefix of every message: a compressed flag (one byte) and the length (u32, big end).
pub const PREFIX_BYTES: usize = 5;

/// Why a stream of frames is not a stream of gRPC messages.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a compressed gRPC message, and no compression was negotiated")]
    Compressed,
    #[error("a gRPC message of {len} bytes, over the limit of {max}")]
    TooLarge { len: u64, max: usize },
    #[error("the stream ended {buffered} bytes into a gRPC message")]
    Truncated { buffered: usize },
}

/// A whole message framed as one piece (unary requests and replies).
pub fn frame(msg: &impl Message) -> Result<Bytes, FrameError> {
    let len = msg.encoded_len();
    let mut b = BytesMut::with_capacity(PREFIX_BYTES + len);
    put_prefix(&mut b, len)?;
    msg.encode_raw(&mut b);
    Ok(b.freeze())
}

/// `head` followed by field `field` (of type bytes) holding `data`, as two pieces: the prefix,
/// the encoded `head` and the field's key and length; then `data` itself. `head` must leave that
/// field empty. Protobuf decoders accept fields in any order, so the data field goes last.
pub fn frame_with_data(head: &impl Message, field: u32, data: Bytes) -> Result<[Bytes; 2], FrameError> {
    let head_len = head.encoded_len();
    let field_head = key_len(field) + encoded_len_varint(data.len() as u64);
    let mut b = BytesMut::with_capacity(PREFIX_BYTES + head_len + field_head);
    put_prefix(&mut b, head_len + field_head + data.len())?;
    head.encode_raw(&mut b);
    encode_key(field, WireType::LengthDelimited, &mut b);
    encode_varint(data.len() as u64, &mut b);
    Ok([b.freeze(), data])
}

fn put_prefix(b: &mut BytesMut, len: usize) -> Result<(), FrameError> {
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge { len: len as u64, max: u32::MAX as usize })?;
    b.put_u8(0);
    b.put_u32(len32);
    Ok(())
}

/// Frames shorter than this are copied together instead of kept one by one, so a message cut
/// into tiny frames costs its bytes, not a slice per frame: the reader then holds at most about
/// two slices per `SMALL_FRAME_BYTES` of what it buffers.
pub const SMALL_FRAME_BYTES: usize = 4096;

/// Reassembles gRPC messages from the DATA frames of one HTTP/2 stream. Called after every
/// [`push`](Self::push) until it has no whole message, it holds at most one message (bounded
/// by `max_message_bytes`) plus the frame that completed it.
pub struct MessageReader {
    frames: VecDeque<Bytes>,
    /// Small frames received since the last large one, copied together (after `frames`).
    small: BytesMut,
    buffered: usize,
    max_message_bytes: usize,
    /// The length of the message whose prefix has been read, if one has.
    body: Option<usize>,
}

impl MessageReader {
    pub fn new(max_message_bytes: usize) -> Self {
        MessageReader { frames: VecDeque::new(), small: BytesMut::new(), buffered: 0, max_message_bytes, body: None }
    }

    /// The next DATA frame of the stream, as received (a small one is copied).
    pub fn push(&mut self, frame: Bytes) {
        self.buffered += frame.len();
        if frame.len() < SMALL_FRAME_BYTES {
            self.small.extend_from_slice(&frame);
        } else {
            self.flush_small();
            self.frames.push_back(frame);
        }
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.frames.push_back(self.small.split().freeze());
        }
    }

    /// The next whole message, if its last byte has arrived. An error ends the stream.
    pub fn next_message(&mut self) -> Result<Option<Segments>, FrameError> {
        let len = match self.body {
            Some(len) => len,
            None => {
                if self.buffered < PREFIX_BYTES {
                    return Ok(None);
                }
                let mut prefix = self.take(PREFIX_BYTES);
                let compressed = prefix.get_u8();
                let len = prefix.get_u32() as usize;
                if compressed != 0 {
                    return Err(FrameError::Compressed);
                }
                if len > self.max_message_bytes {
                    return Err(FrameError::TooLarge { len: len as u64, max: self.max_message_bytes });
                }
                self.body = Some(len);
                len
            }
        };
        if self.buffered < len {
            return Ok(None);
        }
        self.body = None;
        Ok(Some(self.take(len)))
    }

    /// Checks the stream ended between messages.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered + self.body.map_or(0, |_| PREFIX_BYTES) {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }

    /// The first `len` buffered bytes (`len <= buffered`), as slices of the frames.
    fn take(&mut self, mut len: usize) -> Segments {
        self.flush_small();
        let mut parts = VecDeque::new();
        self.buffered -= len;
        let remaining = len;
        while len > 0 {
            let front = self.frames.front_mut().expect("take within what is buffered");
            if front.len() <= len {
                len -= front.len();
                parts.push_back(self.frames.pop_front().expect("front exists"));
            } else {
                parts.push_back(front.split_to(len));
                len = 0;
            }
        }
        Segments { parts, remaining }
    }
}

/// One message's bytes as slices of the frames it came in.
pub struct Segments {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Buf for Segments {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |b| b.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of a message");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self.parts.front_mut().expect("advance within remaining");
            if front.len() <= cnt {
                cnt -= front.len();
                self.parts.pop_front();
            } else {
                front.advance(cnt);
                cnt = 0;
            }
        }
    }

    /// A slice of one frame when the bytes lie within it; a copy only when they span frames.
    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(len <= self.remaining, "copy_to_bytes past the end of a message");
        match self.parts.front_mut() {
            Some(front) if front.len() >= len => {
                let out = front.split_to(len);
                if front.is_empty() {
                    self.parts.pop_front();
                }
                self.remaining -= len;
                out
            }
            _ => {
                let mut out = BytesMut::with_capacity(len);
                out.put((&mut *self).take(len));
                out.freeze()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{DataChunk, VolumeTarget, WriteChunk};
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn write_chunk(data: Vec<u8>) -> WriteChunk {
        let target = VolumeTarget { volume: "3f0c".into(), snapshot: String::new(), clone: String::new(), route: true };
        WriteChunk { target: Some(target), ino: 17, offset: 1 << 33, data: data.into(), now: 99, open: None, keep_times: 0 }
    }

    /// The bytes of `pieces`, cut into frames at `cuts` (positions taken modulo the length).
    fn cut(pieces: &[Bytes], cuts: &[usize]) -> Vec<Bytes> {
        let all: Bytes = pieces.iter().flat_map(|p| p.iter().copied()).collect::<Vec<u8>>().into();
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (all.len() + 1)).collect();
        at.push(0);
        at.push(all.len());
        at.sort_unstable();
        at.windows(2).map(|w| all.slice(w[0]..w[1])).collect()
    }

    #[test]
    fn two_pieces_decode_as_the_whole_message_and_as_tonic_frames_it() {
        let msg = write_chunk(vec![7; 3000]);
        let mut head = msg.clone();
        head.data = Bytes::new();
        let pieces = frame_with_data(&head, WRITE_CHUNK_DATA_FIELD, msg.data.clone()).unwrap();
        // The same bytes as prost's own encoding of the whole message, up to field order,
        // which the decoder does not care about.
        let mut r = MessageReader::new(MAX);
        r.push(pieces[0].clone());
        r.push(pieces[1].clone());
        let got = WriteChunk::decode(r.next_message().unwrap().unwrap()).unwrap();
        assert_eq!(got, msg);
        r.finish().unwrap();
        let whole = frame(&msg).unwrap();
        assert_eq!(whole.len(), pieces[0].len() + pieces[1].len());
        let mut r = MessageReader::new(MAX);
        r.push(whole);
        assert_eq!(WriteChunk::decode(r.next_message().unwrap().unwrap()).unwrap(), msg);
    }

    #[test]
    fn a_data_field_within_one_frame_is_not_copied() {
        let data = Bytes::from(vec![5u8; 64 * 1024]);
        let pieces = frame_with_data(&DataChunk::default(), DATA_CHUNK_DATA_FIELD, data.clone()).unwrap();
        let mut r = MessageReader::new(MAX);
        r.push(pieces[0].clone());
        r.push(pieces[1].clone());
        let got = DataChunk::decode(r.next_message().unwrap().unwrap()).unwrap();
        assert_eq!(got.data.as_ptr(), data.as_ptr(), "the decoded field is a slice of the frame");
    }

    #[test]
    fn limits_and_flags_are_checked_before_buffering() {
        let mut r = MessageReader::new(100);
        r.push(Bytes::from_static(&[0, 0, 0, 0, 101]));
        assert_eq!(r.next_message().err(), Some(FrameError::TooLarge { len: 101, max: 100 }));
        let mut r = MessageReader::new(100);
        r.push(Bytes::from_static(&[1, 0, 0, 0, 1, 0]));
        assert_eq!(r.next_message().err(), Some(FrameError::Compressed));
        let mut r = MessageReader::new(100);
        r.push(Bytes::from_static(&[0, 0, 0, 0, 3, 8]));
        assert!(r.next_message().unwrap().is_none());
        assert_eq!(r.finish(), Err(FrameError::Truncated { buffered: 6 }));
        let mut r = MessageReader::new(100);
        r.push(Bytes::from_static(&[0, 0]));
        assert_eq!(r.finish(), Err(FrameError::Truncated { buffered: 2 }));
    }

    #[test]
    fn a_message_in_tiny_frames_is_held_as_a_few_slices() {
        let msg = write_chunk(vec![9; 100_000]);
        let whole = frame(&msg).unwrap();
        let mut r = MessageReader::new(MAX);
        for i in 0..whole.len() {
            r.push(whole.slice(i..i + 1));
            assert!(r.frames.len() <= 1, "one-byte frames are copied together, not kept one by one");
        }
        assert_eq!(WriteChunk::decode(r.next_message().unwrap().unwrap()).unwrap(), msg);
        // Small frames between large ones keep their order.
        let mut head = msg.clone();
        head.data = Bytes::new();
        let [h, data] = frame_with_data(&head, WRITE_CHUNK_DATA_FIELD, msg.data.clone()).unwrap();
        let mut r = MessageReader::new(MAX);
        r.push(h.slice(..3));
        r.push(h.slice(3..));
        r.push(data.slice(..50_000));
        r.push(data.slice(50_000..50_010));
        r.push(data.slice(50_010..));
        assert_eq!(WriteChunk::decode(r.next_message().unwrap().unwrap()).unwrap(), msg);
    }

    #[test]
    fn empty_messages_and_empty_frames() {
        let mut r = MessageReader::new(MAX);
        r.push(Bytes::new());
        r.push(frame(&DataChunk::default()).unwrap());
        let m = r.next_message().unwrap().unwrap();
        assert_eq!(m.remaining(), 0);
        assert_eq!(DataChunk::decode(m).unwrap(), DataChunk::default());
        assert!(r.next_message().unwrap().is_none());
        r.finish().unwrap();
    }

    proptest! {
        /// Any cut of any run of messages into frames gives back the same messages, in order.
        #[test]
        fn any_framing_gives_back_the_messages(
            sizes in proptest::collection::vec(0usize..5000, 1..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let msgs: Vec<WriteChunk> = sizes.iter().enumerate().map(|(i, n)| write_chunk((0..*n).map(|b| (b + i) as u8).collect())).collect();
            let mut pieces = Vec::new();
            for m in &msgs {
                let mut head = m.clone();
                head.data = Bytes::new();
                pieces.extend(frame_with_data(&head, WRITE_CHUNK_DATA_FIELD, m.data.clone()).unwrap());
            }
            let mut r = MessageReader::new(MAX);
            let mut got = Vec::new();
            for f in cut(&pieces, &cuts) {
                r.push(f);
                while let Some(m) = r.next_message().unwrap() {
                    got.push(WriteChunk::decode(m).unwrap());
                }
            }
            r.finish().unwrap();
            prop_assert_eq!(got, msgs);
        }

        /// Arbitrary bytes in arbitrary frames: errors, never a panic, and never more buffered
        /// than one message's limit plus the frame that arrived.
        #[test]
        fn garbage_is_an_error_not_a_panic(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20)) {
            let mut r = MessageReader::new(256);
            for f in frames {
                let n = f.len();
                r.push(f.into());
                loop {
                    match r.next_message() {
                        Ok(Some(m)) => { let _ = WriteChunk::decode(m); }
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
                prop_assert!(r.buffered <= 256 + PREFIX_BYTES + n);
                prop_assert!(r.frames.len() <= 2 * r.buffered / SMALL_FRAME_BYTES + 1);
            }
            let _ = r.finish();
        }
    }
}
