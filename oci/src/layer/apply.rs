//! Applying an OCI layer tar onto a directory: the restore side of the
//! rootfs diff.
//!
//! A layer comes from a checkpoint that may have crossed machines, so no
//! entry may write outside the root: `..` is refused, and so is any entry
//! whose parent directories, as they are on disk, include a symlink (a layer
//! could plant `a -> /etc` and then write `a/passwd`).

use std::{
    collections::HashSet,
    fs::{self, File},
    io::{self, BufReader, Read},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Component, Path, PathBuf},
};

use nix::{
    fcntl::AT_FDCWD,
    sys::{
        stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat},
        time::TimeSpec,
    },
};
use tar::EntryType;

use super::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use crate::error::{Error, Result, UnsafeEntry};

/// Applies the layer `tar` onto the directory `rootfs`: creates and replaces
/// what the layer holds, with modes, owners and modification times, and
/// deletes what its whiteouts name.
///
/// An opaque directory loses what it held before the layer; entries of the
/// layer itself are kept whatever their order in the tar.
pub fn apply_layer(tar: &Path, rootfs: &Path) -> Result<()> {
    let file = File::open(tar).map_err(Error::io("open", tar))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let mut applier = Applier { tar, root: rootfs, written: HashSet::new(), dir_times: Vec::new() };
    let unreadable = |source| Error::LayerRead { tar: tar.to_owned(), source };
    for entry in archive.entries().map_err(unreadable)? {
        applier.entry(&mut entry.map_err(unreadable)?)?;
    }
    applier.set_dir_times()
}

struct Applier<'a> {
    tar: &'a Path,
    root: &'a Path,
    /// Paths (relative to the root) this layer has written, which its own
    /// opaque markers and whiteouts must not delete.
    written: HashSet<PathBuf>,
    /// Directory modification times, set last: every entry created inside a
    /// directory changes its time.
    dir_times: Vec<(PathBuf, u64)>,
}

