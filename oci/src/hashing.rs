//! SHA-256 of checkpoint files, computed while the bytes pass through anyway:
//! a file is copied and hashed in one read, a renamed file is hashed in one
//! read, and a written file is hashed as it is written. Memory images are
//! large, so every extra pass over them would cost seconds of downtime.

use std::{
    fmt,
    fs::File,
    io::{self, Read, Write},
    os::fd::AsRawFd,
    path::Path,
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest;

use crate::error::{Error, Result};

/// Large enough that a syscall per buffer is noise next to hashing it, small
/// enough that two threads' buffers stay in the L2/L3 cache.
const BUF_SIZE: usize = 2 << 20;

/// How much a copy writes before it asks the kernel to start writing it to
/// disk. Without this, the disk idles while the copy fills the page cache and
/// the final fsync waits for all of it.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A SHA-256 digest; lowercase hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256([u8; 32]);

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl FromStr for Sha256 {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Uppercase would decode too, but two spellings of one digest make
        // manifests compare unequal for no reason.
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err("a sha256 is 64 lowercase hex digits");
        }
        let mut out = [0; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| "a sha256 is 64 lowercase hex digits")?;
        Ok(Sha256(out))
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a checkpoint records of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hashed {
    pub size: u64,
    pub sha256: Sha256,
}

/// Copies `src` to the new file `dst`, hashing the bytes on their way
/// through, and makes `dst` durable.
pub(crate) fn copy_hashing(src: &Path, dst: &Path) -> Result<Hashed> {
    let mut from = File::open(src).map_err(Error::io("open", src))?;
    let len = from.metadata().map_err(Error::io("stat", src))?.len();
    write_hashing(&mut from, len, src, dst)
}

/// Files at least this big are copied around the page cache
/// (`direct_copy`), or else by [`copy_hashing_split`].
pub(crate) const SPLIT_COPY_MIN: u64 = 32 << 20;

/// Copies `src` to the new file `dst` and hashes it, on two threads: one
/// hashes the source while the other copies it with sendfile(2), which
/// moves the bytes from page cache to page cache without a trip through
/// this process. For a memory image in RAM (tmpfs) going to disk this takes
/// about as long as the slower of the two, where [`copy_hashing`] takes
/// their sum. The source must not change meanwhile (a finished dump does
/// not); a size that changes is caught, and the copy refused.
pub(crate) fn copy_hashing_split(src: &Path, dst: &Path) -> Result<Hashed> {
    let from = File::open(src).map_err(Error::io("open", src))?;
    let len = from.metadata().map_err(Error::io("stat", src))?.len();
    let to = File::options().write(true).create_new(true).open(dst).map_err(Error::io("create", dst))?;
    let (hashed, copied) = std::thread::scope(|s| {
        let hasher = s.spawn(|| hash_file(src, false));
        let copied = copy_in_kernel(&from, src, &to, dst, len);
        (hasher.join().unwrap_or_else(|p| std::panic::resume_unwind(p)), copied)
    });
    let (hashed, copied) = (hashed?, copied?);
    if hashed.size != len || copied != len {
        let changed = io::Error::other(format!(
            "it changed while it was copied: {len} bytes at the start, {} hashed, {copied} copied",
            hashed.size
        ));
        return Err(Error::Io { op: "copy", path: src.to_owned(), source: changed });
    }
    to.sync_data().map_err(Error::io("fsync", dst))?;
    Ok(hashed)
}

/// sendfile(2) from `from` to `to` until `len` bytes or the end of `from`,
/// starting writeback as it goes; falls back to read and write where the
/// kernel cannot (sendfile refuses some file systems). Returns the bytes
/// copied.
fn copy_in_kernel(from: &File, src: &Path, to: &File, dst: &Path, len: u64) -> Result<u64> {
    let mut copied: u64 = 0;
    while copied < len {
        let want = usize::try_from((len - copied).min(WRITEBACK_EVERY)).unwrap_or(usize::MAX);
        let mut offset =
            libc::off_t::try_from(copied).map_err(|_| Error::io("copy", src)(io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: both descriptors stay open for the call; `offset` is ours.
        let n = unsafe { libc::sendfile(to.as_raw_fd(), from.as_raw_fd(), &mut offset, want) };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EINVAL | libc::ENOSYS) if copied == 0 => return copy_by_hand(from, src, to, dst),
                _ => return Err(Error::Io { op: "copy to", path: dst.to_owned(), source: err }),
            }
        }
        if n == 0 {
            break;
        }
        start_writeback(to, copied, n as u64);
        copied += n as u64;
    }
    Ok(copied)
}

