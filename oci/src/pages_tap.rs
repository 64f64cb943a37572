//! Taking CRIU's memory images straight into a checkpoint as CRIU writes
//! them, instead of letting it write them to a staging directory first.
//!
//! CRIU names a dump's memory images `pages-1.img`, `pages-2.img`, ... in
//! the order it dumps them, and moves the pages into each with splice(2).
//! A tap puts a FIFO under each of those names in the images directory
//! before the dump, and a thread behind each reads what CRIU sends, hashes
//! it and writes it into the checkpoint around the page cache. The pages
//! are never stored twice: a 1 GiB dump allocates no memory for them at
//! all, where a RAM staging directory allocates 1 GiB (slow on a virtual
//! machine whose host takes freed guest memory back) and then copies it.
//! CRIU is paced by the checkpoint's disk instead of by RAM.
//!
//! The pages CRIU splices into a FIFO are the process's own pages, not
//! copies: the process must stay frozen until every FIFO is drained, so a
//! tap is only for a container that stays paused (or dead) after CRIU's
//! dump until [`PagesTap::finish`] returns. A pre-dump, which lets the
//! container run on at once, must not be tapped.
//!
//! Images beyond the FIFOs made, if the dump has more memory images than
//! the container had processes, are written by CRIU as usual files and
//! imported with the rest.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
    sync::Arc,
    thread,
};

use nix::{sys::stat::Mode, unistd};

use crate::{
    direct_copy,
    error::{Error, Result},
    hashing::{self, Hashed},
    layout,
    staging::Staging,
};

/// The capacity asked for each FIFO: Linux's default maximum for
/// unprivileged pipes (/proc/sys/fs/pipe-max-size).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// The FIFOs under CRIU's memory image names and the threads draining them.
#[derive(Debug)]
pub struct PagesTap {
    fifos: Vec<PathBuf>,
    /// Closing it tells the threads whose FIFO CRIU never opened to stop.
    cancel: Option<OwnedFd>,
    readers: Vec<thread::JoinHandle<Taken>>,
}

/// What one reader took: the image's path in the checkpoint and its hash,
/// or nothing if CRIU never opened its FIFO.
type Taken = Result<Option<(String, Hashed)>>;

impl Staging {
    /// Puts FIFOs named `pages-1.img` to `pages-<count>.img` into `images`,
    /// the directory CRIU will dump into, each drained into this staging
    /// checkpoint's `criu/` by a thread of its own.
    pub fn tap_pages(&self, images: &Path, count: u32) -> Result<PagesTap> {
        let (cancel_rx, cancel_tx) = unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("create a pipe for", images)(e.into()))?;
        let cancel_rx = Arc::new(cancel_rx);
        let mut tap = PagesTap { fifos: Vec::new(), cancel: Some(cancel_tx), readers: Vec::new() };
        for id in 1..=count {
            let name = format!("pages-{id}.img");
            let fifo = images.join(&name);
            unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR)
                .map_err(|e| Error::io("create the FIFO", &fifo)(e.into()))?;
            tap.fifos.push(fifo.clone());
            let rel = format!("{}/{name}", layout::CRIU_DIR);
            let dst = self.criu_dir().join(&name);
            let cancel = Arc::clone(&cancel_rx);
            let reader = thread::Builder::new()
                .name(format!("tap-{name}"))
                .spawn(move || Ok(drain(&fifo, &dst, &cancel)?.map(|hashed| (rel, hashed))))
                .map_err(Error::io("start a thread for", images))?;
            tap.readers.push(reader);
        }
        Ok(tap)
    }
}

