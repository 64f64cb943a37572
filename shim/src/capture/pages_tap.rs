//! Taking CRIU's memory images straight into a checkpoint as CRIU writes
//! them, instead of letting it write them to a staging directory first.
//!
//! CRIU names a dump's memory images `pages-1.img`, `pages-2.img`, ... in
//! the order it dumps them, and moves the pages into each with splice(2).
//! A tap puts a FIFO under each of those names in the images directory
//! before the dump, and a thread behind each reads what CRIU sends and
//! writes it around the page cache: hashed, into a staging checkpoint
//! ([`PagesTap`]), or beside the FIFO and then over it, for callers that
//! want CRIU's own directory ([`InPlaceTap`]). The pages
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

use migrate_oci::{PendingFile, Staging, WrittenFile};
use nix::{sys::stat::Mode, unistd};

/// What went wrong taking the memory images.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Checkpoint(#[from] migrate_oci::Error),
}

type Result<T, E = TapError> = std::result::Result<T, E>;

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TapError {
    let path = path.to_owned();
    move |source| TapError::Io { op, path, source }
}

/// The capacity asked for each FIFO: Linux's default maximum for
/// unprivileged pipes (/proc/sys/fs/pipe-max-size).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// A tap into a staging checkpoint: the memory images become its files,
/// hashed as they are written.
#[derive(Debug)]
pub struct PagesTap {
    tap: Tap,
}

/// A tap into CRIU's own images directory, for a caller that wants CRIU's
/// usual output there (`ctr task checkpoint --image-path`): each image is
/// written beside its FIFO and renamed over it once complete. Not hashed.
#[derive(Debug)]
pub struct InPlaceTap {
    tap: Tap,
}