fn copy_by_hand(mut from: &File, src: &Path, mut to: &File, dst: &Path) -> Result<u64> {
    let mut buf = buffer(u64::MAX);
    let mut copied = 0;
    loop {
        let n = read_some(&mut from, &mut buf).map_err(Error::io("read", src))?;
        if n == 0 {
            return Ok(copied);
        }
        to.write_all(&buf[..n]).map_err(Error::io("write", dst))?;
        start_writeback(to, copied, n as u64);
        copied += n as u64;
    }
}

/// Writes all that `from` (read from `src`, for errors) yields to the new
/// file `dst`, hashing the bytes on their way through, and makes `dst`
/// durable. `len_hint` sizes the buffer.
pub(crate) fn write_hashing(from: &mut impl Read, len_hint: u64, src: &Path, dst: &Path) -> Result<Hashed> {
    let mut to = File::options().write(true).create_new(true).open(dst).map_err(Error::io("create", dst))?;
    let mut buf = buffer(len_hint);
    let mut hasher = sha2::Sha256::new();
    let mut size = 0;
    let mut flushed = 0;
    loop {
        let n = read_some(from, &mut buf).map_err(Error::io("read", src))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(Error::io("write", dst))?;
        size += n as u64;
        if size - flushed >= WRITEBACK_EVERY {
            start_writeback(&to, flushed, size - flushed);
            flushed = size;
        }
    }
    to.sync_data().map_err(Error::io("fsync", dst))?;
    Ok(Hashed { size, sha256: Sha256(hasher.finalize().into()) })
}

/// Hashes `path` in one read; with `sync`, also makes it durable (a file that
/// CRIU or a rename put in place may still be only in the page cache).
///
/// With `sync`, writeback of what has been hashed is started as the hash
/// goes along, so the disk writes while the CPU hashes and the closing
/// fsync waits only for the last few megabytes: for a memory image CRIU
/// just wrote into the page cache, this takes about as long as the hash
/// alone, where hashing and then syncing would take both.
pub(crate) fn hash_file(path: &Path, sync: bool) -> Result<Hashed> {
    let mut file = File::open(path).map_err(Error::io("open", path))?;
    let len = file.metadata().map_err(Error::io("stat", path))?.len();
    let mut buf = buffer(len);
    let mut hasher = sha2::Sha256::new();
    let mut size = 0;
    let mut flushed = 0;
    loop {
        let n = read_some(&mut file, &mut buf).map_err(Error::io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        if sync && size - flushed >= WRITEBACK_EVERY {
            start_writeback(&file, flushed, size - flushed);
            flushed = size;
        }
    }
    if sync {
        // fsync works on a read-only descriptor: it flushes the inode, not
        // the descriptor's writes.
        file.sync_data().map_err(Error::io("fsync", path))?;
    }
    Ok(Hashed { size, sha256: Sha256(hasher.finalize().into()) })
}

/// What `hasher`, having seen `size` bytes, says of them.
pub(crate) fn finish(hasher: sha2::Sha256, size: u64) -> Hashed {
    Hashed { size, sha256: Sha256(hasher.finalize().into()) }
}

pub(crate) fn hash_bytes(bytes: &[u8]) -> Hashed {
    Hashed { size: bytes.len() as u64, sha256: Sha256(sha2::Sha256::digest(bytes).into()) }
}

/// A writer that hashes what passes through it, so that a file produced in
/// the staging directory (the rootfs diff) needs no second read.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: sha2::Sha256::new(), size: 0 }
    }

    pub fn finish(self) -> (W, Hashed) {
        (self.inner, Hashed { size: self.size, sha256: Sha256(self.hasher.finalize().into()) })
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through it, so that a file sent
/// elsewhere (a tar of the images) is checked against the manifest in the
/// same read.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    size: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, hasher: sha2::Sha256::new(), size: 0 }
    }

    pub fn finish(self) -> Hashed {
        Hashed { size: self.size, sha256: Sha256(self.hasher.finalize().into()) }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Starts writing `len` bytes at `offset` of `file` to disk, without waiting
/// for it. Only a hint: the fsync at the end is what makes the file durable,
/// so a failure here is not worth reporting.
fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    // SAFETY: a plain syscall on a descriptor that `file` keeps open.
    unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
}

