//! Applies a delta stream to an upper dir that is not mounted.
//!
//! Nothing in the stream is trusted: every path is checked to be relative
//! and free of `.`, `..` and empty components, and is then walked one
//! component at a time from a descriptor of the upper dir with O_NOFOLLOW,
//! so neither a path nor a symlink already in the upper dir (or made by an
//! earlier record) can lead outside it. The last component is only ever
//! used with the *at calls that do not follow it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use super::send::read_sized;
use super::wire::{self, Dec, Meta};

/// What an apply did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Removal records applied (each may remove a whole directory).
    pub removed: u64,
    /// Entries written: directories, files, symlinks, nodes and links.
    pub entries: u64,
    /// File data written (holes not counted).
    pub file_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot read the delta stream: {0}")]
    Stream(#[from] io::Error),
    #[error("bad delta stream: {0}")]
    Format(String),
    #[error("refusing path {path:?} of the delta stream: {reason}")]
    Unsafe { path: PathBuf, reason: &'static str },
    #[error("cannot {op} {}: {source}", .path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
}

/// Applies the delta stream `input` (from [`super::write_delta`]) to
/// `upper`, another host's upper dir of the same container (unmounted).
/// Returns once the end record was applied; a stream cut short is an error,
/// and what was applied until then stays (a new sync from the previous
/// index repairs it).
pub fn apply(upper: &Path, input: impl Read) -> Result<ApplyStats, SyncError> {
    let root = rustix::fs::open(upper, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| SyncError::Io { op: "open the upper dir", path: upper.into(), source: e.into() })?;
    let mut a = Apply {
        upper,
        root,
        input: Dec::new(io::BufReader::with_capacity(wire::CHUNK as usize, input)),
        stats: ApplyStats::default(),
        touched: BTreeMap::new(),
        dir_times: Vec::new(),
        buf: Vec::new(),
    };
    let mut magic = [0u8; 8];
    a.input.exact(&mut magic)?;
    if &magic != wire::MAGIC {
        return Err(SyncError::Format(format!("it does not start with {:?}: not a delta stream", wire::MAGIC)));
    }
    let mut count = 0u64;
    loop {
        match a.input.u8()? {
            wire::END => break,
            tag => a.record(tag)?,
        }
        count += 1;
    }
    let sent = a.input.u64()?;
    if sent != count {
        return Err(SyncError::Format(format!("{count} records read, but the sender counted {sent}")));
    }
    a.finish_times()?;
    Ok(a.stats)
}

struct Apply<'a, R: Read> {
    upper: &'a Path,
    root: OwnedFd,
    input: Dec<R>,
    stats: ApplyStats,
    /// Directories whose entries this apply changed, with their times
    /// before: put back at the end, as their entries changed only here.
    touched: BTreeMap<PathBuf, Timestamps>,
    /// Times of the directories the stream sent, set last (their entries
    /// are written after them).
    dir_times: Vec<(PathBuf, Timestamps)>,
    buf: Vec<u8>,
}

/// A checked relative path: its components, none of them `.`, `..` or empty.
struct Rel {
    path: PathBuf,
    parent: Vec<Vec<u8>>,
    name: Vec<u8>,
}

impl Rel {
    /// Checks `bytes`; the empty path (the upper dir) only where `root_ok`.
    fn parse(bytes: Vec<u8>, root_ok: bool) -> Result<Option<Rel>, SyncError> {
        let path = PathBuf::from(OsStr::from_bytes(&bytes));
        let unsafe_path = |reason| SyncError::Unsafe { path: path.clone(), reason };
        if bytes.is_empty() {
            return if root_ok { Ok(None) } else { Err(unsafe_path("an empty path where an entry is needed")) };
        }
        if bytes.starts_with(b"/") {
            return Err(unsafe_path("an absolute path"));
        }
        if bytes.contains(&0) {
            return Err(unsafe_path("a NUL byte in a path"));
        }
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for c in bytes.split(|&b| b == b'/') {
            match c {
                b"" => return Err(unsafe_path("an empty path component")),
                b"." => return Err(unsafe_path("a '.' component")),
                b".." => return Err(unsafe_path("a '..' component (it would leave the upper dir)")),
                _ => parts.push(c.to_vec()),
            }
        }
        let name = parts.pop().expect("one component at least");
        Ok(Some(Rel { path, parent: parts, name }))
    }