impl PagesTap {
    /// Puts FIFOs named `pages-1.img` to `pages-<count>.img` into `images`,
    /// the directory CRIU will dump into, each drained into `staging`'s
    /// `criu/` by a thread of its own.
    pub fn start(staging: &Staging, images: &Path, count: u32) -> Result<PagesTap> {
        let files = (1..=count)
            .map(|id| staging.pending_file(&format!("criu/pages-{id}.img")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut files = files.into_iter();
        let tap = Tap::start(images, count, |_| Sink::Staging(files.next().expect("one file per FIFO")))?;
        Ok(PagesTap { tap })
    }

    /// Waits until CRIU has closed every FIFO it opened and all it sent is
    /// durable in the checkpoint, and removes the FIFOs; returns the files
    /// written, for [`Staging::add_written`]. Call it once the dump has
    /// returned, before the container runs again.
    pub fn finish(mut self) -> Result<Vec<WrittenFile>> {
        let taken = self.tap.stop();
        self.tap.remove_fifos(|_| true);
        let mut written = Vec::new();
        for took in taken {
            if let Some(Took::Hashed(file)) = took? {
                written.push(file);
            }
        }
        Ok(written)
    }
}

impl InPlaceTap {
    /// Puts FIFOs named `pages-1.img` to `pages-<count>.img` into `images`,
    /// each drained into a file beside it by a thread of its own.
    pub fn start(images: &Path, count: u32) -> Result<InPlaceTap> {
        let tap = Tap::start(images, count, |name| Sink::InPlace { tmp: images.join(in_place_tmp(name)) })?;
        Ok(InPlaceTap { tap })
    }

    /// Waits until CRIU has closed every FIFO it opened and all it sent is
    /// on disk, puts each image in its FIFO's place and removes the FIFOs
    /// CRIU did not use. Call it once the dump has returned, before the
    /// container runs again.
    pub fn finish(mut self) -> Result<()> {
        let taken = self.tap.stop();
        let mut renamed = Vec::new();
        let mut first_error = None;
        for took in taken {
            match took {
                Ok(Some(Took::Written { tmp, fifo })) => match std::fs::rename(&tmp, &fifo) {
                    Ok(()) => renamed.push(fifo),
                    Err(source) => {
                        first_error.get_or_insert(TapError::Io { op: "rename over", path: fifo, source });
                    }
                },
                Ok(_) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.tap.remove_fifos(|fifo| !renamed.iter().any(|r| r == fifo));
        // What a failed reader or rename left goes with Drop.
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for InPlaceTap {
    /// A tap given up leaves no file of its own in CRIU's directory.
    fn drop(&mut self) {
        self.tap.remove_tmp_files();
    }
}

/// Where the image sent into `pages-N.img` is written until it is complete.
fn in_place_tmp(name: &str) -> String {
    format!(".{name}.tap")
}

/// Where a reader puts what CRIU sends.
enum Sink {
    Staging(PendingFile),
    InPlace { tmp: PathBuf },
}

/// What a reader took from its FIFO.
enum Took {
    Hashed(WrittenFile),
    Written { tmp: PathBuf, fifo: PathBuf },
}

/// What one reader returns: nothing if CRIU never opened its FIFO.
type Taken = Result<Option<Took>>;

/// The FIFOs under CRIU's memory image names and the threads draining them.
#[derive(Debug)]
struct Tap {
    images: PathBuf,
    fifos: Vec<PathBuf>,
    /// Closing it tells the threads whose FIFO CRIU never opened to stop.
    cancel: Option<OwnedFd>,
    readers: Vec<thread::JoinHandle<Taken>>,
}

impl Tap {
    fn start(images: &Path, count: u32, mut sink: impl FnMut(&str) -> Sink) -> Result<Tap> {
        let (cancel_rx, cancel_tx) =
            unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_error("create a pipe for", images)(e.into()))?;
        let cancel_rx = Arc::new(cancel_rx);
        let mut tap =
            Tap { images: images.to_owned(), fifos: Vec::new(), cancel: Some(cancel_tx), readers: Vec::new() };
        for id in 1..=count {
            let name = format!("pages-{id}.img");
            let fifo = images.join(&name);
            unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR)
                .map_err(|e| io_error("create the FIFO", &fifo)(e.into()))?;
            tap.fifos.push(fifo.clone());
            let (sink, cancel) = (sink(&name), Arc::clone(&cancel_rx));
            let reader = thread::Builder::new()
                .name(format!("tap-{name}"))
                .spawn(move || drain(&fifo, sink, &cancel))
                .map_err(io_error("start a thread for", images))?;
            tap.readers.push(reader);
        }
        Ok(tap)
    }

    /// Cancels the readers CRIU never reached and joins them all; returns
    /// what each took.
    fn stop(&mut self) -> Vec<Taken> {
        self.cancel = None;
        self.readers.drain(..).map(|r| r.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    }

    /// Removes the FIFOs for which `remove` says so, and forgets them all.
    fn remove_fifos(&mut self, remove: impl Fn(&Path) -> bool) {
        for fifo in self.fifos.drain(..) {
            if remove(&fifo)
                && let Err(e) = std::fs::remove_file(&fifo)
            {
                log::warn!("could not remove the FIFO {}: {e}", fifo.display());
            }
        }
    }

    /// Removes what in-place readers left beside their FIFOs, if anything.
    fn remove_tmp_files(&self) {
        let Ok(entries) = std::fs::read_dir(&self.images) else { return };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".pages-") && name.ends_with(".img.tap") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

impl Drop for Tap {
    /// A tap given up (the dump failed) still stops its threads and
    /// removes its FIFOs.
    fn drop(&mut self) {
        if !self.readers.is_empty() {
            self.stop();
        }
        self.remove_fifos(|_| true);
    }
}

/// Waits for CRIU to open `fifo`, then writes what it sends to `sink`.
/// `None` if `cancel` hung up first: CRIU never used this name.
fn drain(fifo: &Path, sink: Sink, cancel: &OwnedFd) -> Taken {
    // Non-blocking, so that the open does not wait for a writer; read
    // blocking once CRIU is there.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(fifo)
        .map_err(io_error("open", fifo))?;
    // A bigger pipe than the default 64 KiB: fewer switches between CRIU
    // and this thread. It holds references to CRIU's pages, not copies.
    // Best effort: an unprivileged limit only makes it slower.
    // SAFETY: a plain fcntl(2) on a descriptor that `file` keeps open.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    if !wait_for_writer(&file, cancel).map_err(io_error("poll", fifo))? {
        return Ok(None);
    }
    set_blocking(&file).map_err(io_error("read", fifo))?;
    let mut from = &file;
    match sink {
        Sink::Staging(pending) => Ok(Some(Took::Hashed(pending.write_from(&mut from, fifo)?))),
        Sink::InPlace { tmp } => {
            migrate_oci::write_around_page_cache(&mut from, fifo, &tmp)?;
            Ok(Some(Took::Written { tmp, fifo: fifo.to_owned() }))
        }
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

    use migrate_oci::CheckpointStore;

    use super::*;

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
        let tap = PagesTap::start(&staging, images.path(), 4).unwrap();

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
        for written in tap.finish().unwrap() {
            staging.add_written(written);
        }

        let names: Vec<_> =
            std::fs::read_dir(images.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["pages-5.img"], "the FIFOs are gone, the untapped image stays");
        let criu = staging.criu_dir();
        assert!(std::fs::read(criu.join("pages-1.img")).unwrap() == big);
        assert_eq!(std::fs::read(criu.join("pages-2.img")).unwrap(), b"");
        assert!(!criu.join("pages-3.img").exists(), "an unused name leaves no file");

        staging.import_criu_dir(images.path()).unwrap();
        let cp = staging.commit(crate::testing::commit_info()).unwrap();
        let files: Vec<_> = cp.manifest().files.iter().map(|f| (f.path.as_str(), f.size)).collect();
        assert_eq!(files, [("criu/pages-1.img", big.len() as u64), ("criu/pages-2.img", 0), ("criu/pages-5.img", 4)]);
        cp.verify().unwrap();
    }

    #[test]
    fn in_place_puts_each_image_where_the_fifo_was() {
        let images = tempfile::tempdir().unwrap();
        let tap = InPlaceTap::start(images.path(), 3).unwrap();
        let big: Vec<u8> = (0..(5 << 20) + 7).map(|i| (i % 241) as u8).collect();
        let writer = {
            let (images, big) = (images.path().to_owned(), big.clone());
            thread::spawn(move || write_like_criu(&images.join("pages-1.img"), &big))
        };
        writer.join().unwrap();
        tap.finish().unwrap();
        let names: Vec<_> =
            std::fs::read_dir(images.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["pages-1.img"], "unused FIFOs and temporary files are gone");
        let meta = std::fs::symlink_metadata(images.path().join("pages-1.img")).unwrap();
        assert!(meta.is_file(), "the image is a regular file, not the FIFO");
        assert!(std::fs::read(images.path().join("pages-1.img")).unwrap() == big);

        let given_up = tempfile::tempdir().unwrap();
        drop(InPlaceTap::start(given_up.path(), 2).unwrap());
        assert_eq!(std::fs::read_dir(given_up.path()).unwrap().count(), 0, "a tap given up leaves nothing");
    }

    #[test]
    fn a_tap_given_up_stops_its_threads() {
        let store_dir = tempfile::tempdir().unwrap();
        let images = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(store_dir.path()).unwrap();
        let staging = store.staging("given-up").unwrap();
        let tap = PagesTap::start(&staging, images.path(), 3).unwrap();
        drop(tap);
        assert_eq!(std::fs::read_dir(images.path()).unwrap().count(), 0, "no FIFO is left behind");
    }
}