impl PagesTap {
    /// Waits until CRIU has closed every FIFO it opened and all it sent is
    /// durable in the checkpoint, records those files in `staging`, and
    /// removes the FIFOs. Call it once the dump has returned, before the
    /// container runs again.
    pub fn finish(mut self, staging: &mut Staging) -> Result<()> {
        let mut first_error = None;
        for taken in self.stop() {
            match taken {
                Ok(Some((rel, hashed))) => staging.insert_hashed(rel, hashed),
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Cancels the readers CRIU never reached, joins them all and removes
    /// the FIFOs; returns what each reader took.
    fn stop(&mut self) -> Vec<Taken> {
        self.cancel = None;
        let taken = self.readers.drain(..).map(|r| r.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect();
        for fifo in self.fifos.drain(..) {
            if let Err(e) = std::fs::remove_file(&fifo) {
                log::warn!("could not remove the FIFO {}: {e}", fifo.display());
            }
        }
        taken
    }
}

impl Drop for PagesTap {
    /// A tap given up (the dump failed) still stops its threads; what they
    /// wrote goes with the staging directory.
    fn drop(&mut self) {
        if !self.readers.is_empty() {
            self.stop();
        }
    }
}

/// Waits for CRIU to open `fifo`, then writes what it sends to the new file
/// `dst`. `None` if `cancel` hung up first: CRIU never used this name.
fn drain(fifo: &Path, dst: &Path, cancel: &OwnedFd) -> Result<Option<Hashed>> {
    // Non-blocking, so that the open does not wait for a writer; read
    // blocking once CRIU is there.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(fifo)
        .map_err(Error::io("open", fifo))?;
    // A bigger pipe than the default 64 KiB: fewer switches between CRIU
    // and this thread. It holds references to CRIU's pages, not copies.
    // Best effort: an unprivileged limit only makes it slower.
    // SAFETY: a plain fcntl(2) on a descriptor that `file` keeps open.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    if !wait_for_writer(&file, cancel).map_err(Error::io("poll", fifo))? {
        return Ok(None);
    }
    set_blocking(&file).map_err(Error::io("read", fifo))?;
    let mut from = &file;
    match direct_copy::write_hashing_direct(&mut from, fifo, dst)? {
        Some(hashed) => Ok(Some(hashed)),
        None => hashing::write_hashing(&mut from, u64::MAX, fifo, dst).map(Some),
    }
}

/// Whether a writer opened `fifo` (it has data, or was opened and closed)
/// before `cancel` hung up. A FIFO opened before any writer reports no
/// hang-up until a writer has come and gone.
fn wait_for_writer(fifo: &File, cancel: &OwnedFd) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd { fd: fifo.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: cancel.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfds for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // The FIFO first: CRIU is done before the tap is cancelled, so
        // what it did to the FIFO shows in the same poll.
        if fds[0].revents != 0 {
            return Ok(true);
        }
        if fds[1].revents != 0 {
            return Ok(false);
        }
    }
}

fn set_blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: plain fcntl(2) calls on a descriptor that `file` keeps open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::store::CheckpointStore;

    /// What CRIU does to a memory image: open it for writing, write, close.
    fn write_like_criu(path: &Path, bytes: &[u8]) {
        let mut f = File::options().write(true).create(true).truncate(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn takes_what_is_written_and_lets_unused_names_go() {
        let store_dir = tempfile::tempdir().unwrap();
        let images = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(store_dir.path()).unwrap();
        let mut staging = store.staging("tapped").unwrap();
        let tap = staging.tap_pages(images.path(), 4).unwrap();

        let big: Vec<u8> = (0..(9 << 20) + 123).map(|i| (i % 253) as u8).collect();
        let writer = {
            let (images, big) = (images.path().to_owned(), big.clone());
            thread::spawn(move || {
                write_like_criu(&images.join("pages-1.img"), &big);
                write_like_criu(&images.join("pages-2.img"), b"");
                // Beyond the tap: an ordinary file, imported later.
                write_like_criu(&images.join("pages-5.img"), b"five");
            })
        };
        writer.join().unwrap();
        tap.finish(&mut staging).unwrap();

        let names: Vec<_> =
            std::fs::read_dir(images.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["pages-5.img"], "the FIFOs are gone, the untapped image stays");
        let criu = staging.criu_dir();
        assert!(std::fs::read(criu.join("pages-1.img")).unwrap() == big);
        assert_eq!(std::fs::read(criu.join("pages-2.img")).unwrap(), b"");
        assert!(!criu.join("pages-3.img").exists(), "an unused name leaves no file");

        staging.import_criu_dir(images.path()).unwrap();
        let cp = staging.commit(crate::testing::commit_info(None)).unwrap();
        let files: Vec<_> = cp.manifest().files.iter().map(|f| (f.path.as_str(), f.size)).collect();
        assert_eq!(files, [("criu/pages-1.img", big.len() as u64), ("criu/pages-2.img", 0), ("criu/pages-5.img", 4)]);
        assert_eq!(cp.manifest().files[0].sha256, hashing::hash_bytes(&big).sha256);
        cp.verify().unwrap();
    }

    #[test]
    fn a_tap_given_up_stops_its_threads() {
        let store_dir = tempfile::tempdir().unwrap();
        let images = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(store_dir.path()).unwrap();
        let staging = store.staging("given-up").unwrap();
        let tap = staging.tap_pages(images.path(), 3).unwrap();
        drop(tap);
        assert_eq!(std::fs::read_dir(images.path()).unwrap().count(), 0, "no FIFO is left behind");
    }
}
