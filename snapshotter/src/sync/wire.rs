//! The stream format of a delta: a magic, then records, then an end record
//! with their count (so a cut stream is told from a whole one).
//!
//! ```text
//! stream  = MAGIC record* END count:u64
//! record  = REMOVE path
//!         | DIR path meta
//!         | FILE path meta size:u64 (offset:u64 len:u32 byte{len})* 0:u64 0:u32
//!         | SYMLINK path meta target:bytes
//!         | NODE path meta rdev:u64          fifo, socket, char/block device, whiteout
//!         | LINK path target:path            a hard link to a path sent earlier in the stream
//! meta    = mode:u32 uid:u32 gid:u32 mtime_sec:i64 mtime_nsec:u32 nxattrs:u32 (name:bytes value:bytes)*
//! path    = bytes                            relative to the upper dir, '/'-separated; "" is its root
//! bytes   = len:u32 byte{len}
//! ```
//!
//! Integers are little-endian. A FILE's chunks are its data extents (holes
//! are not sent, so a sparse file stays sparse); `size` is its length.

use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 8] = b"CMSYNC01";

pub const REMOVE: u8 = 1;
pub const DIR: u8 = 2;
pub const FILE: u8 = 3;
pub const SYMLINK: u8 = 4;
pub const NODE: u8 = 5;
pub const LINK: u8 = 6;
pub const END: u8 = 0x7f;

/// Limits a reader enforces, so a corrupt stream cannot make it allocate
/// without bound: Linux's PATH_MAX, XATTR_SIZE_MAX, and chunks as written.
pub const MAX_PATH: u32 = 4096;
pub const MAX_XATTR_NAME: u32 = 255;
pub const MAX_XATTR_VALUE: u32 = 64 * 1024;
pub const MAX_XATTRS: u32 = 4096;
pub const CHUNK: u32 = 1 << 20;

/// An entry's metadata as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A writer that counts what it wrote.
pub struct Enc<W: Write> {
    w: W,
    pub written: u64,
}

impl<W: Write> Enc<W> {
    pub fn new(w: W) -> Enc<W> {
        Enc { w, written: 0 }
    }

    pub fn raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    pub fn u8(&mut self, v: u8) -> io::Result<()> {
        self.raw(&[v])
    }

    pub fn u32(&mut self, v: u32) -> io::Result<()> {
        self.raw(&v.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> io::Result<()> {
        self.raw(&v.to_le_bytes())
    }

    pub fn i64(&mut self, v: i64) -> io::Result<()> {
        self.raw(&v.to_le_bytes())
    }

    pub fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        let len = u32::try_from(b.len()).map_err(|_| io::Error::other("a field of more than 4 GiB"))?;
        self.u32(len)?;
        self.raw(b)
    }

    pub fn meta(&mut self, m: &Meta) -> io::Result<()> {
        self.u32(m.mode)?;
        self.u32(m.uid)?;
        self.u32(m.gid)?;
        self.i64(m.mtime.0)?;
        self.u32(m.mtime.1)?;
        self.u32(m.xattrs.len() as u32)?;
        for (name, value) in &m.xattrs {
            self.bytes(name)?;
            self.bytes(value)?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// The reading side; errors say which field was bad.
pub struct Dec<R: Read> {
    r: R,
}

impl<R: Read> Dec<R> {
    pub fn new(r: R) -> Dec<R> {
        Dec { r }
    }

    pub fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(e.kind(), "the stream ended in the middle of a record (the sender stopped?)")
            } else {
                e
            }
        })
    }

    pub fn u8(&mut self) -> io::Result<u8> {
        let mut b = [0; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    pub fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn i64(&mut self) -> io::Result<i64> {
        let mut b = [0; 8];
        self.exact(&mut b)?;
        Ok(i64::from_le_bytes(b))
    }

    /// A length-prefixed field of at most `max` bytes (`what` names it in the error).
    pub fn bytes(&mut self, max: u32, what: &str) -> io::Result<Vec<u8>> {
        let len = self.u32()?;
        if len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what} of {len} bytes, more than the limit of {max}"),
            ));
        }
        let mut b = vec![0; len as usize];
        self.exact(&mut b)?;
        Ok(b)
    }

    pub fn meta(&mut self) -> io::Result<Meta> {
        let mode = self.u32()?;
        let uid = self.u32()?;
        let gid = self.u32()?;
        let mtime = (self.i64()?, self.u32()?);
        let n = self.u32()?;
        if n > MAX_XATTRS {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{n} xattrs on one entry")));
        }
        let mut xattrs = Vec::with_capacity(n as usize);
        for _ in 0..n {
            xattrs.push((self.bytes(MAX_XATTR_NAME, "an xattr name")?, self.bytes(MAX_XATTR_VALUE, "an xattr value")?));
        }
        Ok(Meta { mode, uid, gid, mtime, xattrs })
    }
}