    fn parent_path(&self) -> PathBuf {
        self.path.parent().map(Path::to_owned).unwrap_or_default()
    }
}

fn omit() -> Timespec {
    Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT }
}

fn mtime_only(m: &Meta) -> Timestamps {
    Timestamps { last_access: omit(), last_modification: Timespec { tv_sec: m.mtime.0, tv_nsec: m.mtime.1 as _ } }
}

/// /proc/self/fd/DIRFD/NAME: a path for the calls that have no *at form
/// (the l*xattr calls), resolved through the checked directory descriptor.
fn proc_path(dir: &OwnedFd, name: &[u8]) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(OsStr::from_bytes(name));
    p
}

fn is_gone(e: Errno) -> bool {
    matches!(e, Errno::NOENT | Errno::NOTDIR | Errno::LOOP)
}

impl<R: Read> Apply<'_, R> {
    fn err(&self, op: &'static str, rel: &Path, e: impl Into<io::Error>) -> SyncError {
        SyncError::Io { op, path: self.upper.join(rel), source: e.into() }
    }

    fn path(&mut self, root_ok: bool) -> Result<Option<Rel>, SyncError> {
        let bytes = self.input.bytes(wire::MAX_PATH, "a path")?;
        Rel::parse(bytes, root_ok)
    }

    fn record(&mut self, tag: u8) -> Result<(), SyncError> {
        match tag {
            wire::REMOVE => {
                let rel = self.path(false)?.expect("not the root");
                self.remove(&rel)?;
                self.stats.removed += 1;
                return Ok(());
            }
            wire::LINK => {
                let rel = self.path(false)?.expect("not the root");
                let target = self.path(false)?.expect("not the root");
                self.link(&rel, &target)?;
            }
            wire::DIR => {
                let rel = self.path(true)?;
                let meta = self.meta()?;
                self.dir(rel.as_ref(), &meta)?;
            }
            wire::FILE => {
                let rel = self.path(false)?.expect("not the root");
                let meta = self.meta()?;
                self.file(&rel, &meta)?;
            }
            wire::SYMLINK => {
                let rel = self.path(false)?.expect("not the root");
                let meta = self.meta()?;
                let target = self.input.bytes(wire::MAX_PATH, "a symlink target")?;
                let dir = self.replace(&rel, false)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, OsStr::from_bytes(&rel.name))
                    .map_err(|e| self.err("create symlink", &rel.path, e))?;
                self.meta_at(&dir, &rel, &meta, true)?;
            }
            wire::NODE => {
                let rel = self.path(false)?.expect("not the root");
                let meta = self.meta()?;
                let rdev = self.input.u64()?;
                let kind = FileType::from_raw_mode(meta.mode);
                if !matches!(
                    kind,
                    FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket
                ) {
                    return Err(SyncError::Format(format!("node {:?} has mode {:o}", rel.path, meta.mode)));
                }
                let dir = self.replace(&rel, false)?;
                rustix::fs::mknodat(&dir, OsStr::from_bytes(&rel.name), kind, Mode::from_raw_mode(meta.mode), rdev)
                    .map_err(|e| self.err("create node", &rel.path, e))?;
                self.meta_at(&dir, &rel, &meta, false)?;
            }
            other => return Err(SyncError::Format(format!("unknown record type {other}"))),
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn meta(&mut self) -> Result<Meta, SyncError> {
        let m = self.input.meta()?;
        if m.uid == u32::MAX || m.gid == u32::MAX {
            return Err(SyncError::Format("an owner of -1".into()));
        }
        if m.mtime.1 >= 1_000_000_000 {
            return Err(SyncError::Format(format!("an mtime with {} ns", m.mtime.1)));
        }
        Ok(m)
    }

    /// Opens directory `parts` under the upper dir, never following a symlink.
    fn open_dir(&self, parts: &[Vec<u8>]) -> Result<OwnedFd, Errno> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut fd = rustix::fs::openat(&self.root, ".", flags, Mode::empty())?;
        for p in parts {
            fd = rustix::fs::openat(&fd, OsStr::from_bytes(p), flags, Mode::empty())?;
        }
        Ok(fd)
    }

    /// The parent directory of `rel`, its times noted before this apply
    /// changes its entries.
    fn parent(&mut self, rel: &Rel) -> Result<OwnedFd, SyncError> {
        let dir = self.open_dir(&rel.parent).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => SyncError::Unsafe {
                path: rel.path.clone(),
                reason: "a parent is a symlink or not a directory in the upper dir",
            },
            e => self.err("open the parent directory of", &rel.path, e),
        })?;
        let parent = rel.parent_path();
        if !self.touched.contains_key(&parent) {
            let st = rustix::fs::fstat(&dir).map_err(|e| self.err("stat", &parent, e))?;
            let times = Timestamps {
                last_access: Timespec { tv_sec: st.st_atime as _, tv_nsec: st.st_atime_nsec as _ },
                last_modification: Timespec { tv_sec: st.st_mtime as _, tv_nsec: st.st_mtime_nsec as _ },
            };
            self.touched.insert(parent, times);
        }
        Ok(dir)
    }

    /// Clears the place of `rel` for a new entry (a directory already there
    /// stays when `keep_dir`); returns its parent directory.
    fn replace(&mut self, rel: &Rel, keep_dir: bool) -> Result<OwnedFd, SyncError> {
        let dir = self.parent(rel)?;
        let name = OsStr::from_bytes(&rel.name);
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => {}
            Err(e) => return Err(self.err("stat", &rel.path, e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if !keep_dir {
                    std::fs::remove_dir_all(proc_path(&dir, &rel.name))
                        .map_err(|e| self.err("remove directory", &rel.path, e))?;
                }
            }
            Ok(_) => {
                rustix::fs::unlinkat(&dir, name, AtFlags::empty()).map_err(|e| self.err("remove", &rel.path, e))?
            }
        }
        Ok(dir)
    }

    fn remove(&mut self, rel: &Rel) -> Result<(), SyncError> {
        // A parent already gone (or replaced by a non-directory) took it along.
        match self.open_dir(&rel.parent) {
            Err(e) if is_gone(e) => return Ok(()),
            _ => {}
        }
        self.replace(rel, false)?;
        Ok(())
    }

    fn dir(&mut self, rel: Option<&Rel>, meta: &Meta) -> Result<(), SyncError> {
        if FileType::from_raw_mode(meta.mode) != FileType::Directory {
            return Err(SyncError::Format(format!("directory record with mode {:o}", meta.mode)));
        }
        let (fd, path) = match rel {
            None => {
                let fd = self.open_dir(&[]).map_err(|e| self.err("open", Path::new(""), e))?;
                (fd, PathBuf::new())
            }
            Some(rel) => {
                let parent = self.replace(rel, true)?;
                let name = OsStr::from_bytes(&rel.name);
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(self.err("create directory", &rel.path, e)),
                }
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(&parent, name, flags, Mode::empty())
                    .map_err(|e| self.err("open directory", &rel.path, e))?;
                (fd, rel.path.clone())
            }
        };
        self.meta_fd(&fd, &path, meta)?;
        self.dir_times.push((path, mtime_only(meta)));
        Ok(())
    }

    fn file(&mut self, rel: &Rel, meta: &Meta) -> Result<(), SyncError> {
        let size = self.input.u64()?;
        let dir = self.replace(rel, false)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, OsStr::from_bytes(&rel.name), flags, Mode::from_raw_mode(0o600))
            .map_err(|e| self.err("create file", &rel.path, e))?;
        let file = File::from(fd);
        // The length first: what no chunk covers stays a hole.
        file.set_len(size).map_err(|e| self.err("set the length of", &rel.path, e))?;
        loop {
            let offset = self.input.u64()?;
            let len = self.input.u32()?;
            if len == 0 {
                break;
            }
            if len > wire::CHUNK || offset.checked_add(len as u64).is_none_or(|end| end > size) {
                return Err(SyncError::Format(format!(
                    "a chunk of {len} bytes at {offset} of {:?}, whose size is {size}",
                    rel.path
                )));
            }
            self.buf.resize(len as usize, 0);
            let mut buf = std::mem::take(&mut self.buf);
            self.input.exact(&mut buf)?;
            let written = file.write_all_at(&buf, offset);
            self.buf = buf;
            written.map_err(|e| self.err("write", &rel.path, e))?;
            self.stats.file_bytes += len as u64;
        }
        self.meta_fd(file.as_fd(), &rel.path, meta)
    }

    fn link(&mut self, rel: &Rel, target: &Rel) -> Result<(), SyncError> {
        let from =
            self.open_dir(&target.parent).map_err(|e| self.err("open the parent directory of", &target.path, e))?;
        let dir = self.replace(rel, false)?;
        rustix::fs::linkat(&from, OsStr::from_bytes(&target.name), &dir, OsStr::from_bytes(&rel.name), AtFlags::empty())
            .map_err(|e| self.err("hard-link", &rel.path, e))
    }

    /// Owner, mode, xattrs (exactly the sent ones) and mtime of an open
    /// directory or file. The owner first, since chown clears set-id bits
    /// and file capabilities.
    fn meta_fd(&self, fd: impl AsFd, path: &Path, meta: &Meta) -> Result<(), SyncError> {
        let fd = fd.as_fd();
        rustix::fs::fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
            .map_err(|e| self.err("chown", path, e))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777)).map_err(|e| self.err("chmod", path, e))?;
        let existing = read_sized(|b| rustix::fs::flistxattr(fd, b))
            .or_else(|e| if e == Errno::NOTSUP { Ok(Vec::new()) } else { Err(e) })
            .map_err(|e| self.err("list xattrs of", path, e))?;
        for name in existing.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if !meta.xattrs.iter().any(|(n, _)| n == name) {
                rustix::fs::fremovexattr(fd, name).map_err(|e| self.err("remove an xattr of", path, e))?;
            }
        }
        for (name, value) in &meta.xattrs {
            rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty())
                .map_err(|e| self.xattr_err(path, name, e))?;
        }
        // A directory's come last (finish_times): its entries follow it.
        if FileType::from_raw_mode(meta.mode) != FileType::Directory {
            rustix::fs::futimens(fd, &mtime_only(meta)).map_err(|e| self.err("set the mtime of", path, e))?;
        }
        Ok(())
    }

    /// The same for a symlink or node just created as `rel` in `dir`.
    fn meta_at(&self, dir: &OwnedFd, rel: &Rel, meta: &Meta, symlink: bool) -> Result<(), SyncError> {
        let name = OsStr::from_bytes(&rel.name);
        rustix::fs::chownat(
            dir,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err("chown", &rel.path, e))?;
        if !symlink {
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode & 0o7777), AtFlags::empty())
                .map_err(|e| self.err("chmod", &rel.path, e))?;
        }
        let p = proc_path(dir, &rel.name);
        for (xname, value) in &meta.xattrs {
            rustix::fs::lsetxattr(&p, xname.as_slice(), value, XattrFlags::empty())
                .map_err(|e| self.xattr_err(&rel.path, xname, e))?;
        }
        rustix::fs::utimensat(dir, name, &mtime_only(meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err("set the mtime of", &rel.path, e))
    }

    fn xattr_err(&self, path: &Path, name: &[u8], e: Errno) -> SyncError {
        let e = io::Error::from(e);
        let source = io::Error::new(e.kind(), format!("xattr {}: {e}", String::from_utf8_lossy(name)));
        self.err("set an xattr of", path, source)
    }

    /// Directory times, once no entry of theirs changes any more: those the
    /// stream sent, and the old times of the others this apply touched.
    fn finish_times(&mut self) -> Result<(), SyncError> {
        let sent: BTreeMap<PathBuf, Timestamps> = std::mem::take(&mut self.dir_times).into_iter().collect();
        let mut touched = std::mem::take(&mut self.touched);
        touched.retain(|p, _| !sent.contains_key(p));
        for (path, times) in touched.into_iter().chain(sent) {
            let parts: Vec<Vec<u8>> = path.components().map(|c| c.as_os_str().as_bytes().to_vec()).collect();
            let fd = match self.open_dir(&parts) {
                Ok(fd) => fd,
                Err(e) if is_gone(e) => continue, // removed by a later record
                Err(e) => return Err(self.err("open", &path, e)),
            };
            rustix::fs::futimens(&fd, &times).map_err(|e| self.err("set the mtime of", &path, e))?;
        }
        Ok(())
    }
}