impl Applier<'_> {
    fn entry(&mut self, entry: &mut tar::Entry<'_, impl Read>) -> Result<()> {
        let unreadable = |source| Error::LayerRead { tar: self.tar.to_owned(), source };
        let raw = entry.path().map_err(unreadable)?.into_owned();
        let Some(rel) = self.inside(&raw, &raw)? else {
            return Ok(()); // the root itself ("./"): not ours to change
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let name = rel.file_name().expect("a normalised relative path ends in a name");
        let whiteout = name.to_str().and_then(|n| n.strip_prefix(WHITEOUT_PREFIX));
        if let Some(hidden) = whiteout {
            if hidden.is_empty() {
                return Err(self.unsafe_entry(&raw, UnsafeEntry::EmptyWhiteout));
            }
            // A whiteout in a directory the rootfs lacks hides nothing.
            let Some(parent) = self.dir(&raw, parent_rel, false)? else { return Ok(()) };
            if name == OPAQUE_WHITEOUT {
                return self.make_opaque(&parent, parent_rel);
            }
            if !self.written.contains(&parent_rel.join(hidden)) {
                remove_any(&parent.join(hidden))?;
            }
            return Ok(());
        }

        let parent = self.dir(&raw, parent_rel, true)?.expect("created when missing");
        let path = parent.join(name);
        let h = entry.header();
        let (mode, uid, gid, mtime) =
            (|| -> io::Result<_> { Ok((h.mode()?, h.uid()?, h.gid()?, h.mtime()?)) })().map_err(unreadable)?;
        let kind = h.entry_type();
        match kind {
            EntryType::Directory => {
                match path.symlink_metadata() {
                    Ok(m) if m.is_dir() => {}
                    _ => {
                        remove_any(&path)?;
                        fs::create_dir(&path).map_err(Error::io("create directory", &path))?;
                    }
                }
                self.dir_times.push((path.clone(), mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                remove_any(&path)?;
                // create_new: never write through whatever might be there.
                let mut file = File::options()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(Error::io("create", &path))?;
                io::copy(entry, &mut file).map_err(unreadable)?;
            }
            EntryType::Symlink => {
                let target = entry.link_name().map_err(unreadable)?.ok_or_else(|| {
                    unreadable(io::Error::new(io::ErrorKind::InvalidData, "a symlink entry without a target"))
                })?;
                remove_any(&path)?;
                // Any target is fine, absolute ones included: a symlink is
                // resolved inside the container, never by this function.
                std::os::unix::fs::symlink(&target, &path).map_err(Error::io("symlink", &path))?;
            }
            EntryType::Link => {
                let target_raw = entry.link_name().map_err(unreadable)?.map(|t| t.into_owned()).unwrap_or_default();
                let target = self.link_target(&raw, &target_raw)?;
                remove_any(&path)?;
                fs::hard_link(&target, &path).map_err(Error::io("hard link", &path))?;
                // A hard link shares its target's owner, mode and time.
                self.written.insert(rel);
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let major = h.device_major().map_err(unreadable)?.unwrap_or(0);
                let minor = h.device_minor().map_err(unreadable)?.unwrap_or(0);
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                remove_any(&path)?;
                mknod(&path, sflag, Mode::from_bits_truncate(0o600), makedev(major.into(), minor.into()))
                    .map_err(|e| Error::Io { op: "mknod", path: path.clone(), source: e.into() })?;
            }
            other => {
                log::debug!("layer {}: skipping {} ({other:?})", self.tar.display(), raw.display());
                return Ok(());
            }
        }
        set_owner(&path, uid, gid)?;
        if kind != EntryType::Symlink {
            // After chown, which clears setuid and setgid bits.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(Error::io("chmod", &path))?;
        }
        if kind != EntryType::Directory {
            set_mtime(&path, mtime)?;
        }
        self.written.insert(rel);
        Ok(())
    }

    /// `raw` as a path relative to the root, or None for the root itself.
    /// A leading `/` is dropped, as tar does; `..` is refused.
    fn inside(&self, entry: &Path, raw: &Path) -> Result<Option<PathBuf>> {
        let mut rel = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(c) => rel.push(c),
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(self.unsafe_entry(entry, UnsafeEntry::ParentDir));
                }
            }
        }
        Ok((!rel.as_os_str().is_empty()).then_some(rel))
    }

    /// The directory `rel` under the root, with no symlink or non-directory
    /// on the way; where it is missing, created (0755, like tar) or None.
    fn dir(&self, entry: &Path, rel: &Path, create: bool) -> Result<Option<PathBuf>> {
        let mut path = self.root.to_owned();
        let mut so_far = PathBuf::new();
        for c in rel.components() {
            path.push(c);
            so_far.push(c);
            match path.symlink_metadata() {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.is_symlink() => {
                    return Err(self.unsafe_entry(entry, UnsafeEntry::ThroughSymlink { link: so_far }));
                }
                Ok(_) => return Err(self.unsafe_entry(entry, UnsafeEntry::NotADirectory { path: so_far })),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&path).map_err(Error::io("create directory", &path))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(Error::Io { op: "stat", path, source }),
            }
        }
        Ok(Some(path))
    }

    /// The on-disk path of a hard link's target, which must be inside the
    /// root, reached without symlinks, and already there.
    fn link_target(&self, entry: &Path, raw: &Path) -> Result<PathBuf> {
        let refuse = |reason| {
            self.unsafe_entry(entry, UnsafeEntry::LinkTarget { target: raw.to_owned(), reason: Box::new(reason) })
        };
        let rel = match self.inside(entry, raw) {
            Ok(rel) => rel.unwrap_or_default(),
            Err(Error::UnsafeLayerEntry { reason, .. }) => return Err(refuse(reason)),
            Err(e) => return Err(e),
        };
        let mut path = self.root.to_owned();
        let mut so_far = PathBuf::new();
        for c in rel.components() {
            path.push(c);
            so_far.push(c);
            if path.symlink_metadata().is_ok_and(|m| m.is_symlink()) && so_far != rel {
                return Err(refuse(UnsafeEntry::ThroughSymlink { link: so_far }));
            }
        }
        Ok(path)
    }

    /// Empties `dir` of everything this layer did not write itself.
    fn make_opaque(&self, dir: &Path, rel: &Path) -> Result<()> {
        for child in fs::read_dir(dir).map_err(Error::io("read directory", dir))? {
            let child = child.map_err(Error::io("read directory", dir))?;
            if !self.written.contains(&rel.join(child.file_name())) {
                remove_any(&child.path())?;
            }
        }
        Ok(())
    }

    fn set_dir_times(&self) -> Result<()> {
        for (dir, mtime) in self.dir_times.iter().rev() {
            set_mtime(dir, *mtime)?;
        }
        Ok(())
    }

    fn unsafe_entry(&self, entry: &Path, reason: UnsafeEntry) -> Error {
        Error::UnsafeLayerEntry { tar: self.tar.to_owned(), entry: entry.to_owned(), reason }
    }
}

/// Deletes whatever is at `path` (a symlink itself, never what it points
/// to); nothing there is fine.
fn remove_any(path: &Path) -> Result<()> {
    let result = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(Error::io("remove", path))
}

fn set_owner(path: &Path, uid: u64, gid: u64) -> Result<()> {
    let too_big = || Error::Io { op: "chown", path: path.to_owned(), source: io::ErrorKind::InvalidData.into() };
    let uid = u32::try_from(uid).map_err(|_| too_big())?;
    let gid = u32::try_from(gid).map_err(|_| too_big())?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(Error::io("chown", path))
}

fn set_mtime(path: &Path, mtime: u64) -> Result<()> {
    let secs = i64::try_from(mtime).unwrap_or(i64::MAX);
    utimensat(AT_FDCWD, path, &TimeSpec::UTIME_OMIT, &TimeSpec::new(secs, 0), UtimensatFlags::NoFollowSymlink)
        .map_err(|e| Error::Io { op: "set times of", path: path.to_owned(), source: e.into() })
}
