//! NDR 2.0 (little-endian), writing only what replies need: aligned integers, unique
//! pointers with referent ids, and conformant varying UTF-16 strings.

#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
    next_referent: u32,
}

impl Writer {
    pub fn new() -> Self {
        // Referent ids are arbitrary non-zero values; these match what Samba sends.
        Writer { buf: Vec::new(), next_referent: 0x0002_0008 }
    }

    pub fn align(&mut self, n: usize) {
        while self.buf.len() % n != 0 {
            self.buf.push(0);
        }
    }

    pub fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A non-null unique pointer (its referent id).
    pub fn pointer(&mut self) {
        self.next_referent += 4;
        let id = self.next_referent;
        self.u32(id);
    }

    /// A writer whose first non-null unique pointer gets referent id `first` (Samba numbers
    /// the pointers of some replies from 0x00020000, of others from further on).
    pub fn with_first_referent(first: u32) -> Self {
        assert!(first >= 4, "referent ids are non-zero");
        Writer { buf: Vec::new(), next_referent: first - 4 }
    }

    /// A hyper (8 bytes, 8-aligned).
    pub fn u64(&mut self, v: u64) {
        self.align(8);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A GUID: u32, u16, u16 little-endian, then 8 bytes (4-aligned).
    pub fn guid(&mut self, g: &uuid::Uuid) {
        self.align(4);
        self.buf.extend_from_slice(&g.to_bytes_le());
    }

    /// A conformant varying string with its terminating NUL (the deferred part of a pointer).
    pub fn string(&mut self, s: &str) {
        let units: Vec<u16> = s.encode_utf16().chain([0]).collect();
        self.u32(units.len() as u32);
        self.u32(0);
        self.u32(units.len() as u32);
        for u in units {
            self.buf.extend_from_slice(&u.to_le_bytes());
        }
    }
}

/// Reads the little NDR a request needs.
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.at = self.at.div_ceil(4) * 4;
        let v = u32::from_le_bytes(self.buf.get(self.at..self.at + 4)?.try_into().ok()?);
        self.at += 4;
        Some(v)
    }

    /// A conformant varying UTF-16 string (its NUL dropped), bounded by the buffer.
    pub fn string(&mut self) -> Option<String> {
        let _max = self.u32()?;
        let _offset = self.u32()?;
        let actual = self.u32()? as usize;
        let end = self.at.checked_add(actual.checked_mul(2)?)?;
        let bytes = self.buf.get(self.at..end)?;
        self.at = end;
        let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
        String::from_utf16(&units).ok()
    }

    /// The next `n` bytes as they are (no alignment), bounded by the buffer.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let v = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(v)
    }

    /// A GUID: u32, u16, u16 little-endian, then 8 bytes (4-aligned).
    pub fn guid(&mut self) -> Option<uuid::Uuid> {
        self.at = self.at.div_ceil(4) * 4;
        Some(uuid::Uuid::from_bytes_le(self.bytes(16)?.try_into().ok()?))
    }

    /// Skips a conformant varying UTF-16 string, bounded by the buffer.
    pub fn skip_string(&mut self) -> Option<()> {
        let _max = self.u32()?;
        let _offset = self.u32()?;
        let actual = self.u32()? as usize;
        let end = self.at.checked_add(actual.checked_mul(2)?)?;
        if end > self.buf.len() {
            return None;
        }
        self.at = end;
        Some(())
    }
}
