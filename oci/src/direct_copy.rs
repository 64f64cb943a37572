//! Copying a big memory image from RAM to the store's disk around the page
//! cache, hashing it on the way.
//!
//! A buffered copy of a 1 GiB image first fills 1 GiB of page cache, and
//! every page of it must be allocated. On a virtual machine whose balloon
//! takes freed guest memory back (free page reporting, as on the machines
//! this project is measured on), a freshly allocated page faults on the
//! host too: the same 1 GiB copy from tmpfs to ext4 took 0.4 s or 2.3 s
//! (+0.3–0.5 s of fsync) depending on whether the host still backed the
//! memory. Written with O_DIRECT from a few reused buffers, it allocates
//! nothing and took 0.5–0.7 s, durable, every time.
//!
//! Three stages overlap, one buffer each: this thread reads the next
//! chunk, a second hashes the one before, a third writes the one before
//! that.

use std::{
    fs::File,
    io::{self, Read},
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::Path,
    sync::mpsc::{Receiver, SyncSender, sync_channel},
    thread,
};

use sha2::Digest;

use crate::{
    error::{Error, Result},
    hashing::{self, Hashed},
};

/// O_DIRECT wants buffers, offsets and lengths aligned to the device's
/// logical block size: 4096 covers 512-byte devices too.
const ALIGN: usize = 4096;
/// Big enough that a syscall per chunk is noise, small enough that the
/// buffers (one per stage) cost little to allocate.
const CHUNK: usize = 4 << 20;
const BUFFERS: usize = 3;

/// Copies `src` to the new file `dst` with O_DIRECT writes, hashing it, and
/// makes `dst` durable. `Ok(None)` when `dst`'s file system takes no direct
/// writes (then `dst` does not exist and nothing was copied).
pub(crate) fn copy_hashing_direct(src: &Path, dst: &Path) -> Result<Option<Hashed>> {
    let mut from = File::open(src).map_err(Error::io("open", src))?;
    let len = from.metadata().map_err(Error::io("stat", src))?.len();
    let Some(hashed) = write_hashing_direct(&mut from, src, dst)? else { return Ok(None) };
    if hashed.size != len {
        let changed = io::Error::other(format!(
            "it changed while it was copied: {len} bytes at the start, {} at the end",
            hashed.size
        ));
        return Err(Error::Io { op: "copy", path: src.to_owned(), source: changed });
    }
    Ok(Some(hashed))
}

/// Writes all that `from` (read from `src`, for errors) yields to the new
/// file `dst` with O_DIRECT writes, hashing it, and makes `dst` durable.
/// `Ok(None)` when `dst`'s file system takes no direct writes: then `dst`
/// does not exist and nothing was read.
pub(crate) fn write_hashing_direct(from: &mut impl Read, src: &Path, dst: &Path) -> Result<Option<Hashed>> {
    let mut hasher = sha2::Sha256::new();
    Ok(write_direct(from, src, dst, Some(&mut hasher))?.map(|size| hashing::finish(hasher, size)))
}

/// [`write_hashing_direct`], hashing only if given a hasher; returns the
/// bytes written.
pub(crate) fn write_direct(
    from: &mut impl Read,
    src: &Path,
    dst: &Path,
    hasher: Option<&mut sha2::Sha256>,
) -> Result<Option<u64>> {
    let to = File::options().write(true).create_new(true).open(dst).map_err(Error::io("create", dst))?;
    match set_direct(&to, true) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            drop(to);
            std::fs::remove_file(dst).map_err(Error::io("remove", dst))?;
            return Ok(None);
        }
        Err(source) => return Err(Error::Io { op: "set O_DIRECT on", path: dst.to_owned(), source }),
    }

    let (free_tx, free_rx) = sync_channel::<Buffer>(BUFFERS);
    for _ in 0..BUFFERS {
        free_tx.send(Buffer::new()).expect("the receiver is alive");
    }
    let (hash_tx, hash_rx) = sync_channel::<(Buffer, usize)>(BUFFERS);
    let (write_tx, write_rx) = sync_channel::<(Buffer, usize)>(BUFFERS);
    let (read, hashed, written) = thread::scope(|s| {
        let hashing = s.spawn(move || hash_stage(hash_rx, write_tx, hasher));
        let writer = s.spawn(|| write_stage(write_rx, free_tx, &to, dst));
        let read = read_stage(from, src, free_rx, hash_tx);
        (read, join(hashing), join(writer))
    });
    // A failed write stops the pipeline and so the read: its error is the cause.
    let written = written?;
    read?;
    if hashed != written {
        let lost = io::Error::other(format!("{hashed} bytes passed on but {written} written"));
        return Err(Error::Io { op: "write", path: dst.to_owned(), source: lost });
    }
    // Direct writes are on the device, but the file's size and extents
    // are metadata, and the last, unaligned bytes went through the cache.
    to.sync_data().map_err(Error::io("fsync", dst))?;
    Ok(Some(written))
}

