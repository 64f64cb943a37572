//! Where CRIU dumps to: a fresh directory on a RAM-backed file system, so
//! the container is frozen only as long as it takes to copy its memory into
//! RAM. Hashing and writing to the store happen after it runs again. With
//! `--direct` (or without tmpfs) the images go straight into the store and
//! only CRIU's log and statistics come here.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Default parent of dump directories (/run is a tmpfs on most systems).
pub const DEFAULT_STAGING_ROOT: &str = "/run/containerd-migrate/staging";
/// Where dumps go when /run is not in RAM but /dev/shm is.
pub const SHM_STAGING_ROOT: &str = "/dev/shm/containerd-migrate-staging";

/// A dump directory, removed with everything in it when dropped (also when
/// the checkpoint failed). CRIU writes its images to [`DumpDir::images`]
/// and its log and statistics to [`DumpDir::work`].
#[derive(Debug)]
pub struct DumpDir {
    path: PathBuf,
    in_ram: bool,
}

impl DumpDir {
    /// Creates `<root>/<id>` for a dump.
    ///
    /// `root` is `--staging` if given (used as it is, with a warning if it
    /// is not in RAM). Otherwise the first RAM-backed of
    /// [`DEFAULT_STAGING_ROOT`] and [`SHM_STAGING_ROOT`], else next to the
    /// store (`<store>/.dump-<id>`, hidden from listings), where the caller
    /// had better dump straight into the store (see [`DumpDir::in_ram`]).
    pub fn create(explicit_root: Option<&Path>, store_root: &Path, id: &str) -> Result<DumpDir> {
        let (path, in_ram) = match explicit_root {
            Some(root) => {
                create_root(root)?;
                let in_ram = is_ram_backed(root)?;
                if !in_ram {
                    log::warn!(
                        "{} is not on a RAM-backed file system (tmpfs): the container stays frozen while \
                         CRIU writes its memory there",
                        root.display()
                    );
                }
                (root.join(id), in_ram)
            }
            None => match ram_root()? {
                Some(root) => (root.join(id), true),
                None => (store_root.join(format!(".dump-{id}")), false),
            },
        };
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => bail!(
                "the dump directory {} already exists: another checkpoint with id {id} is under way, or one \
                 was interrupted (remove the directory if so)",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("create the dump directory {}", path.display())),
        }
        let dir = DumpDir { path, in_ram };
        for sub in [dir.images(), dir.work()] {
            std::fs::create_dir(&sub).with_context(|| format!("create {}", sub.display()))?;
        }
        Ok(dir)
    }

    /// Whether the directory is on a RAM-backed file system.
    pub fn in_ram(&self) -> bool {
        self.in_ram
    }

    /// CRIU's image set.
    pub fn images(&self) -> PathBuf {
        self.path.join("images")
    }

    /// CRIU's work directory: `dump.log` and `stats-dump`.
    pub fn work(&self) -> PathBuf {
        self.path.join("work")
    }

    /// Moves CRIU's log out of the directory (which is about to be
    /// removed) to `<dir>.dump.log` beside it; returns where it went.
    pub fn keep_log(&self) -> Option<PathBuf> {
        let mut kept = self.path.clone().into_os_string();
        kept.push(".dump.log");
        let kept = PathBuf::from(kept);
        std::fs::rename(self.work().join("dump.log"), &kept).ok().map(|()| kept)
    }
}

impl Drop for DumpDir {
    fn drop(&mut self) {
        remove_dir(&self.path, "the dump directory");
    }
}

/// Removes `what` at `path` with all it holds, from a `Drop`: a failure is
/// only warned about.
pub fn remove_dir(path: &Path, what: &str) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => log::warn!("could not remove {what} {}: {e}", path.display()),
    }
}

fn create_root(root: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .with_context(|| format!("create the staging directory {}", root.display()))
}

/// A directory for scratch work (rebuilding a version to restore it): the
/// first RAM-backed staging root, else `fallback`; created.
pub fn scratch_root(fallback: &Path) -> Result<PathBuf> {
    match ram_root()? {
        Some(root) => Ok(root.to_path_buf()),
        None => {
            create_root(fallback)?;
            Ok(fallback.to_path_buf())
        }
    }
}

/// The first default staging root on a RAM-backed file system, created.
fn ram_root() -> Result<Option<&'static Path>> {
    for root in [DEFAULT_STAGING_ROOT, SHM_STAGING_ROOT] {
        let root = Path::new(root);
        let Some(parent) = root.parent().filter(|p| p.is_dir()) else { continue };
        if is_ram_backed(parent)? {
            create_root(root)?;
            return Ok(Some(root));
        }
    }
    Ok(None)
}

/// Whether `path` lives on tmpfs or ramfs.
pub fn is_ram_backed(path: &Path) -> Result<bool> {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};
    // linux/magic.h; nix names TMPFS_MAGIC but not this one.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    let st = statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(st.filesystem_type() == TMPFS_MAGIC || st.filesystem_type() == RAMFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_shm_is_ram_and_proc_is_not() {
        // /dev/shm is a tmpfs on every Linux that has it.
        if Path::new("/dev/shm").is_dir() {
            assert!(is_ram_backed(Path::new("/dev/shm")).unwrap());
        }
        assert!(!is_ram_backed(Path::new("/proc")).unwrap());
    }

    #[test]
    fn dump_dir_is_fresh_and_removed_on_drop() {
        let base = std::env::temp_dir().join(format!("migratectl-staging-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let store = base.join("store");
        std::fs::create_dir_all(&store).unwrap();
        let staging = base.join("staging");
        let dir = DumpDir::create(Some(&staging), &store, "c1-1").unwrap();
        assert_eq!(dir.images(), staging.join("c1-1/images"));
        assert_eq!(dir.in_ram(), is_ram_backed(&staging).unwrap());
        assert!(dir.work().is_dir());
        std::fs::write(dir.images().join("pages-1.img"), b"x").unwrap();
        std::fs::write(dir.work().join("dump.log"), b"Error (criu/cr-dump.c): boom").unwrap();
        let log = dir.keep_log().unwrap();
        assert_eq!(log, staging.join("c1-1.dump.log"));
        let err = DumpDir::create(Some(&staging), &store, "c1-1").unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        drop(dir);
        assert!(!staging.join("c1-1").exists());
        assert!(log.is_file());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
