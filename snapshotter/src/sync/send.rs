//! Encodes a delta, reading what it names from the upper dir.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{OFlags, SeekFrom};
use rustix::io::Errno;

use super::scan::{Delta, context};
use super::wire::{self, Enc, Meta};

/// Encodes `delta` (reading file contents, symlink targets and xattrs from
/// `upper`) into `out` in the format of [`super::wire`]; returns the bytes
/// written. An entry gone or replaced since the scan is left out: the next
/// scan sends its removal or its new inode.
pub fn write_delta(upper: &Path, delta: &Delta, out: impl Write) -> io::Result<u64> {
    let mut enc = Enc::new(BufWriter::with_capacity(wire::CHUNK as usize, out));
    enc.raw(wire::MAGIC)?;
    let mut count = 0u64;
    for path in &delta.removed {
        enc.u8(wire::REMOVE)?;
        enc.bytes(path.as_os_str().as_bytes())?;
        count += 1;
    }
    // An inode with several names: the first one sent carries it, the
    // others are links to it (an overlay's whiteouts share one inode too).
    let mut sent: HashMap<(u64, u64), &PathBuf> = HashMap::new();
    for (rel, m) in &delta.changed {
        let full = upper.join(rel);
        let id = (m.dev(), m.ino());
        if !m.is_dir()
            && m.nlink() > 1
            && let Some(first) = sent.get(&id)
        {
            enc.u8(wire::LINK)?;
            enc.bytes(rel.as_os_str().as_bytes())?;
            enc.bytes(first.as_os_str().as_bytes())?;
            count += 1;
            continue;
        }
        let written = entry(&mut enc, rel, &full, m).map_err(|e| context(e, "cannot send", &full))?;
        if written {
            count += 1;
            if !m.is_dir() && m.nlink() > 1 {
                sent.insert(id, rel);
            }
        }
    }
    enc.u8(wire::END)?;
    enc.u64(count)?;
    enc.flush()?;
    Ok(enc.written)
}

/// Writes one entry's record; false when it is gone or replaced since the scan.
fn entry<W: Write>(enc: &mut Enc<W>, rel: &Path, full: &Path, m: &std::fs::Metadata) -> io::Result<bool> {
    let Some(xattrs) = gone_is_none(read_xattrs(full))? else { return Ok(false) };
    let meta = Meta { mode: m.mode(), uid: m.uid(), gid: m.gid(), mtime: (m.mtime(), m.mtime_nsec() as u32), xattrs };
    let path = rel.as_os_str().as_bytes();
    let ft = m.file_type();
    if ft.is_dir() {
        enc.u8(wire::DIR)?;
        enc.bytes(path)?;
        enc.meta(&meta)?;
    } else if ft.is_file() {
        let opened =
            rustix::fs::open(full, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, rustix::fs::Mode::empty())
                .map(File::from)
                .map_err(io::Error::from);
        let Some(file) = gone_is_none(opened)? else { return Ok(false) };
        if file.metadata()?.ino() != m.ino() {
            return Ok(false);
        }
        enc.u8(wire::FILE)?;
        enc.bytes(path)?;
        enc.meta(&meta)?;
        enc.u64(m.size())?;
        extents(enc, &file, m.size())?;
    } else if ft.is_symlink() {
        let Some(target) = gone_is_none(std::fs::read_link(full))? else { return Ok(false) };
        enc.u8(wire::SYMLINK)?;
        enc.bytes(path)?;
        enc.meta(&meta)?;
        enc.bytes(target.as_os_str().as_bytes())?;
    } else {
        enc.u8(wire::NODE)?;
        enc.bytes(path)?;
        enc.meta(&meta)?;
        enc.u64(m.rdev())?;
    }
    Ok(true)
}

/// The data extents of `file` up to `size` (its size at the scan), found
/// with SEEK_DATA/SEEK_HOLE, as chunks; then the end marker. A file that
/// shrank meanwhile ends early: its new size is the next scan's.
fn extents<W: Write>(enc: &mut Enc<W>, file: &File, size: u64) -> io::Result<()> {
    let mut buf = vec![0u8; wire::CHUNK as usize];
    let mut pos = 0u64;
    'extents: while pos < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(Errno::NXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?.min(size);
        pos = start;
        while pos < end {
            let want = (end - pos).min(wire::CHUNK as u64) as usize;
            let n = file.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                break 'extents;
            }
            enc.u64(pos)?;
            enc.u32(n as u32)?;
            enc.raw(&buf[..n])?;
            pos += n as u64;
        }
    }
    enc.u64(0)?;
    enc.u32(0)
}

/// Every xattr of `path` (not following a symlink), names and values.
pub(super) fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match read_sized(|b| rustix::fs::llistxattr(path, b)) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        match read_sized(|b| rustix::fs::lgetxattr(path, name, b)) {
            Ok(value) => out.push((name.to_vec(), value)),
            Err(Errno::NODATA) => {} // removed meanwhile
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// A value read by `f` into a buffer of the size `f` reports for an empty
/// one, again if it grew in between (the xattr calls).
pub(super) fn read_sized(f: impl Fn(&mut [u8]) -> Result<usize, Errno>) -> Result<Vec<u8>, Errno> {
    loop {
        let mut buf = vec![0; f(&mut [0u8; 0][..])?];
        match f(&mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn gone_is_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // A symlink where a file was (O_NOFOLLOW): replaced since the scan.
        Err(e) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => Ok(None),
        Err(e) => Err(e),
    }
}