/// Writes all that `from` (read from `src`, for errors) yields to the new
/// file `dst`, around the page cache where `dst`'s file system allows
/// (else through it, as a plain copy), not hashed. For images that stay
/// where CRIU put them (`ctr task checkpoint --image-path`).
pub fn write_around_page_cache(from: &mut impl Read, src: &Path, dst: &Path) -> Result<()> {
    if write_direct(from, src, dst, None)?.is_none() {
        let mut to = File::options().write(true).create_new(true).open(dst).map_err(Error::io("create", dst))?;
        io::copy(from, &mut to).map_err(Error::io("write", dst))?;
    }
    Ok(())
}

/// Fills buffers from `from` and passes them on until the end of the file
/// or until a later stage stops taking them.
fn read_stage(
    from: &mut impl Read,
    src: &Path,
    free: Receiver<Buffer>,
    next: SyncSender<(Buffer, usize)>,
) -> Result<()> {
    while let Ok(mut buf) = free.recv() {
        let n = read_full(from, buf.bytes_mut()).map_err(Error::io("read", src))?;
        if n == 0 || next.send((buf, n)).is_err() || n < CHUNK {
            break;
        }
    }
    Ok(())
}

/// Hashes each chunk, if asked, and passes it on; returns the bytes seen.
fn hash_stage(
    chunks: Receiver<(Buffer, usize)>,
    next: SyncSender<(Buffer, usize)>,
    mut hasher: Option<&mut sha2::Sha256>,
) -> u64 {
    let mut size = 0;
    for (buf, n) in chunks {
        if let Some(h) = hasher.as_mut() {
            h.update(&buf.bytes()[..n]);
        }
        size += n as u64;
        if next.send((buf, n)).is_err() {
            break;
        }
    }
    size
}

/// Writes each chunk at its offset; only the last may end off the block
/// size, and that tail is written without O_DIRECT. Returns the bytes
/// written.
fn write_stage(chunks: Receiver<(Buffer, usize)>, free: SyncSender<Buffer>, to: &File, dst: &Path) -> Result<u64> {
    let mut offset = 0u64;
    for (buf, n) in chunks {
        let aligned = n - n % ALIGN;
        to.write_all_at(&buf.bytes()[..aligned], offset).map_err(Error::io("write", dst))?;
        if aligned < n {
            set_direct(to, false).map_err(Error::io("clear O_DIRECT on", dst))?;
            to.write_all_at(&buf.bytes()[aligned..n], offset + aligned as u64).map_err(Error::io("write", dst))?;
        }
        offset += n as u64;
        // The reader is gone once it has read the end: fine.
        let _ = free.send(buf);
    }
    Ok(offset)
}

/// A panicking stage is a bug in this crate: carry the panic on.
fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    handle.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: plain fcntl(2) calls on a descriptor that `file` keeps open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends.
fn read_full(from: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match from.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One block-aligned block of a [`Buffer`].
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; ALIGN]);

/// [`CHUNK`] bytes, aligned for O_DIRECT.
struct Buffer(Vec<Block>);

impl Buffer {
    fn new() -> Buffer {
        Buffer(vec![Block([0; ALIGN]); CHUNK / ALIGN])
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: Block is repr(C) around a byte array with no padding
        // (its size equals its alignment), so the Vec's blocks are
        // len * ALIGN contiguous, initialised bytes.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.0.len() * ALIGN) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), self.0.len() * ALIGN) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ (i / 4096) as u8).collect()
    }

    /// `None` where the temporary directory's file system takes no direct
    /// writes (the store then copies through the page cache).
    fn copy(bytes: &[u8]) -> Option<(Hashed, Vec<u8>)> {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::write(&src, bytes).unwrap();
        let hashed = copy_hashing_direct(&src, &dst).unwrap()?;
        assert!(copy_hashing_direct(&src, &dst).is_err(), "the destination is created new");
        Some((hashed, std::fs::read(&dst).unwrap()))
    }

    #[test]
    fn copies_and_hashes_whole_chunks_an_unaligned_tail_and_nothing() {
        for len in [0, 1, ALIGN, CHUNK, CHUNK * 2 + ALIGN + 17, CHUNK * BUFFERS * 2 + 5] {
            let bytes = pattern(len);
            let Some((hashed, copied)) = copy(&bytes) else {
                eprintln!("no direct I/O on this file system: nothing to test");
                return;
            };
            assert_eq!(hashed, hashing::hash_bytes(&bytes), "{len} bytes");
            assert!(copied == bytes, "{len} bytes copied differ");
        }
    }
}
