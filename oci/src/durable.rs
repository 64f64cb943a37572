//! File system steps that must survive a crash: directory fsyncs and the
//! atomic, never-overwriting rename that commits or removes a checkpoint.

use std::{
    fs::File,
    io,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use nix::{
    errno::Errno,
    fcntl::{AT_FDCWD, RenameFlags, renameat2},
};

use crate::error::{Error, Result};

/// Makes the entries of directory `dir` (creations, renames) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("fsync", dir))
}

/// A suffix no other staging or removal in this store uses: the pid tells
/// which process owns the directory (see the store's clean-up), the clock
/// and a counter tell apart the directories of one process.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{nanos:08x}{n:x}", std::process::id())
}

/// The pid [`unique_suffix`] put at the end of `name`, if it is there.
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let (rest, _) = name.rsplit_once('-')?;
    let (_, pid) = rest.rsplit_once('-')?;
    pid.parse().ok()
}

/// rename(2) that fails with `AlreadyExists` instead of replacing `to`: a
/// plain rename would silently replace an empty directory, and two commits
/// of one id must not both succeed.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        // File systems without RENAME_NOREPLACE: a plain rename still fails
        // onto a non-empty directory, and a committed checkpoint is never
        // empty (it holds its manifest).
        Err(Errno::EINVAL) => {
            if to.symlink_metadata().is_ok() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            std::fs::rename(from, to).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTEMPTY | libc::EEXIST) => io::ErrorKind::AlreadyExists.into(),
                _ => e,
            })
        }
        Err(Errno::ENOTEMPTY) => Err(io::ErrorKind::AlreadyExists.into()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_unique_and_name_their_owner() {
        let a = unique_suffix();
        assert_ne!(a, unique_suffix());
        assert_eq!(owner_pid(&format!(".staging-web-1-{a}")), Some(std::process::id()));
        assert_eq!(owner_pid(".staging-web"), None);
    }

    #[test]
    fn rename_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let err = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        std::fs::remove_dir(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert!(b.is_dir() && !a.exists());
    }
}