/// A buffer no bigger than the file needs: most CRIU images are a few hundred
/// bytes, and zeroing megabytes for each of them would cost more than reading.
fn buffer(len: u64) -> Vec<u8> {
    // +1 so that a file read whole is followed by a 0-byte read into spare
    // room, not a second full-sized one.
    let want = usize::try_from(len).unwrap_or(BUF_SIZE).saturating_add(1);
    vec![0; want.clamp(4096, BUF_SIZE)]
}

fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn digest_round_trips_as_lowercase_hex() {
        let d: Sha256 = ABC.parse().unwrap();
        assert_eq!(d.to_string(), ABC);
        assert_eq!(hash_bytes(b"abc").sha256, d);
        assert!(ABC.to_uppercase().parse::<Sha256>().is_err());
        assert!(ABC[1..].parse::<Sha256>().is_err());
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{ABC}\""));
    }

    #[test]
    fn copy_and_hash_agree_on_a_file_larger_than_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let bytes: Vec<u8> = (0..BUF_SIZE * 2 + 7).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &bytes).unwrap();
        let dst = dir.path().join("dst");
        let copied = copy_hashing(&src, &dst).unwrap();
        assert_eq!(copied, hash_bytes(&bytes));
        assert_eq!(hash_file(&dst, true).unwrap(), copied);
        assert_eq!(std::fs::read(&dst).unwrap(), bytes);
        // The destination is never overwritten: it is created new.
        assert!(copy_hashing(&src, &dst).is_err());
    }

    #[test]
    fn split_copy_agrees_with_the_plain_one() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let bytes: Vec<u8> = (0..(WRITEBACK_EVERY as usize) * 2 + 5).map(|i| (i % 241) as u8).collect();
        std::fs::write(&src, &bytes).unwrap();
        let dst = dir.path().join("dst");
        assert_eq!(copy_hashing_split(&src, &dst).unwrap(), hash_bytes(&bytes));
        assert_eq!(std::fs::read(&dst).unwrap(), bytes);
        assert!(copy_hashing_split(&src, &dst).is_err(), "the destination is created new");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(copy_hashing_split(&empty, &dir.path().join("e2")).unwrap(), hash_bytes(b""));
        // Both halves of the fallback agree too.
        let (from, to) = (File::open(&src).unwrap(), File::create(dir.path().join("by-hand")).unwrap());
        assert_eq!(copy_by_hand(&from, &src, &to, &dst).unwrap(), bytes.len() as u64);
        assert_eq!(std::fs::read(dir.path().join("by-hand")).unwrap(), bytes);
    }

    #[test]
    fn writer_hashes_what_it_writes() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"a").unwrap();
        w.write_all(b"bc").unwrap();
        let (out, hashed) = w.finish();
        assert_eq!(out, b"abc");
        assert_eq!(hashed, hash_bytes(b"abc"));
    }

    #[test]
    fn reader_hashes_what_it_reads_and_streams_write() {
        let bytes: Vec<u8> = (0..BUF_SIZE + 3).map(|i| (i % 13) as u8).collect();
        let mut r = HashingReader::new(&bytes[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, bytes);
        assert_eq!(r.finish(), hash_bytes(&bytes));

        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("dst");
        let written = write_hashing(&mut &bytes[..], 0, Path::new("<test>"), &dst).unwrap();
        assert_eq!(written, hash_bytes(&bytes));
        assert_eq!(std::fs::read(&dst).unwrap(), bytes);
        // hash_file with sync agrees, writeback hints and all.
        assert_eq!(hash_file(&dst, true).unwrap(), written);
    }
}
